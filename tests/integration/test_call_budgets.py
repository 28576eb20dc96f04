"""Call budgets per mail (issue 14; design.md "Budgets per mail"): requests counted, never timed.

One mail of each case goes through the real processor and the real autoreply sender on the real
adapters: Lime CRM (tools/sim/lime.py) with our create records and ticket index in Azurite; the
ledger, the queues, the autoreply claims and rate limits in Azurite; TRAML (tools/sim/traml.py).
The mail comes from an in-memory mailbox of real MIME (Graph's budget is bench/pipeline.py's).
What the Functions host does per queue message is done here too: the webhook's put, the trigger's
receive and, after the function, its delete. Lime requests are counted by the simulator by kind
(`LimeSim.counts`), Storage requests by the SDK clients' request hook (shared/adapters/storage_ops.py).

Per-worker warm-ups are not a mail's: Lime's schema check (hourly), the TRAML template's id
(cached), mailbox rows (read through a 15-second cache; an in-memory registry here), the status
page's last-processed row (written at most every 30 s per mailbox): a first mail from someone else
goes through before the one counted.

The second part: the same mail in two mailboxes at once, the worker of one dying right after
Lime's create: one ticket, one note, both copies processed.
"""
from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from shared.adapters.autoreply_state import TableAutoreplyStore, TableRateLimiter
from shared.adapters.crm_lime import LimeCrm, TableRecordTable
from shared.adapters.ledger_table import TableLedger
from shared.adapters.queues import StorageJobQueue
from shared.adapters.storage_clients import StorageAccount
from shared.adapters.storage_ops import OpCounter
from shared.adapters.traml import TramlClient
from shared.config import QUEUE_AUTOREPLIES, QUEUE_MESSAGES
from shared.domain import envelope
from shared.domain.envelope import AutoreplyJob, MessageJob
from shared.domain.model import PROCESSED, AutoreplySettings, Mailbox
from shared.services.autoreply import AutoreplyDeps, AutoreplyService
from shared.services.process import LEASE_SECONDS, MessageProcessor, ProcessDeps
from tests.fakes import FakeClock, FakeRegistry
from tests.fixtures.mail import mime as m
from tests.support.azurite import start_azurite
from tests.support.mime_mailbox import MimeMailbox
from tools.sim.lime import DEMO_API_KEY as LIME_KEY, LimeSim
from tools.sim.traml import DEMO_API_KEY as TRAML_KEY, TramlSim

SUPPORT = "support@contoso.example"
SALES = "sales@contoso.example"
TEMPLATE = "Helpdesk autoreply"
# design.md "Budgets per mail"
LIME_KNOWN_SENDER, LIME_NEW_SENDER, LIME_FOLLOW_UP = 5, 6, 2
STORAGE_PLAIN_NEW_TICKET = 15


@pytest.fixture(scope="module")
def sims():
    azurite = start_azurite()  # its own: the queues here must hold only this module's messages
    lime, traml = LimeSim().start(), TramlSim().start()
    traml.add_template(TEMPLATE, "<p>Ticket $$helpdesknumber$$</p>", "Ticket $$helpdesknumber$$")
    try:
        yield azurite, lime, traml
    finally:
        lime.stop()
        traml.stop()
        azurite.stop()


