"""The per-mail path's view of the mailbox registry (CachedMailboxReader) on a real Azurite: rows
are reused for READ_CACHE_SECONDS, a change made in this worker is seen at once, one made by another
instance once the rows are older than that, and callers get copies."""
from __future__ import annotations

import asyncio

import pytest

from shared.adapters.mailboxes_table import CachedMailboxReader, TableMailboxRegistry
from shared.adapters.storage_clients import StorageAccount
from shared.domain.model import Mailbox

TENANT = "00000000-0000-0000-0000-0000000000aa"


class CountingRegistry:
    """A second instance's registry would not bump this worker's generation: reads counted."""

    def __init__(self, inner: TableMailboxRegistry) -> None:
        self.inner, self.gets, self.lists = inner, 0, 0

    async def get(self, mailbox_id: str) -> Mailbox | None:
        self.gets += 1
        return await self.inner.get(mailbox_id)

    async def list(self) -> list[Mailbox]:
        self.lists += 1
        return await self.inner.list()


class Ticking:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _box(i: int, **kw) -> Mailbox:
    return Mailbox(id=f"user-{i}", address=f"box{i}@contoso.example", client="main", tenant_id=TENANT,
                   user_id=f"user-{i}", **kw)


@pytest.fixture
def on_registry(azurite_connection, unique):
    """Runs `test(registry)` in one event loop with a fresh table (the Storage clients live in it)."""
    def run(test):
        async def go():
            account = StorageAccount(azurite_connection, {})
            reg = TableMailboxRegistry(account, f"mbc{unique}")
            await account.ensure_tables(reg.table_name)
            try:
                await test(reg)
            finally:
                await account.close()
        asyncio.run(go())
    return run


def test_rows_are_reused_until_they_are_older_than_the_ttl(on_registry):
    async def go(registry):
        await registry.save(_box(1))
        counting, clock = CountingRegistry(registry), Ticking()
        reader = CachedMailboxReader(counting, ttl=15, monotonic=clock)
        first = await reader.get("user-1")
        for _ in range(5):
            assert (await reader.get("user-1")).address == "box1@contoso.example"
            assert [b.id for b in await reader.list()] == ["user-1"]
        assert (counting.gets, counting.lists) == (1, 1)
        # another instance deactivates the mailbox: not seen until the row is 15 s old
        other = TableMailboxRegistry(registry._account, registry.table_name)
        changed = await other.get("user-1")
        changed.active = False
        await _save_elsewhere(other, changed)
        clock.now += 14.9
        assert (await reader.get("user-1")).active == first.active
        clock.now += 0.2
        assert (await reader.get("user-1")).active is False
        assert [b.active for b in await reader.list()] == [False]
        assert (counting.gets, counting.lists) == (2, 2)
    on_registry(go)


async def _save_elsewhere(registry: TableMailboxRegistry, box: Mailbox) -> None:
    """A write by another instance: straight to the table, without this worker's generation bump."""
    from shared.adapters import mailboxes_table
    generation = mailboxes_table._GENERATION[0]
    await registry.save(box)
    mailboxes_table._GENERATION[0] = generation


def test_a_change_made_in_this_worker_is_seen_at_once(on_registry):
    async def go(registry):
        await registry.save(_box(2))
        counting, clock = CountingRegistry(registry), Ticking()
        reader = CachedMailboxReader(counting, ttl=15, monotonic=clock)
        assert (await reader.get("user-2")).active is True
        assert len(await reader.list()) == 1
        box = await registry.get("user-2")
        box.active = False
        await registry.save(box)
        await registry.save(_box(3))
        assert (await reader.get("user-2")).active is False
        assert sorted(b.id for b in await reader.list()) == ["user-2", "user-3"]
        await registry.delete("user-3")
        assert await reader.get("user-3") is None
        assert [b.id for b in await reader.list()] == ["user-2"]
    on_registry(go)


def test_callers_get_copies_and_unknown_mailboxes_are_none(on_registry):
    async def go(registry):
        await registry.save(_box(4))
        reader = CachedMailboxReader(registry, ttl=15, monotonic=Ticking())
        got = await reader.get("user-4")
        got.address = "changed@contoso.example"
        got.autoreply.enabled = not got.autoreply.enabled
        again = await reader.get("user-4")
        assert again.address == "box4@contoso.example"
        assert again.autoreply.enabled != got.autoreply.enabled
        listed = await reader.list()
        listed[0].address = "x@y.example"
        assert (await reader.list())[0].address == "box4@contoso.example"
        assert await reader.get("nobody") is None
    on_registry(go)
