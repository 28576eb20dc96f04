"""The sweep: mail no notification brought in, and Failed mail worth another try.

One run per active mailbox (`sweep_mailbox`; the `sweep_inbox` timer calls `sweep_all`, the
lifecycle handler calls `sweep_mailbox` after a `missed` or `subscriptionRemoved` event):

1. Failed rows (the mailbox's range of the `s-failed` index partition): apply the "Inbox: Failed"
   category where the poison handler could not; re-enqueue, with backoff (failures.retry_delay),
   those younger than FAILED_RETRY_MAX_AGE_HOURS that failed for a transient reason, each as one
   try (the processor's own hours of waiting, domain/retry.py, are what made them Failed).
2. The Inbox, oldest first, paged, from the mailbox's start date to now minus
   SWEEP_GRACE_SECONDS (no grace after a `subscriptionRemoved` or `missed` lifecycle event: no
   notification will come for that mail): a mail with no ledger row (or an unfinished row nobody
   touched for STALE_AFTER, and not waiting for its next try after a transient failure) is recorded
   as queued in the ledger, then enqueued as MessageJob(source="sweep").
   Mail older than the start date is never taken here: backfill is an admin's recovery.

Bounded: at most `max_enqueue` jobs per run (SWEEP_MAX_PER_RUN) and at most `max_scan` Inbox items
read; a run stopped by the scan bound leaves a cursor, and the next run goes on from there. Every
Graph request goes through the adapter's per-mailbox limiter. Cheap when the Inbox is empty: one
list request and one index query. Exactly-once is not the sweep's job: the processor's ledger claim
and the CRM's idempotency keys make a duplicate job (the sweep racing a late notification) harmless.

Also here: `scan_unprocessed`, the one definition of "unprocessed" (in the Inbox, not finished,
not Failed, older than five minutes, including mail older than the start date) that the manage
API, the status page and recoveries share.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, AsyncIterator

from ..config import QUEUE_MESSAGES
from ..domain import retry
from ..domain.envelope import MessageJob, new_correlation_id
from ..domain.errors import InboxError, LeaseHeld
from ..domain.model import FAILED, FINISHED, PROCESSING, InboxItem, LedgerEntry, Mailbox
from ..ports import Clock, JobQueue, MailboxRegistry, MailGateway
from .failures import CATEGORY_APPLIED, CATEGORY_GONE, apply_failed_category, retry_delay

log = logging.getLogger("inbox.sweep")

# A row still unfinished and untouched for this long lost its job (a queue put that failed after
# the row was written, a message that expired): the sweep enqueues it again.
STALE_AFTER = timedelta(minutes=15)
# "Unprocessed" means older than this (issue 4: five minutes), whatever the sweep's grace.
UNPROCESSED_MIN_AGE = timedelta(minutes=5)
DEFAULT_MAX_SCAN = 5000
ENQUEUE_CONCURRENCY = 16


@dataclass
class SweepDeps:
    mail: MailGateway
    ledger: Any  # TableLedger: get, save, get_many, mark_queued, list_status
    queue: JobQueue
    clock: Clock
    registry: MailboxRegistry | None = None
    state: Any = None  # SweepStateStore (adapters/recovery_table.py): get, save, list
    grace_seconds: int = 300
    failed_retry_max_age_hours: int = 24
    max_enqueue: int = 500
    max_scan: int = DEFAULT_MAX_SCAN
    page_size: int = 100


@dataclass
class SweepReport:
    mailbox_id: str
    started_at: datetime
    finished_at: datetime | None = None
    listed: int = 0
    enqueued: int = 0
    retried: int = 0
    categories_applied: int = 0
    categories_pending: int = 0
    in_flight: int = 0
    capped: bool = False
    cursor: datetime | None = None
    note: str = ""
    error: str = ""

    def view(self) -> dict[str, Any]:
        doc = asdict(self)
        for k in ("started_at", "finished_at", "cursor"):
            doc[k] = doc[k].isoformat() if doc[k] else None
        return doc


def deps_from(services_or_deps: Any) -> SweepDeps:
    """SweepDeps as given, or built from the app's Services (shared/bootstrap.py)."""
    if isinstance(services_or_deps, SweepDeps):
        return services_or_deps
    svc = services_or_deps
    s = svc.settings
    return SweepDeps(mail=svc.graph, ledger=svc.ledger, queue=svc.queue, clock=svc.clock, registry=svc.registry,
                     state=getattr(svc, "sweep_state", None), grace_seconds=s.sweep_grace_seconds,
                     failed_retry_max_age_hours=s.failed_retry_max_age_hours,
                     max_enqueue=getattr(s, "sweep_max_per_run", 500))