class Stack:
    def __init__(self, sims: Any, unique: str) -> None:
        azurite, self.lime, self.traml = sims
        self.ops = OpCounter()
        self.account = StorageAccount(azurite.connection_string, {}, ops=self.ops)
        self.clock = FakeClock()
        self.unique = unique
        self.boxes = {a: Mailbox(id=f"box-{a.split('@')[0]}", address=a, client="demo", tenant_id="t",
                                 autoreply=AutoreplySettings(enabled=True, template=TEMPLATE, from_name="Support"))
                      for a in (SUPPORT, SALES)}
        self.mail = MimeMailbox()
        self.ledger = TableLedger(self.account, self.clock, table=f"ledger{unique}")
        self.queue = StorageJobQueue(self.account)
        self.crm = self.new_crm()
        self.traml_client = TramlClient(self.traml.api_url, TRAML_KEY)
        self.store = TableAutoreplyStore(self.account, self.clock, table=f"ledger{unique}")
        self.limiter = TableRateLimiter(self.account, table=f"rates{unique}")
        self.autoreply = AutoreplyService(AutoreplyDeps(
            registry=FakeRegistry(*self.boxes.values()), ledger=self.ledger, crm=self.crm, queue=self.queue,
            clock=self.clock, traml=self.traml_client, store=self.store, limiter=self.limiter))

    def new_crm(self) -> LimeCrm:
        """A worker's LimeCrm (its own lookup cache), sharing our records with the others."""
        return LimeCrm(self.lime.lime_url, LIME_KEY, records=TableRecordTable(self.account, table=f"lime{self.unique}"),
                       clock=self.clock.now, record_clock=self.clock.now)

    def processor(self, crm: Any = None) -> MessageProcessor:
        return MessageProcessor(ProcessDeps(
            registry=FakeRegistry(*self.boxes.values()), ledger=self.ledger, mail=self.mail, crm=crm or self.crm,
            queue=self.queue, clock=self.clock))

    async def start(self) -> "Stack":
        self.lime.reset()
        self.traml.clear_sent()
        await self.account.ensure_tables(f"ledger{self.unique}", f"rates{self.unique}")
        await self.account.ensure_queues(QUEUE_MESSAGES, QUEUE_AUTOREPLIES)
        for name in (QUEUE_MESSAGES, QUEUE_AUTOREPLIES):
            await self.account.queue(name).clear_messages()
        await self.crm.ensure()
        await self.crm.check_schema()  # per worker, hourly: not a mail's
        await self.traml_client.template_id(TEMPLATE)  # cached per worker: not a mail's
        await self.one_mail(m.outlook("Warm Up <warm@warm-up.example>", SUPPORT, "Warm-up", "First of the day.",
                                      message_id=m.outlook_id(f"budget/warm-up/{self.unique}")))
        self.traml.clear_sent()
        return self

    async def close(self) -> None:
        await self.crm.close()
        await self.traml_client.close()
        await self.account.close()

    def deliver(self, raw: bytes, box: str = SUPPORT) -> MessageJob:
        message_id = self.mail.deliver(self.boxes[box], raw, self.clock.now() - timedelta(minutes=1))
        return MessageJob(mailbox_id=self.boxes[box].id, message_id=message_id, tenant_id="t")

    async def one_mail(self, raw: bytes) -> tuple[Any, dict[str, int], dict[str, int]]:
        """The mail's whole way, as the host runs it: (outcome, Lime requests by kind, Storage
        requests by kind; the host's receives, one per batch of up to 32 messages, left out)."""
        self.ops.reset()
        start = len(self.lime.calls)
        job = self.deliver(raw)
        await self.queue.send(QUEUE_MESSAGES, job)  # the webhook
        outcome = await self._trigger(QUEUE_MESSAGES, MessageJob, lambda j: self.processor().run(j))
        if outcome.data.get("autoreply"):
            await self._trigger(QUEUE_AUTOREPLIES, AutoreplyJob, self.autoreply.send)
        storage = {k: v for k, v in self.ops.snapshot().items() if not k.endswith(" get")}
        return outcome, self.lime.counts(start), storage

    async def _trigger(self, queue: str, kind: Any, run: Any) -> Any:
        client = self.account.queue(queue)
        (message,) = [msg async for msg in client.receive_messages(max_messages=32)]
        result = await run(envelope.decode(message.content, kind))
        await client.delete_message(message)
        return result


@pytest.fixture
async def stack(sims, unique):
    s = await Stack(sims, unique).start()
    yield s
    await s.close()


def lime_total(kinds: dict[str, int]) -> int:
    return sum(kinds.values())


