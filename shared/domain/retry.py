"""Transient means wait, not fail: when a job that failed transiently is tried again. Pure, no I/O.

A dependency that is down (Lime CRM, TRAML, Graph, Storage: refused, timed out, 5xx, 429) delays the
job, which is re-enqueued with a growing visibility delay: 10 s, 20 s, 40 s ... doubling up to 30
minutes, then every 30 minutes (each delay ±20% so that a backlog does not come back at once, and
never shorter than a Retry-After the dependency asked for). After ATTEMPTS re-enqueues, about 12 hours
of waiting, the job is given up: the queue's own retries and then its poison handler make the mail
Failed, and from then on only the sweep's Failed-mail schedule (shared/services/failures.py) retries
it. A 30-minute outage costs a mail 8 attempts; eight hours, 23.

The delay is counted on the app's clock: the job carries `not_before`, and a delivery that comes
early (the queue's clock is not ours) is put back for the rest of the wait without counting an attempt.
"""
from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Callable

BASE_SECONDS = 10.0
CAP_SECONDS = 30 * 60.0
JITTER = 0.2
# Waiting stops once the nominal delays add up to this (the mail is then Failed).
BUDGET = timedelta(hours=12)
# An early delivery is put back for at least this long (the queue's and our clocks may differ a little).
MIN_DELAY_SECONDS = 1.0
# Ledger data of a mail waiting for a dependency: when its next try is due (ISO time). The status
# page counts such mail as retrying; the sweep leaves it to that try.
NEXT_ATTEMPT = "next_attempt_at"


def nominal_delay(attempt: int) -> float:
    """The delay before try `attempt + 1`, given `attempt` re-enqueues so far, without jitter."""
    return min(CAP_SECONDS, BASE_SECONDS * 2 ** min(max(0, attempt), 30))


def _attempts_within(budget: timedelta) -> int:
    total, attempt = 0.0, 0
    while total < budget.total_seconds():
        total += nominal_delay(attempt)
        attempt += 1
    return attempt


# How many re-enqueues a job gets before it is given up (31: 12.2 hours of nominal delays).
ATTEMPTS = _attempts_within(BUDGET)


def exhausted(attempt: int) -> bool:
    """True when a job that already has `attempt` re-enqueues gets no more."""
    return attempt >= ATTEMPTS


def delay(attempt: int, retry_after: float | None = None,
          uniform: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds to wait before the next try: the schedule's delay with jitter, at least `retry_after`."""
    jittered = nominal_delay(attempt) * uniform(1 - JITTER, 1 + JITTER)
    return max(float(retry_after or 0), min(CAP_SECONDS, jittered), MIN_DELAY_SECONDS)


def not_before(now: datetime, seconds: float) -> str:
    """The envelope's `not_before` for a job re-enqueued `seconds` from `now` (ISO 8601)."""
    return (now + timedelta(seconds=seconds)).isoformat()


def remaining(not_before_iso: str, now: datetime) -> float:
    """Seconds until a job's `not_before` (0 when it is due, absent or unreadable)."""
    if not not_before_iso:
        return 0.0
    try:
        due = datetime.fromisoformat(not_before_iso)
    except ValueError:
        return 0.0
    if due.tzinfo is None and now.tzinfo is not None:
        due = due.replace(tzinfo=now.tzinfo)
    return max(0.0, (due - now).total_seconds())
