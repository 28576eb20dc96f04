"""The whole app, locally: Azurite + the Graph simulator + the dev host serving function_app.

Used by e2e tests, the chaos suite, benchmarks and `make run`.  Nothing here is a mock: the app's
own code (msgraph-sdk, azure-identity, the Storage SDKs) talks HTTP to the simulators and Azurite.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

from tests.support.azurite import Azurite, free_port, start_azurite
from tools.sim.graph import GraphSim
from tools.sim.traml import TramlSim

ROOT = Path(__file__).resolve().parents[2]
TENANT = "00000000-0000-0000-0000-0000000000aa"
CLIENT_ID = "00000000-0000-0000-0000-0000000000bb"
SECRET = "sim-secret-value-123"
CLIENT_STATE_KEYS = "1:e2e-client-state-key-0123456789"
WEBHOOK_KEY = "e2e-webhook-key"
FINISHED = ("processed", "skipped", "failed")  # a mail's ledger statuses that no retry changes


def app_settings(connection: str, graph: GraphSim, public_url: str, **extra: str) -> dict[str, str]:
    return {
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "AzureWebJobsStorage": connection,
        "GRAPH_CLIENTS": json.dumps({"demo": {"tenant_id": TENANT, "client_id": CLIENT_ID, "credential": "secret"}}),
        "GRAPH_CLIENT_SECRET_DEMO": SECRET,
        "GRAPH_BASE_URL": graph.graph_url,
        "GRAPH_AUTHORITY_HOST": graph.authority_host,
        "OUTBOUND_CA_BUNDLE": graph.ca_path,
        "PUBLIC_BASE_URL": public_url,
        "WEBHOOK_KEY": WEBHOOK_KEY,
        "CLIENT_STATE_KEYS": CLIENT_STATE_KEYS,
        "CRM_BACKEND": "table",
        "RENEW_SCHEDULE": "0 */30 * * * *",
        "SWEEP_SCHEDULE": "0 */10 * * * *",
        "PURGE_SCHEDULE": "0 30 3 * * *",
        **extra,
    }


def stop_all(*parts: Any) -> None:
    """Close HTTP clients and stop hosts, simulators and Azurite, in order, best effort (one that
    fails to stop does not keep the others running); None is skipped."""
    for part in parts:
        if part is None:
            continue
        try:
            (part.close if isinstance(part, httpx.Client) else part.stop)()
        except Exception:  # noqa: BLE001 - stopping is best effort
            pass


def make_mime(sender: str = "anna@customer.example", to: str = "support@contoso.example",
              subject: str = "Printer broken", body: str = "It does not print.", html: str | None = None,
              headers: dict[str, str] | None = None, message_id: str | None = "auto",
              attachments: list[tuple[str, str, bytes]] = ()) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(__import__("datetime").datetime.now(__import__("datetime").timezone.utc))
    if message_id == "auto":
        msg["Message-ID"] = make_msgid(domain=sender.split("@")[-1])
    elif message_id:
        msg["Message-ID"] = message_id
    for k, v in (headers or {}).items():
        msg[k] = v
    msg.set_content(body)
    if html:
        msg.add_alternative(html, subtype="html")
    for name, ctype, data in attachments:
        maintype, subtype = ctype.split("/", 1)
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return bytes(msg)


@dataclass
class Stack:
    azurite: Azurite | None = None
    connection: str = ""
    graph: GraphSim | None = None
    host: Any = None
    extra_settings: dict[str, str] = field(default_factory=dict)
    mailboxes: dict[str, dict[str, Any]] = field(default_factory=dict)

    # lifecycle -------------------------------------------------------------------------------
    def start(self, connection: str | None = None, timers: bool = False) -> "Stack":
        from shared import bootstrap
        from tools.devhost import DevHost
        if connection:
            self.connection = connection
        else:
            self.azurite = start_azurite()
            self.connection = self.azurite.connection_string
        port = free_port()
        public = f"http://127.0.0.1:{port}"
        self.graph = GraphSim().start()
        self.graph.add_app(TENANT, CLIENT_ID, secret=SECRET,
                           permissions={"Mail.ReadWrite", "Mail.Read", "User.Read.All"})
        bootstrap.reset()
        self.host = DevHost(ROOT, settings=app_settings(self.connection, self.graph, public, **self.extra_settings),
                            port=port, disable_timers=not timers)
        self.host.start()
        self.http = httpx.Client(base_url=self.host.url, timeout=30)
        return self

    def stop(self) -> None:
        from shared import bootstrap
        stop_all(getattr(self, "http", None), self.host, self.graph, self.azurite)
        bootstrap.reset()

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # helpers ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.host.url

    def add_mailbox(self, address: str, **fields: Any) -> dict[str, Any]:
        assert self.graph is not None
        self.graph.add_mailbox(address, tenant_id=TENANT)
        resp = self.http.post("/api/manage/mailboxes", json={"address": address, "client": "demo", **fields})
        assert resp.status_code == 201, resp.text
        self.mailboxes[address] = resp.json()
        return resp.json()

    def deliver(self, address: str, mime: bytes | None = None, **kw: Any) -> str:
        assert self.graph is not None
        return self.graph.deliver(address, mime if mime is not None else make_mime(to=address, **kw))

    def tickets(self) -> list[dict[str, Any]]:
        resp = self.http.get("/api/manage/tickets", params={"limit": 500})
        assert resp.status_code == 200, resp.text
        return resp.json()["tickets"]

    def ticket(self, number: str) -> dict[str, Any]:
        resp = self.http.get(f"/api/manage/tickets/{number}")
        assert resp.status_code == 200, resp.text
        return resp.json()

    def inbox(self, address: str) -> list[dict[str, Any]]:
        assert self.graph is not None
        return list(self.graph.messages(address, "Inbox"))

    @staticmethod
    def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1,
                   what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")

    def finished_row(self, address: str, message_id: str) -> Any:
        """The mail's ledger row once it is processed, skipped or failed; None before that."""
        row = self.run(self.services().ledger.get(self.mailboxes[address]["id"], message_id))
        return row if row and row.status in FINISHED else None

    def deliver_and_wait(self, address: str, raw: bytes, timeout: float = 30.0) -> tuple[str, Any]:
        """Deliver a mail and wait until it is processed or skipped: (Graph message id, ledger row)."""
        message_id = self.deliver(address, raw)
        row = self.wait_until(lambda: self.finished_row(address, message_id), timeout, what="mail processed")
        assert row.status in ("processed", "skipped"), row.last_error
        return message_id, row

    def services(self) -> Any:
        """The app's own services in the dev host's process (for ledger reads in assertions)."""
        from shared import bootstrap
        return bootstrap.services()

    def run(self, coro: Any) -> Any:
        """Run a coroutine on the dev host's worker loop (where the app's clients live)."""
        import asyncio
        return asyncio.run_coroutine_threadsafe(coro, self.host._worker_loop).result(60)


@contextmanager
def traml_with_template(name: str) -> Iterator[TramlSim]:
    """A started TRAML simulator (HTTPS) that knows one template naming the ticket number."""
    sim = TramlSim(tls=True).start()
    sim.add_template(name, "<p>Your ticket $$helpdesknumber$$</p>", "Your ticket $$helpdesknumber$$")
    try:
        yield sim
    finally:
        sim.stop()
