"""The sweep, the poison handler and recoveries against in-memory fakes (fast, no I/O).

The fakes keep the adapters' semantics the services rely on (ETag-guarded ledger writes, 404s,
Graph listing oldest first in pages); the e2e suite (tests/e2e/test_failed_unprocessed.py) runs
the same use cases through the real app, Azurite and the Graph simulator.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from datetime import datetime, timedelta
from typing import Any

import pytest

from shared.config import QUEUE_MESSAGES
from shared.domain import envelope, retry
from shared.domain.envelope import MessageJob
from shared.domain.errors import LeaseHeld, PermanentError, TransientError
from shared.domain.mail import Address, InboundMail
from shared.domain.model import ACTION_MOVE, FAILED, PROCESSED, PROCESSING, InboxItem, LedgerEntry, Mailbox
from shared.services.failures import FAILED_CATEGORY, FailureService, retry_delay
from shared.services.process import MessageProcessor, ProcessDeps
from shared.services.recovery import (
    QUEUE_RECOVERY, RecoveryDeps, RecoveryNotFound, RecoveryRequestError, RecoveryService, decode_job,
)
from shared.services.sweep import SweepDeps, scan_unprocessed, sweep_all, sweep_mailbox
from tests.fakes import FakeClock, FakeLedger, FakeMail, FakeQueue, FakeRegistry
from tests.fakes_crm import InMemoryCrm


# fakes with what the sweep needs beyond the processor's ports ---------------------------------------
class SweepLedger(FakeLedger):
    """FakeLedger plus the TableLedger extensions (insert, mark_queued, get_many, richer lists)."""

    async def claim(self, mailbox_id, message_id, owner, lease_seconds, correlation_id, source) -> LedgerEntry:
        row = await super().claim(mailbox_id, message_id, owner, lease_seconds, correlation_id, source)
        if row.status == PROCESSING and row.lease_owner == owner:  # like TableLedger: the claim is traced
            row.trace.append({"event": "claimed", "source": source, "correlation_id": correlation_id})
            row = await self.save(row)
        return row

    async def insert(self, entry: LedgerEntry) -> LedgerEntry:
        if (entry.mailbox_id, entry.message_id) in self.rows:
            raise LeaseHeld("exists")
        entry.etag = ""
        entry.created_at = entry.created_at or self.clock.now()
        return await self.save(entry)

    async def mark_queued(self, mailbox_id, message_id, source, correlation_id, sender="", subject="",
                          received_at=None) -> bool:
        try:
            await self.insert(LedgerEntry(mailbox_id, message_id, status=PROCESSING, source=source,
                                          correlation_id=correlation_id, sender=sender, subject=subject,
                                          received_at=received_at,
                                          trace=[{"event": "queued", "source": source}]))
        except LeaseHeld:
            return False
        return True

    async def get_many(self, mailbox_id, message_ids) -> dict[str, LedgerEntry]:
        self.get_many_calls = getattr(self, "get_many_calls", 0) + 1
        return {m: copy.deepcopy(self.rows[(mailbox_id, m)]) for m in message_ids if (mailbox_id, m) in self.rows}

    async def list_status(self, status, mailbox_id=None, since=None, received_since=None, limit=None):
        rows = [copy.deepcopy(r) for r in self.rows.values() if r.status == status
                and (mailbox_id is None or r.mailbox_id == mailbox_id)
                and (received_since is None or (r.received_at and r.received_at >= received_since))]
        return rows[:limit] if limit else rows


class PagedMail(FakeMail):
    """FakeMail that lists in pages like Graph (oldest first) and counts the list requests."""

    async def list_folder(self, mailbox, folder="inbox", received_after=None, received_before=None, page_size=100):
        items = sorted((v["mail"] for (b, _), v in self.messages.items() if b == mailbox.id),
                       key=lambda m: (m.received_at, m.message_id))
        items = [m for m in items if (received_after is None or m.received_at >= received_after)
                 and (received_before is None or m.received_at < received_before)]
        for start in range(0, max(1, len(items)), page_size):
            self._maybe_fail("list")  # one Graph request per page
            for m in items[start:start + page_size]:
                yield InboxItem(m.message_id, m.received_at, m.sender.address, m.subject, m.categories)


class MemoryRecoveryStore:
    def __init__(self) -> None:
        self.tasks: dict[str, Any] = {}
        self.items_by_task: dict[str, dict[tuple[str, str], Any]] = {}
        self._n = 0

    async def create(self, task):
        self._n += 1
        task.etag = str(self._n)
        self.tasks[task.id] = copy.deepcopy(task)
        return task

    async def get(self, task_id):
        return copy.deepcopy(self.tasks.get(task_id))

    async def save(self, task):
        if self.tasks[task.id].etag != task.etag:
            raise LeaseHeld("changed")
        self._n += 1
        task.etag = str(self._n)
        self.tasks[task.id] = copy.deepcopy(task)
        return task

    async def list(self, mailbox_id=None, limit=10):
        tasks = sorted(self.tasks.values(), key=lambda t: t.id)
        return [copy.deepcopy(t) for t in tasks if mailbox_id is None or mailbox_id in t.mailboxes][:limit]

    async def put_items(self, task_id, items):
        bucket = self.items_by_task.setdefault(task_id, {})
        for i in items:
            bucket[(i.mailbox_id, i.message_id)] = copy.deepcopy(i)

    async def items(self, task_id):
        return [copy.deepcopy(i) for i in self.items_by_task.get(task_id, {}).values()]


# a small world -------------------------------------------------------------------------------------------
class World:
    def __init__(self, max_enqueue: int = 500, max_scan: int = 5000, autoreply: bool = False) -> None:
        self.clock = FakeClock()
        self.box = Mailbox(id="user-1", address="support@ours.example", client="demo", tenant_id="t",
                           start_date=self.clock.now() - timedelta(days=2))
        self.box.autoreply.enabled = autoreply
        self.box.autoreply.template = "T"
        self.registry = FakeRegistry(self.box)
        self.mail, self.ledger, self.queue, self.crm = PagedMail(), SweepLedger(self.clock), FakeQueue(), InMemoryCrm()
        self.sweep = SweepDeps(mail=self.mail, ledger=self.ledger, queue=self.queue, clock=self.clock,
                               registry=self.registry, grace_seconds=300, failed_retry_max_age_hours=24,
                               max_enqueue=max_enqueue, max_scan=max_scan)
        self.failures = FailureService(self.registry, self.ledger, self.mail, self.clock)
        self.processor = MessageProcessor(ProcessDeps(
            registry=self.registry, ledger=self.ledger, mail=self.mail, crm=self.crm, queue=self.queue,
            clock=self.clock, on_failed=self.failures.record_permanent))
        self.store = MemoryRecoveryStore()
        self.recovery = RecoveryService(RecoveryDeps(registry=self.registry, ledger=self.ledger, queue=self.queue,
                                                     clock=self.clock, store=self.store, sweep=self.sweep))
        self.n = 0

    def put(self, age: timedelta, subject: str = "", sender: str = "") -> str:
        self.n += 1
        mid = f"msg-{self.n:05d}"
        self.mail.put(self.box, InboundMail(
            mailbox_id=self.box.id, message_id=mid, internet_message_id=f"<{mid}@customer.example>",
            sender=Address(sender or f"person{self.n % 37}@customer.example", "Some One"),
            subject=subject or f"Question {self.n}", received_at=self.clock.now() - age, body_content_type="text",
            body="Hello", parent_folder_id=FakeMail.INBOX))
        return mid

    def jobs(self) -> list[MessageJob]:
        return [envelope.decode(t, MessageJob) for t in self.queue.on(QUEUE_MESSAGES)]

    async def drain(self) -> int:
        """Run every queued MessageJob through the processor (the queue trigger, without retries)."""
        done = 0
        while self.queue.on(QUEUE_MESSAGES):
            pending = self.jobs()
            self.queue.sent = [s for s in self.queue.sent if s[0] != QUEUE_MESSAGES]
            for job in pending:
                await self.processor.run(job)
                done += 1
        return done


# the sweep ----------------------------------------------------------------------------------------------
async def test_sweep_takes_only_overdue_mail_after_the_start_date_that_is_not_finished_or_failed():
    w = World()
    before_start = w.put(timedelta(days=3))
    too_young = w.put(timedelta(seconds=60))
    due = w.put(timedelta(minutes=30))
    finished = w.put(timedelta(minutes=40))
    failed = w.put(timedelta(minutes=50))
    in_flight = w.put(timedelta(minutes=55))
    w.ledger.rows[(w.box.id, finished)] = LedgerEntry(w.box.id, finished, status=PROCESSED, etag="x")
    w.ledger.rows[(w.box.id, failed)] = LedgerEntry(w.box.id, failed, status=FAILED, etag="y",
                                                    data={"permanent": True, "category": "applied"})
    await w.ledger.claim(w.box.id, in_flight, "worker", 120, "c", "webhook")

    report = await sweep_mailbox(w.sweep, w.box, w.clock.now())

    assert [j.message_id for j in w.jobs()] == [due]
    assert w.jobs()[0].source == "sweep" and report.enqueued == 1 and report.in_flight == 1
    assert w.ledger.rows[(w.box.id, due)].trace[0]["event"] == "queued"
    assert (w.box.id, before_start) not in w.ledger.rows and (w.box.id, too_young) not in w.ledger.rows
    # the next run leaves the queued mail to its job
    again = await sweep_mailbox(w.sweep, w.box, w.clock.now())
    assert again.enqueued == 0 and len(w.jobs()) == 1


async def test_a_row_nobody_touched_for_a_while_is_queued_again():
    w = World()
    mid = w.put(timedelta(hours=1))
    await sweep_mailbox(w.sweep, w.box, w.clock.now())
    w.queue.sent.clear()  # the job got lost
    w.clock.advance(16 * 60)
    report = await sweep_mailbox(w.sweep, w.box, w.clock.now())
    assert report.enqueued == 1 and [j.message_id for j in w.jobs()] == [mid]
    assert w.ledger.rows[(w.box.id, mid)].trace[-1]["event"] == "requeued"


async def test_a_lifecycle_sweep_takes_young_mail_too():
    """After subscriptionRemoved or missed, no notification will come for the mail that arrived in
    the meantime: the lifecycle handler's sweep (grace 0) takes it now, the timer's leaves it."""
    w = World()
    young = w.put(timedelta(seconds=20))
    assert (await sweep_mailbox(w.sweep, w.box)).enqueued == 0  # the timer: left to its notification
    report = await sweep_mailbox(w.sweep, w.box, grace_seconds=0)
    assert report.enqueued == 1 and [j.message_id for j in w.jobs()] == [young]


async def test_a_mail_waiting_for_a_dependency_is_left_to_its_next_try():
    """A mail re-enqueued after a transient failure waits up to 30 minutes: the sweep must not queue
    it a second time meanwhile (two schedules at once), only once its try is long overdue."""
    w = World()
    mid = w.put(timedelta(hours=1))
    w.mail.faults["get"] = [TransientError("Graph 503")] * 10
    job = MessageJob(mailbox_id=w.box.id, message_id=mid, attempt=8)  # the schedule's 30-minute delays
    assert (await w.processor.run(job)).status == "requeued"
    w.queue.sent.clear()
    w.clock.advance(20 * 60)  # untouched for longer than STALE_AFTER, but its try is not due yet
    report = await sweep_mailbox(w.sweep, w.box)
    assert report.enqueued == 0 and report.in_flight == 1 and w.jobs() == []
    w.clock.advance(40 * 60)  # due 30 minutes after the failure, and nobody came: the job got lost
    assert (await sweep_mailbox(w.sweep, w.box)).enqueued == 1


async def test_the_sweeps_retry_of_a_failed_mail_is_one_try_not_another_schedule():
    w = World()
    mid = w.put(timedelta(hours=1))
    w.ledger.rows[(w.box.id, mid)] = LedgerEntry(
        w.box.id, mid, status=FAILED, etag="f", received_at=w.mail.messages[(w.box.id, mid)]["mail"].received_at,
        data={"category": "applied", "retry_at": w.clock.now().isoformat()})
    assert (await sweep_mailbox(w.sweep, w.box)).retried == 1
    [job] = w.jobs()
    assert retry.exhausted(job.attempt)
    w.queue.sent.clear()
    w.crm.fail("find_or_create_person", TransientError("CRM 503"))
    with pytest.raises(TransientError):  # still down: the queue's retries, then Failed again
        await w.processor.run(job)
    assert w.jobs() == []


async def test_an_empty_inbox_costs_one_list_request_and_one_index_query():
    w = World()
    report = await sweep_mailbox(w.sweep, w.box, w.clock.now())
    assert report.enqueued == report.listed == 0 and not report.error
    assert w.mail.calls == {"list": 1}


async def test_inactive_mailbox_and_mailbox_without_start_date_are_left_alone():
    w = World()
    w.put(timedelta(hours=1))
    w.box.active = False
    assert (await sweep_mailbox(w.sweep, w.box)).note.startswith("inactive")
    w.box.active, w.box.start_date = True, None
    report = await sweep_mailbox(w.sweep, w.box)
    assert "no start date" in report.note and w.jobs() == []
    assert await sweep_all(w.sweep) and w.jobs() == []


async def test_graph_down_during_the_sweep_is_reported_not_raised():
    w = World()
    w.put(timedelta(hours=1))
    w.mail.faults["list"] = [TransientError("Graph 503")]
    report = await sweep_mailbox(w.sweep, w.box)
    assert report.error.startswith("TransientError") and w.jobs() == []
    assert (await sweep_mailbox(w.sweep, w.box)).enqueued == 1


async def test_2000_mails_after_an_outage_are_all_processed_once_each_run_within_its_cap():
    cap = 500
    w = World(max_enqueue=cap)
    ids = [w.put(timedelta(hours=10) - timedelta(seconds=15 * i)) for i in range(2000)]
    runs = []
    for _ in range(10):
        w.mail.calls.clear()
        report = await sweep_mailbox(w.sweep, w.box, w.clock.now())
        runs.append((report.enqueued, w.mail.calls.get("list", 0)))
        if report.enqueued == 0:
            break
        assert report.enqueued <= cap and len(w.jobs()) <= cap
        await w.drain()
        w.clock.advance(600)
    assert [e for e, _ in runs] == [500, 500, 500, 500, 0]
    assert all(pages <= cap // 100 + 1 for _, pages in runs)  # paging stops at the cap
    assert w.crm.created["ticket"] == 2000 and w.crm.created["history"] == 2000
    assert sorted(w.mail.deleted) == sorted(ids)
    assert all(w.ledger.rows[(w.box.id, i)].status == PROCESSED for i in ids)


async def test_a_run_stopped_by_its_scan_bound_leaves_a_cursor_the_next_run_continues_from():
    w = World(max_scan=100)
    busy = [w.put(timedelta(hours=5) - timedelta(seconds=i)) for i in range(250)]
    for mid in busy:  # queued a moment ago by someone else: the sweep must step over them
        await w.ledger.mark_queued(w.box.id, mid, "webhook", "c")
    late = [w.put(timedelta(hours=1) - timedelta(seconds=i)) for i in range(5)]

    class State:
        def __init__(self):
            self.saved = None

        async def get(self, mailbox_id):
            return self.saved

        async def save(self, report):
            self.saved = report
    w.sweep.state = State()
    cursors = []
    for _ in range(4):
        report = await sweep_mailbox(w.sweep, w.box, w.clock.now())
        cursors.append(report.cursor)
        if report.enqueued:
            break
    assert cursors[0] is not None and cursors[1] > cursors[0]
    assert sorted(j.message_id for j in w.jobs()) == sorted(late)


async def test_failed_mail_is_retried_with_backoff_until_it_is_too_old_and_never_when_permanent():
    w = World()
    young = w.put(timedelta(hours=1))
    old = w.put(timedelta(hours=30))
    perm = w.put(timedelta(hours=1))
    for mid in (young, old, perm):
        w.ledger.rows[(w.box.id, mid)] = LedgerEntry(
            w.box.id, mid, status=FAILED, etag=mid, received_at=w.mail.messages[(w.box.id, mid)]["mail"].received_at,
            data={"category": "applied", "retry_at": w.clock.now().isoformat(), "permanent": mid == perm})
    first = await sweep_mailbox(w.sweep, w.box)
    assert first.retried == 1 and [j.message_id for j in w.jobs()] == [young]
    row = w.ledger.rows[(w.box.id, young)]
    assert row.data["retries"] == 1
    assert datetime.fromisoformat(row.data["retry_at"]) == w.clock.now() + retry_delay(1)
    assert (await sweep_mailbox(w.sweep, w.box)).retried == 0  # backoff not over
    w.clock.advance(retry_delay(1).total_seconds())
    assert (await sweep_mailbox(w.sweep, w.box)).retried == 1
    assert [retry_delay(n).total_seconds() / 60 for n in range(7)] == [10, 20, 40, 80, 160, 240, 240]


# the poison handler --------------------------------------------------------------------------------------
async def test_poisoned_job_becomes_failed_with_last_error_and_attempts_then_gets_the_category():
    w = World()
    mid = w.put(timedelta(minutes=1))
    w.crm.fail("find_or_create_person", TransientError("CRM 503"), times=5)
    # a job whose retry schedule is spent (hours of waiting): the queue's five deliveries, then poison
    job = MessageJob(mailbox_id=w.box.id, message_id=mid, attempt=retry.ATTEMPTS)
    for _ in range(5):
        with pytest.raises(TransientError):
            await w.processor.run(job)
    assert await w.failures.record_poisoned(job, 1) == "failed"
    row = w.ledger.rows[(w.box.id, mid)]
    assert row.status == FAILED and row.attempts == 5 and "CRM 503" in row.last_error
    assert row.data["category"] == "applied" and w.mail.categories[mid] == [FAILED_CATEGORY]
    assert mid not in w.mail.deleted  # stays in the Inbox


async def test_graph_down_while_poisoned_still_records_failed_and_the_sweep_applies_the_category():
    w = World()
    mid = w.put(timedelta(minutes=1))
    w.mail.faults["get"] = [TransientError("Graph 503")]
    assert await w.failures.record_poisoned(MessageJob(mailbox_id=w.box.id, message_id=mid), 5) == "failed"
    row = w.ledger.rows[(w.box.id, mid)]
    assert row.status == FAILED and row.attempts == 5 and row.data["category"] == "pending"
    assert mid not in w.mail.categories
    report = await sweep_mailbox(w.sweep, w.box)
    assert report.categories_applied == 1 and w.mail.categories[mid] == [FAILED_CATEGORY]
    assert w.ledger.rows[(w.box.id, mid)].data["category"] == "applied"
    assert (await sweep_mailbox(w.sweep, w.box)).categories_applied == 0  # once


async def test_poison_of_a_finished_or_busy_mail_changes_nothing():
    w = World()
    done = w.put(timedelta(minutes=1))
    busy = w.put(timedelta(minutes=1))
    w.ledger.rows[(w.box.id, done)] = LedgerEntry(w.box.id, done, status=PROCESSED, etag="1")
    await w.ledger.claim(w.box.id, busy, "other", 120, "c", "sweep")
    assert await w.failures.record_poisoned(MessageJob(mailbox_id=w.box.id, message_id=done)) == "already-finished"
    assert await w.failures.record_poisoned(MessageJob(mailbox_id=w.box.id, message_id=busy)) == "in-flight"
    assert w.ledger.rows[(w.box.id, done)].status == PROCESSED
    assert w.ledger.rows[(w.box.id, busy)].status == PROCESSING and w.mail.categories == {}


async def test_permanent_error_goes_straight_to_failed_without_retries_and_the_sweep_leaves_it():
    w = World()
    mid = w.put(timedelta(hours=1))
    w.crm.fail("create_ticket", PermanentError("title rejected"))
    outcome = await w.processor.run(MessageJob(mailbox_id=w.box.id, message_id=mid))
    assert outcome.status == FAILED and w.queue.sent == []
    row = w.ledger.rows[(w.box.id, mid)]
    assert row.attempts == 1 and row.data["permanent"] is True and "title rejected" in row.last_error
    assert w.mail.categories[mid] == [FAILED_CATEGORY]
    assert (await sweep_mailbox(w.sweep, w.box)).retried == 0 and w.jobs() == []


async def _failed_then_recovered(w: World, graph_refuses_categories: bool = False) -> str:
    """A mail with a category of its own fails for good (category added), then a recovery by id
    processes it after all."""
    mid = w.put(timedelta(hours=1))
    key = (w.box.id, mid)
    w.mail.messages[key]["mail"] = dataclasses.replace(w.mail.messages[key]["mail"], categories=("Customer",))
    w.crm.fail("create_ticket", PermanentError("title rejected"))
    assert (await w.processor.run(MessageJob(mailbox_id=w.box.id, message_id=mid))).status == FAILED
    assert w.mail.categories[mid] == ["Customer", FAILED_CATEGORY]
    if graph_refuses_categories:
        w.mail.faults["categorize"] = [TransientError("Graph 503")]
    await w.recovery.start({"status": "failed", "mailbox": "user-1", "ids": [mid]})
    await w.recovery.run(decode_job(w.queue.on(QUEUE_RECOVERY)[0]))
    await w.drain()
    return mid


async def test_failed_mail_processed_after_all_loses_the_failed_category_before_it_is_moved():
    w = World()
    w.box.action, w.box.move_folder = ACTION_MOVE, "Handled"
    mid = await _failed_then_recovered(w)
    row = w.ledger.rows[(w.box.id, mid)]
    assert row.status == PROCESSED and w.mail.moved == [(mid, "Handled")]
    assert w.mail.categories[mid] == ["Customer"]  # its own category kept, ours gone
    assert row.data["category"] == "cleared"


async def test_the_failed_category_that_cannot_be_cleared_does_not_hold_up_the_move(caplog):
    w = World()
    w.box.action, w.box.move_folder = ACTION_MOVE, "Handled"
    mid = await _failed_then_recovered(w, graph_refuses_categories=True)
    assert w.ledger.rows[(w.box.id, mid)].status == PROCESSED and w.mail.moved == [(mid, "Handled")]
    assert w.mail.categories[mid] == ["Customer", FAILED_CATEGORY]
    assert "failures.category-not-cleared" in caplog.text and "Customer" not in caplog.text


async def test_a_deleted_failed_mail_costs_no_extra_graph_call_for_its_category():
    w = World()
    mid = await _failed_then_recovered(w)
    # GETs: the failed run's, the one adding the category, the recovered run's; none to clear it
    assert w.mail.deleted == [mid] and w.mail.calls["get"] == 3
    assert w.ledger.rows[(w.box.id, mid)].data["category"] == "applied"


async def test_a_permanent_failure_is_marked_permanent_in_the_write_that_fails_it():
    w = World()
    w.processor.d.on_failed = None  # only the processor's own write: no later save may be needed
    mid = w.put(timedelta(hours=1))
    w.crm.fail("create_ticket", PermanentError("title rejected"))
    await w.processor.run(MessageJob(mailbox_id=w.box.id, message_id=mid))
    row = w.ledger.rows[(w.box.id, mid)]
    assert row.status == FAILED and row.data["permanent"] is True  # a sweep in between never retries it


# recoveries -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body, message", [
    ({"status": "processed"}, "'status' must be"),
    ({"status": "failed", "since": "yesterday"}, "ISO 8601"),
    ({"status": "failed", "ids": ["a"]}, "need the 'mailbox'"),
    ({"status": "failed", "ids": "a", "mailbox": "user-1"}, "list of message ids"),
    ({"status": "failed", "extra": 1}, "unknown field"),
    ([], "JSON object"),
])
async def test_bad_recovery_requests_are_refused_with_a_clear_reason(body, message):
    w = World()
    with pytest.raises(RecoveryRequestError, match=message):
        await w.recovery.start(body)
    assert w.store.tasks == {} and w.queue.sent == []


async def test_recovery_of_an_unknown_or_inactive_mailbox_is_refused():
    w = World()
    with pytest.raises(RecoveryNotFound):
        await w.recovery.start({"status": "failed", "mailbox": "nobody@ours.example"})
    w.box.active = False
    with pytest.raises(RecoveryRequestError, match="inactive"):
        await w.recovery.start({"status": "failed", "mailbox": "support@ours.example"})


async def test_backfill_only_by_a_recovery_from_a_date_then_exactly_the_mail_after_it():
    w = World(autoreply=True)
    w.box.start_date = w.clock.now()  # a new mailbox
    hours = list(range(1, 121, 2))  # 60 old mails, 1 to 119 hours old
    ids = {h: w.put(timedelta(hours=h), subject=f"Old {h}") for h in hours}
    assert (await sweep_mailbox(w.sweep, w.box)).enqueued == 0 and w.jobs() == []
    scan = await scan_unprocessed(w.mail, w.ledger, w.box, w.clock.now())
    assert len(scan.mails) == 60  # unprocessed includes mail older than the start date

    since = w.clock.now() - timedelta(hours=48)
    task = await w.recovery.start({"status": "unprocessed", "mailbox": "support@ours.example",
                                   "since": since.isoformat()})
    [(queue, text, _)] = w.queue.sent
    assert queue == QUEUE_RECOVERY and decode_job(text).task_id == task.id
    w.queue.sent.clear()
    await w.recovery.run(decode_job(text))
    expected = {ids[h] for h in hours if h < 48}
    assert {j.message_id for j in w.jobs()} == expected and all(j.source == "recovery" for j in w.jobs())
    assert all(j.recovery_task == task.id for j in w.jobs())
    running, _ = await w.recovery.progress(task.id)
    assert running.status == "running" and running.counts == {"queued": len(expected)}
    await w.drain()
    done, items = await w.recovery.progress(task.id)
    assert done.status == "done" and done.counts == {"processed": len(expected)}
    assert {i.message_id for i in items} == expected
    assert w.crm.created["ticket"] == len(expected)
    # autoreplies only for mail younger than a day
    for h in hours:
        row = w.ledger.rows.get((w.box.id, ids[h]))
        if h >= 48:
            assert row is None
        else:
            assert row.status == PROCESSED and row.data["autoreply"] is (h < 24), h


async def test_failed_recovery_takes_the_failed_mail_since_the_date_and_reports_each_outcome():
    w = World()
    recent = w.put(timedelta(hours=2))
    older = w.put(timedelta(hours=40))
    for mid in (recent, older):
        await w.failures.record_poisoned(MessageJob(mailbox_id=w.box.id, message_id=mid), 5)
        w.ledger.rows[(w.box.id, mid)].received_at = w.mail.messages[(w.box.id, mid)]["mail"].received_at
    w.queue.sent.clear()
    task = await w.recovery.start({"status": "failed", "since": (w.clock.now() - timedelta(hours=24)).isoformat()})
    w.clock.advance(1)
    await w.recovery.run(decode_job(w.queue.on(QUEUE_RECOVERY)[0]))
    assert [j.message_id for j in w.jobs()] == [recent]
    pending, _ = await w.recovery.progress(task.id)
    assert pending.counts == {"queued": 1}  # still Failed from before: not yet claimed
    w.crm.fail("find_or_create_person", PermanentError("CRM refuses this sender"))
    await w.drain()
    failed, items = await w.recovery.progress(task.id)
    assert failed.status == "done" and failed.counts == {"failed": 1}
    assert "refuses" in items[0].detail
    # listed per mailbox, newest first
    assert [t.id for t in await w.recovery.list("support@ours.example")] == [task.id]


async def test_recovery_by_ids_reports_finished_mail_and_redoes_the_rest():
    w = World()
    a, b = w.put(timedelta(hours=1)), w.put(timedelta(hours=1))
    w.ledger.rows[(w.box.id, a)] = LedgerEntry(w.box.id, a, status=PROCESSED, etag="1")
    task = await w.recovery.start({"status": "failed", "mailbox": "user-1", "ids": [a, b]})
    await w.recovery.run(decode_job(w.queue.on(QUEUE_RECOVERY)[0]))
    assert [j.message_id for j in w.jobs()] == [b]
    await w.drain()
    done, items = await w.recovery.progress(task.id)
    assert done.status == "done" and done.counts == {"already-finished": 1, "processed": 1}


async def test_a_redelivered_recovery_job_does_not_redo_finished_mailboxes():
    w = World()
    w.put(timedelta(hours=1))
    task = await w.recovery.start({"status": "unprocessed"})
    job = decode_job(w.queue.on(QUEUE_RECOVERY)[0])
    await w.recovery.run(job)
    queued = len(w.jobs())
    await w.recovery.run(job)  # the queue delivered it twice
    assert len(w.jobs()) == queued == 1
    assert (await w.store.get(task.id)).enumerated == [w.box.id]


def test_recovery_envelope_is_checked():
    from shared.domain.errors import MalformedEnvelope
    for text in ("{", json.dumps({"v": 1, "kind": "message", "task_id": "x"}), json.dumps({"v": 9, "kind": "recovery"}),
                 json.dumps({"v": 1, "kind": "recovery"})):
        with pytest.raises(MalformedEnvelope):
            decode_job(text)
