"""Admin API, timers, NCRONTAB parsing and the CLI."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from tests.devhost.conftest import SAMPLE_APP, b64decode_text, drain_raw
from tools.devhost import DevHost, DevHostError
from tools.devhost_parts.ncrontab import Schedule

ROOT = Path(__file__).resolve().parents[2]


def test_admin_fires_a_timer_and_a_queue_function(devhost: DevHost, settings):
    r = httpx.post(f"{devhost.url}/admin/functions/tick", json={"input": ""})
    assert r.status_code == 202
    devhost.wait_for_invocations("tick")
    assert devhost.module.SEEN["tick"] == [{"past_due": False}]

    r = httpx.post(f"{devhost.url}/admin/functions/work", json={"input": "from admin"})
    assert r.status_code == 202
    [record] = devhost.wait_for_invocations("work")
    assert record.ok and record.source == "admin"
    assert devhost.module.SEEN["work"][0] == {"id": record.message_id, "body": "from admin", "dequeue_count": 1}
    [done] = drain_raw(settings["AzureWebJobsStorage"], settings["DONE_QUEUE"], 1)
    assert b64decode_text(done) == "done:from admin"

    assert httpx.post(f"{devhost.url}/admin/functions/nope", json={"input": ""}).status_code == 404
    assert httpx.post(f"{devhost.url}/admin/functions/echo", json={"input": ""}).status_code == 400


def test_admin_reports_the_hosts_queue_requests_by_kind(devhost: DevHost, settings):
    """GET /admin/devhost/storage-ops: the host's own queue traffic (polling, completing messages),
    which bench/pipeline.py adds to the app's Storage requests per mail."""
    before = httpx.get(f"{devhost.url}/admin/devhost/storage-ops").json()
    httpx.post(f"{devhost.url}/admin/functions/work", json={"input": "count me"})
    devhost.wait_for_invocations("work")
    drain_raw(settings["AzureWebJobsStorage"], settings["DONE_QUEUE"], 1)
    after = httpx.get(f"{devhost.url}/admin/devhost/storage-ops").json()
    assert set(after) == {"host", "app"}
    grew = {k: v - before["host"].get(k, 0) for k, v in after["host"].items() if v > before["host"].get(k, 0)}
    assert any(k.endswith(" put") for k in grew), grew  # the function's output binding wrote the DONE queue
    assert all(k.rsplit(" ", 1)[1] in ("get", "put", "delete", "update") for k in after["host"]), after


def test_invoke_in_process_returns_or_raises(devhost: DevHost):
    assert devhost.invoke("work", "direct") is None
    with pytest.raises(ValueError, match="asked to fail"):
        devhost.invoke("work", "fail now")
    devhost.invoke("tick")
    assert len(devhost.module.SEEN["tick"]) == 1


def test_timer_runs_on_schedule_unless_disabled(start_host):
    host = start_host({"TICK_SCHEDULE": "*/1 * * * * *"}, disable_timers=False)
    off = start_host({"TICK_SCHEDULE": "*/1 * * * * *", "AzureWebJobs.tick.Disabled": "true"},
                     disable_timers=False, only=["tick"])
    records = host.wait_for_invocations("tick", count=2, timeout=5)
    assert all(r.ok for r in records)
    assert not [r for r in off.invocations if r.function == "tick"]


def test_ncrontab_schedules():
    t = datetime(2026, 1, 1, 10, 0, 0, 500000, tzinfo=timezone.utc)     # a Thursday
    assert Schedule("0 */5 * * * *").next_after(t) == t.replace(minute=5, second=0, microsecond=0)
    assert Schedule("*/10 * * * * *").next_after(t) == t.replace(second=10, microsecond=0)
    assert Schedule("0 0 9 * * Mon-Fri").next_after(t) == datetime(2026, 1, 2, 9, tzinfo=timezone.utc)
    assert Schedule("0 0,30 8-9 * * 6").next_after(t) == datetime(2026, 1, 3, 8, tzinfo=timezone.utc)
    assert Schedule("0 30 2 29 2 *").next_after(t) == datetime(2028, 2, 29, 2, 30, tzinfo=timezone.utc)
    assert Schedule("*/10 * * * *").next_after(t) == t.replace(minute=10, second=0, microsecond=0)  # 5 fields
    for bad in ("* * * *", "61 * * * * *", "0 0 25 * * *", "x * * * * *"):
        with pytest.raises(DevHostError):
            Schedule(bad)


def test_invalid_schedule_fails_start_up(settings):
    with pytest.raises(DevHostError, match="tick.*not recognized"):
        DevHost(SAMPLE_APP, {**settings, "TICK_SCHEDULE": "every minute"}).start()


def test_cli_prints_ready_and_stops_on_sigterm(tmp_path, settings):
    (tmp_path / "local.settings.json").write_text(
        '{"IsEncrypted": false, "Values": ' + __import__("json").dumps(settings) + "}")
    env = {k: v for k, v in os.environ.items() if k not in settings}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tools" / "devhost.py"), "--app-dir", str(SAMPLE_APP), "--port", "0",
         "--settings", str(tmp_path / "local.settings.json"), "--only", "echo,tick", "--disable-timers"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("ready http://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
        url = line.split()[1]
        assert httpx.get(f"{url}/api/echo/5").json()["route_params"] == {"id": "5"}
        assert httpx.get(f"{url}/api/secure").status_code == 404          # not loaded (--only)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_reports_start_up_errors(tmp_path, settings):
    partial = {k: v for k, v in settings.items() if k != "WORK_QUEUE"}
    (tmp_path / "s.json").write_text('{"Values": ' + __import__("json").dumps(partial) + "}")
    env = {k: v for k, v in os.environ.items() if k not in settings}
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "devhost.py"), "--app-dir", str(SAMPLE_APP),
                             "--port", "0", "--settings", str(tmp_path / "s.json")],
                            capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 2 and "WORK_QUEUE" in result.stderr


def test_function_timeout_context_and_return_output(tmp_path, settings, unique):
    (tmp_path / "host.json").write_text('{"version": "2.0", "functionTimeout": "00:00:00.3"}')
    (tmp_path / "function_app.py").write_text(
        "import asyncio\n"
        "import azure.functions as func\n"
        "app = func.FunctionApp()\n"
        "CONTEXTS = []\n"
        "@app.queue_trigger(arg_name='msg', queue_name='%IN_Q%', connection='AzureWebJobsStorage')\n"
        "@app.queue_output(arg_name='$return', queue_name='%OUT_Q%', connection='AzureWebJobsStorage')\n"
        "async def relay(msg: func.QueueMessage, context: func.Context) -> str:\n"
        "    CONTEXTS.append((context.function_name, context.invocation_id))\n"
        "    await asyncio.sleep(float(msg.get_body()))\n"
        "    return 'relayed'\n")
    host = DevHost(tmp_path, {"AzureWebJobsStorage": settings["AzureWebJobsStorage"],
                              "IN_Q": f"in{unique}", "OUT_Q": f"out{unique}"})
    with host:
        assert host.invoke("relay", "0") == "relayed"
        [out] = drain_raw(settings["AzureWebJobsStorage"], f"out{unique}", 1)
        assert b64decode_text(out) == "relayed"
        with pytest.raises(Exception) as info:
            host.invoke("relay", "2")
        assert type(info.value).__name__ == "FunctionTimeoutError"
        assert [c[0] for c in host.module.CONTEXTS] == ["relay", "relay"]
