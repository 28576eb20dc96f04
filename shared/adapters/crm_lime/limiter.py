"""Client-side rate limit: SlidingWindowLimiter keeps one worker under LIME_RATE_LIMIT_REQUESTS
per LIME_RATE_LIMIT_WINDOW_SECONDS (Lime Cloud: 3,000 per 5 minutes per IP); a long wait is raised
as TransientError(retry_after) instead of blocking.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Awaitable, Callable

from ...domain.errors import TransientError


# Rate limiter -----------------------------------------------------------------------------------
class SlidingWindowLimiter:
    """At most `limit` requests in any `window` seconds (this worker). A wait up to `max_wait` is
    slept; a longer one raises TransientError(retry_after) so the caller can re-enqueue."""

    def __init__(self, limit: int, window: float, *, max_wait: float = 5.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] | None = None) -> None:
        self.limit = limit
        self.window = window
        self.max_wait = max_wait
        self._clock = clock
        self._sleep = sleep or asyncio.sleep
        self._stamps: deque[float] = deque()

    async def acquire(self) -> None:
        if self.limit <= 0:
            return
        while True:
            now = self._clock()
            while self._stamps and self._stamps[0] <= now - self.window:
                self._stamps.popleft()
            if len(self._stamps) < self.limit:
                self._stamps.append(now)
                return
            wait = self._stamps[0] + self.window - now
            if wait > self.max_wait:
                raise TransientError(f"Lime CRM: the client-side budget of {self.limit} requests per "
                                     f"{self.window:g} s is used up", retry_after=wait)
            await self._sleep(max(wait, 0.001))
