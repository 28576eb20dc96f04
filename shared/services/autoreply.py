"""send_autoreply: the autoreply of one new ticket through TRAML, at most once, threaded, loop-proof.

job -> the mail's ledger row (ticket, title, reply address, Message-ID) -> mailbox still has
autoreplies on -> template id by name -> CLAIM (an insert: a row already there means the job was
seen before, and its state decides) -> per-recipient rate limit -> TRAML sendtemplate ->
`sentemail` history note on the ticket -> SENT, with the note, in one write.

At most once.  TRAML cannot be asked whether a mail went out (no lookup by ExternalId), so a send
whose outcome is unknown must never be repeated automatically:

* The claim row is written (ETag-guarded) *before* the send.  A worker that finds a claim left
  `claimed` after its lease (the sender died between the send and the `sent` flag) marks it
  `uncertain` and does not send; the manage API lists it and the admin may resend.
* A send that got no answer (read timeout, connection dropped, gateway timeout) is `uncertain` too.
* Only answers that say "not queued" release the claim for a retry: 429, 5xx and no connection
  (`retrying`: the job is re-enqueued with the retry schedule's growing delays, domain/retry.py, for
  about 12 hours; then the queue retries and the poison queue records `failed`), and 4xx (`failed`
  at once, with TRAML's message; a 4xx that blames one of our optional headers is retried without it).

A missing autoreply is better than two.  Claim states: claimed -> sent | uncertain | failed |
retrying; `skipped` records a decision not to send (rate limit, autoreplies switched off, stale).

The ports and errors the use case needs from TRAML and storage are declared here, next to it
(`TransactionalMail`, `AutoreplyStore`, `RecipientLimiter`); shared/adapters/traml.py and
shared/adapters/autoreply_state.py implement them.  Performs no I/O of its own.
"""
from __future__ import annotations

import hashlib
import logging
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from ..config import QUEUE_AUTOREPLIES, SETTINGS, ConfigError, Settings
from ..domain import retry
from ..domain.envelope import AutoreplyJob, with_attempt
from ..domain.errors import InboxError, PermanentError, Refusal, TransientError
from ..domain.model import HistoryDraft, LedgerEntry, Mailbox
from ..ports import Clock, CrmGateway, JobQueue, Ledger, MailboxRegistry

log = logging.getLogger("inbox.autoreply")

# Claim states.
CLAIMED = "claimed"
RETRYING = "retrying"
SENT = "sent"
UNCERTAIN = "uncertain"
FAILED = "failed"
SKIPPED = "skipped"
# An admin looked at an uncertain or failed autoreply and settled it without a send (TRAML's log
# showed it went out, or the customer was answered otherwise): no warning, never sent by itself.
DISMISSED = "dismissed"
FINAL = (SENT, UNCERTAIN, FAILED, SKIPPED, DISMISSED)
LISTABLE = (FAILED, UNCERTAIN, SENT, SKIPPED, RETRYING, DISMISSED)
RESENDABLE = (UNCERTAIN, FAILED, SKIPPED, RETRYING, DISMISSED)
DISMISSABLE = (UNCERTAIN, FAILED)
DISMISS_NOTE_MAX = 500

# A claim older than this without a verdict belongs to a dead worker.  The TRAML client's whole
# budget for one send (attempts x timeout + waits) stays well below it.
CLAIM_SECONDS = 120
# process.py only queues autoreplies for mail younger than a day; a job that waited in retries far
# past that is dropped rather than answering yesterday's mail.
STALE_AFTER = timedelta(hours=36)
# Headers every autoreply carries (RFC 3834 and Exchange's suppression), plus threading ones.
LOOP_HEADERS = (("Auto-Submitted", "auto-replied"), ("X-Auto-Response-Suppress", "All"))
LIMIT_COUNT_SETTING = "AUTOREPLY_LIMIT_COUNT"
LIMIT_WINDOW_SETTING = "AUTOREPLY_LIMIT_WINDOW_MINUTES"
MAX_LIMIT_COUNT = 500  # the limiter keeps one entry per send in a 64 KiB table property