def start_of(mailbox: Mailbox) -> datetime | None:
    return mailbox.start_date or mailbox.created_at


def _when(value: Any) -> datetime | None:
    if not value:
        return None
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


# the run ------------------------------------------------------------------------------------------
async def sweep_all(services_or_deps: Any, now: datetime | None = None, concurrency: int = 4) -> list[SweepReport]:
    """Sweep every active mailbox, a few at a time; one mailbox's trouble does not stop the others."""
    d = deps_from(services_or_deps)
    if d.registry is None:
        raise ValueError("sweep_all needs the mailbox registry")
    now = now or d.clock.now()
    boxes = [b for b in await d.registry.list() if b.active]
    gate = asyncio.Semaphore(concurrency)

    async def one(box: Mailbox) -> SweepReport:
        async with gate:
            return await sweep_mailbox(d, box, now)
    reports = list(await asyncio.gather(*(one(b) for b in boxes)))
    log.info("sweep.done mailboxes=%s enqueued=%s retried=%s errors=%s", len(reports),
             sum(r.enqueued for r in reports), sum(r.retried for r in reports), sum(1 for r in reports if r.error))
    return reports


async def sweep_mailbox(services_or_deps: Any, mailbox: Mailbox, now: datetime | None = None, *,
                        max_enqueue: int | None = None, source: str = "sweep",
                        grace_seconds: int | None = None) -> SweepReport:
    """One sweep of one mailbox (see the module docstring). Never raises for Graph, Storage or
    queue trouble: the report's `error` says what stopped it, and the next run goes on.

    `grace_seconds` overrides SWEEP_GRACE_SECONDS: the lifecycle handler passes 0 after
    `subscriptionRemoved` and `missed`, when no notification will come for the young mail either."""
    d = deps_from(services_or_deps)
    now = now or d.clock.now()
    report = SweepReport(mailbox_id=mailbox.id, started_at=now)
    if not mailbox.active:
        report.note = "inactive mailbox: not swept"
        return report
    budget = [d.max_enqueue if max_enqueue is None else max_enqueue]
    state = None
    try:
        state = await d.state.get(mailbox.id) if d.state is not None else None
        await _failed_rows(d, mailbox, now, report, budget, source)
        await _inbox(d, mailbox, now, report, budget, source, state.cursor if state else None,
                     d.grace_seconds if grace_seconds is None else grace_seconds)
    except InboxError as exc:
        report.error = f"{type(exc).__name__}: {str(exc)[:300]}"
        report.cursor = state.cursor if state else None  # keep the place
        log.warning("sweep.error mailbox=%s error=%s", mailbox.id, type(exc).__name__)
    report.finished_at = d.clock.now()
    if d.state is not None:
        try:
            await d.state.save(report)
        except InboxError as exc:
            log.warning("sweep.state-unsaved mailbox=%s error=%s", mailbox.id, type(exc).__name__)
    log.info("sweep.mailbox mailbox=%s listed=%s enqueued=%s retried=%s categories=%s capped=%s", mailbox.id,
             report.listed, report.enqueued, report.retried, report.categories_applied, report.capped)
    return report


