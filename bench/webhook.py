"""Benchmark: the webhook's intake rate and latency against raw Storage queue puts, same run.

    .venv/bin/python bench/webhook.py [--rate 100] [--seconds 10] [--concurrency 16] [--batch 1]

Starts Azurite and the dev host (in its own process, only `graph_notifications`), then
1. paced load: POSTs valid change notifications at --rate per second for --seconds, reporting the
   achieved rate and p50/p99 latency (the floor is p99 < 300 ms at 100/s on 2 cores);
2. saturation: as fast as --concurrency clients can, notifications per second;
3. raw puts: the same number of messages put with the async Storage SDK at the same concurrency,
   with the app's client options and with the SDK's defaults; the ratio of 2 to 3 is the webhook's
   overhead (the goal is within 30%). CPU per notification of the dev host process, of the load
   generator and of Azurite, and per put of this process, show where the difference goes: on 2
   cores the load generator, the dev host and Azurite share the machine during 2, only this process
   and Azurite during 3. So the load generator is a minimal HTTP/1.1 keep-alive client on asyncio
   streams (`RawClient`, ~0.05 ms of CPU per POST) rather than httpx (~0.5 ms), which would
   otherwise take a third of the machine from the webhook it measures;
4. cold import time of function_app (median of 5 fresh interpreters), and without azure.functions.
Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
from azure.core.exceptions import ResourceExistsError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import HostProcess, intake_host  # noqa: E402
from shared.domain.clientstate import ClientStateSigner  # noqa: E402
from tests.support.azurite import free_port, start_azurite  # noqa: E402

TENANT = "00000000-0000-0000-0000-0000000000aa"
KEYS = "1:bench-client-state-key-0123456789"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] if ordered else float("nan")


def notification_body(signer: ClientStateSigner, batch: int) -> bytes:
    items = []
    for _ in range(batch):
        user = str(uuid.uuid4())
        mid = "AAMk" + uuid.uuid4().hex
        items.append({"subscriptionId": str(uuid.uuid4()), "subscriptionExpirationDateTime": "2026-12-01T00:00:00Z",
                      "changeType": "created", "resource": f"Users/{user}/Messages/{mid}",
                      "resourceData": {"@odata.type": "#Microsoft.Graph.Message", "id": mid},
                      "clientState": signer.sign(TENANT, user), "tenantId": TENANT})
    return json.dumps({"value": items}).encode()


def start_host(connection: str, port: int) -> HostProcess:
    return intake_host(connection, KEYS, "graph_notifications", port, log_level="WARNING")


class RawClient:
    """POSTs over `connections` keep-alive HTTP/1.1 connections with asyncio streams: the cheapest
    load generator that still speaks real HTTP to the dev host (one request in flight per connection)."""

    def __init__(self, url: str, connections: int) -> None:
        parsed = httpx.URL(url)
        self.host, self.port, self.path = parsed.host, parsed.port, parsed.raw_path.decode()
        self.size = connections
        self._idle: asyncio.Queue = asyncio.Queue()
        self._opened = 0

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._idle.empty() and self._opened < self.size:
            self._opened += 1
            return await asyncio.open_connection(self.host, self.port)
        return await self._idle.get()

    async def post(self, body: bytes) -> int:
        reader, writer = await self._connection()
        writer.write(b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % (self.path.encode(), self.host.encode(), self.port, len(body))
                     + body)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length:
            await reader.readexactly(length)
        self._idle.put_nowait((reader, writer))
        return status

    async def close(self) -> None:
        while not self._idle.empty():
            _, writer = self._idle.get_nowait()
            writer.close()


async def paced(url: str, signer: ClientStateSigner, rate: float, seconds: float, batch: int) -> dict:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    total = int(rate * seconds)
    client = RawClient(url, 64)
    try:
        async def one(body: bytes) -> None:
            t = time.perf_counter()
            status = await client.post(body)
            latencies.append((time.perf_counter() - t) * 1000)
            statuses[status] = statuses.get(status, 0) + 1
        bodies = [notification_body(signer, batch) for _ in range(total)]
        start = time.perf_counter()
        tasks = []
        for i, body in enumerate(bodies):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(body)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    finally:
        await client.close()
    return {"sent": total, "achieved_per_s": total / elapsed, "p50_ms": pct(latencies, 50),
            "p99_ms": pct(latencies, 99), "max_ms": max(latencies), "statuses": statuses}


async def saturate(url: str, signer: ClientStateSigner, count: int, concurrency: int, batch: int) -> dict:
    latencies: list[float] = []
    bodies = [notification_body(signer, batch) for _ in range(count)]
    client = RawClient(url, concurrency)
    try:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for b in bodies:
            queue.put_nowait(b)

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                t = time.perf_counter()
                status = await client.post(body)
                assert status == 202, status
                latencies.append((time.perf_counter() - t) * 1000)
        start, cpu = time.perf_counter(), _cpu()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - start, _cpu() - cpu
    finally:
        await client.close()
    return {"notifications_per_s": count * batch / elapsed, "p50_ms": pct(latencies, 50), "p99_ms": pct(latencies, 99),
            "load_generator_cpu_ms_per_notification": cpu * 1000 / (count * batch)}


async def raw_puts(connection: str, count: int, concurrency: int, app_options: bool = True) -> dict:
    """Puts straight from this process: with the app's client options (shared/adapters/
    storage_clients.py), or with the SDK's defaults (aiohttp reading proxies and ~/.netrc per request)."""
    from azure.storage.queue import TextBase64EncodePolicy
    from azure.storage.queue.aio import QueueClient
    from shared.adapters.storage_clients import transport_options
    client = QueueClient.from_connection_string(connection, "bench-raw", message_encode_policy=TextBase64EncodePolicy(),
                                                **(transport_options() if app_options else {}))
    with contextlib.suppress(ResourceExistsError):
        await client.create_queue()
    latencies: list[float] = []
    remaining = list(range(count))
    payload = json.dumps({"v": 1, "kind": "message", "mailbox_id": str(uuid.uuid4()), "message_id": "AAMk" + "x" * 120,
                          "correlation_id": uuid.uuid4().hex})

    async def worker() -> None:
        while remaining:
            remaining.pop()
            t = time.perf_counter()
            await client.send_message(payload)
            latencies.append((time.perf_counter() - t) * 1000)
    start, cpu = time.perf_counter(), _cpu()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - start, _cpu() - cpu
    await client.close()
    return {"puts_per_s": count / elapsed, "p50_ms": pct(latencies, 50), "p99_ms": pct(latencies, 99),
            "cpu_ms_per_put": cpu * 1000 / count}