# ---- errors the ports raise ----------------------------------------------------------------------
class MailRejected(PermanentError):
    """TRAML answered 4xx: it did not queue the mail. Carries TRAML's Message and ErrorDetails."""

    def __init__(self, status: int, message: str, details: list[dict[str, str]] | None = None) -> None:
        self.status = status
        self.remote_message = message
        self.details = list(details or [])
        text = "; ".join(f"{d.get('Context', '')}: {d.get('Message', '')}".strip(": ") for d in self.details)
        super().__init__(f"TRAML {status}: {message}" + (f" ({text})" if text else ""))

    def blames(self, word: str) -> bool:
        word = word.lower()
        return any(word in f"{d.get('Context', '')} {d.get('Message', '')}".lower() for d in self.details) \
            or word in self.remote_message.lower()


class TemplateNotFound(PermanentError):
    """No TRAML mail template has the configured name."""


class DeliveryUnknown(InboxError):
    """The send request may have reached TRAML but no answer came back (timeout, dropped
    connection, gateway timeout): the mail may or may not be queued. Never retried automatically."""


class ClaimConflict(TransientError):
    """Another worker wrote the claim row in between (ETag mismatch)."""


class AutoreplyNotFound(Refusal, LookupError):
    """No autoreply is recorded for that ticket (404)."""

    kind, reason = "not_found", "not_found"


class ResendRefused(Refusal, ValueError):
    """The autoreply is in a state that cannot be resent (already sent, or being sent): 409."""

    kind, reason = "conflict", "resend_refused"


class DismissRefused(Refusal, ValueError):
    """The autoreply is not one that needs an admin (sent, skipped, being sent, or dismissed): 409."""

    kind, reason = "conflict", "dismiss_refused"


class AutoreplyListError(Refusal, ValueError):
    """A bad autoreply list request (400)."""

    kind, reason = "bad_request", "invalid_parameter"


# ---- ports ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TemplateMail:
    """One templated mail, as the use case means it; the TRAML adapter maps it to the wire."""
    template_id: int
    recipient_email: str
    from_email: str
    subject: str
    recipient_name: str = ""
    from_name: str = ""
    merge_codes: tuple[tuple[str, str], ...] = ()  # (code with its delimiters, plain-text value)
    headers: tuple[tuple[str, str], ...] = ()
    external_id: str = ""
    exclude_totaloptouts: bool = True
    exclude_previous_bounce: bool = True


class TransactionalMail(Protocol):
    async def template_id(self, name: str, *, fresh: bool = False) -> int:
        """The id of the template with that name (cached unless `fresh`; refreshed on a miss).
        TemplateNotFound."""

    def forget_template(self, name: str) -> None:
        """Drop a cached id (TRAML said it no longer exists)."""

    async def send_template(self, mail: TemplateMail) -> dict[str, Any]:
        """Queue the mail at TRAML; its TransactionMailModel. MailRejected (4xx), TransientError
        (429/5xx/unreachable: surely not queued), DeliveryUnknown (no answer)."""


@dataclass
class AutoreplyRecord:
    """The claim row of one ticket's autoreply."""
    ticket_id: str
    status: str
    mailbox_id: str = ""
    message_id: str = ""
    ticket_number: str = ""
    recipient: str = ""
    template: str = ""
    attempts: int = 0
    claimed_until: datetime | None = None
    transaction_id: str = ""
    last_error: str = ""
    reason: str = ""
    history_id: str = ""
    resend_requested: bool = False
    correlation_id: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    sent_at: datetime | None = None
    trace: list[dict[str, Any]] = field(default_factory=list)
    etag: str = ""

    def view(self) -> dict[str, Any]:
        return {
            "ticket_id": self.ticket_id, "ticket_number": self.ticket_number, "status": self.status,
            "mailbox_id": self.mailbox_id, "message_id": self.message_id, "recipient": self.recipient,
            "template": self.template, "attempts": self.attempts, "transaction_id": self.transaction_id,
            "reason": self.reason, "last_error": self.last_error, "resend_requested": self.resend_requested,
            "history_id": self.history_id, "correlation_id": self.correlation_id,
            "created_at": _iso(self.created_at), "updated_at": _iso(self.updated_at), "sent_at": _iso(self.sent_at),
            "trace": self.trace[-20:],
        }


class AutoreplyStore(Protocol):
    async def get(self, ticket_id: str) -> AutoreplyRecord | None: ...

    async def save(self, record: AutoreplyRecord) -> AutoreplyRecord:
        """Create (etag '') or replace (etag given) the row, ETag-guarded: ClaimConflict when someone
        else created or changed it in between. Sets updated_at and the new etag."""

    async def list(self, status: str, limit: int = 100) -> list[AutoreplyRecord]:
        """Newest first, from an index partition (never a table scan)."""


