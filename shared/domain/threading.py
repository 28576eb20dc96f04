"""Conversation rules: which key a new ticket is created under, and what a follow-up to a closed
ticket does. Pure: no I/O.

Threading order (the lookups are in shared/services/mail_to_crm.py and, for delivery reports,
shared/services/delivery_reports.py):
  0. a bounce or delivery report: the Message-ID, In-Reply-To and References of the original it carries
     (domain/reports.py), exempt from the party check (party_check_applies);
  1. In-Reply-To / References against the Message-IDs stored for tickets' mails;
  2. the subject tag `Title [1042]`, only for an existing ticket and a sender who is its contact;
  3. otherwise a new ticket. Graph's conversationId is never used (it collides across unrelated
     mails with the same subject: microsoft-graph-docs#869).

Ticket keys make concurrent mails agree without a lock, because create_ticket is idempotent by key:
  - a new conversation: the key of its thread root (References[0], else In-Reply-To, else the
    mail's own Message-ID), so a reply processed at the same moment as the mail it answers, or
    several replies to a mail we never saw (zammad#5716), land on one ticket;
  - a follow-up to a closed ticket that must become a new ticket: the old ticket and the moment
    it was closed, so two follow-ups arriving at once make one new ticket, and a later closure
    of the same ticket gives a later follow-up a new one again.
"""
from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

from .mail import InboundMail
from .model import TicketRef

# How a mail found its ticket (mail_to_crm.ThreadMatch.how; the plan's and the Decision's threaded_by).
BY_REFERENCES = "references"
BY_SUBJECT_TAG = "subject-tag"
BY_BOUNCE_ORIGINAL = "bounce-original"  # a delivery report, through the original it carries


def party_check_applies(how: str) -> bool:
    """design.md "Threading parties": a References or subject-tag match lands on a ticket only for a
    party to it. A delivery report's match through the original it carries is exempt: its sender is a
    mail server, never a party (services/delivery_reports.py reads the original only for such mail)."""
    return how in (BY_REFERENCES, BY_SUBJECT_TAG)


REOPEN = "reopen"
NEW = "new"
NEW_AFTER_DAYS = "new_after_days"
CLOSED_TICKET_POLICIES = (REOPEN, NEW, NEW_AFTER_DAYS)
CLOSED_STATUS = "done"
OPEN_STATUS = "started"


def _key(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode("utf-8")).hexdigest()[:40]


def normalize_message_id(message_id: str) -> str:
    return (message_id or "").strip().strip("<>").strip().lower()


def thread_root(mail: InboundMail) -> str:
    """The normalized Message-ID that names the mail's conversation ('' without any)."""
    return normalize_message_id(mail.thread_root or mail.internet_message_id)


def thread_key(mail: InboundMail) -> str:
    """The idempotency key of the ticket a mail opens when no existing ticket takes it."""
    root = thread_root(mail)
    return _key("thread", root) if root else mail.idempotency_key()


def successor_key(ticket: TicketRef) -> str:
    """The key of the new ticket that follows up `ticket` after it was closed."""
    closed = ticket.closed_at.astimezone(timezone.utc).isoformat() if ticket.closed_at else ""
    return _key("successor", ticket.id, closed)


def is_closed(ticket: TicketRef) -> bool:
    return ticket.status == CLOSED_STATUS


def check_policy(policy: str, days: int) -> None:
    if policy not in CLOSED_TICKET_POLICIES:
        raise ValueError(f"closed_ticket_policy {policy!r} is not one of {', '.join(CLOSED_TICKET_POLICIES)}")
    if policy == NEW_AFTER_DAYS and (not isinstance(days, int) or days < 1):
        raise ValueError("closed_ticket_days must be a whole number of days (1 or more) with new_after_days")


def closed_ticket_action(policy: str, days: int, closed_at: datetime | None, now: datetime) -> str:
    """REOPEN or NEW for a human follow-up to a closed ticket, per the mailbox's policy.

    new_after_days: a follow-up within `days` of the closure reopens, a later one opens a new
    ticket. A closure time the CRM does not know counts as long ago."""
    check_policy(policy or REOPEN, days)
    if policy in ("", REOPEN):
        return REOPEN
    if policy == NEW:
        return NEW
    if closed_at is None:
        return NEW
    return REOPEN if now - closed_at < timedelta(days=days) else NEW
