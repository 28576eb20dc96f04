"""The Lime CRM adapter against the Lime simulator (tools/sim/lime.py) and a real Azurite (locks).

The shared CRM behaviour (idempotency, threading, statuses, details) runs against this adapter from
tests/integration/test_crm_table.py, which imports the fixtures below. Here: what is Lime's own:
the wire (HAL, x-api-key, query API, file then document), retries and their limits, lost answers
and crashes between writes, field lengths, the schema check, the cross-worker create lock, the
rate limiter, TLS with OUTBOUND_CA_BUNDLE, and the simulator itself. No test asserts on time: the
adapter's waits go to a recording `sleep`.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from shared.adapters.crm_lime import (
    CreateRecords, LimeCrm, LimeNames, LimeRejected, MemoryRecordTable, SlidingWindowLimiter, TableRecordTable,
    fit_message_ids, parse_message_ids,
)
from shared.adapters.keys import exact_hash
from shared.adapters.storage_clients import StorageAccount
from shared.config import ConfigError, Settings
from shared.domain.errors import PermanentError, TransientError
from shared.domain.model import DocumentDraft, HistoryDraft, PersonRef, TicketDraft
from tools.sim.lime import DEMO_API_KEY, LimeSim

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 1, 9, 30, tzinfo=timezone.utc)


class Sleeps:
    """The adapter's sleep: records the waits, does not wait."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


# -- fixtures (test_crm_table.py imports them) ----------------------------------------------------------
@pytest.fixture
def lime_sim():
    sim = LimeSim().start()
    yield sim
    sim.stop()


@pytest.fixture
async def lime_account(azurite_connection):
    account = StorageAccount(azurite_connection, {})
    yield account
    await account.close()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def make_lime(sim: LimeSim, account: StorageAccount, unique: str, sleeps: Sleeps | None = None, **kw) -> LimeCrm:
    kw.setdefault("records", TableRecordTable(account, table=f"limerecords{unique}"))
    return LimeCrm(sim.lime_url, sim.api_key, sleep=sleeps or Sleeps(), **kw)


@pytest.fixture
async def lime_crm(lime_sim, lime_account, unique, sleeps):
    crm = make_lime(lime_sim, lime_account, unique, sleeps)
    await crm.ensure()
    crm.sim = lime_sim  # for tests that look at what Lime holds
    yield crm
    await crm.close()


def writes(sim: LimeSim) -> list[tuple[str, str]]:
    return [(r["method"], r["path"].split("/api/v1/", 1)[1]) for r in sim.calls if r["method"] != "GET"]


async def new_ticket(crm: LimeCrm, key: str = "mail-1", **kw):
    person = await crm.find_or_create_person("Jane.Doe@Example.com", "Doe, Jane")
    draft = TicketDraft(title=kw.pop("title", "Printer broken"), person_id=person, email="jane.doe@example.com",
                        message_ids=kw.pop("message_ids", ("<m1@example.com>",)), **kw)
    return person, await crm.create_ticket(draft, key)


# -- the wire -------------------------------------------------------------------------------------------
async def test_objects_land_in_lime_as_its_rest_api_expects(lime_crm, lime_sim):
    person, ticket = await new_ticket(lime_crm)
    company = await lime_crm.find_or_create_company("Example AB", "example.com", key="example.com",
                                                    email="info@example.com", website="https://www.example.com/")
    await lime_crm.set_person_company(person, company)
    hid = await lime_crm.add_history(HistoryDraft(ticket_id=ticket.id, person_id=person, note="It jams", date=T0,
                                                  company_id=company), "mail-1")
    did = await lime_crm.add_document(DocumentDraft(ticket_id=ticket.id, filename="räkning 1.pdf",
                                                    content_type="application/pdf", size=5), b"%PDF-", "mail-1/a1")

    (helpdesk,) = lime_sim.objects("helpdesk")
    assert ticket.id == f"hd{helpdesk['_id']}" and ticket.number == str(helpdesk["helpdesknumber"]) == "1001"
    assert helpdesk["title"] == "Printer broken" and helpdesk["helpdeskstatus"] == "started"
    assert helpdesk["person"] == int(person) and helpdesk["email"] == "jane.doe@example.com"
    assert helpdesk["inboxkey"] == exact_hash("mail-1", 40)  # a hash of the key, never the key
    assert helpdesk["inboxmessageids"] == "<m1@example.com>" and helpdesk["startdate"]
    (pers,) = lime_sim.objects("person")
    assert (pers["firstname"], pers["lastname"], pers["email"], pers["company"]) == (
        "Jane", "Doe", "jane.doe@example.com", int(company))
    (comp,) = lime_sim.objects("company")
    assert (comp["name"], comp["www"], comp["email"]) == ("Example AB", "https://www.example.com/", "info@example.com")
    (note,) = lime_sim.objects("history")
    assert str(note["_id"]) == hid and note["type"] == "receivedemail" and note["note"] == "It jams"
    assert (note["helpdesk"], note["person"], note["company"]) == (helpdesk["_id"], int(person), int(company))
    assert note["date"] == T0.isoformat()
    (doc,) = lime_sim.objects("document")
    assert str(doc["_id"]) == did and doc["helpdesk"] == helpdesk["_id"] and doc["type"] == "email"
    assert lime_sim.files[doc["document"]]["filename"] == "räkning 1.pdf"
    assert lime_sim.file_bytes(doc["document"]) == b"%PDF-"
    assert await lime_crm.get_document_bytes(did) == b"%PDF-"
    assert (await lime_crm.get_document(did))["content_type"] == "application/pdf"

    log = lime_sim.calls
    assert all(r["headers"].get("accept") == ("*/*" if r["path"].endswith("/contents/") else "application/hal+json")
               for r in log)
    assert all("x-api-key" not in r["headers"] for r in log)  # never logged by the sim either
    assert {r["path"].split("/api/v1/", 1)[1] for r in log if r["method"] == "GET"} <= {
        "limetype/person/", "limetype/company/", "limetype/helpdesk/", "limetype/history/", "limetype/document/",
        "query/", f"limeobject/person/{person}/", f"limeobject/document/{did}/", f"file/{doc['document']}/",
        f"file/{doc['document']}/contents/"}
    assert [w for w in writes(lime_sim) if w[0] == "POST"] == [
        ("POST", "limeobject/person/"), ("POST", "limeobject/helpdesk/"), ("POST", "limeobject/company/"),
        ("POST", "limeobject/history/"), ("POST", "file/"), ("POST", "limeobject/document/")]
    upload = next(r for r in log if r["path"].endswith("/file/"))
    assert upload["headers"]["content-disposition"] == ";filename*=\"UTF-8''r%C3%A4kning%201.pdf\""


