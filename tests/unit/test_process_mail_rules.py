"""The processor's CRM step refuses a mailbox whose mail rules are misconfigured: the mail fails with
a reason naming the setting and stays in the Inbox (nothing lost), instead of guessing."""
from __future__ import annotations

from datetime import timedelta

import pytest

from shared.domain.envelope import MessageJob
from shared.domain.mail import Address, InboundMail
from shared.domain.model import FAILED, PROCESSED, Mailbox
from shared.services.process import MessageProcessor, ProcessDeps
from tests.fakes import FakeClock, FakeLedger, FakeMail, FakeQueue, FakeRegistry
from tests.fakes_crm import InMemoryCrm


def setup(**mailbox):
    clock = FakeClock()
    box = Mailbox(id="box", address="support@ours.example", client="demo", tenant_id="t", **mailbox)
    store, crm = FakeMail(), InMemoryCrm()
    store.put(box, InboundMail(mailbox_id=box.id, message_id="m1", internet_message_id="<m1@c.example>",
                               sender=Address("anna@c.example", "Anna"), subject="Hello",
                               received_at=clock.now() - timedelta(minutes=1), body_content_type="text", body="Hi",
                               parent_folder_id=FakeMail.INBOX))
    proc = MessageProcessor(ProcessDeps(registry=FakeRegistry(box), ledger=FakeLedger(clock), mail=store, crm=crm,
                                        queue=FakeQueue(), clock=clock))
    return proc, store, crm


@pytest.mark.parametrize("mailbox,setting", [
    ({"sender_id_behaviour": "EmailDomain"}, "sender_id_behaviour"),
    ({"closed_ticket_policy": "close"}, "closed_ticket_policy"),
    ({"closed_ticket_policy": "new_after_days", "closed_ticket_days": 0}, "closed_ticket_days"),
    ({"action": "move"}, "move_folder"),  # it used to delete such mail instead of moving it
    ({"action": "archive"}, "action"),
    ({"routing": {"values": {"title": "x"}}}, "routing.values.title"),
])
async def test_a_misconfigured_mailbox_fails_its_mail_naming_the_setting_and_keeps_it(mailbox, setting):
    proc, store, crm = setup(**mailbox)
    outcome = await proc.run(MessageJob(mailbox_id="box", message_id="m1", tenant_id="t"))
    assert outcome.status == FAILED and setting in outcome.reason and "misconfigured" in outcome.reason
    assert store.deleted == [] and crm.created["ticket"] == 0


async def test_a_well_configured_mailbox_processes_the_same_mail():
    proc, store, crm = setup(sender_id_behaviour="CompanyEmailDomain", closed_ticket_policy="new_after_days",
                             closed_ticket_days=14)
    outcome = await proc.run(MessageJob(mailbox_id="box", message_id="m1", tenant_id="t"))
    assert outcome.status == PROCESSED and store.deleted == ["m1"] and crm.created["ticket"] == 1
