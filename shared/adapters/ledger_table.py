"""The `ledger` table: one row per mailbox and mail, recording each finished pipeline step.

Row: PartitionKey "m-<hash(mailbox)>", RowKey "<hash(message id)>".  Failed and Skipped rows are
mirrored into index partitions "s-failed" / "s-skipped" (RowKey "<mailbox hash>-<message hash>")
holding the summary the manage API lists, so a list is one partition query, never a table scan.
Writes are ETag-guarded: two workers cannot both believe they hold the lease.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError

from ..domain.errors import LeaseHeld
from ..domain.model import FAILED, FINISHED, PROCESSING, SKIPPED, LedgerEntry
from ..ports import Clock
from .errors import raise_storage
from .keys import exact_hash, key_hash
from .storage_clients import StorageAccount

INDEXED = (FAILED, SKIPPED)
MAX_TRACE = 60


def _pk(mailbox_id: str) -> str:
    return "m-" + key_hash(mailbox_id, 32)


def _rk(message_id: str) -> str:
    return exact_hash(message_id)


def _index_rk(mailbox_id: str, message_id: str) -> str:
    return f"{key_hash(mailbox_id, 32)}-{exact_hash(message_id)}"


def _dt(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime.fromisoformat(str(value))


class TableLedger:
    def __init__(self, account: StorageAccount, clock: Clock, table: str = "ledger") -> None:
        self._account = account
        self._clock = clock
        self.table_name = table

    @property
    def _table(self) -> Any:
        return self._account.table(self.table_name)

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
        except HttpResponseError as exc:
            raise_storage(exc, "ledger read")
        return self._from_entity(ent)

    async def claim(self, mailbox_id: str, message_id: str, owner: str, lease_seconds: int,
                    correlation_id: str, source: str) -> LedgerEntry:
        now = self._clock.now()
        lease_until = now + timedelta(seconds=lease_seconds)
        entry = await self.get(mailbox_id, message_id)
        if entry is None:
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
            except HttpResponseError as exc:
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
        try:
            meta = await self._table.update_entity(
                self._to_entity(entry), mode="replace", etag=entry.etag,
                match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            raise LeaseHeld("ledger row changed by another worker") from None
        except HttpResponseError as exc:
            if exc.status_code == 412:
                raise LeaseHeld("ledger row changed by another worker") from None
            raise_storage(exc, "ledger write")
        entry.etag = meta.get("etag", "")
        await self._reindex(entry, was_indexed)
        return entry

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
            except HttpResponseError as exc:
                raise_storage(exc, "ledger index delete")
        if now_indexed:
            try:
                await self._table.upsert_entity({
                    "PartitionKey": f"s-{now_indexed}", "RowKey": rk, "mailbox_id": entry.mailbox_id,
                    "message_id": entry.message_id, "sender": entry.sender[:320], "subject": entry.subject[:1000],
                    "received_at": entry.received_at or "", "attempts": entry.attempts,
                    "last_error": entry.last_error[:2000], "skip_reason": entry.skip_reason[:1000],
                    "updated_at": entry.updated_at, "correlation_id": entry.correlation_id,
                }, mode="replace")
            except HttpResponseError as exc:
                raise_storage(exc, "ledger index write")

    async def list_status(self, status: str, mailbox_id: str | None = None,
                          since: datetime | None = None) -> list[LedgerEntry]:
        """Failed or Skipped rows, from their index partition (summary fields only)."""
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
        out: list[LedgerEntry] = []
        try:
            async for ent in self._table.query_entities(flt, parameters=params):
                out.append(LedgerEntry(
                    mailbox_id=ent["mailbox_id"], message_id=ent["message_id"], status=status,
                    attempts=int(ent.get("attempts") or 0), last_error=ent.get("last_error", ""),
                    skip_reason=ent.get("skip_reason", ""), sender=ent.get("sender", ""),
                    subject=ent.get("subject", ""), received_at=_dt(ent.get("received_at")),
                    updated_at=_dt(ent.get("updated_at")), correlation_id=ent.get("correlation_id", "")))
        except HttpResponseError as exc:
            raise_storage(exc, "ledger list")
        return out