async def test_a_new_ticket_costs_lime_only_its_creates(lime_crm, lime_sim):
    """Lime is asked nothing before a create: our records prove it was never made (no key query).
    A known sender: one lookup (person and domain in one query), the ticket, the note; again within
    the cache's minute: no lookup. A new sender adds the person's POST (the lookup said it was not
    there a moment ago). A redelivery of a mail: nothing at all."""
    await lime_crm.check_schema()
    await lime_crm.find_or_create_person("known@example.com", "Known")
    lime_crm.lookups.clear()

    async def mail(sender: str, key: str) -> list[str]:
        lime_sim.calls.clear()
        found, _ = await lime_crm.lookup_sender(sender, True)
        person = found.id if found else await lime_crm.find_or_create_person(sender, "Someone")
        ticket = await lime_crm.create_ticket(TicketDraft(title="Help", person_id=person,
                                                          message_ids=(f"<{key}@x>",)), key)
        await lime_crm.add_history(HistoryDraft(ticket_id=ticket.id, person_id=person, note="Body", date=T0), key)
        return [f"{c['method']} {c['path'].split('/api/v1/', 1)[1]}" for c in lime_sim.calls]

    assert await mail("known@example.com", "k1") == [
        "GET query/", "POST limeobject/helpdesk/", "POST limeobject/history/"]
    assert await mail("known@example.com", "k3") == ["POST limeobject/helpdesk/", "POST limeobject/history/"]
    assert await mail("new@example.org", "k2") == [
        "GET query/", "POST limeobject/person/", "POST limeobject/helpdesk/", "POST limeobject/history/"]
    again = await mail("new@example.org", "k2")  # a redelivery: the ticket as it is now, nothing created
    ticket = next(o for o in lime_sim.objects("helpdesk") if o["inboxkey"] == exact_hash("k2", 40))
    assert again == [f"GET limeobject/helpdesk/{ticket['_id']}/"]  # the person and its domain: cached
    assert [len(lime_sim.objects(t)) for t in ("person", "helpdesk", "history")] == [2, 3, 3]


async def test_a_wrong_api_key_is_a_permanent_error_that_names_the_setting_not_the_key(lime_sim):
    crm = LimeCrm(lime_sim.lime_url, "wrong-key-123456", sleep=Sleeps())
    with pytest.raises(PermanentError, match="LIME_CRM_API_KEY") as err:
        await crm.get_ticket("1001")
    assert "wrong-key-123456" not in str(err.value) and err.value.status == 401
    await crm.close()
    with pytest.raises(PermanentError, match="LIME_CRM_URL is not set"):
        await LimeCrm("", "k").get_ticket("1")


# -- failures -------------------------------------------------------------------------------------------
async def test_short_retry_after_is_waited_in_place_and_a_long_one_is_raised(lime_crm, lime_sim, sleeps):
    _, ticket = await new_ticket(lime_crm)
    lime_sim.faults.add(429, path_regex=r"/query/$", retry_after=2, count=1)
    assert (await lime_crm.get_ticket(ticket.number)).id == ticket.id
    assert sleeps.waits == [2.0]
    lime_sim.faults.add(429, path_regex=r"/query/$", retry_after=120, count=1)
    with pytest.raises(TransientError) as err:
        await lime_crm.get_ticket(ticket.number)
    assert err.value.retry_after == 120 and sleeps.waits == [2.0]
    lime_sim.faults.add(503, path_regex=r"/query/$", count=-1)
    with pytest.raises(TransientError, match="503") as err:
        await lime_crm.get_ticket(ticket.number)
    assert len(sleeps.waits) == 1 + 3  # four attempts, three backoffs
    lime_sim.faults.clear()


async def test_5xx_is_retried_and_an_ambiguous_create_is_resolved_by_its_key(lime_crm, lime_sim, sleeps):
    lime_sim.faults.add(503, path_regex=r"/query/$", count=2)
    person = await lime_crm.find_or_create_person("a@example.com", "A")
    assert len(sleeps.waits) == 2
    lime_sim.faults.add(502, method="PUT", count=1)
    await lime_crm.set_person_company(person, "")
    # a 500 on the POST may or may not have been committed: the key query decides, never a blind repeat
    lime_sim.faults.add(500, method="POST", path_regex=r"limeobject/helpdesk/$", count=1)
    ticket = await lime_crm.create_ticket(TicketDraft(title="t", person_id=person), "k")
    assert len(lime_sim.objects("helpdesk")) == 1 and ticket.number == "1001"


