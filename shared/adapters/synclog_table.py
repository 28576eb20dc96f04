"""The `synclog` table: what each subscription sync run did, per Graph client, newest first.

PartitionKey = the client name (names are [A-Za-z0-9_-], safe as keys); RowKey = an inverted
timestamp plus the run id, so a partition query returns the newest entries first.  After each
append the partition is trimmed to the last SYNC_HISTORY_LENGTH entries.  Entries hold mailbox ids
and reasons, never addresses or secrets.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from .errors import raise_storage
from .storage_clients import StorageAccount, TableStore

_MAX_MS = 10 ** 15
_MAX_DOC = 60_000  # a Table string holds 64 KiB


def _row_key(started: str, run: str) -> str:
    try:
        when = datetime.fromisoformat(started)
    except ValueError:
        when = datetime.now(timezone.utc)
    ms = int(when.timestamp() * 1000)
    return f"{_MAX_MS - ms:015d}-{run}"


class TableSyncLog(TableStore):
    def __init__(self, account: StorageAccount, table: str = "synclog") -> None:
        self._account = account
        self.table_name = table

    async def append(self, client: str, entry: dict[str, Any], keep: int) -> None:
        doc = dict(entry)
        text = json.dumps(doc, default=str)
        if len(text) > _MAX_DOC:  # thousands of failing mailboxes: keep the counts, trim the list
            doc["errors"] = doc.get("errors", [])[:200]
            doc["errors_truncated"] = True
            text = json.dumps(doc, default=str)[:_MAX_DOC]
        ent = {"PartitionKey": client, "RowKey": _row_key(str(entry.get("started", "")), str(entry.get("run", ""))),
               "ok": bool(entry.get("ok")), "doc": text}
        try:
            await self._table.upsert_entity(ent, mode="replace")
            keys = [e["RowKey"] async for e in self._table.query_entities(
                "PartitionKey eq @pk", parameters={"pk": client}, select=["RowKey"])]
        except HttpResponseError as exc:
            raise_storage(exc, "synclog write")
        for rk in sorted(keys)[max(1, keep):]:
            try:
                await self._table.delete_entity(client, rk)
            except ResourceNotFoundError:
                pass
            except HttpResponseError as exc:
                raise_storage(exc, "synclog trim")

    async def list(self, client: str, limit: int = 50) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        try:
            async for ent in self._table.query_entities("PartitionKey eq @pk", parameters={"pk": client},
                                                        results_per_page=min(limit, 1000)):
                try:
                    out.append(json.loads(ent["doc"]))
                except (KeyError, ValueError):
                    out.append({"error": "unreadable sync log entry", "row": ent.get("RowKey")})
                if len(out) >= limit:
                    break
        except HttpResponseError as exc:
            raise_storage(exc, "synclog read")
        return out
