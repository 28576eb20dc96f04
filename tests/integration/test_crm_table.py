"""The embedded CRM against a real Azurite, and the in-memory fake and the Lime CRM adapter (against
tools/sim/lime.py) held to the same behaviour."""
from __future__ import annotations

import asyncio
import json
import os
from datetime import datetime, timedelta, timezone

import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestError

from shared.adapters.crm_lime import LimeCrm
from shared.adapters.crm_table import TableCrm, translate_storage_error
from shared.adapters.storage_clients import StorageAccount
from shared.domain.errors import PermanentError, TransientError
from shared.domain.model import DocumentDraft, HistoryDraft, TicketDraft
from tests.fakes_crm import InMemoryCrm
from tests.integration.test_crm_lime import lime_account, lime_crm, lime_sim, sleeps  # noqa: F401 (fixtures)

T0 = datetime(2026, 3, 1, 9, 30, tzinfo=timezone.utc)


@pytest.fixture
async def account(azurite_connection):
    account = StorageAccount(azurite_connection, {})
    yield account
    await account.close()


@pytest.fixture
async def table_crm(account, unique):
    crm = TableCrm(account, prefix=f"crm{unique}", container=f"crm-{unique}")
    await crm.ensure()
    return crm


@pytest.fixture(params=["table", "memory", "lime"])
def crm(request):
    if request.param == "memory":
        return InMemoryCrm()
    return request.getfixturevalue("lime_crm" if request.param == "lime" else "table_crm")


async def _ticket(crm, key="mail-1", **kw):
    person = await crm.find_or_create_person("Jane.Doe@Example.com", "Doe, Jane")
    draft = TicketDraft(title=kw.pop("title", "Printer broken"), person_id=person, email="jane.doe@example.com",
                        message_ids=kw.pop("message_ids", ("<m1@example.com>",)), **kw)
    return person, await crm.create_ticket(draft, key)


# -- behaviour the fake must share ------------------------------------------------------------------
async def test_create_ticket_is_idempotent_by_key(crm):
    person, first = await _ticket(crm)
    _, again = await _ticket(crm, title="A different title")
    concurrent = await asyncio.gather(*(_ticket(crm) for _ in range(5)))
    assert {again.id, *(t.id for _, t in concurrent)} == {first.id}
    assert first.number == "1001" and first.status == "started"
    assert first.id == "hd1001" or isinstance(crm, LimeCrm)  # Lime: hd<its object id>
    assert first.person_id == person and first.title == "Printer broken"
    assert [t["number"] for t in await crm.list_tickets()] == ["1001"]
    _, other = await _ticket(crm, key="mail-2")
    assert [t["number"] for t in await crm.list_tickets()] == [other.number, "1001"]


async def test_create_ticket_reuses_a_number_reserved_earlier(crm):
    number = await crm.reserve_ticket_number()
    if isinstance(crm, LimeCrm):
        # Lime numbers tickets itself: nothing is reserved, and a retry finds the ticket by its key
        assert number == ""
        _, ticket = await _ticket(crm, number=number)
        _, retry = await _ticket(crm, number=number)
        assert retry.id == ticket.id and retry.number == ticket.number != ""
        return
    _, ticket = await _ticket(crm, number=number)
    _, retry = await _ticket(crm, number=number)
    assert ticket.number == retry.number == number
    with pytest.raises(PermanentError, match="already belongs"):
        await _ticket(crm, key="another-mail", number=number)


async def test_add_history_is_idempotent_by_key(crm):
    person, ticket = await _ticket(crm)
    draft = HistoryDraft(ticket_id=ticket.id, person_id=person, note="It jams", date=T0)
    ids = {await crm.add_history(draft, "mail-1"), await crm.add_history(draft, "mail-1")}
    ids |= set(await asyncio.gather(*(crm.add_history(draft, "mail-1") for _ in range(5))))
    assert len(ids) == 1
    detail = await crm.ticket_detail(ticket.number)
    assert [h["note"] for h in detail["history"]] == ["It jams"]


async def test_add_document_is_idempotent_by_key(crm):
    _, ticket = await _ticket(crm)
    draft = DocumentDraft(ticket_id=ticket.id, filename="../scan 1/räkning.pdf", content_type="application/pdf",
                          size=5, comment="from the mail")
    ids = {await crm.add_document(draft, b"%PDF-", "mail-1/att-1") for _ in range(2)}
    ids |= set(await asyncio.gather(*(crm.add_document(draft, b"%PDF-", "mail-1/att-1") for _ in range(5))))
    assert len(ids) == 1
    (doc_id,) = ids
    docs = (await crm.ticket_detail(ticket.number))["documents"]
    assert [(d["id"], d["filename"], d["size"], d["content_type"]) for d in docs] == [
        (doc_id, "../scan 1/räkning.pdf", 5, "application/pdf")]
    assert await crm.get_document_bytes(doc_id) == b"%PDF-"
    assert await crm.get_document_bytes("do-unknown") is None


