"""AttachmentStore: decide by metadata, fetch economically, store once (MIME-backed gateway, in-memory CRM)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from shared.domain.errors import PermanentError
from shared.domain.model import Mailbox, TicketDraft
from shared.services.attachments import AttachmentRules, AttachmentStore
from tests.fakes_crm import InMemoryCrm
from tests.fixtures.mail import mime as m
from tests.support.mime_mailbox import MimeMailbox

BOX = Mailbox(id="box", address="support@contoso.example", client="demo", tenant_id="t")
T0 = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)
RULES = AttachmentRules(max_bytes=3_000_000, small_bytes=1_000_000, batch_bytes=4_000_000)


async def store(raw: bytes, rules: AttachmentRules = RULES, crm: Any = None, gateway: Any = None):
    gw = gateway or MimeMailbox()
    crm = crm or InMemoryCrm()
    mail = await gw.get_message(BOX, gw.deliver(BOX, raw, T0))
    person = await crm.find_or_create_person("anna@acme.example", "Anna")
    ticket = await crm.create_ticket(TicketDraft(title="t", person_id=person), "ticket-key")
    results = await AttachmentStore(gw, crm, rules).store(BOX, mail, ticket.id, "mail-key")
    return results, gw, crm


def files(*specs: tuple[str, int]) -> list[tuple[str, str, bytes]]:
    return [(name, "application/octet-stream", m.blob(size, name)) for name, size in specs]


async def test_small_attachments_come_in_one_call_and_each_becomes_one_document():
    raw = m.outlook("a@acme.example", BOX.address, "Files", "Files.", message_id="<f1@x>",
                    attachments=files(("a.bin", 10), ("b.bin", 20_000), ("c.bin", 900_000)))
    results, gw, crm = await store(raw)
    assert [(r.filename, r.status) for r in results] == [("a.bin", "stored"), ("b.bin", "stored"), ("c.bin", "stored")]
    assert gw.calls["list_attachments"] == 1 and gw.calls["get_attachment_item"] == 0 and gw.calls["stream_attachment"] == 0
    assert [crm.files[r.document_id] == m.blob(r.size, r.name) for r in results] == [True] * 3
    again, _, _ = await store(raw, crm=crm)  # a retry writes nothing new
    assert crm.created["document"] == 3 and [r.document_id for r in again] == [r.document_id for r in results]


async def test_large_ones_are_streamed_alone_and_oversized_ones_never_downloaded():
    raw = m.outlook("a@acme.example", BOX.address, "Files", "Files.", message_id="<f2@x>",
                    attachments=files(("huge.iso", 3_200_000), ("big.log", 1_500_000), ("small.txt", 5)))
    results, gw, crm = await store(raw)
    by_name = {r.name: r for r in results}
    assert by_name["huge.iso"].status == "skipped" and "over the per-file limit" in by_name["huge.iso"].reason
    assert "huge.iso" not in gw.fetched
    assert by_name["big.log"].status == "stored" and crm.files[by_name["big.log"].document_id] == m.blob(1_500_000, "big.log")
    assert gw.calls["list_attachments"] == 0  # a big one is on the mail: no list call (it would bring everything)
    assert gw.calls["stream_attachment"] == 1 and gw.calls["get_attachment_item"] == 1


async def test_inline_parts_follow_the_setting():
    raw = m.outlook("a@acme.example", BOX.address, "Pic", "Pic.", message_id="<f3@x>",
                    html_body='<p><img src="cid:shown@1"></p>',
                    inline_images=[("shown.png", "shown@1", m.PNG), ("hidden.png", "hidden@1", m.PNG)],
                    attachments=files(("doc.pdf", 100)))
    referenced, _, _ = await store(raw)
    assert {r.name: r.status for r in referenced} == {"shown.png": "stored", "hidden.png": "skipped", "doc.pdf": "stored"}
    assert next(r for r in referenced if r.name == "shown.png").content_id == "shown@1"
    everything, _, _ = await store(raw, AttachmentRules(inline="all"))
    assert {r.status for r in everything} == {"stored"}
    none, gw, _ = await store(raw, AttachmentRules(inline="none"))
    assert {r.name: r.status for r in none} == {"shown.png": "skipped", "hidden.png": "skipped", "doc.pdf": "stored"}
    assert gw.fetched == ["doc.pdf"]


async def test_a_file_the_crm_refuses_is_skipped_with_its_reason_and_the_others_are_stored():
    crm = InMemoryCrm()
    raw = m.outlook("a@acme.example", BOX.address, "Files", "Files.", message_id="<f4@x>",
                    attachments=files(("virus.exe", 10), ("ok.txt", 10)))
    crm.fail("add_document", PermanentError("Lime CRM: 400 file type not allowed"))
    results, _, _ = await store(raw, crm=crm)
    assert (results[0].status, results[1].status) == ("skipped", "stored")
    assert "the CRM refused it" in results[0].reason and "file type not allowed" in results[0].reason


class BytesOnlyGateway(MimeMailbox):
    """A gateway with only the port's get_attachment (no list, JSON or streaming)."""
    list_attachments = None  # type: ignore[assignment]
    get_attachment_item = None  # type: ignore[assignment]
    stream_attachment = None  # type: ignore[assignment]


async def test_a_gateway_without_batch_or_streaming_falls_back_to_get_attachment():
    raw = m.plain("a@acme.example", BOX.address, "Files", "Files.", message_id="<f5@x>",
                  attachments=files(("a.bin", 10), ("b.bin", 1_200_000)))
    gw = BytesOnlyGateway()
    results, _, crm = await store(raw, gateway=gw)
    assert [r.status for r in results] == ["stored", "stored"] and gw.calls["get_attachment"] == 2


class LyingGateway(MimeMailbox):
    """Graph's size is an estimate: the content may turn out larger than the metadata said."""

    async def stream_attachment(self, mailbox, message_id, attachment_id, sink, limit=None):
        if limit is not None:
            raise PermanentError(f"attachment content is over the {limit}-byte limit")
        return await super().stream_attachment(mailbox, message_id, attachment_id, sink, limit)


async def test_content_over_the_limit_despite_its_metadata_is_skipped_with_the_reason():
    raw = m.plain("a@acme.example", BOX.address, "Files", "Files.", message_id="<f6@x>",
                  attachments=files(("grows.bin", 1_500_000)))
    results, _, crm = await store(raw, gateway=LyingGateway())
    assert results[0].status == "skipped" and "over the" in results[0].reason and crm.created["document"] == 0
