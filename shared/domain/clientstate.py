"""clientState as a versioned HMAC of tenant and mailbox, so the webhook verifies without a table read.

clientState = "v<n>." + base64url(HMAC-SHA256(key n, "<tenant id>|<mailbox object id>")), lowercased ids.
43 + a few characters: well under Graph's 128-character limit.  Performs no I/O.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re

_FORMAT = re.compile(r"^v(\d{1,6})\.([A-Za-z0-9_-]{43})$")


class ClientStateSigner:
    def __init__(self, keys: dict[int, bytes]) -> None:
        if not keys:
            raise ValueError("at least one clientState key is required")
        self._keys = dict(keys)
        self.current_version = max(keys)

    def _mac(self, version: int, tenant_id: str, mailbox_id: str) -> str:
        message = f"{tenant_id.strip().lower()}|{mailbox_id.strip().lower()}".encode()
        digest = hmac.new(self._keys[version], message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def sign(self, tenant_id: str, mailbox_id: str) -> str:
        return f"v{self.current_version}.{self._mac(self.current_version, tenant_id, mailbox_id)}"

    def version_of(self, client_state: str) -> int | None:
        match = _FORMAT.match(client_state or "")
        return int(match.group(1)) if match else None

    def plausible(self, client_state: str | None) -> bool:
        """Could this be one of ours? Its shape, and a key version we hold. No HMAC: the cheap check
        that lets the lifecycle webhook refuse garbage before it reads a table for it."""
        match = _FORMAT.match(client_state or "")
        return bool(match) and int(match.group(1)) in self._keys

    def verify(self, client_state: str | None, tenant_id: str, mailbox_id: str) -> bool:
        """Constant-time check. Unknown (retired) key versions and malformed values fail."""
        match = _FORMAT.match(client_state or "")
        if not match or not tenant_id or not mailbox_id:
            return False
        version = int(match.group(1))
        if version not in self._keys:
            return False
        expected = self._mac(version, tenant_id, mailbox_id)
        return hmac.compare_digest(expected.encode(), match.group(2).encode())

    def is_current(self, client_state: str | None) -> bool:
        return self.version_of(client_state or "") == self.current_version
