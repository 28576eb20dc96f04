"""process_message: one mail of one mailbox becomes CRM objects, in resumable steps.

claim (lease) -> GET mail -> in the subscribed Inbox? -> classify -> decision -> CRM writes
(idempotent by a key derived from the mail) -> queue the autoreply job -> mailbox action -> Processed.

Ledger writes, three or four for a plain mail, each one a crash point that a redelivery resumes from:
  1. the claim (an insert: the lease);
  2. the decision (the plan), before any CRM write: a redelivery carries out the same plan, and the
     processing extension is never asked twice. Written only where a retry could decide otherwise
     (an extension, or a mail whose headers or subject tag name a ticket: one this attempt created
     could answer them); a new mail that names none decides the same again, and its plan is
     recorded with step 3;
  3. the CRM step, before the autoreply job that reads it is queued; a crash before it repeats the
     CRM step, which writes nothing twice (every create is idempotent by its key, and the CRM's own
     records answer without asking it again: crm_lime/creates.py);
  4. the autoreply job queued and the mailbox action done, with the final status: a crash between
     the job and this write queues the job again, which the autoreply's claim per ticket makes
     harmless; a 404 on the mailbox action means someone (us, before dying) already did it, and a
     404 on the GET after step 3 is a finished mailbox action, not a lost mail.
The placement (which ticket, created or found) is not written on its own: a retry of the same plan
lands on the same ticket through the same keys. The embedded CRM's reserved ticket number is the
one write between 2 and 3 (recorded before the ticket is created, so a retry reuses it); Lime
numbers its tickets itself and needs none.
"""
from __future__ import annotations

import hashlib
import logging
import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Awaitable, Callable

from .. import telemetry
from ..config import QUEUE_AUTOREPLIES, QUEUE_MESSAGES, MailRules
from ..domain import decision as dec
from ..domain import mailbox_rules, policy, retry
from ..domain import threading as conv
from ..domain.envelope import AutoreplyJob, MessageJob, with_attempt
from ..domain.errors import LeaseHeld, MailNotFound, PermanentError, TransientError
from ..domain.mail import InboundMail
from ..domain.model import (
    ACTION_MOVE, FAILED, PROCESSED, SKIPPED, STEP_AUTOREPLY_QUEUED, STEP_CRM, STEP_FETCHED, STEP_MAILBOX_ACTION,
    DocumentDraft, HistoryDraft, LedgerEntry, Mailbox, TicketDraft, TicketRef,
)
from ..domain.reports import DeliveryReport, unthreaded_reason
from ..ports import Clock, CrmGateway, JobQueue, Ledger, MailboxRegistry, MailGateway
from .attachments import REPORT_PART, AttachmentResult, AttachmentRules, AttachmentStore
from .delivery_reports import find_report_thread, read_report
from .extension import Extension, run_extension
from .failures import clear_failed_category
from .mail_to_crm import Sender, find_thread, identify_sender, same_organisation, sender_from_ticket

log = logging.getLogger("inbox.process")

LEASE_SECONDS = 120
NEXT_ATTEMPT = retry.NEXT_ATTEMPT
AUTOREPLY_MAX_AGE = timedelta(days=1)
MAX_SUCCESSORS = 5  # closed successors of closed successors followed before giving up and reopening
# The ticket's description: the start of the first mail as plain text (Lime's description holds
# 1,024 characters; an adapter may prefix it, e.g. with the ticket a successor follows up).
DESCRIPTION_CHARS = 800
LEDGER_ATTACHMENTS_MAX = 50  # attachment lines kept on the ledger row (a Table string holds 32K chars)

