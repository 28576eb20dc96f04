"""Seed example 3: a new helpdesk when the old one is done.

PROCESSING_EXTENSION=examples.new_helpdesk_when_done:new_helpdesk_when_done

Whatever the mailbox's closed_ticket_policy says (`reopen` by default), a person's mail that belongs
to a helpdesk that is done opens a new helpdesk, linked to the old one (the old one stays done; more
replies to it join the same new ticket), titled "Follow-up: <title>". Mail to open tickets, new
conversations and automatic mail are left to the default.
"""
from __future__ import annotations


def new_helpdesk_when_done(mail, decision, change) -> None:
    if decision.ticket_closed and not decision.automated:
        change.new_ticket(f"helpdesk {decision.ticket.number} is done")
        change.set_title(f"Follow-up: {decision.title or mail.subject or decision.ticket.title}")
