"""The `subscriptions` table: one row per mailbox (its Graph subscription) plus a lookup row per
subscription id, so the lifecycle webhook finds the mailbox of a subscription with a point read."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from ..services.mailboxes import SubscriptionRecord
from .errors import raise_storage
from .keys import exact_hash, key_hash
from .storage_clients import StorageAccount


class TableSubscriptionStore:
    def __init__(self, account: StorageAccount, table: str = "subscriptions") -> None:
        self._account = account
        self.table_name = table

    @property
    def _table(self) -> Any:
        return self._account.table(self.table_name)

    @staticmethod
    def _from(ent: Any) -> SubscriptionRecord:
        exp = ent.get("expiration")
        return SubscriptionRecord(
            mailbox_id=ent["mailbox_id"], client=ent.get("client", ""), subscription_id=ent.get("subscription_id", ""),
            expiration=exp if isinstance(exp, datetime) else None, key_version=int(ent.get("key_version") or 0),
            status=ent.get("status", ""), last_error=ent.get("last_error", ""), etag=ent.metadata.get("etag", ""))

    async def get(self, mailbox_id: str) -> SubscriptionRecord | None:
        try:
            return self._from(await self._table.get_entity("mailbox", key_hash(mailbox_id)))
        except ResourceNotFoundError:
            return None
        except HttpResponseError as exc:
            raise_storage(exc, "subscription read")

    async def list(self) -> list[SubscriptionRecord]:
        try:
            return [self._from(e) async for e in
                    self._table.query_entities("PartitionKey eq 'mailbox'")]
        except HttpResponseError as exc:
            raise_storage(exc, "subscription list")

    async def save(self, rec: SubscriptionRecord, if_match: bool = False) -> SubscriptionRecord:
        ent = {"PartitionKey": "mailbox", "RowKey": key_hash(rec.mailbox_id), "mailbox_id": rec.mailbox_id,
               "client": rec.client, "subscription_id": rec.subscription_id, "expiration": rec.expiration or "",
               "key_version": rec.key_version, "status": rec.status, "last_error": rec.last_error[:1000]}
        try:
            if if_match and rec.etag:
                meta = await self._table.update_entity(ent, mode="replace", etag=rec.etag,
                                                       match_condition=MatchConditions.IfNotModified)
            else:
                meta = await self._table.upsert_entity(ent, mode="replace")
            if rec.subscription_id:
                await self._table.upsert_entity({"PartitionKey": "sub", "RowKey": exact_hash(rec.subscription_id),
                                                 "mailbox_id": rec.mailbox_id}, mode="replace")
        except HttpResponseError as exc:
            raise_storage(exc, "subscription write")
        rec.etag = meta.get("etag", "")
        return rec

    async def mailbox_of(self, subscription_id: str) -> str | None:
        try:
            ent = await self._table.get_entity("sub", exact_hash(subscription_id))
        except ResourceNotFoundError:
            return None
        except HttpResponseError as exc:
            raise_storage(exc, "subscription lookup")
        return ent["mailbox_id"]

    async def delete(self, mailbox_id: str, subscription_id: str = "") -> None:
        for pk, rk in (("mailbox", key_hash(mailbox_id)), ("sub", exact_hash(subscription_id) if subscription_id else "")):
            if not rk:
                continue
            try:
                await self._table.delete_entity(pk, rk)
            except ResourceNotFoundError:
                pass
            except HttpResponseError as exc:
                raise_storage(exc, "subscription delete")
