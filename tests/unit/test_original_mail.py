"""The original mail (.eml) on the ticket, per mailbox (`store_original`): decided by size before any
download, streamed through the spooled file, stored once under `<mail key>|eml`, skipped with its
reason on the note, for every mail that lands on a ticket; the processor resumes after a crash at
the new step without a second document (MIME-backed gateway, in-memory CRM)."""
from __future__ import annotations

import email
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from email import policy as email_policy

import pytest

from shared.domain.envelope import MessageJob
from shared.domain.errors import PermanentError, TransientError
from shared.domain.model import PROCESSED, Mailbox, TicketDraft
from shared.services.attachments import (
    AttachmentRules, AttachmentStore, original_filename, original_key,
)
from shared.services.mailboxes import ValidationError, mailbox_from_request, patch_from_request
from shared.services.process import LEASE_SECONDS, MessageProcessor, ProcessDeps
from tests.fakes import FakeClock, FakeLedger, FakeQueue, FakeRegistry
from tests.fakes_crm import InMemoryCrm
from tests.fixtures.mail import mime as m
from tests.support.mime_mailbox import MimeMailbox
from tests.unit.test_process_service import Crash, CrashAfter

BOX = Mailbox(id="box", address="support@contoso.example", client="demo", tenant_id="t", store_original="eml")
T0 = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)
RULES = AttachmentRules(max_bytes=3_000_000, small_bytes=1_000_000, batch_bytes=4_000_000)
ANNA = "Anna Andersson <anna@acme.example>"


def evidence_mail(subject: str = "Order 4711: wrong parts", seed: str = "e1", **kw) -> bytes:
    """Real MIME as it reaches Exchange: Received and DKIM-Signature on top, two binary files."""
    return m.delivered(m.outlook(ANNA, BOX.address, subject, "The parts are wrong, see the photos.",
                                 message_id=m.outlook_id(seed), attachments=[
                                     ("photo.jpg", "image/jpeg", m.blob(40_000, "photo" + seed)),
                                     ("delivery note.pdf", "application/pdf", m.blob(25_000, "pdf" + seed))], **kw))


async def store(raw: bytes, box: Mailbox = BOX, rules: AttachmentRules = RULES, crm=None, gateway=None,
                resumed: bool = False):
    gw = gateway or MimeMailbox()
    crm = crm or InMemoryCrm()
    mail = await gw.get_message(box, gw.deliver(box, raw, T0))
    person = await crm.find_or_create_person("anna@acme.example", "Anna")
    ticket = await crm.create_ticket(TicketDraft(title="t", person_id=person), "ticket-key")
    result = await AttachmentStore(gw, crm, rules).store_original(box, mail, ticket.id, "mail-key", resumed=resumed)
    return result, mail, gw, crm


def test_the_setting_is_validated_on_post_and_patch():
    clients = {"demo": type("C", (), {"tenant_id": "t"})()}
    box = mailbox_from_request({"address": "support@contoso.example", "store_original": "eml"}, clients, T0)
    assert box.store_original == "eml"
    assert mailbox_from_request({"address": "x@contoso.example"}, clients, T0).store_original == "none"
    assert patch_from_request(box, {"store_original": "none"}, clients, T0).store_original == "none"
    for bad in ("EML", "msg", "", None, True, ["eml"]):
        with pytest.raises(ValidationError, match="'store_original' is .*: it must be one of none, eml") as err:
            patch_from_request(box, {"store_original": bad}, clients, T0)
        assert err.value.field == "store_original" and err.value.kind == "invalid"  # 422 naming the field


async def test_a_mailbox_without_the_setting_stores_no_original_and_reads_no_mime():
    result, _, gw, crm = await store(evidence_mail(), box=replace(BOX, store_original="none"))
    assert result is None and gw.calls["stream_message"] == 0 and crm.created["document"] == 0


