"""The per-mailbox pacing that follows a Graph 429 (shared/adapters/graph_pacing.py), on a fake clock."""
from __future__ import annotations

import pytest

from shared.adapters.graph_pacing import HOLD_SECONDS, MAX_SLOWDOWN, SUSTAINED_RATE, MailboxPacer

BOX, OTHER = ("demo", "box-1"), ("demo", "box-2")
STEP = 1 / SUSTAINED_RATE


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_unthrottled_mailboxes_are_not_paced(clock):
    pacer = MailboxPacer(clock=clock)
    assert [pacer.reserve(BOX) for _ in range(50)] == [0.0] * 50
    assert not pacer.paced(BOX)


def test_after_a_429_requests_leave_one_by_one_at_the_sustained_rate_after_the_pause(clock):
    pacer = MailboxPacer(clock=clock)
    pacer.throttled(BOX, retry_after=1.0)
    waits = [pacer.reserve(BOX) for _ in range(5)]
    assert waits == pytest.approx([1.0 + i * STEP for i in range(5)])
    assert pacer.reserve(OTHER) == 0.0  # the other mailbox has its own budget


def test_a_quiet_mailbox_is_unpaced_again_after_the_hold(clock):
    pacer = MailboxPacer(clock=clock)
    pacer.throttled(BOX, retry_after=1.0)
    clock.now += 1.0 + HOLD_SECONDS
    assert pacer.reserve(BOX) == 0.0 and not pacer.paced(BOX)


def test_a_429_despite_pacing_slows_down_once_per_episode_up_to_the_cap(clock):
    pacer = MailboxPacer(clock=clock)
    pacer.throttled(BOX, 1.0)
    assert pacer.interval(BOX) == pytest.approx(STEP)  # the first 429 only starts pacing
    clock.now += 2.0
    for _ in range(4):  # several requests in flight meet the same 429: one slowdown
        pacer.throttled(BOX, 1.0)
    assert pacer.interval(BOX) == pytest.approx(STEP * 1.25)
    for _ in range(20):
        clock.now += 2.0
        pacer.throttled(BOX, 1.0)
    assert pacer.interval(BOX) == pytest.approx(STEP * MAX_SLOWDOWN)
    clock.now += 1.0 + HOLD_SECONDS
    pacer.reserve(BOX)
    assert pacer.interval(BOX) == pytest.approx(STEP)  # unpaced again: back to the full rate when next throttled
