"""Recovery tasks: an admin's "process these again", durable, with progress and per-mail outcome.

`POST /api/manage/messages/recover {status, mailbox?, since?, ids?}` calls `start`: the request is
validated, a task row is written (table `recoverytasks`, status queued) and a RecoveryJob goes on
queue `inbox-recovery`; the API answers 202 with the task. `run` (the `run_recovery` queue
trigger) picks the mails, records each as a task item (outcome `queued`), and enqueues one
MessageJob(source="recovery", recovery_task=<id>) per mail; the processor does the rest, exactly
once as always. A redelivered RecoveryJob resumes after the mailboxes it already finished.

What is picked:
- `status: "failed"`: the mailbox's Failed rows (received at or after `since`, when given);
- `status: "unprocessed"`: Inbox mail that is not finished and not Failed, older than five minutes,
  received at or after `since` (default: the mailbox's start date). A `since` before the start date
  is the explicit backfill: the only way mail older than the start date is ever processed (and
  process.py sends no autoreply for mail older than a day);
- `ids`: these mails of one mailbox, whatever their state (finished ones are reported, not redone).

`progress` derives each pending item's outcome from its ledger row (processed, skipped, failed,
processing or still queued), stores the ones that became final, and closes the task when none is
pending. Performs I/O only through the ports.
"""
from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from ..config import QUEUE_MESSAGES
from ..domain.envelope import READABLE_VERSIONS, MessageJob, new_correlation_id
from ..domain.errors import LeaseHeld, MalformedEnvelope, PermanentError, Refusal, TransientError
from ..domain.model import FAILED, FINISHED, PROCESSING, LedgerEntry, Mailbox
from ..ports import Clock, JobQueue, MailboxRegistry
from .sweep import SweepDeps, enqueue_unprocessed, scan_unprocessed, start_of

log = logging.getLogger("inbox.recovery")

QUEUE_RECOVERY = "inbox-recovery"
RECOVERABLE = ("failed", "unprocessed")
MAX_IDS = 100  # ids travel in the task row (a Table property holds 32K characters)
MAX_PER_TASK = 5000  # mails per task; a bigger backlog takes another task (or the sweep)
PENDING = ("queued", "processing")
_INVERT = 10 ** 13


class RecoveryRequestError(Refusal, PermanentError):
    """A recovery request the API refuses (400): the message says what to fix."""

    kind, reason = "bad_request", "bad_request"


class RecoveryNotFound(Refusal, PermanentError):
    """No such mailbox or task (404)."""

    kind, reason = "not_found", "not_found"


@dataclass(frozen=True)
class RecoveryJob:
    """Queue `inbox-recovery`: run one recovery task."""
    task_id: str
    correlation_id: str = field(default_factory=new_correlation_id)
    attempt: int = 0
    kind: str = "recovery"


def decode_job(text: str | bytes) -> RecoveryJob:
    """Parse a RecoveryJob envelope (same rules as shared/domain/envelope.py)."""
    try:
        doc: Any = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise MalformedEnvelope("queue message is not JSON") from None
    if not isinstance(doc, dict) or doc.get("v") not in READABLE_VERSIONS or doc.get("kind") != "recovery":
        raise MalformedEnvelope("not a recovery envelope of a readable version")
    if not isinstance(doc.get("task_id"), str) or not doc["task_id"]:
        raise MalformedEnvelope("recovery envelope without a task id")
    return RecoveryJob(task_id=doc["task_id"], correlation_id=str(doc.get("correlation_id") or ""),
                       attempt=int(doc.get("attempt") or 0))


@dataclass
class RecoveryItem:
    mailbox_id: str
    message_id: str
    outcome: str = "queued"  # queued | processing | processed | skipped | failed | already-finished
    detail: str = ""
    queued_at: datetime | None = None
    updated_at: datetime | None = None
    received_at: datetime | None = None
    correlation_id: str = ""  # of the MessageJob the task queued for this mail

    def view(self) -> dict[str, Any]:
        return {"mailbox_id": self.mailbox_id, "message_id": self.message_id, "outcome": self.outcome,
                "detail": self.detail, "queued_at": _iso(self.queued_at), "updated_at": _iso(self.updated_at),
                "received_at": _iso(self.received_at)}


