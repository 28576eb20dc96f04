"""The lifecycle webhook's intake on real tables (Azurite): what it reads for a body of 1,000.

Graph waits 3 s for the answer. A body of 1,000 notifications with unknown subscription ids was read
one table row after another (10.6 s in the review). Now: a clientState that cannot be ours is refused
before any read; with the URL's `mailbox=` key the HMAC is checked first, so a forged body reads
nothing; a subscription id is looked up once however often it repeats; a few are point reads run
concurrently, many are one query of the lookup partition; the same for the mailboxes. Storage
requests are counted (never timed); the answer time is bench/lifecycle.py's.
"""
from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from shared.adapters.mailboxes_table import TableMailboxRegistry
from shared.adapters.storage_clients import StorageAccount
from shared.adapters.subscriptions_table import POINT_READS_MAX, TableSubscriptionStore
from shared.config import QUEUE_LIFECYCLE
from shared.domain.clientstate import ClientStateSigner
from shared.domain.envelope import LifecycleJob, decode
from shared.domain.errors import MalformedNotification
from shared.domain.model import Mailbox
from shared.services.intake import accept_lifecycle
from shared.services.subscriptions import SubscriptionRecord
from tests.fakes import FakeQueue

TENANT = "00000000-0000-0000-0000-0000000000aa"
SIGNER = ClientStateSigner({3: b"lifecycle-intake-test-key-0123456"})
FOREIGN = ClientStateSigner({3: b"a-key-that-is-not-one-of-ours-012"})
N = 1000


