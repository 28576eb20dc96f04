"""Autoreply claims (table `ledger`) and per-recipient autoreply limits (table `ratelimits`).

Claims: one row per ticket, PartitionKey "autoreply", RowKey = hash of the ticket id, holding the
claim state (claimed -> sent | uncertain | failed | retrying | skipped) and what the admin needs to
see.  Every write is ETag-guarded (create: insert, fails if it exists; update: If-Match), so two
workers can never both hold a claim: the loser gets `ClaimConflict`.  Rows in a listable state are
mirrored into index rows beside them (same partition, RowKey "s-<state>-<inverted time>-<ticket
hash>"), written in the same entity group transaction as the claim row (one request), so the
manage API lists the newest failed / uncertain / sent autoreplies with one range query of the
partition, never a table scan; a listing re-reads each main row and skips (and removes) stale
index rows. Index rows written before they moved here live in partitions "autoreply-s-<state>"
(RowKey "<inverted time>-<ticket hash>"): listed too, and removed as their claims change.

Limits: one row per recipient, PartitionKey "autoreply", RowKey = hash of the lower-cased address,
holding the sends of the last window as [[token, epoch seconds], ...].  A sliding-window log, so the
limit is exact; counting the same token (one ticket's autoreply) twice is a no-op, so queue
redeliveries do not eat the recipient's allowance.  Updates are ETag-guarded and retried on
conflict, so concurrent workers cannot overshoot the limit.
"""
from __future__ import annotations

import asyncio
import json
import random
from datetime import datetime, timedelta
from typing import Any, Iterable

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError

from ..domain.errors import TransientError
from ..ports import Clock
from ..services.autoreply import LISTABLE, AutoreplyRecord, ClaimConflict, redact
from . import table_batch
from .errors import STORAGE_ERRORS, raise_storage
from .keys import EPOCH as _EPOCH, exact_hash, key_hash, table_time
from .storage_clients import StorageAccount, TableStore

PARTITION = "autoreply"
INDEX_PREFIX = "autoreply-s-"  # index partitions of rows written before the index moved in beside the claims
INDEX_ROW_PREFIX = "s-"  # index rows now: in the claims' partition (a claim's RowKey is hex: never "s-")
_INVERT = 10 ** 12  # milliseconds; inverted so the newest sort first


_dt = table_time


def ticket_key(ticket_id: str) -> str:
    return exact_hash(ticket_id)


def index_row_key(record: AutoreplyRecord) -> str:
    """`s-<state>-<inverted time>-<ticket hash>`: a state's rows together, the newest first."""
    when = record.updated_at or _EPOCH
    millis = int((when - _EPOCH).total_seconds() * 1000)
    return f"{INDEX_ROW_PREFIX}{record.status}-{_INVERT - millis:013d}-{ticket_key(record.ticket_id)}"


