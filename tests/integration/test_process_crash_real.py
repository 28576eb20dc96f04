"""The processor on real parts: Azurite (ledger, embedded CRM), the Graph simulator through
msgraph-sdk and azure-identity. The worker dies after each side-effecting call in turn; the queue
redelivers; every time the result is one ticket, one history note, the mail actioned."""
from __future__ import annotations

import uuid

import pytest

from shared.adapters.crm_table import TableCrm
from shared.adapters.graph import GraphAdapter, GraphClients
from shared.adapters.ledger_table import TableLedger
from shared.adapters.storage_clients import StorageAccount
from shared.config import Settings
from shared.domain.envelope import MessageJob
from shared.domain.model import PROCESSED, Mailbox
from shared.services.process import LEASE_SECONDS, MessageProcessor, ProcessDeps
from tests.fakes import FakeClock, FakeQueue, FakeRegistry
from tests.support.graph_world import running_graph
from tests.support.stack import TENANT, app_settings, make_mime
from tests.unit.test_process_service import Crash, CrashAfter


@pytest.fixture(scope="module")
def graph():
    with running_graph() as sim:
        yield sim


async def run_with_crash(azurite_connection, graph, crash_at: int, store_original: str = "none",
                         mime: bytes | None = None):
    address = f"box-{uuid.uuid4().hex[:6]}@contoso.example"
    user = graph.add_mailbox(address, tenant_id=TENANT)
    settings = Settings.from_env(app_settings(azurite_connection, graph, "http://127.0.0.1:1"))
    account = StorageAccount(azurite_connection, {})
    prefix = "crm" + uuid.uuid4().hex[:8]
    crm = TableCrm(account, prefix=prefix, container=prefix)
    ledger_name = "ledger" + uuid.uuid4().hex[:8]
    await account.ensure_tables(ledger_name)
    await crm.ensure()
    clock = FakeClock()
    ledger = TableLedger(account, clock, table=ledger_name)
    graph_adapter = GraphAdapter(GraphClients(settings))
    box = Mailbox(id=user.lower(), address=address, client="demo", tenant_id=TENANT, user_id=user.lower(),
                  store_original=store_original)
    mid = graph.deliver(address, mime or make_mime(to=address, subject="Crash test"))
    counter = {"n": 0, "crash_at": crash_at}
    deps = ProcessDeps(registry=FakeRegistry(box), ledger=CrashAfter(ledger, counter, {"save", "claim"}),
                       mail=CrashAfter(graph_adapter, counter, {"get_message", "stream_message", "delete_message"}),
                       crm=CrashAfter(crm, counter, {"find_or_create_person", "reserve_ticket_number",
                                                     "create_ticket", "add_document_file", "add_history"}),
                       queue=FakeQueue(), clock=clock)
    job = MessageJob(mailbox_id=box.id, message_id=mid, tenant_id=TENANT)
    try:
        await MessageProcessor(deps).run(job)
    except Crash:
        pass
    clock.advance(LEASE_SECONDS + 1)
    counter["crash_at"] = 0
    outcome = await MessageProcessor(deps).run(job)
    tickets = await crm.list_tickets()
    detail = await crm.ticket_detail(tickets[0]["number"]) if tickets else None
    if detail is not None:
        detail["eml"] = [await crm.get_document_bytes(d["id"]) for d in detail["documents"]
                         if d["content_type"] == "message/rfc822"]
    await account.close()
    await graph_adapter._clients.close()
    return outcome, tickets, detail, graph.messages(address, "Inbox"), counter["n"]


@pytest.mark.parametrize("crash_at", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
async def test_crash_between_steps_on_real_parts(azurite_connection, graph, crash_at):
    outcome, tickets, detail, inbox, _ = await run_with_crash(azurite_connection, graph, crash_at)
    assert outcome.status == PROCESSED, outcome
    assert len(tickets) == 1 and len(detail["history"]) == 1
    assert inbox == []


# claim, GET, person, number, saved (with the decision), ticket, the PDF's create, the MIME read,
# the .eml's create, note, CRM step saved, DELETE, finished
EML_STEPS = 13


@pytest.mark.parametrize("crash_at", range(1, EML_STEPS + 1))
async def test_crash_between_steps_of_a_mailbox_that_keeps_originals(azurite_connection, graph, crash_at):
    """store_original: eml adds the MIME read and the .eml's create to the steps: wherever the worker
    dies, the redelivery leaves one ticket, one note and one .eml, the MIME byte for byte."""
    from tests.fixtures.mail import mime as m
    raw = m.delivered(m.outlook("Anna <anna@acme.example>", "box@contoso.example", "Crash test", "Body.",
                                message_id=m.outlook_id(f"crash-eml-{crash_at}"),
                                attachments=[("scan.pdf", "application/pdf", m.blob(1_200_000, "scan"))]))
    outcome, tickets, detail, inbox, calls = await run_with_crash(azurite_connection, graph, crash_at, "eml", raw)
    assert outcome.status == PROCESSED, outcome
    assert len(tickets) == 1 and len(detail["history"]) == 1 and inbox == []
    assert detail["eml"] == [raw], crash_at
    if crash_at == 1:  # the sweep reaches every step: a clean run makes EML_STEPS calls, then a redelivery's claim
        clean = await run_with_crash(azurite_connection, graph, 0, "eml", raw.replace(b"Crash test", b"Clean run"))
        assert clean[0].status == PROCESSED and clean[4] == EML_STEPS + 1
