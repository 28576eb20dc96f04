"""The status page in a real headless Chromium (Debian's `chromium`, installed by .ci/run), driven
over the Chrome DevTools Protocol (a WebSocket, through aiohttp, already a runtime dependency).

The dev host enforces function keys here, so the page only fills in if every one of its fetches
carries the `?code=` it was loaded with. The test reads the rendered page, clicks the recovery
button with real mouse events, waits for the task the page follows, and saves screenshots to
artifacts/dashboard.png (after the recovery) and artifacts/dashboard-before-recovery.png.
"""
from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shared.domain import envelope
from shared.domain.envelope import MessageJob
from shared.domain.retry import NEXT_ATTEMPT
from tests.support.stack import CLIENT_ID, ROOT, TENANT, WEBHOOK_KEY, Stack, make_mime

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "artifacts"
MAILBOX = "support@contoso.example"
XSS = '<img src=x onerror="document.title=1">Printer'

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)),
    reason=f"Chromium is not installed at {CHROMIUM} (.ci/run installs Debian's chromium; set CHROMIUM to another)")


class Chromium:
    """A headless Chromium with a fresh profile and its DevTools endpoint on a free port."""

    FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
             "--window-size=1280,1500", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]

    def __enter__(self) -> "Chromium":
        self.profile = tempfile.mkdtemp(prefix="inbox-chromium-")
        self.proc = subprocess.Popen([CHROMIUM, *self.FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Chromium did not open its DevTools port (exit code {self.proc.poll()})")
            time.sleep(0.05)
        self.port = int(port_file.read_text().split()[0])
        return self

    def __exit__(self, *exc: Any) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


class Page:
    """Just enough CDP: commands by id, events ignored, a few helpers on top."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws, self.ids = ws, itertools.count(1)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        await self.ws.send_json({"id": msg_id, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self.ws.receive(), 30)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"DevTools connection closed: {msg.type}")
            doc = json.loads(msg.data)
            if doc.get("id") == msg_id:
                if "error" in doc:
                    raise RuntimeError(f"{method}: {doc['error']}")
                return doc.get("result", {})

    async def js(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 30, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.js(expression)
            if value:
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what or expression}; page error: "
                             f"{await self.js('document.body.dataset.error || null')}")

    async def click(self, selector: str) -> None:
        box = await self.js(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                            ".getBoundingClientRect(); return {x: r.x + r.width / 2, y: r.y + r.height / 2}; })()")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"], button="left",
                            clickCount=1)

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))


@pytest.fixture(scope="module")
def stack():
    # the demo client's secret expires in 10 days (a date: its midnight is 10 to 11 days away, so
    # 10 whole days whatever the time of day): the page warns before anything stops
    expires = (datetime.now(timezone.utc) + timedelta(days=11)).date().isoformat()
    clients = {"demo": {"tenant_id": TENANT, "client_id": CLIENT_ID, "credential": "secret", "secret_expires": expires}}
    with Stack(extra_settings={"GRAPH_CLIENTS": json.dumps(clients)}) as s:
        # Enforce function keys like Azure does (Stack starts the dev host without): the webhook
        # URLs Graph calls carry WEBHOOK_KEY, and so does every request of this test.
        s.host._function_key = s.host._master_key = WEBHOOK_KEY
        s.host.enforce_keys = True
        s.http.headers["x-functions-key"] = WEBHOOK_KEY
        s.add_mailbox(MAILBOX, start_date=(datetime.now(timezone.utc) - timedelta(days=1)).isoformat())
        yield s


def seed(stack: Stack) -> tuple[list[str], list[str]]:
    """Two Failed mails (the poison handler, run directly) and three unprocessed ones."""
    box = stack.mailboxes[MAILBOX]["id"]
    ten_minutes_ago = datetime.now(timezone.utc) - timedelta(minutes=10)
    failed = [stack.graph.deliver(MAILBOX, make_mime(to=MAILBOX, subject=s), notify=False,
                                  received_at=ten_minutes_ago) for s in (XSS, "Invoice 4711")]
    for mid in failed:
        stack.host.invoke("message_failed", envelope.encode(MessageJob(mailbox_id=box, message_id=mid,
                                                                       tenant_id=TENANT)))
    waiting = stack.graph.deliver_many(MAILBOX, [make_mime(to=MAILBOX, sender=f"waiting{i}@customer.example",
                                                           subject=f"Waiting {i}") for i in range(3)],
                                       notify=False, received_at=ten_minutes_ago)
    # the first one waits for a dependency: tried, the CRM was down, its next try is queued (retrying)
    ledger = stack.services().ledger
    row = stack.run(ledger.claim(box, waiting[0], "a-worker", 120, "c-retrying", "webhook"))
    row.lease_owner, row.lease_until = "", None
    row.last_error = "Unavailable: Lime CRM answered 503"
    row.data[NEXT_ATTEMPT] = (datetime.now(timezone.utc) + timedelta(minutes=20)).isoformat()
    stack.run(ledger.save(row))
    return failed, waiting


async def _drive(stack: Stack, failed: list[str], waiting: list[str]) -> dict[str, Any]:
    with Chromium() as browser:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{browser.port}/json/list") as resp:
                target = next(t for t in await resp.json() if t["type"] == "page")
            async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=64 * 2 ** 20) as ws:
                page = Page(ws)
                await page.send("Page.enable")
                await page.send("Runtime.enable")
                # without the key the page itself is refused
                await page.send("Page.navigate", url=f"{stack.url}/api/manage/dashboard")
                await page.wait_for("document.readyState === 'complete'", what="the refused page")
                assert await page.js("document.getElementById('recover-button') === null")

                await page.send("Page.navigate", url=f"{stack.url}/api/manage/dashboard?code={WEBHOOK_KEY}")
                await page.wait_for("document.body && document.body.dataset.loaded >= '1'", what="the page loaded")
                seen: dict[str, Any] = await page.js("""(() => ({
                    failed: document.getElementById('summary-failed').textContent,
                    unprocessed: document.getElementById('summary-unprocessed').textContent,
                    retrying: document.getElementById('summary-retrying').textContent,
                    nextRetry: document.getElementById('summary-next-retry').textContent,
                    retryingCard: document.getElementById('card-retrying').className,
                    inboxes: document.getElementById('summary-inboxes').textContent,
                    failedRows: [...document.querySelectorAll('#failed-table tbody tr')].map(r => r.innerText),
                    waitingRows: [...document.querySelectorAll('#unprocessed-table tbody tr')].map(r => r.innerText),
                    inboxRows: [...document.querySelectorAll('#inboxes-table tbody tr')].map(r => r.innerText),
                    images: document.querySelectorAll('img').length,
                    title: document.title,
                    options: [...document.querySelectorAll('#recover-mailbox option')].map(o => o.textContent),
                    warnings: [...document.querySelectorAll('#warnings li')].map(li => li.className + ': ' + li.textContent),
                    healthy: document.getElementById('healthy').textContent,
                }))()""")
                await page.screenshot(ARTIFACTS / "dashboard-before-recovery.png")

                yesterday = (datetime.now(timezone.utc) - timedelta(days=1)).date().isoformat()
                await page.js(f"document.getElementById('recover-since').value = '{yesterday}'")
                await page.js("document.getElementById('recover-status').value = 'unprocessed'")
                loads = int(await page.js("document.body.dataset.loaded"))
                await page.click("#recover-button")
                await page.wait_for("document.getElementById('recover-result').dataset.status === 'done'",
                                    timeout=90, what="the recovery the page follows to done")
                await page.wait_for(f"Number(document.body.dataset.loaded) > {loads}", what="the page refreshed")
                seen["after"] = await page.js("document.getElementById('summary-unprocessed').textContent")
                seen["retrying_after"] = await page.js("document.getElementById('summary-retrying').textContent")
                seen["result"] = await page.js("document.getElementById('recover-result').textContent")
                seen["task"] = await page.js("document.getElementById('recover-result').dataset.task")
                seen["tasks"] = await page.js(
                    "[...document.querySelectorAll('#tasks-table tbody tr')].map(r => r.innerText)")
                await page.screenshot(ARTIFACTS / "dashboard.png")
                return seen


def test_dashboard_shows_failed_and_unprocessed_mail_and_starts_a_recovery(stack):
    failed, waiting = seed(stack)
    seen = asyncio.run(_drive(stack, failed, waiting))

    assert seen["inboxes"] == "1" and seen["failed"] == "2" and seen["unprocessed"] == "2"
    # the mail waiting for a dependency: counted apart (amber), with its next try, listed with its state
    assert seen["retrying"] == "1" and "warn" in seen["retryingCard"].split(), seen["retryingCard"]
    assert seen["nextRetry"].startswith("waiting for a dependency; next try ")
    [retrying_row] = [r for r in seen["waitingRows"] if "Waiting 0" in r]
    assert "retrying, next try" in retrying_row and "Lime CRM answered 503" in retrying_row
    assert len(seen["failedRows"]) == 2 and any("Invoice 4711" in r for r in seen["failedRows"])
    assert any(XSS in r for r in seen["failedRows"])  # shown as text ...
    assert seen["images"] == 0 and seen["title"] == "Inbox status"  # ... never as markup
    assert sorted(r.split("\t")[3] for r in seen["waitingRows"]) == ["Waiting 0", "Waiting 1", "Waiting 2"]
    assert any(MAILBOX in r and "Active" in r for r in seen["inboxRows"])
    assert MAILBOX in seen["options"]
    [warning] = seen["warnings"]
    assert warning.startswith("warning: Graph client demo: the client secret expires in 10 day(s)"), warning
    assert seen["healthy"] == "Needs attention"

    assert seen["after"] == "0" and seen["retrying_after"] == "0", "the refreshed summary shows none left"
    assert seen["result"].startswith("Recovery done: 3 processed"), seen["result"]
    assert seen["task"] and any("unprocessed" in r and "done" in r for r in seen["tasks"])
    titles = [t["title"] for t in stack.tickets()]
    assert all(titles.count(f"Waiting {i}") == 1 for i in range(3))
    assert "Invoice 4711" not in titles  # the failed ones were not part of that recovery
    for name in ("dashboard.png", "dashboard-before-recovery.png"):
        data = (ARTIFACTS / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
