"""Attachment fetching through the real Graph adapter (msgraph-sdk, azure-identity) against the Graph
simulator: metadata first with the message, small files in one call, large ones streamed from
`$value` on their own, files over the limit never requested, attached messages as MIME."""
from __future__ import annotations

import asyncio
import io

import pytest

from shared.adapters.graph import AttachmentTooLarge
from shared.domain.model import TicketDraft
from shared.services.attachments import AttachmentRules, AttachmentStore
from tests.fakes_crm import InMemoryCrm
from tests.fixtures.mail import mime as m
from tests.support.graph_world import graph_adapter, new_mailbox, running_graph
from tools.sim.graph import GraphSim


@pytest.fixture(scope="module")
def graph():
    with running_graph() as sim:
        yield sim


@pytest.fixture
async def world(graph):
    yield graph, graph_adapter(graph), new_mailbox(graph)


async def requests(graph: GraphSim, since: int, made: int) -> list[str]:
    """The Graph calls logged since `since`, once all `made` of them are in the log (the simulator
    logs a request after writing its answer, so the last one may lag the client a little)."""
    for _ in range(500):
        calls = [f"{r['method']} {r['path'].split('/messages/', 1)[1]}" for r in graph.requests.entries(since_seq=since)
                 if "/messages/" in r["path"]]
        if len(calls) >= made:
            return calls
        await asyncio.sleep(0.01)
    raise AssertionError(f"the simulator logged {len(calls)} of {made} requests")


async def run(graph, adapter, box, raw: bytes, rules: AttachmentRules):
    message_id = graph.deliver(box.address, raw, notify=False)
    since = graph.requests.entries()[-1]["seq"] if len(graph.requests) else 0
    before = adapter.stats["requests"]
    mail = await adapter.get_message(box, message_id)
    crm = InMemoryCrm()
    person = await crm.find_or_create_person("anna@acme.example", "Anna")
    ticket = await crm.create_ticket(TicketDraft(title="t", person_id=person), "k")
    results = await AttachmentStore(adapter, crm, rules).store(box, mail, ticket.id, "mail-key")
    return mail, results, crm, await requests(graph, since, adapter.stats["requests"] - before)


async def test_metadata_comes_with_the_message_and_small_files_in_one_more_call(world):
    graph, adapter, box = world
    raw = m.outlook("anna@acme.example", box.address, "Pics", "See.", message_id="<g1@acme.example>",
                    html_body='<p><img src="cid:shot@1"></p>', inline_images=[("shot.png", "shot@1", m.PNG)],
                    attachments=[("a.txt", "text/plain", b"alpha"), ("b.pdf", "application/pdf", m.PDF)])
    mail, results, crm, calls = await run(graph, adapter, box, raw, AttachmentRules())
    assert all("contentBytes" not in str(a) for a in mail.attachments)
    assert [(a.name, a.is_inline) for a in mail.attachments] == [("shot.png", True), ("a.txt", False), ("b.pdf", False)]
    assert [r.status for r in results] == ["stored"] * 3 and results[0].content_id == "shot@1"
    assert len(calls) == 2 and calls[1].endswith("/attachments"), calls  # GET message, GET attachments
    assert [crm.files[r.document_id] for r in results] == [m.PNG, b"alpha", m.PDF]


async def test_large_files_stream_alone_and_oversized_ones_are_never_requested(world):
    graph, adapter, box = world
    big, huge = m.blob(2_500_000, "big"), m.blob(6_000_000, "huge")
    inner = m.plain("kund@partner.example", "anna@acme.example", "Original", "The original.", message_id="<o@p>")
    raw = m.forward_as_attachment("anna@acme.example", box.address, "FW: Original", "See attached.", inner,
                                  message_id="<g2@acme.example>")
    import email
    from email import policy as email_policy
    msg = email.message_from_bytes(raw, policy=email_policy.default)
    msg.add_attachment(big, maintype="application", subtype="octet-stream", filename="big.bin")
    msg.add_attachment(huge, maintype="application", subtype="octet-stream", filename="huge.bin")
    msg.add_attachment(b"tiny", maintype="text", subtype="plain", filename="tiny.txt")
    mail, results, crm, calls = await run(graph, adapter, box, bytes(msg), AttachmentRules(max_bytes=5_000_000))
    by_name = {r.filename: r for r in results}
    huge_id = next(a.id for a in mail.attachments if a.name == "huge.bin")
    assert by_name["huge.bin"].status == "skipped" and not any(huge_id in c for c in calls), calls
    assert crm.files[by_name["big.bin"].document_id] == big
    eml = crm.files[by_name["Original.eml"].document_id]
    assert b"Subject: Original" in eml and b"The original." in eml
    assert crm.files[by_name["tiny.txt"].document_id] == b"tiny"
    values = [c for c in calls if c.endswith("/$value")]
    assert len(values) == 2, calls  # the big file and the attached message, each streamed on its own
    assert not any(c.endswith("/attachments") for c in calls)


