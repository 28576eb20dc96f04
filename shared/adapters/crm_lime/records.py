"""Our own record of what the inbox created in Lime, in Azure Table storage (Lime has no unique
constraints and its key query costs a request: our storage answers instead).

One partition (`lime`, table `ratelimits`) holds, so that one entity group transaction can write
any of them together:

* create records, RowKey `c-<sha256(name)>`, one per object the inbox creates once (a person per
  address, a ticket per thread key, one per mail for the mail's own objects): `creating` with an
  owner and a lease while a worker creates it, then `created` with the object's Lime id (and, for a
  ticket, its number). A claim is an insert: it succeeds only for the first worker (the lock), and
  it tells that worker that no earlier attempt exists, so it POSTs without asking Lime first. A
  worker that finds a record `created` uses the id in it; one that finds it `creating` waits for
  the holder; one that finds the holder's lease run out (it died, or its answer was lost) takes
  the record over with an If-Match replace and, since the earlier outcome is unknown, asks Lime
  (the key query) before it creates anything. A lease is 30 s, renewed before a write when a third
  is left; a holder whose record was taken over meanwhile does not write.
* the ticket index (tickets.py): `t-<ticket id>` (number, person, company, the addresses party to
  the ticket, its Message-IDs) and `m-<sha256(Message-ID)>` pointers to it: threading and the
  party check read these instead of querying Lime.
* `epoch`: when this worker version first ran against the table, and whether the app had processed
  mail before (an upgrade): for a day after an upgrade a claim that finds no record still asks Lime
  first, since objects created before the records existed have none.

RecordTable is the storage (TableRecordTable on Azure Tables or Azurite; MemoryRecordTable for one
process); CreateRecords the claim logic over it. Times come from the adapter's clock, so a test
that moves the clock moves the leases with it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Protocol, Sequence

from .. import table_batch
from ..keys import exact_hash, table_time
from ...domain.errors import TransientError

log = logging.getLogger("inbox.crm.lime")

PARTITION = "lime"
CREATING, CREATED = "creating", "created"
NEW, DONE, UNKNOWN = "new", "done", "unknown"  # what a claim found
EPOCH_ROW = "epoch"
LEGACY_WINDOW = timedelta(hours=24)


def record_key(name: str) -> str:
    return "c-" + exact_hash(name)


def ticket_row_key(ticket_id: str) -> str:
    """The ticket index row of a ticket (its Lime id, or the `hd<id>` ticket id)."""
    return "t-" + str(ticket_id).removeprefix("hd")


def mid_row_key(message_id: str) -> str:
    """The pointer from a (normalized) Message-ID to its ticket."""
    return "m-" + exact_hash(message_id)


class RecordConflict(Exception):
    """A row existed for an insert, or changed under an If-Match write: nothing was written."""


class _TableMissing(Exception):
    pass


# Storage ------------------------------------------------------------------------------------------
class RecordTable(Protocol):
    """Rows of the one partition. An op: ("insert", row) | ("replace", row, etag) | ("upsert", row)
    (merge) | ("delete", rk, etag). `submit` is atomic (one entity group transaction) and returns
    the new ETag per RowKey; RecordConflict when an insert found a row or an ETag did not match."""

    async def ensure(self) -> None: ...
    async def get(self, rk: str) -> dict[str, Any] | None: ...
    async def get_many(self, rks: Sequence[str]) -> dict[str, dict[str, Any]]: ...
    async def submit(self, ops: Sequence[tuple[Any, ...]]) -> dict[str, str]: ...
    async def scan(self, select: Sequence[str] | None = None,
                   older_than: datetime | None = None) -> list[dict[str, Any]]: ...


class MemoryRecordTable:
    """In one process only (tests, a single worker without Storage)."""

    def __init__(self) -> None:
        self._rows: dict[str, tuple[dict[str, Any], str]] = {}
        self._lock = threading.Lock()
        self._n = 0

    async def ensure(self) -> None:
        return None

    async def get(self, rk: str) -> dict[str, Any] | None:
        found = self._rows.get(rk)
        return {**found[0], "etag": found[1]} if found else None

    async def get_many(self, rks: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {rk: row for rk in dict.fromkeys(rks) if (row := await self.get(rk)) is not None}

    async def submit(self, ops: Sequence[tuple[Any, ...]]) -> dict[str, str]:
        with self._lock:
            for op in ops:
                kind, rk = op[0], (op[1] if op[0] == "delete" else op[1]["RowKey"])
                current = self._rows.get(rk)
                if kind == "insert" and current is not None:
                    raise RecordConflict(rk)
                if kind in ("replace", "delete") and (current is None or current[1] != op[2]):
                    raise RecordConflict(rk)
            out: dict[str, str] = {}
            for op in ops:
                if op[0] == "delete":
                    self._rows.pop(op[1], None)
                    continue
                self._n += 1
                row, etag = dict(op[1]), f"m{self._n}"
                if op[0] == "upsert" and op[1]["RowKey"] in self._rows:
                    row = {**self._rows[op[1]["RowKey"]][0], **row}
                self._rows[row["RowKey"]] = (row, etag)
                out[row["RowKey"]] = etag
            return out

    async def scan(self, select: Sequence[str] | None = None,
                   older_than: datetime | None = None) -> list[dict[str, Any]]:
        return [{**row, "etag": etag} for row, etag in list(self._rows.values())
                if older_than is None or (isinstance(row.get("updated"), datetime) and row["updated"] < older_than)]


class TableRecordTable:
    """The partition `lime` of an Azure Table (default `ratelimits`)."""

    def __init__(self, account: Any, table: str = "ratelimits", partition: str = PARTITION) -> None:
        self._account = account
        self.table_name = table
        self.partition = partition

    @property
    def _table(self) -> Any:
        return self._account.table(self.table_name)

    async def ensure(self) -> None:
        await self._account.ensure_tables(self.table_name)

    def _row(self, ent: Any) -> dict[str, Any]:
        row = dict(ent)
        row["etag"] = ent.metadata.get("etag", "")
        return row

    async def get(self, rk: str) -> dict[str, Any] | None:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        from ..errors import raise_storage
        try:
            return self._row(await self._table.get_entity(self.partition, rk))
        except ResourceNotFoundError:
            return None
        except HttpResponseError as exc:
            raise_storage(exc, "Lime create record read")

    async def get_many(self, rks: Sequence[str]) -> dict[str, dict[str, Any]]:
        """One query per 14 keys (a $filter holds at most 15 comparisons)."""
        from azure.core.exceptions import HttpResponseError

        from ..errors import raise_storage
        keys = list(dict.fromkeys(rks))
        if len(keys) == 1:
            row = await self.get(keys[0])
            return {keys[0]: row} if row is not None else {}
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(keys), 14):
            chunk = keys[i:i + 14]
            params: dict[str, Any] = {"pk": self.partition}
            params.update({f"r{j}": rk for j, rk in enumerate(chunk)})
            flt = "PartitionKey eq @pk and ( " + " or ".join(f"RowKey eq @r{j}" for j in range(len(chunk))) + " )"
            try:
                async for ent in self._table.query_entities(flt, parameters=params):
                    out[ent["RowKey"]] = self._row(ent)
            except HttpResponseError as exc:
                raise_storage(exc, "Lime record read")
        return out

    async def submit(self, ops: Sequence[tuple[Any, ...]]) -> dict[str, str]:
        try:
            return await self._submit(ops)
        except _TableMissing:
            await self.ensure()  # a table deleted, or never created (Services.ready() creates it)
            return await self._submit(ops)

    async def _submit(self, ops: Sequence[tuple[Any, ...]]) -> dict[str, str]:
        from azure.core import MatchConditions
        from azure.core.exceptions import (
            HttpResponseError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError,
        )
        from azure.data.tables import UpdateMode

        from ..errors import raise_storage
        table = self._table
        entity = (lambda row: {"PartitionKey": self.partition, **row})
        try:
            if len(ops) == 1:
                op = ops[0]
                if op[0] == "insert":
                    meta = await table.create_entity(entity(op[1]))
                elif op[0] == "replace":
                    meta = await table.update_entity(entity(op[1]), mode=UpdateMode.REPLACE, etag=op[2],
                                                     match_condition=MatchConditions.IfNotModified)
                elif op[0] == "upsert":
                    meta = await table.upsert_entity(entity(op[1]), mode=UpdateMode.MERGE)
                else:
                    await table.delete_entity(self.partition, op[1], etag=op[2],
                                              match_condition=MatchConditions.IfNotModified)
                    return {}
                return {op[1]["RowKey"]: meta.get("etag", "")}
            batch: list[Any] = []
            for op in ops:
                if op[0] == "insert":
                    batch.append(("create", entity(op[1])))
                elif op[0] == "replace":
                    batch.append(("update", entity(op[1]), {"mode": UpdateMode.REPLACE, "etag": op[2],
                                                             "match_condition": MatchConditions.IfNotModified}))
                elif op[0] == "upsert":
                    batch.append(("upsert", entity(op[1]), {"mode": UpdateMode.MERGE}))
                else:
                    batch.append(("delete", {"PartitionKey": self.partition, "RowKey": op[1]},
                                  {"etag": op[2], "match_condition": MatchConditions.IfNotModified}))
            metas = await table_batch.submit(table, batch)
            return {op[1]["RowKey"]: (m or {}).get("etag", "") for op, m in zip(ops, metas) if op[0] != "delete"}
        except (ResourceExistsError, ResourceModifiedError) as exc:
            raise RecordConflict(str(exc)[:200]) from None
        except ResourceNotFoundError as exc:
            if "TableNotFound" in f"{getattr(exc, 'error_code', '') or ''} {exc}":
                raise _TableMissing() from None
            raise RecordConflict(str(exc)[:200]) from None
        except HttpResponseError as exc:
            if exc.status_code in (404, 409, 412):
                raise RecordConflict(str(exc)[:200]) from None
            raise_storage(exc, "Lime create record write")

    async def scan(self, select: Sequence[str] | None = None,
                   older_than: datetime | None = None) -> list[dict[str, Any]]:
        """Rows of the partition (`older_than`: last changed before it): maintenance only."""
        from azure.core.exceptions import HttpResponseError

        from ..errors import raise_storage
        flt, params = "PartitionKey eq @pk", {"pk": self.partition}
        if older_than is not None:
            flt += " and updated lt @cutoff"
            params["cutoff"] = older_than
        try:
            return [self._row(e) async for e in self._table.query_entities(
                flt, parameters=params, select=list(select) if select else None)]
        except HttpResponseError as exc:
            raise_storage(exc, "Lime record scan")


# Claims -------------------------------------------------------------------------------------------
@dataclass
class Claim:
    """What a claim on one name found. NEW: no earlier attempt, create without asking Lime. DONE:
    created before (`oid`, `extra`, `created_at`). UNKNOWN: an earlier attempt stopped without
    recording its outcome (taken over from it): ask Lime before creating."""
    name: str
    outcome: str
    owner: str
    oid: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    etag: str = ""
    expires: datetime | None = None
    created_at: datetime | None = None

    @property
    def rk(self) -> str:
        return record_key(self.name)

    @property
    def held(self) -> bool:
        return self.outcome in (NEW, UNKNOWN)


class CreateRecords:
    """Claims on create records (the lock and the idempotency record in one row), and writes of
    several rows of the partition in one transaction."""

    def __init__(self, table: RecordTable, clock: Callable[[], datetime] | None = None,
                 lease_seconds: float = 30.0, wait_seconds: float = 30.0,
                 sleep: Callable[[float], Any] | None = None) -> None:
        self.table = table
        self._now = clock or (lambda: datetime.now(timezone.utc))
        self.lease = timedelta(seconds=lease_seconds)
        self.wait = wait_seconds
        self._sleep = sleep or asyncio.sleep
        self._ensured = False
        self._legacy_until: datetime | None = None

    async def ensure(self, had_mail: Callable[[], Any] | None = None) -> None:
        """Create the table, and the epoch row on the first run of this version (`had_mail()`
        answers whether the app processed mail before: an upgrade)."""
        if self._ensured:
            return
        await self.table.ensure()
        row = await self.table.get(EPOCH_ROW)
        if row is None:
            upgrade = bool(await had_mail()) if had_mail is not None else False
            row = {"RowKey": EPOCH_ROW, "since": self._now(), "upgrade": upgrade}
            try:
                await self.table.submit([("insert", row)])
            except RecordConflict:
                row = await self.table.get(EPOCH_ROW) or row
            if upgrade:
                log.info("lime.records-started upgrade=true: Lime is asked before creates for %s hours",
                         int(LEGACY_WINDOW.total_seconds() // 3600))
        since = table_time(row.get("since"))
        self._legacy_until = since + LEGACY_WINDOW if row.get("upgrade") and since else None
        self._ensured = True

    def now(self) -> datetime:
        """The records' clock (real time in production: leases must not jump with a test's clock)."""
        return self._now()

    def legacy(self) -> bool:
        """Within a day of an upgrade: a missing record does not prove that nothing was created."""
        return self._legacy_until is not None and self._now() < self._legacy_until

    def creating_row(self, name: str, owner: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"RowKey": record_key(name), "kind": "create", "state": CREATING, "owner": owner,
                "expires": self._now() + self.lease, "oid": "", "extra": json.dumps(extra or {}),
                "updated": self._now()}

    async def claim(self, names: Sequence[str], owner: str) -> list[Claim]:
        """Claim each name for `owner` (inserted together in one transaction when none exists)."""
        names = list(dict.fromkeys(names))
        if not names:
            return []
        rows = [self.creating_row(n, owner) for n in names]
        if not self.legacy():
            try:
                etags = await self.table.submit([("insert", r) for r in rows])
                return [Claim(n, NEW, owner, etag=etags.get(r["RowKey"], ""), expires=r["expires"])
                        for n, r in zip(names, rows)]
            except RecordConflict:
                if len(names) == 1:
                    return [await self._claim_one(names[0], owner, inserted=False)]
        return [await self._claim_one(n, owner) for n in names]

    async def _claim_one(self, name: str, owner: str, inserted: bool = True) -> Claim:
        deadline = time.monotonic() + self.wait
        attempt = 0
        while True:
            attempt += 1
            if inserted:
                row = self.creating_row(name, owner)
                try:
                    etags = await self.table.submit([("insert", row)])
                    outcome = UNKNOWN if self.legacy() else NEW
                    return Claim(name, outcome, owner, etag=etags.get(row["RowKey"], ""), expires=row["expires"])
                except RecordConflict:
                    pass
            inserted = True
            current = await self.table.get(record_key(name))
            if current is None:
                continue  # released in between: insert again
            if current.get("state") == CREATED:
                return Claim(name, DONE, owner, oid=str(current.get("oid") or ""),
                             extra=json.loads(current.get("extra") or "{}"), etag=current["etag"],
                             created_at=table_time(current.get("updated")))
            expires = table_time(current.get("expires"))
            if expires is None or expires <= self._now():
                row = self.creating_row(name, owner, json.loads(current.get("extra") or "{}"))
                try:
                    etags = await self.table.submit([("replace", row, current["etag"])])
                    log.info("lime.record-taken-over record=%s", record_key(name)[:14])
                    return Claim(name, UNKNOWN, owner, etag=etags.get(row["RowKey"], ""), expires=row["expires"],
                                 extra=json.loads(current.get("extra") or "{}"))
                except RecordConflict:
                    continue
            if time.monotonic() > deadline:
                raise TransientError("Lime CRM: another worker is creating this object; try again",
                                     retry_after=5)
            await self._sleep(random.uniform(0.005, min(0.02 * attempt, 0.25)))

    async def check(self, claim: Claim) -> None:
        """Before a write under `claim`: renew its lease when it is running out (TransientError
        when another worker took it over meanwhile: do not write)."""
        if not claim.held or claim.expires is None:
            return
        if claim.expires - self._now() > self.lease / 3:
            return
        row = self.creating_row(claim.name, claim.owner, claim.extra)
        try:
            etags = await self.table.submit([("replace", row, claim.etag)])
        except RecordConflict:
            raise TransientError("Lime CRM: the create record's lease ran out before the write; try again",
                                 retry_after=1) from None
        claim.etag, claim.expires = etags.get(row["RowKey"], ""), row["expires"]

    def created_row(self, claim: Claim, oid: str, extra: dict[str, Any] | None = None) -> tuple[Any, ...]:
        """The op that records `claim`'s object as created."""
        row = {"RowKey": claim.rk, "kind": "create", "state": CREATED, "owner": claim.owner, "expires": self._now(),
               "oid": str(oid), "extra": json.dumps(extra if extra is not None else claim.extra)[:30000],
               "updated": self._now()}
        return ("replace", row, claim.etag)

    def released_row(self, claim: Claim, known: dict[str, Any] | None = None) -> tuple[Any, ...]:
        """The op that gives `claim` up: deleted when nothing can have been created under it (the
        next claim is NEW), else left `creating` with its lease over (the next claim asks Lime)."""
        if known is None:
            return ("delete", claim.rk, claim.etag)
        row = {"RowKey": claim.rk, "kind": "create", "state": CREATING, "owner": claim.owner, "expires": self._now(),
               "oid": "", "extra": json.dumps(known)[:30000], "updated": self._now()}
        return ("replace", row, claim.etag)

    async def write(self, ops: Iterable[tuple[Any, ...]]) -> None:
        """Write ops in transactions of at most 100 (one per RowKey each); a transaction whose
        If-Match failed (a lease taken over meanwhile) is written op by op, skipping the stale."""
        pending: list[tuple[Any, ...]] = []
        seen: set[str] = set()
        for op in ops:
            rk = op[1] if op[0] == "delete" else op[1]["RowKey"]
            if rk in seen or len(pending) >= 100:
                await self._write(pending)
                pending, seen = [], set()
            pending.append(op)
            seen.add(rk)
        if pending:
            await self._write(pending)

    async def _write(self, ops: list[tuple[Any, ...]]) -> None:
        try:
            await self.table.submit(ops)
            return
        except RecordConflict:
            if len(ops) == 1:
                log.info("lime.record-stale op=%s", ops[0][0])
                return
        for op in ops:
            try:
                await self.table.submit([op])
            except RecordConflict:
                log.info("lime.record-stale op=%s", op[0])


def new_owner() -> str:
    return uuid.uuid4().hex[:16]
