"""Table key helpers: values that may hold / \\ # ? or control characters are hashed. No I/O."""
from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any


def key_hash(value: str, length: int = 40) -> str:
    return hashlib.sha256(value.strip().lower().encode("utf-8")).hexdigest()[:length]


def exact_hash(value: str, length: int = 40) -> str:
    """Case-sensitive variant, for Graph ids (immutable ids are case-sensitive)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:length]


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def table_time(value: Any) -> datetime | None:
    """A datetime read back from a Table entity: tz-aware UTC; None for empty or the epoch
    (which the adapters write for 'no time', since a Table property cannot hold null)."""
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        value = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return None if value <= EPOCH else value
    return datetime.fromisoformat(str(value))
