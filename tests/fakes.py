"""In-memory fakes of the ports (shared/ports.py), for fast service tests.

They keep the adapters' semantics that the services rely on: the ledger's lease and ETag guard,
the mail gateway's 404s, the queue's envelopes.  Tests assert on their state (`sent`, `deleted`).
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator

from shared.domain import envelope
from shared.domain.errors import ContentTooLarge, LeaseHeld, MailNotFound, TransientError
from shared.domain.mail import InboundMail
from shared.domain.model import FAILED, FINISHED, PROCESSING, SKIPPED, InboxItem, LedgerEntry, Mailbox


class FakeClock:
    def __init__(self, now: datetime | None = None) -> None:
        self.current = now or datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)

    def now(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


class FakeQueue:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, int]] = []
        self.fail_next = 0

    async def send(self, queue: str, job: Any, visibility_timeout: int = 0) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise TransientError("queue down")
        self.sent.append((queue, envelope.encode(job), visibility_timeout))

    def on(self, queue: str) -> list[str]:
        return [text for q, text, _ in self.sent if q == queue]


class FakeRegistry:
    def __init__(self, *boxes: Mailbox) -> None:
        self.boxes = {b.id: b for b in boxes}

    async def get(self, mailbox_id: str) -> Mailbox | None:
        return self.boxes.get(mailbox_id.lower())

    async def list(self) -> list[Mailbox]:
        return list(self.boxes.values())

    async def save(self, mailbox: Mailbox) -> Mailbox:
        self.boxes[mailbox.id] = mailbox
        return mailbox

    async def delete(self, mailbox_id: str) -> None:
        self.boxes.pop(mailbox_id, None)


class FakeLedger:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.rows: dict[tuple[str, str], LedgerEntry] = {}
        self._etags = itertools.count(1)

    async def get(self, mailbox_id: str, message_id: str) -> LedgerEntry | None:
        row = self.rows.get((mailbox_id, message_id))
        return copy.deepcopy(row) if row else None

    async def claim(self, mailbox_id, message_id, owner, lease_seconds, correlation_id, source) -> LedgerEntry:
        now = self.clock.now()
        row = await self.get(mailbox_id, message_id)
        if row is None:
            row = LedgerEntry(mailbox_id, message_id, created_at=now, correlation_id=correlation_id, source=source)
            row.etag = ""
        elif row.status in FINISHED:
            return row
        elif row.status == PROCESSING and row.lease_owner not in ("", owner) and row.lease_until and row.lease_until > now:
            raise LeaseHeld("held", retry_after=(row.lease_until - now).total_seconds())
        row.status, row.lease_owner = PROCESSING, owner
        row.lease_until = now + timedelta(seconds=lease_seconds)
        row.attempts += 1
        return await self.save(row)

    async def save(self, entry: LedgerEntry) -> LedgerEntry:
        current = self.rows.get((entry.mailbox_id, entry.message_id))
        if current is not None and current.etag != entry.etag:
            raise LeaseHeld("changed")
        entry.etag = str(next(self._etags))
        entry.updated_at = self.clock.now()
        self.rows[(entry.mailbox_id, entry.message_id)] = copy.deepcopy(entry)
        return entry

    async def list_status(self, status, mailbox_id=None, since=None) -> list[LedgerEntry]:
        return [copy.deepcopy(r) for r in self.rows.values() if r.status == status
                and (mailbox_id is None or r.mailbox_id == mailbox_id)]


class FakeMail:
    """A mailbox store with an Inbox and other folders; faults are injected per operation."""

    INBOX = "inbox-folder-id"

    def __init__(self) -> None:
        self.messages: dict[tuple[str, str], dict[str, Any]] = {}
        self.deleted: list[str] = []
        self.moved: list[tuple[str, str]] = []
        self.categories: dict[str, list[str]] = {}
        self.faults: dict[str, list[Exception]] = {}
        self.calls: dict[str, int] = {}

    def put(self, mailbox: Mailbox, mail: InboundMail, mime: bytes = b"") -> None:
        """`mime`: what `$value` serves (default: a few headers made from the mail)."""
        self.messages[(mailbox.id, mail.message_id)] = {"mail": mail, "mime": mime}

    def _maybe_fail(self, op: str) -> None:
        self.calls[op] = self.calls.get(op, 0) + 1
        queue = self.faults.get(op)
        if queue:
            raise queue.pop(0)

    async def get_message(self, mailbox: Mailbox, message_id: str) -> InboundMail:
        self._maybe_fail("get")
        item = self.messages.get((mailbox.id, message_id))
        if not item:
            raise MailNotFound("404")
        if message_id in self.categories:  # as Graph returns it after a PATCH of the categories
            return dataclasses.replace(item["mail"], categories=tuple(self.categories[message_id]))
        return item["mail"]

    async def inbox_folder_id(self, mailbox: Mailbox) -> str:
        return self.INBOX

    async def get_attachment(self, mailbox, message_id, attachment_id) -> bytes:
        self._maybe_fail("attachment")
        return b""

    async def stream_message(self, mailbox: Mailbox, message_id: str, sink: Any, limit: int | None = None) -> int:
        self._maybe_fail("mime")
        item = self.messages.get((mailbox.id, message_id))
        if not item:
            raise MailNotFound("404")
        mail = item["mail"]
        data = item.get("mime") or (f"Message-ID: {mail.internet_message_id}\r\nFrom: {mail.sender.address}\r\n"
                                    f"Subject: {mail.subject}\r\n\r\n{mail.body}\r\n").encode()
        sink.seek(0)
        sink.truncate()
        for offset in range(0, len(data), 4096):
            chunk = data[offset:offset + 4096]
            if limit is not None and offset + len(chunk) > limit:
                raise ContentTooLarge(f"the mail's MIME is over the {limit}-byte limit")
            sink.write(chunk)
        return len(data)

    async def delete_message(self, mailbox: Mailbox, message_id: str) -> None:
        self._maybe_fail("delete")
        if self.messages.pop((mailbox.id, message_id), None) is None:
            raise MailNotFound("404")
        self.deleted.append(message_id)

    async def move_message(self, mailbox: Mailbox, message_id: str, folder: str) -> None:
        self._maybe_fail("move")
        if self.messages.pop((mailbox.id, message_id), None) is None:
            raise MailNotFound("404")
        self.moved.append((message_id, folder))

    async def set_categories(self, mailbox: Mailbox, message_id: str, categories: list[str]) -> None:
        self._maybe_fail("categorize")
        self.categories[message_id] = list(categories)

    async def list_folder(self, mailbox, folder="inbox", received_after=None, received_before=None,
                          page_size=100) -> AsyncIterator[InboxItem]:
        items = sorted((v["mail"] for (b, _), v in self.messages.items() if b == mailbox.id),
                       key=lambda m: m.received_at)
        for m in items:
            if received_after and m.received_at < received_after:
                continue
            if received_before and m.received_at >= received_before:
                continue
            yield InboxItem(m.message_id, m.received_at, m.sender.address, m.subject)


__all__ = ["FakeClock", "FakeQueue", "FakeRegistry", "FakeLedger", "FakeMail", "FAILED", "SKIPPED"]