async def _failed_rows(d: SweepDeps, mailbox: Mailbox, now: datetime, report: SweepReport, budget: list[int],
                       source: str) -> None:
    rows = await d.ledger.list_status(FAILED, mailbox.id)
    rows.sort(key=lambda r: r.received_at or r.created_at or now)
    max_age = timedelta(hours=d.failed_retry_max_age_hours)
    categorized = 0
    for row in rows:
        need_category = row.data.get("category") not in (CATEGORY_APPLIED, CATEGORY_GONE)
        born = row.received_at or row.created_at or now  # never updated_at: each retry moves it
        retry_at = _when(row.data.get("retry_at"))
        want_retry = (not row.data.get("permanent") and now - born < max_age
                      and (retry_at is None or retry_at <= now))
        if want_retry and budget[0] <= 0:
            report.capped = True
            want_retry = False
        if need_category and categorized >= d.max_enqueue:
            need_category = False
        if not (need_category or want_retry):
            continue
        entry = await d.ledger.get(mailbox.id, row.message_id)
        if entry is None or entry.status != FAILED:
            continue  # index row behind its mail row (a retry claimed it meanwhile)
        if need_category:
            categorized += 1
            state = await apply_failed_category(d.mail, mailbox, entry)
            if state == CATEGORY_APPLIED:
                report.categories_applied += 1
            elif state != CATEGORY_GONE:
                report.categories_pending += 1
                categorized = d.max_enqueue  # Graph refuses: spare it the rest until the next run
        job = None
        if want_retry:
            retries = int(entry.data.get("retries") or 0) + 1
            entry.data["retries"] = retries
            entry.data["retry_at"] = (now + retry_delay(retries)).isoformat()
            # One try (and the queue's own retries), not the processor's hours of waiting again: that
            # schedule is what made it Failed, and this sweep's backoff spaces the tries from here on.
            job = MessageJob(mailbox_id=mailbox.id, message_id=entry.message_id, tenant_id=mailbox.tenant_id,
                             source=source, attempt=retry.ATTEMPTS)
            entry.trace.append({"at": now.isoformat(), "event": "retry-queued", "source": source,
                                "retry": retries, "correlation_id": job.correlation_id})
        try:
            await d.ledger.save(entry)  # ETag-guarded: of two sweeps racing, one retries the mail
        except LeaseHeld:
            continue
        if job is not None:
            await d.queue.send(QUEUE_MESSAGES, job)
            report.retried += 1
            budget[0] -= 1


async def _inbox(d: SweepDeps, mailbox: Mailbox, now: datetime, report: SweepReport, budget: list[int],
                 source: str, cursor: datetime | None, grace_seconds: int) -> None:
    start = start_of(mailbox)
    if start is None:
        report.note = "no start date: only a recovery processes this mailbox's mail"
        return
    after = max(start, cursor) if cursor else start
    before = now - timedelta(seconds=grace_seconds)
    if before <= after:
        return
    scanned = 0
    # No grace: everything up to the list itself (Graph's filter has whole seconds; this second's
    # mail must not wait for the next timer sweep either).
    async for chunk in _chunks(d.mail.list_folder(mailbox, "inbox", received_after=after,
                                                  received_before=before if grace_seconds > 0 else None,
                                                  page_size=d.page_size), d.page_size):
        report.listed += len(chunk)
        scanned += len(chunk)
        rows = await d.ledger.get_many(mailbox.id, [i.message_id for i in chunk])
        todo: list[tuple[InboxItem, LedgerEntry | None]] = []
        for item in chunk:
            row = rows.get(item.message_id)
            verdict = _verdict(row, now)
            if verdict == "in-flight":
                report.in_flight += 1
            elif verdict in ("new", "stale"):
                todo.append((item, row))
        take = todo[:max(0, budget[0])]
        if len(take) < len(todo):
            report.capped = True
        report.enqueued += await _enqueue(d, mailbox, take, now, source)
        budget[0] -= len(take)
        if report.capped or budget[0] <= 0:
            report.capped = True
            return  # the next run starts from the beginning again: what we queued will be gone by then
        if scanned >= d.max_scan:
            report.capped = True
            report.cursor = chunk[-1].received_at
            return
    report.cursor = None


def _verdict(row: LedgerEntry | None, now: datetime) -> str:
    if row is None:
        return "new"
    if row.status in FINISHED or row.status == FAILED:
        return "done"
    if row.lease_owner and row.lease_until and row.lease_until > now:
        return "in-flight"
    if row.updated_at and now - row.updated_at < STALE_AFTER:
        return "in-flight"  # queued, or waiting for the queue's next delivery
    due = _when(row.data.get(retry.NEXT_ATTEMPT))
    if due and now < due + STALE_AFTER:
        return "in-flight"  # waiting for a dependency: its re-enqueued job comes back then (domain/retry.py)
    return "stale"


