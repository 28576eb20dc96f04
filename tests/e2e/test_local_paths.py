"""The README's local paths, run as a user runs them, in subprocesses stopped with Ctrl-C (SIGINT):

- `make run` (tools/run_local.py): the demo mails become tickets AND autoreplies (through the TRAML
  simulator it starts), one line is printed per function invocation, and Ctrl-C stops everything
  without "Unclosed client session" / "Unclosed connector" warnings;
- `python -m tools.devhost --settings local.settings.json`, the Core-Tools-free alternative to
  `func start`: it serves the real app from a settings file, processes a mail, logs each invocation
  with the mail's id, and stops as cleanly.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.support.azurite import free_port, start_azurite
from tests.support.stack import ROOT, TENANT, app_settings, make_mime, stop_all
from tools.sim.graph import GraphSim

UNCLOSED = ("Unclosed client session", "Unclosed connector", "Task was destroyed but it is pending")


class Lines:
    """A subprocess's output read on a thread, so that the test can wait for a line."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._cv = threading.Condition()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            with self._cv:
                self.lines.append(line.rstrip("\n"))
                self._cv.notify_all()

    def wait_for(self, text: str, timeout: float, proc: subprocess.Popen) -> str:
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                found = next((line for line in self.lines if text in line), None)
                if found is not None:
                    return found
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"no line with {text!r} (exit code {proc.poll()}):\n" + "\n".join(self.lines))
                self._cv.wait(0.2)

    @property
    def text(self) -> str:
        with self._cv:
            return "\n".join(self.lines)


def start(args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Lines, Lines]:
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**(env or os.environ), "PYTHONUNBUFFERED": "1"})
    return proc, Lines(proc.stdout), Lines(proc.stderr)


def interrupt(proc: subprocess.Popen, timeout: float = 60) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("did not stop within a minute of Ctrl-C") from None


def test_make_run_shows_tickets_and_autoreplies_prints_invocations_and_stops_cleanly(tmp_path):
    proc, out, err = start(["tools/run_local.py", "--port", str(free_port()), "--data", str(tmp_path / "azurite")])
    try:
        out.wait_for("Ctrl-C stops.", 180, proc)
        text = out.text
        assert "3 new ticket(s):" in text, text
        for title in ("Printer broken", "Invoice 4711 is wrong", "Cannot log in"):
            assert f"] {title}  (status started" in text, text
        assert "3 autoreply(ies) sent through the TRAML simulator:" in text, text
        assert "to anna@customer.example: 'Printer broken [" in text, text
        # one line per invocation: time, function, outcome, duration, what it was about
        processed = [line for line in out.lines if line.split()[1:3] == ["process_message", "ok"]]
        assert len(processed) == 3 and all("message_id=" in line and " ms " in line for line in processed), text
        assert len([line for line in out.lines if line.split()[1:3] == ["send_autoreply", "ok"]]) == 3, text
        assert any(line.split()[1:3] == ["graph_notifications", "202"] and "POST /api/notifications" in line
                   for line in out.lines), text
        assert "/api/manage/dashboard" in text
    finally:
        code = interrupt(proc)
    assert code == 0, err.text
    assert not any(u in err.text for u in UNCLOSED), err.text
    assert "Stopping..." in out.text


@pytest.fixture
def outside():
    """Azurite and the Graph simulator the dev host's settings file points at."""
    azurite = start_azurite()
    graph = GraphSim().start()
    yield azurite, graph
    stop_all(graph, azurite)


def test_devhost_serves_the_app_from_local_settings_json_and_stops_cleanly(tmp_path, outside):
    from tests.support.stack import CLIENT_ID, SECRET
    azurite, graph = outside
    graph.add_app(TENANT, CLIENT_ID, secret=SECRET, permissions={"Mail.ReadWrite", "User.Read.All"})
    graph.add_mailbox("support@contoso.example", tenant_id=TENANT)
    port = free_port()
    values = app_settings(azurite.connection_string, graph, f"http://127.0.0.1:{port}")
    settings = tmp_path / "local.settings.json"
    settings.write_text(json.dumps({"IsEncrypted": False, "Values": values, "Host": {"LocalHttpPort": port}}))
    env = {k: v for k, v in os.environ.items() if k not in values}   # the file is what configures it
    proc, out, err = start(["-m", "tools.devhost", "--settings", str(settings), "--port", str(port)], env)
    try:
        url = out.wait_for("ready http://", 60, proc).split()[1]
        with httpx.Client(base_url=url, timeout=30) as http:
            resp = http.post("/api/manage/mailboxes", json={"address": "support@contoso.example", "client": "demo"})
            assert resp.status_code == 201, resp.text
            mail_id = graph.deliver("support@contoso.example", make_mime(subject="From the settings file"))
            deadline = time.monotonic() + 60
            while not any(t["title"] == "From the settings file" for t in http.get("/api/manage/tickets").json()["tickets"]):
                assert time.monotonic() < deadline, err.text
                time.sleep(0.3)
        err.wait_for(f"Executed 'Functions.process_message' (Succeeded", 30, proc)
        assert f"message_id={mail_id}" in err.text
        assert "Executed 'Functions.manage_mailboxes' (Succeeded" in err.text and "status=201" in err.text
    finally:
        code = interrupt(proc)
    assert code == 0, err.text
    assert not any(u in err.text for u in UNCLOSED), err.text