# ---- claims ----------------------------------------------------------------------------------------
class TableAutoreplyStore(TableStore):
    def __init__(self, account: StorageAccount, clock: Clock, table: str = "ledger") -> None:
        self._account = account
        self._clock = clock
        self.table_name = table
        # etag -> index of the rows this worker wrote last: the next save of such a row needs no
        # read to find its old index row (its If-Match update still refuses a row changed since)
        self._written: dict[str, tuple[str, str]] = {}

    @staticmethod
    def _to_entity(r: AutoreplyRecord, index: tuple[str, str]) -> dict[str, Any]:
        return {
            "PartitionKey": PARTITION, "RowKey": ticket_key(r.ticket_id), "ticket_id": r.ticket_id,
            "ticket_number": r.ticket_number, "status": r.status, "mailbox_id": r.mailbox_id,
            "message_id": r.message_id, "recipient": r.recipient.strip().lower()[:320], "template": r.template[:200],
            "attempts": r.attempts, "claimed_until": r.claimed_until or _EPOCH,
            "transaction_id": r.transaction_id, "last_error": r.last_error[:2000], "reason": r.reason[:1000],
            "history_id": r.history_id, "resend_requested": r.resend_requested, "correlation_id": r.correlation_id,
            "created_at": r.created_at or _EPOCH, "updated_at": r.updated_at or _EPOCH, "sent_at": r.sent_at or _EPOCH,
            "trace": json.dumps(r.trace[-40:])[:30000], "index_pk": index[0], "index_rk": index[1],
        }

    @staticmethod
    def _from_entity(ent: Any) -> AutoreplyRecord:
        return AutoreplyRecord(
            ticket_id=ent["ticket_id"], status=ent.get("status", ""), mailbox_id=ent.get("mailbox_id", ""),
            message_id=ent.get("message_id", ""), ticket_number=ent.get("ticket_number", ""),
            recipient=ent.get("recipient", ""), template=ent.get("template", ""),
            attempts=int(ent.get("attempts") or 0), claimed_until=_dt(ent.get("claimed_until")),
            transaction_id=ent.get("transaction_id", ""), last_error=ent.get("last_error", ""),
            reason=ent.get("reason", ""), history_id=ent.get("history_id", ""),
            resend_requested=bool(ent.get("resend_requested")), correlation_id=ent.get("correlation_id", ""),
            created_at=_dt(ent.get("created_at")), updated_at=_dt(ent.get("updated_at")),
            sent_at=_dt(ent.get("sent_at")), trace=json.loads(ent.get("trace") or "[]"),
            etag=ent.metadata.get("etag", ""))

    async def _get_entity(self, ticket_id: str) -> Any | None:
        try:
            return await self._table.get_entity(PARTITION, ticket_key(ticket_id))
        except ResourceNotFoundError:
            return None
        except STORAGE_ERRORS as exc:
            raise_storage(exc, "autoreply read")

    async def get(self, ticket_id: str) -> AutoreplyRecord | None:
        ent = await self._get_entity(ticket_id)
        return self._from_entity(ent) if ent is not None else None

    async def save(self, record: AutoreplyRecord) -> AutoreplyRecord:
        """The claim row and its index row in one entity group transaction (both live in the
        partition "autoreply"): one request. An index row from before the index moved beside the
        claims is deleted on its own."""
        now = self._clock.now()
        record.created_at = record.created_at or now
        record.updated_at = now
        old_index = ("", "")
        if record.etag and record.etag in self._written:
            old_index = self._written.pop(record.etag)
        elif record.etag:
            current = await self._get_entity(record.ticket_id)
            if current is None or current.metadata.get("etag") != record.etag:
                raise ClaimConflict("autoreply row changed by another worker")
            old_index = (current.get("index_pk", ""), current.get("index_rk", ""))
        index = (PARTITION, index_row_key(record)) if record.status in LISTABLE else ("", "")
        entity = self._to_entity(record, index)
        ops: list[Any] = [("update", entity, {"mode": "replace", "etag": record.etag,
                                              "match_condition": MatchConditions.IfNotModified})
                          if record.etag else ("create", entity)]
        if index[0] and index != old_index:
            ops.append(("upsert", self._index_entity(record, index), {"mode": "replace"}))
        if old_index[0] == PARTITION and old_index != index:
            ops.append(("delete", {"PartitionKey": PARTITION, "RowKey": old_index[1]}))
        try:
            if len(ops) == 1:
                meta = await (self._table.update_entity(entity, mode="replace", etag=record.etag,
                                                        match_condition=MatchConditions.IfNotModified)
                              if record.etag else self._table.create_entity(entity))
            else:
                meta = (await table_batch.submit(self._table, ops))[0]
        except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
            raise ClaimConflict("autoreply row changed by another worker") from None
        except STORAGE_ERRORS as exc:
            if getattr(exc, "status_code", None) in (404, 409, 412):
                raise ClaimConflict("autoreply row changed by another worker") from None
            raise_storage(exc, "autoreply write")
        record.etag = (meta or {}).get("etag", "")
        if old_index[0] and old_index[0] != PARTITION and old_index != index:
            await self._delete_index(old_index)
        if len(self._written) > 10_000:
            self._written.clear()
        if record.etag:
            self._written[record.etag] = index
        return record

    @staticmethod
    def _index_entity(record: AutoreplyRecord, index: tuple[str, str]) -> dict[str, Any]:
        return {"PartitionKey": index[0], "RowKey": index[1], "ticket_id": record.ticket_id,
                "ticket_number": record.ticket_number, "mailbox_id": record.mailbox_id,
                "updated_at": record.updated_at}

    async def _delete_index(self, index: tuple[str, str]) -> None:
        try:
            await self._table.delete_entity(index[0], index[1])
        except ResourceNotFoundError:
            pass
        except STORAGE_ERRORS as exc:
            raise_storage(exc, "autoreply index write")

    async def list(self, status: str, limit: int = 100) -> list[AutoreplyRecord]:
        """Newest first: the state's index rows (a RowKey range of the claims' partition), then
        those of the partition they had before (rows written by an earlier version)."""
        if status not in LISTABLE:
            raise ValueError(f"status must be one of {', '.join(LISTABLE)}")
        prefix = f"{INDEX_ROW_PREFIX}{status}-"
        queries = ((PARTITION, "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
                    {"pk": PARTITION, "lo": prefix, "hi": prefix[:-1] + "."}),
                   (INDEX_PREFIX + status, "PartitionKey eq @pk", {"pk": INDEX_PREFIX + status}))
        rows: list[Any] = []
        try:
            for _, flt, params in queries:
                async for ent in self._table.query_entities(flt, parameters=params,
                                                            results_per_page=min(limit, 1000)):
                    rows.append(ent)
                    if len(rows) >= limit:
                        break
                if len(rows) >= limit:
                    break
        except STORAGE_ERRORS as exc:
            raise_storage(exc, "autoreply list")
        sem = asyncio.Semaphore(16)

        async def main_row(ent: Any) -> AutoreplyRecord | None:
            async with sem:
                record = await self.get(ent["ticket_id"])
                if record is None or record.status != status:
                    try:  # a stale index row (a crash between the two writes): tidy it away
                        await self._table.delete_entity(ent["PartitionKey"], ent["RowKey"])
                    except HttpResponseError:
                        pass
                    return None
                return record
        found = await asyncio.gather(*(main_row(e) for e in rows))
        out = [r for r in found if r is not None]
        out.sort(key=lambda r: r.updated_at or _EPOCH, reverse=True)
        return out

    # maintenance ---------------------------------------------------------------------------------
    async def erase_address(self, address: str) -> int:
        """Scrub one recipient's address from the claim rows (the privacy erase): the recipient and
        any address quoted in errors go; state, ticket and transaction ids stay, so nothing is resent."""
        wanted = address.strip().lower()
        if not wanted:
            return 0
        try:
            found = [e async for e in self._table.query_entities(
                "PartitionKey eq @pk and recipient eq @a", parameters={"pk": PARTITION, "a": wanted})]
        except STORAGE_ERRORS as exc:
            raise_storage(exc, "autoreply erase")
        scrubbed = 0
        for ent in found:
            record = self._from_entity(ent)
            for _ in range(5):
                record.recipient = ""
                record.last_error = redact(record.last_error, 2000)
                record.trace = [{k: redact(v, 300) if k in ("error", "reason") else v for k, v in t.items()}
                                for t in record.trace]
                try:
                    await self.save(record)
                    scrubbed += 1
                    break
                except ClaimConflict:
                    fresh = await self.get(record.ticket_id)
                    if fresh is None:
                        break
                    record = fresh
            else:
                raise TransientError("an autoreply row kept changing during the erase; run it again")
        return scrubbed

    async def purge(self, cutoff: datetime) -> int:
        """Delete claim rows (and their index rows) last updated before `cutoff`."""
        deleted = 0
        try:
            async for ent in self._table.query_entities(  # claim rows only (index rows start with "s-")
                    "PartitionKey eq @pk and RowKey lt @index and updated_at lt @cutoff",
                    parameters={"pk": PARTITION, "index": INDEX_ROW_PREFIX, "cutoff": cutoff},
                    select=["RowKey", "index_pk", "index_rk"]):
                for pk, rk in ((ent.get("index_pk"), ent.get("index_rk")), (PARTITION, ent["RowKey"])):
                    if pk and rk:
                        try:
                            await self._table.delete_entity(pk, rk)
                        except ResourceNotFoundError:
                            pass
                deleted += 1
        except STORAGE_ERRORS as exc:
            raise_storage(exc, "autoreply purge")
        return deleted


