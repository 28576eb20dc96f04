"""The processing extension (PROCESSING_EXTENSION) through the real MessageProcessor, on in-memory fakes.

The seed's three customisations (examples/) each change the outcome as documented, against the same
mails without them; a raising extension fails the mail permanently with its message; the decision is
recorded before any CRM write, so a redelivery finishes it without asking the extension again.
"""
from __future__ import annotations

import json
from datetime import timedelta

import pytest

from shared.config import QUEUE_MESSAGES, ConfigError, Settings
from shared.domain import decision as dec
from shared.domain.envelope import MessageJob
from shared.domain.mail import Address, InboundMail
from shared.domain.model import FAILED, PROCESSED, SKIPPED, Mailbox, TicketRef
from shared.services.extension import ExtensionFailed, load_extension, run_extension
from shared.services.process import LEASE_SECONDS, MessageProcessor, ProcessDeps
from tests.fakes import FakeClock, FakeLedger, FakeMail, FakeQueue, FakeRegistry
from tests.fakes_crm import InMemoryCrm
from tests.support import extensions

SUPPORT = "support@contoso.example"
ANNA = ("anna@customer.example", "Anna Andersson")
BERTIL = ("bertil@customer.example", "Bertil Berg")
TYPE_BY_ADDRESS = "examples.helpdesk_type_by_address:helpdesk_type"
REOPEN = "examples.reopen_closed_helpdesk:reopen_closed_helpdesk"
NEW_WHEN_DONE = "examples.new_helpdesk_when_done:new_helpdesk_when_done"


class Crash(BaseException):
    """The worker dies."""


class World:
    def __init__(self, extension: str = "", policy: str = "reopen", days: int = 0) -> None:
        self.clock = FakeClock()
        self.box = Mailbox(id="box-support", address=SUPPORT, client="demo", tenant_id="t",
                           closed_ticket_policy=policy, closed_ticket_days=days)
        self.mail, self.ledger, self.queue = FakeMail(), FakeLedger(self.clock), FakeQueue()
        self.crm = InMemoryCrm(clock=self.clock.now)
        self.failed: list[str] = []

        async def on_failed(mailbox: Mailbox, entry) -> None:
            self.failed.append(entry.message_id)
        self.processor = MessageProcessor(ProcessDeps(
            registry=FakeRegistry(self.box), ledger=self.ledger, mail=self.mail, crm=self.crm, queue=self.queue,
            clock=self.clock, on_failed=on_failed, extension=load_extension(extension)))

    async def deliver(self, message_id: str, sender=ANNA, subject: str = "Printer broken", to=(SUPPORT,), cc=(),
                      in_reply_to: str = "", headers=()):
        hdrs = tuple(headers) + ((("In-Reply-To", f"<{in_reply_to}@customer.example>"),) if in_reply_to else ())
        self.mail.put(self.box, InboundMail(
            mailbox_id=self.box.id, message_id=message_id, internet_message_id=f"<{message_id}@customer.example>",
            sender=Address(*sender), subject=subject, received_at=self.clock.now() - timedelta(minutes=1),
            body_content_type="text", body="It does not print.", to=tuple(Address(a) for a in to),
            cc=tuple(Address(a) for a in cc), headers=hdrs, parent_folder_id=FakeMail.INBOX))
        return await self.run(message_id)

    async def run(self, message_id: str):
        return await self.processor.run(MessageJob(mailbox_id=self.box.id, message_id=message_id, tenant_id="t"))

    async def ticket(self, number: str) -> dict:
        return (await self.crm.ticket_detail(number))["ticket"]

    def row(self, message_id: str):
        return self.ledger.rows[(self.box.id, message_id)]

    async def close(self, number: str) -> None:
        assert await self.crm.set_ticket_status(number, "done") is not None


