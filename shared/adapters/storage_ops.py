"""Storage operations counted by kind: every request a Storage SDK client sends, per attempt.

Each Storage request is a billed transaction and costs the worker CPU (an HTTP call through the
async SDK) and Azurite or Azure CPU, so the count is the cost: bench/pipeline.py prints it per
mail by kind, and tests/integration/test_call_budgets.py asserts the budget of a plain new ticket.

Installed through the SDKs' own `raw_request_hook` (azure-core's CustomHookPolicy for Tables,
StorageRequestHook for Queues and Blobs): called for every attempt of every request, including a
retried one and each entity group transaction (`$batch`, one request however many rows it writes).
A kind reads "table ledger update", "queue inbox-messages put", "blob crm-files put": the service,
the table, queue or container, and the operation. Counting is a dictionary increment; it is always
on, per process (`COUNTS`) or per StorageAccount when a test gives it an `OpCounter` of its own.
"""
from __future__ import annotations

import threading
from collections import Counter
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

_TABLE_VERBS = {"GET": "read", "PUT": "update", "MERGE": "merge", "PATCH": "merge", "DELETE": "delete",
                "POST": "insert"}
_QUEUE_VERBS = {"POST": "put", "GET": "get", "DELETE": "delete", "PUT": "update", "HEAD": "props"}


class OpCounter:
    """Storage requests by kind (thread-safe: the dev host's queue clients run on another loop)."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self._counts[kind] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def total(self, prefix: str = "") -> int:
        with self._lock:
            return sum(v for k, v in self._counts.items() if k.startswith(prefix))

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()

    def hook(self, service: str, origin: str = "") -> Callable[[Any], None]:
        """A `raw_request_hook` for a client of `service` (table, queue, blob); `origin` prefixes
        the kind (the dev host counts its own queue traffic as "host ...")."""
        def count(request: Any) -> None:
            http = getattr(request, "http_request", request)
            kind = kind_of(service, http.method, http.url)
            self.add(f"{origin} {kind}" if origin else kind)
        return count


COUNTS = OpCounter()  # this process's


def _segments(url: str) -> tuple[list[str], str]:
    parts = urlsplit(url)
    segments = [unquote(s) for s in parts.path.split("/") if s]
    # Azurite and other path-style endpoints put the account first; Azure's hosts name it instead
    if segments and ".core." not in (parts.hostname or ""):
        segments = segments[1:]
    return segments, parts.query


def kind_of(service: str, method: str, url: str) -> str:
    segments, _ = _segments(url)
    method = method.upper()
    if service == "table":
        if not segments:
            return f"table - {method.lower()}"
        head = segments[0]
        if head == "$batch":
            return "table - batch"
        if head.startswith("Tables"):
            return "table - create-table" if method == "POST" else f"table - tables-{method.lower()}"
        name, _, rest = head.partition("(")
        addressed = bool(rest.strip(")"))  # "ledger(PartitionKey='..',RowKey='..')": one entity
        verb = _TABLE_VERBS.get(method, method.lower())
        if method == "GET" and not addressed:
            verb = "query"
        return f"table {name} {verb}"
    if service == "queue":
        name = segments[0] if segments else "-"
        if len(segments) < 2:
            return f"queue {name} {'create' if method == 'PUT' else method.lower()}"
        return f"queue {name} {_QUEUE_VERBS.get(method, method.lower())}"
    name = segments[0] if segments else "-"
    return f"blob {name} {'create' if len(segments) < 2 and method == 'PUT' else method.lower()}"
