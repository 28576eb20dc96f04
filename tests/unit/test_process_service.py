"""The processor against in-memory fakes: resumable steps and exactly-once effects.

A "crash" is a BaseException raised right after the k-th side-effecting call (ledger write, CRM
write, Graph call, queue put), for every k: the worker dies there, its lease runs out, the queue
redelivers, and the end state must still be one ticket, one history note, the mail actioned.
"""
from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from shared.config import QUEUE_AUTOREPLIES, QUEUE_MESSAGES
from shared.domain import envelope, retry
from shared.domain.envelope import MessageJob
from shared.domain.errors import TransientError
from shared.domain.mail import Address, InboundMail
from shared.domain.model import FAILED, PROCESSED, SKIPPED, AutoreplySettings, Mailbox
from shared.services.process import LEASE_SECONDS, NEXT_ATTEMPT, MessageProcessor, ProcessDeps
from tests.fakes import FakeClock, FakeLedger, FakeMail, FakeQueue, FakeRegistry
from tests.fakes_crm import InMemoryCrm


class Crash(BaseException):
    """The worker process dies."""


class CrashAfter:
    """Wraps an object; raises Crash after the k-th awaited call across all wrapped objects."""

    def __init__(self, target, counter: dict, watch: set[str]) -> None:
        self._t, self._c, self._watch = target, counter, watch

    def __getattr__(self, name):
        attr = getattr(self._t, name)
        if name not in self._watch:
            return attr

        async def wrapper(*a, **kw):
            result = await attr(*a, **kw)
            self._c["n"] += 1
            if self._c["n"] == self._c["crash_at"]:
                raise Crash(f"{name} #{self._c['n']}")
            return result
        return wrapper


def make(crash_at: int = 0, autoreply: bool = True):
    clock = FakeClock()
    box = Mailbox(id="user-1", address="support@ours.example", client="demo", tenant_id="t",
                  autoreply=AutoreplySettings(enabled=autoreply, template="T"))
    mail_store, crm, ledger, queue = FakeMail(), InMemoryCrm(), FakeLedger(clock), FakeQueue()
    mail = InboundMail(mailbox_id=box.id, message_id="msg-1", internet_message_id="<m1@customer.example>",
                       sender=Address("anna@customer.example", "Anna Andersson"), subject="Printer broken",
                       received_at=clock.now() - timedelta(minutes=1), body_content_type="html",
                       body="<p>It is broken<script>x</script></p>", parent_folder_id=FakeMail.INBOX)
    mail_store.put(box, mail)
    counter = {"n": 0, "crash_at": crash_at}
    deps = ProcessDeps(
        registry=FakeRegistry(box),
        ledger=CrashAfter(ledger, counter, {"save", "claim"}),
        mail=CrashAfter(mail_store, counter, {"get_message", "delete_message"}),
        crm=CrashAfter(crm, counter, {"find_or_create_person", "reserve_ticket_number", "create_ticket",
                                      "add_history"}),
        queue=CrashAfter(queue, counter, {"send"}), clock=clock)
    return MessageProcessor(deps), clock, box, mail_store, crm, ledger, queue, counter


JOB = MessageJob(mailbox_id="user-1", message_id="msg-1", tenant_id="t")


async def test_happy_path_creates_ticket_history_and_actions_mail():
    proc, clock, box, store, crm, ledger, queue, _ = make()
    outcome = await proc.run(JOB)
    assert outcome.status == PROCESSED
    assert crm.created["ticket"] == 1 and crm.created["history"] == 1 and crm.created["person"] == 1
    assert store.deleted == ["msg-1"]
    row = ledger.rows[("user-1", "msg-1")]
    assert row.status == PROCESSED and set(row.steps) >= {"fetched", "crm", "autoreply_queued", "mailbox_action"}
    assert len(queue.on(QUEUE_AUTOREPLIES)) == 1
    detail = await crm.ticket_detail(outcome.ticket_number)
    assert "script" not in detail["history"][0]["note"]