# -- the seed's examples -------------------------------------------------------------------------------
@pytest.mark.parametrize("to, cc, expected", [
    ((SUPPORT,), (), "support"),
    (("invoices@contoso.example",), (), "invoice"),  # an alias delivered into the support mailbox
    (("someone@else.example",), ("sales@contoso.example",), "sales"),  # Cc counts too
    (("someone@else.example",), (), "support"),  # not addressed to a known alias: the mailbox's own type
])
async def test_helpdesk_type_by_receiving_address(to, cc, expected):
    w = World(TYPE_BY_ADDRESS)
    outcome = await w.deliver("m1", to=to, cc=cc)
    assert outcome.status == PROCESSED
    assert (await w.ticket(outcome.ticket_number))["values"] == {"helpdesktype": expected}
    plan = w.row("m1").data["plan"]
    assert plan["decided_by"] == "extension" and plan["extension"]["values"] == {"helpdesktype": expected}
    # without the extension the same mail gets no type
    plain = World()
    assert (await plain.ticket((await plain.deliver("m1", to=to, cc=cc)).ticket_number))["values"] == {}


async def test_helpdesk_type_is_left_alone_on_a_follow_up():
    w = World(TYPE_BY_ADDRESS)
    first = await w.deliver("m1", to=("invoices@contoso.example",))
    reply = await w.deliver("m2", subject="RE: Printer broken", in_reply_to="m1")
    assert reply.ticket_number == first.ticket_number and reply.data["action"] == "follow-up"
    assert (await w.ticket(first.ticket_number))["values"] == {"helpdesktype": "invoice"}
    assert w.row("m2").data["plan"]["decided_by"] == "policy"


async def test_reopen_a_closed_helpdesk_where_the_mailbox_opens_new_tickets():
    for extension, expected in (("", "successor"), (REOPEN, "reopened")):
        w = World(extension, policy="new")
        first = await w.deliver("m1")
        await w.close(first.ticket_number)
        reply = await w.deliver("m2", subject=f"RE: Printer broken [{first.ticket_number}]", in_reply_to="m1")
        assert reply.status == PROCESSED and reply.data["action"] == expected, extension
        if expected == "reopened":
            assert reply.ticket_number == first.ticket_number
            assert (await w.ticket(first.ticket_number))["status"] == "started"
            assert w.row("m2").data["plan"]["extension"] == {
                "name": REOPEN, "default": "successor", "asked": "reopen",
                "reason": "a reply to a closed helpdesk reopens it"}
        else:
            assert reply.ticket_number != first.ticket_number
            assert (await w.ticket(first.ticket_number))["status"] == "done"


async def test_reopen_example_leaves_an_old_ticket_to_the_policy_for_someone_else():
    w = World(REOPEN, policy="new")
    first = await w.deliver("m1", cc=(BERTIL[0],))  # Bertil was on Cc: a party to the ticket
    await w.close(first.ticket_number)
    w.clock.advance(40 * 86400)  # closed long ago, and Bertil is not the ticket's contact
    reply = await w.deliver("m2", sender=BERTIL, subject="RE: Printer broken", in_reply_to="m1")
    assert reply.data["action"] == "successor" and reply.ticket_number != first.ticket_number
    # Anna, the ticket's contact, still reopens it after 40 days
    again = await w.deliver("m3", subject="RE: Printer broken", in_reply_to="m1")
    assert again.data["action"] == "reopened" and again.ticket_number == first.ticket_number


async def test_new_helpdesk_when_the_old_one_is_done():
    for extension in ("", NEW_WHEN_DONE):
        w = World(extension)  # the mailbox reopens closed tickets by default
        first = await w.deliver("m1", cc=(BERTIL[0],))  # Bertil on Cc: a party to the ticket
        await w.close(first.ticket_number)
        reply = await w.deliver("m2", subject="RE: Printer broken", in_reply_to="m1")
        if not extension:
            assert reply.data["action"] == "reopened" and reply.ticket_number == first.ticket_number
            continue
        assert reply.data["action"] == "successor" and reply.ticket_number != first.ticket_number
        new = await w.ticket(reply.ticket_number)
        assert new["title"] == "Follow-up: Printer broken" and new["linked_ticket_id"] == f"hd{first.ticket_number}"
        assert (await w.ticket(first.ticket_number))["status"] == "done"
        # another reply to the done ticket joins the same new one; a reply to an open one is a follow-up
        more = await w.deliver("m3", sender=BERTIL, subject="RE: Printer broken", in_reply_to="m1")
        assert more.ticket_number == reply.ticket_number
        follow = await w.deliver("m4", subject="RE: Follow-up", in_reply_to="m2")
        assert follow.data["action"] == "follow-up" and follow.ticket_number == reply.ticket_number
        assert w.crm.created["ticket"] == 2