async def test_4xx_is_permanent_with_limes_message_and_not_retried(lime_crm, lime_sim, sleeps):
    person = await lime_crm.find_or_create_person("a@example.com", "A")
    lime_sim.calls.clear()
    with pytest.raises(LimeRejected, match="has no property 'prio'") as err:
        await lime_crm.create_ticket(TicketDraft(title="t", person_id=person, values={"prio": 2}), "k")
    assert err.value.status == 400 and sleeps.waits == []
    assert [w for w in writes(lime_sim)] == [("POST", "limeobject/helpdesk/")]
    with pytest.raises(LimeRejected, match="no helpdesktype with id 999"):
        await lime_crm.create_ticket(TicketDraft(title="t", person_id=person, values={"helpdesktype": 999}), "k2")


async def test_answers_lost_after_the_commit_make_no_duplicates(lime_crm, lime_sim):
    for path in ("limeobject/person/", "limeobject/helpdesk/", "limeobject/history/", "file/",
                 "limeobject/document/"):
        lime_sim.lose_responses("POST", path + "$")
    person, ticket = await new_ticket(lime_crm)
    await lime_crm.add_history(HistoryDraft(ticket_id=ticket.id, person_id=person, note="n", date=T0), "mail-1")
    await lime_crm.add_document(DocumentDraft(ticket_id=ticket.id, filename="a.txt", content_type="text/plain",
                                              size=1), b"a", "mail-1/a")
    assert [len(lime_sim.objects(t)) for t in ("person", "helpdesk", "history", "document")] == [1, 1, 1, 1]
    assert len([r for r in lime_sim.calls if r["lost"]]) == 5
    # the lost upload is re-sent (Lime cannot be asked for it): one orphan file, no duplicate document
    assert len(lime_sim.files) == 2


@pytest.mark.parametrize("k", range(1, 8))
async def test_a_crash_between_any_two_writes_then_a_retry_makes_no_duplicates(lime_crm, lime_sim, k):
    """The mail's writes: person, ticket, the long note's file and document, the note, the
    attachment's file and document. The worker dies at write k (writes 1..k-1 are in Lime), the
    queue redelivers, the mail runs again (twice): one of everything."""
    long_note = "Skrivaren har slutat fungera. " * 300  # over 4,000: a document plus the cut note

    async def one_mail() -> None:
        person = await lime_crm.find_or_create_person("crash@example.com", "Crash Test")
        ticket = await lime_crm.create_ticket(TicketDraft(title="Crash", person_id=person,
                                                          message_ids=("<crash@x>",)), "crash")
        await lime_crm.add_history(HistoryDraft(ticket_id=ticket.id, person_id=person, note=long_note, date=T0),
                                   "crash")
        await lime_crm.add_document(DocumentDraft(ticket_id=ticket.id, filename="log.txt", content_type="text/plain",
                                                  size=3), b"log", "crash/att-1")

    lime_sim.faults.add(None, method="POST", count=k - 1)  # status None: passes through, consumed
    lime_sim.faults.add(500, method="POST", count=-1)
    with pytest.raises(TransientError):
        await one_mail()
    assert len([r for r in lime_sim.calls if r["method"] == "POST" and r["status"] < 300]) == k - 1
    lime_sim.faults.clear()
    await one_mail()
    await one_mail()
    assert [len(lime_sim.objects(t)) for t in ("person", "helpdesk", "history", "document")] == [1, 1, 1, 2]
    (note,) = lime_sim.objects("history")
    docs = {d["_id"]: d for d in lime_sim.objects("document")}
    assert lime_sim.file_bytes(docs[note["document"]]["document"]).decode() == long_note


# -- limits -----------------------------------------------------------------------------------------------
async def test_titles_are_clipped_and_a_long_note_keeps_its_full_text_as_a_document(lime_crm, lime_sim):
    person = await lime_crm.find_or_create_person("long@example.com", "Bartholomew-Maximilian Featherstonehaugh "
                                                  "von Wolfeschlegelsteinhausenbergerdorff")
    (pers,) = lime_sim.objects("person")
    assert len(pers["firstname"]) <= 32 and len(pers["lastname"]) <= 50
    ticket = await lime_crm.create_ticket(TicketDraft(title="Å" * 300, person_id=person), "long")
    assert ticket.title == "Å" * 128 and lime_sim.objects("helpdesk")[0]["title"] == "Å" * 128
    note = "<p>" + "Lång rad med text 🖨️. " * 600 + "</p>"
    assert len(note) > 10_000
    hid = await lime_crm.add_history(HistoryDraft(ticket_id=ticket.id, person_id=person, note=note, date=T0), "long")
    (stored,) = lime_sim.objects("history")
    assert str(stored["_id"]) == hid and len(stored["note"]) <= 4000
    assert stored["note"].startswith("<p>Lång rad") and "the full text (" in stored["note"]
    doc = {d["_id"]: d for d in lime_sim.objects("document")}[stored["document"]]
    assert lime_sim.file_bytes(doc["document"]).decode("utf-8") == note
    assert lime_sim.files[doc["document"]]["filename"].endswith(".html")
    detail = await lime_crm.ticket_detail(ticket.number)
    assert detail["history"][0]["document_id"] == str(doc["_id"])
    assert [d["id"] for d in detail["documents"]] == [str(doc["_id"])]
    # Lime requires a note: an empty body is stored as a marker, not refused
    await lime_crm.add_history(HistoryDraft(ticket_id=ticket.id, person_id=person, note="  ", date=T0), "empty")
    assert lime_sim.objects("history")[-1]["note"] == "(no text)"
    # a long description is cut; its full text is a document too
    _, described = await new_ticket(lime_crm, key="desc", description="d" * 3000)
    stored_desc = next(h for h in lime_sim.objects("helpdesk") if f"hd{h['_id']}" == described.id)["description"]
    assert len(stored_desc) <= 1024 and any(lime_sim.files[d["document"]]["filename"] == "description.txt"
                                            for d in lime_sim.objects("document"))


