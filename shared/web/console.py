"""The admin console as one HTML response (GET /api/manage/dashboard).

The console is written as several small files in shared/web/console/ (an HTML shell, one CSS file,
one JS file per screen); this module puts the CSS and the JS inline into the shell, in a fixed
order, and builds the Content-Security-Policy that allows exactly those two blocks (by their
SHA-256), calls to this origin and nothing else. One response keeps the function key simple: the
page is opened with `?code=<key>` and its scripts put that key on every call. The result is kept
until a file changes (so an edit shows on reload while developing).
"""
from __future__ import annotations

import base64
import hashlib
from pathlib import Path

DIRECTORY = Path(__file__).resolve().parent / "console"
STYLES = ("console.css",)
# core first (the namespace, the API client, the router), main last (starts the router)
SCRIPTS = ("core.js", "overview.js", "inboxes.js", "inbox_form.js", "clients.js", "mail.js", "autoreplies.js",
           "tickets.js", "main.js")
STYLE_MARK = "<!-- console:style -->"
SCRIPT_MARK = "<!-- console:script -->"

_cache: tuple[tuple[float, ...], str, str] | None = None


def _digest(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def _read(name: str, closing: str) -> str:
    text = (DIRECTORY / name).read_text(encoding="utf-8")
    if closing in text.lower():
        raise ValueError(f"shared/web/console/{name} contains {closing!r}, which would end its inline block")
    return text


def build() -> tuple[str, str]:
    """(the page, its Content-Security-Policy header)."""
    shell = (DIRECTORY / "index.html").read_text(encoding="utf-8")
    if shell.count(STYLE_MARK) != 1 or shell.count(SCRIPT_MARK) != 1:
        raise ValueError("shared/web/console/index.html must hold each console: mark once")
    style = "\n" + "\n".join(_read(name, "</style") for name in STYLES) + "\n"
    script = "\n" + "\n;\n".join(_read(name, "</script") for name in SCRIPTS) + "\n"
    page = shell.replace(STYLE_MARK, f"<style>{style}</style>").replace(SCRIPT_MARK, f"<script>{script}</script>")
    csp = ("default-src 'none'; "
           f"script-src {_digest(script)}; style-src {_digest(style)}; "
           "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return page, csp


def console_page() -> tuple[str, str]:
    """The assembled page and its CSP, rebuilt only when one of its files changed."""
    global _cache
    stamp = tuple((DIRECTORY / name).stat().st_mtime for name in ("index.html", *STYLES, *SCRIPTS))
    if _cache is None or _cache[0] != stamp:
        _cache = (stamp, *build())
    return _cache[1], _cache[2]
