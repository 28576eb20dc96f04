"""RFC 5322 / MIME message -> Microsoft Graph ``message`` JSON, as Exchange Online would store it.

Owns: :func:`mime_to_graph_message`. Used by the Graph simulator when a test delivers raw MIME
(Outlook, Gmail and Exchange shapes: multipart/alternative, multipart/mixed with attachments,
multipart/related inline images with Content-ID, RFC 2047 encoded subjects and names, RFC 2231
filenames, missing Message-ID, calendar parts, attached messages).

What Graph does and this mirrors: the HTML body is preferred over the text one; inline parts
(Content-ID referenced from a multipart/related HTML body) are attachments with ``isInline``;
``hasAttachments`` counts only non-inline attachments (as Outlook shows the paper clip); an
attached ``message/rfc822`` is an ``itemAttachment`` (no contentBytes; its ``$value`` is the MIME:
learn.microsoft.com/graph/api/attachment-get, "For an item attachment that is a ... message, the raw
contents returned is in MIME format"), while a report's other parts (``message/delivery-status``,
``text/rfc822-headers``, ``message/global-headers``, ``message/feedback-report``) are
``fileAttachment``\ s of their own content type holding the part's bytes; the message's own ``$value``
(the simulator serves the raw MIME it was given) is how the app reads a report. Graph's own example
of an item attachment shows ``contentType: null`` (same page, example 2); one converted from a MIME part
keeps the part's type here, and the app tells item attachments by ``@odata.type``, never by it;
``internetMessageId`` keeps its angle brackets; header values are decoded and unfolded.
Fields the mail store assigns (id, receivedDateTime, parentFolderId, conversationId, ...) are
left to the simulator. A missing Message-ID gives ``internetMessageId: None``.
"""

from __future__ import annotations

import base64
import datetime as dt
import email
import email.header
import email.policy
import email.utils
import mimetypes
import re
from email.message import EmailMessage, Message
from typing import Any

__all__ = ["mime_to_graph_message"]

_BODY_TYPES = ("text/html", "text/plain")
_WS = re.compile(r"\s+")


def _decode_words(value: str) -> str:
    """Decode RFC 2047 encoded-words anywhere in ``value`` (also inside parameters)."""
    if "=?" not in value:
        return value
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


def _header_text(msg: Message, name: str, raw: Any = None) -> str:
    value = raw if raw is not None else msg.get(name)
    if value is None:
        return ""
    try:
        text = str(value)
    except Exception:  # noqa: BLE001 - malformed header: fall back to the raw text
        text = str(getattr(value, "_value", "") or "")
    return _WS.sub(" ", _decode_words(text)).strip()


def _addresses(msg: Message, name: str) -> list[dict[str, Any]]:
    values = msg.get_all(name) or []
    out: list[dict[str, Any]] = []
    for value in values:
        addrs = None
        try:
            addrs = value.addresses  # policy.default AddressHeader
        except Exception:  # noqa: BLE001 - unparsable address header
            addrs = None
        if addrs:
            for addr in addrs:
                address = addr.addr_spec if addr.username else ""
                if not address:
                    continue
                out.append({"emailAddress": {"name": addr.display_name or address,
                                             "address": address}})
            continue
        for display, address in email.utils.getaddresses([_header_text(msg, name, value)]):
            if address:
                out.append({"emailAddress": {"name": _decode_words(display) or address,
                                             "address": address}})
    return out


