"""A MailGateway over real MIME: each delivered mail becomes Graph message JSON through
tools/sim/mime2graph (what Exchange Online stores), and is served the way the Graph adapter serves
it: the message with attachment METADATA only (`$expand=attachments($select=...)`, no contentId,
no content), then `list_attachments` (everything with content, one call), `get_attachment_item`
(one as JSON), `stream_attachment` (`$value`, chunked into a file), `stream_message` (the
mail's `$value`: the MIME exactly as delivered), with the store's size of the mail
(PidTagMessageSize: body, headers and attachments as stored, not their MIME encoding) when the
mailbox keeps originals, as the Graph adapter asks for it, and `read_message_mime` (the mail's
`$value` cut at a limit, as the adapter reads a delivery report).

Records what was fetched (`calls`, `fetched`), so tests can prove a skipped attachment was never
downloaded and small ones came in one call. Performs no I/O.
"""
from __future__ import annotations

import base64
import itertools
from collections import Counter
from datetime import datetime
from typing import Any, AsyncIterator

from shared.domain.errors import ContentTooLarge, MailNotFound
from shared.domain.mail import ATTACHMENT_SELECT, InboundMail
from shared.domain.model import STORE_ORIGINAL_EML, InboxItem, Mailbox
from tools.sim.mime2graph import mime_to_graph_message

STREAM_CHUNK = 64 * 1024


def store_size(doc: dict[str, Any]) -> int:
    """What Exchange reports as a mail's size (PidTagMessageSize): its parts as stored, roughly the
    body, the headers and each attachment's size; less than the MIME, which encodes binary
    attachments in base64."""
    headers = sum(len(str(h.get("name", ""))) + len(str(h.get("value", ""))) + 4
                  for h in doc.get("internetMessageHeaders") or ())
    body = len(str((doc.get("body") or {}).get("content") or "").encode("utf-8"))
    return headers + body + sum(int(a.get("size") or 0) for a in doc.get("attachments") or ())


