"""shared/adapters/table_batch.py on Azurite: the lean entity group transaction does what the SDK's
`submit_transaction` does (the same rows, typed the same, ETags that the next If-Match accepts), is
one request, and refuses as the single-entity calls do, writing nothing."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError

from shared.adapters import table_batch
from shared.adapters.storage_clients import StorageAccount
from shared.adapters.storage_ops import OpCounter

T0 = datetime(2026, 3, 1, 9, 30, 15, 250000, tzinfo=timezone.utc)


@pytest.fixture
async def tables(azurite_connection, unique):
    ops = OpCounter()
    account = StorageAccount(azurite_connection, {}, ops=ops)
    await account.ensure_tables(f"lean{unique}", f"sdk{unique}")
    yield account.table(f"lean{unique}"), account.table(f"sdk{unique}"), ops
    await account.close()


def _ops(etag: str, pk: str = "p") -> list[tuple]:
    return [
        ("create", {"PartitionKey": pk, "RowKey": "new", "text": "it's Åsa's", "when": T0, "n": 3, "yes": True,
                    "f": 1.5}),
        ("update", {"PartitionKey": pk, "RowKey": "old", "text": "replaced"},
         {"mode": "replace", "etag": etag, "match_condition": MatchConditions.IfNotModified}),
        ("upsert", {"PartitionKey": pk, "RowKey": "merged", "extra": "x"}, {"mode": "merge"}),
        ("upsert", {"PartitionKey": pk, "RowKey": "k'ey Åsa+1", "v": 1}, {"mode": "replace"}),
    ]


async def test_the_same_rows_as_the_sdks_transaction_in_one_request(tables):
    lean, sdk, ops = tables
    results = {}
    for name, table, send in (("lean", lean, table_batch.submit), ("sdk", sdk, None)):
        old = await table.create_entity({"PartitionKey": "p", "RowKey": "old", "text": "before"})
        await table.create_entity({"PartitionKey": "p", "RowKey": "merged", "kept": "yes"})
        ops.reset()
        metas = await (send(table, _ops(old["etag"])) if send else table.submit_transaction(_ops(old["etag"])))
        assert len(metas) == 4 and all(m.get("etag") for m in metas), metas
        if name == "lean":
            assert ops.snapshot() == {"table - batch": 1}
        rows = {e["RowKey"]: dict(e) async for e in table.list_entities()}
        results[name] = rows
        # the ETag answered is the row's: an If-Match write with it succeeds
        await table.update_entity({"PartitionKey": "p", "RowKey": "old", "text": "again"}, mode="replace",
                                  etag=metas[1]["etag"], match_condition=MatchConditions.IfNotModified)
    assert results["lean"] == results["sdk"]
    assert results["lean"]["new"]["when"] == T0 and results["lean"]["merged"] == {
        "PartitionKey": "p", "RowKey": "merged", "kept": "yes", "extra": "x"}


async def test_a_refused_transaction_writes_nothing_and_raises_like_a_single_call(tables):
    lean, _, _ = tables
    first = await lean.create_entity({"PartitionKey": "p", "RowKey": "taken"})
    with pytest.raises(ResourceExistsError):
        await table_batch.submit(lean, [("create", {"PartitionKey": "p", "RowKey": "fresh"}),
                                        ("create", {"PartitionKey": "p", "RowKey": "taken"})])
    with pytest.raises(ResourceModifiedError):
        await table_batch.submit(lean, [("create", {"PartitionKey": "p", "RowKey": "fresh"}),
                                        ("update", {"PartitionKey": "p", "RowKey": "taken", "x": 1},
                                         {"mode": "replace", "etag": 'W/"datetime\'2001-01-01T00%3A00%3A00Z\'"',
                                          "match_condition": MatchConditions.IfNotModified})])
    with pytest.raises(ResourceNotFoundError):
        await table_batch.submit(lean, [("delete", {"PartitionKey": "p", "RowKey": "absent"},
                                         {"etag": first["etag"], "match_condition": MatchConditions.IfNotModified})])
    assert [e["RowKey"] async for e in lean.list_entities()] == ["taken"]
    await table_batch.submit(lean, [("delete", {"PartitionKey": "p", "RowKey": "taken"},
                                     {"etag": first["etag"], "match_condition": MatchConditions.IfNotModified})])
    assert [e async for e in lean.list_entities()] == []
