"""Small helpers of the Graph simulator: base64url, Exchange-like ids, Graph's date formats and
parsing, case-insensitive JSON names, splitting on top-level commas, loopback hosts, HTML <-> text
(for `Prefer: outlook.body-content-type` and bodyPreview) and recipients in Graph's shape.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import html.parser
import ipaddress
import os
import re
from typing import Any


# --------------------------------------------------------------------------------------------
# small helpers


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    text = text.strip()
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _new_id(prefix: str, nbytes: int = 45) -> str:
    # Exchange-like: long, URL-safe base64 with a trailing '=' (exercise your URL encoding).
    return prefix + base64.urlsafe_b64encode(os.urandom(nbytes)).decode("ascii").rstrip("=") + "="


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso7(when: dt.datetime) -> str:
    when = when.astimezone(dt.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond:06d}0Z"


_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_datetime(value: Any) -> dt.datetime:
    """ISO 8601 (any fraction length, 'Z' or offset; naive means UTC) or a datetime."""
    if isinstance(value, dt.datetime):
        when = value
    elif isinstance(value, (int, float)):
        when = dt.datetime.fromtimestamp(value, dt.timezone.utc)
    else:
        text = _FRACTION.sub(r"\1", str(value).strip().strip("'\""))
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc)


def _ci_get(data: dict[str, Any], name: str, default: Any = None) -> Any:
    """Property lookup by name, case-insensitively (Graph reads JSON names that way)."""
    if name in data:
        return data[name]
    lname = name.lower()
    for key, value in data.items():
        if key.lower() == lname:
            return value
    return default


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside parentheses and quotes."""
    out, depth, quote_char, cur = [], 0, "", []
    for ch in text:
        if quote_char:
            cur.append(ch)
            if ch == quote_char:
                quote_char = ""
            continue
        if ch in "'\"":
            quote_char = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == sep and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _TextExtractor(html.parser.HTMLParser):
    _BLOCK = {"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("style", "script", "head"):
            self._skip += 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script", "head"):
            self._skip = max(0, self._skip - 1)
        elif tag in ("p", "div", "tr"):
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    parser = _TextExtractor()
    try:
        parser.feed(markup)
        parser.close()
    except Exception:  # noqa: BLE001 - broken HTML: strip tags crudely
        return re.sub(r"<[^>]+>", " ", markup)
    text = "".join(parser.parts)
    lines = [re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def text_to_html(text: str) -> str:
    body = html.escape(text).replace("\r\n", "\n").replace("\n", "<br>\r\n")
    return ("<html><head>\r\n<meta http-equiv=\"Content-Type\" content=\"text/html; "
            "charset=utf-8\">\r\n</head>\r\n<body>\r\n<div>" + body
            + "</div>\r\n</body>\r\n</html>")


def _preview(body: dict[str, Any]) -> str:
    content = body.get("content") or ""
    if (body.get("contentType") or "").lower() == "html":
        content = html_to_text(content)
    return re.sub(r"\s+", " ", content).strip()[:255]


def _recipient(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return {"emailAddress": {"name": value, "address": value}}
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return {"emailAddress": {"name": value[0] or value[1], "address": value[1]}}
    if isinstance(value, dict):
        if "emailAddress" in value:
            return value
        if "address" in value:
            return {"emailAddress": {"name": value.get("name") or value["address"],
                                     "address": value["address"]}}
    raise ValueError(f"not a recipient: {value!r}")
