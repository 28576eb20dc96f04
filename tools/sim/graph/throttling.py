"""Throttling and faults of the simulated Graph: Outlook's limits per (app, mailbox) (concurrent
requests and a token bucket; 429 with Retry-After), and the Graph error body that failed,
throttled and injected-fault answers carry (SimServer.fault_response uses error_body).
"""

from __future__ import annotations

import datetime as dt
import math
import threading
import time
import uuid
from typing import Any

from .helpers import _iso
from .model import _DEFAULT


# --------------------------------------------------------------------------------------------
# throttling


class _Throttle:
    """Outlook limits per (app, mailbox): concurrent requests and a token bucket."""

    def __init__(self, concurrency: int | None, rate_per_s: float | None, burst: float | None,
                 retry_after: int) -> None:
        self.concurrency = concurrency
        self.rate = rate_per_s
        self.burst = burst if burst is not None else (rate_per_s * 600 if rate_per_s else None)
        self.retry_after = retry_after
        self._lock = threading.Lock()
        self._inflight: dict[tuple[str, str], int] = {}
        self._bucket: dict[tuple[str, str], list[float]] = {}
        self.throttled: dict[tuple[str, str], int] = {}

    def acquire(self, key: tuple[str, str]) -> tuple[bool, int, str]:
        with self._lock:
            inflight = self._inflight.get(key, 0)
            if self.concurrency is not None and inflight >= self.concurrency:
                self.throttled[key] = self.throttled.get(key, 0) + 1
                return False, self.retry_after, "Application is over its MailboxConcurrency limit."
            if self.rate:
                now = time.monotonic()
                bucket = self._bucket.get(key)
                if bucket is None:
                    bucket = self._bucket[key] = [float(self.burst or 1), now]
                tokens = min(float(self.burst or 1), bucket[0] + (now - bucket[1]) * self.rate)
                bucket[1] = now
                if tokens < 1:
                    bucket[0] = tokens
                    self.throttled[key] = self.throttled.get(key, 0) + 1
                    wait = max(1, math.ceil((1 - tokens) / self.rate))
                    return False, wait, "Application is over its resource limit."
                bucket[0] = tokens - 1
            self._inflight[key] = inflight + 1
            return True, 0, ""

    def in_flight(self) -> int:
        """Requests holding a concurrency slot now, over every app and mailbox."""
        with self._lock:
            return sum(self._inflight.values())

    def release(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._inflight[key] = max(0, self._inflight.get(key, 1) - 1)


class _ThrottlingMixin:
    """throttle(), throttle_stats() and Graph's error body."""

    # ================================================================ throttling API

    def throttle(self, concurrency: int | None = 4, rate_per_s: Any = _DEFAULT,
                 burst: float | None = None, retry_after: int = 1) -> None:
        """Outlook limits per (app, mailbox). ``throttle(None)`` turns throttling off.

        Defaults are Outlook's: 4 concurrent requests, 10,000 per 10 minutes (a bucket of
        ``burst`` = 10,000 refilled at 16.7/s). Pass a small burst to see the rate limit.
        """
        if concurrency is None and rate_per_s is _DEFAULT:
            self._throttle = None
            return
        rate = 10000 / 600 if rate_per_s is _DEFAULT else rate_per_s
        self._throttle = _Throttle(concurrency, rate, burst, retry_after)

    def throttle_stats(self) -> dict[str, Any]:
        per = self._throttle.throttled if self._throttle else {}
        in_flight = self._throttle.in_flight() if self._throttle else 0
        return {"throttled": self.throttled_count, "in_flight": in_flight,
                "by_app_mailbox": {f"{a}|{m}": n for (a, m), n in per.items()}}

    # ---------------------------------------------------------------- error shapes

    def error_body(self, status: int, code: str, message: str) -> Any:
        return {"error": {"code": code, "message": message, "innerError": {
            "date": _iso(dt.datetime.now(dt.timezone.utc)), "request-id": str(uuid.uuid4()),
            "client-request-id": str(uuid.uuid4())}}}
