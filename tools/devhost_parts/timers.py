"""Timer triggers: run each timer on its NCRONTAB schedule (UTC), never overlapping itself."""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from azure.functions.timer import TimerRequest

if TYPE_CHECKING:  # pragma: no cover
    from .functions import FunctionSpec

log = logging.getLogger("devhost.timers")

PAST_DUE_TOLERANCE = 1.0   # seconds late before a run counts as past due


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt else None


class TimerRunner:
    def __init__(self, spec: "FunctionSpec", execute: Callable[..., Awaitable[Any]]) -> None:
        self.spec = spec
        self._execute = execute
        self.lock = asyncio.Lock()          # one run at a time, scheduled or fired by hand
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.last: datetime | None = None
        self.next: datetime | None = None

    def start(self, schedule_runs: bool) -> None:
        if schedule_runs:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self, grace: float) -> None:
        self._stop.set()
        if self._task:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), grace)
            except (asyncio.TimeoutError, Exception):
                self._task.cancel()

    def request(self, past_due: bool) -> TimerRequest:
        now = datetime.now(timezone.utc)
        return TimerRequest(
            past_due=past_due,
            schedule_status={"Last": _iso(self.last), "Next": _iso(self.next), "LastUpdated": _iso(now)},
            schedule={"AdjustForDST": True})

    async def fire(self, past_due: bool = False, *, raise_errors: bool = False) -> Any:
        async with self.lock:
            try:
                return await self._execute(self.spec, self.request(past_due))
            except Exception:
                if raise_errors:
                    raise
                return None   # logged by execute; a timer does not retry
            finally:
                self.last = datetime.now(timezone.utc)

    async def _run(self) -> None:
        if self.spec.run_on_startup:
            await self.fire(False)
        while not self._stop.is_set():
            now = datetime.now(timezone.utc)
            due = self.spec.schedule.next_after(now)
            self.next = due
            try:
                await asyncio.wait_for(self._stop.wait(), (due - now).total_seconds())
                return
            except asyncio.TimeoutError:
                pass
            # wait_for may return a little early; do not fire before the occurrence
            remaining = (due - datetime.now(timezone.utc)).total_seconds()
            if remaining > 0:
                await asyncio.sleep(remaining)
            late = (datetime.now(timezone.utc) - due).total_seconds()
            await self.fire(past_due=late > PAST_DUE_TOLERANCE)