async def test_the_simulator_enforces_limes_field_rules(lime_sim):
    async with httpx.AsyncClient(base_url=lime_sim.lime_url + "/api/v1/",
                                 headers={"x-api-key": DEMO_API_KEY}) as http:
        async def post(limetype: str, body: dict) -> tuple[int, str]:
            r = await http.post(f"limeobject/{limetype}/", json=body)
            return r.status_code, r.json().get("message", "") if r.status_code >= 400 else ""

        assert await post("helpdesk", {"title": "x" * 129}) == (400, "Value for 'helpdesk.title' is too long "
                                                                     "(129 characters, the maximum is 128).")
        assert (await post("history", {"type": "receivedemail", "date": T0.isoformat()}))[1] == \
            "Property 'history.note' is required."
        assert "not a valid option" in (await post("helpdesk", {"title": "t", "helpdeskstatus": "open"}))[1]
        assert "no person with id 4242" in (await post("helpdesk", {"title": "t", "person": 4242}))[1]
        assert "cannot be written" in (await post("helpdesk", {"title": "t", "history": [1]}))[1]
        assert "has no property 'nope'" in (await post("person", {"firstname": "a", "nope": 1}))[1]
        assert (await post("person", {"firstname": "x" * 33}))[0] == 400
        ok = await http.post("limeobject/person/", json={"firstname": "Ann", "email": "ANN@x.se"})
        assert ok.status_code == 201 and ok.json()["_links"]["relation_helpdesk"]["href"].endswith(
            f"/limeobject/person/{ok.json()['_id']}/helpdesk/")
        q = {"limetype": "person", "responseFormat": {"object": {"_id": "", "email": ""}},
             "filter": {"op": "AND", "exp": [{"key": "email", "op": "=", "exp": "ann@X.SE"},
                                             {"key": "firstname", "op": "=?", "exp": "an"}]}}
        found = await http.get("query/", params={"q": json.dumps(q)})
        assert found.json() == {"objects": [{"_id": ok.json()["_id"], "email": "ANN@x.se"}]}
        bad = await http.get("query/", params={"q": json.dumps({**q, "responseFormat": {"object": {"helpdesk": ""}}})})
        assert bad.status_code == 400 and "responseFormat does not support" in bad.json()["message"]
        ht = await http.post("limeobject/helpdesk/", json={"title": "t", "helpdeskstatus": "done"})
        assert ht.json()["helpdeskstatus"]["key"] == "done" and ht.json()["helpdesknumber"] == 1001
        assert (await http.get("limeobject/person/", headers={"x-api-key": "nope"})).status_code == 401


# -- schema ------------------------------------------------------------------------------------------------
async def test_the_schema_check_reports_what_is_missing(lime_sim, lime_account, unique):
    crm = make_lime(lime_sim, lime_account, unique)
    report = await crm.check_schema()
    assert report.ok and report.problems == [] and report.warnings == []

    lime_sim.remove_property("helpdesk", "inboxkey")
    lime_sim.remove_property("helpdesk", "inboxmessageids")
    lime_sim.add_property("helpdesk", {"name": "region", "type": "string", "required": True, "length": 32})
    lime_sim.schema["helpdesk"] = [p if p["name"] != "helpdeskstatus" else
                                   {**p, "options": [o for o in p["options"] if o["key"] != "parked"]}
                                   for p in lime_sim.schema["helpdesk"]]
    odd = make_lime(lime_sim, lime_account, unique, names=LimeNames(
        helpdesk_number="ticketno", history_types={"receivedemail": "email_in", "sentemail": "sentemail",
                                                   "comment": "comment"}))
    report = await odd.check_schema()
    assert report.problems == [
        "helpdesk.ticketno (set by LIME_PROP_HELPDESK_NUMBER) does not exist",
        "helpdesk.helpdeskstatus has no active option 'parked' (set by LIME_STATUS_PARKED); its options: done, started",
        "history.type has no active option 'email_in' (set by LIME_HISTORY_TYPE_RECEIVED); its options: comment, "
        "customervisit, noanswer, receivedemail, salescall, sentemail, talkedto",
    ]
    assert report.warnings == [
        "helpdesk.inboxkey (LIME_KEY_PROPERTY) does not exist: an interrupted create of a helpdesk cannot be "
        "resolved: a crash or timeout between Lime's create and our record of it makes a duplicate ticket on the retry",
        "helpdesk.inboxmessageids (LIME_PROP_MESSAGE_IDS) does not exist: replies to tickets from before the inbox "
        "indexed them thread by the subject tag only, not by In-Reply-To/References",
        "helpdesk.region is required and the inbox does not set it: creates fail unless the mailbox's routing "
        "values set it",
    ]
    with pytest.raises(PermanentError, match="ticketno"):
        await odd.find_or_create_person("a@example.com", "A")
    assert lime_sim.objects("person") == []  # nothing written against a schema that does not fit
    await crm.close()
    await odd.close()


