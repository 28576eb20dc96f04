"""The mail corpus (tests/fixtures/mail/corpus.py) through the real MessageProcessor, on every CRM
backend (tests/integration/crm_backends.py): each mail is real MIME, turned into Graph message JSON
by tools/sim/mime2graph, served like Graph serves it (metadata first, content on demand), and must
give its declared outcome: processed or skipped (with the reason), which ticket, its title, status,
person and company, routing values, the documents stored, the attachments skipped (and never
downloaded), what the history note holds and lacks, and whether an autoreply is due.
"""
from __future__ import annotations

from typing import Any

import pytest

from shared.config import MailRules
from shared.domain.envelope import MessageJob
from shared.domain.model import AutoreplySettings, Mailbox
from shared.services.process import MessageProcessor, ProcessDeps
from tests.fakes import FakeClock, FakeLedger, FakeQueue, FakeRegistry
from tests.fixtures.mail import corpus
from tests.integration.crm_backends import crm_backend  # noqa: F401 - the fixture
from tests.support.mime_mailbox import MimeMailbox

# The suite's per-file limit: small enough that "big attachments" stay quick to build.
SUITE_MAX_BYTES = 3 * 1024 * 1024
SCENARIOS = corpus.scenarios()


def mailboxes(sc: corpus.Scenario, backend: Any) -> dict[str, Mailbox]:
    cfg = dict(sc.mailbox)
    if "routing" in cfg:
        cfg["routing"] = backend.routing(cfg["routing"])
    autoreply = AutoreplySettings(enabled=bool(cfg.pop("autoreply", False)), template="ack")
    return {address: Mailbox(id=f"box-{address.split('@')[0]}", address=address, client="demo", tenant_id="t",
                             autoreply=autoreply, **cfg) for address in corpus.OWN}


