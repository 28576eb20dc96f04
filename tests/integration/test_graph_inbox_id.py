"""The Inbox folder id through the real adapter against the Graph simulator: a burst of mails of one
mailbox starting at once (a backlog at start-up) makes one `GET mailFolders/inbox`, not one per mail
(7-9 in the outside review); a failed read is not kept, and each mailbox has its own."""
from __future__ import annotations

import asyncio

import pytest

from shared.adapters.graph import GraphAdapter
from shared.domain.errors import TransientError
from shared.domain.model import Mailbox
from tests.support.graph_world import graph_adapter, new_mailbox, running_graph
from tests.support.stack import make_mime
from tools.sim.graph import GraphSim

INBOX_GET = r"/mailFolders/inbox$"


@pytest.fixture(scope="module")
def graph():
    with running_graph(latency_ms=30) as sim:  # a read that takes a while, as Graph's does: the burst overlaps it
        yield sim


async def no_sleep(seconds: float) -> None:
    return None


def adapter_for(graph: GraphSim) -> GraphAdapter:
    return graph_adapter(graph, sleep=no_sleep)


mailbox = new_mailbox


def inbox_gets(graph: GraphSim, box: Mailbox) -> int:
    return len([r for r in graph.requests.entries(path_regex=INBOX_GET) if box.user_id in r["path"].lower()])


async def test_a_burst_of_mails_of_one_mailbox_reads_its_inbox_id_once(graph):
    adapter, one, two = adapter_for(graph), mailbox(graph), mailbox(graph)
    mids = [graph.deliver(one.address, make_mime(to=one.address, subject=f"Burst {i}"), notify=False)
            for i in range(12)]

    async def processor_like(box: Mailbox, mid: str | None) -> str:
        if mid:
            await adapter.get_message(box, mid)  # as process.py: the mail, then the Inbox's id
        return await adapter.inbox_folder_id(box)
    ids = await asyncio.gather(*(processor_like(one, mid) for mid in mids),
                               *(adapter.inbox_folder_id(one) for _ in range(12)),
                               *(adapter.inbox_folder_id(two) for _ in range(12)))
    assert len(set(ids[:24])) == 1 and ids[0] and len(set(ids[24:])) == 1 and ids[0] != ids[24]
    await asyncio.sleep(0.1)  # the simulator logs a request just after answering it
    assert (inbox_gets(graph, one), inbox_gets(graph, two)) == (1, 1)
    assert await adapter.inbox_folder_id(one) == ids[0] and inbox_gets(graph, one) == 1  # then from the cache


async def test_a_failed_read_is_shared_by_its_waiters_and_not_kept(graph):
    adapter, box = adapter_for(graph), mailbox(graph)
    rule = graph.faults.add(503, path_regex=INBOX_GET, count=1, retry_after=60)  # a long wait: not in place
    results = await asyncio.gather(*(adapter.inbox_folder_id(box) for _ in range(10)), return_exceptions=True)
    assert all(isinstance(r, TransientError) for r in results) and rule.fired == 1  # one read, ten answers
    assert await adapter.inbox_folder_id(box)  # the failure was not kept: the next mail reads again
    await asyncio.sleep(0.1)
    assert inbox_gets(graph, box) == 2


async def test_a_caller_cancelled_while_waiting_does_not_cancel_the_read(graph):
    adapter, box = adapter_for(graph), mailbox(graph)
    first = asyncio.ensure_future(adapter.inbox_folder_id(box))
    second = asyncio.ensure_future(adapter.inbox_folder_id(box))
    await asyncio.sleep(0.005)
    first.cancel()
    assert await second and first.cancelled()
    await asyncio.sleep(0.1)
    assert inbox_gets(graph, box) == 1