async def test_streaming_stops_at_the_limit(world):
    graph, adapter, box = world
    raw = m.plain("anna@acme.example", box.address, "Big", "x", message_id="<g3@acme.example>",
                  attachments=[("big.bin", "application/octet-stream", m.blob(300_000, "b"))])
    message_id = graph.deliver(box.address, raw, notify=False)
    mail = await adapter.get_message(box, message_id)
    sink = io.BytesIO()
    assert await adapter.stream_attachment(box, message_id, mail.attachments[0].id, sink) == 300_000
    assert sink.getvalue() == m.blob(300_000, "b")
    with pytest.raises(AttachmentTooLarge):
        await adapter.stream_attachment(box, message_id, mail.attachments[0].id, io.BytesIO(), limit=100_000)


async def test_the_mails_mime_streams_from_value_and_its_size_comes_with_the_message(world):
    """store_original through the real adapter: the size rides on the message GET (no extra
    request), `$value` is one request streamed into the file, exactly the delivered bytes; a mail
    over the limit by its size is never asked for its MIME; one that turns out larger while
    streaming stops at the limit."""
    from dataclasses import replace

    from shared.domain.errors import ContentTooLarge
    graph, adapter, box = world
    keeps = replace(box, store_original="eml")
    raw = m.delivered(m.outlook("anna@acme.example", box.address, "Evidence", "See attached.",
                                message_id="<g4@acme.example>",
                                attachments=[("scan.pdf", "application/pdf", m.blob(600_000, "scan")),
                                             ("photo.jpg", "image/jpeg", m.blob(80_000, "photo"))]))
    message_id = graph.deliver(box.address, raw, notify=False)
    since = graph.requests.entries()[-1]["seq"] if len(graph.requests) else 0
    assert (await adapter.get_message(box, message_id)).size == 0  # not asked for without the setting
    await requests(graph, since, 1)  # logged (it may lag the answer): the count below starts after it
    since = graph.requests.entries()[-1]["seq"]
    before = adapter.stats["requests"]
    mail = await adapter.get_message(keeps, message_id)
    assert 680_000 < mail.size < len(raw)  # the store's size: the files as they are, not in base64
    sink = io.BytesIO()
    assert await adapter.stream_message(keeps, message_id, sink, limit=len(raw)) == len(raw)
    assert sink.getvalue() == raw
    with pytest.raises(ContentTooLarge):
        await adapter.stream_message(keeps, message_id, io.BytesIO(), limit=len(raw) - 1)
    calls = await requests(graph, since, adapter.stats["requests"] - before)
    assert [c.split(message_id, 1)[1] or "/" for c in calls] == ["/", "/$value", "/$value"], calls

    crm = InMemoryCrm()
    person = await crm.find_or_create_person("anna@acme.example", "Anna")
    ticket = await crm.create_ticket(TicketDraft(title="t", person_id=person), "k")
    since, before = graph.requests.entries()[-1]["seq"], adapter.stats["requests"]
    by_size = await AttachmentStore(adapter, crm, AttachmentRules(max_bytes=mail.size - 1)).store_original(
        keeps, mail, ticket.id, "mail-key")
    assert by_size.status == "skipped" and by_size.reason.startswith("over the per-file limit (") \
        and "not downloaded" in by_size.reason
    by_base64 = await AttachmentStore(adapter, crm, AttachmentRules(max_bytes=mail.size + 1000)).store_original(
        keeps, mail, ticket.id, "mail-key")  # fits by Exchange's size, not once MIME encodes the files
    assert by_base64.status == "skipped" and "base64" in by_base64.reason
    assert adapter.stats["requests"] == before
    cut = await AttachmentStore(adapter, crm, AttachmentRules(max_bytes=len(raw) - 1000)).store_original(
        keeps, mail, ticket.id, "mail-key")
    assert cut.status == "skipped" and "once downloaded" in cut.reason and crm.created["document"] == 0
    stored = await AttachmentStore(adapter, crm, AttachmentRules()).store_original(keeps, mail, ticket.id, "mail-key")
    assert stored.status == "stored" and crm.files[stored.document_id] == raw
