"""The `subscriptions` table: one row per mailbox (its Graph subscription, and the lease that
serialises every change to it) plus a lookup row per subscription id, so the lifecycle webhook
finds the mailbox of a subscription with a point read.

Partition `mailbox`, RowKey = hash of the mailbox id: the record.  Partition `sub`, RowKey = hash of
the subscription id: {mailbox_id}.  The lease is two columns on the record (`lease_owner`,
`lease_until`), taken with an insert (no row yet) or an ETag-guarded replace (lease free or run
out), so two concurrent syncs can never both create a subscription for one mailbox.
"""
from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, Iterable

from azure.core import MatchConditions
from azure.core.exceptions import (
    ResourceExistsError, ResourceModifiedError, ResourceNotFoundError,
)

from ..services.subscriptions import LeaseLost, SubscriptionRecord
from .errors import STORAGE_ERRORS, raise_storage
from .keys import exact_hash, key_hash
from .storage_clients import StorageAccount, TableStore

MAILBOX = "mailbox"
SUB = "sub"
# mailboxes_of: up to this many distinct ids are point reads; more, one query of the `sub` partition
POINT_READS_MAX = 8


def _dt(value: Any) -> datetime | None:
    return value if isinstance(value, datetime) else None


class TableSubscriptionStore(TableStore):
    def __init__(self, account: StorageAccount, table: str = "subscriptions") -> None:
        self._account = account
        self.table_name = table

    @staticmethod
    def _from(ent: Any) -> SubscriptionRecord:
        return SubscriptionRecord(
            mailbox_id=ent["mailbox_id"], client=ent.get("client", ""), subscription_id=ent.get("subscription_id", ""),
            expiration=_dt(ent.get("expiration")), key_version=int(ent.get("key_version") or 0),
            status=ent.get("status", ""), last_error=ent.get("last_error", ""), target=ent.get("target", ""),
            checked_at=_dt(ent.get("checked_at")), lease_owner=ent.get("lease_owner", ""),
            lease_until=_dt(ent.get("lease_until")), etag=ent.metadata.get("etag", ""))

    @staticmethod
    def _entity(rec: SubscriptionRecord) -> dict[str, Any]:
        return {"PartitionKey": MAILBOX, "RowKey": key_hash(rec.mailbox_id), "mailbox_id": rec.mailbox_id,
                "client": rec.client, "subscription_id": rec.subscription_id, "expiration": rec.expiration or "",
                "key_version": rec.key_version, "status": rec.status, "last_error": rec.last_error[:1000],
                "target": rec.target, "checked_at": rec.checked_at or "", "lease_owner": rec.lease_owner,
                "lease_until": rec.lease_until or ""}

    async def get(self, mailbox_id: str) -> SubscriptionRecord | None:
        try:
            return self._from(await self._table.get_entity(MAILBOX, key_hash(mailbox_id)))
        except ResourceNotFoundError:
            return None
        except STORAGE_ERRORS as exc:
            raise_storage(exc, "subscription read")

    async def list(self) -> list[SubscriptionRecord]:
        try:
            return [self._from(e) async for e in
                    self._table.query_entities("PartitionKey eq @pk", parameters={"pk": MAILBOX})]
        except STORAGE_ERRORS as exc:
            raise_storage(exc, "subscription list")

    async def acquire(self, mailbox_id: str, owner: str, now: datetime, until: datetime) -> SubscriptionRecord | None:
        """Take the mailbox's lease; None when another owner holds a lease that has not run out."""
        rec = await self.get(mailbox_id)
        try:
            if rec is None:
                rec = SubscriptionRecord(mailbox_id=mailbox_id, client="", lease_owner=owner, lease_until=until)
                meta = await self._table.create_entity(self._entity(rec))
            else:
                if rec.lease_owner and rec.lease_owner != owner and rec.lease_until and rec.lease_until > now:
                    return None
                rec.lease_owner, rec.lease_until = owner, until
                meta = await self._table.update_entity(self._entity(rec), mode="replace", etag=rec.etag,
                                                       match_condition=MatchConditions.IfNotModified)
        except (ResourceExistsError, ResourceModifiedError):
            return None  # someone else got there first
        except STORAGE_ERRORS as exc:
            if getattr(exc, "status_code", None) in (409, 412):
                return None
            raise_storage(exc, "subscription lease")
        rec.etag = meta.get("etag", "")
        return rec

    async def save(self, rec: SubscriptionRecord, if_match: bool = False) -> SubscriptionRecord:
        try:
            if if_match and rec.etag:
                meta = await self._table.update_entity(self._entity(rec), mode="replace", etag=rec.etag,
                                                       match_condition=MatchConditions.IfNotModified)
            else:
                meta = await self._table.upsert_entity(self._entity(rec), mode="replace")
        except ResourceModifiedError:
            raise LeaseLost(f"subscription row of mailbox {rec.mailbox_id} changed since it was read") from None
        except STORAGE_ERRORS as exc:
            if getattr(exc, "status_code", None) == 412:
                raise LeaseLost(f"subscription row of mailbox {rec.mailbox_id} changed since it was read") from None
            raise_storage(exc, "subscription write")
        rec.etag = meta.get("etag", "")
        if rec.subscription_id:
            try:
                await self._table.upsert_entity({"PartitionKey": SUB, "RowKey": exact_hash(rec.subscription_id),
                                                 "mailbox_id": rec.mailbox_id}, mode="replace")
            except STORAGE_ERRORS as exc:
                raise_storage(exc, "subscription lookup write")
        return rec

    async def release(self, rec: SubscriptionRecord) -> None:
        rec.lease_owner, rec.lease_until = "", None
        await self.save(rec, if_match=True)

    async def mailbox_of(self, subscription_id: str) -> str | None:
        try:
            ent = await self._table.get_entity(SUB, exact_hash(subscription_id))
        except ResourceNotFoundError:
            return None
        except STORAGE_ERRORS as exc:
            raise_storage(exc, "subscription lookup")
        return ent["mailbox_id"]

    async def mailboxes_of(self, subscription_ids: Iterable[str]) -> dict[str, str | None]:
        """The mailbox of each subscription id (None: not ours), for a lifecycle POST of many. A few
        ids are point reads, concurrently; more are one query of the `sub` partition (one row per
        subscription we know: a page or a few, whatever the POST holds), matched by hash."""
        wanted = list(dict.fromkeys(subscription_ids))
        if len(wanted) <= POINT_READS_MAX:
            found = await asyncio.gather(*(self.mailbox_of(s) for s in wanted))
            return dict(zip(wanted, found))
        by_hash = {exact_hash(s): s for s in wanted}
        out: dict[str, str | None] = dict.fromkeys(wanted)
        try:
            async for ent in self._table.query_entities("PartitionKey eq @pk", parameters={"pk": SUB},
                                                        select=["RowKey", "mailbox_id"]):
                subscription_id = by_hash.get(ent["RowKey"])
                if subscription_id is not None:
                    out[subscription_id] = ent.get("mailbox_id") or None
        except STORAGE_ERRORS as exc:
            raise_storage(exc, "subscription lookups")
        return out

    async def forget(self, subscription_id: str) -> None:
        await self._delete(SUB, exact_hash(subscription_id))

    async def delete(self, mailbox_id: str, subscription_id: str = "") -> None:
        await self._delete(MAILBOX, key_hash(mailbox_id))
        if subscription_id:
            await self.forget(subscription_id)

    async def _delete(self, pk: str, rk: str) -> None:
        try:
            await self._table.delete_entity(pk, rk)
        except ResourceNotFoundError:
            pass
        except STORAGE_ERRORS as exc:
            raise_storage(exc, "subscription delete")
