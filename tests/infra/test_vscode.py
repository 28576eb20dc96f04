""".vscode/ as the Azure Functions templates ship it: F5 starts `func host start` (after Azurite) and
attaches to the Python worker; a second configuration runs the dev host without Core Tools."""
from __future__ import annotations

import json

from tests.infra import ROOT

VSCODE = ROOT / ".vscode"


def load(name: str) -> dict:
    return json.loads((VSCODE / name).read_text(encoding="utf-8"))


def vscode_problems(launch: dict, tasks: dict, extensions: dict) -> list[str]:
    problems = []
    labels = {t["label"]: t for t in tasks.get("tasks", [])}
    for task in labels.values():
        for needed in [task["dependsOn"]] if isinstance(task.get("dependsOn"), str) else task.get("dependsOn", []):
            if needed not in labels:
                problems.append(f"task {task['label']!r} depends on missing {needed!r}")
    configs = {c["name"]: c for c in launch.get("configurations", [])}
    for config in configs.values():
        if config.get("preLaunchTask") and config["preLaunchTask"] not in labels:
            problems.append(f"{config['name']!r} runs missing task {config['preLaunchTask']!r}")
        program = config.get("program", "").replace("${workspaceFolder}/", "")
        if program and not (ROOT / program).is_file():
            problems.append(f"{config['name']!r} launches missing {program}")
    attach = [c for c in configs.values() if c.get("request") == "attach" and c.get("type") == "debugpy"]
    if not attach or attach[0].get("preLaunchTask") != "func: host start":
        problems.append("no debugpy attach configuration that starts `func host start`")
    func = labels.get("func: host start", {})
    if func.get("type") != "func" or func.get("command") != "host start" or not func.get("isBackground"):
        problems.append("the `func: host start` task is not Core Tools' background host task")
    if not any("make run" in t.get("command", "") for t in labels.values()):
        problems.append("no task for the dev host (make run)")
    wanted = {"ms-azuretools.vscode-azurefunctions", "ms-python.python", "ms-python.debugpy"}
    if not wanted <= set(extensions.get("recommendations", [])):
        problems.append(f"recommended extensions lack {sorted(wanted - set(extensions.get('recommendations', [])))}")
    return problems


def test_vscode_starts_the_host_attaches_to_the_worker_and_runs_the_dev_host():
    settings = load("settings.json")
    assert settings["azureFunctions.pythonVenv"] == ".venv"
    assert settings["azureFunctions.projectLanguageModel"] == 2
    assert not vscode_problems(load("launch.json"), load("tasks.json"), load("extensions.json"))


def test_the_check_finds_dangling_tasks():
    launch = {"configurations": [{"name": "x", "type": "debugpy", "request": "attach", "preLaunchTask": "gone"},
                                 {"name": "y", "request": "launch", "program": "${workspaceFolder}/missing.py"}]}
    tasks = {"tasks": [{"label": "a", "dependsOn": "b"}]}
    problems = vscode_problems(launch, tasks, {"recommendations": []})
    assert len(problems) == 7, problems