async def test_without_the_key_property_duplicates_are_possible(lime_sim, lime_account, unique):
    """What docs/lime.md says is lost: our records still make a create once, but an attempt whose
    outcome is unknown (Lime's answer lost after its commit) cannot be resolved by asking Lime, so
    the retry makes a second ticket."""
    lime_sim.remove_property("helpdesk", "inboxkey")
    crm = make_lime(lime_sim, lime_account, unique)
    person = await crm.find_or_create_person("a@example.com", "A")
    first = await crm.create_ticket(TicketDraft(title="t", person_id=person), "same-mail")
    again = await crm.create_ticket(TicketDraft(title="t", person_id=person), "same-mail")
    assert first.id == again.id and len(lime_sim.objects("helpdesk")) == 1  # the record answers
    lime_sim.lose_responses("POST", r"limeobject/helpdesk/$")
    with pytest.raises(TransientError, match="a retry may create it twice"):
        await crm.create_ticket(TicketDraft(title="t", person_id=person), "lost-answer")
    await crm.create_ticket(TicketDraft(title="t", person_id=person), "lost-answer")
    assert len(lime_sim.objects("helpdesk")) == 3
    assert any("helpdesk.inboxkey" in w for w in crm.schema_report.warnings)
    # history still has its key property: an unknown outcome is resolved by asking, still once
    lime_sim.lose_responses("POST", r"limeobject/history/$")
    for _ in range(2):
        await crm.add_history(HistoryDraft(ticket_id=first.id, person_id=person, note="n", date=T0), "same-mail")
    assert len(lime_sim.objects("history")) == 1
    await crm.close()


# -- concurrency ---------------------------------------------------------------------------------------------
async def test_concurrent_first_mails_of_a_new_sender_in_two_workers_make_one_person(lime_sim, lime_account, unique):
    """Two adapters (two workers: separate in-process locks) share only the Table lock. The sim's
    latency keeps every query in flight while the others start, so without the lock each would
    find no person and create one."""
    lime_sim.latency_ms = 20
    workers = [make_lime(lime_sim, lime_account, unique) for _ in range(2)]
    await workers[0].ensure()
    ids = await asyncio.gather(*(workers[i % 2].find_or_create_person("New.Sender@Example.com", "New Sender")
                                 for i in range(8)))
    assert len(set(ids)) == 1 and len(lime_sim.objects("person")) == 1
    tickets = await asyncio.gather(*(workers[i % 2].create_ticket(TicketDraft(title="t", person_id=ids[0]), "one")
                                     for i in range(6)))
    assert len({t.id for t in tickets}) == 1 and len(lime_sim.objects("helpdesk")) == 1
    for w in workers:
        await w.close()


async def test_create_records_exclude_other_workers_and_are_taken_over_when_their_holder_died(lime_account, unique):
    """The record is the lock and the idempotency proof: the first claim inserts it (NEW: create
    without asking Lime), a second worker waits while it is held and then reads the created id
    (DONE); a holder that died leaves it `creating` until its lease ends, then the next worker takes
    it over (UNKNOWN: ask Lime first)."""
    table = TableRecordTable(lime_account, table=f"limerecords{unique}")
    await table.ensure()
    a = CreateRecords(table, lease_seconds=60, wait_seconds=0.3)
    b = CreateRecords(table, lease_seconds=60, wait_seconds=0.3)
    (mine,) = await a.claim(["person|x@example.com"], "worker-a")
    assert mine.outcome == "new"
    with pytest.raises(TransientError, match="another worker is creating"):
        await b.claim(["person|x@example.com"], "worker-b")
    other, third = await b.claim(["person|other@example.com", "helpdesk|k"], "worker-b")  # one transaction
    assert other.outcome == third.outcome == "new"
    await a.write([a.created_row(mine, "1042", {"company": "7"})])
    (seen,) = await b.claim(["person|x@example.com"], "worker-b")
    assert (seen.outcome, seen.oid, seen.extra) == ("done", "1042", {"company": "7"})
    # a holder that died: its row stays until its lease runs out, then the next worker takes it over
    (dead,) = await a.claim(["helpdesk|dead"], "worker-dead")
    late = CreateRecords(table, clock=lambda: datetime.now(timezone.utc) + timedelta(seconds=61), wait_seconds=0.3)
    # (the lease is 30 s: 61 s on, every record claimed above has run out)
    (taken,) = await late.claim(["helpdesk|dead"], "worker-c")
    assert taken.outcome == "unknown"
    (again,) = await late.claim(["helpdesk|k"], "worker-c")  # its holder gone quiet for its lease
    assert again.outcome == "unknown"
    # a holder that gives up without creating (a definite error) frees it for a NEW claim
    await late.write([late.released_row(again, None)])
    (fresh,) = await a.claim(["helpdesk|k"], "worker-a")
    assert fresh.outcome == "new"


