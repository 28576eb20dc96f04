"""The console page as assembled from shared/web/console/: its Content-Security-Policy allows exactly
the inline blocks it carries (by hash), nothing inline can end its block early, and the files stay small."""
from __future__ import annotations

import base64
import hashlib
import re

import pytest

from shared.web import console


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_the_csp_allows_exactly_the_inline_script_and_style_and_this_origin():
    page, csp = console.build()
    scripts = re.findall(r"<script>(.*?)</script>", page, re.S)
    styles = re.findall(r"<style>(.*?)</style>", page, re.S)
    assert len(scripts) == 1 and len(styles) == 1
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == _hash(scripts[0]) and directives["style-src"] == _hash(styles[0])
    assert directives["default-src"] == "'none'" and directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'" and "unsafe" not in csp
    # every screen is in it, core first and the start last
    assert scripts[0].index("/* core.js") < scripts[0].index("/* inboxes.js") < scripts[0].index("/* main.js")
    assert "<!-- console:" not in page and 'style="' not in page  # no inline style attribute: the CSP refuses them


def test_a_file_that_would_end_its_inline_block_is_refused(tmp_path, monkeypatch):
    for name in ("index.html", "console.css", *console.SCRIPTS):
        (tmp_path / name).write_text((console.DIRECTORY / name).read_text())
    (tmp_path / "mail.js").write_text("const x = '</script><script>alert(1)';")
    monkeypatch.setattr(console, "DIRECTORY", tmp_path)
    with pytest.raises(ValueError, match="mail.js"):
        console.build()


def test_the_page_is_rebuilt_when_a_file_changes(tmp_path, monkeypatch):
    for name in ("index.html", "console.css", *console.SCRIPTS):
        (tmp_path / name).write_text((console.DIRECTORY / name).read_text())
    monkeypatch.setattr(console, "DIRECTORY", tmp_path)
    monkeypatch.setattr(console, "_cache", None)
    first, _ = console.console_page()
    assert console.console_page()[0] is first  # kept
    (tmp_path / "main.js").write_text("/* changed */")
    import os
    os.utime(tmp_path / "main.js", (1, 1))
    assert "/* changed */" in console.console_page()[0]


def test_each_console_file_stays_readable():
    for path in console.DIRECTORY.iterdir():
        assert len(path.read_text().splitlines()) < 800, path.name