def _cpu(pid: int | None = None) -> float:
    """CPU seconds (user + system) of a process, this one by default."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cold_import(runs: int = 5) -> dict:
    """Median import time of function_app in fresh interpreters: all of it, and what is left once
    azure.functions is loaded (the Python worker imports that itself before it loads the app)."""
    code = ("import time,sys; {pre}t=time.perf_counter(); import function_app; "
            "print(time.perf_counter()-t, 'msgraph' in sys.modules)")
    out_doc: dict = {}
    for name, pre in (("median_ms", ""), ("after_azure_functions_median_ms", "import azure.functions; ")):
        times, msgraph = [], False
        for _ in range(runs):
            out = subprocess.run([sys.executable, "-c", code.format(pre=pre)], cwd=ROOT, capture_output=True,
                                 text=True, check=True)
            seconds, loaded = out.stdout.split()
            times.append(float(seconds) * 1000)
            msgraph = msgraph or loaded == "True"
        out_doc[name] = statistics.median(times)
        out_doc["imports_msgraph"] = out_doc.get("imports_msgraph", False) or msgraph
    return out_doc


def _rounded(value):
    if isinstance(value, float):
        return round(value, 2)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=100)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--saturate", type=int, default=2000, help="notifications in the saturation phase")
    ap.add_argument("--batch", type=int, default=1, help="notifications per POST")
    args = ap.parse_args()
    signer = ClientStateSigner({1: KEYS.split(":", 1)[1].encode()})
    azurite = start_azurite()
    port = free_port()
    host = start_host(azurite.connection_string, port)
    url = f"http://127.0.0.1:{port}/api/notifications"
    try:
        asyncio.run(saturate(url, signer, 200, 8, 1))  # warm-up: first clients, queue creation
        results = {"paced": asyncio.run(paced(url, signer, args.rate, args.seconds, args.batch))}
        host_cpu, azurite_cpu = _cpu(host.pid), _cpu(azurite.process.pid)
        results["saturation"] = asyncio.run(saturate(url, signer, args.saturate, args.concurrency, args.batch))
        puts = args.saturate * args.batch
        results["saturation"]["host_cpu_ms_per_notification"] = (_cpu(host.pid) - host_cpu) * 1000 / puts
        results["saturation"]["azurite_cpu_ms_per_notification"] = (_cpu(azurite.process.pid) - azurite_cpu) * 1000 / puts
        azurite_cpu = _cpu(azurite.process.pid)
        results["raw_queue_puts"] = asyncio.run(raw_puts(azurite.connection_string, puts, args.concurrency))
        results["raw_queue_puts"]["azurite_cpu_ms_per_put"] = (_cpu(azurite.process.pid) - azurite_cpu) * 1000 / puts
        results["raw_queue_puts_sdk_defaults"] = asyncio.run(
            raw_puts(azurite.connection_string, puts, args.concurrency, app_options=False))
        results["cold_import"] = cold_import()
        results["webhook_vs_raw_ratio"] = (results["saturation"]["notifications_per_s"]
                                           / results["raw_queue_puts"]["puts_per_s"])
        results["webhook_vs_raw_sdk_defaults_ratio"] = (results["saturation"]["notifications_per_s"]
                                                        / results["raw_queue_puts_sdk_defaults"]["puts_per_s"])
        print(json.dumps(_rounded(results), indent=2))
    finally:
        host.stop()
        azurite.stop()


if __name__ == "__main__":
    main()
