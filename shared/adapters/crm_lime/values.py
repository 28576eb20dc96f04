"""Values between the inbox and Lime: the LIME_* names (LimeNames, from the settings), ids (a
ticket id is `hd<_id>`), option keys, times, the idempotency key's hash, clipping to a property's
length, Message-ID lists fitted into one property, query URL budgets, note truncation and file names.
"""
from __future__ import annotations

import json as jsonlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import quote

from ..crm_table import HISTORY_TYPES, STATUSES, merge_message_ids, require_key, utc
from ..keys import exact_hash
from ...config import SETTINGS, ConfigError

KEY_VALUE_LENGTH = 40  # the key property holds sha256(key)[:40]


NO_TEXT = "(no text)"


QUERY_URL_MAX = 1900  # a threading query's query string: the query API is a GET, and servers cap URLs
                      # (IIS: 2,048 bytes of query string by default); longer reference lists take more GETs


# Settings ---------------------------------------------------------------------------------------
_DEFAULTS = {s.name: s.default or "" for s in SETTINGS}


@dataclass(frozen=True)
class LimeNames:
    """Property and option names of the customer's helpdesk model (LIME_* settings)."""
    helpdesk_number: str = "helpdesknumber"
    helpdesk_status: str = "helpdeskstatus"
    statuses: Mapping[str, str] = field(default_factory=lambda: {s: s for s in STATUSES})
    history_types: Mapping[str, str] = field(default_factory=lambda: {t: t for t in HISTORY_TYPES})
    key_property: str = "inboxkey"
    message_ids: str = "inboxmessageids"
    company_website: str = "www"
    company_email: str = "email"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "LimeNames":
        problems: list[str] = []

        def required(name: str) -> str:
            value = (env.get(name) if name in env else _DEFAULTS.get(name, "")) or ""
            if not value.strip():
                problems.append(f"{name} must name a Lime property or option key (default {_DEFAULTS.get(name)!r})")
            return value.strip()

        def optional(name: str) -> str:  # '' switches the feature off
            return ((env.get(name) if name in env else _DEFAULTS.get(name, "")) or "").strip()

        names = cls(
            helpdesk_number=required("LIME_PROP_HELPDESK_NUMBER"),
            helpdesk_status=required("LIME_PROP_HELPDESK_STATUS"),
            statuses={"started": required("LIME_STATUS_STARTED"), "done": required("LIME_STATUS_DONE"),
                      "parked": required("LIME_STATUS_PARKED")},
            history_types={"receivedemail": required("LIME_HISTORY_TYPE_RECEIVED"),
                           "sentemail": required("LIME_HISTORY_TYPE_SENT"),
                           "comment": required("LIME_HISTORY_TYPE_COMMENT")},
            key_property=optional("LIME_KEY_PROPERTY"),
            message_ids=optional("LIME_PROP_MESSAGE_IDS"),
            company_website=optional("LIME_PROP_COMPANY_WEBSITE"),
            company_email=optional("LIME_PROP_COMPANY_EMAIL"),
        )
        if len(set(names.statuses.values())) != len(names.statuses):
            problems.append("LIME_STATUS_STARTED, LIME_STATUS_DONE and LIME_STATUS_PARKED must be different keys")
        if problems:
            raise ConfigError("Invalid Lime settings: " + "; ".join(problems))
        return names


def _int_setting(env: Mapping[str, str], name: str, minimum: int) -> int:
    raw = (env.get(name) or _DEFAULTS.get(name) or "0").strip()
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}")
    return value


# Values -----------------------------------------------------------------------------------------
def _option_key(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("key") or "")
    return "" if value is None else str(value)


def _rel_id(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("_id", value.get("id"))
    return "" if value in (None, "", 0) else str(value)


def _time_out(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        return utc(value).isoformat()
    text = str(value).strip()
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        return text
    return utc(parsed).isoformat()


def _time_in(value: datetime) -> str:
    return utc(value).isoformat()


def _oid(value: Any) -> int | None:
    text = str(value or "").strip()
    if text.startswith("hd"):
        text = text[2:]
    return int(text) if text.isdigit() and len(text) <= 12 else None


def ticket_id_of(oid: Any) -> str:
    return f"hd{oid}"


def _key_value(key: str) -> str:
    return exact_hash(require_key(key), KEY_VALUE_LENGTH)


def _clip(text: str, limit: int) -> str:
    return text[:limit] if limit and len(text) > limit else text


def parse_message_ids(text: str) -> list[str]:
    return merge_message_ids([], re.findall(r"<([^<>\s]+)>", text or ""))


def fit_message_ids(ids: list[str], limit: int) -> str:
    """'<a> <b> ...' within `limit` characters: the first (the thread's root) and the newest win."""
    def text(items: list[str]) -> str:
        return " ".join(f"<{m}>" for m in items)

    ids = [m for m in ids if not limit or len(m) + 2 <= limit]
    if not ids or not limit or len(text(ids)) <= limit:
        return text(ids)
    keep, budget = [ids[0]], limit - len(ids[0]) - 2
    tail: list[str] = []
    for mid in reversed(ids[1:]):
        if len(mid) + 3 > budget:
            break
        tail.insert(0, mid)
        budget -= len(mid) + 3
    return text(keep + tail)


def _query_url_length(value: Any) -> int:
    """Characters `value` takes in `?q=<url-encoded JSON>`."""
    return len(quote(jsonlib.dumps(value, separators=(",", ":")), safe="")) + 2


def _chunks(items: list[Any], budget: int, size: Callable[[Any], int]) -> Iterable[list[Any]]:
    """Consecutive groups whose total size stays within `budget` (a bigger item goes alone)."""
    group: list[Any] = []
    total = 0
    for item in items:
        cost = size(item)
        if group and total + cost > budget:
            yield group
            group, total = [], 0
        group.append(item)
        total += cost
    if group:
        yield group


def _looks_html(text: str) -> bool:
    return bool(re.search(r"<(html|body|p|div|br|table|span)\b", text[:2000], re.IGNORECASE))


def truncate_note(text: str, limit: int, marker: str) -> str:
    """`text` cut to fit `limit` with `marker` appended; never ends inside an HTML tag."""
    room = max(0, limit - len(marker))
    cut = text[:room]
    if cut.rfind("<") > cut.rfind(">"):
        cut = cut[:cut.rfind("<")]
    return cut + marker


def _clean_filename(name: str) -> str:
    cleaned = "".join(ch for ch in (name or "") if ch >= " " and ch != "\x7f").strip()
    return cleaned[:255] or "file"
