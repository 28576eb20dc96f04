"""What the dev host keeps and prints about each invocation, and what it closes at stop.

`InvocationRecord` is one finished invocation; `InvocationRecord.line()` the one line `make run`
prints for it: time, function, outcome (the HTTP status, `ok`, or `failed <exception>`), duration,
and what it was about (the request line without its query, whose `code=` is a key; or the mail's
`message_id` when a queue message is a JSON object carrying one).

`close_leftover_sessions(loop)`: a Functions app has no shutdown hook, so its Storage, Graph and
CRM clients (aiohttp sessions under the Azure SDKs and azure-identity) stay open until the worker
process dies. The dev host owns the event loops they were opened on; before it closes those loops
it closes every aiohttp session and connector still open on them, as a process exit would have, so
a stopped dev host leaves no "Unclosed client session" / "Unclosed connector" warnings behind.
"""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("devhost")

_SUBJECT_MAX = 120


@dataclass(frozen=True)
class InvocationRecord:
    function: str
    trigger: str
    invocation_id: str
    ok: bool
    duration_ms: float
    exception: str | None = None
    message_id: str | None = None    # the queue message's id
    dequeue_count: int | None = None
    source: str = "trigger"          # "trigger" | "admin"
    finished_at: float = field(default_factory=time.time)
    status: int | None = None        # HTTP triggers: the status code answered
    subject: str = ""                # "POST /api/notifications", "message_id=AAMk...", ""

    @property
    def outcome(self) -> str:
        if self.status is not None:
            return str(self.status)
        return "ok" if self.ok else f"failed {self.exception or ''}".rstrip()

    def line(self) -> str:
        """One line for a console: `12:01:02  process_message  ok  41 ms  message_id=AAMk...`."""
        clock = time.strftime("%H:%M:%S", time.localtime(self.finished_at))
        return (f"{clock}  {self.function:<24} {self.outcome:<7} {self.duration_ms:>6.0f} ms  {self.subject}"
                ).rstrip()


def http_subject(method: str, path: str) -> str:
    """The request line without its query string (a `?code=` there is a function key)."""
    return f"{method} {path}"[:_SUBJECT_MAX]


def queue_subject(body: bytes | None) -> str:
    """`message_id=<id>` when the message is a JSON object that names one, else ''."""
    if not body or not body.lstrip().startswith(b"{") or len(body) > 64_000:
        return ""
    try:
        doc = json.loads(body)
    except ValueError:
        return ""
    value = doc.get("message_id") if isinstance(doc, dict) else None
    return f"message_id={value}"[:_SUBJECT_MAX] if isinstance(value, str) and value else ""


def _open_on(loop: asyncio.AbstractEventLoop) -> list[Any]:
    try:
        import aiohttp
    except ImportError:  # an app without aiohttp has nothing of it to close
        return []
    found: list[Any] = []
    for obj in gc.get_objects():
        if isinstance(obj, aiohttp.ClientSession):
            if not obj.closed and getattr(obj, "_loop", None) is loop:
                found.append(obj)
        elif isinstance(obj, aiohttp.BaseConnector):
            if not obj.closed and getattr(obj, "_loop", None) is loop:
                found.append(obj)
    # sessions first: closing a session closes the connector it owns
    return sorted(found, key=lambda o: not isinstance(o, aiohttp.ClientSession))


async def close_leftover_sessions(timeout: float = 5.0) -> int:
    """Close the aiohttp sessions and connectors still open on the running loop; how many."""
    loop = asyncio.get_running_loop()
    closed = 0
    for obj in _open_on(loop):
        if obj.closed:  # its session closed it a moment ago
            continue
        try:
            result = obj.close()
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                await asyncio.wait_for(result, timeout)
            closed += 1
        except Exception as exc:  # noqa: BLE001 - stopping is best effort
            log.debug("could not close %s at stop: %s", type(obj).__name__, exc)
    if closed:
        # let the transports' connection_lost callbacks run before the loop stops
        await asyncio.sleep(0)
    return closed