async def test_a_person_whose_create_was_interrupted_is_asked_for_even_right_after_a_lookup(lime_sim, lime_account,
                                                                                           unique):
    """A worker looked the sender up (no person), created it, and died before recording it. Its
    retry must not trust the lookup it made before: the record's outcome is unknown, so Lime is
    asked, and the person is not created twice."""
    clock = [datetime.now(timezone.utc)]
    crm = make_lime(lime_sim, lime_account, unique, record_clock=lambda: clock[0])
    await crm.ensure()
    assert (await crm.lookup_sender("late@example.com", True))[0] is None  # "absent", a moment ago
    (dying,) = await crm._records.claim(["person|late@example.com"], "copy-a")
    made = lime_sim.create("person", {"firstname": "Late", "email": "late@example.com"})  # its POST, unrecorded
    clock[0] += timedelta(seconds=31)  # its lease runs out
    assert await crm.find_or_create_person("late@example.com", "Late") == str(made["_id"])
    assert len(lime_sim.objects("person")) == 1 and dying.outcome == "new"
    await crm.close()


async def test_records_and_the_index_expire_and_an_address_is_erased_from_the_index(lime_sim, lime_account, unique):
    clock = [datetime.now(timezone.utc)]
    crm = make_lime(lime_sim, lime_account, unique, record_clock=lambda: clock[0])
    await crm.ensure()
    person = await crm.find_or_create_person("jane@example.com", "Jane")
    ticket = await crm.create_ticket(TicketDraft(title="t", person_id=person, email="jane@example.com",
                                                 parties=("colleague@example.com",), message_ids=("<m1@x>",)), "k")
    assert set(ticket.parties) == {"jane@example.com", "colleague@example.com"}
    assert await crm.erase_address("Colleague@Example.com") == 1
    assert (await crm.find_ticket_by_message_ids(["<m1@x>"])).parties == ("jane@example.com",)
    assert await crm.erase_address("jane@example.com") == 1
    erased = await crm.find_ticket_by_message_ids(["<m1@x>"])
    assert erased.parties == () and erased.person_address == ""
    assert await crm.purge(clock[0] - timedelta(days=1)) == 0  # nothing that old
    clock[0] += timedelta(days=91)
    assert await crm.purge(clock[0] - timedelta(days=90)) == 4  # person, ticket, its index row and pointer
    legacy = await crm.find_ticket_by_message_ids(["<m1@x>"])  # Lime's property still threads it
    assert legacy.id == ticket.id and legacy.parties is None
    await crm.close()


async def test_a_sole_writer_needs_no_record_and_still_resolves_a_lost_answer_by_asking(lime_crm, lime_sim):
    """The autoreply's note of a first send: its claim row makes its sender the only writer, so no
    record is claimed; an answer lost after Lime's commit is resolved by the key query, not POSTed
    again."""
    person, ticket = await new_ticket(lime_crm)
    lime_sim.lose_responses("POST", r"limeobject/history/$")
    ops = lime_crm._records.table
    before = len(await ops.scan())
    async with lime_crm.mail_writes("autoreply:hd1", sole=True):
        note = await lime_crm.add_history(HistoryDraft(ticket_id=ticket.id, person_id=person, note="sent",
                                                       date=T0, type="sentemail"), "autoreply:hd1")
    assert [h["_id"] for h in lime_sim.objects("history")] == [int(note)]
    assert len(await ops.scan()) == before  # no record written


async def test_an_upgrade_asks_lime_before_creates_for_a_day(lime_sim, lime_account, unique):
    """Objects created before the records existed have none: for a day after an upgrade (the app had
    processed mail before), a claim that finds no record asks Lime first."""
    crm = make_lime(lime_sim, lime_account, unique)
    crm._had_mail = _yes
    await crm.ensure()
    lime_sim.create("helpdesk", {"title": "old", "inboxkey": exact_hash("before-upgrade", 40)})
    lime_sim.calls.clear()
    ticket = await crm.create_ticket(TicketDraft(title="t", person_id=""), "before-upgrade")
    assert ticket.title == "old" and len(lime_sim.objects("helpdesk")) == 1
    assert [c["path"].split("/api/v1/", 1)[1] for c in lime_sim.calls if "/limetype/" not in c["path"]] == ["query/"]
    fresh = make_lime(lime_sim, lime_account, unique,
                      record_clock=lambda: datetime.now(timezone.utc) + timedelta(days=2))
    await fresh.ensure()  # the epoch row is shared: a day later records are trusted
    lime_sim.calls.clear()
    await fresh.create_ticket(TicketDraft(title="new", person_id=""), "after-upgrade")
    assert [c["method"] for c in lime_sim.calls if "/limetype/" not in c["path"]] == ["POST"]
    await crm.close()
    await fresh.close()


async def _yes() -> bool:
    return True


