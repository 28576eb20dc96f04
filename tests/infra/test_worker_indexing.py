"""Microsoft's Python worker library indexes and loads every function of function_app.

azure-functions-runtime is the worker the Functions host runs for Python >= 3.13 (it requires
3.13). `make worker-venv` installs it with the app's requirements.txt into .venv-worker where such
an interpreter exists; tests/infra/worker_driver.py sends it the host's WorkerInitRequest (which
imports function_app and indexes it), FunctionsMetadataRequest and one FunctionLoadRequest per
function. Every function the app registers must come back indexed and loaded, with init
reporting success and, with PYTHON_ENABLE_OPENTELEMETRY=true (Bicep sets it), the worker
announcing that it owns OpenTelemetry.

What stands in: the host's gRPC message classes (see worker_driver.py). The app runs on Python
3.11 in Azure (the classic worker); this check is the closest a machine without the Functions host
gets to the platform's own indexing.
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.infra import ROOT

WORKER_PYTHON = ROOT / ".venv-worker" / "bin" / "python"
DRIVER = ROOT / "tests" / "infra" / "worker_driver.py"


def python_313_on_this_machine() -> str | None:
    done = subprocess.run(["make", "--no-print-directory", "-s", "-f", str(ROOT / "Makefile"), "-p", "-n", "worker-venv"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    for line in done.stdout.splitlines():
        if line.startswith("PY_WORKER := ") or line.startswith("PY_WORKER = "):
            value = line.split("=", 1)[1].strip()
            return value if value and "$(" not in value else None
    return None


@pytest.fixture(scope="module")
def report() -> dict:
    if not WORKER_PYTHON.exists():
        found = python_313_on_this_machine()
        if not found:
            pytest.skip("no Python >= 3.13 on this machine: azure-functions-runtime requires it")
        reason = f".venv-worker is missing although {found} exists: run `make worker-venv`"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + " (CI runs it: a missing install step)")
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLICATIONINSIGHTS_", "OTEL_"))}
    env.update({"PYTHON_ENABLE_OPENTELEMETRY": "true", "FUNCTIONS_WORKER_RUNTIME": "python",
                "PYTHONDONTWRITEBYTECODE": "1"})
    done = subprocess.run([str(WORKER_PYTHON), str(DRIVER), str(ROOT)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def registered_functions() -> dict[str, list[str]]:
    import function_app
    try:
        return {f.get_function_name(): sorted(b.type for b in f.get_bindings()) for f in function_app.app.get_functions()}
    finally:
        function_app.app.functions_bindings = {}  # get_functions() may be called again elsewhere


def test_the_worker_library_indexes_and_loads_every_function(report):
    assert report["init_status"] == 1, report.get("init_error")  # StatusResult.Success
    expected = registered_functions()
    assert len(expected) >= 30  # the app's functions, read in this interpreter
    assert report["indexed"] == sorted(expected)
    assert report["loaded"] == sorted(expected)
    assert report["bindings"] == expected


def test_the_worker_owns_opentelemetry_when_the_setting_is_on(report):
    assert report["capabilities"].get("WorkerOpenTelemetryEnabled") == "true"


def test_a_broken_app_is_reported_not_indexed(tmp_path, report):
    """The same driver against an app whose binding does not match its parameter: init fails."""
    (tmp_path / "function_app.py").write_text(
        "import azure.functions as func\n"
        "app = func.FunctionApp()\n"
        "@app.queue_trigger(arg_name='msg', queue_name='q', connection='AzureWebJobsStorage')\n"
        "def broken(message: func.QueueMessage) -> None:\n"
        "    pass\n", encoding="utf-8")
    done = subprocess.run([str(WORKER_PYTHON), str(DRIVER), str(tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    broken = json.loads(done.stdout)
    assert broken["init_status"] == 0 and "broken" in (broken["init_error"] or ""), broken

