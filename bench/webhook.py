"""Benchmark: the webhook's intake rate and latency against raw Storage queue puts, same run.

    .venv/bin/python bench/webhook.py [--rate 100] [--seconds 10] [--concurrency 16] [--batch 1]

Starts Azurite and the dev host (in its own process, only `graph_notifications`), then
1. paced load: POSTs valid change notifications at --rate per second for --seconds, reporting the
   achieved rate and p50/p99 latency (the floor is p99 < 300 ms at 100/s on 2 cores);
2. saturation: as fast as --concurrency clients can, notifications per second;
3. raw puts: the same number of messages put with the async Storage SDK at the same concurrency;
   the ratio of 2 to 3 is the webhook's overhead (the goal is within 30%);
4. cold import time of function_app (median of 5 fresh interpreters).
Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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


def start_host(connection: str, port: int) -> subprocess.Popen:
    env = dict(os.environ, AzureWebJobsStorage=connection, CLIENT_STATE_KEYS=KEYS, GRAPH_CLIENTS="{}",
               FUNCTIONS_WORKER_RUNTIME="python", RENEW_SCHEDULE="0 */30 * * * *", SWEEP_SCHEDULE="0 */10 * * * *",
               PURGE_SCHEDULE="0 0 3 * * *")
    settings = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-settings-{port}.json"
    settings.write_text(json.dumps({"IsEncrypted": False, "Values": {}}))
    proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / "devhost.py"), "--port", str(port),
                             "--only", "graph_notifications", "--disable-timers", "--log-level", "WARNING",
                             "--settings", str(settings)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        proc.kill()
        raise SystemExit(f"dev host did not start: {line!r}")
    return proc


async def paced(url: str, signer: ClientStateSigner, rate: float, seconds: float, batch: int) -> dict:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    total = int(rate * seconds)
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as client:
        async def one(body: bytes) -> None:
            t = time.perf_counter()
            r = await client.post(url, content=body, headers={"Content-Type": "application/json"})
            latencies.append((time.perf_counter() - t) * 1000)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
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
    return {"sent": total, "achieved_per_s": total / elapsed, "p50_ms": pct(latencies, 50),
            "p99_ms": pct(latencies, 99), "max_ms": max(latencies), "statuses": statuses}


async def saturate(url: str, signer: ClientStateSigner, count: int, concurrency: int, batch: int) -> dict:
    latencies: list[float] = []
    bodies = [notification_body(signer, batch) for _ in range(count)]
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for b in bodies:
            queue.put_nowait(b)

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                t = time.perf_counter()
                r = await client.post(url, content=body, headers={"Content-Type": "application/json"})
                assert r.status_code == 202, r.status_code
                latencies.append((time.perf_counter() - t) * 1000)
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {"notifications_per_s": count * batch / elapsed, "p50_ms": pct(latencies, 50), "p99_ms": pct(latencies, 99)}


async def raw_puts(connection: str, count: int, concurrency: int) -> dict:
    from azure.storage.queue import TextBase64EncodePolicy
    from azure.storage.queue.aio import QueueClient
    client = QueueClient.from_connection_string(connection, "bench-raw", message_encode_policy=TextBase64EncodePolicy())
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
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    await client.close()
    return {"puts_per_s": count / elapsed, "p50_ms": pct(latencies, 50), "p99_ms": pct(latencies, 99)}


def cold_import(runs: int = 5) -> dict:
    code = ("import time,sys; t=time.perf_counter(); import function_app; "
            "print(time.perf_counter()-t, 'msgraph' in sys.modules)")
    times, msgraph = [], False
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
        seconds, loaded = out.stdout.split()
        times.append(float(seconds) * 1000)
        msgraph = msgraph or loaded == "True"
    return {"median_ms": statistics.median(times), "min_ms": min(times), "imports_msgraph": msgraph}


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
        results = {
            "paced": asyncio.run(paced(url, signer, args.rate, args.seconds, args.batch)),
            "saturation": asyncio.run(saturate(url, signer, args.saturate, args.concurrency, args.batch)),
            "raw_queue_puts": asyncio.run(raw_puts(azurite.connection_string, args.saturate * args.batch,
                                                   args.concurrency)),
            "cold_import": cold_import(),
        }
        results["webhook_vs_raw_ratio"] = (results["saturation"]["notifications_per_s"]
                                           / results["raw_queue_puts"]["puts_per_s"])
        print(json.dumps(_rounded(results), indent=2))
    finally:
        host.terminate()
        host.wait(10)
        azurite.stop()


if __name__ == "__main__":
    main()
