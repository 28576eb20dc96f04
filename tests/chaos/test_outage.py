"""Transient means wait, not fail: Lime CRM, TRAML and Storage each down for 30 minutes of the app's
clock, and not one mail or autoreply Failed (issue 15, item 11).

The whole app in the dev host against Azurite and the simulators (tests/chaos/world.py), the app's
clock the Graph simulator's. TRAML refuses every send (503) while a first batch of mail becomes
tickets, so their autoreplies wait; then Lime CRM refuses everything too (503, then dropped
connections) while a second batch arrives, and the clock moves through 30 minutes in one-minute
steps, a minute of real time in all, longer than host.json's whole retry budget (5 deliveries 10 s
apart), which used to make all of them Failed. Then Storage itself (Azurite) stops while a third
batch arrives and 30 more minutes pass. After each outage everything must be done exactly once:
every mail one history note on its own ticket and out of the Inbox, every ticket one autoreply,
nothing Failed, nothing uncertain; and while they waited, the status page counted them as retrying.
"""
from __future__ import annotations

import time
from collections import Counter

import pytest

from shared.adapters.keys import exact_hash
from shared.domain.model import FAILED
from tests.chaos.world import World
from tests.fixtures.mail import mime as m

BOXES = ["help@outage.example", "orders@outage.example"]
STEP = 60  # seconds of the app's clock per step
OUTAGE_STEPS = 30  # 30 minutes
REAL_SECONDS_PER_STEP = 2.0  # 30 steps: a minute of real time, longer than the queue's retry budget


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("outage"), seed=15)
    try:
        yield w.start(BOXES)
    finally:
        w.stop()


def deliver(world: World, batch: str, count: int) -> list:
    out = []
    for i in range(count):
        box = BOXES[i % len(BOXES)]
        raw = m.outlook(f"Customer {batch}{i} <{batch}{i}@outage-customer.example>", box, f"Outage {batch} {i}",
                        "Nothing works since this morning.", message_id=m.outlook_id(f"outage/{batch}/{i}"))
        out.append(world.deliver(box, raw, f"{batch}-{i}", batch))
    return out


def status(world: World) -> dict:
    resp = world.http.get("/api/manage/status")
    assert resp.status_code == 200, resp.text
    return resp.json()["summary"]


def failed_rows(world: World) -> list:
    return [r for r in world.rows().values() if r is not None and r.status == FAILED]


def pass_outage(world: World, steps: int = OUTAGE_STEPS, real: float = REAL_SECONDS_PER_STEP) -> list[dict]:
    """Move the app's clock through the outage a minute at a time; the status summary at each step."""
    seen = []
    for _ in range(steps):
        time.sleep(real)
        world.graph.advance_clock(STEP)
        if world.azurite.process is None:
            continue  # Storage is what is down: nothing to read
        seen.append(status(world))
        assert not failed_rows(world), "a mail was Failed during an outage"
    return seen


def settle(world: World, what: str) -> None:
    """The dependencies are back: move the clock past every pending try until all mail is finished
    and every ticket's autoreply is decided (sent, here)."""
    for _ in range(60):
        world.graph.advance_clock(STEP * 5)
        time.sleep(1.0)  # a put-back job comes round again within a second or two
        if world.wait_settled(3, what) and len(world.traml.sent_mail()) >= len(world.lime.objects("helpdesk")):
            return
    pending = world.run(world.services.autoreplies.list_autoreplies("retrying", 100))
    raise AssertionError(f"not settled ({what}): {world.unfinished()[:3]}, autoreplies retrying: {pending[:3]}")


def test_thirty_minutes_of_lime_traml_and_storage_outage_end_with_nothing_failed(world: World):
    lime, traml = world.lime, world.traml
    faults: Counter = Counter()

    # 1. TRAML down: a first batch becomes tickets, their autoreplies wait --------------------------------
    traml_down = traml.faults.add(503, path_regex="sendtemplate", count=-1)
    first = deliver(world, "a", 6)
    assert world.wait_settled(60, "first batch processed")
    # 2. Lime down as well (503, then no connection at all) while a second batch arrives ------------------
    lime_503 = lime.faults.add(503, count=-1)
    second = deliver(world, "b", 6)
    seen = pass_outage(world, OUTAGE_STEPS // 2)
    lime.faults.remove(lime_503.id)
    lime_gone = lime.faults.add(None, drop_connection=True, count=-1)
    seen += pass_outage(world, OUTAGE_STEPS - OUTAGE_STEPS // 2)
    faults.update({"TRAML 503": traml_down.fired, "Lime 503": lime_503.fired, "Lime no connection": lime_gone.fired})
    assert not failed_rows(world)
    assert world.run(world.services.autoreplies.list_autoreplies("failed", 100)) == []
    waiting = [s for s in seen if s["retrying"]]
    assert waiting and all(s["failed"] == 0 for s in seen), seen[-3:]
    assert max(s["retrying"] for s in seen) >= len(second) and not waiting[-1]["healthy"]
    assert waiting[-1]["next_retry_at"]
    lime.faults.remove(lime_gone.id)
    traml.faults.remove(traml_down.id)
    settle(world, "after the Lime and TRAML outage")

    # 3. Storage down: a third batch arrives (its notifications cannot be enqueued) --------------------------
    third = deliver(world, "c", 4)
    time.sleep(0.3)  # some of it in flight
    world.azurite.stop()
    try:
        pass_outage(world, OUTAGE_STEPS, real=0.5)
    finally:
        world.azurite.start()
    faults["Storage down (minutes of the app's clock)"] = OUTAGE_STEPS
    settle(world, "after the Storage outage")
    world.sweep()  # the notifications that Storage refused: the sweep finds that mail
    settle(world, "after the sweep")

    # the verdict: every mail once, every autoreply once, nothing Failed, nothing uncertain -----------------
    rows = world.rows()
    histories = Counter(h.get("inboxkey") for h in lime.objects("history") if h.get("type") == "receivedemail")
    inbox = {(box, msg["id"]) for box in BOXES for msg in world.graph.messages(box, "Inbox")}
    sent = Counter(s["ExternalId"] for s in traml.sent_mail())
    for d in first + second + third:
        row = rows[(d.address, d.message_id)]
        assert row is not None and row.status == "processed", (d, row and row.status, row and row.last_error)
        assert histories[exact_hash(d.key, 40)] == 1, d
        assert (d.address, d.message_id) not in inbox, d
    waited = [rows[(d.address, d.message_id)] for d in second]
    assert all(sum(1 for t in r.trace if t["event"] == "error" and t.get("next_attempt_at")) >= 3 for r in waited), \
        "the second batch waited through several tries"
    assert len(lime.objects("helpdesk")) == len(first + second + third) == sum(sent.values())
    assert all(n == 1 for n in sent.values()), sent
    services = world.services.autoreplies
    assert world.run(services.list_autoreplies("uncertain", 100)) == []
    assert world.run(services.list_autoreplies("failed", 100)) == []
    summary = status(world)
    assert (summary["failed"], summary["retrying"], summary["unprocessed"]) == (0, 0, 0)
    assert min(faults.values()) > 0, faults
    print(f"\noutage totals: {dict(faults)}; mails {len(first + second + third)}, "
          f"delayed re-enqueues {world.time_lapse.delayed}")
