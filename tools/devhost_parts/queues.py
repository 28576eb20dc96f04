"""Storage queue side of the dev host: output writes and the queue-trigger listener.

Mirrors the WebJobs queue extension (5.x): batch receive with a 10-minute lease that is renewed
while the function runs, `batchSize + newBatchThreshold` messages in flight per function,
randomized exponential polling backoff from 100 ms to `maxPollingInterval` when the queue is empty,
immediate re-poll when messages were found or when this host itself wrote to the queue (the
host's shared queue watcher), base64 decoding, `visibilityTimeout` on failure and the copy to
`<queue>-poison` once `dequeue_count >= maxDequeueCount`. A message that is not valid base64 goes
to the poison queue at once, without invoking the function, as the extension does.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import os
import random
import re
import threading
from collections import Counter
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.functions import _queue as azf_queue
from azure.functions.queue import QueueMessage
from azure.storage.queue.aio import QueueClient, QueueServiceClient

from .config import QueueOptions

try:  # fast retries: the storage default waits 15 s before its first retry, far too long for a local host
    from azure.storage.queue._shared.policies_async import LinearRetry as _LinearRetry

    def _retry_policy():
        return _LinearRetry(backoff=0.3, retry_total=3, random_jitter_range=0.1)
except ImportError:  # pragma: no cover - private module moved
    _retry_policy = None

if TYPE_CHECKING:  # pragma: no cover
    from .functions import FunctionSpec

log = logging.getLogger("devhost.queues")

MIN_POLLING_INTERVAL = 0.1

# The host's own queue requests by operation ("inbox-messages get" ...): in Azure the Functions host
# makes them (polling, lease renewals, completing and poisoning messages) and they are Storage
# transactions like the app's; GET /admin/devhost/storage-ops reports them (bench/pipeline.py).
HOST_QUEUE_OPS: Counter[str] = Counter()
_ops_lock = threading.Lock()
_QUEUE_VERBS = {"POST": "put", "GET": "get", "DELETE": "delete", "PUT": "update"}


def _count_request(request: Any) -> None:
    http = getattr(request, "http_request", request)
    path = [p for p in http.url.split("?", 1)[0].split("://", 1)[-1].split("/")[1:] if p]
    name = path[1] if len(path) > 1 and ".core." not in http.url else (path[0] if path else "-")
    kind = f"{name} {_QUEUE_VERBS.get(http.method.upper(), http.method.lower())}"
    with _ops_lock:
        HOST_QUEUE_OPS[kind] += 1
_WS = re.compile(r"\s+")


def decode_base64(text: str) -> bytes:
    """Strict base64 as .NET's Convert.FromBase64String reads it (whitespace ignored)."""
    return base64.b64decode(_WS.sub("", text), validate=True)


def encode_message(payload: str | bytes, encoding: str) -> str:
    data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    if encoding == "base64":
        return base64.b64encode(data).decode("ascii")
    return data.decode("utf-8")


def output_payloads(value: Any) -> list[str | bytes]:
    """The messages a queue output value stands for, as the Python worker encodes them."""
    if value is None:
        return []
    if isinstance(value, (str, bytes, bytearray)):
        return [value]
    if isinstance(value, azf_queue.QueueMessage):
        return [json.dumps({"id": value.id, "body": value.get_body().decode("utf-8")})]
    if isinstance(value, (list, tuple)):
        out: list[str | bytes] = []
        for item in value:
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, azf_queue.QueueMessage):
                out.append(json.dumps({"id": item.id, "body": item.get_body().decode("utf-8")}))
            else:
                raise TypeError(f"invalid data type in output queue message list: {type(item)}")
        return out
    raise TypeError(f"unsupported queue output value of type {type(value).__name__} "
                    f"(str, bytes, QueueMessage or a list of str/QueueMessage)")