async def test_the_original_is_the_exact_mime_with_its_headers_and_every_attachment_byte_for_byte():
    raw = evidence_mail()
    result, mail, gw, crm = await store(raw)
    assert result.status == "stored" and gw.calls["stream_message"] == 1
    assert crm.files[result.document_id] == raw and result.size == len(raw)
    doc = await crm.get_document(result.document_id)
    assert doc["content_type"] == "message/rfc822" and doc["filename"] == "2026-11-21 1200 Order 4711_ wrong parts.eml"
    parsed = email.message_from_bytes(crm.files[result.document_id], policy=email_policy.default)
    assert parsed["Message-ID"].strip() == mail.internet_message_id and len(parsed.get_all("Received")) == 2
    assert parsed["DKIM-Signature"].startswith("v=1; a=rsa-sha256")
    files = {p.get_filename(): p.get_content() for p in parsed.iter_attachments()}
    assert files == {"photo.jpg": m.blob(40_000, "photoe1"), "delivery note.pdf": m.blob(25_000, "pdfe1")}
    again, _, gw2, _ = await store(raw, crm=crm)  # the same mail again (another mailbox, a retry): no new document
    assert again.document_id == result.document_id and crm.created["document"] == 1


def test_the_file_name_is_safe_and_keeps_its_extension():
    from shared.domain.mail import Address, InboundMail
    mail = InboundMail(mailbox_id="box", message_id="m", internet_message_id="", sender=Address("a@acme.example"),
                       subject='RE: "Faktura" <1042>/ärende\\x' + "y" * 400, received_at=T0,
                       body_content_type="text", body="")
    name = original_filename(mail)
    assert name.endswith(".eml") and len(name.encode()) <= 200 and not set('"<>/\\:') & set(name)
    assert name.startswith("2026-11-21 1200 RE_ _Faktura_ _1042_ärende_x"), name
    assert original_filename(replace(mail, subject="")) == "2026-11-21 1200 mail.eml"
    assert original_filename(replace(mail, received_at=T0.astimezone(timezone(timedelta(hours=2))))).startswith(
        "2026-11-21 1200 ")  # UTC whatever the zone it was given in
    assert original_key("k") == "k|eml"


async def test_over_the_limit_by_the_mails_size_it_is_skipped_without_reading_the_mime():
    raw = evidence_mail()
    result, mail, gw, crm = await store(raw, rules=AttachmentRules(max_bytes=50_000))
    assert mail.size > 50_000 and result.status == "skipped" and "not downloaded" in result.reason
    assert gw.calls["stream_message"] == 0 and crm.created["document"] == 0
    assert result.note_lines() == [f"Original mail not stored as {result.filename} ({result.reason})"]


async def test_over_the_limit_by_its_attachments_in_base64_it_is_skipped_without_reading_the_mime():
    raw = m.plain(ANNA, BOX.address, "Scan", "Scan.", message_id="<s1@acme.example>",
                  attachments=[("scan.tif", "image/tiff", m.blob(900_000, "scan"))])

    class NoSize(MimeMailbox):  # a store size Graph did not give (or a mail mostly attachments)
        async def get_message(self, mailbox, message_id):
            return replace(await super().get_message(mailbox, message_id), size=0)
    result, mail, gw, _ = await store(raw, rules=AttachmentRules(max_bytes=1_100_000), gateway=NoSize())
    assert mail.size == 0 and result.status == "skipped" and "base64" in result.reason
    assert gw.calls["stream_message"] == 0


async def test_a_mime_that_turns_out_larger_is_cut_off_at_the_limit_and_skipped():
    raw = evidence_mail()
    limit = len(raw) - 1000  # fits by the store's size and the attachments' estimate; not as MIME

    class Reads(MimeMailbox):
        async def stream_message(self, mailbox, message_id, sink, limit=None):
            try:
                return await super().stream_message(mailbox, message_id, sink, limit)
            finally:
                self.read = sink.tell()
    result, mail, gw, crm = await store(raw, rules=AttachmentRules(max_bytes=limit, small_bytes=10_000), gateway=Reads())
    assert mail.size < limit and result.status == "skipped" and "once downloaded" in result.reason
    assert gw.read <= limit and crm.created["document"] == 0


