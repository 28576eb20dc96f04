"""The ledger extensions and the `recoverytasks` store against a real Azurite: lists read one
partition, the poison/sweep/recovery rows round-trip, retention keeps Failed rows, erase scrubs."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from shared.adapters.ledger_table import TableLedger
from shared.adapters.recovery_table import SweepStateStore, TableRecoveryStore, TimestampPurger
from shared.adapters.storage_clients import StorageAccount
from shared.domain.errors import LeaseHeld
from shared.domain.model import FAILED, PROCESSED, SKIPPED, LedgerEntry
from shared.services.privacy import PrivacyDeps, PrivacyService
from shared.services.recovery import RecoveryItem, RecoveryTask, new_task_id
from shared.services.sweep import SweepReport
from tests.fakes import FakeClock

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
async def account(azurite_connection):
    account = StorageAccount(azurite_connection, {})
    yield account
    await account.close()


@pytest.fixture
async def tables(account, unique):
    names = {k: f"{k}{unique}" for k in ("ledger", "recovery", "synclog")}
    await account.ensure_tables(*names.values())
    clock = FakeClock(T0)
    return (clock, TableLedger(account, clock, names["ledger"]), TableRecoveryStore(account, names["recovery"]),
            SweepStateStore(account, names["recovery"]), names)


async def _failed(ledger: TableLedger, box: str, mid: str, sender: str = "anna@customer.example") -> LedgerEntry:
    row = LedgerEntry(box, mid, status=FAILED, sender=sender, subject="Printer", last_error="CRM 503", attempts=5,
                      received_at=T0 - timedelta(hours=1), data={"category": "pending", "retry_at": T0.isoformat(),
                                                                   "reply_address": sender})
    return await ledger.insert(row)


async def test_index_rows_carry_the_sweep_state_and_lists_stay_in_one_mailbox(tables):
    clock, ledger, *_ = tables
    await _failed(ledger, "box-a", "m1")
    await _failed(ledger, "box-b", "m2")
    [row] = await ledger.list_status(FAILED, "box-a")
    assert row.message_id == "m1" and row.attempts == 5 and row.last_error == "CRM 503"
    assert row.data == {"category": "pending", "retry_at": T0.isoformat(), "retries": 0, "permanent": False}
    assert await ledger.count_status(FAILED, "box-a") == 1 and await ledger.count_status(FAILED) == 2
    assert await ledger.list_status(FAILED, "box-a", received_since=T0) == []
    with pytest.raises(LeaseHeld):
        await _failed(ledger, "box-a", "m1")  # insert refuses an existing row


async def test_get_many_mark_queued_and_last_processed(tables):
    clock, ledger, *_ = tables
    ids = [f"AAkALg/{i}+x=" for i in range(40)]  # Graph ids hold / + =
    assert await ledger.mark_queued("box-a", ids[0], "sweep", "c1", sender="Anna@Customer.example")
    assert not await ledger.mark_queued("box-a", ids[0], "sweep", "c2")  # first one wins
    for mid in ids[1:30]:
        await ledger.mark_queued("box-a", mid, "sweep", "c")
    found = await ledger.get_many("box-a", ids)
    assert set(found) == set(ids[:30]) and found[ids[0]].sender == "anna@customer.example"
    assert found[ids[0]].trace[0]["event"] == "queued" and found[ids[0]].status == "processing"
    claimed = await ledger.claim("box-a", ids[0], "w", 120, "c3", "sweep")
    claimed.status = PROCESSED
    clock.advance(5)
    await ledger.save(claimed)
    assert await ledger.last_processed() == {"box-a": T0 + timedelta(seconds=5)}


async def test_purge_keeps_failed_rows_and_drops_the_rest_older_than_the_cutoff(tables, account):
    clock, ledger, store, sweeps, names = tables
    await _failed(ledger, "box-a", "failed-old")
    for mid, status in (("done-old", PROCESSED), ("skip-old", SKIPPED)):
        await ledger.insert(LedgerEntry("box-a", mid, status=status, skip_reason="auto-reply"))
    old_task = RecoveryTask(id=new_task_id(T0), status="done", kind="failed", mailboxes=["box-a"], created_at=T0)
    await store.create(old_task)
    await store.put_items(old_task.id, [RecoveryItem("box-a", "done-old", "processed")])
    synclog = account.table(names["synclog"])
    await synclog.create_entity({"PartitionKey": "c", "RowKey": "1", "note": "renewed"})
    clock.advance(91 * 86400)
    await ledger.insert(LedgerEntry("box-a", "done-new", status=PROCESSED))
    new_task = RecoveryTask(id=new_task_id(clock.now()), status="done", kind="failed", mailboxes=["box-a"],
                            created_at=clock.now())
    await store.create(new_task)

    privacy = PrivacyService(PrivacyDeps(clock=clock, retention_days=90, ledger=ledger, recovery=store))
    result = await privacy.purge()  # cutoff: T0 + 1 day
    assert result == {"mail_rows": 2, "skipped_index_rows": 1, "recovery_tasks": 1, "recovery_rows": 3}
    assert (await ledger.get("box-a", "failed-old")).status == FAILED
    assert await ledger.count_status(FAILED, "box-a") == 1
    assert await ledger.get("box-a", "done-old") is None and await ledger.get("box-a", "done-new") is not None
    assert [t.id for t in await store.list("box-a")] == [new_task.id] and await store.items(old_task.id) == []
    # the sync log goes by the table service's own Timestamp
    purger = TimestampPurger(account, names["synclog"])
    assert await purger.purge(datetime.now(timezone.utc) - timedelta(days=1)) == 0
    assert await purger.purge(datetime.now(timezone.utc) + timedelta(minutes=5)) == 1
    assert await TimestampPurger(account, "nosuchtable").purge(datetime.now(timezone.utc)) == 0


async def test_erase_scrubs_sender_and_reply_address_but_keeps_the_row_state(tables):
    clock, ledger, store, *_ = tables
    await _failed(ledger, "box-a", "m1", sender="anna@customer.example")
    other = LedgerEntry("box-b", "m2", status=PROCESSED, sender="bob@else.example", subject="Re: x",
                        steps={"crm": "t"}, data={"reply_address": "anna@customer.example", "reply_name": "Anna",
                                                  "ticket_number": "1001"})
    await ledger.insert(other)
    await ledger.insert(LedgerEntry("box-b", "m3", status=PROCESSED, sender="carl@else.example", subject="Keep"))
    privacy = PrivacyService(PrivacyDeps(clock=clock, retention_days=90, ledger=ledger, recovery=store,
                                         erasers=[("autoreply_claims", object())]))
    report = await privacy.erase({"address": " Anna@Customer.example "})
    assert report["removed"] == {"ledger_rows": 2} and "anna" not in str(report)
    assert report["not_covered"] and report["not_ours"]
    a, b, c = (await ledger.get("box-a", "m1"), await ledger.get("box-b", "m2"), await ledger.get("box-b", "m3"))
    assert a.status == FAILED and a.sender == "" and a.subject == "" and "reply_address" not in a.data
    assert b.steps == {"crm": "t"} and b.data["ticket_number"] == "1001" and "reply_name" not in b.data
    assert b.sender == "" and c.sender == "carl@else.example"
    [index] = await ledger.list_status(FAILED, "box-a")
    assert index.sender == "" and index.subject == ""


async def test_recovery_tasks_list_newest_first_per_mailbox_and_guard_their_writes(tables):
    clock, ledger, store, sweeps, _ = tables
    ids = []
    for i, boxes in enumerate((["box-a"], ["box-a", "box-b"], ["box-b"])):
        clock.advance(1)
        task = RecoveryTask(id=new_task_id(clock.now()), status="queued", kind="unprocessed", mailboxes=boxes,
                            created_at=clock.now(), since=T0, ids=["x"] if i == 0 else [])
        await store.create(task)
        ids.append(task.id)
    assert [t.id for t in await store.list()] == ids[::-1]
    assert [t.id for t in await store.list("box-a")] == [ids[1], ids[0]]
    assert [t.id for t in await store.list("box-a", limit=1)] == [ids[1]]
    first = await store.get(ids[0])
    assert first.since == T0 and first.ids == ["x"]
    stale = await store.get(ids[0])
    first.status = "running"
    await store.save(first)
    with pytest.raises(LeaseHeld):
        await store.save(stale)
    await store.put_items(ids[0], [RecoveryItem("box-a", f"m{i}", "queued", correlation_id=f"c{i}")
                                   for i in range(150)])
    items = await store.items(ids[0])
    assert len(items) == 150 and {i.correlation_id for i in items} == {f"c{i}" for i in range(150)}


async def test_sweep_state_round_trips(tables):
    *_, sweeps, _ = tables
    await sweeps.save(SweepReport("box-a", T0, T0, listed=3, enqueued=2, capped=True, cursor=T0 - timedelta(hours=1),
                                  error="TransientError: Graph 503"))
    got = await sweeps.get("box-a")
    assert got.enqueued == 2 and got.capped and got.cursor == T0 - timedelta(hours=1) and "503" in got.error
    assert set(await sweeps.list()) == {"box-a"} and await sweeps.get("box-b") is None
