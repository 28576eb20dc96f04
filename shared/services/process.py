"""process_message: one mail of one mailbox becomes CRM objects, in resumable steps.

claim (lease) -> GET mail -> in the subscribed Inbox? -> classify -> CRM writes (idempotent by a key
derived from the mail) -> queue the autoreply job -> mailbox action -> Processed.

Each finished step is recorded on the ledger row; a redelivery resumes after the last one.  A worker
may die between any two steps: every CRM write is idempotent, the ticket number is reserved and
recorded before the ticket is created, the autoreply is deduplicated per ticket by its sender, and
a 404 on the mailbox action means someone (us, before dying) already did it.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable

from ..config import QUEUE_AUTOREPLIES, QUEUE_MESSAGES
from ..domain import policy
from ..domain.envelope import AutoreplyJob, MessageJob, with_attempt
from ..domain.errors import LeaseHeld, MailNotFound, PermanentError, TransientError
from ..domain.mail import InboundMail
from ..domain.model import (
    ACTION_MOVE, FAILED, PROCESSED, SKIPPED, STEP_AUTOREPLY_QUEUED, STEP_CRM, STEP_FETCHED, STEP_MAILBOX_ACTION,
    HistoryDraft, LedgerEntry, Mailbox, TicketDraft, TicketRef,
)
from ..ports import Clock, CrmGateway, JobQueue, Ledger, MailboxRegistry, MailGateway

log = logging.getLogger("inbox.process")

LEASE_SECONDS = 120
# A Retry-After longer than this is not waited in the invocation: the job is re-enqueued with it.
MAX_WAIT_IN_INVOCATION = 5.0
# Re-enqueues after long Retry-Afters before the mail is Failed (each is separate from the queue's
# own maxDequeueCount of 5).
MAX_REQUEUES = 8
AUTOREPLY_MAX_AGE = timedelta(days=1)


@dataclass
class Outcome:
    status: str  # processed | skipped | failed | requeued | busy | unknown-mailbox
    reason: str = ""
    ticket_number: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProcessDeps:
    registry: MailboxRegistry
    ledger: Ledger
    mail: MailGateway
    crm: CrmGateway
    queue: JobQueue
    clock: Clock
    note_format: str = "html"
    own_addresses: Callable[[], Awaitable[frozenset[str]]] | None = None
    worker_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])


def _trace(entry: LedgerEntry, clock: Clock, event: str, **extra: Any) -> None:
    entry.trace.append({"at": clock.now().isoformat(), "event": event, **extra})


def _step(entry: LedgerEntry, clock: Clock, step: str, **extra: Any) -> None:
    entry.steps[step] = clock.now().isoformat()
    _trace(entry, clock, step, **extra)


class MessageProcessor:
    def __init__(self, deps: ProcessDeps) -> None:
        self.d = deps

    async def run(self, job: MessageJob, dequeue_count: int = 1) -> Outcome:
        d = self.d
        mailbox = await d.registry.get(job.mailbox_id)
        if mailbox is None:
            log.warning("process.unknown-mailbox correlation=%s message=%s", job.correlation_id, job.message_id)
            return Outcome("unknown-mailbox", "no such mailbox is registered")
        try:
            # The lease owner is this invocation, not this worker: one worker runs many at once.
            entry = await d.ledger.claim(mailbox.id, job.message_id, f"{d.worker_id}-{uuid.uuid4().hex[:8]}",
                                         LEASE_SECONDS,
                                         job.correlation_id, job.source)
        except LeaseHeld as exc:
            # Another worker is on it: come back when its lease ends (finished or expired by then).
            return await self._requeue_or_raise(job, TransientError(f"busy: {exc}", retry_after=exc.retry_after))
        if entry.finished:
            log.info("process.already-finished correlation=%s message=%s status=%s", job.correlation_id,
                     job.message_id, entry.status)
            return Outcome(entry.status, "already finished", entry.data.get("ticket_number", ""))
        try:
            return await self._steps(job, mailbox, entry)
        except TransientError as exc:
            return await self._transient(job, entry, exc)
        except PermanentError as exc:
            return await self._finish(entry, FAILED, f"{type(exc).__name__}: {exc}", job)
        except Exception as exc:
            # A bug or an unexpected library error: release the lease so the retry is not blocked.
            await self._release(job, entry, f"{type(exc).__name__}: {str(exc)[:300]}")
            raise

    # the pipeline ----------------------------------------------------------------------------
    async def _steps(self, job: MessageJob, mailbox: Mailbox, entry: LedgerEntry) -> Outcome:
        d = self.d
        if not entry.done(STEP_CRM):
            try:
                mail = await d.mail.get_message(mailbox, job.message_id)
            except MailNotFound:
                return await self._finish(entry, SKIPPED, "mail gone before the CRM step (deleted or moved)", job)
            inbox = await d.mail.inbox_folder_id(mailbox)
            entry.sender, entry.subject, entry.received_at = mail.sender.normalized, mail.subject, mail.received_at
            if mail.parent_folder_id != inbox:
                # Refused: a notification (or a forged resource) pointing at mail outside the Inbox.
                return await self._finish(entry, SKIPPED, "not in the subscribed Inbox; left untouched", job,
                                          action=False)
            if not entry.done(STEP_FETCHED):
                _step(entry, d.clock, STEP_FETCHED)
            skip = await self._crm_step(mail, mailbox, entry, job)
            if skip:
                return await self._mailbox_action_then(entry, mailbox, job, SKIPPED, skip)
        if entry.data.get("autoreply") and not entry.done(STEP_AUTOREPLY_QUEUED):
            await d.queue.send(QUEUE_AUTOREPLIES, AutoreplyJob(
                mailbox_id=mailbox.id, message_id=job.message_id, ticket_id=entry.data["ticket_id"],
                ticket_number=entry.data["ticket_number"], correlation_id=job.correlation_id))
            _step(entry, d.clock, STEP_AUTOREPLY_QUEUED)
            await d.ledger.save(entry)
        return await self._mailbox_action_then(entry, mailbox, job, PROCESSED, "")

    async def _crm_step(self, mail: InboundMail, mailbox: Mailbox, entry: LedgerEntry, job: MessageJob) -> str:
        """All CRM writes for the mail. Returns a skip reason, or '' when the mail was stored."""
        d = self.d
        own = await d.own_addresses() if d.own_addresses else frozenset()
        verdict = policy.classify(mail, own)
        key = mail.idempotency_key()
        entry.data["key"] = key
        person_id = await d.crm.find_or_create_person(mail.sender.normalized, mail.sender.name)
        ticket = await self._thread(mail, person_id)
        is_new = ticket is None
        if is_new and verdict.automated:
            return f"automated mail ({verdict.reason}) that belongs to no ticket"
        if is_new:
            number = entry.data.get("reserved_number") or await d.crm.reserve_ticket_number()
            if number and not entry.data.get("reserved_number"):
                entry.data["reserved_number"] = number  # recorded first: a crash reuses it
                await d.ledger.save(entry)
            title, _ = policy.ticket_title(mail.subject)
            ticket = await d.crm.create_ticket(TicketDraft(
                title=title, person_id=person_id, number=number, email=mail.sender.normalized,
                values=dict(mailbox.routing.get("values", {})) if isinstance(mailbox.routing, dict) else {},
                message_ids=tuple(filter(None, [mail.internet_message_id]))), key)
        assert ticket is not None
        if not is_new and mail.internet_message_id:
            await d.crm.add_message_ids(ticket.id, [mail.internet_message_id])
        await d.crm.add_history(HistoryDraft(
            ticket_id=ticket.id, person_id=person_id, note=policy.note_from_mail(mail, d.note_format),
            date=mail.received_at, message_ids=tuple(filter(None, [mail.internet_message_id]))), key)
        reply_to = mail.reply_to[0] if mail.reply_to and mail.reply_to[0].address else mail.sender
        entry.data.update(person_id=person_id, ticket_id=ticket.id, ticket_number=ticket.number, new_ticket=is_new,
                          title=ticket.title or policy.ticket_title(mail.subject)[0],
                          reply_address=reply_to.normalized, reply_name=reply_to.name or mail.sender.name,
                          internet_message_id=mail.internet_message_id,
                          received_at=mail.received_at.isoformat())
        entry.data["autoreply"] = bool(
            is_new and mailbox.autoreply.enabled and not verdict.automated
            and d.clock.now() - mail.received_at < AUTOREPLY_MAX_AGE)
        _step(entry, d.clock, STEP_CRM, ticket=ticket.number, new_ticket=is_new)
        await d.ledger.save(entry)
        log.info("process.crm-stored correlation=%s message=%s ticket=%s new=%s", job.correlation_id,
                 job.message_id, ticket.number, is_new)
        return ""

    async def _thread(self, mail: InboundMail, person_id: str) -> TicketRef | None:
        """The ticket this mail follows up, if any: Message-ID references first, then the subject tag
        (honoured only when the sender is the ticket's person)."""
        crm = self.d.crm
        refs = list(mail.in_reply_to) + list(mail.references)
        if refs:
            found = await crm.find_ticket_by_message_ids(refs)
            if found:
                return found
        tag = policy.ticket_tag(mail.subject)
        if tag:
            ticket = await crm.get_ticket(tag)
            if ticket and ticket.person_id == person_id:
                return ticket
        return None

    async def _mailbox_action_then(self, entry: LedgerEntry, mailbox: Mailbox, job: MessageJob, status: str,
                                   reason: str) -> Outcome:
        d = self.d
        if not entry.done(STEP_MAILBOX_ACTION):
            try:
                if mailbox.action == ACTION_MOVE and mailbox.move_folder:
                    await d.mail.move_message(mailbox, job.message_id, mailbox.move_folder)
                else:
                    await d.mail.delete_message(mailbox, job.message_id)
            except MailNotFound:
                pass  # already actioned (by us before a crash, or by a person): the step is done
            _step(entry, d.clock, STEP_MAILBOX_ACTION, action=mailbox.action)
        return await self._finish(entry, status, reason, job)

    async def _finish(self, entry: LedgerEntry, status: str, reason: str, job: MessageJob,
                      action: bool = True) -> Outcome:
        d = self.d
        entry.status = status
        entry.lease_owner, entry.lease_until = "", None
        if status == FAILED:
            entry.last_error = reason
        elif status == SKIPPED:
            entry.skip_reason = reason
        if status == PROCESSED:
            entry.last_error = ""
        _trace(entry, d.clock, status, reason=reason)
        await d.ledger.save(entry)
        log.info("process.%s correlation=%s message=%s reason=%s", status, job.correlation_id, job.message_id,
                 reason or "-")
        return Outcome(status, reason, entry.data.get("ticket_number", ""), entry.data)

    async def _release(self, job: MessageJob, entry: LedgerEntry, error: str) -> None:
        d = self.d
        entry.last_error = error
        entry.lease_owner, entry.lease_until = "", None
        _trace(entry, d.clock, "error", error=error)
        try:
            await d.ledger.save(entry)
        except Exception:  # noqa: BLE001 - the ledger may be what is failing; the queue still retries
            log.warning("process.ledger-unavailable correlation=%s message=%s", job.correlation_id, job.message_id)

    async def _transient(self, job: MessageJob, entry: LedgerEntry, exc: TransientError) -> Outcome:
        """Short waits were already retried by the adapter. Release the lease, record the error."""
        await self._release(job, entry, f"{type(exc).__name__}: {exc}")
        return await self._requeue_or_raise(job, exc)

    async def _requeue_or_raise(self, job: MessageJob, exc: TransientError) -> Outcome:
        """A long Retry-After re-enqueues the job with that delay instead of holding a worker or
        burning the queue's dequeue budget; otherwise raise so the queue retries (and poisons)."""
        wait = exc.retry_after or 0
        if wait > MAX_WAIT_IN_INVOCATION and job.attempt < MAX_REQUEUES:
            delay = int(wait) + 1
            await self.d.queue.send(QUEUE_MESSAGES, with_attempt(job, job.attempt + 1), visibility_timeout=delay)
            log.info("process.requeued correlation=%s message=%s delay=%ss attempt=%s", job.correlation_id,
                     job.message_id, delay, job.attempt + 1)
            return Outcome("requeued", str(exc))
        log.warning("process.transient correlation=%s message=%s error=%s", job.correlation_id, job.message_id,
                    f"{type(exc).__name__}: {exc}")
        raise exc


def received_before(mail_time: datetime, now: datetime, seconds: int) -> bool:
    return (now - mail_time).total_seconds() >= seconds