class MimeMailbox:
    INBOX = "inbox-folder-id"

    def __init__(self) -> None:
        self.messages: dict[tuple[str, str], dict[str, Any]] = {}
        self.deleted: list[str] = []
        self.calls: Counter[str] = Counter()
        self.fetched: list[str] = []  # names of attachments whose content was handed out
        self.raw: dict[tuple[str, str], bytes] = {}
        self._ids = itertools.count(1)

    def deliver(self, mailbox: Mailbox, raw: bytes, received_at: datetime) -> str:
        doc = mime_to_graph_message(raw)
        message_id = f"AAMkAD{next(self._ids):06d}"
        doc.update(id=message_id, parentFolderId=self.INBOX, receivedDateTime=received_at.isoformat())
        for i, att in enumerate(doc.get("attachments") or ()):
            att["id"] = f"{message_id}-att{i}"
        self.messages[(mailbox.id, message_id)] = doc
        self.raw[(mailbox.id, message_id)] = bytes(raw)
        return message_id

    def _doc(self, mailbox: Mailbox, message_id: str) -> dict[str, Any]:
        doc = self.messages.get((mailbox.id, message_id))
        if doc is None:
            raise MailNotFound("Graph 404")
        return doc

    def _att(self, mailbox: Mailbox, message_id: str, attachment_id: str) -> dict[str, Any]:
        for att in self._doc(mailbox, message_id).get("attachments") or ():
            if att["id"] == attachment_id:
                return att
        raise MailNotFound("Graph 404 (attachment)")

    @staticmethod
    def _content(att: dict[str, Any]) -> bytes:
        if "_raw" in att:
            return att["_raw"]
        return base64.b64decode(att.get("contentBytes") or "")

    async def get_message(self, mailbox: Mailbox, message_id: str) -> InboundMail:
        self.calls["get"] += 1
        doc = dict(self._doc(mailbox, message_id))
        doc["attachments"] = [{"@odata.type": a.get("@odata.type"), **{k: a.get(k) for k in ATTACHMENT_SELECT}}
                              for a in doc.get("attachments") or ()]
        if mailbox.store_original == STORE_ORIGINAL_EML:
            size = store_size(doc)
            doc["singleValueExtendedProperties"] = [{"id": "Integer 0xe08", "value": str(size)}]
        return InboundMail.from_graph(mailbox.id, doc)

    async def stream_message(self, mailbox: Mailbox, message_id: str, sink: Any, limit: int | None = None) -> int:
        self.calls["stream_message"] += 1
        self._doc(mailbox, message_id)
        data = self.raw[(mailbox.id, message_id)]
        sink.seek(0)
        sink.truncate()
        for offset in range(0, len(data), STREAM_CHUNK):
            chunk = data[offset:offset + STREAM_CHUNK]
            if limit is not None and offset + len(chunk) > limit:
                raise ContentTooLarge(f"the mail's MIME is over the {limit}-byte limit")
            sink.write(chunk)
        return len(data)

    async def inbox_folder_id(self, mailbox: Mailbox) -> str:
        return self.INBOX

    async def list_attachments(self, mailbox: Mailbox, message_id: str) -> list[dict[str, Any]]:
        self.calls["list_attachments"] += 1
        out = []
        for att in self._doc(mailbox, message_id).get("attachments") or ():
            item = {k: v for k, v in att.items() if k != "_raw"}
            if att.get("@odata.type", "").endswith("fileAttachment"):
                self.fetched.append(att["name"])
            out.append(item)
        return out

    async def get_attachment_item(self, mailbox: Mailbox, message_id: str, attachment_id: str) -> dict[str, Any]:
        self.calls["get_attachment_item"] += 1
        att = self._att(mailbox, message_id, attachment_id)
        self.fetched.append(att["name"])
        return {k: v for k, v in att.items() if k != "_raw"}

    async def stream_attachment(self, mailbox: Mailbox, message_id: str, attachment_id: str, sink: Any,
                                limit: int | None = None) -> int:
        self.calls["stream_attachment"] += 1
        att = self._att(mailbox, message_id, attachment_id)
        self.fetched.append(att["name"])
        data = self._content(att)
        sink.seek(0)
        sink.truncate()
        for offset in range(0, len(data), STREAM_CHUNK):
            sink.write(data[offset:offset + STREAM_CHUNK])
        return len(data)

    async def get_attachment(self, mailbox: Mailbox, message_id: str, attachment_id: str) -> bytes:
        self.calls["get_attachment"] += 1
        att = self._att(mailbox, message_id, attachment_id)
        self.fetched.append(att["name"])
        return self._content(att)

    async def read_message_mime(self, mailbox: Mailbox, message_id: str, limit: int) -> tuple[bytes, bool]:
        self.calls["mime"] += 1
        self._doc(mailbox, message_id)
        raw = self.raw[(mailbox.id, message_id)]
        return raw[:limit], len(raw) > limit

    async def delete_message(self, mailbox: Mailbox, message_id: str) -> None:
        self.calls["delete"] += 1
        if self.messages.pop((mailbox.id, message_id), None) is None:
            raise MailNotFound("Graph 404")
        self.deleted.append(message_id)

    async def move_message(self, mailbox: Mailbox, message_id: str, folder: str) -> None:
        await self.delete_message(mailbox, message_id)

    async def set_categories(self, mailbox: Mailbox, message_id: str, categories: list[str]) -> None:
        self.calls["categorize"] += 1

    async def list_folder(self, mailbox: Mailbox, folder: str = "inbox", received_after: datetime | None = None,
                          received_before: datetime | None = None, page_size: int = 100) -> AsyncIterator[InboxItem]:
        for (box, mid), doc in list(self.messages.items()):
            if box == mailbox.id:
                yield InboxItem(mid, datetime.fromisoformat(doc["receivedDateTime"]))
