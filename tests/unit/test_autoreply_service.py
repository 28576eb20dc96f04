"""Autoreplies with in-memory fakes: who gets one (process.py's decision), what it carries, and the
at-most-once claim around TRAML (shared/services/autoreply.py).

The chain is the real one: MessageProcessor turns a mail into a ticket and queues an AutoreplyJob;
the test drains the queue into AutoreplyService.send, whose TRAML, claim store and rate limiter are
fakes holding the adapters' semantics (ETag-guarded claim rows, a sliding-window limiter built on
the adapter's own `admit`).
"""
from __future__ import annotations

import copy
import itertools
import logging
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from shared.adapters.autoreply_state import admit
from shared.adapters.traml import TramlClient, wire_body
from shared.config import QUEUE_AUTOREPLIES, ConfigError, Settings
from shared.domain import envelope, retry
from shared.domain.envelope import AutoreplyJob, MessageJob
from shared.domain.errors import PermanentError, TransientError
from shared.domain.mail import Address, InboundMail
from shared.domain.model import PROCESSED, SKIPPED, AutoreplySettings, Mailbox
from shared.services.autoreply import (
    CLAIM_SECONDS, FAILED, SENT, UNCERTAIN, AutoreplyDeps, AutoreplyNotFound, AutoreplyRecord, AutoreplyService,
    ClaimConflict, DeliveryUnknown, MailRejected, ResendRefused, TemplateMail, TemplateNotFound,
    limits_from_settings,
)
from shared.services.process import MessageProcessor, ProcessDeps
from tests.fakes import FakeClock, FakeLedger, FakeMail, FakeQueue, FakeRegistry
from tests.fakes_crm import InMemoryCrm

OURS = "support@ours.example"
ANNA = "anna@customer.example"


# ---- fakes of the autoreply ports ------------------------------------------------------------------
class FakeTraml:
    """TransactionalMail in memory: templates by name, a log of sends, faults queued per call."""

    def __init__(self) -> None:
        self.templates = {"Helpdesk autoreply": 7}
        self.sent: list[TemplateMail] = []
        self.calls = 0
        self.faults: list[BaseException] = []
        self.reject_headers: set[str] = set()
        self.lookups = 0

    async def template_id(self, name: str) -> int:
        self.lookups += 1
        if name not in self.templates:
            raise TemplateNotFound(f"TRAML has no mail template named {name!r} (templates: 'Helpdesk autoreply')")
        return self.templates[name]

    def forget_template(self, name: str) -> None:
        pass

    async def send_template(self, mail: TemplateMail) -> dict:
        self.calls += 1
        if self.faults:
            raise self.faults.pop(0)
        bad = [k for k, _ in mail.headers if k.lower() in self.reject_headers]
        if bad:
            raise MailRejected(400, "The request is invalid.",
                               [{"Context": f"Headers[{bad[0]}]", "Message": f"Header '{bad[0]}' is not allowed"}])
        self.sent.append(mail)
        return {"TransactionMailId": 9000 + len(self.sent)}


