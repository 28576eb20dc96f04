"""The ports: what the services need from the outside world, as Protocols.

Adapters in shared/adapters implement them against Graph (msgraph-sdk), Azure Storage and the
CRMs; tests/fakes.py implements them in memory.  Every method is async: the Graph SDK is, and
one event loop per worker serves all invocations.  Performs no I/O.
"""
from __future__ import annotations

from datetime import datetime
from typing import AsyncIterator, Iterable, Protocol

from .domain.envelope import Job
from .domain.mail import InboundMail
from .domain.model import (
    DocumentDraft, HistoryDraft, InboxItem, LedgerEntry, Mailbox, PersonRef, SubscriptionInfo, TicketDraft,
    TicketRef,
)


class Clock(Protocol):
    def now(self) -> datetime: ...


class JobQueue(Protocol):
    async def send(self, queue: str, job: Job, visibility_timeout: int = 0) -> None:
        """Put one envelope on a queue (base64 as the Functions host expects). Raises on failure."""


class MailGateway(Protocol):
    """Graph mail operations on one monitored mailbox. Errors: MailNotFound, TransientError,
    PermanentError (from shared.domain.errors).

    Optional capabilities the services use when present: `list_attachments`, `get_attachment_item`,
    `stream_attachment` (services/attachments.py), `stream_message(mailbox, message_id, sink,
    limit) -> int` (the mail's MIME written to a binary file; ContentTooLarge past `limit`) and
    `read_message_mime(mailbox, message_id, limit) -> (bytes, cut)` (the start of the mail's MIME, for
    a delivery report: services/delivery_reports.py)."""

    async def get_message(self, mailbox: Mailbox, message_id: str) -> InboundMail: ...
    async def inbox_folder_id(self, mailbox: Mailbox) -> str: ...
    async def get_attachment(self, mailbox: Mailbox, message_id: str, attachment_id: str) -> bytes: ...
    async def delete_message(self, mailbox: Mailbox, message_id: str) -> None: ...
    async def move_message(self, mailbox: Mailbox, message_id: str, folder: str) -> None: ...
    async def set_categories(self, mailbox: Mailbox, message_id: str, categories: list[str]) -> None: ...
    def list_folder(self, mailbox: Mailbox, folder: str = "inbox", received_after: datetime | None = None,
                    received_before: datetime | None = None, page_size: int = 100) -> AsyncIterator[InboxItem]:
        """Oldest first."""
        ...


class SubscriptionGateway(Protocol):
    async def create(self, client: str, resource: str, notification_url: str, lifecycle_url: str,
                     client_state: str, expiration: datetime) -> SubscriptionInfo: ...
    async def renew(self, client: str, subscription_id: str, expiration: datetime) -> SubscriptionInfo: ...
    async def delete(self, client: str, subscription_id: str) -> None: ...
    async def get(self, client: str, subscription_id: str) -> SubscriptionInfo | None: ...
    async def list(self, client: str) -> list[SubscriptionInfo]: ...
    async def resolve_user(self, client: str, address: str) -> str | None:
        """The user's object id, or None when the app may not read users."""


class MailboxRegistry(Protocol):
    async def get(self, mailbox_id: str) -> Mailbox | None: ...
    async def list(self) -> list[Mailbox]: ...
    async def save(self, mailbox: Mailbox) -> Mailbox: ...
    async def delete(self, mailbox_id: str) -> None: ...


class Ledger(Protocol):
    async def claim(self, mailbox_id: str, message_id: str, owner: str, lease_seconds: int,
                    correlation_id: str, source: str) -> LedgerEntry:
        """Create the row or take it over. Returns finished rows as they are (the caller stops);
        raises LeaseHeld while another worker's lease is live."""

    async def save(self, entry: LedgerEntry) -> LedgerEntry:
        """ETag-guarded write; raises LeaseHeld when someone else wrote in between."""

    async def get(self, mailbox_id: str, message_id: str) -> LedgerEntry | None: ...
    async def list_status(self, status: str, mailbox_id: str | None = None,
                          since: datetime | None = None) -> list[LedgerEntry]: ...


class CrmGateway(Protocol):
    """A CRM that holds persons, companies, helpdesk tickets, history notes and documents.

    Every create takes an idempotency key derived from the mail: calling it again with the same
    key returns what the first call created instead of creating a second object.

    Statuses are the normalized keys `started`, `done` (closed) and `parked`; a TicketRef of a done
    ticket carries `closed_at` (its enddate), which the closed-ticket policies need.

    Optional capabilities the processor uses when present: `document_url(doc_id) -> str` (where a
    stored inline image can be shown from the HTML note, for `cid:` links),
    `add_document_file(draft, file, key) -> str` (a large attachment streamed from a seekable
    binary file instead of bytes in memory), `find_document(key) -> str | None` (the document
    a key already made, asked on a retry before a large file is read again), `mail_writes(key,
    owner=, sole=)` (an async context manager around one mail's writes, letting the CRM record
    them together: crm_lime/creates.py), and the batched lookups `lookup_sender` and
    `match_companies` (shared/services/mail_to_crm.py)."""

    async def find_or_create_person(self, address: str, name: str, company_id: str = "") -> str:
        """The person with this email, created (with `company_id`, '' for none) when there is none.
        Concurrent calls for one address make one person. An existing person is not changed."""
    async def lookup_person(self, address: str) -> PersonRef | None:
        """The first person whose email is exactly `address` (case-insensitive), with its company."""
    async def find_company_ids(self, match: str, value: str, limit: int = 2) -> list[str]:
        """Ids of companies (at most `limit`) whose email equals `value` (match="email"), whose email
        has the domain `value` (match="email_domain"), or whose website's domain is `value`
        (match="website", `www.` and scheme ignored)."""
    async def person_company_ids(self, domain: str, limit: int = 2) -> list[str]:
        """The distinct company ids ('' standing for "no company") of persons whose email has
        `domain`, at most `limit` of them: one non-empty id means they all belong to that company."""
    async def reserve_ticket_number(self) -> str:
        """A fresh ticket number, or '' when the CRM numbers tickets itself."""
    async def create_ticket(self, draft: TicketDraft, key: str) -> TicketRef: ...
    async def add_history(self, draft: HistoryDraft, key: str) -> str: ...
    async def add_document(self, draft: DocumentDraft, data: bytes, key: str) -> str: ...
    async def get_ticket(self, number: str) -> TicketRef | None:
        """By number (or ticket id), with its parties where the CRM keeps them."""
    async def find_ticket_by_message_ids(self, ids: list[str]) -> TicketRef | None:
        """The ticket that holds any of these Message-IDs (threading), with its parties."""
    async def add_message_ids(self, ticket_id: str, ids: list[str], parties: Iterable[str] = ()) -> None:
        """Remember a follow-up's Message-IDs so replies to it thread too, and its To/Cc addresses
        as parties of the ticket (idempotent)."""
    async def set_ticket_status(self, ticket_id_or_number: str, status: str) -> TicketRef | None: ...
