"""Queue triggers against a real Azurite: processing, deletion, retries, poison, leases, concurrency."""
from __future__ import annotations

import time

from tests.devhost.conftest import b64_queue, b64decode_text, drain_raw, queue_empty, raw_queue, wait_until
from tools.devhost import DevHost


def test_queue_trigger_processes_writes_output_and_deletes(devhost: DevHost, settings):
    conn = settings["AzureWebJobsStorage"]
    b64_queue(conn, settings["WORK_QUEUE"]).send_message('{"v": 1, "id": "a+b/c="}')
    [record] = devhost.wait_for_invocations("work")
    assert record.ok and record.dequeue_count == 1 and record.message_id
    seen = devhost.module.SEEN["work"]
    assert seen[0]["body"] == '{"v": 1, "id": "a+b/c="}' and seen[0]["dequeue_count"] == 1
    [done] = drain_raw(conn, settings["DONE_QUEUE"], 1)
    assert b64decode_text(done) == 'done:{"v": 1, "id": "a+b/c="}'
    wait_until(lambda: queue_empty(conn, settings["WORK_QUEUE"]), timeout=5)


def test_failing_message_is_retried_then_moved_to_poison(devhost: DevHost, settings):
    conn = settings["AzureWebJobsStorage"]
    b64_queue(conn, settings["WORK_QUEUE"]).send_message("fail-once-more")
    failed = devhost.wait_for_invocations("work", count=3, timeout=15)     # maxDequeueCount 3 in host.json
    assert [r.dequeue_count for r in failed] == [1, 2, 3]
    assert all(not r.ok and r.exception == "ValueError" for r in failed)
    # the poison copy keeps the body (base64 as stored) and its own function sees it decoded
    [poisoned] = devhost.wait_for_invocations("work_failed", timeout=10)
    assert poisoned.ok and poisoned.dequeue_count == 1
    assert devhost.module.SEEN["work_failed"][0]["body"] == "fail-once-more"
    time.sleep(0.3)
    assert len([r for r in devhost.invocations if r.function == "work"]) == 3
    wait_until(lambda: queue_empty(conn, settings["WORK_QUEUE"]), timeout=5)
    wait_until(lambda: queue_empty(conn, settings["WORK_QUEUE"] + "-poison"), timeout=5)


def test_message_that_is_not_base64_goes_to_poison_without_invocation(start_host, settings):
    conn = settings["AzureWebJobsStorage"]
    host = start_host(only=["work"])
    raw_queue(conn, settings["WORK_QUEUE"]).send_message("plain text, not base64!")
    [copy] = drain_raw(conn, settings["WORK_QUEUE"] + "-poison", 1)
    assert copy == "plain text, not base64!"
    assert not [r for r in host.invocations if r.function == "work"]


def test_long_running_message_keeps_its_lease(start_host, settings):
    conn = settings["AzureWebJobsStorage"]
    host = start_host(only=["slow"], message_lease=1.0)        # renewed every 0.5 s
    b64_queue(conn, settings["SLOW_QUEUE"]).send_message("1.8")
    [record] = host.wait_for_invocations("slow", timeout=10)
    assert record.ok
    seen = host.module.SEEN["slow"]
    assert len(seen) == 1 and seen[0]["dequeue_count"] == 1       # never redelivered meanwhile
    wait_until(lambda: queue_empty(conn, settings["SLOW_QUEUE"]), timeout=5)


def test_in_flight_bounded_by_batch_size_plus_threshold(start_host, settings):
    conn = settings["AzureWebJobsStorage"]
    client = b64_queue(conn, settings["SLOW_QUEUE"])
    client.create_queue()
    for _ in range(12):
        client.send_message("0.5")
    host = start_host(only=["slow"])                   # batchSize 4 -> newBatchThreshold 2 -> 6 in flight
    host.wait_for_invocations("slow", count=12, timeout=15)
    starts = sorted(s["start"] for s in host.module.SEEN["slow"])
    peak = max(sum(1 for t in starts if t <= s < t + 0.5) for s in starts)
    assert 4 <= peak <= 6, peak
