"""Which Graph answers are worth another try: the real adapter (msgraph-sdk) against the simulator's
fault injection. A 501 and the other answers retrying cannot change are permanent at once (one
request, GraphRefused naming the status), never "unavailable, try again"; 5xx, 408, 423, 429 and a
dropped connection are transient (retried in place when short, then TransientError)."""
from __future__ import annotations

import pytest

from shared.adapters.graph import GraphRefused
from shared.domain.errors import PermanentError, TransientError
from tests.support.graph_world import graph_adapter, new_mailbox, running_graph
from tests.support.stack import make_mime


@pytest.fixture(scope="module")
def graph():
    with running_graph() as sim:
        yield sim


@pytest.fixture
async def world(graph):
    slept: list[float] = []

    async def sleep(seconds: float) -> None:  # the adapter's short in-place waits, recorded, not slept
        slept.append(seconds)
    adapter, box = graph_adapter(graph, sleep=sleep), new_mailbox(graph)
    address = box.address
    message_id = graph.deliver(address, make_mime(to=address), notify=False)
    await adapter.get_message(box, message_id)  # a token, and the client warmed up
    graph.faults.clear()
    yield graph, adapter, box, message_id, slept
    graph.faults.clear()


@pytest.mark.parametrize("status", [501, 505, 400, 409])
async def test_an_answer_retrying_cannot_change_is_permanent_at_once(world, status):
    graph, adapter, box, message_id, slept = world
    rule = graph.faults.add(status, path_regex=r"/messages/", count=-1)
    before = adapter.stats["requests"]
    with pytest.raises(GraphRefused) as err:
        await adapter.get_message(box, message_id)
    assert isinstance(err.value, PermanentError) and not isinstance(err.value, TransientError)
    assert err.value.status == status and f"Graph {status} (" in str(err.value)
    assert "retrying cannot change" in str(err.value)
    assert adapter.stats["requests"] - before == 1 and rule.fired == 1 and slept == []


@pytest.mark.parametrize("status", [500, 502, 503, 504, 507, 509, 408, 423, 429])
async def test_an_answer_that_may_change_is_transient_and_retried_in_place(world, status):
    graph, adapter, box, message_id, slept = world
    rule = graph.faults.add(status, path_regex=r"/messages/", count=-1, retry_after=1)
    with pytest.raises(TransientError, match=f"Graph {status}"):
        await adapter.get_message(box, message_id)
    assert rule.fired == 4 and len(slept) >= 3  # the first try and three short waits (429: and pacing)


async def test_a_dropped_connection_is_transient(world):
    graph, adapter, box, message_id, slept = world
    graph.faults.add(None, path_regex=r"/messages/", count=-1, drop_connection=True)
    with pytest.raises(TransientError, match="could not be reached"):
        await adapter.get_message(box, message_id)