async def test_a_known_sender_with_a_company_costs_four_lime_requests(stack):
    company = stack.lime.create("company", {"name": "Acme AB"})
    stack.lime.create("person", {"firstname": "Anna", "lastname": "A", "email": "anna@acme.example",
                                 "company": company["_id"]})
    outcome, lime, storage = await stack.one_mail(
        m.outlook("Anna A <anna@acme.example>", SUPPORT, "Printer broken", "It prints blank pages.",
                  message_id=m.outlook_id("budget/known")))
    assert outcome.status == PROCESSED and outcome.data["action"] == "new"
    # the sender (person and its domain in one query), the ticket, the mail's note, the autoreply's note
    assert lime == {"GET query/": 1, "POST limeobject/helpdesk/": 1, "POST limeobject/history/": 2}
    assert lime_total(lime) <= LIME_KNOWN_SENDER
    assert len(stack.traml.sent_mail()) == 1
    assert sum(storage.values()) <= STORAGE_PLAIN_NEW_TICKET, storage
    # what it is made of: the webhook's put; the ledger's claim, CRM step (with the decision: a mail
    # that names no ticket decides the same on a retry), finished; the autoreply job's put; the Lime
    # records' claim and their record with the ticket index (two transactions); the autoreply's
    # ledger read, claim, rate limit, SENT with its list row (one transaction); the host's deletes
    # of the two queue messages
    ledger = f"table ledger{stack.unique}"
    assert storage == {"queue inbox-messages put": 1, f"{ledger} insert": 2, f"{ledger} update": 2,
                       "table - batch": 3, "queue inbox-autoreplies put": 1, f"{ledger} read": 1,
                       f"table rates{stack.unique} insert": 1, "queue inbox-messages delete": 1,
                       "queue inbox-autoreplies delete": 1}, storage


async def test_a_known_sender_without_a_company_costs_five(stack):
    stack.lime.create("person", {"firstname": "Bo", "lastname": "B", "email": "bo@nocompany.example"})
    outcome, lime, storage = await stack.one_mail(
        m.outlook("Bo B <bo@nocompany.example>", SUPPORT, "Invoice question", "Where is it?",
                  message_id=m.outlook_id("budget/known-no-company")))
    assert outcome.status == PROCESSED and outcome.data["action"] == "new"
    # + the companies matching the address, its domain or website (levels b-d, one query); level e
    # came with the person's query
    assert lime == {"GET query/": 2, "POST limeobject/helpdesk/": 1, "POST limeobject/history/": 2}
    assert lime_total(lime) <= LIME_KNOWN_SENDER
    assert sum(storage.values()) <= STORAGE_PLAIN_NEW_TICKET, storage


async def test_a_new_sender_costs_six(stack):
    outcome, lime, storage = await stack.one_mail(
        m.outlook("Cecilia C <cecilia@newcomer.example>", SUPPORT, "Cannot log in", "Help",
                  message_id=m.outlook_id("budget/new")))
    assert outcome.status == PROCESSED and outcome.data["action"] == "new"
    assert lime == {"GET query/": 2, "POST limeobject/person/": 1, "POST limeobject/helpdesk/": 1,
                    "POST limeobject/history/": 2}
    assert lime_total(lime) <= LIME_NEW_SENDER
    assert len(stack.lime.objects("person")) == 2  # the warm-up's sender's and hers
    # the person's record is one more row in the same two transactions
    assert sum(storage.values()) <= STORAGE_PLAIN_NEW_TICKET, storage


async def test_a_follow_up_costs_two(stack):
    stack.lime.create("person", {"firstname": "Dan", "lastname": "D", "email": "dan@acme.example"})
    first = m.outlook_id("budget/first")
    await stack.one_mail(m.outlook("Dan D <dan@acme.example>", SUPPORT, "VPN drops", "Every hour.", message_id=first))
    stack.crm.lookups.clear()  # even with nothing cached: the ticket's index knows its person
    outcome, lime, storage = await stack.one_mail(
        m.outlook("Dan D <dan@acme.example>", SUPPORT, "RE: VPN drops", "Still.", message_id=m.outlook_id("budget/re"),
                  in_reply_to=first, references=[first]))
    assert outcome.status == PROCESSED and outcome.data["action"] == "follow-up"
    # the ticket as it is now (open or closed), the note; no autoreply for a follow-up
    assert lime == {"GET limeobject/helpdesk/{id}/": 1, "POST limeobject/history/": 1}
    assert lime_total(lime) <= LIME_FOLLOW_UP
    assert len(stack.lime.objects("helpdesk")) == 2 and len(stack.traml.sent_mail()) == 1  # + the warm-up's


