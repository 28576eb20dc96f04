"""The README documents every setting the code reads (the registry in shared/config.py)."""
from __future__ import annotations

import re
from pathlib import Path

from shared.config import SETTINGS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_documented_in_the_readme():
    documented = set(re.findall(r"`([A-Za-z][A-Za-z0-9_]+)`", README))
    missing = [s.name for s in SETTINGS if s.name not in documented]
    assert not missing, f"README.md does not document: {', '.join(missing)}"


def test_readme_names_the_two_commands():
    assert "make run" in README and "make test" in README
