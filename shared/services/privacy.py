"""Retention and erasure of what the service itself holds (never the CRM's records).

`purge` (the `purge_retention` timer, daily): ledger rows, recovery tasks and sync logs older than
LEDGER_RETENTION_DAYS go. Failed ledger rows stay until an admin recovers them (or erases the
sender): they stand for mail still waiting in the Inbox, and forgetting them would let the sweep
take that mail for new.

`erase` (`POST /api/manage/privacy/erase {address}`): every holder that knows email addresses
scrubs the given one and says how many records it changed. The ledger keeps each row's status and
steps (the mail is still never processed twice) but loses sender, subject, reply address and name,
title and Message-ID. Holders owned by other features join by implementing
`async erase_address(address) -> int` (shared/bootstrap.py wires the ones that do); the answer
names those that do not. Logs carry a hash of the address, never the address.
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ..domain.errors import PermanentError, Refusal
from ..ports import Clock

log = logging.getLogger("inbox.privacy")

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")
NOT_OURS = ("the CRM's persons, companies, tickets, history notes and documents: erase them in the CRM",
            "mail still in the monitored mailboxes (Failed or unprocessed mail): delete it in Exchange")


class PrivacyRequestError(Refusal, PermanentError):
    """A bad erase request (400)."""

    kind, reason = "bad_request", "bad_request"


def address_hash(address: str) -> str:
    return hashlib.sha256(address.strip().lower().encode()).hexdigest()[:16]


@dataclass
class PrivacyDeps:
    clock: Clock
    retention_days: int
    ledger: Any  # TableLedger: purge, erase_address
    recovery: Any  # TableRecoveryStore: older_than, delete
    synclog: Any = None  # TimestampPurger of the sync log table
    # (name, holder) pairs of other features' stores; a holder without erase_address is reported
    erasers: list[tuple[str, Any]] = field(default_factory=list)
    # (name, purge(now, cutoff) -> rows) of other features' stores that expire with the ledger
    purgers: list[tuple[str, Any]] = field(default_factory=list)


class PrivacyService:
    def __init__(self, deps: PrivacyDeps) -> None:
        self.d = deps

    async def purge(self, now: datetime | None = None) -> dict[str, int]:
        d = self.d
        now = now or d.clock.now()
        cutoff = now - timedelta(days=d.retention_days)
        result: dict[str, int] = dict(await d.ledger.purge(cutoff))
        tasks = await d.recovery.older_than(cutoff)
        result["recovery_tasks"] = len(tasks)
        result["recovery_rows"] = 0
        for task in tasks:
            result["recovery_rows"] += await d.recovery.delete(task)
        if d.synclog is not None:
            result["synclog_rows"] = await d.synclog.purge(cutoff)
        for name, purge in d.purgers:
            result[f"{name}_rows"] = int(await purge(now, cutoff))
        log.info("privacy.purged cutoff=%s %s", cutoff.date().isoformat(),
                 " ".join(f"{k}={v}" for k, v in sorted(result.items())))
        return result

    async def erase(self, doc: Any) -> dict[str, Any]:
        if not isinstance(doc, dict) or not isinstance(doc.get("address"), str):
            raise PrivacyRequestError("body must be a JSON object {\"address\": \"someone@example.com\"}")
        address = doc["address"].strip().lower()
        if not _EMAIL.match(address):
            raise PrivacyRequestError("'address' must be an email address")
        removed: dict[str, int] = {"ledger_rows": await self.d.ledger.erase_address(address)}
        not_covered: list[str] = []
        for name, holder in self.d.erasers:
            eraser = getattr(holder, "erase_address", None)
            if eraser is None:
                not_covered.append(f"{name}: this store cannot erase by address yet")
                continue
            removed[name] = int(await eraser(address))
        log.info("privacy.erased address_hash=%s %s", address_hash(address),
                 " ".join(f"{k}={v}" for k, v in sorted(removed.items())))
        return {"address_hash": address_hash(address), "erased_at": self.d.clock.now().isoformat(),
                "removed": removed, "not_covered": not_covered, "not_ours": list(NOT_OURS)}
