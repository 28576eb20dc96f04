"""Delivery reports (bounces): what a report says happened to which recipient, and which message it
reports on. Pure: parses bytes already read, performs no I/O, never raises on what it is given.

A report of a mail we sent carries that mail (RFC 3464 section 2: a `multipart/report` whose third part
is the original as `message/rfc822`, or only its headers as `text/rfc822-headers`; RFC 6532/6533 the
internationalised `message/global`, `message/global-headers`, `message/global-delivery-status`).
Threading reads the original's Message-ID, In-Reply-To and References, because the report's own
headers name nothing of ours (Zammad's `bounce_follow_up_check.rb` does the same with the attached
`message/rfc822`; facts/email-to-ticket-anchors.md 1.2). Where no part holds the original, the
Message-ID a report names elsewhere is used: Gmail's `X-Original-Message-ID` in the delivery-status
part, or the header lines of the original that qmail ("Below this line is a copy of the message"),
Exchange ("Original message headers") and SMS/MMS gateways quote in their text.

What happened: RFC 3464 section 2.3.3 `Action` (failed | delayed | delivered | relayed | expanded) and
2.3.4 `Status` (RFC 3463: class 5 permanent, 4 transient, 2 success), per recipient. A report without
those fields (a plain multipart/mixed bounce) is judged by its text: delay wording, then an enhanced
status code or failure wording (EmailEngine's lib/bounce-detect.js reads text bounces the same way).
"""
from __future__ import annotations

import email
import email.header
import email.policy
import re
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from html import unescape
from typing import Any, Iterable

# How much of a report's MIME is read: the explanation, the delivery-status part and the original's
# headers come first; an original's body and attachments beyond this are never needed.
MAX_REPORT_BYTES = 256 * 1024
MAX_PARTS = 200  # parts looked at per report (a hostile one may nest thousands)
MAX_RECIPIENTS = 20
SUMMARY_RECIPIENTS = 10  # kept on the ledger row (a Table string holds 32K characters)
MAX_TEXT = 200_000  # characters of explanation text searched

FAILED = "failed"
DELAYED = "delayed"
DELIVERED = "delivered"
UNKNOWN = "unknown"

_ORIGINAL_TYPES = ("message/rfc822", "message/global", "text/rfc822")  # text/rfc822: Zoho's misspelling
_HEADER_TYPES = ("text/rfc822-headers", "message/global-headers")
_STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")
_MSGID = re.compile(r"<[^<>\s]+>")
_STATUS_CODE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u200b-\u200f\u2028-\u202e\ufeff]+")
# Wording of a notice that the server is still trying (sendmail/Postfix "Delayed Mail (still being
# retried)", Exchange "Delivery delayed", Gmail "Delivery Status Notification (Delay)")...
_DELAY_WORDS = re.compile(
    r"\b(delayed|delay\)|still being retried|will (?:keep|continue) trying|has not yet been delivered|"
    r"not been delivered yet|warning message only|do not need to resend|retry(?:ing)? until|"
    r"verzögert|fördröjd|forsinket|retardé|vertraagd)", re.IGNORECASE)
# ...unless it also says the server gave up (a final bounce quotes the last temporary reply).
_GAVE_UP = re.compile(r"(given up|gave up|not going to try again|will not be retried|permanent(?:ly)? (?:error|fail)|"
                      r"retry timeout exceeded|could not be delivered)", re.IGNORECASE)
_FAIL_WORDS = re.compile(
    r"(could(?: not|n't) be delivered|undeliverable|undelivered|delivery (?:has )?failed|delivery failure|"
    r"failed permanently|permanent (?:error|failure)|user unknown|unknown user|no such user|does(?: not|n't) exist|"
    r"mailbox (?:unavailable|not found|is full)|recipient (?:address )?rejected|not delivered|"
    r"unzustellbar|kan inte levereras|kunde inte levereras|non remis|niet bezorgd)", re.IGNORECASE)