async def _enqueue(d: SweepDeps, mailbox: Mailbox, items: list[tuple[InboxItem, LedgerEntry | None]],
                   now: datetime, source: str, recovery_task: str = "",
                   correlation_ids: list[str] | None = None) -> int:
    gate = asyncio.Semaphore(ENQUEUE_CONCURRENCY)
    cids = correlation_ids or [new_correlation_id() for _ in items]

    async def one(item: InboxItem, row: LedgerEntry | None, cid: str) -> int:
        async with gate:
            job = MessageJob(mailbox_id=mailbox.id, message_id=item.message_id, tenant_id=mailbox.tenant_id,
                             source=source, recovery_task=recovery_task, correlation_id=cid)
            if row is None:
                if not await d.ledger.mark_queued(mailbox.id, item.message_id, source, job.correlation_id,
                                                  sender=item.sender, subject=item.subject,
                                                  received_at=item.received_at):
                    return 0  # a notification's job claimed it a moment ago
            else:
                row.trace.append({"at": now.isoformat(), "event": "requeued", "source": source,
                                  "correlation_id": job.correlation_id})
                try:
                    await d.ledger.save(row)  # refreshes updated_at: the next sweep leaves it be
                except LeaseHeld:
                    return 0
            await d.queue.send(QUEUE_MESSAGES, job)
            return 1
    return sum(await asyncio.gather(*(one(i, r, c) for (i, r), c in zip(items, cids))))


async def _chunks(items: AsyncIterator[InboxItem], size: int) -> AsyncIterator[list[InboxItem]]:
    """Group an async iterator in lists; closes it when the consumer stops early."""
    async with contextlib.aclosing(items) as source:  # type: ignore[type-var]
        chunk: list[InboxItem] = []
        async for item in source:
            chunk.append(item)
            if len(chunk) >= size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


# "unprocessed" ------------------------------------------------------------------------------------
@dataclass
class Unprocessed:
    item: InboxItem
    row: LedgerEntry | None

    @property
    def state(self) -> str:
        """new | processing | retrying (failed transiently, its next try is queued) | queued."""
        if self.row is None:
            return "new"
        if self.row.lease_owner:
            return "processing"
        return "retrying" if self.row.last_error or self.row.data.get(retry.NEXT_ATTEMPT) else "queued"

    @property
    def next_attempt_at(self) -> str | None:
        """When a retrying mail's next try is due (ISO time), when known."""
        return (self.row.data.get(retry.NEXT_ATTEMPT) or None) if self.row is not None else None


@dataclass
class UnprocessedScan:
    mails: list[Unprocessed] = field(default_factory=list)
    more: bool = False  # stopped at the limit or the scan bound: there may be more


async def scan_unprocessed(mail: MailGateway, ledger: Any, mailbox: Mailbox, now: datetime,
                           since: datetime | None = None, until: datetime | None = None, limit: int = 1000,
                           max_scan: int = DEFAULT_MAX_SCAN, page_size: int = 100) -> UnprocessedScan:
    """Inbox mail, oldest first, that is not finished and not Failed, received before
    min(until, now - 5 minutes) and (when given) at or after `since`. Mail older than the
    mailbox's start date is included: it is exactly what a backfill recovery would take."""
    before = now - UNPROCESSED_MIN_AGE
    if until and until < before:
        before = until
    scan = UnprocessedScan()
    scanned = 0
    async for chunk in _chunks(mail.list_folder(mailbox, "inbox", received_after=since, received_before=before,
                                                page_size=page_size), page_size):
        scanned += len(chunk)
        rows = await ledger.get_many(mailbox.id, [i.message_id for i in chunk])
        for item in chunk:
            row = rows.get(item.message_id)
            if row is None or row.status == PROCESSING:
                if len(scan.mails) >= limit:
                    scan.more = True
                    return scan
                scan.mails.append(Unprocessed(item, row))
        if scanned >= max_scan:
            scan.more = True
            return scan
    return scan


async def enqueue_unprocessed(d: SweepDeps, mailbox: Mailbox, mails: list[Unprocessed], now: datetime,
                              source: str, recovery_task: str = "", correlation_ids: list[str] | None = None) -> int:
    """Queue these mails (a recovery's choice): rows are marked queued first, like the sweep does."""
    return await _enqueue(d, mailbox, [(m.item, m.row) for m in mails], now, source, recovery_task,
                          correlation_ids)
