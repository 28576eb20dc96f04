"""Threading parties (issue 15; design.md "Threading parties"), on every CRM backend.

A match by In-Reply-To/References (or by subject tag) lands a mail on a ticket only for a party to
it: the ticket's person, a person of its company, or an address that was on To/Cc of a mail already
on the ticket. Anyone else who saw a ticket mail's Message-ID (a forwarded mail shows it) gets a new
ticket linked to the matched one, and the admin sees why: on the new ticket's note and on the
mail's ledger row. Parties grow with the mails on the ticket, so CC'd colleagues and consultants
keep landing where they belong.
"""
from __future__ import annotations

from typing import Any

from shared.domain.model import PROCESSED
from tests.fakes import FakeClock
from tests.fixtures.mail import mime as m
from tests.integration.crm_backends import crm_backend  # noqa: F401 - the fixture
from tests.integration.test_mail_concurrency import World

SUPPORT = "support@contoso.example"
ANNA = "Anna Andersson <anna@acme.example>"
BERTIL = "Bertil Berg <bertil@acme.example>"
CONSULTANT = "Kim Konsult <kim@consulting.example>"
MALLORY = "Mallory <mallory@elsewhere.example>"
FIRST = m.outlook_id("parties/first")


async def _world(crm_backend: Any) -> tuple[World, str]:
    clock = FakeClock()
    w = World(await crm_backend.new(clock), clock)
    first = await w.run(m.outlook(ANNA, SUPPORT, "Printer broken", "It prints blank pages.", message_id=FIRST,
                                  cc=[BERTIL]))
    return w, first.ticket_number


async def test_a_stranger_with_a_tickets_message_id_gets_a_linked_ticket_of_their_own(crm_backend):  # noqa: F811
    w, number = await _world(crm_backend)
    job = w.deliver(m.outlook(MALLORY, SUPPORT, "RE: Printer broken", "Let me add something to your ticket.",
                              message_id=m.outlook_id("parties/mallory"), in_reply_to=FIRST, references=[FIRST]))
    outcome = await w.processor().run(job)
    assert outcome.status == PROCESSED and outcome.data["action"] == "new"
    assert outcome.ticket_number != number
    assert len(await w.history(number)) == 1  # nothing landed on Anna's ticket
    detail = await w.real_crm.ticket_detail(outcome.ticket_number)
    assert crm_backend.linked_number(detail) == number  # linked to the one it named
    (note,) = detail["history"]
    assert f"replies to ticket {number}, but its sender is not a party to that ticket" in note["note"]
    row = w.ledger.rows[(w.box.id, job.message_id)]
    assert row.data["plan"]["refused_thread"]["ticket"] == number
    assert any(t["event"] == "thread-refused" and t["ticket"] == number for t in row.trace)
    # and the stranger's own follow-up lands on the stranger's ticket, not on Anna's
    again = await w.run(m.outlook(MALLORY, SUPPORT, "RE: Printer broken", "Hello?", message_id=m.outlook_id(
        "parties/mallory-2"), in_reply_to=m.outlook_id("parties/mallory"), references=[FIRST, m.outlook_id(
            "parties/mallory")]))
    assert again.ticket_number == outcome.ticket_number and again.data["action"] == "follow-up"


async def test_the_tickets_person_its_cc_and_those_they_bring_in_land_on_it(crm_backend):  # noqa: F811
    w, number = await _world(crm_backend)
    anna = await w.run(m.outlook(ANNA, SUPPORT, "RE: Printer broken", "Any news?", message_id=m.outlook_id(
        "parties/anna"), in_reply_to=FIRST, references=[FIRST]))
    assert (anna.ticket_number, anna.data["action"]) == (number, "follow-up")
    bertil = m.outlook_id("parties/bertil")  # on Cc of the first mail; brings a consultant in
    reply = await w.run(m.outlook(BERTIL, [SUPPORT, CONSULTANT], "RE: Printer broken", "Kim, can you look?",
                                  message_id=bertil, in_reply_to=FIRST, references=[FIRST], cc=[ANNA]))
    assert (reply.ticket_number, reply.data["action"]) == (number, "follow-up")
    kim = await w.run(m.outlook(CONSULTANT, SUPPORT, "RE: Printer broken", "Replace the fuser.",
                                message_id=m.outlook_id("parties/kim"), in_reply_to=bertil, references=[FIRST, bertil]))
    assert (kim.ticket_number, kim.data["action"]) == (number, "follow-up")
    assert len(await w.history(number)) == 4
    # a subject tag counts the same parties: Kim again, with the tag and no headers
    tagged = await w.run(m.outlook(CONSULTANT, SUPPORT, f"Printer broken [{number}]", "Done.",
                                   message_id=m.outlook_id("parties/kim-tag")))
    assert (tagged.ticket_number, tagged.data["action"]) == (number, "follow-up")
    # the stranger's tag is refused as before (a ticket of their own)
    stranger = await w.run(m.outlook(MALLORY, SUPPORT, f"Printer broken [{number}]", "Me too.",
                                     message_id=m.outlook_id("parties/mallory-tag")))
    assert stranger.ticket_number != number


async def test_a_person_of_the_tickets_company_lands_on_it(crm_backend):  # noqa: F811
    clock = FakeClock()
    crm = await crm_backend.new(clock)
    company = await crm_backend.company(crm, {"name": "Acme AB", "domain": "acme.example"})
    w = World(crm, clock)
    first = await w.run(m.outlook(ANNA, SUPPORT, "Printer broken", "Blank pages.", message_id=FIRST))
    detail = await w.real_crm.ticket_detail(first.ticket_number)
    assert detail["ticket"]["company_id"] == company
    colleague = await w.run(m.outlook("Cecilia <cecilia@acme.example>", SUPPORT, "RE: Printer broken", "Same here.",
                                      message_id=m.outlook_id("parties/cecilia"), in_reply_to=FIRST))
    assert (colleague.ticket_number, colleague.data["action"]) == (first.ticket_number, "follow-up")
