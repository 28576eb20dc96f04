"""Pacing of a mailbox's Graph requests after Graph throttled it (429).

Graph allows 10,000 requests per 10 minutes per app and mailbox (a bucket refilled at 16.7/s). Left
alone, a worker sends each mailbox's requests as fast as its concurrency semaphore lets it; when the
bucket is empty Graph answers 429 with Retry-After, the adapter pauses the mailbox, and when the
pause ends every waiting request goes out at once, empties the bucket again and meets the next 429.
That burst-and-stall cycle keeps a mailbox's throughput well under the rate Graph allows.

So after a 429 the mailbox is *paced*: its requests leave one at a time at the sustained rate
(`reserve` hands out slots), until it has gone `hold` seconds without a 429; then it is unpaced
again (a quiet mailbox keeps Graph's burst allowance for the next rush of mail). A 429 while
paced means other workers share the budget: the interval grows (x1.25 per throttling episode, at
most x4), so N workers settle near 1/N of the rate each. Not thread-safe: one per event loop.
"""
from __future__ import annotations

import time
from typing import Callable, Hashable

SUSTAINED_RATE = 10_000 / 600  # requests per second per app and mailbox (Outlook's limit)
HOLD_SECONDS = 60.0
MAX_SLOWDOWN = 4.0
SLOWDOWN = 1.25


class MailboxPacer:
    def __init__(self, rate: float = SUSTAINED_RATE, hold: float = HOLD_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.base_interval = 1.0 / rate
        self.hold = hold
        self._clock = clock
        self._interval: dict[Hashable, float] = {}
        self._next: dict[Hashable, float] = {}
        self._paced_until: dict[Hashable, float] = {}
        self._episode_until: dict[Hashable, float] = {}

    def paced(self, key: Hashable) -> bool:
        until = self._paced_until.get(key)
        return until is not None and self._clock() < until

    def interval(self, key: Hashable) -> float:
        return self._interval.get(key, self.base_interval)

    def reserve(self, key: Hashable) -> float:
        """Seconds to wait before sending the next request for `key` (0: go now); takes the slot."""
        now = self._clock()
        until = self._paced_until.get(key)
        if until is None:
            return 0.0
        if now >= until:
            for state in (self._interval, self._next, self._paced_until, self._episode_until):
                state.pop(key, None)
            return 0.0
        slot = max(now, self._next.get(key, now))
        self._next[key] = slot + self.interval(key)
        return slot - now

    def throttled(self, key: Hashable, retry_after: float) -> None:
        """Graph answered 429 for `key`, asking to wait `retry_after` seconds."""
        now = self._clock()
        resume = now + max(retry_after, 0.0)
        if self.paced(key) and now >= self._episode_until.get(key, 0.0):
            # throttled again despite pacing (other workers share the budget): slow down, once
            # per episode, not once per request that was in flight when Graph said stop
            self._interval[key] = min(self.interval(key) * SLOWDOWN, self.base_interval * MAX_SLOWDOWN)
        self._episode_until[key] = resume
        self._paced_until[key] = resume + self.hold
        self._next[key] = max(self._next.get(key, resume), resume)