async def test_redelivery_of_a_finished_mail_does_nothing():
    proc, *_ , crm, ledger, queue, _ = make()
    await proc.run(JOB)
    again = await proc.run(JOB)
    assert again.status == PROCESSED and crm.created["ticket"] == 1 and len(queue.sent) == 1


@pytest.mark.parametrize("crash_at", range(1, 14))
async def test_crash_after_any_step_then_redelivery_gives_exactly_one_of_everything(crash_at):
    proc, clock, box, store, crm, ledger, queue, counter = make(crash_at)
    try:
        await proc.run(JOB)
        crashed = False
    except Crash:
        crashed = True
    clock.advance(LEASE_SECONDS + 1)  # the dead worker's lease expires; the queue redelivers
    counter["crash_at"] = 0
    outcome = await proc.run(JOB)
    assert outcome.status == PROCESSED, (crash_at, crashed, outcome)
    assert crm.created["ticket"] == 1 and crm.created["history"] == 1 and crm.created["person"] == 1
    assert store.deleted == ["msg-1"]
    # a second autoreply job may exist after a crash between put and record; the sender dedupes per ticket
    jobs = queue.on(QUEUE_AUTOREPLIES)
    assert 1 <= len(jobs) <= 2 and len({j for j in jobs}) >= 1
    numbers = {t["number"] for t in await crm.list_tickets()}
    assert len(numbers) == 1


async def test_live_lease_of_another_worker_requeues_with_delay():
    proc, clock, box, store, crm, ledger, queue, _ = make()
    await ledger.claim("user-1", "msg-1", "other-worker", LEASE_SECONDS, "c", "webhook")
    outcome = await proc.run(JOB)
    assert outcome.status == "requeued"
    [(q, _, delay)] = queue.sent
    assert q == QUEUE_MESSAGES and delay > 5 and crm.created["ticket"] == 0


async def test_transient_graph_error_releases_lease_and_requeues_the_job_for_the_next_try():
    proc, clock, box, store, crm, ledger, queue, _ = make()
    store.faults["get"] = [TransientError("Graph 503", retry_after=1)]
    outcome = await proc.run(JOB)
    assert outcome.status == "requeued"  # not raised: the queue's dequeue budget is not spent on a wait
    [(q, text, delay)] = queue.sent
    job = envelope.decode(text, MessageJob)
    assert q == QUEUE_MESSAGES and job.attempt == 1 and 8 <= delay <= 12  # the schedule's first: 10 s +-20%
    assert 0 <= delay - (datetime.fromisoformat(job.not_before) - clock.now()).total_seconds() < 1  # app clock
    row = ledger.rows[("user-1", "msg-1")]
    assert row.lease_owner == "" and "503" in row.last_error and row.status == "processing"
    assert row.data[NEXT_ATTEMPT] == job.not_before  # the status page's "retrying", the sweep's "in flight"
    assert row.trace[-1]["event"] == "error" and row.trace[-1]["next_attempt_at"] == job.not_before
    # delivered before its time (the queue's clock is not ours): back in the queue, nothing else
    queue.sent.clear()
    saves = len(row.trace)
    assert (await proc.run(job)).status == "requeued"
    [(_, again, wait)] = queue.sent
    assert envelope.decode(again, MessageJob).attempt == 1 and 1 <= wait <= delay
    assert len(ledger.rows[("user-1", "msg-1")].trace) == saves and crm.created["ticket"] == 0
    clock.advance(delay)
    assert (await proc.run(job)).status == PROCESSED


async def test_a_dependency_down_for_hours_waits_with_growing_delays_then_the_queue_gives_up():
    proc, clock, box, store, crm, ledger, queue, _ = make()
    store.faults["get"] = [TransientError("Graph 503")] * (retry.ATTEMPTS + 1)
    job, delays = JOB, []
    for attempt in range(retry.ATTEMPTS):
        assert (await proc.run(job)).status == "requeued"
        [(_, text, delay)] = queue.sent
        queue.sent.clear()
        job = envelope.decode(text, MessageJob)
        assert job.attempt == attempt + 1
        delays.append(delay)
        clock.advance(delay)
    assert delays[0] <= 12 and max(delays) <= retry.CAP_SECONDS and delays[-1] >= 0.8 * retry.CAP_SECONDS
    assert all(b >= a for a, b in zip(delays[:7], delays[1:8])), delays  # growing, then capped
    assert sum(delays) >= 0.8 * retry.BUDGET.total_seconds()  # hours, not a minute
    assert ledger.rows[("user-1", "msg-1")].status == "processing"  # waiting the whole time, never Failed
    with pytest.raises(TransientError):  # spent: the queue retries, then poisons (message_failed: Failed)
        await proc.run(job)
    assert queue.sent == [] and NEXT_ATTEMPT not in ledger.rows[("user-1", "msg-1")].data