class Run:
    """One scenario on one fresh CRM; `step()` delivers and processes a mail and checks it."""

    def __init__(self, sc: corpus.Scenario, backend: Any, crm: Any, clock: FakeClock) -> None:
        self.sc, self.backend, self.crm, self.clock = sc, backend, crm, clock
        self.boxes = mailboxes(sc, backend)
        self.gateway = MimeMailbox()
        self.ledger = FakeLedger(clock)
        self.queue = FakeQueue()
        self.processor = MessageProcessor(ProcessDeps(
            registry=FakeRegistry(*self.boxes.values()), ledger=self.ledger, mail=self.gateway, crm=crm,
            queue=self.queue, clock=clock,
            rules=MailRules(note_format=sc.note_format, attachment_max_bytes=SUITE_MAX_BYTES,
                            own_message_id_hosts=corpus.OWN_MESSAGE_ID_HOSTS),
            own_addresses=self._own))
        self.ctx = corpus.Context()
        self.tickets: dict[str, str] = {}  # step -> ticket number
        self.ticket_ids: dict[str, str] = {}
        self.rows: list[dict[str, Any]] = []

    async def _own(self) -> frozenset[str]:
        return frozenset(corpus.OWN)

    async def seed(self) -> None:
        companies: dict[str, str] = {}
        for spec in self.sc.companies:
            companies[spec["name"]] = await self.backend.company(self.crm, spec)
        for p in self.sc.persons:
            await self.crm.find_or_create_person(p["email"], p["name"], companies.get(p.get("company", ""), ""))

    async def before(self, step: corpus.Step) -> None:
        for action in step.before:
            if action[0] == "close":
                assert await self.crm.set_ticket_status(self.tickets[action[1]], "done") is not None
            elif action[0] == "reopen":
                await self.crm.set_ticket_status(self.tickets[action[1]], "started")
            elif action[0] == "advance_days":
                self.clock.advance(action[1] * 86400)
            else:
                raise AssertionError(action)

    async def step(self, step: corpus.Step) -> None:
        await self.before(step)
        box = self.boxes[step.mailbox]
        raw = step.build(self.ctx)
        message_id = self.gateway.deliver(box, raw, self.clock.now())
        fetched_before = len(self.gateway.fetched)
        mime_before = self.gateway.calls["mime"]
        outcome = await self.processor.run(MessageJob(mailbox_id=box.id, message_id=message_id, tenant_id="t"))
        entry = self.ledger.rows[(box.id, message_id)]
        where = f"{self.sc.name}/{step.name}"
        exp = step.expect
        mime_reads = self.gateway.calls["mime"] - mime_before
        assert mime_reads <= 1, (where, "a report is read once", mime_reads)
        if exp.mime_read is not None:
            assert mime_reads == int(exp.mime_read), (where, "MIME read", mime_reads)
        if exp.status == "processed" and not exp.reason:
            assert mime_reads == 0, (where, "human mail's MIME is never read")
        assert outcome.status == exp.status, (where, outcome)
        assert message_id in self.gateway.deleted, (where, "the mail must leave the Inbox")
        if exp.status == "skipped":
            assert exp.reason in outcome.reason, (where, outcome.reason)
            assert not outcome.ticket_number, where
            self.rows.append({"step": where, "outcome": f"skipped: {outcome.reason}"})
            self.clock.advance(60)
            return
        if exp.reason:
            assert exp.reason in entry.data.get("automated", ""), (where, entry.data.get("automated"))
        else:
            assert "automated" not in entry.data, (where, entry.data.get("automated"))
        number = outcome.ticket_number
        assert number, where
        self.ctx.numbers[step.name] = number
        self.tickets[step.name] = number
        detail = await self.crm.ticket_detail(number)
        ticket = detail["ticket"]
        self.ticket_ids[step.name] = ticket["id"]
        kind, _, ref = exp.ticket.partition(":")
        earlier = set(self.tickets[s] for s in self.tickets if s != step.name)
        if kind == "new":
            assert number not in earlier, (where, "expected a new ticket", number)
            assert entry.data["new_ticket"] is True, where
        elif kind == "same":
            assert number == self.tickets[ref], (where, number, self.tickets[ref])
        elif kind == "other":
            assert number != self.tickets[ref] and number not in earlier, (where, number)
        elif kind == "successor":
            assert number not in earlier, (where, "expected a new ticket", number)
            assert self.backend.linked_number(detail) == self.tickets[ref], (where, ticket)
        else:
            raise AssertionError(exp.ticket)
        if exp.title is not None:
            assert ticket["title"] == exp.title, (where, ticket["title"])
        if exp.title_truncated:
            assert len(ticket["title"]) == 128 and ticket["title"].endswith("…"), (where, ticket["title"])
        if exp.ticket_status is not None:
            assert (await self.crm.get_ticket(number)).status == exp.ticket_status, where
        if exp.company is not None:
            company = (detail.get("company") or {}).get("name", "") if ticket.get("company_id") else ""
            assert company == exp.company, (where, company)
        if exp.values is not None:
            assert ticket["values"] == self.backend.values(exp.values), (where, ticket["values"])
        if exp.autoreply is not None:
            assert entry.data["autoreply"] is exp.autoreply, (where, entry.data["autoreply"])
        # the history note of this very mail
        notes = [h for h in detail["history"] if h["id"] == entry.data["history_id"]]
        assert len(notes) == 1, (where, entry.data["history_id"], [h["id"] for h in detail["history"]])
        note = notes[0]["note"]
        for text in exp.note_has:
            assert text in note, (where, text, note[:2000])
        for text in exp.note_lacks:
            assert text not in note, (where, text, note[:2000])
        if exp.inline_links:
            url_of = getattr(self.crm, "document_url", None)
            inline = [a for a in entry.data["attachments"] if a["status"] == "stored" and a.get("inline")]
            assert inline, where
            for a in inline:  # shown from its stored document where the CRM can serve one, else dropped
                if url_of is not None:
                    assert f'src="{url_of(a["document_id"])}"' in note, (where, a, note[:2000])
        if exp.person is not None:
            person = await self.crm.get_person(notes[0]["person_id"]) if notes[0]["person_id"] else None
            assert (person or {}).get("email", "") == exp.person, (where, person)
        # documents this mail stored, and attachments it skipped
        stored = [a for a in entry.data.get("attachments", []) if a["status"] == "stored"]
        names = []
        for doc_id in [a["document_id"] for a in stored] + entry.data["documents"]:
            doc = await self.crm.get_document(doc_id)
            assert doc is not None and doc["ticket_id"] == ticket["id"], (where, doc_id, doc)
            names.append(doc["filename"])
        assert {d["id"] for d in detail["documents"]} >= {a["document_id"] for a in stored}, where
        if exp.documents is not None:
            assert sorted(names) == sorted(exp.documents), (where, names)
        skipped = {a["name"]: a.get("reason", "") for a in entry.data.get("attachments", []) if a["status"] == "skipped"}
        for name, reason in exp.skipped_attachments.items():
            assert name in skipped and reason in skipped[name], (where, skipped)
        fetched = self.gateway.fetched[fetched_before:]
        for name in exp.not_fetched:
            assert name not in fetched, (where, "downloaded", name)
        self.rows.append({"step": where, "outcome": f"{entry.data['action']} #{number}",
                          "documents": len(names), "history_id": entry.data["history_id"]})
        self.clock.advance(60)


@pytest.mark.parametrize("sc", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_corpus_scenario(crm_backend, sc):  # noqa: F811 - fixture
    clock = FakeClock()
    crm = await crm_backend.new(clock)
    run = Run(sc, crm_backend, crm, clock)
    await run.seed()
    for step in sc.steps:
        await run.step(step)
    # nothing was created twice: one history note per stored mail (a mail delivered to two mailboxes
    # is one mail), tickets as the steps said
    processed = {r["history_id"] for r in run.rows if not r["outcome"].startswith("skipped")}
    tickets = await crm.list_tickets(limit=500)
    assert len({t["number"] for t in tickets}) == len(set(run.tickets.values())), (sc.name, tickets)
    notes = 0
    for number in set(run.tickets.values()):
        notes += len((await crm.ticket_detail(number))["history"])
    assert notes == len(processed), (sc.name, notes, len(processed))


def test_the_corpus_is_big_enough_and_names_every_kind_the_issue_asks_for():
    assert corpus.mail_count() >= 40
    kinds = " ".join(st.kind for sc in SCENARIOS for st in sc.steps).lower()
    for wanted in ("reply", "wg:", "aw:", "sv:", "fwd:", "out-of-office", "vacation", "ndr", "newsletter",
                   "meeting", "non-ascii", "scripts and remote images", "inline image", "big attachments",
                   "empty body", "missing message-id", "[2024]", "stranger", "closed ticket",
                   # issue 15 items 4 and 5
                   "bounce of a reply", "delayed dsn", "text bounce", "sms gateway", "mailing-list server",
                   "abuse", "own sending host"):
        assert wanted in kinds, wanted