@dataclass
class RecoveryTask:
    id: str
    status: str  # queued | running | done | failed
    kind: str  # failed | unprocessed (the request's status)
    mailboxes: list[str]
    created_at: datetime
    since: datetime | None = None
    ids: list[str] = field(default_factory=list)
    updated_at: datetime | None = None
    finished_at: datetime | None = None
    enumerated: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    capped: bool = False
    error: str = ""
    correlation_id: str = ""
    etag: str = ""

    def view(self, items: list[RecoveryItem] | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "task_id": self.id, "status": self.status, "recover": self.kind, "mailboxes": self.mailboxes,
            "since": _iso(self.since), "ids": len(self.ids), "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at), "finished_at": _iso(self.finished_at),
            "counts": dict(self.counts), "total": sum(self.counts.values()), "capped": self.capped,
            "error": self.error}
        if items is not None:
            doc["items"] = [i.view() for i in sorted(items, key=lambda i: (i.received_at or _EPOCH, i.message_id))]
        return doc


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def new_task_id(now: datetime) -> str:
    """Sorts newest first (inverted milliseconds), unique by a random tail."""
    millis = int(now.timestamp() * 1000)
    return f"r{_INVERT - millis:013d}-{uuid.uuid4().hex[:8]}"


SINCE_SKEW = timedelta(minutes=5)  # clocks disagree a little; a 'since' further ahead is a mistake


def parse_since(value: Any, now: datetime | None = None) -> datetime | None:
    """ISO 8601 date or date-time; a date means its midnight UTC, a naive time is UTC. With `now`,
    a time in the future is refused (it would silently select nothing)."""
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise RecoveryRequestError("'since' must be an ISO 8601 date or date-time string", field="since")
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise RecoveryRequestError("'since' must be an ISO 8601 date or date-time, e.g. 2026-11-01",
                                   field="since") from None
    when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    if now is not None and when > now + SINCE_SKEW:
        raise RecoveryRequestError(f"'since' ({when.isoformat()}) is in the future, so it would select no mail: "
                                   f"give a time before now ({now.isoformat(timespec='seconds')})",
                                   "since_in_future", field="since", kind="invalid",
                                   detail={"now": now.isoformat()})
    return when


def outcome_of(row: LedgerEntry | None, correlation_id: str, now: datetime) -> tuple[str, str]:
    """A pending item's outcome, read from its ledger row. A Failed row counts only once the
    recovery's own job (its correlation id in the row's trace) has been at it."""
    if row is None:
        return "queued", ""
    if row.status in FINISHED:
        return row.status, row.skip_reason
    ours = bool(correlation_id) and any(t.get("correlation_id") == correlation_id for t in row.trace)
    if row.status == FAILED:
        return ("failed", row.last_error) if ours else ("queued", "")
    if row.status == PROCESSING and (ours or (row.lease_owner and row.lease_until and row.lease_until > now)):
        return "processing", row.last_error
    return "queued", ""


@dataclass
class RecoveryDeps:
    registry: MailboxRegistry
    ledger: Any  # TableLedger
    queue: JobQueue
    clock: Clock
    store: Any  # TableRecoveryStore
    sweep: SweepDeps
    max_per_task: int = MAX_PER_TASK