# -- threading and companies -----------------------------------------------------------------------------------
async def test_message_ids_are_matched_exactly_from_our_index_and_lime(lime_crm, lime_sim):
    """Our index answers for tickets we created and follow-ups we saw (no Lime query); Lime's
    Message-ID property is asked only when the index knows none of the ids (a ticket from before),
    matched exactly, within URLs IIS accepts."""
    _, ticket = await new_ticket(lime_crm, message_ids=("<ab@x>",))
    lime_sim.calls.clear()
    assert (await lime_crm.find_ticket_by_message_ids(["<AB@x>"])).id == ticket.id
    assert [c["path"].split("/api/v1/", 1)[1] for c in lime_sim.calls] == [f"limeobject/helpdesk/{ticket.id[2:]}/"]
    assert await lime_crm.find_ticket_by_message_ids(["<b@x>"]) is None  # '?' is contains: confirmed exactly
    many = [f"<reply-{i:03d}-{'x' * 60}@example.com>" for i in range(100)]
    lime_sim.calls.clear()
    await lime_crm.add_message_ids(ticket.id, many, parties=["Colleague@Example.com"])
    assert lime_sim.calls == []  # our index only
    assert (await lime_crm.find_ticket_by_message_ids([many[0]])).id == ticket.id
    found = await lime_crm.find_ticket_by_message_ids([many[-1]])
    assert found.id == ticket.id and "colleague@example.com" in found.parties
    # a ticket from before the index: Lime's property, several GETs for a long References header
    old = lime_sim.create("helpdesk", {"title": "old", "inboxmessageids": " ".join(many[:40])})
    lime_sim.calls.clear()
    legacy = await lime_crm.find_ticket_by_message_ids([f"<unknown-{i}@x>" for i in range(40)] + many[5:6])
    assert legacy.id == ticket.id  # the newest ticket holding one: ours, from the index
    lime_sim.calls.clear()
    found_old = await lime_crm._find_ticket_in_lime([f"unknown-{i}-{'y' * 60}@x" for i in range(60)] + [
        many[39].strip("<>")])
    assert found_old.id == f"hd{old['_id']}" and found_old.parties is None
    queries = [c for c in lime_sim.calls if c["path"].endswith("/query/")]
    assert len(queries) > 1 and all(len(q["query"]) < 2048 for q in queries)
    # the property holds what the ticket was created with, fitted: the first (root) and the newest
    _, big = await new_ticket(lime_crm, key="mail-2", message_ids=tuple(many))
    stored = next(o for o in lime_sim.objects("helpdesk") if f"hd{o['_id']}" == big.id)["inboxmessageids"]
    ids = parse_message_ids(stored)
    assert len(stored) <= 4000 and ids[0] == many[0].strip("<>") and ids[-1] == many[-1].strip("<>")
    assert fit_message_ids(["root", "a", "b"], 0) == "<root> <a> <b>"
    assert fit_message_ids(["root", "a", "bb"], 12) == "<root> <bb>"


async def test_sender_matching_lookups_find_companies_and_persons(lime_crm):
    acme = await lime_crm.find_or_create_company("Acme AB", key="acme", email="Info@Acme.se",
                                                 website="https://www.acme.se/kontakt")
    other = await lime_crm.find_or_create_company("Other AB", "other.se", key="other")
    assert await lime_crm.find_or_create_company("Acme (dup)", "acme.se", key="x") == acme
    assert await lime_crm.find_company_ids("email", "info@acme.se") == [acme]
    assert await lime_crm.find_company_ids("email_domain", "ACME.se") == [acme]
    assert await lime_crm.find_company_ids("website", "https://acme.se") == [acme]
    assert await lime_crm.find_company_ids("website", "other.se") == [other]
    assert await lime_crm.find_company_ids("email_domain", "acme.s") == []  # contains, then exact
    with pytest.raises(ValueError, match="unknown company match"):
        await lime_crm.find_company_ids("phone", "1")
    assert (await lime_crm.get_company(acme))["domain"] == "acme.se"

    assert await lime_crm.person_company_ids("acme.se") == []
    p1 = await lime_crm.find_or_create_person("anna@acme.se", "Anna", company_id=acme)
    assert await lime_crm.lookup_person("ANNA@acme.se") == PersonRef(p1, acme)
    assert await lime_crm.lookup_person("nobody@acme.se") is None
    assert await lime_crm.person_company_ids("acme.se") == [acme]
    await lime_crm.find_or_create_person("bo@acme.se", "Bo")
    assert sorted(await lime_crm.person_company_ids("acme.se")) == sorted([acme, ""])
    await lime_crm.find_or_create_person("cy@acme.se.example.com", "Cy", company_id=other)  # contains '@acme.se'
    assert sorted(await lime_crm.person_company_ids("acme.se", limit=5)) == sorted([acme, ""])
    assert await lime_crm.find_or_create_person("anna@acme.se", "Anna", company_id=other) == p1  # left as it is
    assert (await lime_crm.lookup_person("anna@acme.se")).company_id == acme


async def test_a_large_attachment_is_streamed_from_a_file(lime_crm, lime_sim):
    _, ticket = await new_ticket(lime_crm)
    data = os.urandom(3 * 1024 * 1024 + 17)
    with tempfile.TemporaryFile() as fh:
        fh.write(data)
        lime_sim.faults.add(503, method="POST", path_regex=r"/file/$", count=1)  # the retry re-reads the file
        did = await lime_crm.add_document_file(DocumentDraft(ticket_id=ticket.id, filename="dump.bin",
                                                             content_type="application/octet-stream",
                                                             size=len(data)), fh, "mail-1/big")
    assert await lime_crm.get_document_bytes(did) == data
    assert (await lime_crm.get_document(did))["size"] == len(data)
    small = LimeCrm(lime_sim.lime_url, lime_sim.api_key, max_file_bytes=10, sleep=Sleeps())
    with pytest.raises(PermanentError, match="over the 10-byte limit"):
        await small.add_document(DocumentDraft(ticket_id=ticket.id, filename="x", content_type="", size=11),
                                 b"x" * 11, "k")
    await small.close()


