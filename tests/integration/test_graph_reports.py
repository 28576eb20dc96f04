"""A bounce read through the real Graph adapter (msgraph-sdk, azure-identity) against the Graph
simulator: the report's MIME (`$value`) is read only for a delivery report, only once, and only as
far as needed (a large original is cut off, never downloaded whole); the Graph requests a bounce costs
are counted against a plain mail's."""
from __future__ import annotations

import asyncio
import uuid

import pytest

from shared.adapters.graph import GraphAdapter
from shared.domain import reports
from shared.domain.envelope import MessageJob
from shared.domain.errors import MailNotFound
from shared.domain.model import PROCESSED, SKIPPED, Mailbox
from shared.services.process import MessageProcessor, ProcessDeps
from tests.fakes import FakeClock, FakeLedger, FakeQueue, FakeRegistry
from tests.fakes_crm import InMemoryCrm
from tests.fixtures.mail import mime as m
from tests.support.graph_world import graph_adapter, new_mailbox, running_graph
from tests.support.stack import TENANT
from tools.sim.graph import GraphSim

ANNA = "Anna Andersson <anna.andersson@acme.example>"


@pytest.fixture(scope="module")
def graph():
    with running_graph() as sim:
        yield sim


@pytest.fixture
async def world(graph):
    yield graph, graph_adapter(graph), new_mailbox(graph)


async def logged(graph: GraphSim, since: int, made: int) -> list[str]:
    """The Graph calls logged since `since` ("METHOD path-after-the-user"), once all `made` are in."""
    for _ in range(500):
        calls = [f"{r['method']} {r['path'].split('/users/', 1)[-1].split('/', 1)[-1]}"
                 for r in graph.requests.entries(since_seq=since) if "/users/" in r["path"]]
        if len(calls) >= made:
            return calls
        await asyncio.sleep(0.01)
    raise AssertionError(f"the simulator logged {len(calls)} of {made} requests")


def last_seq(graph: GraphSim) -> int:
    return graph.requests.entries()[-1]["seq"] if len(graph.requests) else 0


def bounce_of(box_address: str, original_to: str, request_id: str, big: bool = False) -> bytes:
    reply = m.outlook(f"Support <{box_address}>", original_to, "RE: Invoice missing [1001]", "Attached again.",
                      message_id=m.outlook_id("graph-reports/reply"), in_reply_to=request_id, references=[request_id],
                      attachments=[("invoice.pdf", "application/pdf", m.blob(900_000, "inv") if big else m.PDF)])
    return m.ndr("Mail Delivery System <MAILER-DAEMON@mx.acme.example>", box_address,
                 "Undelivered Mail Returned to Sender", "Your message could not be delivered.", original_to, reply,
                 message_id=m.server_id(f"graph-reports/{uuid.uuid4()}"), status="5.2.2",
                 diagnostic="smtp; 552 5.2.2 Mailbox full")


async def test_the_report_is_read_from_value_and_cut_at_the_limit(world):
    graph, adapter, box = world
    raw = bounce_of(box.address, "anna.andersson@acme.example", "<c1@acme.example>", big=True)
    assert len(raw) > reports.MAX_REPORT_BYTES * 3
    message_id = graph.deliver(box.address, raw, notify=False)
    since = last_seq(graph)
    head, truncated = await adapter.read_message_mime(box, message_id, reports.MAX_REPORT_BYTES)
    assert truncated and head == raw[:reports.MAX_REPORT_BYTES]
    assert (await logged(graph, since, 1)) == [f"GET messages/{message_id}/$value"]
    report = reports.parse_report(head, truncated)
    assert report.original_refs[1] == "<c1@acme.example>" and report.outcome == reports.FAILED
    whole, cut = await adapter.read_message_mime(box, message_id, len(raw) + 1)
    assert whole == raw and not cut
    with pytest.raises(MailNotFound):
        await adapter.read_message_mime(box, "AAMkAGnope", 1024)


async def process(graph: GraphSim, adapter: GraphAdapter, box: Mailbox, crm: InMemoryCrm, clock: FakeClock,
                  raw: bytes) -> tuple[object, list[str]]:
    message_id = graph.deliver(box.address, raw, notify=False)
    warm_since, warm_before = last_seq(graph), adapter.stats["requests"]
    await adapter.inbox_folder_id(box)  # cached per worker: not part of any one mail's cost
    # its GET (the first time) is logged just after it was answered: in the log before counting starts
    await logged(graph, warm_since, adapter.stats["requests"] - warm_before)
    since, before = last_seq(graph), adapter.stats["requests"]
    processor = MessageProcessor(ProcessDeps(registry=FakeRegistry(box), ledger=FakeLedger(clock), mail=adapter,
                                             crm=crm, queue=FakeQueue(), clock=clock))
    outcome = await processor.run(MessageJob(mailbox_id=box.id, message_id=message_id, tenant_id=TENANT))
    calls = await logged(graph, since, adapter.stats["requests"] - before)
    return outcome, [c.replace(message_id, "{id}") for c in calls]


async def test_the_graph_requests_a_bounce_costs(world):
    graph, adapter, box = world
    crm, clock = InMemoryCrm(), FakeClock()
    request_id = m.outlook_id(f"graph-reports/request/{uuid.uuid4()}")
    first, plain_calls = await process(graph, adapter, box, crm, clock,
                                       m.outlook(ANNA, box.address, "Invoice missing", "Where is it?",
                                                 message_id=request_id))
    assert first.status == PROCESSED
    assert plain_calls == ["GET messages/{id}", "DELETE messages/{id}"]  # a plain mail: 2

    bounce, bounce_calls = await process(graph, adapter, box, crm, clock,
                                         bounce_of(box.address, "anna.andersson@acme.example", request_id, big=True))
    assert bounce.status == PROCESSED and bounce.ticket_number == first.ticket_number
    assert bounce.data["action"] == "history-only" and bounce.data["plan"]["threaded_by"] == "bounce-original"
    # the message, the start of its MIME (the report and the original's headers), the mailbox action:
    # the original's 900 KB attachment and the report's own parts are never fetched
    assert bounce_calls == ["GET messages/{id}", "GET messages/{id}/$value", "DELETE messages/{id}"], bounce_calls

    unknown, unknown_calls = await process(graph, adapter, box, crm, clock,
                                           bounce_of(box.address, "x@partner.example", "<never@seen.example>"))
    assert unknown.status == SKIPPED and "on no ticket" in unknown.reason
    assert unknown_calls == ["GET messages/{id}", "GET messages/{id}/$value", "DELETE messages/{id}"]
