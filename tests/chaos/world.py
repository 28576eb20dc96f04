"""The chaos suite's world: the whole app in the dev host (in this process), Azurite on disk (so it
can be restarted mid-run), and the Graph, Lime CRM and TRAML simulators, plus the fault hooks.

Time: the app reads the Graph simulator's movable clock (bootstrap.override), so leases, claims,
the sweep's grace, its retry schedule and "several minutes" of outage pass by moving that clock,
not by waiting. Real time still drives the queues (host.json's 10 s visibility timeout) and the
dev host's message lease (2 s here: a killed worker's message reappears 2 s later). A job the app
re-enqueues after a transient failure carries its next try's time on the app's clock (not_before,
shared/domain/retry.py) and is put back when delivered early; `TimeLapse` shortens the real-time
visibility delay of those puts to a second, so that minutes the test passes in a step of the
clock do not become minutes of real waiting.

Killing a worker: `KillSwitch` wraps the ports the processor and the autoreply sender use (ledger,
Graph, CRM, queue; claim store, TRAML) and, for the mails it was told to, raises `WorkerKilled` (a
BaseException, as a dying process stops everything) right after the k-th step of the pipeline
(PROCESS_SEQUENCE, AUTOREPLY_SEQUENCE: the side-effecting calls in the order a new mail makes them).
Nothing is released: the ledger lease and the autoreply claim stay held, the queue message is
neither completed nor made visible again (it reappears when the dev host's lease lapses). Then the
clock moves past the leases, as it does while a dead worker's leases run out.
"""
from __future__ import annotations

import asyncio
import contextvars
import inspect
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx

from shared.services.autoreply import CLAIM_SECONDS
from shared.services.process import LEASE_SECONDS
from tests.support.azurite import Azurite, free_port, start_azurite
from tests.support.stack import CLIENT_ID, ROOT, SECRET, TENANT, app_settings, stop_all
from tools.sim.graph import GraphSim
from tools.sim.lime import DEMO_API_KEY as LIME_KEY, LimeSim
from tools.sim.traml import DEMO_API_KEY as TRAML_KEY, TramlSim

TEMPLATE = "Chaos autoreply"

# The calls that change something (or are a pipeline step of their own, like the GET of the mail).
PROCESS_STEPS = {
    "ledger": {"claim", "save"},
    "mail": {"get_message", "delete_message", "move_message"},
    "crm": {"find_or_create_person", "reserve_ticket_number", "create_ticket", "add_message_ids", "add_history",
            "add_document", "add_document_file", "set_ticket_status"},
    "queue": {"send"},
}
AUTOREPLY_STEPS = {"store": {"save"}, "traml": {"send_template"}, "crm": {"add_history"}, "limiter": {"acquire"}}
# Those calls in the order a new mail from a new sender makes them (new ticket, autoreply on, mail
# deleted): claim, GET, person, ticket number (Lime's: none to keep), ticket, Message-ID and
# parties, note, CRM step saved with its decision, autoreply job, DELETE, finished with the job
# recorded. (A mail that names a ticket, or a processing extension, has its decision saved first:
# tests/unit/test_extensions.py and the replies of phase 6 take that path.)
PROCESS_SEQUENCE = ("claim", "get_message", "find_or_create_person", "reserve_ticket_number", "create_ticket",
                    "add_message_ids", "add_history", "save", "send", "delete_message", "save")
# The autoreply sender's: claim, rate limit, send, `sentemail` note, verdict saved with the note.
AUTOREPLY_SEQUENCE = ("save", "acquire", "send_template", "add_history", "save")


