"""Every Azurite start the project documents or configures (the README, VS Code's task) passes the
flags the pinned Azurite needs with this project's Storage SDKs: without --skipApiVersionCheck it
refuses their API version (tests/support/azurite.py starts it the same way)."""
from __future__ import annotations

import json
import re

from tests.infra import ROOT


def azurite_commands() -> dict[str, list[str]]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```(?:bash)?\n(.*?)```", readme, re.S)
    found = {"README.md": [line.strip() for b in blocks for line in b.splitlines()
                           if re.search(r"\bazurite\b", line) and not line.strip().startswith("#")]}
    tasks = json.loads((ROOT / ".vscode" / "tasks.json").read_text(encoding="utf-8"))
    found[".vscode/tasks.json"] = [t["command"] for t in tasks["tasks"] if "azurite " in t.get("command", "")]
    return found


def test_every_documented_azurite_start_skips_the_api_version_check():
    commands = azurite_commands()
    assert commands["README.md"] and commands[".vscode/tasks.json"], commands
    for where, lines in commands.items():
        for line in lines:
            assert "--skipApiVersionCheck" in line and "--location" in line, f"{where}: {line}"


def test_the_readme_offers_the_dev_host_with_the_settings_file():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "python -m tools.devhost --settings local.settings.json" in readme
    assert "--settings" in (ROOT / "tools" / "devhost.py").read_text(encoding="utf-8")