async def test_new_ticket_next_to_an_open_one_is_linked_and_made_once_across_redeliveries():
    async def split(mail, decision, change):
        if "new topic" in mail.subject:
            change.new_ticket("a new topic in an old thread")
    w = World()
    w.processor.d.extension = load_extension_from(split)
    first = await w.deliver("m1")
    other = await w.deliver("m2", subject="RE: Printer broken - new topic: the scanner", in_reply_to="m1")
    assert other.data["action"] == "new" and other.ticket_number != first.ticket_number
    assert (await w.ticket(other.ticket_number))["linked_ticket_id"] == f"hd{first.ticket_number}"
    assert w.row("m2").data["plan"]["forced_new"] is True


# -- failures ------------------------------------------------------------------------------------------
async def test_a_raising_extension_fails_the_mail_permanently_with_its_message():
    w = World("tests.support.extensions:raising")
    outcome = await w.deliver("m1")
    assert outcome.status == FAILED
    row = w.row("m1")
    assert row.last_error == ("ExtensionFailed: processing extension tests.support.extensions:raising raised "
                              "RuntimeError: no helpdesk type for this mail")
    assert w.failed == ["m1"]  # recorded as a permanent failure (no automatic retries)
    assert w.crm.created["ticket"] == 0 and w.crm.created["person"] == 0 and w.mail.deleted == []
    assert "plan" not in row.data


@pytest.mark.parametrize("name, message", [
    ("returns_value", "returned a Decision: it must return None"),
    ("reserved_name", "'title' is set by the pipeline and cannot be changed here; use set_title()"),
    ("reopen_always", "reopen(): the mail belongs to no existing ticket"),
])
async def test_misusing_the_api_fails_the_mail_with_a_clear_message(name, message):
    w = World(f"tests.support.extensions:{name}")
    outcome = await w.deliver("m1")
    assert outcome.status == FAILED and message in w.row("m1").last_error
    assert w.crm.created["ticket"] == 0


async def test_a_slow_async_extension_times_out():
    ext = load_extension("tests.support.extensions:slow")
    with pytest.raises(ExtensionFailed, match="did not finish within 0.05 s"):
        await run_extension(ext, None, None, timeout=0.05)


async def test_an_extension_may_ask_for_a_retry_with_a_transient_error():
    w = World("tests.support.extensions:needs_retry")
    outcome = await w.deliver("m1")
    assert outcome.status == "requeued" and "lookup service" in outcome.reason  # waits, like for any dependency
    assert [q for q, _, _ in w.queue.sent] == [QUEUE_MESSAGES]
    row = w.row("m1")
    assert row.status == "processing" and row.lease_owner == "" and "plan" not in row.data
    assert "lookup service" in row.last_error
    assert w.failed == [] and w.crm.created["ticket"] == 0


async def test_skip_with_a_reason_actions_the_mail_and_writes_nothing():
    w = World("tests.support.extensions:skip_newsletters")
    outcome = await w.deliver("m1", subject="Our monthly newsletter")
    assert outcome.status == SKIPPED
    assert outcome.reason == "skipped by the processing extension: a newsletter, not a support request"
    assert w.mail.deleted == ["m1"] and w.crm.created["ticket"] == 0 and w.crm.created["person"] == 0
    assert (await w.deliver("m2")).status == PROCESSED  # other mail goes on as usual