_QUOTED_HEADER = re.compile(r"^[ \t>]*(message-id|in-reply-to|references|subject|to)[ \t]*:[ \t]*(.*)$",
                            re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class RecipientStatus:
    """One recipient the report is about (RFC 3464 per-recipient fields, or what the text says)."""
    address: str
    action: str = ""  # failed | delayed | delivered | relayed | expanded | '' (not stated)
    status: str = ""  # RFC 3463 enhanced status code, e.g. "5.1.1"; '' when not stated
    diagnostic: str = ""  # Diagnostic-Code without its type, one line

    @property
    def outcome(self) -> str:
        action = self.action.lower()
        if action == "failed":
            return FAILED
        if action == "delayed":
            return DELAYED
        if action in ("delivered", "relayed", "expanded"):
            return DELIVERED
        return {"5": FAILED, "4": DELAYED, "2": DELIVERED}.get(self.status[:1], UNKNOWN)


@dataclass(frozen=True)
class DeliveryReport:
    recipients: tuple[RecipientStatus, ...] = ()
    original_message_id: str = ""  # "<...>", '' when the report names none
    original_refs: tuple[str, ...] = ()  # the original's Message-ID, In-Reply-To, References (newest first)
    original_subject: str = ""
    source: str = ""  # where the original was found: the part's content type, a field's name, or "text"
    text_outcome: str = UNKNOWN  # what the text says, for a report without per-recipient fields
    truncated: bool = False  # only the first MAX_REPORT_BYTES were read

    @property
    def outcome(self) -> str:
        """FAILED when any recipient failed for good, else DELAYED, else DELIVERED, else the text's."""
        outcomes = {r.outcome for r in self.recipients}
        for outcome in (FAILED, DELAYED, DELIVERED):
            if outcome in outcomes:
                return outcome
        return self.text_outcome or UNKNOWN

    @property
    def has_original(self) -> bool:
        return bool(self.original_refs)

    def note_lines(self) -> list[str]:
        """What the history note says about the delivery, one line per outcome: "Delivery failed
        permanently to x@y: 5.1.1 ...", "Delivery delayed to ...", then the mail it reports on."""
        lines: list[str] = []
        groups: dict[str, list[RecipientStatus]] = {}
        for r in self.recipients:
            outcome = r.outcome if r.outcome != UNKNOWN else self.text_outcome or UNKNOWN
            groups.setdefault(outcome, []).append(r)
        if not groups:
            groups[self.outcome] = []
        for outcome in (FAILED, DELAYED, DELIVERED, UNKNOWN):
            if outcome not in groups:
                continue
            rcpts = groups[outcome]
            to = _who(rcpts)
            detail = _detail(rcpts)
            if outcome == FAILED:
                lines.append(f"Delivery failed permanently{to}{detail}")
            elif outcome == DELAYED:
                lines.append(f"Delivery delayed{to}{detail}; the sending server keeps trying")
            elif outcome == DELIVERED:
                lines.append(f"Delivered{to}{detail}")
            else:
                lines.append(f"Delivery problem reported{to}{detail} (the report does not say whether it is final)")
        if self.original_subject or self.original_message_id:
            about = f'"{self.original_subject}"' if self.original_subject else "a mail"
            mid = f" ({self.original_message_id})" if self.original_message_id else ""
            lines.append(f"The report is about {about}{mid}.")
        return lines

    def summary(self) -> dict[str, Any]:
        """A small JSON-able record for the ledger (the plan), from which `from_summary` rebuilds it."""
        return {"outcome": self.outcome, "text_outcome": self.text_outcome, "source": self.source,
                "original_message_id": self.original_message_id, "original_subject": self.original_subject,
                "original_refs": list(self.original_refs[:10]), "truncated": self.truncated,
                "recipients": [{"address": r.address, "action": r.action, "status": r.status,
                                "diagnostic": r.diagnostic} for r in self.recipients[:SUMMARY_RECIPIENTS]],
                "recipients_more": max(0, len(self.recipients) - SUMMARY_RECIPIENTS)}

    @classmethod
    def from_summary(cls, data: Any) -> "DeliveryReport":
        if not isinstance(data, dict):
            return cls()
        rcpts = tuple(RecipientStatus(str(r.get("address") or ""), str(r.get("action") or ""),
                                      str(r.get("status") or ""), str(r.get("diagnostic") or ""))
                      for r in data.get("recipients") or () if isinstance(r, dict))
        return cls(recipients=rcpts[:MAX_RECIPIENTS], original_message_id=str(data.get("original_message_id") or ""),
                   original_refs=tuple(str(m) for m in data.get("original_refs") or ())[:10],
                   original_subject=str(data.get("original_subject") or ""), source=str(data.get("source") or ""),
                   text_outcome=str(data.get("text_outcome") or UNKNOWN), truncated=bool(data.get("truncated")))


def parse_report(raw: bytes, truncated: bool = False) -> DeliveryReport:
    """The report in the raw MIME of a bounce or delivery notification (possibly cut short: only
    the first MAX_REPORT_BYTES are read). Anything unreadable gives an empty report, never an error."""
    try:
        return _parse(raw[: MAX_REPORT_BYTES * 2], truncated)
    except Exception:  # noqa: BLE001 - a hostile or broken report is just a report we cannot read
        return DeliveryReport(truncated=truncated)


# ---- parsing --------------------------------------------------------------------------------------
def _parse(raw: bytes, truncated: bool) -> DeliveryReport:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    recipients: list[RecipientStatus] = []
    x_original = ""
    original: Message | None = None
    source = ""
    texts: list[str] = []
    for part in _parts(msg):
        ctype = part.get_content_type()
        if ctype in _STATUS_TYPES:
            blocks = _status_blocks(part)
            for block in blocks:
                x_original = x_original or _first_id(_header(block, "X-Original-Message-ID"))
                rcpt = _recipient(block)
                if rcpt is not None and len(recipients) < MAX_RECIPIENTS:
                    recipients.append(rcpt)
        elif ctype in _ORIGINAL_TYPES and original is None:
            original, source = _embedded(part), ctype
        elif ctype in _HEADER_TYPES and original is None:
            original, source = _embedded(part, headers_only=True), ctype
        elif ctype in ("text/plain", "text/html") and sum(len(t) for t in texts) < MAX_TEXT:
            text = _text(part)
            texts.append(_strip_html(text) if ctype == "text/html" else text)
    text = "\n".join(texts)[:MAX_TEXT]
    explanation = _before_quoted_headers(text)
    subject = _clean(_header(msg, "Subject"))
    if not recipients:
        failed = [a for a in re.split(r"[,\s]+", _header(msg, "X-Failed-Recipients")) if "@" in a]
        recipients = [RecipientStatus(_clean(a)[:254], "failed") for a in failed[:MAX_RECIPIENTS]]
    refs: tuple[str, ...] = ()
    original_id, original_subject = "", ""
    original_rcpts: list[str] = []
    if original is not None:
        original_id = _first_id(_header(original, "Message-ID"))
        refs = _refs(original_id, _header(original, "In-Reply-To"), _header(original, "References"))
        original_subject = _clean(_header(original, "Subject"))
        original_rcpts = _addresses(_header(original, "To") + " " + _header(original, "Cc"))
    text_outcome = _text_outcome(subject + "\n" + explanation)
    if not recipients:  # a bounce in prose: the addresses it names, with what the prose says
        action = {FAILED: "failed", DELAYED: "delayed"}.get(text_outcome, "")
        recipients = [RecipientStatus(r.address, action, r.status, r.diagnostic)
                      for r in _text_recipients(explanation, original_rcpts)]
    if not refs and x_original:
        original_id, refs, source = x_original, (x_original,), "X-Original-Message-ID"
    if not refs:
        quoted = _quoted_original(text)
        if quoted.get("message-id"):
            original_id = quoted["message-id"]
            refs = _refs(original_id, quoted.get("in-reply-to", ""), quoted.get("references", ""))
            original_subject = original_subject or quoted.get("subject", "")
            source = "text"
    return DeliveryReport(
        recipients=tuple(recipients), original_message_id=original_id, original_refs=refs,
        original_subject=original_subject[:200], source=source,
        text_outcome=text_outcome, truncated=truncated)


def _parts(msg: Message) -> Iterable[Message]:
    """Every part, depth first, without descending into an attached original (its parts are not the
    report's), at most MAX_PARTS."""
    stack, seen = [msg], 0
    while stack and seen < MAX_PARTS:
        part = stack.pop(0)
        seen += 1
        if part.is_multipart() and part.get_content_maintype() == "multipart":
            payload = part.get_payload()
            stack[:0] = [p for p in payload if isinstance(p, Message)] if isinstance(payload, list) else []
            continue
        yield part


def _status_blocks(part: Message) -> list[Message]:
    """The header blocks of a delivery-status part (one per message, one per recipient). The email
    package splits message/delivery-status into blocks but reads the global variant as one message
    with the other blocks as its body: both are joined back into text and split here."""
    parser = HeaderParser(policy=email.policy.compat32)
    blocks = re.split(r"\r?\n[ \t]*\r?\n", _body_text(part).strip())
    return [parser.parsestr(b.strip() + "\n") for b in blocks[: MAX_RECIPIENTS + 1] if b.strip()]


def _body_text(part: Message) -> str:
    """A part's content as text, also for message/* parts the email package parsed into messages."""
    payload = part.get_payload()
    if isinstance(payload, list):
        # bytes, not as_string(): 8-bit UTF-8 (RFC 6533) would come out as surrogate escapes
        return "\n".join(p.as_bytes().decode("utf-8", "replace") for p in payload if isinstance(p, Message))
    return _text(part)


def _recipient(block: Message) -> RecipientStatus | None:
    address = _typed_value(_header(block, "Final-Recipient") or _header(block, "Original-Recipient"))
    if not address:
        return None
    action = _clean(_header(block, "Action")).split(" ", 1)[0].lower()[:20]
    code = _STATUS_CODE.search(_header(block, "Status"))
    diagnostic = _typed_value(_header(block, "Diagnostic-Code"))
    return RecipientStatus(address[:254], action, ".".join(code.groups()) if code else "", diagnostic[:200])


def _embedded(part: Message, headers_only: bool = False) -> Message | None:
    """The original in a message/rfc822-like part (the email package has parsed it already), or in
    a text part holding a message or only its headers."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return next((p for p in payload if isinstance(p, Message)), None)
    if headers_only:
        return HeaderParser(policy=email.policy.compat32).parsestr(_text(part))
    return email.message_from_string(_text(part), policy=email.policy.compat32)


def _text(part: Message) -> str:
    data = part.get_payload(decode=True)
    if data is None:
        payload = part.get_payload()
        return payload if isinstance(payload, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return data.decode(charset, "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


def _header(msg: Message, name: str) -> str:
    lname = name.lower()
    value = next((v for k, v in msg.raw_items() if k.lower() == lname), None)
    if value is None:
        return ""
    # 8-bit header bytes arrive as surrogate escapes: back to bytes, read as UTF-8 (RFC 6532)
    raw = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    try:
        text = str(email.header.make_header(email.header.decode_header(raw)))
    except Exception:  # noqa: BLE001 - undecodable: the raw text
        text = raw
    return re.sub(r"\s+", " ", text).strip()


def _typed_value(value: Any) -> str:
    """'rfc822; x@y' -> 'x@y', 'smtp; 550 5.1.1 ...' -> '550 5.1.1 ...' (RFC 3464 type prefixes)."""
    text = _clean(re.sub(r"\s+", " ", str(value or ""))).strip()
    head, sep, rest = text.partition(";")
    if sep and re.fullmatch(r"[A-Za-z0-9-]{1,20}", head.strip()):
        text = rest.strip()
    return text.strip("<> ") if "@" in text and " " not in text else text


def _clean(text: str) -> str:
    return _CONTROL.sub(" ", text or "").strip()


def _first_id(value: str) -> str:
    found = _MSGID.findall(value or "")
    return found[0] if found else ""


def _refs(message_id: str, in_reply_to: str, references: str) -> tuple[str, ...]:
    """The original's own Message-ID first, then its parent, then the rest of its thread."""
    seen: dict[str, None] = {}
    for ref in (message_id, *_MSGID.findall(in_reply_to or ""), *reversed(_MSGID.findall(references or ""))):
        if ref and len(ref) <= 500:
            seen.setdefault(ref, None)
    return tuple(seen)[:50]


def _strip_html(html: str) -> str:
    text = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", html)
    text = re.sub(r"(?i)<br\s*/?>|</(p|div|tr|li|pre)>", "\n", text)
    return unescape(re.sub(r"<[^>]+>", " ", text))


_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_HEADER_LINE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,40}:[ \t]")
# qmail and Postfix name each failed recipient on a line of its own: "<user@host>:" then the reason.
_RECIPIENT_LINE = re.compile(r"^[ \t]*<([^<>\s@]+@[^<>\s]+)>:?[ \t]*(.*)$", re.MULTILINE)


