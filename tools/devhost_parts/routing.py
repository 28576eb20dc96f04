"""HTTP route templates as the Functions host (ASP.NET Core routing) reads them.

Supported: literal segments (case-insensitive), `{name}`, `{name?}`, `{name=default}`,
`{name:constraint}` (int, long, bool, guid, alpha, double, float, decimal, datetime; other
constraints accept any value), and a trailing catch-all `{*name}`. A trailing slash is ignored.
Which template is tried first is not decided here: like the Functions host, the dev host tries
routes in the order of their functions' names (tools/devhost.py), not by ASP.NET's precedence.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import unquote

from .config import DevHostError

_PARAM = re.compile(r"^\{(?P<star>\*{1,2})?(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
                    r"(?P<constraints>(?::[^=?}]+)*)(?:=(?P<default>[^?}]*))?(?P<opt>\?)?\}$")


def _check(constraint: str, value: str) -> bool:
    name = constraint.split("(", 1)[0].lower()
    try:
        if name in ("int", "long"):
            int(value)
        elif name == "bool":
            return value.lower() in ("true", "false")
        elif name == "guid":
            uuid.UUID(value)
        elif name == "alpha":
            return value.isalpha()
        elif name in ("double", "float", "decimal"):
            float(value)
        elif name == "datetime":
            datetime.fromisoformat(value)
        elif name == "regex":
            pattern = constraint[constraint.index("(") + 1:constraint.rindex(")")]
            return re.fullmatch(pattern, value, re.IGNORECASE) is not None
    except ValueError:
        return False
    return True


@dataclass
class _Segment:
    literal: str | None = None
    name: str | None = None
    constraints: tuple[str, ...] = ()
    optional: bool = False
    default: str | None = None
    catch_all: bool = False


class RouteTemplate:
    def __init__(self, template: str, function: str) -> None:
        self.template = template
        self.segments: list[_Segment] = []
        text = template.strip().strip("/")
        parts = text.split("/") if text else []
        for i, part in enumerate(parts):
            if part.startswith("{"):
                m = _PARAM.match(part)
                if not m:
                    raise DevHostError(f"function '{function}': unsupported route segment {part!r} in {template!r}")
                seg = _Segment(name=m["name"], optional=bool(m["opt"]), default=m["default"],
                               catch_all=bool(m["star"]),
                               constraints=tuple(c for c in (m["constraints"] or "").split(":") if c))
                if seg.catch_all and i != len(parts) - 1:
                    raise DevHostError(f"function '{function}': a catch-all must be the last segment of {template!r}")
                self.segments.append(seg)
            elif "{" in part or "}" in part:
                raise DevHostError(f"function '{function}': the dev host does not support complex segment {part!r}")
            else:
                self.segments.append(_Segment(literal=part.lower()))
        # optional parameters may only be followed by optional parameters
        seen_optional = False
        for seg in self.segments:
            if seg.optional or seg.default is not None or seg.catch_all:
                seen_optional = True
            elif seen_optional:
                raise DevHostError(f"function '{function}': optional route parameter before a required one in {template!r}")

    def match(self, raw_segments: list[str]) -> dict[str, str] | None:
        """Match raw (still percent-encoded) path segments; returns decoded route params or None."""
        params: dict[str, str] = {}
        i = 0
        for seg in self.segments:
            if seg.catch_all:
                rest = "/".join(_decode(s) for s in raw_segments[i:])
                if rest:
                    params[seg.name] = rest
                elif seg.default is not None:
                    params[seg.name] = seg.default
                return params
            if i >= len(raw_segments):
                if seg.literal is None and (seg.optional or seg.default is not None):
                    if seg.default is not None:
                        params[seg.name] = seg.default
                    continue
                return None
            raw = raw_segments[i]
            value = _decode(raw)
            if seg.literal is not None:
                if value.lower() != seg.literal:
                    return None
            else:
                if value == "" or not all(_check(c, value) for c in seg.constraints):
                    return None
                params[seg.name] = value
            i += 1
        return params if i == len(raw_segments) else None


def _decode(segment: str) -> str:
    # ASP.NET Core decodes the path but keeps an encoded slash encoded.
    return unquote(re.sub(r"%2[fF]", "%252F", segment))


def split_path(path: str) -> list[str]:
    path = path.strip("/")
    return path.split("/") if path else []