# What the CRM step did with the mail's ticket (ledger data "action"; shared/domain/decision.py).
NEW = dec.NEW  # opened a ticket
JOINED = "joined"  # another mail of the same conversation opened it at the same moment
SUCCESSOR = dec.SUCCESSOR  # opened a ticket that follows up a closed one (linked to it)
FOLLOW_UP = dec.FOLLOW_UP  # added to an open ticket
REOPENED = dec.REOPENED  # added to a closed ticket, which it reopened
HISTORY_ONLY = dec.HISTORY_ONLY  # automated mail kept on its ticket; the status is left alone
CREATED = (NEW, SUCCESSOR)
_FINISHED_METRIC = {PROCESSED: telemetry.MAILS_PROCESSED, SKIPPED: telemetry.MAILS_SKIPPED,
                    FAILED: telemetry.MAILS_FAILED}


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
    rules: MailRules = field(default_factory=MailRules)
    own_addresses: Callable[[], Awaitable[frozenset[str]]] | None = None
    worker_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    # called after a permanent failure was recorded (services/failures.py: no automatic retries,
    # the mailbox category); must not raise
    on_failed: Callable[[Mailbox, LedgerEntry], Awaitable[None]] | None = None
    # PROCESSING_EXTENSION (shared/services/extension.py): may change the ticket decision
    extension: Extension | None = None


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
        early = retry.remaining(job.not_before, d.clock.now())
        if early > 0:  # a re-enqueued job the queue delivered before its time on our clock
            return await self._put_back(job, early)
        try:
            mailbox = await d.registry.get(job.mailbox_id)
        except TransientError as exc:  # Storage down: wait for it like for any dependency
            return await self._requeue_or_raise(job, exc)
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
        except TransientError as exc:  # Storage down
            return await self._requeue_or_raise(job, exc)
        if entry.finished:
            log.info("process.already-finished correlation=%s message=%s status=%s", job.correlation_id,
                     job.message_id, entry.status)
            return Outcome(entry.status, "already finished", entry.data.get("ticket_number", ""))
        try:
            return await self._steps(job, mailbox, entry)
        except TransientError as exc:
            return await self._transient(job, entry, exc)
        except PermanentError as exc:
            # Straight to Failed: retrying cannot help, so no queue retries are burned. Marked
            # `permanent` in the same write, so the sweep never sees it as one to retry.
            entry.data["permanent"] = True
            entry.data.pop("retry_at", None)
            outcome = await self._finish(entry, FAILED, f"{type(exc).__name__}: {exc}", job)
            if self.d.on_failed is not None:
                await self.d.on_failed(mailbox, entry)
            return outcome
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
                telemetry.count(telemetry.MAILS_RECEIVED, source=job.source)
            skip = await self._crm_step(mail, mailbox, entry, job)
            if skip:
                return await self._mailbox_action_then(entry, mailbox, job, SKIPPED, skip)
            await d.ledger.save(entry)  # the CRM step, before the job that reads it is queued
        # The autoreply job is recorded with the mailbox action: a crash in between queues it again
        # on the retry, which the autoreply's claim per ticket makes harmless.
        await self._queue_autoreply(entry, mailbox, job)
        return await self._mailbox_action_then(entry, mailbox, job, PROCESSED, "")

    async def _queue_autoreply(self, entry: LedgerEntry, mailbox: Mailbox, job: MessageJob) -> None:
        if entry.data.get("autoreply") and not entry.done(STEP_AUTOREPLY_QUEUED):
            await self.d.queue.send(QUEUE_AUTOREPLIES, AutoreplyJob(
                mailbox_id=mailbox.id, message_id=job.message_id, ticket_id=entry.data["ticket_id"],
                ticket_number=entry.data["ticket_number"], correlation_id=job.correlation_id))
            _step(entry, self.d.clock, STEP_AUTOREPLY_QUEUED)

    async def _crm_step(self, mail: InboundMail, mailbox: Mailbox, entry: LedgerEntry, job: MessageJob) -> str:
        """All CRM writes for the mail. Returns a skip reason, or '' when the mail was stored (the
        step is recorded on `entry`, which the caller saves with the autoreply job).

        Order: classify -> thread (a delivery report through the original it carries, then
        References, then subject tag, each of the last two only for a party to the ticket) and
        identify the sender (lookups only; not even those when the ticket's own person writes
        again) -> skip automated mail that belongs to no ticket -> the decision (default policy,
        then the processing extension) as the plan -> person -> ticket (new, successor of a closed
        one, or existing) -> reopen -> Message-IDs and parties -> attachments -> the original .eml
        (store_original) -> overflow documents -> history note. The CRM sees the writes as one
        scope (`mail_writes`, where it has it: Lime records them together, crm_lime/creates.py); a
        retry carries out the same plan, and every create is idempotent by its key."""
        d = self.d
        try:  # the manage API refuses to save these; a row written before it did still stops here
            mailbox_rules.check_processable(mailbox)
        except mailbox_rules.MailboxRuleError as exc:
            raise PermanentError(f"mailbox {mailbox.id} is misconfigured: {exc}") from None
        writes = getattr(d.crm, "mail_writes", None)
        key = mail.idempotency_key()
        if writes is None:
            return await self._crm_writes(mail, mailbox, entry, job, key)
        async with writes(key, owner=_copy_id(mailbox.id, job.message_id)):
            return await self._crm_writes(mail, mailbox, entry, job, key)

    async def _crm_writes(self, mail: InboundMail, mailbox: Mailbox, entry: LedgerEntry, job: MessageJob,
                          key: str) -> str:
        d = self.d
        rules = d.rules
        own = await d.own_addresses() if d.own_addresses else frozenset()
        verdict = policy.classify(mail, own, rules.own_message_id_hosts)
        entry.data["key"] = key
        if verdict.automated:
            entry.data["automated"] = verdict.reason
        plan = entry.data.get("plan")
        matched: TicketRef | None = None  # the ticket the decision looked at, as it was then
        if plan and plan.get("number"):  # a row an earlier version saved after placing the ticket
            ticket = await d.crm.get_ticket(plan["number"])
            if ticket is None:
                raise PermanentError(f"ticket {plan['number']} chosen for this mail no longer exists")
            action, person_id, company_id = plan["action"], plan["person_id"], plan["company_id"]
        else:
            if not plan:  # a retry after the decision finishes it: the extension is not asked again
                decided = await self._decide(mail, mailbox, entry, job, verdict)
                if decided is None:
                    report = entry.data.get("report")
                    return unthreaded_reason(verdict.reason, DeliveryReport.from_summary(report) if report else None)
                plan, matched = decided
            if plan["action"] == dec.SKIP:
                return plan["skip_reason"]
            person_id, company_id = plan["person_id"], plan["company_id"]
            if not verdict.automated and not person_id:
                person_id = await d.crm.find_or_create_person(*_sender_of(mail), company_id)
            ticket, action = await self._place(mail, mailbox, entry, plan, person_id, key, matched)
            plan.update(number=ticket.number, action=action, person_id=person_id)
            entry.data["plan"] = plan
        if action == REOPENED and ticket.status != conv.OPEN_STATUS:
            ticket = await d.crm.set_ticket_status(ticket.id, conv.OPEN_STATUS) or ticket
        # A ticket this mail created holds its Message-IDs and parties already (when the CRM numbers
        # tickets itself, "created" cannot be told from "joined": add them, the write is idempotent
        # and costs nothing where the CRM knows it created them).
        mids = [m for m in (mail.internet_message_id,) if m]
        if (mids or mail.recipients) and not (action in CREATED and entry.data.get("reserved_number")):
            await d.crm.add_message_ids(ticket.id, mids, parties=_parties_of(mail))

        documents = AttachmentStore(d.mail, d.crm, AttachmentRules(
            max_bytes=rules.attachment_max_bytes, inline=rules.attachments_inline))
        results = await documents.store(mailbox, mail, ticket.id, key, report_parts=verdict.delivery_report)
        # the mail's MIME as a .eml, per the mailbox's store_original (a retry asks the CRM first)
        original = await documents.store_original(mailbox, mail, ticket.id, key, resumed=entry.attempts > 1)
        url_of = getattr(d.crm, "document_url", None)
        cid_map = {r.content_id: url_of(r.document_id) for r in results
                   if url_of and r.status == "stored" and r.content_id}
        report = entry.data.get("report")
        header = policy.automated_note_lines(
            verdict, DeliveryReport.from_summary(report).note_lines() if report else ())
        refused = plan.get("refused_thread") or {}
        if refused and action in CREATED:
            header.append(f"This mail replies to ticket {refused.get('ticket')}, but its sender is not a party to "
                          "that ticket (its person, a person of its company, or on To/Cc of its mails): it opened "
                          "this ticket instead.")
        note = policy.render_note(mail, rules.note_format, rules.note_max_chars, cid_map, header,
                                  _skipped_lines(results) + (original.note_lines() if original else []))
        extra_documents: list[str] = []
        if note.truncated:
            extra_documents.append(await d.crm.add_document(DocumentDraft(
                ticket_id=ticket.id, filename=note.original_name, content_type=note.original_type,
                size=len(note.original.encode("utf-8")), comment="the whole mail; the history note was cut"),
                note.original.encode("utf-8"), f"{key}|body"))
        title, title_cut = policy.ticket_title(mail.subject, rules.title_max_chars)
        if action in CREATED and title_cut:
            subject = mail.subject.encode("utf-8")
            extra_documents.append(await d.crm.add_document(DocumentDraft(
                ticket_id=ticket.id, filename="subject.txt", content_type="text/plain; charset=utf-8",
                size=len(subject), comment="the whole subject; the title was cut"), subject, f"{key}|subject"))
        history_id = await d.crm.add_history(HistoryDraft(
            ticket_id=ticket.id, person_id=person_id, note=note.text, date=mail.received_at,
            company_id=company_id or ticket.company_id,
            message_ids=tuple(filter(None, [mail.internet_message_id]))), key)

        reply_to = mail.reply_to[0] if mail.reply_to and mail.reply_to[0].address else mail.sender
        is_new = action in CREATED
        entry.data.update(person_id=person_id, company_id=company_id, ticket_id=ticket.id,
                          ticket_number=ticket.number, new_ticket=is_new, action=action,
                          title=ticket.title or title,
                          reply_address=reply_to.normalized, reply_name=reply_to.name or mail.sender.name,
                          internet_message_id=mail.internet_message_id,
                          received_at=mail.received_at.isoformat(),
                          attachments=[r.summary() for r in results[:LEDGER_ATTACHMENTS_MAX]],
                          note_truncated=note.truncated, remote_images_blocked=note.remote_blocked,
                          history_id=history_id, documents=extra_documents)
        if len(results) > LEDGER_ATTACHMENTS_MAX:
            entry.data["attachments_more"] = len(results) - LEDGER_ATTACHMENTS_MAX
        if original is not None:
            entry.data["original"] = original.summary()
        entry.data["autoreply"] = bool(
            is_new and mailbox.autoreply.enabled and not verdict.automated
            and d.clock.now() - mail.received_at < AUTOREPLY_MAX_AGE)
        _step(entry, d.clock, STEP_CRM, ticket=ticket.number, new_ticket=is_new, action=action)
        log.info("process.crm-stored correlation=%s message=%s ticket=%s action=%s documents=%s", job.correlation_id,
                 job.message_id, ticket.number, action, sum(1 for r in results if r.status == "stored"))
        return ""

    async def _decide(self, mail: InboundMail, mailbox: Mailbox, entry: LedgerEntry, job: MessageJob,
                      verdict: Any) -> tuple[dict[str, Any], TicketRef | None] | None:
        """The ticket decision: thread and sender lookups, the default policy, then the processing
        extension. Recorded on the ledger row (the plan) before any CRM write, and returned with
        the ticket it looked at; None for automated mail that belongs to no ticket (skipped,
        nothing recorded)."""
        d = self.d
        address, name = _sender_of(mail)
        known: list[Sender] = []

        async def sender() -> Sender:  # identified once, and only when needed
            if not known:
                known.append(await identify_sender(d.crm, address, name, mailbox.sender_id_behaviour,
                                                   d.rules.free_mail_domains) if address else Sender("", "", "", ""))
            return known[0]

        match = None
        if verdict.delivery_report:  # through the original it carries (one more Graph request, this mail only)
            report = await read_report(d.mail, mailbox, mail)
            entry.data["report"] = report.summary()
            match = await find_report_thread(d.crm, report)
            log.info("process.report correlation=%s message=%s outcome=%s original=%s ticket=%s", job.correlation_id,
                     job.message_id, report.outcome, report.source or "none",
                     match.ticket.number if match.ticket else "-")
        if match is None or match.ticket is None:
            # the parties decide, except for our own mail and for bounces and delivery reports (they
            # come from mail servers, and thread through what they report on, even without a copy)
            match = await find_thread(d.crm, mail, sender, policy.ticket_tags(mail.subject),
                                      trusted=verdict.kind == policy.OWN or bool(verdict.delivery_report),
                                      free_mail=d.rules.free_mail_domains)
        if match.refused_tags:
            entry.data["refused_tags"] = list(match.refused_tags)
            log.info("process.tag-refused correlation=%s message=%s tickets=%s", job.correlation_id,
                     job.message_id, ",".join(match.refused_tags))
        if match.refused is not None:
            _trace(entry, d.clock, "thread-refused", ticket=match.refused.number, how="references",
                   reason="the sender is not a party to the ticket")
            log.info("process.thread-refused correlation=%s message=%s ticket=%s", job.correlation_id,
                     job.message_id, match.refused.number)
        if match.ticket is None and verdict.automated:
            return None
        who = (sender_from_ticket(match.ticket, address, name) if match.ticket is not None and not known else None) \
            or await sender()
        title, _ = policy.ticket_title(mail.subject, d.rules.title_max_chars, match.tags_seen)
        decision = dec.Decision(
            action=self._default_action(mailbox, verdict.automated, match.ticket), ticket=match.ticket,
            mailbox=mailbox.address, mailbox_id=mailbox.id, automated=verdict.reason if verdict.automated else "",
            threaded_by=match.how, person_id=who.person_id, company_id=who.company_id,
            sender_level=who.level, title=title,
            values=MappingProxyType(policy.routing_values(mailbox.routing, mail)))
        change = None
        if d.extension is not None:
            with telemetry.span("processing_extension", **{"inbox.extension": d.extension.spec}):
                change = await run_extension(d.extension, mail, decision)
        outcome = dec.resolve(decision, change)
        plan: dict[str, Any] = {
            "action": outcome.action, "ticket": match.ticket.number if match.ticket else "",
            "person_id": who.person_id, "company_id": who.company_id, "threaded_by": match.how,
            "sender_level": who.level, "tags_seen": list(match.tags_seen), "values": dict(outcome.values),
            "title": outcome.title, "forced_new": outcome.forced_new, "skip_reason": outcome.skip_reason,
            "decided_by": "extension" if change is not None and change.changed else "policy"}
        if match.refused is not None:
            plan["refused_thread"] = {"ticket": match.refused.number, "id": match.refused.id, "how": "references"}
        if d.extension is not None and change is not None:
            plan["extension"] = {"name": d.extension.spec, "default": decision.action, **change.summary(),
                                 **({"ignored": list(outcome.ignored)} if outcome.ignored else {})}
        entry.data["plan"] = plan
        _trace(entry, d.clock, "decided", action=outcome.action, ticket=plan["ticket"], by=plan["decided_by"],
               **({"default": decision.action} if outcome.action != decision.action else {}),
               **({"reason": outcome.skip_reason} if outcome.skip_reason else {}))
        if d.extension is not None or verdict.delivery_report or mail.thread_refs or policy.ticket_tags(mail.subject):
            await d.ledger.save(entry)  # the decision survives a crash: a retry carries it out as it is
        # else a retry decides the same again: no extension to ask twice, and nothing in the mail
        # names a ticket (a ticket this attempt created could not change the answer); the plan is
        # recorded with the CRM step
        log.info("process.decided correlation=%s message=%s action=%s default=%s by=%s", job.correlation_id,
                 job.message_id, outcome.action, decision.action, plan["decided_by"])
        return plan, match.ticket

    def _default_action(self, mailbox: Mailbox, automated: bool, ticket: TicketRef | None) -> str:
        if ticket is None:
            return NEW
        if automated:
            return HISTORY_ONLY  # an auto-reply never reopens (nor opens) a ticket
        if not conv.is_closed(ticket):
            return FOLLOW_UP
        what = conv.closed_ticket_action(mailbox.closed_ticket_policy or conv.REOPEN, mailbox.closed_ticket_days,
                                         ticket.closed_at, self.d.clock.now())
        return REOPENED if what == conv.REOPEN else SUCCESSOR

    async def _place(self, mail: InboundMail, mailbox: Mailbox, entry: LedgerEntry, plan: dict[str, Any],
                     person_id: str, key: str, looked_at: TicketRef | None = None) -> tuple[TicketRef, str]:
        """Carry out the plan's decision: the ticket the mail goes on, and how (NEW, JOINED,
        SUCCESSOR, FOLLOW_UP, REOPENED, HISTORY_ONLY). Creates the ticket when one is needed (every
        create is idempotent by its key, so a retry of the same plan places the mail on the same
        ticket); reopening is left to the caller. `looked_at`: the plan's ticket as the decision
        just read it (not read again)."""
        d = self.d
        action = plan["action"]
        matched: TicketRef | None = None
        if plan.get("ticket"):
            matched = looked_at if looked_at is not None and looked_at.number == plan["ticket"] \
                else await d.crm.get_ticket(plan["ticket"])
            if matched is None:
                raise PermanentError(f"ticket {plan['ticket']} this mail belongs to no longer exists")
        strip = tuple(plan.get("tags_seen") or ())
        if matched is not None and action in (FOLLOW_UP, REOPENED, HISTORY_ONLY):
            return matched, action
        if matched is not None and action == SUCCESSOR:
            ticket = matched
            for _ in range(MAX_SUCCESSORS):
                number = await self._reserved_number(entry)
                successor = await d.crm.create_ticket(
                    self._draft(mail, plan, person_id, number, (*strip, ticket.number), linked_ticket_id=ticket.id),
                    conv.successor_key(ticket))
                if not conv.is_closed(successor):
                    if not number or successor.number == number:
                        return successor, SUCCESSOR
                    return successor, JOINED  # another follow-up opened it at the same moment
                ticket = successor  # opened by an earlier follow-up and closed since: the policy again
                if conv.closed_ticket_action(mailbox.closed_ticket_policy or conv.REOPEN, mailbox.closed_ticket_days,
                                             ticket.closed_at, d.clock.now()) == conv.REOPEN:
                    return ticket, REOPENED
            return ticket, REOPENED
        number = await self._reserved_number(entry)
        if matched is not None:
            # A new ticket the extension asked for next to an open one: under the mail's own key.
            ticket = await d.crm.create_ticket(
                self._draft(mail, plan, person_id, number, (*strip, matched.number), linked_ticket_id=matched.id), key)
            return ticket, (NEW if not number or ticket.number == number else JOINED)
        refused = plan.get("refused_thread") or {}
        if refused:
            # The headers named a ticket whose party the sender is not: a ticket of its own (the
            # mail's own key, never the conversation's), linked to that one.
            ticket = await d.crm.create_ticket(self._draft(mail, plan, person_id, number, strip,
                                                           linked_ticket_id=str(refused.get("id") or "")), key)
            return ticket, (NEW if not number or ticket.number == number else JOINED)
        draft = self._draft(mail, plan, person_id, number, strip)
        ticket = await d.crm.create_ticket(draft, conv.thread_key(mail))
        company_id = plan.get("company_id", "")
        if not mail.thread_root and ticket.person_id != person_id \
                and not (company_id and ticket.company_id == company_id) \
                and not await same_organisation(d.crm, ticket.person_id, _sender_of(mail)[0],
                                                d.rules.free_mail_domains):
            # A conversation with this Message-ID was opened by someone else: a reused or forged
            # Message-ID must not put this mail on their ticket. Its own key instead.
            ticket = await d.crm.create_ticket(draft, key)
        return ticket, (NEW if not number or ticket.number == number else JOINED)

    def _draft(self, mail: InboundMail, plan: dict[str, Any], person_id: str, number: str,
               strip_tags: tuple[str, ...], linked_ticket_id: str = "") -> TicketDraft:
        own_title = plan.get("title") or ""
        title, _ = policy.ticket_title(own_title or mail.subject, self.d.rules.title_max_chars,
                                       () if own_title else strip_tags)
        root = mail.thread_root  # a reply to a mail we never saw: replies to that one thread here too
        return TicketDraft(
            title=title, person_id=person_id, company_id=plan.get("company_id", ""), number=number,
            email=_sender_of(mail)[0], description=policy.body_excerpt(mail, DESCRIPTION_CHARS),
            values=dict(plan.get("values") or {}),
            message_ids=tuple(dict.fromkeys(filter(None, [mail.internet_message_id, root]))),
            linked_ticket_id=linked_ticket_id, parties=_parties_of(mail))

    async def _reserved_number(self, entry: LedgerEntry) -> str:
        """The ticket number reserved for this mail: once, recorded before any ticket uses it."""
        number = entry.data.get("reserved_number")
        if number is None:
            number = await self.d.crm.reserve_ticket_number()
            entry.data["reserved_number"] = number
            if number:  # '' (the CRM numbers its tickets itself) has nothing to keep for a retry
                await self.d.ledger.save(entry)
        return number

    async def _mailbox_action_then(self, entry: LedgerEntry, mailbox: Mailbox, job: MessageJob, status: str,
                                   reason: str) -> Outcome:
        d = self.d
        if not entry.done(STEP_MAILBOX_ACTION):
            try:
                if mailbox.action == ACTION_MOVE and mailbox.move_folder:
                    await clear_failed_category(d.mail, mailbox, entry)  # it was Failed before
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
        if status in _FINISHED_METRIC:
            telemetry.count(_FINISHED_METRIC[status], source=job.source)
        log.info("process.%s correlation=%s message=%s reason=%s", status, job.correlation_id, job.message_id,
                 reason or "-")
        return Outcome(status, reason, entry.data.get("ticket_number", ""), entry.data)

    async def _release(self, job: MessageJob, entry: LedgerEntry, error: str, **extra: Any) -> None:
        d = self.d
        entry.last_error = error
        entry.lease_owner, entry.lease_until = "", None
        _trace(entry, d.clock, "error", error=error, **extra)
        try:
            await d.ledger.save(entry)
        except Exception:  # noqa: BLE001 - the ledger may be what is failing; the queue still retries
            log.warning("process.ledger-unavailable correlation=%s message=%s", job.correlation_id, job.message_id)

    async def _transient(self, job: MessageJob, entry: LedgerEntry, exc: TransientError) -> Outcome:
        """A dependency is down (short waits were already retried by the adapter): release the lease
        and record the error with the next try's time (the status page counts the mail as retrying,
        the sweep leaves it to that try), in one write; then re-enqueue the job for that time."""
        wait = None if retry.exhausted(job.attempt) else retry.delay(job.attempt, exc.retry_after)
        extra: dict[str, Any] = {}
        due = ""
        if wait is not None:
            due = retry.not_before(self.d.clock.now(), wait)
            entry.data[NEXT_ATTEMPT] = due
            extra = {"next_attempt_at": due, "attempt": job.attempt + 1}
        else:
            entry.data.pop(NEXT_ATTEMPT, None)
        await self._release(job, entry, f"{type(exc).__name__}: {exc}", **extra)
        return await self._requeue_or_raise(job, exc, wait, due)

    async def _requeue_or_raise(self, job: MessageJob, exc: TransientError, wait: float | None = None,
                                due: str = "") -> Outcome:
        """Transient means wait, not fail: re-enqueue the job with the next delay of the schedule
        (domain/retry.py: growing from 10 s to 30 minutes, never shorter than a Retry-After), counted
        in the envelope, without holding a worker or spending the queue's dequeue budget, which is left
        for messages that crash the worker. Once the schedule is spent (about 12 hours), raise: the
        queue's retries and then its poison handler make the mail Failed."""
        if retry.exhausted(job.attempt):
            log.warning("process.retries-exhausted correlation=%s message=%s attempts=%s error=%s",
                        job.correlation_id, job.message_id, job.attempt, f"{type(exc).__name__}: {exc}")
            raise exc
        wait = wait if wait is not None else retry.delay(job.attempt, exc.retry_after)
        due = due or retry.not_before(self.d.clock.now(), wait)
        await self.d.queue.send(QUEUE_MESSAGES, with_attempt(job, job.attempt + 1, due),
                                visibility_timeout=math.ceil(wait))
        log.info("process.requeued correlation=%s message=%s delay=%ss attempt=%s error=%s", job.correlation_id,
                 job.message_id, math.ceil(wait), job.attempt + 1, f"{type(exc).__name__}: {str(exc)[:200]}")
        return Outcome("requeued", str(exc))

    async def _put_back(self, job: MessageJob, seconds: float) -> Outcome:
        """Not yet: the same job (same attempt) back in the queue for the rest of its wait."""
        await self.d.queue.send(QUEUE_MESSAGES, job, visibility_timeout=math.ceil(seconds))
        return Outcome("requeued", f"not before {job.not_before}")


