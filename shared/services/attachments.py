"""A mail's attachments become CRM documents: decided by metadata, fetched economically, stored once.

1. Decide by the metadata the message GET already brought (`$expand=attachments($select=...)`),
   without downloading: cloud links (referenceAttachment) and files over the per-file limit are
   skipped with their reason; inline parts (pictures in the body) are kept per ATTACHMENTS_INLINE:
   `referenced` (those the HTML body shows with `cid:`, default), `all`, or `none`.
2. Fetch what is wanted:
   - when every attachment of the mail is small (<= SMALL_BYTES each, <= BATCH_BYTES together),
     all of them in one call (GET .../attachments, content included; Graph cannot filter that list);
   - otherwise each small one as JSON (which also tells its contentId) and each large one, and every
     attached message (itemAttachment, stored as .eml), streamed from `$value` into a spooled
     temporary file (memory up to SMALL_BYTES, then disk), one at a time: the whole mail is never
     held in memory, let alone twice.
3. Store each as one document under a key derived from the mail's key and the attachment's place
   in the mail, so a retry or a second mailbox that received the same mail writes nothing twice.
   File names are made safe (domain/policy.safe_filename) and unique within the mail.

Every attachment gets a line in the result (stored with its document id, or skipped with the
reason); the processor records them on the ledger row and lists the skipped ones in the note.

The original (a mailbox with `store_original: eml`): the mail's MIME (`GET .../messages/{id}/$value`:
every header, Received and DKIM-Signature included, the body and every attachment, as Exchange
renders it) streamed through the same spooled temporary file into one `message/rfc822` document on
the ticket, named from the date and subject, under the key `<mail key>|eml`. Decided first by size
without downloading: the store's size of the mail (PidTagMessageSize, expanded with the message), or
its non-text attachments in base64 (what MIME makes of them, 4/3 of their size) over the per-file
limit skip it; otherwise the stream stops at the limit (the part read is discarded) and the reason is
the same. A retry after a crash re-reads the MIME (nothing was written to the CRM before the whole
file was there) unless the CRM already holds the document under its key (`find_document`).
"""
from __future__ import annotations

import base64
import binascii
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import timezone
from typing import Any, Awaitable, Callable

from ..domain import policy
from ..domain.errors import ContentTooLarge, MailNotFound, PermanentError
from ..domain.mail import AttachmentMeta, InboundMail
from ..domain.model import STORE_ORIGINAL_EML, DocumentDraft, Mailbox
from ..ports import CrmGateway, MailGateway

log = logging.getLogger("inbox.attachments")

INLINE_MODES = ("referenced", "all", "none")
SMALL_BYTES = 1024 * 1024
BATCH_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_BYTES = 50 * 1024 * 1024  # Lime's smaller file store
# A delivery report's own parts (its delivery-status fields, the original or its headers): summarised
# in the note (domain/reports.py), and the original is our own mail already on the ticket.
REPORT_PART = "part of the delivery report, summarised in the note"
REPORT_PART_TYPES = ("message/delivery-status", "message/global-delivery-status", "text/rfc822-headers",
                     "message/global-headers", "message/rfc822", "message/global", "text/rfc822")


@dataclass(frozen=True)
class AttachmentRules:
    max_bytes: int = DEFAULT_MAX_BYTES
    inline: str = "referenced"
    small_bytes: int = SMALL_BYTES
    batch_bytes: int = BATCH_BYTES

    def __post_init__(self) -> None:
        if self.inline not in INLINE_MODES:
            raise ValueError(f"ATTACHMENTS_INLINE must be one of {', '.join(INLINE_MODES)}, got {self.inline!r}")


@dataclass
class AttachmentResult:
    index: int
    name: str  # as the mail named it
    filename: str  # as stored (safe, unique in the mail)
    size: int
    content_type: str
    inline: bool
    content_id: str = ""
    status: str = "pending"  # stored | skipped
    reason: str = ""
    document_id: str = ""

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data["name"] = data["name"][:120]
        data["filename"] = data["filename"][:120]
        return {k: v for k, v in data.items() if v not in ("", None) or k in ("status",)}


