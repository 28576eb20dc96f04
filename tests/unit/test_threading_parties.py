"""Threading parties on tickets whose parties were never recorded (created before they were), and
the pure rule (domain/matching.py is_party). The recorded case runs on every backend in
tests/integration/test_threading_parties.py."""
from __future__ import annotations

from datetime import timedelta

from shared.domain import matching
from shared.domain.envelope import MessageJob
from shared.domain.mail import Address, InboundMail
from shared.domain.model import PROCESSED, Mailbox, TicketRef
from shared.services.process import MessageProcessor, ProcessDeps
from tests.fakes import FakeClock, FakeLedger, FakeMail, FakeQueue, FakeRegistry
from tests.fakes_crm import InMemoryCrm

BOX = Mailbox(id="box", address="support@ours.example", client="demo", tenant_id="t")


def test_is_party():
    ticket = TicketRef(id="hd1", number="1", person_id="p1", company_id="c1", parties=("anna@acme.example",
                                                                                       "kim@consult.example"))
    assert matching.is_party(ticket, "Kim@Consult.example") is True  # on To/Cc of its mails
    assert matching.is_party(ticket, "x@elsewhere.example", person_id="p1") is True  # its person
    assert matching.is_party(ticket, "x@acme.example", person_id="p9", company_id="c1") is True  # its company
    assert matching.is_party(ticket, "x@elsewhere.example", person_id="p9", company_id="c9") is False
    unknown = TicketRef(id="hd2", number="2", person_id="p1")
    assert matching.is_party(unknown, "x@elsewhere.example") is None  # never recorded: the caller decides


async def _world():
    clock = FakeClock()
    store, crm, ledger = FakeMail(), InMemoryCrm(clock=clock.now), FakeLedger(clock)
    proc = MessageProcessor(ProcessDeps(registry=FakeRegistry(BOX), ledger=ledger, mail=store, crm=crm,
                                        queue=FakeQueue(), clock=clock))

    async def deliver(mid: str, sender: str, in_reply_to: str = "") -> object:
        headers = (("In-Reply-To", f"<{in_reply_to}@acme.example>"),) if in_reply_to else ()
        store.put(BOX, InboundMail(mailbox_id=BOX.id, message_id=mid, internet_message_id=f"<{mid}@acme.example>",
                                   sender=Address(sender, ""), subject="Printer broken", headers=headers,
                                   received_at=clock.now() - timedelta(minutes=1), body_content_type="text",
                                   body="Hi", to=(Address(BOX.address),), parent_folder_id=FakeMail.INBOX))
        return await proc.run(MessageJob(mailbox_id=BOX.id, message_id=mid, tenant_id="t"))
    return deliver, crm


async def test_a_ticket_without_recorded_parties_takes_its_persons_organisation_and_no_stranger():
    deliver, crm = await _world()
    first = await deliver("m1", "anna@acme.example")
    for row in crm.tickets.values():
        row.pop("parties")  # as a ticket created before parties were recorded
    colleague = await deliver("m2", "bertil@acme.example", in_reply_to="m1")
    assert colleague.status == PROCESSED and colleague.ticket_number == first.ticket_number
    stranger = await deliver("m3", "mallory@elsewhere.example", in_reply_to="m1")
    assert stranger.ticket_number != first.ticket_number and stranger.data["action"] == "new"
    free_mail = await deliver("m4", "someone@gmail.com", in_reply_to="m1")
    assert free_mail.ticket_number != first.ticket_number