class RecipientLimiter(Protocol):
    async def acquire(self, recipient: str, token: str, now: datetime) -> bool:
        """Count one autoreply (`token` identifies it: counting it twice is a no-op) to the recipient;
        False when the recipient already got the limit within the window."""


# ---- settings -------------------------------------------------------------------------------------
def limits_from_settings(settings: Settings) -> tuple[int, int]:
    """(count, window minutes) from AUTOREPLY_LIMIT_COUNT and AUTOREPLY_LIMIT_WINDOW_MINUTES."""
    defaults = {s.name: s.default for s in SETTINGS}
    out: list[int] = []
    for name, low, high in ((LIMIT_COUNT_SETTING, 1, MAX_LIMIT_COUNT), (LIMIT_WINDOW_SETTING, 1, 7 * 24 * 60)):
        raw = settings.env.get(name) or defaults.get(name) or ""
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
        if not low <= value <= high:
            raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
        out.append(value)
    return out[0], out[1]


# ---- the use case ---------------------------------------------------------------------------------
@dataclass
class AutoreplyOutcome:
    status: str  # sent | uncertain | failed | skipped | requeued | already-<status>
    reason: str = ""
    transaction_id: str = ""


@dataclass
class AutoreplyDeps:
    registry: MailboxRegistry
    ledger: Ledger
    crm: CrmGateway
    queue: JobQueue
    clock: Clock
    traml: TransactionalMail
    store: AutoreplyStore
    limiter: RecipientLimiter
    limit_description: str = "10 per 180 minutes"


@dataclass(frozen=True)
class _Plan:
    mailbox: Mailbox
    data: dict[str, Any]
    recipient: str
    template: str


def ticket_token(ticket_id: str) -> str:
    """A short stable id of the ticket's autoreply (its rate-limit entry)."""
    return hashlib.sha256(ticket_id.encode("utf-8")).hexdigest()[:16]


def external_id(ticket_id: str) -> str:
    return f"inbox-autoreply-{ticket_id}"[:100]


def history_key(ticket_id: str) -> str:
    return f"autoreply:{ticket_id}"


def merge_code_name(name: str) -> str:
    """'title' -> '$$title$$'; a name that already carries delimiters ('{{x}}', '$$x$$') is kept."""
    name = name.strip()
    return f"$${name}$$" if re.fullmatch(r"[\w.]+", name) else name


def build_merge_codes(data: dict[str, Any], mailbox: Mailbox) -> tuple[tuple[str, str], ...]:
    """The seed's merge codes: $$helpdesknumber$$, $$title$$, $$sendername$$, $$senderemail$$,
    $$mailbox$$, then the mailbox's own extras (which cannot override the built-in ones)."""
    codes: dict[str, str] = {}
    for name, value in (mailbox.autoreply.merge_codes or {}).items():
        if str(name).strip():
            codes[merge_code_name(str(name))] = str(value)
    codes.update({
        "$$helpdesknumber$$": str(data.get("ticket_number", "")),
        "$$title$$": str(data.get("title", "")),
        "$$sendername$$": str(data.get("reply_name") or data.get("reply_address") or ""),
        "$$senderemail$$": str(data.get("reply_address", "")),
        "$$mailbox$$": mailbox.address,
    })
    return tuple(codes.items())


def blamed_headers(exc: MailRejected, names: list[str]) -> list[str]:
    """The headers a TRAML 400 refuses: those named where it speaks of headers; all of ours when it
    speaks of headers without naming one; none when it does not speak of headers."""
    texts = [f"{d.get('Context', '')} {d.get('Message', '')}".lower() for d in exc.details]
    texts = [t for t in texts + [exc.remote_message.lower()] if "header" in t]
    named = [n for n in names if any(n.lower() in t for t in texts)]
    return named or (list(names) if texts else [])


def _one_line(text: str) -> str:
    return re.sub(r"[\r\n\t]+", " ", text or "").strip()


def autoreply_subject(title: str, number: str) -> str:
    return f"{_one_line(title) or '(no subject)'} [{number}]"


_ADDRESS = re.compile(r"[^\s<>()\[\]'\",;:@]+@[^\s<>()\[\]'\",;:]+")