async def test_storage_down_at_the_claim_waits_like_any_dependency():
    proc, clock, box, store, crm, ledger, queue, _ = make()

    async def down(*args, **kwargs):
        raise TransientError("storage unreachable during ledger claim: ServiceRequestError")
    proc.d.ledger = type("Down", (), {"claim": staticmethod(down)})()
    outcome = await proc.run(JOB)
    [(q, text, delay)] = queue.sent
    assert outcome.status == "requeued" and q == QUEUE_MESSAGES and envelope.decode(text, MessageJob).attempt == 1


async def test_long_retry_after_requeues_instead_of_sleeping():
    proc, clock, box, store, crm, ledger, queue, _ = make()
    store.faults["get"] = [TransientError("Graph 429", retry_after=60)]
    outcome = await proc.run(JOB)
    assert outcome.status == "requeued"
    [(q, text, delay)] = queue.sent
    assert q == QUEUE_MESSAGES and delay == 60 and '"attempt":1' in text


async def test_mail_outside_inbox_is_refused_and_left_alone():
    proc, clock, box, store, crm, ledger, queue, _ = make()
    store.messages[("user-1", "msg-1")]["mail"] = store.messages[("user-1", "msg-1")]["mail"].__class__(
        **{**store.messages[("user-1", "msg-1")]["mail"].__dict__, "parent_folder_id": "sent-items"})
    outcome = await proc.run(JOB)
    assert outcome.status == SKIPPED and "Inbox" in outcome.reason
    assert crm.created["ticket"] == 0 and store.deleted == []


async def test_auto_reply_without_ticket_is_skipped_but_actioned():
    proc, clock, box, store, crm, ledger, queue, _ = make()
    m = store.messages[("user-1", "msg-1")]["mail"]
    store.messages[("user-1", "msg-1")]["mail"] = m.__class__(**{**m.__dict__, "headers": (("Auto-Submitted", "auto-replied"),)})
    outcome = await proc.run(JOB)
    assert outcome.status == SKIPPED and "Auto-Submitted" in outcome.reason
    assert crm.created["ticket"] == 0 and store.deleted == ["msg-1"] and queue.sent == []


async def test_crm_rejection_is_permanent_failure_recorded():
    from shared.domain.errors import PermanentError
    proc, clock, box, store, crm, ledger, queue, _ = make()
    crm.fail("create_ticket", PermanentError("title too long"))
    outcome = await proc.run(JOB)
    assert outcome.status == FAILED and "title too long" in ledger.rows[("user-1", "msg-1")].last_error
    assert store.deleted == []  # failed mail stays in the Inbox


async def test_the_autoreply_job_is_queued_only_once_the_ledger_row_holds_its_ticket():
    """The autoreply sender reads the mail's ledger row as soon as its job is on the queue: the row
    must already say which ticket (a job queued before that write met "the mail's ledger row (with
    its ticket) is gone" and failed the autoreply)."""
    proc, clock, box, store, crm, ledger, queue, _ = make()
    seen = []
    send = queue.send

    async def send_and_look(name, job, visibility_timeout=0):
        if name == QUEUE_AUTOREPLIES:
            row = await ledger.get(job.mailbox_id, job.message_id)
            seen.append(row.data.get("ticket_id") if row else None)
        return await send(name, job, visibility_timeout)
    queue.send = send_and_look
    outcome = await proc.run(JOB)
    assert outcome.status == PROCESSED and seen == [outcome.data["ticket_id"]]
