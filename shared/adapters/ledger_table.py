"""The `ledger` table: one row per mailbox and mail, recording each finished pipeline step.

Row: PartitionKey "m-<hash(mailbox)>", RowKey "<hash(message id)>".  Failed and Skipped rows are
mirrored into index partitions "s-failed" / "s-skipped" (RowKey "<mailbox hash>-<message hash>")
holding the summary the manage API lists (and, for Failed rows, the sweep's retry schedule and
whether the mailbox category is still pending), so a list is one partition query, never a table
scan.  Partition "s-last" holds one row per mailbox: its last processed mail (the status page).
Writes are ETag-guarded: two workers cannot both believe they hold the lease.

Maintenance reads (retention purge, privacy erase) are the only queries spanning partitions; they
run from a timer or an admin request, never on a list path.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError

from ..domain.errors import LeaseHeld, TransientError
from ..domain.model import FAILED, FINISHED, PROCESSED, PROCESSING, SKIPPED, LedgerEntry
from ..ports import Clock
from .errors import STORAGE_ERRORS, raise_storage
from .keys import exact_hash, key_hash, table_time
from .storage_clients import StorageAccount, TableStore

log = logging.getLogger("inbox.ledger")

INDEXED = (FAILED, SKIPPED)
MAX_TRACE = 60
# data keys mirrored into the index rows (the sweep decides from the index alone)
INDEX_DATA = ("retry_at", "retries", "category", "permanent")
LAST_PARTITION = "s-last"
LAST_PROCESSED_EVERY = 30.0  # seconds
# Azure Tables allows at most 15 comparisons in one $filter: PartitionKey + 14 RowKeys.
_ROWS_PER_QUERY = 14


def _pk(mailbox_id: str) -> str:
    return "m-" + key_hash(mailbox_id, 32)


def _rk(message_id: str) -> str:
    return exact_hash(message_id)


def _index_rk(mailbox_id: str, message_id: str) -> str:
    return f"{key_hash(mailbox_id, 32)}-{exact_hash(message_id)}"


_dt = table_time


class TableLedger(TableStore):
    def __init__(self, account: StorageAccount, clock: Clock, table: str = "ledger") -> None:
        self._account = account
        self._clock = clock
        self.table_name = table
        self._last_written: dict[str, float] = {}  # mailbox id -> when this worker last wrote its s-last row

    # mapping ---------------------------------------------------------------------------------
    def _to_entity(self, e: LedgerEntry) -> dict[str, Any]:
        return {
            "PartitionKey": _pk(e.mailbox_id), "RowKey": _rk(e.message_id),
            "mailbox_id": e.mailbox_id, "message_id": e.message_id, "status": e.status,
            "steps": json.dumps(e.steps), "data": json.dumps(e.data), "attempts": e.attempts,
            "last_error": e.last_error[:2000], "skip_reason": e.skip_reason[:1000],
            "lease_owner": e.lease_owner, "lease_until": e.lease_until or datetime(1970, 1, 1, tzinfo=timezone.utc),
            "correlation_id": e.correlation_id, "source": e.source, "sender": e.sender[:320],
            "subject": e.subject[:1000], "received_at": e.received_at or "",
            "created_at": e.created_at, "updated_at": e.updated_at,
            "trace": json.dumps(e.trace[-MAX_TRACE:]),
            # a column of its own so a privacy erase can filter on it server-side
            "reply_address": str(e.data.get("reply_address") or "")[:320],
        }

    @staticmethod
    def _from_entity(ent: Any) -> LedgerEntry:
        lease = _dt(ent.get("lease_until"))
        return LedgerEntry(
            mailbox_id=ent["mailbox_id"], message_id=ent["message_id"], status=ent.get("status", PROCESSING),
            steps=json.loads(ent.get("steps") or "{}"), data=json.loads(ent.get("data") or "{}"),
            attempts=int(ent.get("attempts") or 0), last_error=ent.get("last_error", ""),
            skip_reason=ent.get("skip_reason", ""), lease_owner=ent.get("lease_owner", ""),
            lease_until=lease if lease and lease.year > 1970 else None,
            correlation_id=ent.get("correlation_id", ""), source=ent.get("source", ""),
            sender=ent.get("sender", ""), subject=ent.get("subject", ""), received_at=_dt(ent.get("received_at")),
            created_at=_dt(ent.get("created_at")), updated_at=_dt(ent.get("updated_at")),
            trace=json.loads(ent.get("trace") or "[]"), etag=ent.metadata.get("etag", ""),
        )

    # port --------------------------------------------------------------------------------------
    async def get(self, mailbox_id: str, message_id: str) -> LedgerEntry | None:
        try:
            ent = await self._table.get_entity(_pk(mailbox_id), _rk(message_id))
        except ResourceNotFoundError:
            return None
        except STORAGE_ERRORS as exc:
            raise_storage(exc, "ledger read")
        return self._from_entity(ent)

    async def claim(self, mailbox_id: str, message_id: str, owner: str, lease_seconds: int,
                    correlation_id: str, source: str) -> LedgerEntry:
        """Most mail is new: the row is inserted first (one request), read only when it exists."""
        now = self._clock.now()
        lease_until = now + timedelta(seconds=lease_seconds)
        fresh = LedgerEntry(mailbox_id=mailbox_id, message_id=message_id, status=PROCESSING,
                            lease_owner=owner, lease_until=lease_until, correlation_id=correlation_id,
                            source=source, created_at=now, updated_at=now, attempts=1,
                            trace=[{"at": now.isoformat(), "event": "claimed", "source": source,
                                    "correlation_id": correlation_id}])
        try:
            meta = await self._table.create_entity(self._to_entity(fresh))
            fresh.etag = meta.get("etag", "")
            return fresh
        except ResourceExistsError:
            entry = await self.get(mailbox_id, message_id)
            if entry is None:
                raise LeaseHeld("ledger row vanished during claim")
        except STORAGE_ERRORS as exc:
            raise_storage(exc, "ledger claim")
        if entry.status in FINISHED:
            return entry
        if (entry.status == PROCESSING and entry.lease_owner and entry.lease_owner != owner
                and entry.lease_until and entry.lease_until > now):
            raise LeaseHeld(f"lease held until {entry.lease_until.isoformat()}",
                            retry_after=(entry.lease_until - now).total_seconds())
        previous = entry.status
        entry.status = PROCESSING
        entry.lease_owner, entry.lease_until = owner, lease_until
        entry.attempts += 1
        entry.correlation_id = correlation_id or entry.correlation_id
        entry.trace.append({"at": now.isoformat(), "event": "claimed", "source": source,
                            "correlation_id": correlation_id, "previous": previous})
        return await self.save(entry)

    async def save(self, entry: LedgerEntry) -> LedgerEntry:
        entry.updated_at = self._clock.now()
        was_indexed = entry.data.get("_indexed", "")
        entry.data["_indexed"] = entry.status if entry.status in INDEXED else ""
        newly_processed = entry.status == PROCESSED and not entry.data.get("_last")
        if newly_processed:
            entry.data["_last"] = 1
        try:
            meta = await self._table.update_entity(
                self._to_entity(entry), mode="replace", etag=entry.etag,
                match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            raise LeaseHeld("ledger row changed by another worker") from None
        except STORAGE_ERRORS as exc:
            if getattr(exc, "status_code", None) == 412:
                raise LeaseHeld("ledger row changed by another worker") from None
            raise_storage(exc, "ledger write")
        entry.etag = meta.get("etag", "")
        await self._reindex(entry, was_indexed)
        if newly_processed:
            await self._note_last_processed(entry)
        return entry

    async def _note_last_processed(self, entry: LedgerEntry) -> None:
        """Best effort: the status page's "last mail processed" (a lost write only makes it older),
        written at most every LAST_PROCESSED_EVERY seconds per mailbox by one worker: the figure is
        a minute's precision, not a write per mail."""
        now = time.monotonic()
        if now - self._last_written.get(entry.mailbox_id, float("-inf")) < LAST_PROCESSED_EVERY:
            return
        self._last_written[entry.mailbox_id] = now
        try:
            await self._table.upsert_entity({
                "PartitionKey": LAST_PARTITION, "RowKey": key_hash(entry.mailbox_id, 32),
                "mailbox_id": entry.mailbox_id, "message_id": entry.message_id,
                "processed_at": entry.updated_at, "updated_at": entry.updated_at}, mode="replace")
        except Exception as exc:  # noqa: BLE001 - never fail a processed mail for a status figure
            log.warning("ledger.last-processed-unwritten mailbox=%s error=%s", entry.mailbox_id, type(exc).__name__)

    async def insert(self, entry: LedgerEntry) -> LedgerEntry:
        """Create a row that must not exist yet; LeaseHeld when it does (someone else was first)."""
        now = self._clock.now()
        entry.created_at = entry.created_at or now
        entry.updated_at = now
        entry.data["_indexed"] = entry.status if entry.status in INDEXED else ""
        try:
            meta = await self._table.create_entity(self._to_entity(entry))
        except ResourceExistsError:
            raise LeaseHeld("ledger row created by another worker") from None
        except STORAGE_ERRORS as exc:
            raise_storage(exc, "ledger insert")
        entry.etag = meta.get("etag", "")
        await self._reindex(entry, "")
        return entry

    async def mark_queued(self, mailbox_id: str, message_id: str, source: str, correlation_id: str,
                          sender: str = "", subject: str = "", received_at: datetime | None = None) -> bool:
        """Record that a job for this mail was put on the queue (sweep, recovery), so the next
        sweep sees it is on its way. Creates the row only; False when one already exists."""
        now = self._clock.now()
        entry = LedgerEntry(mailbox_id=mailbox_id, message_id=message_id, status=PROCESSING, source=source,
                            correlation_id=correlation_id, sender=sender.lower(), subject=subject,
                            received_at=received_at, created_at=now,
                            trace=[{"at": now.isoformat(), "event": "queued", "source": source,
                                    "correlation_id": correlation_id}])
        try:
            await self.insert(entry)
        except LeaseHeld:
            return False
        return True

    async def get_many(self, mailbox_id: str, message_ids: Iterable[str],
                       concurrency: int = 8) -> dict[str, LedgerEntry]:
        """The rows of these mails of one mailbox, by message id (absent ones left out).
        One partition query per 14 ids, a few in parallel."""
        ids = list(dict.fromkeys(message_ids))
        chunks = [ids[i:i + _ROWS_PER_QUERY] for i in range(0, len(ids), _ROWS_PER_QUERY)]
        gate = asyncio.Semaphore(concurrency)
        found: dict[str, LedgerEntry] = {}

        async def one(chunk: list[str]) -> None:
            params: dict[str, Any] = {"pk": _pk(mailbox_id)}
            ors = []
            for i, mid in enumerate(chunk):
                params[f"r{i}"] = _rk(mid)
                ors.append(f"RowKey eq @r{i}")
            # the SDK substitutes @names between spaces: keep the parentheses apart
            flt = f"PartitionKey eq @pk and ( {' or '.join(ors)} )"
            async with gate:
                try:
                    async for ent in self._table.query_entities(flt, parameters=params):
                        row = self._from_entity(ent)
                        found[row.message_id] = row
                except STORAGE_ERRORS as exc:
                    raise_storage(exc, "ledger read")
        await asyncio.gather(*(one(c) for c in chunks))
        return found

    async def _reindex(self, entry: LedgerEntry, was: str) -> None:
        """Keep the s-failed / s-skipped index partitions in step with the row.

        The row remembers which index holds it (data["_indexed"]), so a save that changes
        nothing indexed costs no extra request."""
        now_indexed = entry.status if entry.status in INDEXED else ""
        rk = _index_rk(entry.mailbox_id, entry.message_id)
        if was and was != now_indexed:
            try:
                await self._table.delete_entity(f"s-{was}", rk)
            except ResourceNotFoundError:
                pass
            except STORAGE_ERRORS as exc:
                raise_storage(exc, "ledger index delete")
        if now_indexed:
            try:
                await self._table.upsert_entity({
                    "PartitionKey": f"s-{now_indexed}", "RowKey": rk, "mailbox_id": entry.mailbox_id,
                    "message_id": entry.message_id, "sender": entry.sender[:320], "subject": entry.subject[:1000],
                    "received_at": entry.received_at or "", "attempts": entry.attempts,
                    "last_error": entry.last_error[:2000], "skip_reason": entry.skip_reason[:1000],
                    "updated_at": entry.updated_at, "correlation_id": entry.correlation_id,
                    "created_at": entry.created_at, "retry_at": str(entry.data.get("retry_at") or ""),
                    "retries": int(entry.data.get("retries") or 0),
                    "category": str(entry.data.get("category") or ""),
                    "permanent": bool(entry.data.get("permanent")),
                }, mode="replace")
            except STORAGE_ERRORS as exc:
                raise_storage(exc, "ledger index write")

    async def list_status(self, status: str, mailbox_id: str | None = None, since: datetime | None = None,
                          received_since: datetime | None = None, limit: int | None = None) -> list[LedgerEntry]:
        """Failed or Skipped rows, from their index partition (summary fields only; `data` holds
        the retry schedule and category state). `since` filters on the last update,
        `received_since` on when the mail arrived."""
        if status not in INDEXED:
            raise ValueError(f"only {', '.join(INDEXED)} are indexed")
        flt = "PartitionKey eq @pk"
        params: dict[str, Any] = {"pk": f"s-{status}"}
        if mailbox_id:
            prefix = key_hash(mailbox_id, 32)
            flt += " and RowKey ge @lo and RowKey lt @hi"
            params.update(lo=prefix + "-", hi=prefix + ".")
        if since:
            flt += " and updated_at ge @since"
            params["since"] = since
        if received_since:
            flt += " and received_at ge @received"
            params["received"] = received_since
        out: list[LedgerEntry] = []
        try:
            async for ent in self._table.query_entities(flt, parameters=params):
                out.append(LedgerEntry(
                    mailbox_id=ent["mailbox_id"], message_id=ent["message_id"], status=status,
                    attempts=int(ent.get("attempts") or 0), last_error=ent.get("last_error", ""),
                    skip_reason=ent.get("skip_reason", ""), sender=ent.get("sender", ""),
                    subject=ent.get("subject", ""), received_at=_dt(ent.get("received_at")),
                    updated_at=_dt(ent.get("updated_at")), correlation_id=ent.get("correlation_id", ""),
                    created_at=_dt(ent.get("created_at")),
                    data={k: ent.get(k) for k in INDEX_DATA if ent.get(k) not in (None, "")}))
                if limit and len(out) >= limit:
                    break
        except STORAGE_ERRORS as exc:
            raise_storage(exc, "ledger list")
        return out

    async def count_status(self, status: str, mailbox_id: str | None = None) -> int:
        """How many Failed or Skipped rows (one index partition range, keys only)."""
        if status not in INDEXED:
            raise ValueError(f"only {', '.join(INDEXED)} are indexed")
        flt, params = "PartitionKey eq @pk", {"pk": f"s-{status}"}
        if mailbox_id:
            prefix = key_hash(mailbox_id, 32)
            flt += " and RowKey ge @lo and RowKey lt @hi"
            params.update(lo=prefix + "-", hi=prefix + ".")
        try:
            return len([e async for e in self._table.query_entities(flt, parameters=params, select=["RowKey"])])
        except STORAGE_ERRORS as exc:
            raise_storage(exc, "ledger count")

    async def last_processed(self) -> dict[str, datetime]:
        """mailbox id -> when its last mail was processed (one small partition)."""
        out: dict[str, datetime] = {}
        try:
            async for ent in self._table.query_entities("PartitionKey eq @pk", parameters={"pk": LAST_PARTITION}):
                when = _dt(ent.get("processed_at"))
                if when:
                    out[ent["mailbox_id"]] = when
        except STORAGE_ERRORS as exc:
            raise_storage(exc, "ledger last-processed")
        return out

    # maintenance ---------------------------------------------------------------------------------
    async def purge(self, cutoff: datetime, max_rows: int = 200_000) -> dict[str, int]:
        """Delete mail rows and Skipped index rows last updated before `cutoff`.

        Failed rows are kept (and their index rows): they stand for mail still waiting in the
        Inbox for an admin, and forgetting them would let the sweep take that mail for new.
        Rows of other components sharing the table (partitions not named m-/s-) are left alone."""
        deleted = {"mail_rows": 0, "skipped_index_rows": 0}
        queries = (
            ("mail_rows", "PartitionKey ge 'm-' and PartitionKey lt 'm.' and updated_at lt @cutoff"),
            ("skipped_index_rows", "PartitionKey eq 's-skipped' and updated_at lt @cutoff"),
        )
        for name, flt in queries:
            batch: list[Any] = []
            try:
                async for ent in self._table.query_entities(flt, parameters={"cutoff": cutoff},
                                                            select=["PartitionKey", "RowKey", "status"]):
                    if ent.get("status") == FAILED:
                        continue
                    batch.append(ent)
                    if len(batch) >= 500:
                        deleted[name] += await self._delete_rows(batch)
                        batch = []
                    if deleted[name] + len(batch) >= max_rows:
                        break
                deleted[name] += await self._delete_rows(batch)
            except STORAGE_ERRORS as exc:
                raise_storage(exc, "ledger purge")
        return deleted

    async def _delete_rows(self, entities: list[Any]) -> int:
        """Delete rows, grouped per partition into transactions of at most 100."""
        by_pk: dict[str, list[Any]] = {}
        for ent in entities:
            by_pk.setdefault(ent["PartitionKey"], []).append(ent)
        count = 0
        for pk, rows in by_pk.items():
            for i in range(0, len(rows), 100):
                chunk = rows[i:i + 100]
                try:
                    await self._table.submit_transaction(
                        [("delete", {"PartitionKey": pk, "RowKey": r["RowKey"]}) for r in chunk])
                    count += len(chunk)
                except Exception:  # noqa: BLE001 - a row deleted meanwhile fails the batch: go one by one
                    for r in chunk:
                        try:
                            await self._table.delete_entity(pk, r["RowKey"])
                            count += 1
                        except ResourceNotFoundError:
                            pass
        return count

    async def erase_address(self, address: str) -> int:
        """Scrub what the ledger holds about one email address (sender or reply address): sender,
        subject, reply name and address, title and Message-ID go; status, steps, ticket ids stay,
        so the mail is still never processed twice. Returns how many rows were scrubbed."""
        wanted = address.strip().lower()
        if not wanted:
            return 0
        flt = "PartitionKey ge 'm-' and PartitionKey lt 'm.' and ( sender eq @a or reply_address eq @a )"
        scrubbed = 0
        try:
            found = [self._from_entity(e) async for e in self._table.query_entities(flt, parameters={"a": wanted})]
        except STORAGE_ERRORS as exc:
            raise_storage(exc, "ledger erase")
        for entry in found:
            for attempt in range(5):
                scrub(entry, self._clock.now())
                try:
                    await self.save(entry)
                    scrubbed += 1
                    break
                except LeaseHeld:
                    fresh = await self.get(entry.mailbox_id, entry.message_id)
                    if fresh is None:
                        break
                    entry = fresh
                    await asyncio.sleep(0.05 * (attempt + 1))
            else:
                raise TransientError("a ledger row kept changing during the erase; run it again")
        # index rows whose mail row is already gone (purged) still carry the summary
        for status in INDEXED:
            try:
                async for ent in self._table.query_entities(
                        "PartitionKey eq @pk and sender eq @a", parameters={"pk": f"s-{status}", "a": wanted}):
                    await self._table.delete_entity(ent["PartitionKey"], ent["RowKey"])
                    scrubbed += 1
            except ResourceNotFoundError:
                pass
            except STORAGE_ERRORS as exc:
                raise_storage(exc, "ledger erase")
        return scrubbed


ERASED_DATA = ("reply_address", "reply_name", "title", "internet_message_id")


def scrub(entry: LedgerEntry, now: datetime) -> None:
    """Remove personal data from a row in place (see TableLedger.erase_address)."""
    entry.sender = ""
    entry.subject = ""
    for key in ERASED_DATA:
        entry.data.pop(key, None)
    entry.data["erased_at"] = now.isoformat()
    entry.trace.append({"at": now.isoformat(), "event": "erased"})
