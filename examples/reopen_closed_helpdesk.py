"""Seed example 2: a reply to a closed helpdesk reopens it.

PROCESSING_EXTENSION=examples.reopen_closed_helpdesk:reopen_closed_helpdesk

Whatever the mailbox's closed_ticket_policy says (`new`, `new_after_days`), a person's reply to a
helpdesk that is done goes onto that helpdesk and sets it back to started; except when the person is
not the ticket's own contact and it was closed more than REOPEN_WITHIN_DAYS before the mail arrived:
a colleague answering an old thread gets the mailbox's default (a new ticket following up the old
one). Automatic mail (out-of-office, bounces) never reopens anything: it is only noted on the
ticket, as by default.
"""
from __future__ import annotations

from datetime import timedelta

REOPEN_WITHIN_DAYS = 30


def reopen_closed_helpdesk(mail, decision, change) -> None:
    if not decision.ticket_closed or decision.automated:
        return
    ticket = decision.ticket
    own_contact = bool(decision.person_id) and decision.person_id == ticket.person_id
    closed_at = ticket.closed_at
    recent = closed_at is not None and mail.received_at - closed_at < timedelta(days=REOPEN_WITHIN_DAYS)
    if own_contact or recent:
        change.reopen("a reply to a closed helpdesk reopens it")