def _iso(value: dt.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sent_date(msg: Message) -> str | None:
    value = msg.get("Date")
    if value is None:
        return None
    when = getattr(value, "datetime", None)
    if when is None:
        try:
            when = email.utils.parsedate_to_datetime(str(value))
        except (TypeError, ValueError, IndexError):
            return None
    return _iso(when)


def _part_text(part: Message) -> str:
    try:
        content = part.get_content()  # type: ignore[attr-defined]
        if isinstance(content, str):
            return content
    except (LookupError, UnicodeError, AttributeError, KeyError, ValueError):
        pass
    payload = part.get_payload(decode=True) or b""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("utf-8", "replace")


def _disposition(part: Message) -> str:
    return (part.get_content_disposition() or "").lower()


def _filename(part: Message) -> str | None:
    try:
        name = part.get_filename()
    except Exception:  # noqa: BLE001 - broken parameters
        name = None
    if not name:
        name = part.get_param("name", header="content-type")  # type: ignore[assignment]
        if isinstance(name, tuple):
            name = email.utils.collapse_rfc2231_value(name)
    if not name:
        return None
    return _decode_words(str(name)).strip() or None


def _leaves(part: Message, parent_type: str = "") -> list[tuple[Message, str]]:
    """Leaf parts with the content type of their parent, not descending into message/rfc822."""
    if part.get_content_maintype() == "multipart":
        out: list[tuple[Message, str]] = []
        for sub in part.get_payload():  # type: ignore[union-attr]
            if isinstance(sub, Message):
                out.extend(_leaves(sub, part.get_content_type()))
        return out
    return [(part, parent_type)]


def _find_body(leaves: list[tuple[Message, str]]) -> tuple[Message | None, str]:
    """The HTML body part (else the text one): the first non-attachment text part."""
    for wanted in _BODY_TYPES:
        for part, _parent in leaves:
            if part.get_content_type() == wanted and _disposition(part) != "attachment" \
                    and not _filename(part):
                return part, ("html" if wanted == "text/html" else "text")
    return None, "text"


def _attachment(part: Message, html: str, parent_type: str) -> dict[str, Any]:
    ctype = part.get_content_type()
    disposition = _disposition(part)
    content_id = (part.get("Content-ID") or "").strip()
    content_id = content_id[1:-1] if content_id.startswith("<") and content_id.endswith(">") \
        else content_id
    referenced = bool(content_id) and f"cid:{content_id}".lower() in html.lower()
    is_inline = bool(content_id) and disposition != "attachment" and (
        referenced or parent_type == "multipart/related")
    name = _filename(part)
    if ctype == "message/rfc822":
        inner = part.get_payload(0) if part.is_multipart() else None
        data = inner.as_bytes() if isinstance(inner, Message) else (
            part.get_payload(decode=True) or b"")
        if not name:
            name = _header_text(inner, "Subject") if isinstance(inner, Message) else ""
            name = name or "Untitled"
        return {"@odata.type": "#microsoft.graph.itemAttachment", "name": name,
                "contentType": ctype, "size": len(data), "isInline": False,
                "contentId": content_id or None, "_raw": data}
    payload = part.get_payload()
    if isinstance(payload, list):
        # message/delivery-status (its header blocks), message/global-headers, message/feedback-report,
        # message/disposition-notification: the email package parsed the content into messages; Exchange
        # keeps the part's bytes as a fileAttachment of that content type.
        data = b"".join(p.as_bytes() for p in payload if isinstance(p, Message))
    else:
        data = part.get_payload(decode=True) or b""
    if not name:
        ext = mimetypes.guess_extension(ctype) or ".bin"
        name = ("calendar" if ctype == "text/calendar" else "attachment") + ext
    return {"@odata.type": "#microsoft.graph.fileAttachment", "name": name,
            "contentType": ctype, "size": len(data), "isInline": is_inline,
            "contentId": content_id or None, "contentLocation": part.get("Content-Location"),
            "contentBytes": base64.b64encode(data).decode("ascii")}


def _importance(msg: Message) -> str:
    value = (_header_text(msg, "Importance") or _header_text(msg, "X-Priority")
             or _header_text(msg, "Priority")).lower()
    if value.startswith(("high", "urgent", "1", "2")):
        return "high"
    if value.startswith(("low", "non-urgent", "5", "4")):
        return "low"
    return "normal"


class _LenientPolicy(email.policy.EmailPolicy):
    """policy.default, except that a header CPython's structured parser chokes on (it raises
    IndexError on `Message-ID: <<>>`, for one) reads as its raw text, as Exchange keeps it."""

    def header_fetch_parse(self, name: str, value: str) -> Any:
        try:
            return super().header_fetch_parse(name, value)
        except Exception:  # noqa: BLE001 - any byte sequence is a mail Exchange would store
            return email.policy.compat32.header_fetch_parse(name, value)


_POLICY = _LenientPolicy()


def mime_to_graph_message(raw: bytes) -> dict[str, Any]:
    """Parse raw RFC 5322 bytes into the Graph message JSON the simulator stores.

    Attachments are Graph attachment dicts (fileAttachment with base64 ``contentBytes``;
    itemAttachment for attached messages, whose MIME is kept under the private key ``_raw``).
    """
    msg: EmailMessage = email.message_from_bytes(raw, policy=_POLICY)  # type: ignore
    headers = [{"name": name, "value": _header_text(msg, name, value)}
               for name, value in msg.items()]
    leaves = _leaves(msg)
    body_part, body_type = _find_body(leaves)
    body_text = _part_text(body_part) if body_part is not None else ""
    html = body_text if body_type == "html" else ""
    attachments: list[dict[str, Any]] = []
    meeting: str | None = None
    for part, parent_type in leaves:
        if part is body_part:
            continue
        ctype = part.get_content_type()
        disposition = _disposition(part)
        named = _filename(part) is not None
        if ctype in _BODY_TYPES and disposition != "attachment" and not named:
            continue  # the other alternative of the body, or a body fragment
        if ctype == "text/calendar" and disposition != "attachment" and not named:
            method = (part.get_param("method") or "")
            method = str(method).upper()
            meeting = {"REQUEST": "meetingRequest", "CANCEL": "meetingCancelled",
                       "REPLY": "meetingAccepted"}.get(method, "meetingRequest")
            continue  # Exchange turns an invitation into an eventMessage, not an attachment
        if part.get_content_maintype() == "multipart":
            continue
        attachments.append(_attachment(part, html, parent_type))

    sender = _addresses(msg, "Sender")
    from_ = _addresses(msg, "From")
    message_id = _header_text(msg, "Message-ID") or None
    result: dict[str, Any] = {
        "subject": _header_text(msg, "Subject"),
        "from": from_[0] if from_ else None,
        "sender": (sender or from_ or [None])[0],
        "toRecipients": _addresses(msg, "To"),
        "ccRecipients": _addresses(msg, "Cc"),
        "bccRecipients": _addresses(msg, "Bcc"),
        "replyTo": _addresses(msg, "Reply-To"),
        "internetMessageId": message_id,
        "sentDateTime": _sent_date(msg),
        "body": {"contentType": body_type, "content": body_text},
        "internetMessageHeaders": headers,
        "attachments": attachments,
        "hasAttachments": any(not a["isInline"] for a in attachments),
        "importance": _importance(msg),
        "isReadReceiptRequested": msg.get("Disposition-Notification-To") is not None,
        "isDeliveryReceiptRequested": msg.get("Return-Receipt-To") is not None,
    }
    if meeting:
        result["@odata.type"] = "#microsoft.graph.eventMessage"
        result["meetingMessageType"] = meeting
    return _valid_text(result)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _valid_text(value: Any) -> Any:
    """Bytes that are not UTF-8 come out of the email package as lone surrogates; Exchange stores
    U+FFFD instead (and the simulator could not serve them as JSON)."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value) if _SURROGATE.search(value) else value
    if isinstance(value, dict):
        return {k: _valid_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_valid_text(v) for v in value]
    return value
