"""Notification delivery of the simulated Graph: change notifications for a folder's
subscriptions (batched per webhook URL), lifecycle notifications, forged POSTs, and the chaos
(drop, duplicate, delay, jitter); a pool of threads POSTs them with Graph-like retries over
keep-alive connections, and every POST is kept as a NotificationRecord for tests to inspect.
"""

from __future__ import annotations

import heapq
import http.client
import itertools
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from .helpers import _is_loopback, _iso7
from .model import _Mailbox, _Msg
from ..httpbase import json_dumps

if TYPE_CHECKING:
    from .server import GraphSim


# --------------------------------------------------------------------------------------------
# notification delivery


@dataclass
class NotificationRecord:
    """One POST (with its retries) that Graph makes to a webhook."""

    id: int
    kind: str                 # change | lifecycle | validation | custom
    url: str
    payload: Any
    subscription_ids: list[str] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    status: int | None = None
    delivered: bool = False
    failed: bool = False
    dropped: bool = False
    duplicate: bool = False
    created: float = field(default_factory=time.time)
    response_body: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class _Notifier:
    """Background POSTs to webhooks with Graph-like retries, on a small pool of threads."""

    def __init__(self, sim: "GraphSim", workers: int) -> None:
        self.sim = sim
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int, NotificationRecord, bytes]] = []
        self._seq = itertools.count()
        self._stopped = False
        self._threads = [threading.Thread(target=self._run, name=f"graph-notify-{i}",
                                          daemon=True) for i in range(workers)]
        self._local = threading.local()
        for thread in self._threads:
            thread.start()

    def submit(self, record: NotificationRecord, body: bytes, delay_s: float = 0.0) -> None:
        with self._cv:
            heapq.heappush(self._heap, (time.monotonic() + delay_s, next(self._seq), record, body))
            self._cv.notify()

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify_all()

    def pending(self) -> int:
        with self._cv:
            return len(self._heap)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopped:
                    if self._heap:
                        wait = self._heap[0][0] - time.monotonic()
                        if wait <= 0:
                            break
                        self._cv.wait(wait)
                    else:
                        self._cv.wait()
                if self._stopped:
                    return
                _, _, record, body = heapq.heappop(self._heap)
            self._attempt(record, body)

    def _attempt(self, record: NotificationRecord, body: bytes) -> None:
        sim = self.sim
        started = time.perf_counter()
        status, text, error = None, None, None
        try:
            status, _ctype, data = sim._http_post(record.url, body, {
                "Content-Type": "application/json; charset=utf-8"},
                timeout=sim.notification_timeout, pool=self._local)
            text = data[:2000].decode("utf-8", "replace")
        except Exception as exc:  # noqa: BLE001 - any failure is a failed delivery attempt
            error = f"{type(exc).__name__}: {exc}"
        attempt = {"time": time.time(), "status": status, "error": error,
                   "ms": round((time.perf_counter() - started) * 1000, 2)}
        retry_in = None
        with sim._notify_cv:
            record.attempts.append(attempt)
            record.status = status
            record.response_body = text
            if status is not None and 200 <= status < 300:
                record.delivered = True
            else:
                n = len(record.attempts)
                delays = sim.notification_retry_delays
                if n <= len(delays):
                    retry_in = delays[n - 1]
                else:
                    record.failed = True
            sim._notify_cv.notify_all()
        if retry_in is not None:
            self.submit(record, body, retry_in)