async def test_concurrent_find_or_create_person_makes_one_person(crm):
    ids = await asyncio.gather(*(crm.find_or_create_person(" New.Person@Example.COM ", "Person, New")
                                 for _ in range(10)))
    assert len(set(ids)) == 1
    assert await crm.find_person("new.person@example.com") == ids[0]
    assert await crm.find_person("nobody@example.com") is None
    person = await crm.get_person(ids[0])
    assert (person["firstname"], person["lastname"], person["email"]) == ("New", "Person", "new.person@example.com")
    nameless = await crm.get_person(await crm.find_or_create_person("x.y@example.com", ""))
    assert nameless["firstname"] == "x.y"
    if isinstance(crm, TableCrm):
        rows = [r async for r in crm._t("person").query_entities("PartitionKey eq 'person'")]
        assert len(rows) == 2
    elif isinstance(crm, LimeCrm):
        assert len(crm.sim.objects("person")) == 2
    else:
        assert crm.created["person"] == 2


async def test_concurrent_reservations_are_distinct_and_gap_free(crm):
    if isinstance(crm, LimeCrm):
        assert await crm.reserve_ticket_number() == ""  # Lime assigns the number on create
        return
    numbers = await asyncio.gather(*(crm.reserve_ticket_number() for _ in range(20)))
    assert sorted(map(int, numbers)) == list(range(1001, 1021))


async def test_lookup_threading_and_status(crm):
    _, ticket = await _ticket(crm, message_ids=("<Root@Example.com>",))
    assert await crm.get_ticket(ticket.number) == ticket
    assert await crm.get_ticket("999999") is None
    found = await crm.find_ticket_by_message_ids(["<unknown@x>", " <root@EXAMPLE.com> "])
    assert found == ticket
    assert await crm.find_ticket_by_message_ids(["<reply@example.com>"]) is None
    await crm.add_message_ids(ticket.id, ["<reply@example.com>"])
    await crm.add_message_ids(ticket.id, ["<reply@example.com>"])
    assert (await crm.find_ticket_by_message_ids(["<reply@example.com>"])).id == ticket.id
    stored = (await crm.ticket_detail(ticket.number))["ticket"]["message_ids"]
    assert stored == ["root@example.com", "reply@example.com"]

    closed = await crm.set_ticket_status(ticket.number, "done")
    assert closed.status == "done" and (await crm.get_ticket(ticket.number)).status == "done"
    assert (await crm.ticket_detail(ticket.number))["ticket"]["enddate"]
    reopened = await crm.set_ticket_status(ticket.id, "started")
    assert reopened.status == "started" and (await crm.ticket_detail(ticket.number))["ticket"]["enddate"] is None
    with pytest.raises(ValueError, match="unknown helpdesk status 'closed'"):
        await crm.set_ticket_status(ticket.number, "closed")
    with pytest.raises(ValueError, match="unknown helpdesk status"):
        await _ticket(crm, key="mail-x", status="open")
    assert await crm.set_ticket_status("4242", "done") is None

    # a later ticket linked to the first wins the thread for the Message-IDs it brings
    _, newer = await _ticket(crm, key="mail-3", message_ids=("<followup@example.com>",), linked_ticket_id=ticket.id)
    assert (await crm.find_ticket_by_message_ids(["<root@example.com>", "<followup@example.com>"])).id == newer.id


async def test_limits_and_validation(crm):
    person, ticket = await _ticket(crm, title="x" * 300)
    assert len(ticket.title) == 128
    _, untitled = await _ticket(crm, key="mail-2", title="   ")
    assert untitled.title == "(no subject)"
    with pytest.raises(ValueError, match="history type"):
        await crm.add_history(HistoryDraft(ticket_id=ticket.id, person_id=person, note="n", date=T0, type="fax"), "k")
    with pytest.raises(PermanentError, match="no ticket"):
        await crm.add_history(HistoryDraft(ticket_id="hd9999", person_id=person, note="n", date=T0), "k")
    with pytest.raises(ValueError, match="idempotency key"):
        await crm.create_ticket(TicketDraft(title="t", person_id=person), "")


