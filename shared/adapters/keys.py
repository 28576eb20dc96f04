"""Table key helpers: values that may hold / \\ # ? or control characters are hashed. No I/O."""
from __future__ import annotations

import hashlib


def key_hash(value: str, length: int = 40) -> str:
    return hashlib.sha256(value.strip().lower().encode("utf-8")).hexdigest()[:length]


def exact_hash(value: str, length: int = 40) -> str:
    """Case-sensitive variant, for Graph ids (immutable ids are case-sensitive)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:length]
