"""Create-once on Lime, which has no unique constraints: a lock per (limetype, key) and the query
for the idempotency record.

KeyLock (the protocol); LocalKeyLock (one process); TableKeyLock (an ETag-guarded row in the Azure
Table `ratelimits`, partition `limelock`, holding an expiry; a crashed holder's row is taken over
once it expired). `_KeyedCreates` (a LimeCrm mixin): `_create_once` queries the key under the lock
and POSTs only when nothing has it, resolving an ambiguous POST by querying again; `_find_key`.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
import weakref
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Protocol

from .transport import AmbiguousWrite
from ..crm_table import utc
from ..keys import exact_hash
from ...domain.errors import TransientError

log = logging.getLogger("inbox.crm.lime")


# Locks ------------------------------------------------------------------------------------------
class Held(Protocol):
    def check(self) -> None:
        """Raise TransientError when the lock is about to expire (do not start a write)."""


class KeyLock(Protocol):
    def hold(self, name: str) -> contextlib.AbstractAsyncContextManager[Held]: ...


class _LocalHeld:
    def check(self) -> None:
        return None


class _LocalLocks:
    """asyncio.Lock per name, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: "weakref.WeakValueDictionary[str, asyncio.Lock]" = weakref.WeakValueDictionary()

    def get(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[name] = lock
        return lock


class LocalKeyLock:
    """In-process only: enough for one worker (tests, a single instance); not across instances."""

    def __init__(self) -> None:
        self._locks = _LocalLocks()

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[Held]:
        async with self._locks.get(name):
            yield _LocalHeld()


@dataclass
class _TableHeld:
    etag: str
    deadline: float  # time.monotonic() when the lease runs out
    margin: float

    def check(self) -> None:
        if time.monotonic() > self.deadline - self.margin:
            raise TransientError("Lime CRM: the create lock's lease ran out before the write; try again",
                                 retry_after=1)


class TableKeyLock:
    """A lock per name across every worker and instance: an ETag-guarded row in an Azure Table.

    Acquire = insert the row (PartitionKey `limelock`, RowKey sha256(name)) with an expiry; if it
    exists and has expired (its holder crashed), take it over with an If-Match replace; else wait
    (jittered backoff) up to `wait_seconds`, then TransientError. Release = delete If-Match our
    ETag (a holder whose lease ran out cannot delete its successor's row). A holder checks
    `held.check()` before each write, so it never writes after its lease could have been taken."""

    PARTITION = "limelock"

    def __init__(self, account: Any, table: str = "ratelimits", lease_seconds: float = 60.0,
                 wait_seconds: float = 30.0) -> None:
        self._account = account
        self.table_name = table
        self.lease = lease_seconds
        self.wait = wait_seconds
        self._local = _LocalLocks()
        self._ensured = False

    @property
    def _table(self) -> Any:
        return self._account.table(self.table_name)

    async def ensure(self) -> None:
        await self._account.ensure_tables(self.table_name)
        self._ensured = True

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[Held]:
        async with self._local.get(name):
            held = await self._acquire(name)
            try:
                yield held
            finally:
                await self._release(name, held)

    async def _acquire(self, name: str) -> _TableHeld:
        from azure.core import MatchConditions
        from azure.core.exceptions import (
            HttpResponseError,
            ResourceExistsError,
            ResourceModifiedError,
            ResourceNotFoundError,
        )
        from azure.data.tables import UpdateMode

        from ..errors import raise_storage

        rk = exact_hash(name)
        give_up = time.monotonic() + self.wait
        attempt = 0
        while True:
            attempt += 1
            now = datetime.now(timezone.utc)
            started = time.monotonic()
            entity = {"PartitionKey": self.PARTITION, "RowKey": rk, "owner": uuid.uuid4().hex,
                      "expires": now + timedelta(seconds=self.lease)}
            try:
                try:
                    meta = await self._table.create_entity(entity)
                    return _TableHeld(meta["etag"], started + self.lease, min(10.0, self.lease / 3))
                except ResourceExistsError:
                    pass
                try:
                    current = await self._table.get_entity(self.PARTITION, rk)
                except ResourceNotFoundError as exc:
                    if _table_missing(exc):
                        raise
                    continue  # released in between: insert again
                expires = current.get("expires")
                if isinstance(expires, datetime) and utc(expires) <= now:
                    try:
                        meta = await self._table.update_entity(
                            entity, mode=UpdateMode.REPLACE, etag=current.metadata["etag"],
                            match_condition=MatchConditions.IfNotModified)
                        log.info("lime.lock-taken-over lock=%s", rk[:12])
                        return _TableHeld(meta["etag"], started + self.lease, min(10.0, self.lease / 3))
                    except (ResourceModifiedError, ResourceNotFoundError):
                        pass
                    except HttpResponseError as exc:
                        if exc.status_code not in (409, 412):
                            raise
            except ResourceNotFoundError as exc:
                if _table_missing(exc) and not self._ensured:
                    await self.ensure()
                    continue
                raise_storage(exc, "Lime create lock")
            except HttpResponseError as exc:
                raise_storage(exc, "Lime create lock")
            except Exception as exc:  # azure-core transport errors
                from azure.core.exceptions import ServiceRequestError, ServiceResponseError
                if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
                    raise_storage(exc, "Lime create lock")
                raise
            if time.monotonic() > give_up:
                raise TransientError("Lime CRM: another worker holds the create lock for this object; try again",
                                     retry_after=min(self.lease, 5.0))
            await asyncio.sleep(random.uniform(0.005, min(0.02 * attempt, 0.25)))

    async def _release(self, name: str, held: _TableHeld) -> None:
        from azure.core import MatchConditions
        try:
            await self._table.delete_entity(self.PARTITION, exact_hash(name), etag=held.etag,
                                            match_condition=MatchConditions.IfNotModified)
        except Exception as exc:  # noqa: BLE001 - the lease expires anyway; never mask the real outcome
            if type(exc).__name__ not in ("ResourceNotFoundError", "ResourceModifiedError"):
                log.warning("lime.lock-release-failed lock=%s error=%s", exact_hash(name)[:12], type(exc).__name__)


def _table_missing(exc: BaseException) -> bool:
    return "TableNotFound" in f"{getattr(exc, 'error_code', '') or ''} {exc}"


class _KeyedCreates:
    """Creating a Lime object once per idempotency key, under a KeyLock."""

    # creating under a lock -------------------------------------------------------------------------
    async def _create_once(self, limetype: str, body: dict[str, Any], lock_name: str | None,
                           find: Callable[[], Awaitable[dict[str, Any] | None]] | None) -> tuple[dict[str, Any], bool]:
        """(object, created). With `find` (the key query) under the lock `lock_name`: what `find`
        returns, else a POST; an ambiguous POST is resolved by `find` again. Without `find`: one POST."""
        if find is None or lock_name is None:
            try:
                return await self._json("POST", f"limeobject/{limetype}/", json=body, write=True), True
            except AmbiguousWrite as exc:
                raise TransientError(f"{exc} (without the key property {limetype}.{self.names.key_property or '-'} "
                                     "a retry may create it twice)", retry_after=exc.retry_after) from None
        async with self._locks.hold(lock_name) as held:
            last: AmbiguousWrite | None = None
            for attempt in range(3):
                found = await find()
                if found is not None:
                    return found, False
                held.check()
                try:
                    return await self._json("POST", f"limeobject/{limetype}/", json=body, write=True), True
                except AmbiguousWrite as exc:
                    last = exc
                    log.info("lime.ambiguous-create limetype=%s attempt=%s error=%s", limetype, attempt + 1, exc)
                    wait = exc.retry_after if exc.retry_after is not None else self._backoff * (attempt + 1)
                    if wait > self._max_wait:
                        break
                    await self._sleep(wait)
            assert last is not None
            raise TransientError(str(last), retry_after=last.retry_after)

    async def _find_key(self, limetype: str, kv: str,
                        fields: Iterable[str] | Mapping[str, Any]) -> dict[str, Any] | None:
        rows = await self._query(limetype, fields, {"key": self.names.key_property, "op": "=", "exp": kv})
        return rows[0] if rows else None