# ---- per-recipient limits --------------------------------------------------------------------------
def admit(sends: Iterable[Any], token: str, now: datetime, limit: int,
          window: timedelta) -> tuple[bool, list[list[Any]] | None]:
    """Sliding-window decision. (allowed, new log to store or None when nothing changes)."""
    horizon = (now - window - _EPOCH).total_seconds()
    kept = [[str(t), int(at)] for t, at in sends if int(at) > horizon]
    if any(t == token for t, _ in kept):
        return True, None
    if len(kept) >= limit:
        return False, None
    kept.append([token, int((now - _EPOCH).total_seconds())])
    return True, kept


class TableRateLimiter(TableStore):
    """Counts are kept exact across workers by ETag-guarded writes; each worker remembers the row
    it last wrote or read per recipient (its ETag and sends), so a count usually costs one request:
    an If-Match update from what it remembers (a recipient it never saw: an insert), and only when
    another worker wrote in between, a read and another try."""

    ATTEMPTS = 60
    REMEMBERED = 10_000

    def __init__(self, account: StorageAccount, limit: int = 10, window_minutes: int = 180,
                 table: str = "ratelimits", partition: str = PARTITION) -> None:
        self._account = account
        self.limit = limit
        self.window = timedelta(minutes=window_minutes)
        self.table_name = table
        self._partition = partition
        self._rows: dict[str, tuple[str, list[Any]]] = {}  # row key -> (etag, sends) as last seen

    def _remember(self, rk: str, etag: str, sends: list[Any]) -> None:
        if len(self._rows) >= self.REMEMBERED:
            self._rows.clear()
        self._rows[rk] = (etag, sends)

    async def acquire(self, recipient: str, token: str, now: datetime) -> bool:
        rk = key_hash(recipient)
        known: tuple[str, list[Any]] | None = self._rows.pop(rk, None) or ("", [])  # unseen: try an insert
        for attempt in range(self.ATTEMPTS):
            try:
                if known is None:
                    try:
                        ent = await self._table.get_entity(self._partition, rk)
                        known = (ent.metadata["etag"], json.loads(ent.get("sends") or "[]"))
                    except ResourceNotFoundError:
                        known = ("", [])
                etag, sends = known
                allowed, new = admit(sends, token, now, self.limit, self.window)
                if new is None:
                    if etag:
                        self._remember(rk, etag, sends)
                    return allowed
                entity = {"PartitionKey": self._partition, "RowKey": rk, "sends": json.dumps(new), "updated_at": now}
                try:
                    if not etag:
                        meta = await self._table.create_entity(entity)
                    else:
                        meta = await self._table.update_entity(entity, mode="replace", etag=etag,
                                                               match_condition=MatchConditions.IfNotModified)
                    self._remember(rk, meta.get("etag", ""), new)
                    return True
                except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
                    known = None  # another worker counted first (or the row is not as remembered): read again
                except STORAGE_ERRORS as exc:
                    if getattr(exc, "status_code", None) not in (409, 412):
                        raise
                    known = None
            except STORAGE_ERRORS as exc:
                raise_storage(exc, "rate limit")
            if attempt:
                await asyncio.sleep(random.uniform(0, 0.005 * min(attempt + 1, 10)))
        raise TransientError("the recipient's rate-limit row is contended; try again", retry_after=1)

    async def erase_address(self, address: str) -> int:
        """Forget one recipient's count (the privacy erase). The row key is a hash of the address."""
        self._rows.pop(key_hash(address), None)
        try:
            await self._table.delete_entity(self._partition, key_hash(address))
            return 1
        except ResourceNotFoundError:
            return 0
        except STORAGE_ERRORS as exc:
            raise_storage(exc, "rate limit erase")

    async def purge(self, now: datetime) -> int:
        """Delete counts whose every send is older than the window (nothing left to limit)."""
        deleted = 0
        try:
            async for ent in self._table.query_entities(
                    "PartitionKey eq @pk and updated_at lt @cutoff",
                    parameters={"pk": self._partition, "cutoff": now - self.window}, select=["RowKey"]):
                try:
                    await self._table.delete_entity(self._partition, ent["RowKey"])
                    deleted += 1
                except ResourceNotFoundError:
                    pass
        except STORAGE_ERRORS as exc:
            raise_storage(exc, "rate limit purge")
        return deleted