def _addresses(text: str) -> list[str]:
    return list(dict.fromkeys(a.lower() for a in _ADDRESS.findall(text or "")))


def _before_quoted_headers(text: str) -> str:
    """The explanation of a text bounce: up to where the original's header block starts (two header
    lines in a row), so the quoted copy does not count as what the server says."""
    lines = text.replace("\r\n", "\n").split("\n")
    for i in range(len(lines) - 1):
        if _HEADER_LINE.match(lines[i]) and _HEADER_LINE.match(lines[i + 1]):
            return "\n".join(lines[:i])
    return text


def _text_recipients(explanation: str, original_rcpts: list[str]) -> list[RecipientStatus]:
    """Recipients a bounce names in prose: the original's recipients it mentions, else qmail/Postfix
    "<user@host>:" lines, else the original's only recipient (a gateway reports on the one it had)."""
    named = [a for a in _addresses(explanation) if a in original_rcpts]
    out = [RecipientStatus(a[:254], "", _status_near(explanation, a)) for a in named]
    if not out:
        for m in _RECIPIENT_LINE.finditer(explanation):
            after = explanation[m.end():m.end() + 300].strip().split("\n", 1)[0]
            diagnostic = _clean(m.group(2) or after)[:200]
            code = _STATUS_CODE.search(diagnostic)
            out.append(RecipientStatus(m.group(1).lower()[:254], "", ".".join(code.groups()) if code else "",
                                       diagnostic))
    if not out and len(original_rcpts) == 1:
        out = [RecipientStatus(original_rcpts[0][:254], "", _status_near(explanation, ""))]
    return out[:MAX_RECIPIENTS]