@dataclass
class _Fetched:
    data: bytes | None = None
    file: Any = None
    content_id: str = ""
    size: int = 0


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"


def document_key(mail_key: str, index: int, att: AttachmentMeta) -> str:
    """Position and name, not Graph's attachment id: ids differ between mailboxes for one mail."""
    return f"{mail_key}|att|{index}|{att.name}"


ORIGINAL_CONTENT_TYPE = "message/rfc822"


def original_key(mail_key: str) -> str:
    """The original's document: one per mail (its idempotency key) and kind."""
    return f"{mail_key}|eml"


def original_filename(mail: InboundMail) -> str:
    """'2026-11-21 1405 Printer broken.eml' (received, UTC): a ticket's originals sort by date."""
    when = mail.received_at.astimezone(timezone.utc).strftime("%Y-%m-%d %H%M")
    # a subject is not a path: "Order 12/34" keeps both halves (safe_filename keeps a path's last part)
    subject = " ".join(mail.subject.replace("/", "_").replace("\\", "_").split())[:150] or "mail"
    return policy.safe_filename(f"{when} {subject}.eml", fallback=f"{when} mail.eml")


@dataclass
class OriginalResult:
    """What became of the mail's original: stored (with its document) or skipped (with the reason)."""
    filename: str
    status: str = "pending"  # stored | skipped
    size: int = 0
    reason: str = ""
    document_id: str = ""

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in ("", 0) or k == "status"}

    def note_lines(self) -> list[str]:
        return [f"Original mail not stored as {self.filename} ({self.reason})"] if self.status == "skipped" else []


async def _spool(small_bytes: int, stream: Callable[[Any], Awaitable[int]]) -> "_Fetched":
    """Content streamed into a spooled temporary file (memory up to small_bytes, then disk); the
    file is closed, and what was read discarded, if the stream fails."""
    spool = tempfile.SpooledTemporaryFile(max_size=small_bytes)
    try:
        size = await stream(spool)
    except BaseException:
        spool.close()
        raise
    return _Fetched(file=spool, size=size)


async def _save(crm: CrmGateway, draft: DocumentDraft, got: "_Fetched", key: str) -> str:
    """One document from fetched content: a spooled file streams into the CRM when it can take one."""
    if got.file is not None:
        add_file = getattr(crm, "add_document_file", None)
        if add_file is not None:
            return await add_file(draft, got.file, key)
        got.file.seek(0)
        return await crm.add_document(draft, got.file.read(), key)
    return await crm.add_document(draft, got.data or b"", key)


