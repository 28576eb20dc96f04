"""Retention and privacy for what the Lime adapter keeps in our storage (a LimeCrm mixin): create
records and ticket index rows expire with the ledger (LEDGER_RETENTION_DAYS after their last
change), and the privacy erase removes an address from the ticket index (the parties, a ticket's
person's address). The CRM's own objects are Lime's, not ours: the erase response says so.

After its index rows expired, a ticket is threaded by Lime's Message-ID property (the Message-IDs
it was created with) and by its subject tag, and its parties count as unknown (its contacts and
senders from its person's domain are accepted, as for a ticket from before the index).
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from .records import EPOCH_ROW, CreateRecords


class _Maintenance:
    _records: CreateRecords

    async def purge(self, cutoff: datetime) -> int:
        """Delete records and index rows last changed before `cutoff` (not the epoch row)."""
        rows = await self._records.table.scan(["RowKey", "updated"], older_than=cutoff)
        doomed = [("delete", r["RowKey"], r["etag"]) for r in rows if r["RowKey"] != EPOCH_ROW]
        await self._records.write(doomed)
        return len(doomed)

    async def erase_address(self, address: str) -> int:
        """Remove one address from the ticket index; returns the rows changed."""
        wanted = (address or "").strip().lower()
        if "@" not in wanted:
            return 0
        ops: list[tuple[Any, ...]] = []
        for row in await self._records.table.scan(["RowKey", "kind", "parties", "person_address"]):
            if row.get("kind") != "ticket":
                continue
            parties = json.loads(row.get("parties") or "[]")
            if wanted not in parties and row.get("person_address") != wanted:
                continue
            changed = {"RowKey": row["RowKey"], "parties": json.dumps([p for p in parties if p != wanted])}
            if row.get("person_address") == wanted:
                changed["person_address"] = ""
            ops.append(("upsert", changed))
        await self._records.write(ops)
        self.lookups.clear()
        return len(ops)