class Counting:
    """Wraps a table's real TableClient: counts its point reads (and the most in flight at once)
    and its queries. Storage requests are what is counted, whatever the adapter calls them."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.reads, self.queries, self.running, self.max_running = 0, 0, 0, 0

    def __getattr__(self, name: str):
        attr = getattr(self.inner, name)
        if name == "query_entities":
            self.queries += 1
        if name != "get_entity":
            return attr

        async def counted(*args, **kwargs):
            self.reads += 1
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            try:
                await asyncio.sleep(0)  # let the others start: concurrency, not luck, decides the peak
                return await attr(*args, **kwargs)
            finally:
                self.running -= 1
        return counted


def note(subscription_id: str, client_state: str, event: str = "missed") -> dict:
    return {"subscriptionId": subscription_id, "subscriptionExpirationDateTime": "2026-12-01T00:00:00Z",
            "tenantId": TENANT, "clientState": client_state, "lifecycleEvent": event}


def body(items: list[dict]) -> bytes:
    return json.dumps({"value": items}).encode()


@pytest.fixture
def tables(azurite_connection, unique):
    """Runs `test(store, registry, subs, mailboxes, boxes)` in one event loop on fresh tables holding
    50 registered mailboxes, each with a live subscription: boxes = [(mailbox id, subscription id)];
    `subs` and `mailboxes` count the Storage requests to the two tables."""
    def run(test):
        async def go():
            account = StorageAccount(azurite_connection, {})
            store = TableSubscriptionStore(account, f"subs{unique}")
            registry = TableMailboxRegistry(account, f"mbx{unique}")
            await account.ensure_tables(store.table_name, registry.table_name)
            boxes = [(str(uuid.uuid4()), str(uuid.uuid4())) for _ in range(50)]
            for mailbox_id, subscription_id in boxes:
                await registry.save(Mailbox(id=mailbox_id, address=f"b{mailbox_id[:6]}@contoso.example",
                                            client="main", tenant_id=TENANT, user_id=mailbox_id))
                await store.save(SubscriptionRecord(mailbox_id=mailbox_id, client="main",
                                                    subscription_id=subscription_id, status="active"))
            subs = account._table_clients[store.table_name] = Counting(account.table(store.table_name))
            mailboxes = account._table_clients[registry.table_name] = Counting(account.table(registry.table_name))
            try:
                await test(store, registry, subs, mailboxes, boxes)
            finally:
                await account.close()
        asyncio.run(go())
    return run


def test_a_forged_body_of_1000_unknown_subscriptions_costs_no_read(tables):
    async def test(store, registry, subs, mailboxes, boxes):
        garbage = body([note(str(uuid.uuid4()), ["v7." + "A" * 43, "not-ours", "v3.short", ""][i % 4])
                        for i in range(N)])
        retired = body([note(str(uuid.uuid4()), ClientStateSigner({9: b"x" * 32}).sign(TENANT, boxes[0][0]))
                        for _ in range(N)])
        signed_elsewhere = body([note(str(uuid.uuid4()), FOREIGN.sign(TENANT, boxes[0][0]) if i % 2 else
                                      SIGNER.sign(TENANT, boxes[1][0])) for i in range(N)])
        queue = FakeQueue()
        for raw in (garbage, retired):  # not of our shape or of a key version we hold
            result = await accept_lifecycle(raw, queue, store, registry, SIGNER)
            assert result.rejected == N and not result.enqueued
        # of our shape (forged, or another mailbox's), but the URL names the mailbox and the HMAC is not its
        result = await accept_lifecycle(signed_elsewhere, queue, store, registry, SIGNER, mailbox_key=boxes[0][0])
        assert result.rejected == N and not result.enqueued
        assert (subs.reads, subs.queries, mailboxes.reads, mailboxes.queries, queue.sent) == (0, 0, 0, 0, [])
    tables(test)


def test_1000_unknown_subscriptions_with_a_real_client_state_cost_one_query(tables):
    async def test(store, registry, subs, mailboxes, boxes):
        state = SIGNER.sign(TENANT, boxes[0][0])  # a replayed real clientState, no `mailbox=` in the URL
        unknown = [str(uuid.uuid4()) for _ in range(N // 4)]
        items = [note(unknown[i % len(unknown)], state) for i in range(N)]  # each id four times
        queue = FakeQueue()
        result = await accept_lifecycle(body(items), queue, store, registry, SIGNER)
        assert result.rejected == len(unknown) and result.ignored == N - len(unknown) and not result.enqueued
        assert (subs.reads, subs.queries) == (0, 1), "one query of the lookup partition, not a read per id"
        assert (mailboxes.reads, mailboxes.queries, queue.sent) == (0, 0, [])
    tables(test)


def test_a_few_subscriptions_are_point_reads_once_each_and_concurrent(tables):
    async def test(store, registry, subs, mailboxes, boxes):
        state = SIGNER.sign(TENANT, boxes[0][0])
        few = [str(uuid.uuid4()) for _ in range(POINT_READS_MAX - 1)] + [boxes[0][1]]
        items = [note(few[i % len(few)], state) for i in range(N)]
        queue = FakeQueue()
        result = await accept_lifecycle(body(items), queue, store, registry, SIGNER)
        assert result.rejected == len(few) - 1 and len(result.enqueued) == 1
        assert (subs.reads, subs.queries) == (len(few), 0) and subs.max_running > 1
        assert (mailboxes.reads, mailboxes.queries) == (1, 0)
    tables(test)


def test_valid_events_are_enqueued_once_each_with_two_queries(tables):
    async def test(store, registry, subs, mailboxes, boxes):
        items = [note(s, SIGNER.sign(TENANT, m), event) for m, s in boxes
                 for event in ("missed", "reauthorizationRequired")]
        items += [note(boxes[0][1], SIGNER.sign(TENANT, boxes[0][0]))] * 10  # Graph repeating one
        items.insert(0, note(boxes[1][1], SIGNER.sign(TENANT, boxes[2][0])))  # another mailbox's clientState,
        # before the real one: it is refused and does not shadow the real event as a "repeat"
        queue = FakeQueue()
        result = await accept_lifecycle(body(items), queue, store, registry, SIGNER)
        jobs = [decode(text.encode(), LifecycleJob) for name, text, _ in queue.sent if name == QUEUE_LIFECYCLE]
        assert {(j.mailbox_id, j.subscription_id, j.lifecycle_event) for j in jobs} == {
            (m, s, e) for m, s in boxes for e in ("missed", "reauthorizationRequired")}
        assert len(jobs) == 2 * len(boxes) and result.rejected == 1
        assert (subs.reads, subs.queries, mailboxes.reads, mailboxes.queries) == (0, 1, 0, 1)
    tables(test)


def test_the_url_mailbox_must_own_the_subscription(tables):
    async def test(store, registry, subs, mailboxes, boxes):
        (box_a, sub_a), (_, sub_b) = boxes[0], boxes[1]
        queue = FakeQueue()
        # A's real event to A's URL: enqueued; B's subscription with A's clientState to A's URL: refused
        result = await accept_lifecycle(body([note(sub_a, SIGNER.sign(TENANT, box_a)),
                                              note(sub_b, SIGNER.sign(TENANT, box_a))]),
                                        queue, store, registry, SIGNER, mailbox_key=box_a)
        assert result.rejected == 1
        assert [decode(text.encode(), LifecycleJob).subscription_id for _, text, _ in queue.sent] == [sub_a]
    tables(test)


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_a_deeply_nested_body_is_malformed_and_reads_nothing(tables, depth):
    async def test(store, registry, subs, mailboxes, boxes):
        queue = FakeQueue()
        with pytest.raises(MalformedNotification):
            await accept_lifecycle(b'{"value":[' + b"[" * depth, queue, store, registry, SIGNER)
        assert (subs.reads, subs.queries, mailboxes.reads, queue.sent) == (0, 0, 0, [])
    tables(test)