class RecoveryService:
    def __init__(self, deps: RecoveryDeps) -> None:
        self.d = deps

    async def _mailbox(self, ref: str) -> Mailbox:
        ref = ref.strip()
        box = await self.d.registry.get(ref)
        if box is None:
            wanted = ref.lower()
            box = next((b for b in await self.d.registry.list() if b.address.lower() == wanted), None)
        if box is None:
            raise RecoveryNotFound(f"no mailbox {ref!r} is registered", field="mailbox")
        return box

    # the API ------------------------------------------------------------------------------------
    async def start(self, doc: Any) -> RecoveryTask:
        if not isinstance(doc, dict):
            raise RecoveryRequestError("body must be a JSON object {status, mailbox?, since?, ids?}")
        unknown = set(doc) - {"status", "mailbox", "since", "ids"}
        if unknown:
            raise RecoveryRequestError(f"unknown field(s): {', '.join(sorted(unknown))}; allowed: status, mailbox, "
                                       "since, ids", "unknown_field", field=sorted(unknown)[0])
        kind = str(doc.get("status") or "")
        if kind not in RECOVERABLE:
            raise RecoveryRequestError("'status' must be 'failed' or 'unprocessed'", field="status",
                                       detail={"allowed": list(RECOVERABLE)})
        since = parse_since(doc.get("since"), self.d.clock.now())
        ids = doc.get("ids") or []
        if not isinstance(ids, list) or not all(isinstance(i, str) and 0 < len(i) <= 512 for i in ids):
            raise RecoveryRequestError("'ids' must be a list of message ids", field="ids")
        if len(ids) > MAX_IDS:
            raise RecoveryRequestError(f"at most {MAX_IDS} ids per task; use 'since' for more")
        mailbox_ref = doc.get("mailbox")
        if mailbox_ref is not None and not isinstance(mailbox_ref, str):
            raise RecoveryRequestError("'mailbox' must be a mailbox id or address", field="mailbox")
        if ids and not mailbox_ref:
            raise RecoveryRequestError("'ids' need the 'mailbox' they belong to")
        if mailbox_ref:
            box = await self._mailbox(mailbox_ref)
            if not box.active:
                raise RecoveryRequestError(f"mailbox {box.address} is inactive; activate it first")
            boxes = [box]
        else:
            boxes = [b for b in await self.d.registry.list() if b.active]
            if not boxes:
                raise RecoveryRequestError("no active mailbox to recover")
        now = self.d.clock.now()
        task = RecoveryTask(id=new_task_id(now), status="queued", kind=kind, mailboxes=[b.id for b in boxes],
                            created_at=now, updated_at=now, since=since, ids=list(dict.fromkeys(ids)),
                            correlation_id=new_correlation_id())
        await self.d.store.create(task)
        job = RecoveryJob(task_id=task.id, correlation_id=task.correlation_id)
        try:
            await self.d.queue.send(QUEUE_RECOVERY, job)
        except TransientError:
            task.status, task.error = "failed", "could not queue the task; start it again"
            await self.d.store.save(task)
            raise
        log.info("recovery.started task=%s kind=%s mailboxes=%s ids=%s correlation=%s", task.id, kind,
                 len(boxes), len(task.ids), task.correlation_id)
        return task

    async def list(self, mailbox_ref: str | None = None, limit: int = 5) -> list[RecoveryTask]:
        """The last tasks (of one mailbox), newest first; running ones with their progress now."""
        mailbox_id = (await self._mailbox(mailbox_ref)).id if mailbox_ref else None
        tasks = await self.d.store.list(mailbox_id, max(1, min(limit, 50)))
        return [(await self.progress(t.id))[0] if t.status == "running" else t for t in tasks]

    async def progress(self, task_id: str) -> tuple[RecoveryTask, list[RecoveryItem]]:
        d = self.d
        task = await d.store.get(task_id)
        if task is None:
            raise RecoveryNotFound(f"no recovery task {task_id!r}")
        items = await d.store.items(task_id)
        if task.status in ("done", "failed"):
            return task, items
        now = d.clock.now()
        changed: list[RecoveryItem] = []
        by_box: dict[str, list[RecoveryItem]] = {}
        for item in items:
            if item.outcome in PENDING:
                by_box.setdefault(item.mailbox_id, []).append(item)
        for mailbox_id, pending in by_box.items():
            rows = await d.ledger.get_many(mailbox_id, [i.message_id for i in pending])
            for item in pending:
                outcome, detail = outcome_of(rows.get(item.message_id), item.correlation_id, now)
                if (outcome, detail) != (item.outcome, item.detail):
                    item.outcome, item.detail, item.updated_at = outcome, detail, now
                    changed.append(item)
        if changed:
            await d.store.put_items(task_id, changed)
        task.counts = dict(Counter(i.outcome for i in items))
        if task.status != "running" or not set(task.enumerated) >= set(task.mailboxes):
            return task, items  # the runner still writes the task row: leave it to it
        if not any(i.outcome in PENDING for i in items):
            task.status, task.finished_at = "done", now
            log.info("recovery.done task=%s counts=%s", task.id, task.counts)
        task.updated_at = now
        try:
            await d.store.save(task)
        except LeaseHeld:
            pass  # written meanwhile (another reader); the next read settles it
        return task, items

    # the queue trigger ---------------------------------------------------------------------------
    async def run(self, job: RecoveryJob) -> RecoveryTask | None:
        d = self.d
        task = await d.store.get(job.task_id)
        if task is None:
            log.warning("recovery.unknown-task task=%s", job.task_id)
            return None
        if task.status in ("done", "failed"):
            return task
        task.status = "running"
        task = await d.store.save(task)
        total = sum(task.counts.values())
        for mailbox_id in task.mailboxes:
            if mailbox_id in task.enumerated:
                continue
            box = await d.registry.get(mailbox_id)
            queued = 0
            if box is not None:
                room = d.max_per_task - total
                if room <= 0:
                    task.capped = True
                else:
                    queued, capped = await self._recover_mailbox(task, box, room)
                    task.capped = task.capped or capped
            total += queued
            task.enumerated.append(mailbox_id)
            task.counts["queued"] = task.counts.get("queued", 0) + queued
            task.updated_at = d.clock.now()
            task = await d.store.save(task)
        if total == 0:
            task.status, task.finished_at = "done", d.clock.now()
            task = await d.store.save(task)
        log.info("recovery.queued task=%s mails=%s capped=%s correlation=%s", task.id, total, task.capped,
                 job.correlation_id)
        return task

    async def fail(self, job: RecoveryJob, reason: str) -> None:
        """The poison handler of `inbox-recovery`: the task says it stopped."""
        task = await self.d.store.get(job.task_id)
        if task is None or task.status in ("done", "failed"):
            return
        task.status, task.error, task.finished_at = "failed", reason, self.d.clock.now()
        try:
            await self.d.store.save(task)
        except LeaseHeld:
            pass

    async def _recover_mailbox(self, task: RecoveryTask, box: Mailbox, room: int) -> tuple[int, bool]:
        """Pick the mails, record them as the task's items (with the correlation id of the job each
        gets), then queue the jobs. Returns (queued, capped)."""
        d = self.d
        now = d.clock.now()

        def item(mid: str, received: datetime | None, outcome: str = "queued", detail: str = "") -> RecoveryItem:
            return RecoveryItem(box.id, mid, outcome, detail, now, now, received, new_correlation_id())

        if task.ids:
            rows = await d.ledger.get_many(box.id, task.ids)
            finished = [item(i, rows[i].received_at, "already-finished", rows[i].status)
                        for i in task.ids if i in rows and rows[i].status in FINISHED]
            todo = [item(i, rows[i].received_at if i in rows else None)
                    for i in task.ids if not (i in rows and rows[i].status in FINISHED)]
            await d.store.put_items(task.id, finished + todo)
            for it in todo:
                if it.message_id not in rows:
                    await d.ledger.mark_queued(box.id, it.message_id, "recovery", it.correlation_id)
                await d.queue.send(QUEUE_MESSAGES, self._job(box, it, task))
            return len(todo), False
        if task.kind == "failed":
            rows = await d.ledger.list_status(FAILED, box.id, received_since=task.since)
            rows.sort(key=lambda r: r.received_at or r.updated_at or now)
            capped = len(rows) > room
            items = [item(r.message_id, r.received_at) for r in rows[:room]]
            await d.store.put_items(task.id, items)
            for it in items:
                await d.queue.send(QUEUE_MESSAGES, self._job(box, it, task))
            return len(items), capped
        since = task.since or start_of(box)
        scan = await scan_unprocessed(d.sweep.mail, d.ledger, box, now, since=since, limit=room)
        items = [item(m.item.message_id, m.item.received_at) for m in scan.mails]
        await d.store.put_items(task.id, items)
        queued = await enqueue_unprocessed(d.sweep, box, scan.mails, now, "recovery", task.id,
                                           [it.correlation_id for it in items])
        return queued, scan.more

    @staticmethod
    def _job(box: Mailbox, it: RecoveryItem, task: RecoveryTask) -> MessageJob:
        return MessageJob(mailbox_id=box.id, message_id=it.message_id, tenant_id=box.tenant_id, source="recovery",
                          recovery_task=task.id, correlation_id=it.correlation_id)
