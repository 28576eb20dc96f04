"""The `recoverytasks` table: recovery tasks, their per-mail outcomes, and the sweep's state.

Partitions:
- "task": one row per task, RowKey = the task id, which starts with an inverted time, so a
  partition query returns the newest first;
- "mbx-<hash(mailbox)>": one small row per task touching that mailbox (same RowKey), so "the last
  tasks of a mailbox" is one partition query;
- "t-<task id>": one row per mail of the task (RowKey = hash of mailbox and message id), with
  its outcome;
- "sweep": one row per mailbox, the last sweep run (counts, error, the cursor of a run stopped by
  its scan bound).
Task rows are ETag-guarded; item rows are written in transactions of up to 100.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Iterable

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError

from ..domain.errors import LeaseHeld
from ..services.recovery import RecoveryItem, RecoveryTask
from ..services.sweep import SweepReport
from .errors import raise_storage
from .keys import EPOCH as _EPOCH, exact_hash, key_hash, table_time
from .storage_clients import StorageAccount, TableStore

TASKS = "task"
SWEEP = "sweep"


_dt = table_time


def _mbx(mailbox_id: str) -> str:
    return "mbx-" + key_hash(mailbox_id, 32)


def _item_rk(mailbox_id: str, message_id: str) -> str:
    return exact_hash(f"{mailbox_id}|{message_id}")


class TableRecoveryStore(TableStore):
    def __init__(self, account: StorageAccount, table: str = "recoverytasks") -> None:
        self._account = account
        self.table_name = table

    # tasks ------------------------------------------------------------------------------------
    @staticmethod
    def _task_entity(t: RecoveryTask) -> dict[str, Any]:
        return {
            "PartitionKey": TASKS, "RowKey": t.id, "status": t.status, "kind": t.kind,
            "mailboxes": json.dumps(t.mailboxes), "since": t.since or "", "ids": json.dumps(t.ids),
            "created_at": t.created_at, "updated_at": t.updated_at or t.created_at,
            "finished_at": t.finished_at or _EPOCH, "enumerated": json.dumps(t.enumerated),
            "counts": json.dumps(t.counts), "capped": t.capped, "error": t.error[:2000],
            "correlation_id": t.correlation_id,
        }

    @staticmethod
    def _task(ent: Any) -> RecoveryTask:
        return RecoveryTask(
            id=ent["RowKey"], status=ent.get("status", ""), kind=ent.get("kind", ""),
            mailboxes=json.loads(ent.get("mailboxes") or "[]"), since=_dt(ent.get("since")),
            ids=json.loads(ent.get("ids") or "[]"), created_at=_dt(ent.get("created_at")) or _EPOCH,
            updated_at=_dt(ent.get("updated_at")), finished_at=_dt(ent.get("finished_at")),
            enumerated=json.loads(ent.get("enumerated") or "[]"), counts=json.loads(ent.get("counts") or "{}"),
            capped=bool(ent.get("capped")), error=ent.get("error", ""),
            correlation_id=ent.get("correlation_id", ""), etag=ent.metadata.get("etag", ""))

    async def create(self, task: RecoveryTask) -> RecoveryTask:
        try:
            meta = await self._table.create_entity(self._task_entity(task))
            for mailbox_id in task.mailboxes:
                await self._table.upsert_entity({"PartitionKey": _mbx(mailbox_id), "RowKey": task.id,
                                                 "mailbox_id": mailbox_id, "created_at": task.created_at})
        except ResourceExistsError:
            raise LeaseHeld("a task with this id exists") from None
        except HttpResponseError as exc:
            raise_storage(exc, "recovery task create")
        task.etag = meta.get("etag", "")
        return task

    async def get(self, task_id: str) -> RecoveryTask | None:
        try:
            return self._task(await self._table.get_entity(TASKS, task_id))
        except ResourceNotFoundError:
            return None
        except HttpResponseError as exc:
            raise_storage(exc, "recovery task read")

    async def save(self, task: RecoveryTask) -> RecoveryTask:
        """ETag-guarded; LeaseHeld when someone else wrote in between."""
        try:
            meta = await self._table.update_entity(self._task_entity(task), mode="replace", etag=task.etag,
                                                   match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            raise LeaseHeld("recovery task changed meanwhile") from None
        except HttpResponseError as exc:
            if exc.status_code == 412:
                raise LeaseHeld("recovery task changed meanwhile") from None
            raise_storage(exc, "recovery task write")
        task.etag = meta.get("etag", "")
        return task

    async def list(self, mailbox_id: str | None = None, limit: int = 10) -> list[RecoveryTask]:
        """Newest first; of one mailbox when given."""
        out: list[RecoveryTask] = []
        try:
            if mailbox_id is None:
                async for ent in self._table.query_entities("PartitionKey eq @pk", parameters={"pk": TASKS},
                                                            results_per_page=limit):
                    out.append(self._task(ent))
                    if len(out) >= limit:
                        break
                return out
            ids: list[str] = []
            async for ent in self._table.query_entities("PartitionKey eq @pk", parameters={"pk": _mbx(mailbox_id)},
                                                        select=["RowKey"], results_per_page=limit):
                ids.append(ent["RowKey"])
                if len(ids) >= limit:
                    break
        except HttpResponseError as exc:
            raise_storage(exc, "recovery task list")
        for task_id in ids:
            task = await self.get(task_id)
            if task is not None:
                out.append(task)
        return out

    async def older_than(self, cutoff: datetime, limit: int = 1000) -> list[RecoveryTask]:
        out: list[RecoveryTask] = []
        try:
            async for ent in self._table.query_entities("PartitionKey eq @pk and created_at lt @cutoff",
                                                        parameters={"pk": TASKS, "cutoff": cutoff}):
                out.append(self._task(ent))
                if len(out) >= limit:
                    break
        except HttpResponseError as exc:
            raise_storage(exc, "recovery task list")
        return out

    async def delete(self, task: RecoveryTask) -> int:
        """The task, its items and its mailbox index rows. Returns how many rows went."""
        rows = [(f"t-{task.id}", ent["RowKey"]) for ent in await self._raw_items(task.id)]
        rows += [(_mbx(m), task.id) for m in task.mailboxes] + [(TASKS, task.id)]
        count = 0
        for pk, rk in rows:
            try:
                await self._table.delete_entity(pk, rk)
                count += 1
            except ResourceNotFoundError:
                pass
            except HttpResponseError as exc:
                raise_storage(exc, "recovery task delete")
        return count

    # items ------------------------------------------------------------------------------------
    @staticmethod
    def _item_entity(task_id: str, i: RecoveryItem) -> dict[str, Any]:
        return {"PartitionKey": f"t-{task_id}", "RowKey": _item_rk(i.mailbox_id, i.message_id),
                "mailbox_id": i.mailbox_id, "message_id": i.message_id, "outcome": i.outcome,
                "detail": i.detail[:1000], "queued_at": i.queued_at or _EPOCH, "updated_at": i.updated_at or _EPOCH,
                "received_at": i.received_at or _EPOCH, "correlation_id": i.correlation_id}

    async def put_items(self, task_id: str, items: Iterable[RecoveryItem]) -> None:
        ops = [("upsert", self._item_entity(task_id, i), {"mode": "replace"}) for i in items]
        for start in range(0, len(ops), 100):
            try:
                await self._table.submit_transaction(ops[start:start + 100])
            except HttpResponseError as exc:
                raise_storage(exc, "recovery items write")

    async def _raw_items(self, task_id: str) -> list[Any]:
        try:
            return [e async for e in self._table.query_entities("PartitionKey eq @pk",
                                                                parameters={"pk": f"t-{task_id}"})]
        except HttpResponseError as exc:
            raise_storage(exc, "recovery items read")

    async def items(self, task_id: str) -> list[RecoveryItem]:
        return [RecoveryItem(mailbox_id=e["mailbox_id"], message_id=e["message_id"], outcome=e.get("outcome", ""),
                             detail=e.get("detail", ""), queued_at=_dt(e.get("queued_at")),
                             updated_at=_dt(e.get("updated_at")), received_at=_dt(e.get("received_at")),
                             correlation_id=e.get("correlation_id", ""))
                for e in await self._raw_items(task_id)]


class SweepStateStore(TableStore):
    """The last sweep run of each mailbox (partition "sweep" of `recoverytasks`)."""

    def __init__(self, account: StorageAccount, table: str = "recoverytasks") -> None:
        self._account = account
        self.table_name = table

    @staticmethod
    def _report(ent: Any) -> SweepReport:
        return SweepReport(
            mailbox_id=ent["mailbox_id"], started_at=_dt(ent.get("started_at")) or _EPOCH,
            finished_at=_dt(ent.get("finished_at")), listed=int(ent.get("listed") or 0),
            enqueued=int(ent.get("enqueued") or 0), retried=int(ent.get("retried") or 0),
            categories_applied=int(ent.get("categories_applied") or 0),
            categories_pending=int(ent.get("categories_pending") or 0), in_flight=int(ent.get("in_flight") or 0),
            capped=bool(ent.get("capped")), cursor=_dt(ent.get("cursor")), note=ent.get("note", ""),
            error=ent.get("error", ""))

    async def get(self, mailbox_id: str) -> SweepReport | None:
        try:
            return self._report(await self._table.get_entity(SWEEP, key_hash(mailbox_id)))
        except ResourceNotFoundError:
            return None
        except HttpResponseError as exc:
            raise_storage(exc, "sweep state read")

    async def save(self, r: SweepReport) -> None:
        try:
            await self._table.upsert_entity({
                "PartitionKey": SWEEP, "RowKey": key_hash(r.mailbox_id), "mailbox_id": r.mailbox_id,
                "started_at": r.started_at, "finished_at": r.finished_at or _EPOCH, "listed": r.listed,
                "enqueued": r.enqueued, "retried": r.retried, "categories_applied": r.categories_applied,
                "categories_pending": r.categories_pending, "in_flight": r.in_flight, "capped": r.capped,
                "cursor": r.cursor or _EPOCH, "note": r.note[:500], "error": r.error[:1000]}, mode="replace")
        except HttpResponseError as exc:
            raise_storage(exc, "sweep state write")

    async def list(self) -> dict[str, SweepReport]:
        try:
            return {e["mailbox_id"]: self._report(e) async for e in
                    self._table.query_entities("PartitionKey eq @pk", parameters={"pk": SWEEP})}
        except HttpResponseError as exc:
            raise_storage(exc, "sweep state list")


class TimestampPurger:
    """Deletes the rows of a whole table last modified before a cutoff (the sync log, whose rows
    this feature does not own, so it goes by the service's own Timestamp). A daily maintenance
    query, not a list path; a missing table is an empty one."""

    def __init__(self, account: StorageAccount, table: str) -> None:
        self._account = account
        self.table_name = table

    async def purge(self, cutoff: datetime, max_rows: int = 100_000) -> int:
        table = self._account.table(self.table_name)
        count = 0
        try:
            async for ent in table.query_entities("Timestamp lt @cutoff", parameters={"cutoff": cutoff},
                                                  select=["PartitionKey", "RowKey"]):
                try:
                    await table.delete_entity(ent["PartitionKey"], ent["RowKey"])
                    count += 1
                except ResourceNotFoundError:
                    pass
                if count >= max_rows:
                    break
        except ResourceNotFoundError:
            return count
        except HttpResponseError as exc:
            if exc.status_code == 404:
                return count
            raise_storage(exc, f"{self.table_name} purge")
        return count