async def test_detail_has_history_in_date_order_and_json_safe(crm):
    # routing values: Lime writes them as helpdesk properties (helpdesk type 1 is the simulator's "Support")
    values = {"helpdesktype": 1} if isinstance(crm, LimeCrm) else {"helpdesktype": "support", "prio": 2}
    person, ticket = await _ticket(crm, description="first mail", values=values)
    company = await crm.find_or_create_company("Example AB", "Example.com", key="example.com")
    assert await crm.find_or_create_company("Example AB (dup)", "example.com", key="other") == company
    assert await crm.find_company_by_domain("EXAMPLE.com") == company
    await crm.set_person_company(person, company)
    for offset, kind in ((2, "sentemail"), (0, "receivedemail"), (1, "comment")):
        draft = HistoryDraft(ticket_id=ticket.id, person_id=person, note=f"note {offset}",
                             date=T0 + timedelta(minutes=offset), type=kind, message_ids=(f"<h{offset}@x>",))
        await crm.add_history(draft, f"h-{offset}")
    detail = await crm.ticket_detail(ticket.number)
    json.dumps(detail)
    assert [h["note"] for h in detail["history"]] == ["note 0", "note 1", "note 2"]
    assert [h["type"] for h in detail["history"]] == ["receivedemail", "comment", "sentemail"]
    assert detail["history"][0]["date"] == T0.isoformat()
    assert detail["person"]["company_id"] == company and detail["company"]["name"] == "Example AB"
    assert detail["ticket"]["description"] == "first mail"
    assert detail["ticket"]["values"] == values
    assert await crm.ticket_detail("31337") is None


# -- the real adapter only ----------------------------------------------------------------------------
async def test_long_note_and_description_round_trip_through_blobs(table_crm):
    person, ticket = await _ticket(table_crm, description="d" * 40_000)
    note = ("Skrivaren har slutat fungera 🖨️ – " * 3000)[:100_000]
    assert len(note) == 100_000
    await table_crm.add_history(HistoryDraft(ticket_id=ticket.id, person_id=person, note=note, date=T0), "long")
    detail = await table_crm.ticket_detail(ticket.number)
    assert detail["history"][0]["note"] == note
    assert detail["ticket"]["description"] == "d" * 40_000
    (row,) = [r async for r in table_crm._t("history").query_entities("PartitionKey eq @p",
                                                                      parameters={"p": ticket.id})]
    assert row["note_blob"] == f"history/{ticket.id}/{row['id']}.txt" and row["note"] == ""


async def test_three_megabyte_document_round_trips(table_crm):
    _, ticket = await _ticket(table_crm)
    data = os.urandom(3 * 1024 * 1024)
    doc_id = await table_crm.add_document(
        DocumentDraft(ticket_id=ticket.id, filename="dump.bin", content_type="application/octet-stream",
                      size=len(data)), data, "mail-1/big")
    assert await table_crm.get_document_bytes(doc_id) == data
    meta = await table_crm.get_document(doc_id)
    assert meta["size"] == len(data) and meta["filename"] == "dump.bin"
    blob = (await table_crm._get("document", ticket.id, doc_id))["blob"]
    assert blob == f"documents/{ticket.id}/{doc_id}/dump.bin"


async def test_a_crash_after_the_commitment_is_completed_by_the_retry(table_crm):
    person, ticket = await _ticket(table_crm)
    draft = HistoryDraft(ticket_id=ticket.id, person_id=person, note="half-written", date=T0)
    hid = await table_crm.add_history(draft, "crashy")
    commit = await table_crm._get("history", "_id", hid)
    await table_crm._t("history").delete_entity(commit["partition"], commit["row"])  # the data row never landed
    assert await table_crm.add_history(draft, "crashy") == hid
    assert [h["note"] for h in (await table_crm.ticket_detail(ticket.number))["history"]] == ["half-written"]


async def test_missing_tables_are_a_permanent_error_naming_ensure(account, unique):
    crm = TableCrm(account, prefix=f"nope{unique}", container=f"nope-{unique}")
    with pytest.raises(PermanentError, match="ensure"):
        await crm.get_ticket("1001")
    with pytest.raises(PermanentError, match="ensure"):
        await crm.find_or_create_person("a@b.se", "A")


def test_storage_errors_are_classified_without_leaking_details():
    secret = "AccountKey=c2VjcmV0"
    transient = translate_storage_error(ServiceRequestError(f"connection refused {secret}"), "create_ticket")
    assert isinstance(transient, TransientError) and "ServiceRequestError" in str(transient)
    assert secret not in str(transient)
    busy = HttpResponseError(message=f"busy {secret}")
    busy.status_code = 503
    assert isinstance(translate_storage_error(busy, "add_history"), TransientError)
    throttled = HttpResponseError(message="slow down")
    throttled.status_code = 429
    assert isinstance(translate_storage_error(throttled, "add_history"), TransientError)
    bad = HttpResponseError(message=f"bad {secret}")
    bad.status_code = 400
    permanent = translate_storage_error(bad, "add_document")
    assert isinstance(permanent, PermanentError) and "HttpResponseError" in str(permanent)
    assert secret not in str(permanent)