class TimeLapse:
    """The processor's and the autoreply sender's queue, with each visibility delay cut to `cap`
    real seconds. The app still decides when a re-enqueued job runs, on its own (moved) clock."""

    def __init__(self, queue: Any, cap: float = 1.0) -> None:
        self._queue, self.cap = queue, cap
        self.delayed = 0  # puts with a delay: re-enqueues after transient failures, and put-backs

    async def send(self, queue: str, job: Any, visibility_timeout: int = 0) -> None:
        if visibility_timeout:
            self.delayed += 1
        await self._queue.send(queue, job, visibility_timeout=min(visibility_timeout, self.cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)


class WorkerKilled(BaseException):
    """The worker process died (not an Exception: nothing in the app may catch it)."""


class SimClock:
    def __init__(self, graph: GraphSim) -> None:
        self.graph = graph

    def now(self):
        return self.graph.now()


class KillSwitch:
    """Kills the invocation working on a chosen item right after the k-th step of `sequence`.

    Only a run that starts with the sequence's first call counts (one that found the lease held and
    re-queued the job is not a pipeline run), and the kill happens only when the k-th call is the
    k-th step: a run that a fault made take another path (the error's own ledger save, a resumed run
    with fewer calls) does not kill, and its plan is left for the test to move to a fresh mail."""

    def __init__(self, name: str, sequence: tuple[str, ...], on_kill: Callable[[str, int, str], None]) -> None:
        self.name = name
        self.sequence = sequence
        self.plans: dict[str, int] = {}  # item (message id) -> k
        self.fired: list[tuple[str, int, str]] = []
        self.calls: dict[str, list[list[str]]] = {}  # item -> the counted calls of each of its runs
        self._on_kill = on_kill
        self._current: contextvars.ContextVar[tuple[str, list[str]] | None] = contextvars.ContextVar(
            f"kill-{name}", default=None)

    def wrap_run(self, run: Callable[..., Any], item_of: Callable[[Any], str]) -> Callable[..., Any]:
        async def wrapped(job: Any, *args: Any, **kwargs: Any) -> Any:
            item = item_of(job)
            token = self._current.set((item, []) if item in self.plans else None)
            try:
                return await run(job, *args, **kwargs)
            finally:
                self._current.reset(token)
        return wrapped

    def proxy(self, target: Any, methods: set[str]) -> Any:
        return _Killing(target, methods, self)

    def after_call(self, method: str) -> None:
        state = self._current.get()
        if state is None:
            return
        item, calls = state
        if not calls:
            if method != self.sequence[0]:
                self._current.set(None)  # not a pipeline run
                return
            self.calls.setdefault(item, []).append(calls)
        calls.append(method)
        k = len(calls)
        if k == self.plans.get(item) and self.sequence[k - 1] == method:
            del self.plans[item]  # the redelivery runs clean
            self.fired.append((item, k, method))
            self._on_kill(item, k, method)
            raise WorkerKilled(f"{self.name}: killed after step {k} ({method})")


class _Killing:
    def __init__(self, target: Any, methods: set[str], switch: KillSwitch) -> None:
        self._target, self._methods, self._switch = target, methods, switch

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if name not in self._methods or not inspect.iscoroutinefunction(attr):
            return attr
        switch = self._switch

        async def call(*args: Any, **kwargs: Any) -> Any:
            result = await attr(*args, **kwargs)
            switch.after_call(name)
            return result
        return call


@dataclass
class Delivered:
    """One mail as delivered to one mailbox."""
    address: str
    message_id: str  # Graph's immutable id in that mailbox
    key: str  # the CRM idempotency key (the same for the copies in several mailboxes)
    conversation: str
    phase: str
    notified: bool = True


@dataclass
class World:
    tmp: Path
    seed: int = 8
    delivered: list[Delivered] = field(default_factory=list)
    mailbox_ids: dict[str, str] = field(default_factory=dict)

    # lifecycle ---------------------------------------------------------------------------------
    def start(self, mailboxes: list[str]) -> "World":
        from shared import bootstrap
        from tools.devhost import DevHost
        self.azurite: Azurite = start_azurite(location=str(self.tmp / "azurite"))
        self.graph = GraphSim(seed=self.seed).start()
        self.graph.add_app(TENANT, CLIENT_ID, secret=SECRET, permissions={"Mail.ReadWrite", "User.Read.All"})
        self.lime = LimeSim().start()
        self.traml = TramlSim().start()
        self.traml.add_template(TEMPLATE, "<p>Ticket $$helpdesknumber$$: $$title$$</p>", "Ticket $$helpdesknumber$$")
        port = free_port()
        settings = app_settings(self.azurite.connection_string, self.graph, f"http://127.0.0.1:{port}",
                                CRM_BACKEND="lime", LIME_CRM_URL=self.lime.lime_url, LIME_CRM_API_KEY=LIME_KEY,
                                LIME_RATE_LIMIT_REQUESTS="0", TRAML_BASE_URL=self.traml.api_url,
                                TRAML_API_KEY=TRAML_KEY)
        bootstrap.reset()
        bootstrap.override(clock=SimClock(self.graph))
        self.host = DevHost(ROOT, settings=settings, port=port, disable_timers=True, message_lease=2.0,
                            shutdown_timeout=3.0)
        self.host.start()
        self.http = httpx.Client(base_url=self.host.url, timeout=60)
        for address in mailboxes:
            self.graph.add_mailbox(address, tenant_id=TENANT)
            resp = self.http.post("/api/manage/mailboxes", json={
                "address": address, "client": "demo",
                "autoreply": {"enabled": True, "template": TEMPLATE, "from_name": "Chaos Support"}})
            assert resp.status_code == 201, resp.text
            self.mailbox_ids[address] = resp.json()["id"]
        self._install_kill_switches()
        return self

    def stop(self) -> None:
        from shared import bootstrap
        stop_all(*(getattr(self, name, None) for name in ("http", "host", "graph", "lime", "traml", "azurite")))
        bootstrap.reset()

    @property
    def services(self) -> Any:
        from shared import bootstrap
        return bootstrap.services()

    def run(self, coro: Any, timeout: float = 60) -> Any:
        """Run a coroutine on the dev host's loop, where the app's clients live."""
        return asyncio.run_coroutine_threadsafe(coro, self.host._worker_loop).result(timeout)

    # fault hooks -------------------------------------------------------------------------------
    def _install_kill_switches(self) -> None:
        svc = self.services
        self.time_lapse = TimeLapse(svc.processor.d.queue)
        svc.processor.d.queue = self.time_lapse
        svc.autoreplies.d.queue = TimeLapse(svc.autoreplies.d.queue)
        self.process_kills = KillSwitch("process_message", PROCESS_SEQUENCE, self._killed)
        d = svc.processor.d
        d.ledger = self.process_kills.proxy(d.ledger, PROCESS_STEPS["ledger"])
        d.mail = self.process_kills.proxy(d.mail, PROCESS_STEPS["mail"])
        d.crm = self.process_kills.proxy(d.crm, PROCESS_STEPS["crm"])
        d.queue = self.process_kills.proxy(d.queue, PROCESS_STEPS["queue"])
        svc.processor.run = self.process_kills.wrap_run(svc.processor.run, lambda job: job.message_id)
        self.autoreply_kills = KillSwitch("send_autoreply", AUTOREPLY_SEQUENCE, self._killed)
        a = svc.autoreplies
        for part, methods in AUTOREPLY_STEPS.items():
            setattr(a.d, part, self.autoreply_kills.proxy(getattr(a.d, part), methods))
        a.send = self.autoreply_kills.wrap_run(a.send, lambda job: job.message_id)

    def _killed(self, item: str, step: int, method: str) -> None:
        """A worker died: its leases run out before anyone takes the mail over."""
        self.graph.advance_clock(max(LEASE_SECONDS, CLAIM_SECONDS) + 1)

    # mail ----------------------------------------------------------------------------------------
    def deliver(self, address: str, raw: bytes, conversation: str, phase: str, notify: bool = True) -> Delivered:
        from shared.domain.mail import InboundMail
        mid = self.graph.deliver(address, raw, notify=notify)
        doc = self.graph.get_message(address, mid)
        key = InboundMail.from_graph(self.mailbox_ids[address], doc).idempotency_key()
        item = Delivered(address, mid, key, conversation, phase, notified=notify)
        self.delivered.append(item)
        return item

    def notify(self, item: Delivered) -> None:
        """Tell the app now of a mail delivered with ``notify=False`` (unless the simulator's
        chaos drops the notification: `notified` says which)."""
        records = self.graph.notify_created(item.address, [item.message_id])
        item.notified = any(not r.dropped for r in records)

    def subscription_of(self, address: str) -> str:
        box = self.mailbox_ids[address]
        subs = [s for s in self.graph.subscriptions() if f"mailbox={box}" in s["notificationUrl"]]
        assert len(subs) == 1, subs
        return subs[0]["id"]

    def rows(self, items: list[Delivered] | None = None) -> dict[tuple[str, str], Any]:
        """The ledger rows of every delivered mail (or of `items`), by (address, message id)."""
        ledger = self.services.ledger
        out: dict[tuple[str, str], Any] = {}
        by_box: dict[str, list[str]] = {}
        for d in self.delivered if items is None else items:
            by_box.setdefault(d.address, []).append(d.message_id)
        for address, mids in by_box.items():
            found = self.run(ledger.get_many(self.mailbox_ids[address], mids))
            for mid in mids:
                out[(address, mid)] = found.get(mid)
        return out

    def unfinished(self) -> list[Delivered]:
        rows = self.rows()
        return [d for d in self.delivered
                if (r := rows[(d.address, d.message_id)]) is None or r.status not in ("processed", "skipped", "failed")]

    def wait_settled(self, timeout: float, what: str = "mail finished") -> bool:
        """Until every delivered mail has a finished (or failed) ledger row; False at the deadline."""
        deadline = time.monotonic() + timeout
        interval = 0.5 if len(self.delivered) < 300 else 3.0  # reading 2,000 rows is not free either
        while time.monotonic() < deadline:
            try:
                if not self.unfinished():
                    return True
            except Exception:  # noqa: BLE001 - Azurite may be restarting
                pass
            time.sleep(interval)
        return False

    def sweep(self) -> None:
        """The sweep_inbox timer, now (as Core Tools' admin endpoint fires it)."""
        self.host.invoke("sweep_inbox", timeout=120)