def redact(text: object, limit: int = 300) -> str:
    """For logs: TRAML's messages may quote addresses; logs carry ids, not addresses."""
    return _ADDRESS.sub("<address>", str(text))[:limit]


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value else ""


class AutoreplyService:
    def __init__(self, deps: AutoreplyDeps) -> None:
        self.d = deps
        self._rejected_headers: set[str] = set()  # lower-case names TRAML refused; logged once

    # queue trigger --------------------------------------------------------------------------
    async def send(self, job: AutoreplyJob) -> AutoreplyOutcome:
        """Transient means wait: TRAML, the CRM or Storage down anywhere on the way re-enqueues the
        job with a growing delay (domain/retry.py) for about 12 hours before the queue gives up."""
        early = retry.remaining(job.not_before, self.d.clock.now())
        if early > 0:  # re-enqueued, and delivered before its time on our clock: put it back
            await self.d.queue.send(QUEUE_AUTOREPLIES, job, visibility_timeout=math.ceil(early))
            return AutoreplyOutcome("requeued", f"not before {job.not_before}")
        try:
            return await self._attempt(job)
        except TransientError as exc:
            return await self._retry(job, exc)

    async def _attempt(self, job: AutoreplyJob) -> AutoreplyOutcome:
        """Most jobs are a ticket's first: its claim row is inserted without reading it first, and
        only a row found there (a redelivery, a resend) is read and settled."""
        d = self.d
        record: AutoreplyRecord | None = None
        for _ in range(2):
            if record is not None:
                done = await self._settled(job, record)
                if done is not None:
                    return done
            try:
                plan = await self._plan(job, record)
                if isinstance(plan, AutoreplyOutcome):
                    return plan
                template_id = await d.traml.template_id(plan.template)
                first, resend = record is None, bool(record and record.resend_requested)
                record = await self._claim(job, record, plan)
                # counted once the claim is ours: a repeated job (found claimed above) counts nothing
                if not resend and not await d.limiter.acquire(plan.recipient, ticket_token(job.ticket_id),
                                                              d.clock.now()):
                    return await self._decide(job, record, SKIPPED,
                                              f"rate limit: the recipient already got {d.limit_description}",
                                              plan=plan)
            except ClaimConflict as exc:
                if record is None:  # a row exists after all: read it and go on from it
                    record = await d.store.get(job.ticket_id)
                    if record is not None:
                        continue
                return await self._later(job, 2.0, str(exc))
            except TransientError as exc:
                await self._note_retry(job, record, exc)
                raise  # send() waits for the dependency (the retry schedule)
            except PermanentError as exc:
                return await self._decide(job, record, FAILED, "", error=str(exc))
            return await self._deliver(job, record, plan, template_id, first)
        return await self._later(job, 2.0, "the autoreply row changed meanwhile")

    async def _settled(self, job: AutoreplyJob, record: AutoreplyRecord) -> AutoreplyOutcome | None:
        """What to do with a ticket that already has a claim row; None: go on and (re)try."""
        now = self.d.clock.now()
        if record.status == SENT:
            if not record.history_id:
                await self._history(job, record)
            return AutoreplyOutcome("already-sent", "", record.transaction_id)
        if record.status in FINAL:
            return AutoreplyOutcome(f"already-{record.status}", record.reason or record.last_error)
        if record.status == CLAIMED:
            if record.claimed_until and record.claimed_until > now:
                # A duplicate job while another worker sends: look again when its claim ends.
                return await self._later(job, (record.claimed_until - now).total_seconds(), "claim held")
            record.status = UNCERTAIN
            record.reason = ("a previous attempt stopped after claiming the send and before recording "
                             "its result: the autoreply may or may not have gone out")
            self._trace(record, UNCERTAIN)
            try:
                await self.d.store.save(record)
            except ClaimConflict:
                return await self._later(job, 1.0, "claim row changed")
            log.warning("autoreply.uncertain correlation=%s ticket=%s reason=interrupted-claim",
                        job.correlation_id, record.ticket_number)
            return AutoreplyOutcome(UNCERTAIN, record.reason)
        return None  # RETRYING: a definite non-send or an admin's resend

    async def _plan(self, job: AutoreplyJob, record: AutoreplyRecord | None) -> _Plan | AutoreplyOutcome:
        d = self.d
        entry: LedgerEntry | None = await d.ledger.get(job.mailbox_id, job.message_id)
        if entry is None or not entry.data.get("ticket_id"):
            raise PermanentError("the mail's ledger row (with its ticket) is gone; nothing to answer")
        data = entry.data
        if str(data["ticket_id"]) != job.ticket_id:
            raise PermanentError(f"the job names ticket {job.ticket_id} but the mail made {data['ticket_id']}")
        mailbox = await d.registry.get(job.mailbox_id)
        resend = bool(record and record.resend_requested)
        if mailbox is None:
            return await self._decide(job, record, SKIPPED, "the mailbox is no longer registered")
        if not mailbox.autoreply.enabled or not mailbox.autoreply.template.strip():
            return await self._decide(job, record, SKIPPED, "autoreplies are switched off for the mailbox")
        if not data.get("new_ticket", True) and not resend:
            return await self._decide(job, record, SKIPPED, "the mail followed up an existing ticket")
        recipient = str(data.get("reply_address") or "").strip()
        if not recipient:
            raise PermanentError("the mail has no reply address")
        received = data.get("received_at")
        if received and not resend:
            at = datetime.fromisoformat(str(received))
            age = d.clock.now() - (at if at.tzinfo else at.replace(tzinfo=timezone.utc))
            if age > STALE_AFTER:
                return await self._decide(job, record, SKIPPED,
                                          f"the mail is {age.total_seconds() / 3600:.0f} hours old")
        return _Plan(mailbox, data, recipient, mailbox.autoreply.template.strip())

    async def _claim(self, job: AutoreplyJob, record: AutoreplyRecord | None, plan: _Plan) -> AutoreplyRecord:
        now = self.d.clock.now()
        record = record or self._new_record(job)
        record.status = CLAIMED
        record.claimed_until = now + timedelta(seconds=CLAIM_SECONDS)
        record.attempts += 1
        record.recipient, record.template = plan.recipient, plan.template
        record.ticket_number = str(plan.data.get("ticket_number") or job.ticket_number)
        record.correlation_id = job.correlation_id or record.correlation_id
        self._trace(record, CLAIMED, attempt=record.attempts)
        return await self.d.store.save(record)  # ClaimConflict: another worker claimed first

    async def _deliver(self, job: AutoreplyJob, record: AutoreplyRecord, plan: _Plan,
                       template_id: int, first: bool = False) -> AutoreplyOutcome:
        """Send, write the `sentemail` note, then record SENT with the note in one write. A worker
        that dies between the send and that write leaves the claim to become *uncertain* (as it
        would between the send and any record of it). `first`: the ticket's first claim, so no
        earlier attempt can have written the note (it is written without asking the CRM first)."""
        d = self.d
        try:
            result = await self._send_template(plan, template_id, job)
        except DeliveryUnknown as exc:
            record.status, record.reason, record.last_error = UNCERTAIN, "TRAML did not answer the send", str(exc)
            log.warning("autoreply.uncertain correlation=%s ticket=%s reason=no-answer", job.correlation_id,
                        record.ticket_number)
            return await self._close(job, record, UNCERTAIN)
        except TransientError as exc:
            await self._note_retry(job, record, exc)
            raise
        except PermanentError as exc:
            record.status, record.reason, record.last_error = FAILED, "", str(exc)
            log.warning("autoreply.failed correlation=%s ticket=%s error=%s", job.correlation_id,
                        record.ticket_number, redact(exc))
            return await self._close(job, record, FAILED)
        record.status, record.last_error, record.reason = SENT, "", ""
        record.transaction_id = str(result.get("TransactionMailId", ""))
        record.sent_at = d.clock.now()
        record.claimed_until = None
        self._trace(record, SENT, transaction=record.transaction_id)
        log.info("autoreply.sent correlation=%s ticket=%s transaction=%s", job.correlation_id,
                 record.ticket_number, record.transaction_id)
        try:
            await self._history(job, record, plan, sole=first and not record.resend_requested)
        except TransientError:
            await self._save_verdict(record)  # SENT without its note: the redelivery writes only the note
            raise
        return AutoreplyOutcome(SENT, "", record.transaction_id)

    async def _send_template(self, plan: _Plan, template_id: int, job: AutoreplyJob) -> dict[str, Any]:
        """sendtemplate; a 4xx that blames one of our headers is retried without it (logged once),
        one that blames the template id refreshes the cached id once."""
        d, data, box = self.d, plan.data, plan.mailbox
        headers = list(LOOP_HEADERS)
        mid = str(data.get("internet_message_id") or "").strip()
        if mid and re.fullmatch(r"<[^<>\s]+>", mid):
            headers += [("In-Reply-To", mid), ("References", mid)]
        refreshed = False
        for _ in range(4):
            mail = TemplateMail(
                template_id=template_id, recipient_email=plan.recipient,
                recipient_name=_one_line(str(data.get("reply_name") or "")), from_email=box.address,
                from_name=_one_line(box.autoreply.from_name),
                subject=autoreply_subject(str(data.get("title", "")), str(data.get("ticket_number", ""))),
                merge_codes=build_merge_codes(data, box),
                headers=tuple((k, v) for k, v in headers if k.lower() not in self._rejected_headers),
                external_id=external_id(job.ticket_id))
            try:
                return await d.traml.send_template(mail)
            except MailRejected as exc:
                blamed = blamed_headers(exc, [k for k, _ in mail.headers])
                if blamed:
                    for name in blamed:
                        if name.lower() not in self._rejected_headers:
                            self._rejected_headers.add(name.lower())
                            log.warning("autoreply.header-rejected header=%s traml=%s: sending without it",
                                        name, redact(exc.remote_message, 200))
                    continue
                if exc.blames("templateid") and not refreshed:
                    refreshed = True
                    d.traml.forget_template(plan.template)
                    template_id = await d.traml.template_id(plan.template)
                    continue
                raise
        raise PermanentError("TRAML kept rejecting the autoreply's headers")

    async def _history(self, job: AutoreplyJob, record: AutoreplyRecord, plan: _Plan | None = None,
                       sole: bool = False) -> None:
        """The `sentemail` note on the ticket (idempotent by a key derived from the ticket), then
        the verdict saved with it. `sole`: this claim is the only writer of the note and no earlier
        attempt wrote it (the CRM need not look for it first)."""
        d = self.d
        data: dict[str, Any] = plan.data if plan else {}
        sender = plan.mailbox.address if plan else ""
        if plan is None:  # a redelivery that only writes the note
            entry = await d.ledger.get(job.mailbox_id, job.message_id)
            data = entry.data if entry else {}
            mailbox = await d.registry.get(job.mailbox_id)
            sender = mailbox.address if mailbox else job.mailbox_id
        sent = record.sent_at or d.clock.now()
        note = (f"Autoreply sent to {record.recipient} from {sender} "
                f"with TRAML template '{record.template}' (transaction {record.transaction_id or '-'}): "
                f"{autoreply_subject(str(data.get('title', '')), record.ticket_number)}")
        key = history_key(record.ticket_id)
        draft = HistoryDraft(ticket_id=record.ticket_id, person_id=str(data.get("person_id", "")), note=note[:4000],
                             date=sent, type="sentemail")
        writes = getattr(d.crm, "mail_writes", None)
        try:
            if writes is not None and sole:
                async with writes(key, sole=True):
                    record.history_id = await d.crm.add_history(draft, key)
            else:
                record.history_id = await d.crm.add_history(draft, key)
        except PermanentError as exc:
            # The mail went out; the CRM refused the note. Keep the verdict, show the error.
            record.last_error = f"history note not recorded: {exc}"
            log.warning("autoreply.history-refused correlation=%s ticket=%s error=%s", job.correlation_id,
                        record.ticket_number, redact(exc))
            record.history_id = "-"
        self._trace(record, "history", id=record.history_id)
        await self._save_verdict(record)
        # A TransientError from the CRM propagates: the queue retries, the row says SENT without a
        # history id, and the redelivery writes only the note.

    # verdicts ---------------------------------------------------------------------------------
    async def _close(self, job: AutoreplyJob, record: AutoreplyRecord, status: str) -> AutoreplyOutcome:
        record.claimed_until = None
        self._trace(record, status, error=record.last_error[:300])
        await self._save_verdict(record)
        return AutoreplyOutcome(status, record.reason or record.last_error)

    async def _save_verdict(self, record: AutoreplyRecord) -> AutoreplyRecord:
        """Save a verdict we are sure of. If another worker stamped the claim in between (it thought
        ours was dead and marked it uncertain), our first-hand knowledge wins."""
        for _ in range(5):
            try:
                return await self.d.store.save(record)
            except ClaimConflict:
                current = await self.d.store.get(record.ticket_id)
                if current is None:
                    record.etag = ""
                    continue
                if current.status == SENT and record.status != SENT:
                    return current
                record.etag = current.etag
                record.trace = current.trace + record.trace[-2:]
        raise ClaimConflict(f"the autoreply row of ticket {record.ticket_number} keeps changing")

    async def _decide(self, job: AutoreplyJob, record: AutoreplyRecord | None, status: str, reason: str,
                      error: str = "", plan: _Plan | None = None) -> AutoreplyOutcome:
        """Record a verdict reached without sending (skipped, or failed before any send)."""
        fresh = record is None
        record = record or self._new_record(job)
        record.status, record.reason, record.last_error = status, reason, error
        record.resend_requested = False
        record.claimed_until = None
        if plan is not None:
            record.recipient, record.template = plan.recipient, plan.template
        self._trace(record, status, reason=reason, error=error[:300])
        try:
            await self.d.store.save(record)
        except ClaimConflict:
            existing = await self.d.store.get(job.ticket_id) if fresh else None
            if existing is not None:  # a row was there after all (this job was not the ticket's first)
                settled = await self._settled(job, existing)
                if settled is not None:
                    return settled
            return await self._later(job, 1.0, "autoreply row changed")
        log.info("autoreply.%s correlation=%s ticket=%s reason=%s", status, job.correlation_id,
                 job.ticket_number, redact(reason or error))
        return AutoreplyOutcome(status, reason or error)

    async def _note_retry(self, job: AutoreplyJob, record: AutoreplyRecord | None, exc: TransientError) -> None:
        """Surely not sent (429/5xx/unreachable): release the claim so a retry may send."""
        record = record or self._new_record(job)
        if record.status in FINAL:
            return
        record.status = RETRYING
        record.claimed_until = None
        record.last_error = f"{type(exc).__name__}: {exc}"[:2000]
        self._trace(record, RETRYING, error=record.last_error[:300])
        try:
            await self.d.store.save(record)
        except ClaimConflict:
            pass  # another worker is on it; its verdict stands
        except Exception:  # noqa: BLE001 - the table may be what fails; the queue still retries
            log.warning("autoreply.state-unavailable correlation=%s ticket=%s", job.correlation_id, job.ticket_number)

    async def _retry(self, job: AutoreplyJob, exc: TransientError) -> AutoreplyOutcome:
        """Surely not sent (or sent, and only the note is missing): wait for the dependency with the
        retry schedule's next delay; once the schedule is spent, raise, so the queue's retries and
        then the poison handler record the autoreply as failed."""
        if retry.exhausted(job.attempt):
            log.warning("autoreply.retries-exhausted correlation=%s ticket=%s attempts=%s error=%s",
                        job.correlation_id, job.ticket_number, job.attempt, redact(exc))
            raise exc
        return await self._later(job, retry.delay(job.attempt, exc.retry_after), str(exc), exc)

    async def _later(self, job: AutoreplyJob, wait: float, reason: str,
                     exc: TransientError | None = None) -> AutoreplyOutcome:
        """Re-enqueue the job with a delay (the retry schedule's, a claim held by a live worker)."""
        if retry.exhausted(job.attempt):
            raise exc or TransientError(reason, retry_after=wait)
        delay = max(1, math.ceil(wait))
        due = retry.not_before(self.d.clock.now(), delay)
        await self.d.queue.send(QUEUE_AUTOREPLIES, with_attempt(job, job.attempt + 1, due), visibility_timeout=delay)
        log.info("autoreply.requeued correlation=%s ticket=%s delay=%ss attempt=%s reason=%s", job.correlation_id,
                 job.ticket_number, delay, job.attempt + 1, redact(reason, 200))
        return AutoreplyOutcome("requeued", reason)

    def _new_record(self, job: AutoreplyJob) -> AutoreplyRecord:
        now = self.d.clock.now()
        return AutoreplyRecord(ticket_id=job.ticket_id, status=RETRYING, mailbox_id=job.mailbox_id,
                               message_id=job.message_id, ticket_number=job.ticket_number,
                               correlation_id=job.correlation_id, created_at=now)

    def _trace(self, record: AutoreplyRecord, event: str, **extra: Any) -> None:
        record.trace.append({"at": self.d.clock.now().isoformat(), "event": event,
                             **{k: v for k, v in extra.items() if v not in ("", None)}})
        del record.trace[:-40]

    # poison queue -----------------------------------------------------------------------------
    async def record_poisoned(self, job: AutoreplyJob, dequeue_count: int = 0) -> AutoreplyOutcome:
        """The queue gave up on the job: Failed (or Uncertain when a claim may have sent it)."""
        for _ in range(5):
            record = await self.d.store.get(job.ticket_id)
            if record is not None and record.status in FINAL:
                return AutoreplyOutcome(f"already-{record.status}")
            record = record or self._new_record(job)
            if record.status == CLAIMED:
                record.status = UNCERTAIN
                record.reason = "the job was given up while a send was claimed: it may have gone out"
            else:
                record.status = FAILED
                record.reason = "the queue gave up after its retries"
                record.last_error = record.last_error or "the autoreply job failed repeatedly (see the logs)"
            record.claimed_until = None
            record.resend_requested = False
            self._trace(record, record.status, poisoned=True, dequeue_count=dequeue_count or None)
            try:
                await self.d.store.save(record)
            except ClaimConflict:
                continue
            log.warning("autoreply.%s correlation=%s ticket=%s reason=poison error=%s", record.status,
                        job.correlation_id, job.ticket_number, redact(record.last_error))
            return AutoreplyOutcome(record.status, record.last_error or record.reason)
        raise ClaimConflict("the autoreply row keeps changing")

    # manage API -------------------------------------------------------------------------------
    async def list_autoreplies(self, status: str, limit: int = 100) -> list[dict[str, Any]]:
        if status not in LISTABLE:
            raise AutoreplyListError(f"'status' must be one of {', '.join(LISTABLE)}", field="status")
        return [r.view() for r in await self.d.store.list(status, max(1, min(limit, 500)))]

    async def resend(self, ticket_id: str) -> dict[str, Any]:
        """The admin's resend of an uncertain, failed or skipped autoreply: queued, sent once more
        (the rate limit does not apply; the mailbox must still have autoreplies on)."""
        record = await self.d.store.get(ticket_id)
        if record is None:
            raise AutoreplyNotFound(f"no autoreply is recorded for ticket {ticket_id}")
        if record.status not in RESENDABLE:
            raise ResendRefused(f"the autoreply is {record.status}; only {', '.join(RESENDABLE)} ones can be resent")
        record.status = RETRYING
        record.resend_requested = True
        record.claimed_until = None
        self._trace(record, "resend-requested")
        try:
            record = await self.d.store.save(record)
        except ClaimConflict:
            raise ResendRefused("the autoreply changed meanwhile; look again") from None
        await self.d.queue.send(QUEUE_AUTOREPLIES, AutoreplyJob(
            mailbox_id=record.mailbox_id, message_id=record.message_id, ticket_id=record.ticket_id,
            ticket_number=record.ticket_number))
        log.info("autoreply.resend-queued ticket=%s", record.ticket_number)
        return record.view()

    async def dismiss(self, ticket_id: str, note: Any = "") -> dict[str, Any]:
        """The admin settles an uncertain or failed autoreply without sending it: it leaves the
        status's warnings and the lists that need an admin, keeps its history (the earlier status
        and reason in its trace, the admin's note as its reason), and may still be resent."""
        if not isinstance(note, str):
            raise AutoreplyListError("'note' must be a string", field="note")
        note = " ".join(note.split())
        if len(note) > DISMISS_NOTE_MAX:
            raise AutoreplyListError(f"'note' is longer than {DISMISS_NOTE_MAX} characters", field="note")
        record = await self.d.store.get(ticket_id)
        if record is None:
            raise AutoreplyNotFound(f"no autoreply is recorded for ticket {ticket_id}")
        if record.status not in DISMISSABLE:
            raise DismissRefused(f"the autoreply is {record.status}; only {' or '.join(DISMISSABLE)} ones "
                                 "can be dismissed")
        self._trace(record, DISMISSED, was=record.status, reason=(record.reason or record.last_error)[:300],
                    note=note)
        record.status = DISMISSED
        record.reason = f"dismissed by an admin: {note}" if note else "dismissed by an admin"
        try:
            record = await self.d.store.save(record)
        except ClaimConflict:
            raise DismissRefused("the autoreply changed meanwhile; look again") from None
        log.info("autoreply.dismissed ticket=%s", record.ticket_number)
        return record.view()