async def test_async_extension_sets_title_and_values_and_values_on_a_follow_up_are_ignored():
    w = World("tests.support.extensions:async_title")
    first = await w.deliver("m1")
    ticket = await w.ticket(first.ticket_number)
    assert ticket["title"] == "Set by an async extension" and ticket["values"] == {"priority": 2}
    w.processor.d.extension = load_extension("tests.support.extensions:type_on_follow_up")
    reply = await w.deliver("m2", subject="RE: x", in_reply_to="m1")
    assert reply.data["action"] == "follow-up"
    assert w.row("m2").data["plan"]["extension"]["ignored"] == ["values"]
    assert (await w.ticket(first.ticket_number))["values"] == {"priority": 2}


# -- crash safety --------------------------------------------------------------------------------------
async def test_a_redelivery_carries_out_the_recorded_decision_without_asking_again():
    extensions.CALLS.clear()
    w = World("tests.support.extensions:flip_flop")
    w.crm.fail("find_or_create_person", Crash("the worker dies after the decision was recorded"))
    with pytest.raises(Crash):
        await w.deliver("m1")
    assert w.row("m1").data["plan"]["action"] == "new" and w.crm.created["ticket"] == 0
    w.clock.advance(LEASE_SECONDS + 1)  # the lease runs out; the queue redelivers
    outcome = await w.run("m1")
    assert outcome.status == PROCESSED and extensions.CALLS == ["m1"]  # asked once, its first answer kept
    assert (await w.ticket(outcome.ticket_number))["values"] == {"helpdesktype": "first"}
    trace = [t["event"] for t in w.row("m1").trace]
    assert trace.count("decided") == 1 and trace[-1] == "processed"


@pytest.mark.parametrize("crash_at", range(1, 12))
async def test_crash_after_any_write_with_an_extension_gives_one_of_everything(crash_at):
    """Like tests/unit/test_process_service.py's crash test, with the seed's third example changing
    the decision: a worker dies after the k-th side effect, then the queue redelivers."""
    w = World(NEW_WHEN_DONE)
    first = await w.deliver("m1")
    await w.close(first.ticket_number)
    counter = {"n": 0}
    watched = ("save", "find_or_create_person", "reserve_ticket_number", "create_ticket", "add_history",
               "add_message_ids", "delete_message")
    for target in (w.ledger, w.crm, w.mail):
        for name in watched:
            if hasattr(target, name):
                original = getattr(target, name)

                async def wrapper(*a, _original=original, **kw):
                    result = await _original(*a, **kw)
                    counter["n"] += 1
                    if counter["n"] == crash_at:
                        raise Crash(crash_at)
                    return result
                setattr(target, name, wrapper)
    w.mail.put(w.box, InboundMail(
        mailbox_id=w.box.id, message_id="m2", internet_message_id="<m2@customer.example>", sender=Address(*ANNA),
        subject="RE: Printer broken", received_at=w.clock.now(), body_content_type="text", body="Again.",
        headers=(("In-Reply-To", "<m1@customer.example>"),), parent_folder_id=FakeMail.INBOX))
    try:
        await w.run("m2")
    except Crash:
        pass
    w.clock.advance(LEASE_SECONDS + 1)
    counter["n"] = -10**6  # no more crashes
    outcome = await w.run("m2")
    row = w.row("m2")
    assert outcome.status == PROCESSED and row.data["action"] == "successor", (crash_at, outcome)
    assert row.data["plan"]["decided_by"] == "extension" and outcome.ticket_number != first.ticket_number
    assert w.crm.created["ticket"] == 2 and len((await w.crm.ticket_detail(outcome.ticket_number))["history"]) == 1
    assert (await w.ticket(first.ticket_number))["status"] == "done"


# -- loading -------------------------------------------------------------------------------------------
def load_extension_from(fn):
    from shared.services.extension import Extension
    return Extension(f"tests:{fn.__name__}", fn)


