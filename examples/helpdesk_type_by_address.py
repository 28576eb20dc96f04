"""Seed example 1: the helpdesk type by the address the mail was sent to.

PROCESSING_EXTENSION=examples.helpdesk_type_by_address:helpdesk_type

A new ticket gets the type of the first address in HELPDESK_TYPES among the mail's To and Cc
recipients (an alias such as invoices@ delivered into the support mailbox), else the type of the
monitored mailbox that received it, else DEFAULT_TYPE. Follow-ups and reopened tickets keep the type
they have. (The mailbox `routing` setting does the same without code; this is where to go further,
e.g. a type from the subject or the sender's company.)

In Lime CRM `helpdesktype` is a relation: the values are the ids of the helpdesktype records (ints);
the embedded CRM stores whatever it is given.
"""
from __future__ import annotations

HELPDESK_TYPES = {
    "invoices@contoso.example": "invoice",
    "sales@contoso.example": "sales",
    "support@contoso.example": "support",
}
DEFAULT_TYPE = "support"


def helpdesk_type(mail, decision, change) -> None:
    if not decision.creates_ticket:
        return
    addresses = [a.normalized for a in mail.recipients] + [decision.mailbox.lower()]
    kind = next((HELPDESK_TYPES[a] for a in addresses if a in HELPDESK_TYPES), DEFAULT_TYPE)
    change.set("helpdesktype", kind)
