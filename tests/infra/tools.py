"""Where the checking tools live: their own venv (.venv-tools, `make tools`, requirements-tools.txt).

A tool that is missing skips its test with the reason on a developer's machine, and fails it in CI
(CI=true), where .ci/run installs every tool first: a missing install step must not pass as a skip.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.infra import ROOT

TOOLS_VENV = ROOT / ".venv-tools"


def tool(name: str) -> Path:
    path = TOOLS_VENV / "bin" / name
    if not path.exists():
        reason = f"{path.relative_to(ROOT)} is missing: run `make tools`"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI installs it: a missing install step)")
        pytest.skip(reason)
    return path