async def test_the_crm_refusing_it_or_graph_losing_it_is_a_reason_not_a_failure():
    crm = InMemoryCrm()
    crm.fail("add_document_file", PermanentError("Lime CRM: 400 file type not allowed"))
    result, *_ = await store(evidence_mail(), crm=crm)
    assert result.status == "skipped" and "the CRM refused it" in result.reason and "not allowed" in result.reason

    class Gone(MimeMailbox):
        async def stream_message(self, mailbox, message_id, sink, limit=None):
            from shared.domain.errors import MailNotFound
            raise MailNotFound("Graph 404")
    result, *_ = await store(evidence_mail(seed="e2"), gateway=Gone())
    assert result.status == "skipped" and "gone from the mailbox" in result.reason


async def test_a_transient_error_reading_the_mime_is_retried_not_skipped():
    class Flaky(MimeMailbox):
        async def stream_message(self, mailbox, message_id, sink, limit=None):
            sink.write(b"partial")
            raise TransientError("Graph 503")
    with pytest.raises(TransientError):
        await store(evidence_mail(), gateway=Flaky())


async def test_a_resumed_attempt_finds_the_stored_original_without_reading_the_mime_again():
    raw = evidence_mail()
    first, _, _, crm = await store(raw)
    again, _, gw, _ = await store(raw, crm=crm, resumed=True)
    assert again.status == "stored" and again.document_id == first.document_id and gw.calls["stream_message"] == 0
    fresh, _, gw, crm2 = await store(raw, resumed=True)  # nothing stored before: read and stored
    assert fresh.status == "stored" and gw.calls["stream_message"] == 1 and crm2.created["document"] == 1


# the processor ------------------------------------------------------------------------------------
def world(crash_at: int = 0, box: Mailbox = BOX, max_bytes: int = RULES.max_bytes):
    from shared.config import MailRules
    clock = FakeClock(T0 + timedelta(minutes=1))
    gw, crm, ledger, queue = MimeMailbox(), InMemoryCrm(clock=clock.now), FakeLedger(clock), FakeQueue()
    counter = {"n": 0, "crash_at": crash_at}
    deps = ProcessDeps(
        registry=FakeRegistry(box), ledger=CrashAfter(ledger, counter, {"save", "claim"}),
        mail=CrashAfter(gw, counter, {"get_message", "stream_message", "delete_message"}),
        crm=CrashAfter(crm, counter, {"find_or_create_person", "reserve_ticket_number", "create_ticket",
                                      "add_document_file", "add_document", "find_document", "add_history"}),
        queue=CrashAfter(queue, counter, {"send"}), clock=clock,
        rules=MailRules(attachment_max_bytes=max_bytes))
    return MessageProcessor(deps), clock, gw, crm, ledger, counter


async def deliver_and_run(proc, gw, raw: bytes, box: Mailbox = BOX):
    mid = gw.deliver(box, raw, T0)
    outcome = await proc.run(MessageJob(mailbox_id=box.id, message_id=mid, tenant_id="t"))
    return mid, outcome


async def test_every_mail_on_a_ticket_gets_its_own_original_follow_ups_and_bounces_too():
    proc, clock, gw, crm, ledger, _ = world()
    first = evidence_mail()
    mid1, out1 = await deliver_and_run(proc, gw, first)
    assert out1.status == PROCESSED and out1.data["original"]["status"] == "stored"
    number = out1.ticket_number
    reply = m.delivered(m.outlook(ANNA, BOX.address, f"RE: Order 4711: wrong parts [{number}]", "And a third photo.",
                                  message_id=m.outlook_id("e1-reply"), in_reply_to=m.outlook_id("e1")))
    mid2, out2 = await deliver_and_run(proc, gw, reply)
    assert out2.ticket_number == number and out2.data["action"] == "follow-up"
    bounce = m.ndr("MAILER-DAEMON@acme.example", BOX.address, "Undeliverable: Order 4711", "Not delivered.",
                   "gone@acme.example", None, message_id="<ndr1@acme.example>",
                   extra=[("In-Reply-To", m.outlook_id("e1"))])
    mid3, out3 = await deliver_and_run(proc, gw, bounce)
    assert out3.ticket_number == number and out3.data["action"] == "history-only"
    detail = await crm.ticket_detail(number)
    originals = {d["id"]: d for d in detail["documents"] if d["content_type"] == "message/rfc822"}
    assert len(originals) == 3
    for out, raw in ((out1, first), (out2, reply), (out3, bounce)):
        assert crm.files[out.data["original"]["document_id"]] == raw
    assert all(d["url"] == f"/api/manage/documents/{i}" for i, d in originals.items())