@pytest.mark.parametrize("spec, message", [
    ("nosuchpackage.handlers:handle", "there is no module 'nosuchpackage.handlers' (ship it with the app"),
    ("tests.support.extensions:missing", "module 'tests.support.extensions' has no 'missing'"),
    ("tests.support.extensions:NOT_CALLABLE", "'NOT_CALLABLE' is a int, not a function"),
    ("tests.support.extensions:two_arguments", "cannot be called with (mail, decision, change)"),
    ("tests.support.broken_extension:handle", "raised RuntimeError: this module cannot be imported"),
    ("no colon here", "must look like 'package.module:function'"),
])
def test_a_bad_extension_is_a_clear_startup_error(spec, message):
    with pytest.raises(ConfigError) as err:
        load_extension(spec)
    assert message in str(err.value) and "PROCESSING_EXTENSION" in str(err.value)


def test_the_setting_is_checked_and_the_worker_refuses_to_start_without_the_module():
    from shared.bootstrap import build_services
    base = {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "CLIENT_STATE_KEYS": "1:" + "s" * 20,
            "PUBLIC_BASE_URL": "https://x.example"}
    assert Settings.from_env({**base, "PROCESSING_EXTENSION": TYPE_BY_ADDRESS}).processing_extension == TYPE_BY_ADDRESS
    with pytest.raises(ConfigError, match="PROCESSING_EXTENSION must look like"):
        Settings.from_env({**base, "PROCESSING_EXTENSION": "handlers.py"})
    with pytest.raises(ConfigError, match="there is no module 'customer_rules'"):
        build_services(Settings.from_env({**base, "PROCESSING_EXTENSION": "customer_rules:handle"}))
    assert load_extension("") is None


# -- the decision API ----------------------------------------------------------------------------------
def _decision(**kw) -> dec.Decision:
    ticket = kw.pop("ticket", None)
    return dec.Decision(action=kw.pop("action", dec.NEW), ticket=ticket, mailbox=SUPPORT, mailbox_id="b", **kw)


def test_resolve_applies_the_last_wish_and_keeps_values_only_for_a_new_ticket():
    open_ticket = TicketRef("hd1001", "1001", status="started")
    closed = TicketRef("hd1001", "1001", status="done")
    change = dec.DecisionChange(_decision(action=dec.FOLLOW_UP, ticket=open_ticket))
    change.skip("first")
    change.new_ticket("then this")
    change.set("helpdesktype", 3)
    out = dec.resolve(_decision(action=dec.FOLLOW_UP, ticket=open_ticket, values={"a": 1}), change)
    assert (out.action, out.forced_new, dict(out.values)) == (dec.NEW, True, {"a": 1, "helpdesktype": 3})
    change = dec.DecisionChange(_decision(action=dec.REOPENED, ticket=closed))
    change.new_ticket()
    assert dec.resolve(_decision(action=dec.REOPENED, ticket=closed), change).action == dec.SUCCESSOR
    change = dec.DecisionChange(_decision(action=dec.FOLLOW_UP, ticket=open_ticket))
    change.reopen()
    change.set_title("x")
    out = dec.resolve(_decision(action=dec.FOLLOW_UP, ticket=open_ticket), change)
    assert out.action == dec.FOLLOW_UP and out.ignored == ("title",) and out.title == ""
    assert dec.resolve(_decision(values={"t": 1}), None).values == {"t": 1}


def test_the_change_api_refuses_what_it_cannot_record():
    change = dec.DecisionChange(_decision())
    with pytest.raises(TypeError, match="string, number, boolean or None"):
        change.set("helpdesktype", {"id": 3})
    with pytest.raises(ValueError, match="set by the pipeline"):
        change.set("Person", "p1")
    with pytest.raises(ValueError, match="a reason is required"):
        change.skip("  ")
    with pytest.raises(ValueError, match="non-empty"):
        change.set_title("")
    change.set_values({"a": "b", "n": 1.5, "flag": True, "none": None})
    assert json.loads(json.dumps(change.summary()))["values"] == {"a": "b", "n": 1.5, "flag": True, "none": None}
    for i in range(dec.MAX_VALUES - 4):
        change.set(f"p{i}", i)
    with pytest.raises(ValueError, match="at most"):
        change.set("one-too-many", 1)