class StorageClients:
    """aio clients per connection string, living on the host loop."""

    def __init__(self) -> None:
        self._services: dict[str, QueueServiceClient] = {}
        self._created: set[tuple[str, str]] = set()

    def queue(self, connection: str, name: str) -> QueueClient:
        service = self._services.get(connection)
        if service is None:
            extra = {"retry_policy": _retry_policy()} if _retry_policy else {"retry_total": 3}
            if not any(os.environ.get(v) for v in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")):
                extra["use_env_settings"] = False  # aiohttp would read proxies and ~/.netrc per request
            service = QueueServiceClient.from_connection_string(connection, connection_timeout=5,
                                                                raw_request_hook=_count_request, **extra)
            self._services[connection] = service
        return service.get_queue_client(name)

    def key(self, connection: str, name: str) -> str:
        return self.queue(connection, name).url.lower()

    async def ensure_queue(self, connection: str, name: str) -> None:
        if (connection, name) in self._created:
            return
        try:
            await self.queue(connection, name).create_queue()
        except ResourceExistsError:
            pass
        self._created.add((connection, name))

    async def send(self, connection: str, name: str, payloads: list[str | bytes], encoding: str) -> None:
        client = self.queue(connection, name)
        for payload in payloads:
            text = encode_message(payload, encoding)
            try:
                await client.send_message(text)
            except ResourceNotFoundError:   # the output binding creates a missing queue
                self._created.discard((connection, name))
                await self.ensure_queue(connection, name)
                await client.send_message(text)

    async def close(self) -> None:
        for service in self._services.values():
            try:
                await service.close()
            except Exception:  # pragma: no cover - best effort at shutdown
                pass
        self._services.clear()


class _Lease:
    """Keeps a message invisible while it is processed (renews at half the lease)."""

    def __init__(self, client: QueueClient, message, lease: float) -> None:
        self.client = client
        self.message_id = message.id
        self.pop_receipt = message.pop_receipt
        self.lease = lease
        self._done = asyncio.Event()
        self._task = asyncio.ensure_future(self._renew())

    async def _renew(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._done.wait(), self.lease / 2)
                return
            except asyncio.TimeoutError:
                pass
            try:
                updated = await self.client.update_message(
                    self.message_id, pop_receipt=self.pop_receipt, visibility_timeout=math.ceil(self.lease))
                self.pop_receipt = updated.pop_receipt
                log.debug("renewed lease of message %s", self.message_id)
            except Exception as exc:
                log.warning("could not renew the visibility of message %s: %s", self.message_id,
                            type(exc).__name__)

    async def stop(self) -> None:
        self._done.set()
        await self._task


class QueueListener:
    def __init__(self, spec: "FunctionSpec", options: QueueOptions, clients: StorageClients,
                 execute: Callable[..., Awaitable[Any]], notify: Callable[[str, str], None],
                 lease: float) -> None:
        self.spec = spec
        self.options = options
        self.clients = clients
        self._execute = execute
        self._notify = notify
        self._lease = lease
        self._wake = asyncio.Event()
        self._slot = asyncio.Event()
        self._stopping = False
        self.in_flight = 0
        self._tasks: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None
        self.client = clients.queue(spec.connection, spec.queue_name)
        self.poison_name = f"{spec.queue_name}-poison"
        self.key = clients.key(spec.connection, spec.queue_name)

    async def start(self) -> None:
        await self.clients.ensure_queue(self.spec.connection, self.spec.queue_name)
        self._loop_task = asyncio.ensure_future(self._run())

    def wake(self) -> None:
        self._wake.set()

    async def stop(self, grace: float) -> None:
        self._stopping = True
        self._wake.set()
        self._slot.set()
        if self._loop_task:
            self._loop_task.cancel()
            try:
                await self._loop_task
            except (asyncio.CancelledError, Exception):
                pass
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("%s: %d message(s) still running at shutdown were abandoned (they reappear "
                            "when their lease lapses)", self.spec.name, len(pending))

    async def _run(self) -> None:
        opts = self.options
        delay = 0.0
        while not self._stopping:
            while self.in_flight > opts.new_batch_threshold and not self._stopping:
                self._slot.clear()
                await self._slot.wait()
            if self._stopping:
                return
            try:
                pages = self.client.receive_messages(messages_per_page=opts.batch_size,
                                                     visibility_timeout=math.ceil(self._lease)).by_page()
                try:
                    page = await pages.__anext__()
                    messages = [m async for m in page]
                except StopAsyncIteration:
                    messages = []
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s: polling queue '%s' failed: %s: %s", self.spec.name, self.spec.queue_name,
                            type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
                messages = []
            if messages:
                delay = 0.0
                for message in messages:
                    self.in_flight += 1
                    task = asyncio.ensure_future(self._process(message))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                continue
            delay = min(opts.max_polling_interval,
                        max(MIN_POLLING_INTERVAL, delay * 2) * random.uniform(0.8, 1.2))
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
                delay = 0.0   # woken: something was written to this queue by this host
            except asyncio.TimeoutError:
                pass

    async def _process(self, message) -> None:
        spec, opts = self.spec, self.options
        try:
            if opts.message_encoding == "base64":
                try:
                    body = decode_base64(message.content or "")
                except (binascii.Error, ValueError):
                    log.error("%s: message %s is not valid base64 (messageEncoding is base64); moving it to "
                              "queue '%s' without invoking the function", spec.name, message.id,
                              self.poison_name)
                    await self._to_poison(message, message.pop_receipt)
                    return
            else:
                body = (message.content or "").encode("utf-8")
            trigger = QueueMessage(id=message.id, body=body, dequeue_count=message.dequeue_count,
                                   insertion_time=message.inserted_on, expiration_time=message.expires_on,
                                   pop_receipt=message.pop_receipt, time_next_visible=message.next_visible_on)
            lease = _Lease(self.client, message, self._lease)
            ok = True
            try:
                await self._execute(spec, trigger, message_id=message.id, dequeue_count=message.dequeue_count)
            except Exception:
                ok = False
            finally:
                await lease.stop()
            if ok:
                await self.client.delete_message(message.id, lease.pop_receipt)
            elif (message.dequeue_count or 0) >= opts.max_dequeue_count:
                log.warning("Message has reached MaxDequeueCount of %d. Moving message %s to queue '%s'.",
                            opts.max_dequeue_count, message.id, self.poison_name)
                await self._to_poison(message, lease.pop_receipt)
            else:
                await self.client.update_message(message.id, pop_receipt=lease.pop_receipt,
                                                 visibility_timeout=math.ceil(opts.visibility_timeout))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("%s: storage error while settling message %s: %s: %s", spec.name, message.id,
                      type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
        finally:
            self.in_flight -= 1
            self._slot.set()

    async def _to_poison(self, message, pop_receipt: str) -> None:
        conn = self.spec.connection
        await self.clients.ensure_queue(conn, self.poison_name)
        # The same stored content: still base64 when the original was.
        await self.clients.queue(conn, self.poison_name).send_message(message.content or "")
        await self.client.delete_message(message.id, pop_receipt)
        self._notify(conn, self.poison_name)