async def test_an_attachment_adds_its_upload_and_its_document(stack):
    """Two requests per attachment, not one: Lime's file API takes the bytes (POST file/) and a
    document limeobject refers to the file's id; no documented request does both."""
    company = stack.lime.create("company", {"name": "Acme AB"})
    stack.lime.create("person", {"firstname": "Eva", "lastname": "E", "email": "eva@acme.example",
                                 "company": company["_id"]})
    outcome, lime, _ = await stack.one_mail(
        m.outlook("Eva E <eva@acme.example>", SUPPORT, "Order status", "See the order.",
                  message_id=m.outlook_id("budget/attachment"), attachments=[("order.pdf", "application/pdf", m.PDF)]))
    assert outcome.status == PROCESSED
    assert lime == {"GET query/": 1, "POST limeobject/helpdesk/": 1, "POST limeobject/history/": 2,
                    "POST file/": 1, "POST limeobject/document/": 1}


# -- the same mail in two mailboxes, a worker dying right after Lime's create ------------------------------
class Died(BaseException):
    """The worker process dies (nothing in the app may catch it)."""


class DiesAfterCreate:
    """The CRM as one worker sees it: the worker dies right after Lime created the ticket (the
    POST answered; nothing recorded yet)."""

    def __init__(self, crm: LimeCrm) -> None:
        self._crm, self.armed = crm, True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._crm, name)

    async def create_ticket(self, *args: Any, **kwargs: Any) -> Any:
        ticket = await self._crm.create_ticket(*args, **kwargs)
        if self.armed:
            self.armed = False
            raise Died("after Lime's create")
        return ticket


async def test_the_same_mail_in_two_mailboxes_with_a_worker_dying_after_limes_create(stack):
    stack.lime.create("person", {"firstname": "Fia", "lastname": "F", "email": "fia@acme.example"})
    raw = m.outlook("Fia F <fia@acme.example>", [SUPPORT, SALES], "Licence renewal", "Renew please.",
                    message_id=m.outlook_id("budget/crosspost"))
    job_a, job_b = stack.deliver(raw, SUPPORT), stack.deliver(raw, SALES)
    dying = DiesAfterCreate(stack.new_crm())  # two workers: two adapters, one record table
    worker_a, worker_b = stack.processor(dying), stack.processor(stack.new_crm())
    a, b = await asyncio.gather(worker_a.run(job_a), _after_a_while(worker_b.run(job_b), stack), return_exceptions=True)
    assert isinstance(a, Died), a
    assert not isinstance(b, BaseException) and b.status == PROCESSED, b
    stack.clock.advance(LEASE_SECONDS + 1)  # the dead worker's ledger lease runs out; the queue redelivers
    again = await worker_a.run(job_a)
    assert again.status == PROCESSED and again.ticket_number == b.ticket_number
    assert [t["title"] for t in stack.lime.objects("helpdesk")] == ["Warm-up", "Licence renewal"]
    notes = [h for h in stack.lime.objects("history") if h["type"] == "receivedemail"]
    assert len(notes) == 2  # the warm-up's and this mail's
    assert len(stack.mail.deleted) == 3  # both copies actioned (and the warm-up)


async def _after_a_while(coro: Any, stack: Stack) -> Any:
    """Worker B waits on A's records (held by A, which dies holding them): once A is dead, its
    leases run out on the clock, and B takes the records over and asks Lime what A made."""
    task = asyncio.ensure_future(coro)
    for _ in range(1000):
        await asyncio.sleep(0.01)
        if task.done() or len(stack.lime.objects("helpdesk")) == 2:
            break
    stack.clock.advance(120)  # past A's record lease (60 s): A is dead by now
    return await task