def _status_near(text: str, address: str) -> str:
    code = _STATUS_CODE.search(text[text.find(address):] if address and address in text else text)
    return ".".join(code.groups()) if code else ""


def _quoted_original(text: str) -> dict[str, str]:
    """The header lines of the original a text bounce quotes: from its first quoted Message-ID line,
    the Message-ID, In-Reply-To, References, Subject and To lines around it (folded lines joined)."""
    found: dict[str, str] = {}
    lines = text.replace("\r\n", "\n").split("\n")
    start = next((i for i, line in enumerate(lines) if re.match(r"^[ \t>]*message-id[ \t]*:", line, re.I)), None)
    if start is None:
        return found
    window = lines[max(0, start - 40): start + 40]
    joined: list[str] = []
    for line in window:
        if joined and line[:1] in (" ", "\t") and line.strip() and not _QUOTED_HEADER.match(line):
            joined[-1] += " " + line.strip()
        else:
            joined.append(line)
    for line in joined:
        m = _QUOTED_HEADER.match(line)
        if m:
            found.setdefault(m.group(1).lower(), _clean(m.group(2)))
    mid = _first_id(found.get("message-id", ""))
    found["message-id"] = mid
    return found


def _text_outcome(text: str) -> str:
    if _DELAY_WORDS.search(text) and not _GAVE_UP.search(text):
        return DELAYED
    code = _STATUS_CODE.search(text)
    if code and code.group(1) == "5" or _FAIL_WORDS.search(text) or _GAVE_UP.search(text):
        return FAILED
    if code and code.group(1) == "4":
        return DELAYED
    return UNKNOWN


def _who(rcpts: list[RecipientStatus]) -> str:
    names = [r.address for r in rcpts if r.address]
    if not names:
        return ""
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f" to {shown}"


def _detail(rcpts: list[RecipientStatus]) -> str:
    first = next((r for r in rcpts if r.status or r.diagnostic), None)
    if first is None:
        return ""
    if first.status and first.diagnostic:
        return f": {first.status} ({first.diagnostic})"[:240]
    return ": " + (first.status or first.diagnostic)[:240]


def unthreaded_reason(classification_reason: str, report: DeliveryReport | None) -> str:
    """The skip reason of automated mail that lands on no ticket; for a delivery report, what it
    reported and whether it carried an original at all (no addresses: the reason is logged)."""
    base = f"automated mail ({classification_reason}) that belongs to no ticket"
    if report is None:
        return base
    what = {FAILED: "a permanent failure", DELAYED: "a delay", DELIVERED: "a delivery"}.get(
        report.outcome, "a delivery problem")
    if report.has_original:
        return f"{base}: it reports {what} of a mail that is on no ticket"
    return f"{base}: it reports {what} and carries no original message to thread by"