@dataclass
class AttachmentStore:
    mail: MailGateway
    crm: CrmGateway
    rules: AttachmentRules = field(default_factory=AttachmentRules)

    async def store(self, mailbox: Mailbox, mail: InboundMail, ticket_id: str, mail_key: str,
                    report_parts: bool = False) -> list[AttachmentResult]:
        """Store the mail's attachments on the ticket; one result per attachment, in mail order.
        `report_parts`: the mail is a delivery report, whose report parts are skipped (REPORT_PART)."""
        atts = list(mail.attachments)
        if not atts:
            return []
        names = policy.unique_filenames(self._filename(a) for a in atts)
        results = [AttachmentResult(i, a.name, names[i], a.size, a.content_type, a.is_inline, a.content_id)
                   for i, a in enumerate(atts)]
        cids = policy.referenced_cids(mail.body) if mail.body_content_type == "html" else set()
        wanted: list[int] = []
        for i, att in enumerate(atts):
            reason = REPORT_PART if report_parts and _report_part(att) else self._skip_by_metadata(att, bool(cids))
            if reason:
                results[i].status, results[i].reason = "skipped", reason
            else:
                wanted.append(i)
        if not wanted:
            return results
        fetched = await self._fetch(mailbox, mail, atts, wanted)
        for i in wanted:
            att, res, got = atts[i], results[i], fetched.get(i)
            if not isinstance(got, _Fetched):
                res.status, res.reason = "skipped", got or "not returned by Graph"
                continue
            try:
                if got.content_id:
                    res.content_id = got.content_id
                if att.is_inline and self.rules.inline == "referenced" \
                        and (res.content_id or "").strip("<>").lower() not in cids:
                    res.status, res.reason = "skipped", "inline part the body does not show"
                    continue
                draft = DocumentDraft(ticket_id=ticket_id, filename=res.filename, content_type=att.content_type,
                                      size=got.size, comment="inline image of the mail" if att.is_inline else "")
                res.document_id = await _save(self.crm, draft, got, document_key(mail_key, i, att))
                res.status, res.size = "stored", got.size
            except PermanentError as exc:
                # The CRM refuses this file (type, size, name): keep the mail, say why on the row and note.
                res.status, res.reason = "skipped", f"the CRM refused it: {str(exc)[:200]}"
            finally:
                if got.file is not None:
                    got.file.close()
        return results

    async def store_original(self, mailbox: Mailbox, mail: InboundMail, ticket_id: str, mail_key: str,
                             resumed: bool = False) -> OriginalResult | None:
        """The mail's MIME as a .eml document on the ticket when the mailbox keeps originals (None
        when it does not). `resumed`: an earlier attempt may have stored it; ask the CRM first."""
        if mailbox.store_original != STORE_ORIGINAL_EML:
            return None
        res = OriginalResult(original_filename(mail), size=mail.size)
        key = original_key(mail_key)
        finder = getattr(self.crm, "find_document", None)
        if resumed and finder is not None:
            found = await finder(key)
            if found:
                res.status, res.document_id = "stored", found
                return res
        reason = self._original_too_large(mail)
        streamer = getattr(self.mail, "stream_message", None)
        if not reason and streamer is None:
            reason = "this mail gateway cannot read a mail's MIME"
        if reason:
            res.status, res.reason = "skipped", reason
            return res
        limit = self.rules.max_bytes
        try:
            got = await _spool(self.rules.small_bytes,
                               lambda sink: streamer(mailbox, mail.message_id, sink, limit=limit))
        except ContentTooLarge:
            res.status, res.reason = "skipped", (f"over the per-file limit ({human_size(limit)}) once downloaded; "
                                                 "the part read was discarded")
            return res
        except MailNotFound:
            res.status, res.reason = "skipped", "gone from the mailbox before it was read"
            return res
        except PermanentError as exc:
            res.status, res.reason = "skipped", f"could not be read: {str(exc)[:200]}"
            log.warning("attachments.original-refused message=%s error=%s", mail.message_id, type(exc).__name__)
            return res
        try:
            draft = DocumentDraft(ticket_id=ticket_id, filename=res.filename, content_type=ORIGINAL_CONTENT_TYPE,
                                  size=got.size, comment="the original mail (MIME, .eml)")
            res.document_id = await _save(self.crm, draft, got, key)
            res.status, res.size = "stored", got.size
        except PermanentError as exc:
            res.status, res.reason = "skipped", f"the CRM refused it: {str(exc)[:200]}"
        finally:
            got.file.close()
        return res

    def _original_too_large(self, mail: InboundMail) -> str:
        """Over the per-file limit by what the message GET told: the store's size of the mail, or
        its non-text attachments as MIME encodes them (base64: 4 bytes for 3)."""
        limit = self.rules.max_bytes
        if mail.size > limit:
            return f"over the per-file limit ({human_size(mail.size)} > {human_size(limit)}); not downloaded"
        encoded = sum(a.size for a in mail.attachments
                      if a.kind == "file" and not a.content_type.lower().startswith("text/")) * 4 // 3
        if encoded > limit:
            return (f"over the per-file limit (its attachments alone are {human_size(encoded)} in MIME's base64 "
                    f"> {human_size(limit)}); not downloaded")
        return ""

    # deciding -----------------------------------------------------------------------------------
    def _skip_by_metadata(self, att: AttachmentMeta, body_has_cids: bool) -> str:
        if att.kind == "reference":
            return "a link to a cloud file, not a file"
        if att.size > self.rules.max_bytes:
            return (f"over the per-file limit ({human_size(att.size)} > {human_size(self.rules.max_bytes)}); "
                    "not downloaded")
        if att.is_inline:
            if self.rules.inline == "none":
                return "inline part (ATTACHMENTS_INLINE=none)"
            if self.rules.inline == "referenced" and not body_has_cids:
                return "inline part the body does not show"
        return ""

    @staticmethod
    def _filename(att: AttachmentMeta) -> str:
        name = policy.safe_filename(att.name)
        if att.kind == "item" and not name.lower().endswith(".eml"):
            name = policy.safe_filename(name + ".eml")
        return name

    # fetching -----------------------------------------------------------------------------------
    async def _fetch(self, mailbox: Mailbox, mail: InboundMail, atts: list[AttachmentMeta],
                     wanted: list[int]) -> dict[int, _Fetched | str]:
        """The content of each wanted attachment, or the reason it could not be read."""
        out: dict[int, _Fetched | str] = {}
        gw = self.mail
        files = [a for a in atts if a.kind == "file"]
        all_small = all(a.size <= self.rules.small_bytes for a in files) \
            and sum(a.size for a in files) <= self.rules.batch_bytes
        wanted_files = [i for i in wanted if atts[i].kind == "file"]
        lister = getattr(gw, "list_attachments", None)
        if lister is not None and len(wanted_files) > 1 and all_small:
            try:
                listed = {str(a.get("id")): a for a in await lister(mailbox, mail.message_id)}
            except MailNotFound:
                listed = {}
            for i in wanted_files:
                item = listed.get(atts[i].id)
                if item is not None:
                    out[i] = self._decode(item)
        for i in wanted:
            if i in out:
                continue
            att = atts[i]
            try:
                out[i] = await self._fetch_one(mailbox, mail, att)
            except MailNotFound:
                out[i] = "gone from the mailbox before it was read"
            except PermanentError as exc:
                out[i] = f"could not be read: {str(exc)[:200]}"
                log.warning("attachments.fetch-refused message=%s index=%s error=%s", mail.message_id, i,
                            type(exc).__name__)
        return out

    async def _fetch_one(self, mailbox: Mailbox, mail: InboundMail, att: AttachmentMeta) -> _Fetched:
        gw = self.mail
        getter = getattr(gw, "get_attachment_item", None)
        streamer = getattr(gw, "stream_attachment", None)
        small = att.size <= self.rules.small_bytes
        if att.kind == "file" and getter is not None and (small or (att.is_inline and self.rules.inline == "referenced")):
            return self._decode(await getter(mailbox, mail.message_id, att.id))
        if streamer is not None:
            got = await _spool(self.rules.small_bytes,
                               lambda sink: streamer(mailbox, mail.message_id, att.id, sink, limit=self.rules.max_bytes))
            got.content_id = att.content_id
            return got
        data = await gw.get_attachment(mailbox, mail.message_id, att.id)
        if len(data) > self.rules.max_bytes:
            raise PermanentError("attachment content is over the per-file limit")
        return _Fetched(data=data, size=len(data), content_id=att.content_id)

    @staticmethod
    def _decode(item: dict[str, Any]) -> _Fetched:
        raw = item.get("contentBytes")
        try:
            data = base64.b64decode(raw or "", validate=False)
        except (binascii.Error, ValueError):
            raise PermanentError("Graph returned attachment content that is not base64") from None
        return _Fetched(data=data, size=len(data), content_id=str(item.get("contentId") or "").strip("<>"))


def _report_part(att: AttachmentMeta) -> bool:
    return att.kind == "item" or att.content_type.split(";", 1)[0].strip().lower() in REPORT_PART_TYPES