def _copy_id(mailbox_id: str, message_id: str) -> str:
    """This mailbox's copy of the mail, as the CRM's records name the writer (one invocation at a
    time holds it: the ledger's lease)."""
    return "copy-" + hashlib.sha256(f"{mailbox_id}|{message_id}".encode("utf-8")).hexdigest()[:24]


def _parties_of(mail: InboundMail) -> tuple[str, ...]:
    """The mail's sender and To/Cc addresses: parties of the ticket it lands on."""
    return tuple(dict.fromkeys(a.normalized for a in (mail.sender, *mail.recipients) if a.normalized
                               and "@" in a.normalized))


def _sender_of(mail: InboundMail) -> tuple[str, str]:
    """The sender's address and name as the CRM gets them ('' and '' without a usable address)."""
    address = mail.sender.normalized
    return (address, mail.sender.name) if address and "@" in address else ("", "")


def _skipped_lines(results: list[AttachmentResult]) -> list[str]:
    """Note lines for attachments the agent should know are missing (not inline parts the body
    does not show: those are signatures and spacers)."""
    return [f"Attachment not stored: {r.name} ({r.reason})" for r in results
            if r.status == "skipped" and not (r.inline and r.reason.startswith("inline part"))
            and r.reason != REPORT_PART][:20]


def received_before(mail_time: datetime, now: datetime, seconds: int) -> bool:
    return (now - mail_time).total_seconds() >= seconds
