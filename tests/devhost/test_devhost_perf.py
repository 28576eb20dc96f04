"""HTTP throughput and latency of the dev host for a trivial function (prints the figures; run with -s)."""
from __future__ import annotations

import statistics
import threading
import time

import httpx

from tools.devhost import DevHost


def _measure(url: str, clients: int, seconds: float) -> tuple[float, list[float]]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def run() -> None:
        mine = []
        with httpx.Client() as client:
            client.get(url)   # connect outside the measurement
            while time.monotonic() < stop:
                t = time.perf_counter()
                r = client.get(url)
                mine.append(time.perf_counter() - t)
                assert r.status_code == 200
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(latencies) / (time.monotonic() - t0), sorted(latencies)


def _p(latencies: list[float], q: float) -> float:
    return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000


def test_http_throughput_and_latency(devhost: DevHost):
    url = f"{devhost.url}/api/secure"
    for clients in (1, 4):
        rps, lat = _measure(url, clients, 1.5)
        print(f"\ndevhost HTTP, {clients} keep-alive client(s): {rps:.0f} req/s, "
              f"p50 {_p(lat, 0.5):.1f} ms, p99 {_p(lat, 0.99):.1f} ms, max {lat[-1] * 1000:.1f} ms, "
              f"mean {statistics.mean(lat) * 1000:.1f} ms")
        assert rps >= 200, f"{rps:.0f} req/s"
        assert _p(lat, 0.99) < 100, f"p99 {_p(lat, 0.99):.1f} ms"
