"""The `mailboxes` table: the registry of monitored mailboxes (one partition, small)."""
from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from ..domain.model import AutoreplySettings, Mailbox
from .errors import raise_storage
from .keys import key_hash
from .storage_clients import StorageAccount

PARTITION = "mailbox"


def _to_entity(m: Mailbox) -> dict[str, Any]:
    doc = asdict(m)
    doc.pop("etag", None)
    for k in ("start_date", "created_at"):
        doc[k] = doc[k].isoformat() if doc[k] else ""
    return {"PartitionKey": PARTITION, "RowKey": key_hash(m.id), "address": m.address.lower(),
            "doc": json.dumps(doc)}


def _from_entity(ent: Any) -> Mailbox:
    doc = json.loads(ent["doc"])
    for k in ("start_date", "created_at"):
        doc[k] = datetime.fromisoformat(doc[k]) if doc.get(k) else None
    doc["autoreply"] = AutoreplySettings(**(doc.get("autoreply") or {}))
    known = set(Mailbox.__dataclass_fields__)
    box = Mailbox(**{k: v for k, v in doc.items() if k in known})
    box.etag = ent.metadata.get("etag", "")
    return box


class TableMailboxRegistry:
    def __init__(self, account: StorageAccount, table: str = "mailboxes") -> None:
        self._account = account
        self.table_name = table

    @property
    def _table(self) -> Any:
        return self._account.table(self.table_name)

    async def get(self, mailbox_id: str) -> Mailbox | None:
        try:
            return _from_entity(await self._table.get_entity(PARTITION, key_hash(mailbox_id)))
        except ResourceNotFoundError:
            return None
        except HttpResponseError as exc:
            raise_storage(exc, "mailbox read")

    async def list(self) -> list[Mailbox]:
        try:
            return [_from_entity(e) async for e in
                    self._table.query_entities("PartitionKey eq @pk", parameters={"pk": PARTITION})]
        except HttpResponseError as exc:
            raise_storage(exc, "mailbox list")

    async def find_by_address(self, address: str) -> Mailbox | None:
        wanted = address.strip().lower()
        for box in await self.list():
            if box.address.lower() == wanted:
                return box
        return None

    async def save(self, mailbox: Mailbox) -> Mailbox:
        try:
            meta = await self._table.upsert_entity(_to_entity(mailbox), mode="replace")
        except HttpResponseError as exc:
            raise_storage(exc, "mailbox write")
        mailbox.etag = meta.get("etag", "")
        return mailbox

    async def delete(self, mailbox_id: str) -> None:
        try:
            await self._table.delete_entity(PARTITION, key_hash(mailbox_id))
        except ResourceNotFoundError:
            pass
        except HttpResponseError as exc:
            raise_storage(exc, "mailbox delete")
