"""Entities the services pass between ports: mailboxes, ledger entries, CRM drafts. Pure: no I/O."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# Ledger statuses. A row is born Claimed (processing); it ends Processed, Skipped or Failed.
PROCESSING = "processing"
PROCESSED = "processed"
SKIPPED = "skipped"
FAILED = "failed"
FINISHED = (PROCESSED, SKIPPED)

# Steps recorded on a ledger row, in pipeline order. A redelivery resumes after the last one done.
STEP_FETCHED = "fetched"
STEP_CRM = "crm"
STEP_AUTOREPLY_QUEUED = "autoreply_queued"
STEP_MAILBOX_ACTION = "mailbox_action"

ACTION_DELETE = "delete"
ACTION_MOVE = "move"

# A mailbox's `store_original`: keep each mail's MIME (`$value`) as a .eml document on its ticket
# (besides its attachments) or not. The one list the manage API's validator and options use.
STORE_ORIGINAL_NONE = "none"
STORE_ORIGINAL_EML = "eml"
STORE_ORIGINAL_MODES = (STORE_ORIGINAL_NONE, STORE_ORIGINAL_EML)


@dataclass
class AutoreplySettings:
    enabled: bool = False
    template: str = ""
    from_name: str = ""
    merge_codes: dict[str, str] = field(default_factory=dict)


@dataclass
class Mailbox:
    """A monitored mailbox. `id` is the user's object id when known (lowercase), else the address."""
    id: str
    address: str
    client: str
    tenant_id: str
    user_id: str = ""
    active: bool = True
    start_date: datetime | None = None
    action: str = ACTION_DELETE
    move_folder: str = ""
    autoreply: AutoreplySettings = field(default_factory=AutoreplySettings)
    routing: dict[str, Any] = field(default_factory=dict)
    closed_ticket_policy: str = "reopen"  # reopen | new | new_after_days
    closed_ticket_days: int = 0
    sender_id_behaviour: str = "PersonEmailDomain"
    store_original: str = STORE_ORIGINAL_NONE  # STORE_ORIGINAL_MODES
    created_at: datetime | None = None
    warnings: list[str] = field(default_factory=list)
    etag: str = ""

    @property
    def graph_user(self) -> str:
        """How Graph addresses this mailbox: object id when we have it, else the address."""
        return self.user_id or self.address


@dataclass
class LedgerEntry:
    mailbox_id: str
    message_id: str
    status: str = PROCESSING
    steps: dict[str, str] = field(default_factory=dict)  # step -> ISO time finished
    data: dict[str, Any] = field(default_factory=dict)  # CRM ids, ticket number, idempotency key...
    attempts: int = 0
    last_error: str = ""
    skip_reason: str = ""
    lease_owner: str = ""
    lease_until: datetime | None = None
    correlation_id: str = ""
    source: str = ""
    sender: str = ""
    subject: str = ""
    received_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    trace: list[dict[str, Any]] = field(default_factory=list)
    etag: str = ""

    def done(self, step: str) -> bool:
        return step in self.steps

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclass(frozen=True)
class TicketRef:
    id: str
    number: str
    status: str = ""
    person_id: str = ""
    company_id: str = ""
    title: str = ""
    closed_at: datetime | None = None  # when status is done: its enddate (closed-ticket policies)
    # Threading parties (shared/services/mail_to_crm.py): the lower-case addresses of the ticket's
    # person and of every To/Cc of the mails on it, and its person's address; None where the CRM has
    # no record of them (a ticket from before they were recorded, or a lookup that did not ask)
    parties: tuple[str, ...] | None = None
    person_address: str = ""


@dataclass(frozen=True)
class PersonRef:
    """A person found in the CRM by email address, with the company it belongs to ('' for none)."""
    id: str
    company_id: str = ""


@dataclass(frozen=True)
class TicketDraft:
    title: str
    person_id: str
    company_id: str = ""
    number: str = ""  # reserved ahead by the embedded CRM; Lime assigns its own
    status: str = "started"
    description: str = ""
    email: str = ""
    values: dict[str, Any] = field(default_factory=dict)  # routing: helpdesk type and other defaults
    message_ids: tuple[str, ...] = ()  # Message-IDs of the mail, for threading replies later
    linked_ticket_id: str = ""
    parties: tuple[str, ...] = ()  # the mail's To/Cc addresses: with `email`, the ticket's first parties


@dataclass(frozen=True)
class HistoryDraft:
    ticket_id: str
    person_id: str
    note: str
    date: datetime
    type: str = "receivedemail"
    company_id: str = ""
    message_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class DocumentDraft:
    ticket_id: str
    filename: str
    content_type: str
    size: int
    comment: str = ""


@dataclass(frozen=True)
class InboxItem:
    """One mail as the Inbox listing shows it (no body)."""
    message_id: str
    received_at: datetime
    sender: str = ""
    subject: str = ""
    categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class SubscriptionInfo:
    id: str
    resource: str
    expiration: datetime
    client_state: str = ""
    notification_url: str = ""
