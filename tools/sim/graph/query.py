"""OData query options of the simulated Graph: bounded integer arguments ($top, $skip), next links,
and $filter on messages (receivedDateTime ranges served from a folder's index; eq/ne on a few
properties as post-filters).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable
from urllib.parse import quote, urlencode

from .helpers import parse_datetime
from .model import _Msg
from ..httpbase import HttpError, Request


def _int_arg(req: Request, name: str, default: int, lo: int, hi: int) -> int:
    value = req.arg(name, ignore_case=True)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise HttpError(400, "BadRequest", f"Invalid value '{value}' for {name}.") from None
    return max(lo, min(hi, number))


def _next_link(req: Request, extra: dict[str, str], drop: Iterable[str] = ()) -> str:
    skip = {k.lower() for k in drop} | {k.lower() for k in extra}
    pairs = [(k, v) for k, values in req.query.items() if k.lower() not in skip for v in values]
    pairs.extend(extra.items())
    return f"{req.base_url}{req.raw_path}?" + urlencode(pairs, quote_via=quote, safe="$,()'")


_CLAUSE = re.compile(
    r"\s*(?P<field>[A-Za-z][\w/]*)\s+(?P<op>eq|ne|ge|gt|le|lt)\s+(?P<value>'(?:[^']|'')*'|\S+)\s*",
    re.I)


def _parse_filter(text: str | None) -> tuple[tuple[float, bool] | None, tuple[float, bool] | None,
                                             list[Callable[[_Msg], bool]], list[str]]:
    """$filter -> (lower bound (ts, inclusive), upper bound, post predicates, field order)."""
    lo: tuple[float, bool] | None = None
    hi: tuple[float, bool] | None = None
    post: list[Callable[[_Msg], bool]] = []
    fields: list[str] = []
    if not text or not text.strip():
        return lo, hi, post, fields
    bad = HttpError(400, "ErrorInvalidUrlQueryFilter",
                    "The query filter contains one or more invalid nodes.")
    for clause in re.split(r"\s+and\s+", text.strip(), flags=re.I):
        m = _CLAUSE.fullmatch(clause)
        if not m:
            raise bad
        fld, op, raw = m.group("field").lower(), m.group("op").lower(), m.group("value")
        fields.append(fld)
        if fld == "receiveddatetime":
            try:
                ts = parse_datetime(raw).timestamp()
            except ValueError:
                raise bad from None
            if op in ("ge", "gt"):
                bound = (ts, op == "ge")
                if lo is None or bound[0] > lo[0] or (bound[0] == lo[0] and not bound[1]):
                    lo = bound
            elif op in ("le", "lt"):
                bound = (ts, op == "le")
                if hi is None or bound[0] < hi[0] or (bound[0] == hi[0] and not bound[1]):
                    hi = bound
            else:
                lo, hi = (ts, True), (ts, True)
            continue
        if raw.startswith("'"):
            value: Any = raw[1:-1].replace("''", "'")
        elif raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            raise bad
        getter = _FILTER_FIELDS.get(fld)
        if getter is None or op not in ("eq", "ne"):
            raise bad
        post.append(_predicate(getter, op, value))
    return lo, hi, post, fields


def _predicate(getter: Callable[[_Msg], Any], op: str, value: Any) -> Callable[[_Msg], bool]:
    def pred(msg: _Msg) -> bool:
        current = getter(msg)
        if isinstance(current, str) and isinstance(value, str):
            equal = current.lower() == value.lower()
        else:
            equal = current == value
        return equal if op == "eq" else not equal
    return pred


_FILTER_FIELDS: dict[str, Callable[[_Msg], Any]] = {
    "isread": lambda m: bool(m.props.get("isRead")),
    "hasattachments": lambda m: bool(m.props.get("hasAttachments")),
    "isdraft": lambda m: bool(m.props.get("isDraft")),
    "subject": lambda m: m.props.get("subject") or "",
    "internetmessageid": lambda m: m.props.get("internetMessageId") or "",
    "from/emailaddress/address": lambda m: ((m.props.get("from") or {}).get("emailAddress")
                                            or {}).get("address", ""),
    "importance": lambda m: m.props.get("importance") or "",
}


def _in_range(ts: float, lo: tuple[float, bool] | None, hi: tuple[float, bool] | None) -> bool:
    if lo is not None and (ts < lo[0] or (ts == lo[0] and not lo[1])):
        return False
    if hi is not None and (ts > hi[0] or (ts == hi[0] and not hi[1])):
        return False
    return True