# -- rate limit, TLS, settings ----------------------------------------------------------------------------------
async def test_the_rate_limiter_waits_short_and_raises_long():
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = SlidingWindowLimiter(3, 10.0, max_wait=5.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        await limiter.acquire()
    now[0] = 4.0
    with pytest.raises(TransientError) as err:  # a slot frees at 10, 6 s away: longer than max_wait
        await limiter.acquire()
    assert err.value.retry_after == 6.0 and slept == []
    now[0] = 6.0
    await limiter.acquire()  # 4 s away: slept in place
    assert slept == [4.0] and now[0] == 10.0


async def test_the_adapter_stops_at_its_rate_limit_before_lime_does(lime_sim):
    crm = LimeCrm(lime_sim.lime_url, lime_sim.api_key, rate_limit=6, rate_window=300, sleep=Sleeps())
    await crm.check_schema()  # five calls
    assert await crm.get_ticket("1001") is None  # the sixth
    with pytest.raises(TransientError, match="budget of 6 requests per 300 s") as err:
        await crm.get_ticket("1001")
    assert err.value.retry_after > 5 and len(lime_sim.calls) == 6
    await crm.close()
    lime_sim.rate_limit = (2, 300.0)  # and Lime's own 429 comes with a Retry-After that is honoured
    crm = LimeCrm(lime_sim.lime_url, lime_sim.api_key, rate_limit=0, sleep=Sleeps())
    with pytest.raises(TransientError) as err:
        await crm.check_schema()
    assert err.value.retry_after and err.value.retry_after > 5
    await crm.close()


async def test_tls_verifies_against_the_outbound_ca_bundle():
    sim = LimeSim(tls=True).start()
    try:
        crm = LimeCrm(sim.https_url + "/" + sim.database, sim.api_key, ca_bundle=sim.ca_path, sleep=Sleeps())
        assert (await crm.check_schema()).ok
        await crm.close()
        untrusted = LimeCrm(sim.https_url + "/" + sim.database, sim.api_key, sleep=Sleeps(), attempts=1)
        with pytest.raises(TransientError):
            await untrusted.get_ticket("1")
        await untrusted.close()
    finally:
        sim.stop()
    with pytest.raises(ConfigError, match="OUTBOUND_CA_BUNDLE names '/nonexistent/ca.pem', which does not exist"):
        LimeCrm("https://lime.invalid/db", "k", ca_bundle="/nonexistent/ca.pem")
    with tempfile.NamedTemporaryFile(suffix=".pem") as junk:
        junk.write(b"not a certificate")
        junk.flush()
        with pytest.raises(ConfigError, match="is not a PEM bundle"):
            LimeCrm("https://lime.invalid/db", "k", ca_bundle=junk.name)


def test_settings_build_the_adapter_and_bad_values_are_named(lime_sim):
    base = {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "CLIENT_STATE_KEYS": "1:" + "s" * 20,
            "PUBLIC_BASE_URL": "https://x.example", "CRM_BACKEND": "lime", "LIME_CRM_URL": lime_sim.lime_url,
            "LIME_CRM_API_KEY": "secret-key-value"}
    crm = LimeCrm.from_settings(Settings.from_env({**base, "LIME_STATUS_DONE": "closed", "LIME_KEY_PROPERTY": "",
                                                   "LIME_RATE_LIMIT_REQUESTS": "100"}))
    assert crm.names.statuses["done"] == "closed" and crm.names.key_property == ""
    assert crm.names.helpdesk_number == "helpdesknumber" and crm._limiter.limit == 100
    assert "secret-key-value" not in repr(crm)
    with pytest.raises(ConfigError, match="LIME_STATUS_STARTED must name"):
        LimeCrm.from_settings(Settings.from_env({**base, "LIME_STATUS_STARTED": " "}))
    with pytest.raises(ConfigError, match="LIME_RATE_LIMIT_WINDOW_SECONDS must be an integer"):
        LimeCrm.from_settings(Settings.from_env({**base, "LIME_RATE_LIMIT_WINDOW_SECONDS": "5m"}))
    with pytest.raises(ConfigError, match="must be different keys"):
        LimeCrm.from_settings(Settings.from_env({**base, "LIME_STATUS_PARKED": "done"}))


def test_the_simulator_cli_starts_and_prints_its_urls():
    proc = subprocess.Popen([sys.executable, "-m", "tools.sim.lime", "--port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        assert info["lime_crm_url"].startswith("http://127.0.0.1:") and info["database"] == "demo"
        with httpx.Client() as http:
            r = http.get(info["lime_crm_url"] + "/api/v1/limetype/helpdesk/", params={"_embed": "properties"},
                         headers={"x-api-key": info["api_key"]})
        assert r.status_code == 200 and "helpdesknumber" in {p["name"] for p in r.json()["_embedded"]["properties"]}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


async def test_records_in_one_worker_without_storage_make_one_person(lime_sim):
    """The in-process record table (no Storage): concurrent creates in one worker still make one."""
    lime_sim.latency_ms = 10
    crm = LimeCrm(lime_sim.lime_url, lime_sim.api_key, records=MemoryRecordTable())
    ids = await asyncio.gather(*(crm.find_or_create_person("same@example.com", "Same") for _ in range(6)))
    assert len(set(ids)) == 1 and len(lime_sim.objects("person")) == 1
    await crm.close()