class _NotificationsMixin:
    """Queueing, sending and recording notifications; the notification log API."""

    def notification_log(self, kind: str | None = None) -> list[NotificationRecord]:
        with self._notify_cv:
            return [r for r in self._records if kind is None or r.kind == kind]

    def clear_notifications(self) -> None:
        with self._notify_cv:
            self._records = []

    def wait_for_notifications(self, count: int = 1, kind: str | None = "change",
                               timeout: float = 5.0, delivered: bool = True
                               ) -> list[NotificationRecord]:
        """Block until ``count`` records of ``kind`` are delivered (2xx), or finished when
        ``delivered`` is False; return them (TimeoutError otherwise)."""
        deadline = time.monotonic() + timeout
        with self._notify_cv:
            while True:
                done = [r for r in self._records if (kind is None or r.kind == kind)
                        and (r.delivered if delivered else (r.delivered or r.failed))]
                if len(done) >= count:
                    return done
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(done)} of {count} {kind} notifications after "
                                       f"{timeout}s: {[r.to_dict() for r in self._records]}")
                self._notify_cv.wait(left)

    def pending_notifications(self) -> int:
        return self._notifier.pending() if self._notifier else 0

    # ================================================================ lifecycle notifications

    def fire_lifecycle(self, subscription_id: str, event: str) -> NotificationRecord:
        """POST a lifecycle notification (missed | subscriptionRemoved | reauthorizationRequired).

        ``subscriptionRemoved`` also deletes the subscription.
        """
        if event not in ("missed", "subscriptionRemoved", "reauthorizationRequired"):
            raise ValueError(f"unknown lifecycle event {event}")
        with self._lock:
            sub = self._live_sub(subscription_id)
            if sub is None:
                raise KeyError(f"no live subscription {subscription_id}")
            if not sub.lifecycle_url:
                raise ValueError("the subscription has no lifecycleNotificationUrl")
            item = {"subscriptionId": sub.id,
                    "subscriptionExpirationDateTime": _iso7(sub.expiration),
                    "tenantId": sub.app.tenant_id, "clientState": sub.client_state,
                    "lifecycleEvent": event}
            url = sub.lifecycle_url
            if event == "subscriptionRemoved":
                self._remove_sub(sub.id)
        return self._enqueue("lifecycle", url, {"value": [item]}, [sub.id])

    def post_notification(self, url: str, body: Any, headers: dict[str, str] | None = None,
                          timeout: float = 10.0) -> tuple[int, str]:
        """Synchronously POST an arbitrary body (e.g. a forged notification); (status, text)."""
        data = body if isinstance(body, bytes) else json_dumps(body)
        hdrs = {"Content-Type": "application/json; charset=utf-8"}
        hdrs.update(headers or {})
        status, _ctype, resp = self._http_post(self._target_url(url), data, hdrs, timeout)
        record = NotificationRecord(next(self._record_ids), "custom", url, body, status=status,
                                    delivered=200 <= status < 300)
        with self._notify_cv:
            self._records.append(record)
        return status, resp.decode("utf-8", "replace")

    # ---------------------------------------------------------------- change notifications

    def _notify_change(self, mbx: _Mailbox, folder_id: str, change: str, msgs: list[_Msg],
                       duplicate: int = 0, delay_ms: float = 0) -> list[NotificationRecord]:
        """Queue change notifications for the subscriptions watching that folder (lock held)."""
        sub_ids = self._subs_by_user.get(mbx.id)
        records: list[NotificationRecord] = []
        if not sub_ids or not msgs:
            return records
        by_url: dict[str, tuple[list[dict[str, Any]], list[str]]] = {}
        for sub_id in list(sub_ids):
            sub = self._live_sub(sub_id)
            if sub is None or change not in sub.change_types:
                continue
            if sub.folder_id is not None and sub.folder_id != folder_id:
                continue
            if sub.folder_id is None and mbx.folders[folder_id].hidden:
                continue
            for msg in msgs:
                msg_id = msg.imm_id if sub.immutable else msg.rest_id
                path = f"Users/{mbx.id}/Messages/{msg_id}"
                item = {"subscriptionId": sub.id,
                        "subscriptionExpirationDateTime": _iso7(sub.expiration),
                        "changeType": change, "resource": path,
                        "resourceData": {"@odata.type": "#Microsoft.Graph.Message",
                                         "@odata.id": path,
                                         "@odata.etag": f'W/"{msg.props["changeKey"]}"',
                                         "id": msg_id},
                        "clientState": sub.client_state, "tenantId": sub.app.tenant_id}
                if item["clientState"] is None:
                    del item["clientState"]
                items, ids = by_url.setdefault(sub.notification_url, ([], []))
                items.append(item)
                if sub.id not in ids:
                    ids.append(sub.id)
        size = max(1, self.notification_batch_size)
        for url, (items, ids) in by_url.items():
            for start in range(0, len(items), size):
                chunk = items[start:start + size]
                chunk_ids = sorted({i["subscriptionId"] for i in chunk}, key=ids.index)
                for copy in range(1 + max(0, duplicate)):
                    records.append(self._enqueue("change", url, {"value": chunk}, chunk_ids,
                                                 delay_ms=delay_ms, duplicate=copy > 0))
        return records

    def _enqueue(self, kind: str, url: str, payload: Any, sub_ids: list[str],
                 delay_ms: float = 0, duplicate: bool = False) -> NotificationRecord:
        record = NotificationRecord(next(self._record_ids), kind, url, payload,
                                    subscription_ids=list(sub_ids), duplicate=duplicate)
        copies = 1
        delay = delay_ms + self.notification_delay_ms
        if kind == "change":
            drop = self.drop_notifications
            if drop is True or (drop and self._rng.random() < float(drop)):
                record.dropped = True
            elif self.duplicate_notifications and self._rng.random() < \
                    self.duplicate_notifications:
                copies = 2
            if self.notification_jitter_ms:
                delay += self._rng.random() * self.notification_jitter_ms
        with self._notify_cv:
            self._records.append(record)
            if len(self._records) > self.notification_log_limit:
                del self._records[:len(self._records) // 2]
            self._notify_cv.notify_all()
        if record.dropped:
            return record
        body = json_dumps(payload)
        notifier = self._notifier
        if notifier is None:
            raise RuntimeError("the simulator is not started")
        target = self._target_url(url)
        record.url = target
        notifier.submit(record, body, delay / 1000.0)
        for _ in range(copies - 1):
            dup = NotificationRecord(next(self._record_ids), kind, target, payload,
                                     subscription_ids=list(sub_ids), duplicate=True)
            with self._notify_cv:
                self._records.append(dup)
            extra = self._rng.random() * max(self.notification_jitter_ms, 50)
            notifier.submit(dup, body, (delay + extra) / 1000.0)
        return record

    def _target_url(self, url: str) -> str:
        """The URL actually called: non-loopback hosts go to ``webhook_base`` when it is set."""
        if not self.webhook_base:
            return url
        parts = urlsplit(url)
        if _is_loopback(parts.hostname):
            return url
        base = urlsplit(self.webhook_base)
        path = parts.path
        if base.path and base.path != "/":
            path = base.path.rstrip("/") + path
        return urlunsplit((base.scheme, base.netloc, path, parts.query, ""))

    def _http_post(self, url: str, body: bytes, headers: dict[str, str], timeout: float,
                   pool: threading.local | None = None) -> tuple[int, str, bytes]:
        """POST with http.client (keep-alive per thread when ``pool`` is given)."""
        parts = urlsplit(url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        key = (parts.scheme, parts.hostname, parts.port)
        conns: dict[Any, http.client.HTTPConnection] | None = None
        if pool is not None:
            conns = getattr(pool, "conns", None)
            if conns is None:
                conns = pool.conns = {}
        for attempt in range(2):
            conn = conns.get(key) if conns is not None else None
            reused = conn is not None
            if conn is None:
                if parts.scheme == "https":
                    ctx = self.notification_ssl_context or ssl._create_unverified_context()
                    conn = http.client.HTTPSConnection(parts.hostname, parts.port,
                                                       timeout=timeout, context=ctx)
                else:
                    conn = http.client.HTTPConnection(parts.hostname, parts.port,
                                                      timeout=timeout)
            try:
                hdrs = dict(headers)
                hdrs.setdefault("Accept", "*/*")
                hdrs.setdefault("User-Agent", "graph-sim-notifications")
                conn.request("POST", path, body=body, headers=hdrs)
                resp = conn.getresponse()
                data = resp.read()
                status, ctype = resp.status, resp.getheader("Content-Type") or ""
                if conns is not None and not resp.will_close:
                    conns[key] = conn
                else:
                    conn.close()
                    if conns is not None:
                        conns.pop(key, None)
                return status, ctype, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    http.client.CannotSendRequest) as exc:
                conn.close()
                if conns is not None:
                    conns.pop(key, None)
                if reused and attempt == 0:
                    continue  # a stale keep-alive connection: retry once on a fresh one
                raise OSError(str(exc)) from exc
            except BaseException:
                conn.close()
                if conns is not None:
                    conns.pop(key, None)
                raise
        raise OSError("unreachable")