async def test_a_skipped_original_is_named_on_the_note_and_the_ledger_row():
    proc, clock, gw, crm, ledger, _ = world(max_bytes=30_000)
    raw = m.delivered(m.outlook(ANNA, BOX.address, "Logs", "Logs attached.", message_id=m.outlook_id("logs"),
                                attachments=[("log.txt", "text/plain", b"x" * 40_000)]))
    _, outcome = await deliver_and_run(proc, gw, raw)
    original = outcome.data["original"]
    assert outcome.status == PROCESSED and original["status"] == "skipped" and "not downloaded" in original["reason"]
    note = (await crm.ticket_detail(outcome.ticket_number))["history"][0]["note"]
    assert "Original mail not stored as" in note and "over the per-file limit" in note
    assert gw.calls["stream_message"] == 0


# claim, GET, person, number, number saved (with the decision: a mail naming no ticket decides the
# same on a retry), ticket, 2 attachments, MIME read, .eml document, note, CRM step saved, DELETE,
# finished (the placement is not written on its own: a retry lands on the same ticket by its key)
STEPS = 14


@pytest.mark.parametrize("crash_at", range(1, STEPS + 1))
async def test_a_crash_at_any_step_then_redelivery_gives_exactly_one_original(crash_at):
    proc, clock, gw, crm, ledger, counter = world(crash_at)
    raw = evidence_mail()
    mid = gw.deliver(BOX, raw, T0)
    job = MessageJob(mailbox_id=BOX.id, message_id=mid, tenant_id="t")
    crashed = ""
    try:
        await proc.run(job)
    except Crash as exc:
        crashed = str(exc).split(" #")[0]
    clock.advance(LEASE_SECONDS + 1)
    counter["crash_at"] = 0
    outcome = await proc.run(job)
    assert outcome.status == PROCESSED, (crash_at, crashed, outcome)
    docs = [d for d in crm.documents.values() if d["content_type"] == "message/rfc822"]
    assert len(docs) == 1 and crm.files[docs[0]["id"]] == raw, (crash_at, crashed)
    assert crm.created["document"] == 3 and crm.created["history"] == 1 and crm.created["ticket"] == 1
    assert ledger.rows[(BOX.id, mid)].data["original"]["document_id"] == docs[0]["id"]
    if crashed in ("add_document_file", "add_history"):
        assert gw.calls["stream_message"] == 1, crashed  # stored before the crash: found, not read again
    elif crashed == "stream_message":
        assert gw.calls["stream_message"] == 2, crashed  # read, then lost with the worker: read again


def test_the_crash_plan_covers_the_new_steps():
    """The sweep above reaches the MIME read and the document create (and does not run out early)."""
    import asyncio
    seen = []
    for k in range(1, STEPS + 2):
        proc, clock, gw, crm, ledger, counter = world(k)
        mid = gw.deliver(BOX, evidence_mail(), T0)
        try:
            asyncio.run(proc.run(MessageJob(mailbox_id=BOX.id, message_id=mid, tenant_id="t")))
        except Crash as exc:
            seen.append(str(exc).split(" #")[0])
    assert {"stream_message", "add_document_file"} <= set(seen) and len(seen) == STEPS, seen
