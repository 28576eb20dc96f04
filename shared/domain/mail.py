"""The mail model: what one fetched Graph message means to the pipeline. Pure: performs no I/O.

`InboundMail.from_graph()` builds it from Graph's message JSON (the same shape msgraph-sdk
parses), so adapters that fetch through msgraph-sdk or plain HTTP share one mapping.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .errors import PermanentError

# The $select every fetch uses; internetMessageHeaders only come back when selected.
MESSAGE_SELECT = (
    "id", "subject", "from", "sender", "toRecipients", "ccRecipients", "replyTo", "receivedDateTime",
    "sentDateTime", "internetMessageId", "conversationId", "parentFolderId", "body", "hasAttachments",
    "internetMessageHeaders", "categories",
)
ATTACHMENT_SELECT = ("id", "name", "contentType", "size", "isInline")
# Graph's message resource has no size: the store's (PidTagMessageSize, MAPI property 0x0E08) comes
# as an extended property, expanded with the message when the mailbox keeps the original .eml.
MESSAGE_SIZE_PROPERTY = "Integer 0x0E08"
MESSAGE_SIZE_EXPAND = f"singleValueExtendedProperties($filter=id eq '{MESSAGE_SIZE_PROPERTY}')"


@dataclass(frozen=True)
class Address:
    address: str
    name: str = ""

    @property
    def normalized(self) -> str:
        return self.address.strip().lower()

    @property
    def domain(self) -> str:
        return self.normalized.rpartition("@")[2]


@dataclass(frozen=True)
class AttachmentMeta:
    id: str
    name: str
    content_type: str
    size: int
    is_inline: bool = False
    content_id: str = ""
    kind: str = "file"  # file | item | reference


@dataclass(frozen=True)
class InboundMail:
    mailbox_id: str
    message_id: str
    internet_message_id: str
    sender: Address
    subject: str
    received_at: datetime
    body_content_type: str  # html | text
    body: str
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    reply_to: tuple[Address, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    attachments: tuple[AttachmentMeta, ...] = ()
    parent_folder_id: str = ""
    conversation_id: str = ""
    categories: tuple[str, ...] = ()
    custom: dict[str, Any] = field(default_factory=dict)
    odata_type: str = ""  # "#microsoft.graph.eventMessage" for meeting requests and responses
    size: int = 0  # the store's size of the whole mail (PidTagMessageSize) when it was asked for, else 0

    def headers_named(self, name: str) -> tuple[str, ...]:
        lname = name.lower()
        return tuple(value for key, value in self.headers if key.lower() == lname)

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None

    @property
    def in_reply_to(self) -> tuple[str, ...]:
        return tuple(_MSGID.findall(self.header("In-Reply-To") or ""))

    @property
    def references(self) -> tuple[str, ...]:
        return tuple(_MSGID.findall(self.header("References") or ""))

    @property
    def thread_refs(self) -> tuple[str, ...]:
        """In-Reply-To then References (newest first, as RFC 5322 puts the parent last), de-duplicated."""
        seen: dict[str, None] = {}
        for ref in (*self.in_reply_to, *reversed(self.references)):
            seen.setdefault(ref, None)
        return tuple(seen)

    @property
    def thread_root(self) -> str:
        """The first mail of the conversation this one belongs to: References[0], else In-Reply-To,
        else '' (the mail starts a conversation)."""
        refs = self.references or self.in_reply_to
        return refs[0] if refs else ""

    @property
    def content_type(self) -> str:
        """The top-level MIME type from the headers ('' when Graph did not report one), lower case."""
        return (self.header("Content-Type") or "").split(";", 1)[0].strip().lower()

    @property
    def is_event(self) -> bool:
        return self.odata_type.lower().endswith("eventmessage")

    @property
    def recipients(self) -> tuple[Address, ...]:
        return (*self.to, *self.cc)

    def content_hash(self) -> str:
        h = hashlib.sha256()
        for part in (self.sender.normalized, self.subject, self.received_at.isoformat(), self.body):
            h.update(part.encode("utf-8", "replace"))
            h.update(b"\x00")
        return h.hexdigest()

    def idempotency_key(self) -> str:
        """Key of every CRM write for this mail, the same in every mailbox that received it.

        The internetMessageId together with the sender, so a reused or forged Message-ID cannot
        swallow someone else's mail; a content hash when there is no Message-ID.
        """
        mid = self.internet_message_id.strip().strip("<>").lower()
        basis = f"mid|{mid}|{self.sender.normalized}" if mid else f"hash|{self.content_hash()}"
        return hashlib.sha256(basis.encode()).hexdigest()[:40]

    @classmethod
    def from_graph(cls, mailbox_id: str, doc: dict[str, Any], custom_select: tuple[str, ...] = ()) -> "InboundMail":
        """The mail in Graph's message JSON; PermanentError (recorded as the mail's failure reason)
        when `doc` does not have that shape, never a crash (tests/chaos/test_fuzz_mail.py)."""
        try:
            return cls._from_graph(mailbox_id, doc, custom_select)
        except (AttributeError, TypeError, ValueError, OverflowError) as exc:
            raise PermanentError(f"Graph's message JSON has an unexpected shape ({type(exc).__name__})") from None

    @classmethod
    def _from_graph(cls, mailbox_id: str, doc: dict[str, Any], custom_select: tuple[str, ...]) -> "InboundMail":
        doc = _without_surrogates(doc)
        body = doc.get("body") or {}
        sender = _address((doc.get("from") or doc.get("sender") or {}).get("emailAddress"))
        atts = tuple(
            AttachmentMeta(
                id=str(a.get("id", "")), name=str(a.get("name") or "attachment"),
                content_type=str(a.get("contentType") or "application/octet-stream"),
                size=int(a.get("size") or 0), is_inline=bool(a.get("isInline")),
                content_id=str(a.get("contentId") or "").strip("<>"),
                kind=_attachment_kind(str(a.get("@odata.type", ""))),
            )
            for a in doc.get("attachments") or ()
        )
        return cls(
            mailbox_id=mailbox_id,
            message_id=str(doc.get("id", "")),
            internet_message_id=str(doc.get("internetMessageId") or ""),
            sender=sender,
            subject=str(doc.get("subject") or ""),
            received_at=parse_graph_time(doc.get("receivedDateTime")),
            body_content_type=str(body.get("contentType") or "text").lower(),
            body=str(body.get("content") or ""),
            to=tuple(_address(r.get("emailAddress")) for r in doc.get("toRecipients") or ()),
            cc=tuple(_address(r.get("emailAddress")) for r in doc.get("ccRecipients") or ()),
            reply_to=tuple(_address(r.get("emailAddress")) for r in doc.get("replyTo") or ()),
            headers=tuple((str(h.get("name", "")), str(h.get("value", "")))
                          for h in doc.get("internetMessageHeaders") or ()),
            attachments=atts,
            parent_folder_id=str(doc.get("parentFolderId") or ""),
            conversation_id=str(doc.get("conversationId") or ""),
            categories=tuple(doc.get("categories") or ()),
            custom={k: doc.get(k) for k in custom_select if k in doc},
            odata_type=str(doc.get("@odata.type") or ""),
            size=_message_size(doc.get("singleValueExtendedProperties")),
        )


_MSGID = re.compile(r"<[^<>\s]+>")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _without_surrogates(value: Any) -> Any:
    """JSON may carry lone UTF-16 surrogates ("\\udcff"), which no UTF-8 encoder (hashing, the HTML
    sanitiser, Table storage) accepts: each becomes U+FFFD, as a mail client would show it."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value) if _SURROGATE.search(value) else value
    if isinstance(value, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_surrogates(v) for v in value]
    return value


def _message_size(props: Any) -> int:
    """PidTagMessageSize from the expanded extended properties (Graph answers the id in its own
    spelling, e.g. "Integer 0xe08"); 0 when absent or unreadable."""
    for prop in props if isinstance(props, list) else ():
        if not isinstance(prop, dict):
            continue
        kind, _, tag = str(prop.get("id") or "").partition(" ")
        try:
            if kind.lower() == "integer" and int(tag, 16) == 0x0E08:
                return max(0, int(prop.get("value") or 0))
        except ValueError:
            return 0
    return 0


def _address(data: Any) -> Address:
    data = data or {}
    return Address(address=str(data.get("address") or ""), name=str(data.get("name") or ""))


def _attachment_kind(odata_type: str) -> str:
    t = odata_type.lower()
    return "item" if "itemattachment" in t else "reference" if "referenceattachment" in t else "file"


def parse_graph_time(value: Any) -> datetime:
    if not value:
        return datetime.now(timezone.utc)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    text = str(value).replace("Z", "+00:00")
    # Graph may send 7 fractional digits; Python 3.11 accepts up to 6.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
