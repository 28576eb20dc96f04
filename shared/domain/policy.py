"""Pure mail policies: auto-reply detection, subject clean-up, ticket tags, note text. No I/O.

The mail-to-CRM issue grows these; the processor only relies on the function signatures.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import nh3

from .mail import InboundMail

_PREFIX = re.compile(r"^\s*(?:(?:re|aw|sv|vs|wg|fw|fwd|antw|tr|rif|ref)\s*(?:\[\d+\])?\s*:\s*)+", re.IGNORECASE)
_TAG = re.compile(r"\[(\d{1,12})\]")
NO_REPLY_LOCAL_PARTS = ("noreply", "no-reply", "no_reply", "donotreply", "do-not-reply", "mailer-daemon",
                        "postmaster", "bounce", "bounces")


@dataclass(frozen=True)
class Classification:
    automated: bool
    reason: str = ""


def classify(mail: InboundMail, own_addresses: frozenset[str] = frozenset()) -> Classification:
    """RFC 3834 and vendor signs of mail no human wrote (design.md "Auto-replies and loops")."""
    auto = (mail.header("Auto-Submitted") or "").strip().lower()
    if auto and not auto.startswith("no"):
        return Classification(True, f"Auto-Submitted: {auto.split(';')[0]}")
    if mail.header("X-Auto-Response-Suppress") is not None and _suppresses(mail.header("X-Auto-Response-Suppress")):
        return Classification(True, "X-Auto-Response-Suppress")
    precedence = (mail.header("Precedence") or "").strip().lower()
    if precedence in ("bulk", "list", "junk", "auto_reply"):
        return Classification(True, f"Precedence: {precedence}")
    if any(k.lower().startswith("list-") for k, _ in mail.headers):
        return Classification(True, "List-* header")
    return_path = mail.header("Return-Path")
    if return_path is not None and return_path.strip() in ("<>", ""):
        return Classification(True, "empty Return-Path")
    if mail.header("X-Autoreply") or mail.header("X-Autorespond"):
        return Classification(True, "X-Autoreply")
    local = mail.sender.normalized.partition("@")[0]
    if not mail.sender.normalized:
        return Classification(True, "no sender address")
    if any(local == p or local.startswith(p + "+") or local.startswith(p + "-") for p in NO_REPLY_LOCAL_PARTS):
        return Classification(True, f"no-reply sender ({local})")
    if mail.sender.normalized in own_addresses:
        return Classification(True, "sent by one of our own mailboxes")
    return Classification(False)


def _suppresses(value: str | None) -> bool:
    tokens = {t.strip().lower() for t in (value or "").split(",")}
    return bool(tokens & {"all", "oof", "autoreply"})


def clean_subject(subject: str) -> str:
    """Strip Re:/AW:/SV:/WG:/Fwd: prefixes (repeatedly) and surrounding space."""
    return _PREFIX.sub("", subject or "").strip()


def ticket_tag(subject: str) -> str | None:
    """The ticket number of a `Title [1042]` subject: the last bracketed number."""
    found = _TAG.findall(subject or "")
    return found[-1] if found else None


def ticket_title(subject: str, limit: int = 128) -> tuple[str, bool]:
    """(title, truncated?) from the subject: prefixes and our own tag stripped."""
    title = _TAG.sub("", clean_subject(subject)).strip() or "(no subject)"
    title = re.sub(r"\s+", " ", title)
    if len(title) <= limit:
        return title, False
    return title[: limit - 1].rstrip() + "…", True


ALLOWED_TAGS = {"a", "b", "blockquote", "br", "code", "div", "em", "h1", "h2", "h3", "h4", "hr", "i", "img", "li",
                "ol", "p", "pre", "span", "strong", "table", "tbody", "td", "th", "thead", "tr", "u", "ul", "font"}


def sanitize_html(html: str, cid_map: dict[str, str] | None = None) -> str:
    """Allowlist sanitising with nh3 (ammonia). Remote images are dropped; `cid:` images are
    rewritten through `cid_map` (content id -> our document URL) or dropped."""
    cid_map = cid_map or {}

    def attribute_filter(tag: str, attr: str, value: str) -> str | None:
        if tag == "img" and attr == "src":
            if value.lower().startswith("cid:"):
                return cid_map.get(value[4:].strip("<>"))
            return None  # remote content blocked
        return value
    return nh3.clean(html, tags=ALLOWED_TAGS, attributes={"a": {"href", "title"}, "img": {"src", "alt"},
                                                          "td": {"colspan", "rowspan"}, "*": set()},
                     url_schemes={"http", "https", "mailto", "cid"}, attribute_filter=attribute_filter,
                     link_rel="noopener noreferrer nofollow")


def html_to_text(html: str) -> str:
    text = re.sub(r"(?is)<(script|style|head)[^>]*>.*?</\1>", "", html)
    text = re.sub(r"(?i)<br\s*/?>|</p>|</div>|</tr>|</li>|</h\d>", "\n", text)
    text = re.sub(r"<[^>]+>", "", text)
    import html as _html
    text = _html.unescape(text)
    return re.sub(r"\n{3,}", "\n\n", re.sub(r"[ \t]+", " ", text)).strip()


def note_from_mail(mail: InboundMail, fmt: str = "html") -> str:
    if mail.body_content_type == "html":
        return sanitize_html(mail.body) if fmt == "html" else html_to_text(mail.body)
    return mail.body
