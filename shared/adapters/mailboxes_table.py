"""The `mailboxes` table: the registry of monitored mailboxes (one partition, small)."""
from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict
from datetime import datetime
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from ..domain.model import AutoreplySettings, Mailbox
from .errors import STORAGE_ERRORS, raise_storage
from .keys import key_hash
from .storage_clients import StorageAccount, TableStore

PARTITION = "mailbox"
# How long the per-mail path (processor, autoreply sender, own addresses) may use a mailbox row it
# read before. A change made in this worker is seen at once (every save and delete bumps
# _GENERATION); one made by another instance within this many seconds.
READ_CACHE_SECONDS = 15.0
_GENERATION = [0]


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


class TableMailboxRegistry(TableStore):
    def __init__(self, account: StorageAccount, table: str = "mailboxes") -> None:
        self._account = account
        self.table_name = table

    async def get(self, mailbox_id: str) -> Mailbox | None:
        try:
            return _from_entity(await self._table.get_entity(PARTITION, key_hash(mailbox_id)))
        except ResourceNotFoundError:
            return None
        except STORAGE_ERRORS as exc:
            raise_storage(exc, "mailbox read")

    async def list(self) -> list[Mailbox]:
        try:
            return [_from_entity(e) async for e in
                    self._table.query_entities("PartitionKey eq @pk", parameters={"pk": PARTITION})]
        except STORAGE_ERRORS as exc:
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
        except STORAGE_ERRORS as exc:
            raise_storage(exc, "mailbox write")
        finally:
            _GENERATION[0] += 1
        mailbox.etag = meta.get("etag", "")
        return mailbox

    async def delete(self, mailbox_id: str) -> None:
        _GENERATION[0] += 1
        try:
            await self._table.delete_entity(PARTITION, key_hash(mailbox_id))
        except ResourceNotFoundError:
            pass
        except STORAGE_ERRORS as exc:
            raise_storage(exc, "mailbox delete")


class CachedMailboxReader:
    """The registry as the per-mail path reads it: `get` and `list` answered from rows read within
    READ_CACHE_SECONDS, as copies (a caller may change what it gets). bench/pipeline.py: a mail read
    its mailbox's row three times (processor, own addresses, autoreply sender) and the whole
    registry once; with this, once per mailbox every 15 s. Writes go to the registry itself."""

    def __init__(self, registry: TableMailboxRegistry, ttl: float = READ_CACHE_SECONDS,
                 monotonic: Any = time.monotonic) -> None:
        self.registry = registry
        self.ttl = ttl
        self._now = monotonic
        self._generation = -1
        self._rows: dict[str, tuple[float, Mailbox | None]] = {}
        self._list: tuple[float, list[Mailbox]] | None = None

    def _fresh(self, read_at: float) -> bool:
        return self._now() - read_at < self.ttl

    def _check_generation(self) -> None:
        if self._generation != _GENERATION[0]:
            self._generation = _GENERATION[0]
            self._rows.clear()
            self._list = None

    async def get(self, mailbox_id: str) -> Mailbox | None:
        self._check_generation()
        hit = self._rows.get(mailbox_id)
        if hit is None or not self._fresh(hit[0]):
            generation = self._generation
            hit = (self._now(), await self.registry.get(mailbox_id))
            if generation == _GENERATION[0]:  # not changed while we read
                self._rows[mailbox_id] = hit
        return copy.deepcopy(hit[1])

    async def list(self) -> list[Mailbox]:
        self._check_generation()
        listed = self._list
        if listed is None or not self._fresh(listed[0]):
            generation = self._generation
            listed = (self._now(), await self.registry.list())
            if generation == _GENERATION[0]:
                self._list = listed
        return copy.deepcopy(listed[1])