class MemoryStore:
    """AutoreplyStore with TableAutoreplyStore's ETag semantics."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.rows: dict[str, AutoreplyRecord] = {}
        self._etags = itertools.count(1)
        self.before_save = None  # hook(record): raise to simulate a crash at that write

    async def get(self, ticket_id: str) -> AutoreplyRecord | None:
        row = self.rows.get(ticket_id)
        return copy.deepcopy(row) if row else None

    async def save(self, record: AutoreplyRecord) -> AutoreplyRecord:
        if self.before_save:
            self.before_save(record)
        current = self.rows.get(record.ticket_id)
        if (current is None and record.etag) or (current is not None and current.etag != record.etag):
            raise ClaimConflict("changed")
        record.updated_at = self.clock.now()
        record.created_at = record.created_at or record.updated_at
        record.etag = str(next(self._etags))
        self.rows[record.ticket_id] = copy.deepcopy(record)
        return record

    async def list(self, status: str, limit: int = 100) -> list[AutoreplyRecord]:
        rows = sorted((r for r in self.rows.values() if r.status == status), key=lambda r: r.updated_at, reverse=True)
        return copy.deepcopy(rows[:limit])


class MemoryLimiter:
    def __init__(self, limit: int = 10, minutes: int = 180) -> None:
        self.limit, self.window = limit, timedelta(minutes=minutes)
        self.logs: dict[str, list] = {}

    async def acquire(self, recipient: str, token: str, now: datetime) -> bool:
        allowed, new = admit(self.logs.get(recipient.lower(), []), token, now, self.limit, self.window)
        if new is not None:
            self.logs[recipient.lower()] = new
        return allowed


class Crash(BaseException):
    """The worker dies."""


# ---- the chain -------------------------------------------------------------------------------------
class World:
    def __init__(self, autoreply: bool = True, template: str = "Helpdesk autoreply") -> None:
        self.clock = FakeClock()
        self.box = Mailbox(id="user-1", address=OURS, client="demo", tenant_id="t", autoreply=AutoreplySettings(
            enabled=autoreply, template=template, from_name="Ours Support",
            merge_codes={"signature": "The Support Team", "{{ hours }}": "8-17"}))
        self.registry = FakeRegistry(self.box)
        self.mail, self.crm = FakeMail(), InMemoryCrm()
        self.ledger, self.queue = FakeLedger(self.clock), FakeQueue()
        self.traml, self.store, self.limiter = FakeTraml(), MemoryStore(self.clock), MemoryLimiter()
        self.processor = MessageProcessor(ProcessDeps(
            registry=self.registry, ledger=self.ledger, mail=self.mail, crm=self.crm, queue=self.queue,
            clock=self.clock, own_addresses=self._own))
        self.service = AutoreplyService(AutoreplyDeps(
            registry=self.registry, ledger=self.ledger, crm=self.crm, queue=self.queue, clock=self.clock,
            traml=self.traml, store=self.store, limiter=self.limiter))
        self._n = itertools.count(1)

    async def _own(self) -> frozenset[str]:
        return frozenset({OURS})

    def deliver(self, sender: str = ANNA, name: str = "Anna Andersson", subject: str = "Printer broken",
                headers: tuple = (), age: timedelta = timedelta(minutes=1), mid: str | None = None) -> MessageJob:
        n = next(self._n)
        mail = InboundMail(
            mailbox_id=self.box.id, message_id=f"msg-{n}", internet_message_id=mid or f"<m{n}@customer.example>",
            sender=Address(sender, name), subject=subject, received_at=self.clock.now() - age,
            body_content_type="text", body="Hello", headers=headers, parent_folder_id=FakeMail.INBOX)
        self.mail.put(self.box, mail)
        return MessageJob(mailbox_id=self.box.id, message_id=mail.message_id, tenant_id="t")

    def jobs(self) -> list[AutoreplyJob]:
        """Take the autoreply jobs off the queue."""
        out = [envelope.decode(text, AutoreplyJob) for q, text, _ in self.queue.sent if q == QUEUE_AUTOREPLIES]
        self.queue.sent = [s for s in self.queue.sent if s[0] != QUEUE_AUTOREPLIES]
        return out

    async def process(self, job: MessageJob):
        outcome = await self.processor.run(job)
        return outcome, self.jobs()


async def new_ticket(w: World, **kw) -> AutoreplyJob:
    outcome, jobs = await w.process(w.deliver(**kw))
    assert outcome.status == PROCESSED
    [job] = jobs
    return job


# ---- who gets an autoreply ---------------------------------------------------------------------------
async def test_new_ticket_gets_exactly_one_autoreply_with_the_right_fields():
    w = World()
    job = await new_ticket(w, mid="<abc.123@customer.example>")
    first = await w.service.send(job)
    again = await w.service.send(job)  # a redelivery
    assert first.status == SENT and again.status == "already-sent"
    [mail] = w.traml.sent
    assert mail.from_email == OURS and mail.from_name == "Ours Support"
    assert mail.recipient_email == ANNA and mail.recipient_name == "Anna Andersson"
    assert mail.subject == f"Printer broken [{job.ticket_number}]" and job.ticket_number == "1001"
    assert mail.template_id == 7 and mail.external_id == f"inbox-autoreply-{job.ticket_id}"
    assert mail.exclude_totaloptouts and mail.exclude_previous_bounce
    codes = dict(mail.merge_codes)
    assert codes["$$helpdesknumber$$"] == "1001" and codes["$$title$$"] == "Printer broken"
    assert codes["$$sendername$$"] == "Anna Andersson" and codes["$$mailbox$$"] == OURS
    assert codes["$$signature$$"] == "The Support Team" and codes["{{ hours }}"] == "8-17"
    assert dict(mail.headers) == {"Auto-Submitted": "auto-replied", "X-Auto-Response-Suppress": "All",
                                  "In-Reply-To": "<abc.123@customer.example>",
                                  "References": "<abc.123@customer.example>"}
    detail = await w.crm.ticket_detail("1001")
    notes = [h for h in detail["history"] if h["type"] == "sentemail"]
    assert len(notes) == 1 and "Printer broken [1001]" in notes[0]["note"]
    row = w.store.rows[job.ticket_id]
    assert row.status == SENT and row.transaction_id == "9001" and row.history_id


async def test_customer_subject_cannot_inject_headers_and_title_is_one_line():
    w = World()
    job = await new_ticket(w, subject="Broken\r\nBcc: victim@example.com")
    await w.service.send(job)
    [mail] = w.traml.sent
    assert "\r" not in mail.subject and "\n" not in mail.subject and mail.subject.endswith("[1001]")


def _headers(*pairs):
    return tuple(pairs)


@pytest.mark.parametrize("case", ["follow-up", "reply-to-the-autoreply", "out-of-office", "out-of-office-on-ticket",
                                  "bounce", "newsletter",
                                  "own-mailbox", "older-than-a-day", "autoreplies-off", "no-reply-sender"])
async def test_no_autoreply_is_queued(case):
    w = World(autoreply=case != "autoreplies-off")
    if case in ("follow-up", "reply-to-the-autoreply", "out-of-office-on-ticket"):
        await new_ticket(w)  # ticket 1001 from <m1@customer.example>, its autoreply job taken off the queue
    job = {
        "follow-up": lambda: w.deliver(subject="RE: Printer broken [1001]"),
        # TRAML gives the autoreply its own Message-ID; the customer's reply still carries the original
        # one in References (our autoreply's References), even when the subject tag was edited away.
        "reply-to-the-autoreply": lambda: w.deliver(subject="Re: Printer broken", headers=_headers(
            ("In-Reply-To", "<0a1b2c@mta.traml.example>"),
            ("References", "<m1@customer.example> <0a1b2c@mta.traml.example>"))),
        "out-of-office": lambda: w.deliver(subject="Out of office", headers=_headers(
            ("Auto-Submitted", "auto-replied"), ("X-Auto-Response-Suppress", "All"))),
        "out-of-office-on-ticket": lambda: w.deliver(subject="Automatic reply: Printer broken [1001]",
                                                     headers=_headers(("Auto-Submitted", "auto-replied"))),
        "bounce": lambda: w.deliver(sender="MAILER-DAEMON@mx.customer.example", name="Mail Delivery System",
                                    subject="Undelivered Mail Returned to Sender",
                                    headers=_headers(("Return-Path", "<>"))),
        "newsletter": lambda: w.deliver(sender="news@shop.example", subject="Our weekly deals", headers=_headers(
            ("Precedence", "bulk"), ("List-Unsubscribe", "<mailto:unsub@shop.example>"))),
        "own-mailbox": lambda: w.deliver(sender=OURS, subject="Loop?"),
        "older-than-a-day": lambda: w.deliver(age=timedelta(hours=25)),
        "autoreplies-off": lambda: w.deliver(),
        "no-reply-sender": lambda: w.deliver(sender="no-reply@vendor.example", subject="Your invoice"),
    }[case]()
    outcome = await w.processor.run(job)
    assert outcome.status in (PROCESSED, SKIPPED)
    assert w.jobs() == [], case
    if case in ("follow-up", "reply-to-the-autoreply", "out-of-office-on-ticket"):
        assert outcome.status == PROCESSED and outcome.ticket_number == "1001"
    if case in ("older-than-a-day", "autoreplies-off"):
        assert outcome.status == PROCESSED and w.crm.created["ticket"] == 1  # the ticket is still made


async def test_mailbox_switched_off_after_queueing_sends_nothing():
    w = World()
    job = await new_ticket(w)
    w.box.autoreply.enabled = False
    outcome = await w.service.send(job)
    assert outcome.status == "skipped" and "switched off" in outcome.reason and w.traml.calls == 0


async def test_a_job_that_waited_far_past_a_day_is_dropped():
    w = World()
    job = await new_ticket(w)
    w.clock.advance(40 * 3600)
    outcome = await w.service.send(job)
    assert outcome.status == "skipped" and "hours old" in outcome.reason and w.traml.calls == 0


# ---- at most once ----------------------------------------------------------------------------------
def requeued(w: World) -> tuple[AutoreplyJob, int]:
    """The job the service put back in the queue, and its visibility delay (the queue is emptied)."""
    [(queue, text, delay)] = w.queue.sent
    w.queue.sent.clear()
    assert queue == QUEUE_AUTOREPLIES
    return envelope.decode(text, AutoreplyJob), delay


async def test_traml_503_twice_then_200_sends_once():
    w = World()
    job = await new_ticket(w)
    w.traml.faults = [TransientError("TRAML 503", retry_after=1), TransientError("TRAML 503", retry_after=1)]
    delays = []
    for attempt in (1, 2):  # each 503: the job waits in the queue for the schedule's next delay
        assert (await w.service.send(job)).status == "requeued"
        assert w.store.rows[job.ticket_id].status == "retrying"
        assert "503" in w.store.rows[job.ticket_id].last_error
        job, delay = requeued(w)
        assert job.attempt == attempt and job.not_before
        delays.append(delay)
        assert (await w.service.send(job)).status == "requeued" and w.traml.calls == attempt  # too early
        requeued(w)
        w.clock.advance(delay)
    assert 8 <= delays[0] <= 12 and 16 <= delays[1] <= 24  # 10 s, then 20 s (+-20%)
    assert (await w.service.send(job)).status == SENT
    assert len(w.traml.sent) == 1 and w.traml.calls == 3
    assert w.store.rows[job.ticket_id].attempts == 3
    assert (await w.service.send(job)).status == "already-sent" and w.traml.calls == 3


async def test_traml_down_past_the_schedule_raises_for_the_queue_then_poison():
    w = World()
    job = await new_ticket(w)
    w.traml.faults = [TransientError("TRAML 503")] * (retry.ATTEMPTS + 1)
    for _ in range(retry.ATTEMPTS):
        assert (await w.service.send(job)).status == "requeued"
        job, delay = requeued(w)
        w.clock.advance(delay)
    assert w.clock.now() - w.store.rows[job.ticket_id].created_at >= 0.8 * retry.BUDGET
    with pytest.raises(TransientError):
        await w.service.send(job)
    assert w.store.rows[job.ticket_id].status == "retrying" and w.traml.sent == []


async def test_long_retry_after_requeues_the_job_instead_of_waiting():
    w = World()
    job = await new_ticket(w)
    w.traml.faults = [TransientError("TRAML 429", retry_after=60)]
    outcome = await w.service.send(job)
    assert outcome.status == "requeued"
    [(queue, text, delay)] = w.queue.sent
    assert queue == QUEUE_AUTOREPLIES and delay == 60 and envelope.decode(text, AutoreplyJob).attempt == 1


def _crash_on(status: str):
    def hook(record: AutoreplyRecord) -> None:
        if record.status == status:
            raise Crash(f"died before recording {status}")
    return hook


async def test_crash_after_send_before_the_flag_is_not_sent_again_but_uncertain():
    w = World()
    job = await new_ticket(w)
    w.store.before_save = _crash_on(SENT)
    with pytest.raises(Crash):
        await w.service.send(job)
    w.store.before_save = None
    assert len(w.traml.sent) == 1 and w.store.rows[job.ticket_id].status == "claimed"
    # Redelivered while the dead worker's claim still looks live: look again later, send nothing.
    outcome = await w.service.send(job)
    assert outcome.status == "requeued" and w.traml.calls == 1
    [(_, _, delay)] = w.queue.sent
    assert 0 < delay <= CLAIM_SECONDS + 1
    w.queue.sent.clear()
    w.clock.advance(CLAIM_SECONDS + 1)
    outcome = await w.service.send(job)
    assert outcome.status == UNCERTAIN and w.traml.calls == 1
    assert (await w.service.send(job)).status == "already-uncertain" and w.traml.calls == 1
    listed = await w.service.list_autoreplies(UNCERTAIN)
    assert [r["ticket_number"] for r in listed] == ["1001"] and "may or may not" in listed[0]["reason"]
    assert await w.service.list_autoreplies(SENT) == []


async def test_admin_resend_of_an_uncertain_autoreply_sends_it_once_more():
    w = World()
    job = await new_ticket(w)
    w.store.before_save = _crash_on(SENT)
    with pytest.raises(Crash):
        await w.service.send(job)
    w.store.before_save = None
    w.clock.advance(CLAIM_SECONDS + 1)
    await w.service.send(job)
    w.limiter.limit = 0  # a resend is the admin's decision: the limit does not apply
    view = await w.service.resend(job.ticket_id)
    assert view["status"] == "retrying" and view["resend_requested"]
    [resend_job] = w.jobs()
    assert (resend_job.ticket_id, resend_job.message_id) == (job.ticket_id, job.message_id)
    assert (await w.service.send(resend_job)).status == SENT and len(w.traml.sent) == 2
    with pytest.raises(ResendRefused):
        await w.service.resend(job.ticket_id)
    with pytest.raises(AutoreplyNotFound):
        await w.service.resend("hd4711")


async def test_no_answer_from_traml_is_uncertain_and_never_retried():
    w = World()
    job = await new_ticket(w)
    w.traml.faults = [DeliveryUnknown("TRAML POST transactionmail/sendtemplate: no answer (ReadTimeout)")]
    outcome = await w.service.send(job)
    assert outcome.status == UNCERTAIN and w.store.rows[job.ticket_id].status == UNCERTAIN
    assert (await w.service.send(job)).status == "already-uncertain" and w.traml.calls == 1


async def test_duplicate_job_while_another_worker_holds_the_claim_sends_nothing():
    w = World()
    job = await new_ticket(w)
    orig = w.traml.send_template
    seen = {}

    async def send_and_race(mail):
        # While "worker A" is inside TRAML, "worker B" runs the duplicate job.
        seen["b"] = await w.service.send(job)
        return await orig(mail)
    w.traml.send_template = send_and_race
    assert (await w.service.send(job)).status == SENT
    assert seen["b"].status == "requeued" and len(w.traml.sent) == 1


async def test_crash_after_sent_before_the_history_note_writes_only_the_note():
    w = World()
    job = await new_ticket(w)
    w.crm.fail("add_history", TransientError("CRM 503"))
    assert (await w.service.send(job)).status == "requeued"  # the CRM is down: wait for it
    assert w.store.rows[job.ticket_id].status == SENT and not w.store.rows[job.ticket_id].history_id
    job, delay = requeued(w)
    w.clock.advance(delay)
    assert (await w.service.send(job)).status == "already-sent"
    assert len(w.traml.sent) == 1 and w.store.rows[job.ticket_id].history_id
    detail = await w.crm.ticket_detail("1001")
    assert [h["type"] for h in detail["history"]].count("sentemail") == 1


# ---- limits ---------------------------------------------------------------------------------------
async def test_fifty_mails_from_one_address_in_an_hour_are_capped_at_the_limit():
    w = World()
    jobs = []
    for i in range(50):
        outcome, queued = await w.process(w.deliver(subject=f"Question {i}"))
        assert outcome.status == PROCESSED
        jobs += queued
        w.clock.advance(70)  # 50 mails within an hour
    assert w.crm.created["ticket"] == 50 and len(jobs) == 50
    outcomes = [await w.service.send(j) for j in jobs]
    assert [o.status for o in outcomes].count(SENT) == 10 == len(w.traml.sent)
    skipped = await w.service.list_autoreplies("skipped", limit=500)
    assert len(skipped) == 40 and all("rate limit" in r["reason"] for r in skipped)
    # Redeliveries do not eat the allowance; after the window the recipient is answered again.
    assert (await w.service.send(jobs[0])).status == "already-sent"
    w.clock.advance(3 * 3600)
    assert (await w.service.send(await new_ticket(w, subject="Next day"))).status == SENT


def test_sliding_window_counts_a_token_once_and_forgets_old_sends():
    now = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    log: list = []
    for i in range(3):
        ok, log = admit(log, f"t{i}", now, 3, timedelta(hours=3))
        assert ok
    assert admit(log, "t1", now, 3, timedelta(hours=3)) == (True, None)  # already counted
    assert admit(log, "t9", now, 3, timedelta(hours=3)) == (False, None)
    ok, new = admit(log, "t9", now + timedelta(hours=3, seconds=1), 3, timedelta(hours=3))
    assert ok and [t for t, _ in new] == ["t9"]


def test_limit_settings_default_and_validate():
    base = {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "CLIENT_STATE_KEYS": "1:" + "k" * 20}
    assert limits_from_settings(Settings.from_env(base)) == (10, 180)
    assert limits_from_settings(Settings.from_env({**base, "AUTOREPLY_LIMIT_COUNT": "3",
                                                   "AUTOREPLY_LIMIT_WINDOW_MINUTES": "60"})) == (3, 60)
    with pytest.raises(ConfigError, match="AUTOREPLY_LIMIT_COUNT"):
        limits_from_settings(Settings.from_env({**base, "AUTOREPLY_LIMIT_COUNT": "many"}))


# ---- failures ---------------------------------------------------------------------------------------
async def test_traml_4xx_is_failed_with_traml_message(caplog):
    caplog.set_level(logging.DEBUG)
    w = World()
    job = await new_ticket(w)
    w.traml.faults = [MailRejected(400, "The request is invalid.", [
        {"Context": "RecipientEmail", "Message": "'anna@customer' is not a valid email address"}])]
    outcome = await w.service.send(job)
    assert outcome.status == FAILED
    [row] = await w.service.list_autoreplies(FAILED)
    assert "The request is invalid." in row["last_error"] and "not a valid email address" in row["last_error"]
    assert (await w.service.send(job)).status == "already-failed" and w.traml.calls == 1
    assert w.crm.created["ticket"] == 1  # the ticket is untouched
    assert "autoreply.failed" in caplog.text and "anna@customer" not in caplog.text  # logs carry ids


async def test_missing_template_is_a_clear_failure_naming_it():
    w = World(template="Autosvar helpdesk")
    job = await new_ticket(w)
    outcome = await w.service.send(job)
    assert outcome.status == FAILED and "'Autosvar helpdesk'" in outcome.reason
    assert w.traml.calls == 0 and w.limiter.logs == {}  # neither sent nor counted


async def test_rejected_header_is_dropped_and_logged_once(caplog):
    w = World()
    w.traml.reject_headers = {"in-reply-to"}
    caplog.set_level(logging.WARNING, logger="inbox.autoreply")
    for subject in ("First", "Second"):
        assert (await w.service.send(await new_ticket(w, subject=subject))).status == SENT
    assert len(w.traml.sent) == 2 and w.traml.calls == 3  # one rejected try, then none
    for mail in w.traml.sent:
        assert "In-Reply-To" not in dict(mail.headers) and dict(mail.headers)["Auto-Submitted"] == "auto-replied"
        assert "References" in dict(mail.headers)
    assert len([r for r in caplog.records if "header-rejected" in r.getMessage()]) == 1


async def test_poison_records_failed_with_the_last_error_and_claimed_as_uncertain():
    w = World()
    job = await new_ticket(w)
    w.traml.faults = [TransientError("TRAML 502 Bad Gateway")]
    assert (await w.service.send(job)).status == "requeued"
    outcome = await w.service.record_poisoned(job, 5)
    assert outcome.status == FAILED and "502" in outcome.reason
    assert w.store.rows[job.ticket_id].status == FAILED
    w2 = World()
    job2 = await new_ticket(w2)
    w2.store.before_save = _crash_on(SENT)
    with pytest.raises(Crash):
        await w2.service.send(job2)
    w2.store.before_save = None
    assert (await w2.service.record_poisoned(job2)).status == UNCERTAIN


async def test_ledger_row_gone_is_failed_without_sending():
    w = World()
    job = await new_ticket(w)
    w.ledger.rows.clear()
    outcome = await w.service.send(job)
    assert outcome.status == FAILED and "ledger row" in outcome.reason and w.traml.calls == 0


async def test_list_rejects_unknown_status():
    with pytest.raises(ValueError):
        await World().service.list_autoreplies("everything")


# ---- the TRAML adapter's mapping (wire format, errors, secrets) --------------------------------------
def test_wire_body_uses_traml_field_names_and_escapes_html_values():
    body = wire_body(TemplateMail(template_id=7, recipient_email=ANNA, from_email=OURS, subject="S [1]",
                                  recipient_name="Anna", from_name="Support", external_id="x",
                                  merge_codes=(("$$title$$", "<b>Tom & Jerry</b>"),),
                                  headers=(("Auto-Submitted", "auto-replied"),)))
    assert body["ExcludeTotaloptouts"] is True and "ExcludeTotalOptouts" not in body
    assert body["ExcludePreviousBounce"] is True and body["TemplateId"] == 7
    assert body["HtmlContentTagModels"] == [{"Name": "$$title$$", "Value": "&lt;b&gt;Tom &amp; Jerry&lt;/b&gt;"}]
    assert body["TextContentTagModels"] == [{"Name": "$$title$$", "Value": "<b>Tom & Jerry</b>"}]
    assert body["Headers"] == {"Auto-Submitted": "auto-replied"} and "MergeCodes" not in body
    assert set(body) <= {"TemplateId", "RecipientEmail", "RecipientName", "FromEmail", "FromName", "Subject",
                         "ExternalId", "ExcludeTotaloptouts", "ExcludePreviousBounce", "TrackOpenings",
                         "TrackLinkClicks", "HtmlContentTagModels", "TextContentTagModels", "Headers"}


KEY = "s3cr3t-traml-key-0123456789"


def _client(handler, **kw) -> TramlClient:
    async def no_sleep(_):
        return None
    return TramlClient("https://traml.test/bedrock/acme/api", KEY, transport=httpx.MockTransport(handler),
                       sleep=no_sleep, **kw)


MAIL = TemplateMail(template_id=7, recipient_email=ANNA, from_email=OURS, subject="S")


async def test_adapter_maps_statuses_and_never_leaks_the_key(caplog):
    caplog.set_level(logging.DEBUG)
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status = {1: 503, 2: 429, 3: 200}[len(seen)]
        return httpx.Response(status, json={"TransactionMailId": 1} if status == 200 else {"Message": "busy"},
                              headers={"Retry-After": "1"} if status == 429 else {})
    client = _client(handler)
    assert (await client.send_template(MAIL)) == {"TransactionMailId": 1}
    assert seen[0].headers["apikey"] == KEY and seen[0].url.path == "/bedrock/acme/api/transactionmail/sendtemplate"

    def reject(request):
        return httpx.Response(401, json={"Message": "Authorization has been denied for this request."})
    with pytest.raises(MailRejected) as exc:
        await _client(reject).send_template(MAIL)
    assert exc.value.status == 401 and "denied" in str(exc.value)

    def slow(request):
        raise httpx.ReadTimeout("timed out", request=request)
    with pytest.raises(DeliveryUnknown):
        await _client(slow).send_template(MAIL)

    def gateway(request):
        return httpx.Response(504, text="<html>Gateway Time-out</html>")
    with pytest.raises(DeliveryUnknown):
        await _client(gateway).send_template(MAIL)

    def throttled(request):
        return httpx.Response(429, json={"Message": "Too many"}, headers={"Retry-After": "120"})
    with pytest.raises(TransientError) as exc:
        await _client(throttled).send_template(MAIL)
    assert exc.value.retry_after == 120

    calls = []

    def refused(request):
        calls.append(1)
        raise httpx.ConnectError("refused", request=request)
    with pytest.raises(TransientError) as exc:
        await _client(refused, attempts=3).send_template(MAIL)
    assert len(calls) == 3 and not isinstance(exc.value, DeliveryUnknown)
    assert KEY not in caplog.text and KEY not in repr(client)


async def test_adapter_finds_a_template_by_name_caches_it_and_lists_only_on_a_miss():
    templates = [{"Id": 1, "Name": "A"}]
    paths = []

    def handler(request):
        path = request.url.path.split("/api/", 1)[1]
        paths.append(path)
        if path.startswith("mailtemplate/name/"):
            name = path.rsplit("/", 1)[1]
            found = [t for t in templates if t["Name"] == name]
            return httpx.Response(200, json=found[0]) if found else \
                httpx.Response(404, json={"Message": f"Mail template '{name}' does not exist."})
        return httpx.Response(200, json=templates)
    client = _client(handler)
    assert await client.template_id("A") == 1 and await client.template_id("A") == 1
    assert paths == ["mailtemplate/name/A"]  # one small request, then the cache
    templates.append({"Id": 2, "Name": "B"})
    assert await client.template_id("B") == 2 and paths[-1] == "mailtemplate/name/B"
    assert await client.template_id(" a ") == 1 and paths[-2:] == ["mailtemplate/name/a", "mailtemplate"]
    with pytest.raises(TemplateNotFound, match="no mail template named 'C'.*'A', 'B'"):
        await client.template_id("C")
    assert paths[-2:] == ["mailtemplate/name/C", "mailtemplate"]
    client.forget_template("A")  # TRAML refused the cached id: looked up again
    assert await client.template_id("A") == 1 and paths[-1] == "mailtemplate/name/A"


async def test_adapter_without_settings_fails_permanently_naming_the_setting():
    client = TramlClient("", "")
    with pytest.raises(PermanentError, match="TRAML_BASE_URL"):
        await client.send_template(MAIL)


def test_only_errors_about_headers_drop_headers():
    from shared.services.autoreply import blamed_headers
    names = ["Auto-Submitted", "In-Reply-To", "References"]
    about_template = MailRejected(400, "The request is invalid.", [
        {"Context": "TemplateId", "Message": "The template references a layout that does not exist"}])
    assert blamed_headers(about_template, names) == []
    named = MailRejected(400, "The request is invalid.", [
        {"Context": "Headers[In-Reply-To]", "Message": "Header 'In-Reply-To' is not allowed"}])
    assert blamed_headers(named, names) == ["In-Reply-To"]
    unnamed = MailRejected(400, "Custom headers are not allowed for this account.")
    assert blamed_headers(unnamed, names) == names
