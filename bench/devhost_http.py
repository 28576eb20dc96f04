"""Benchmark: HTTP throughput and latency of the dev host itself, for a trivial function.

    .venv/bin/python bench/devhost_http.py [--seconds 1.5]

Starts Azurite and the dev host on the tests' sample app (tests/devhost/sample_app) and measures one,
then four keep-alive clients against `GET /api/secure`. Prints figures; asserts nothing (it was a
test with a req/s floor, which failed on a loaded machine: a time is a figure, not a verdict).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.azurite import start_azurite  # noqa: E402
from tools.devhost import DevHost  # noqa: E402

SAMPLE_APP = ROOT / "tests" / "devhost" / "sample_app"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5)
    args = parser.parse_args()
    azurite = start_azurite()
    settings = {"AzureWebJobsStorage": azurite.connection_string, "FUNCTIONS_WORKER_RUNTIME": "python",
                "WORK_QUEUE": "work", "DONE_QUEUE": "done", "RAW_QUEUE": "raw", "SLOW_QUEUE": "slow",
                "TICK_SCHEDULE": "0 0 0 1 1 *"}
    host = DevHost(SAMPLE_APP, settings).start()
    try:
        url = f"{host.url}/api/secure"
        for clients in (1, 4):
            rps, lat = _measure(url, clients, args.seconds)
            print(f"devhost HTTP, {clients} keep-alive client(s): {rps:.0f} req/s, "
                  f"p50 {_p(lat, 0.5):.1f} ms, p99 {_p(lat, 0.99):.1f} ms, max {lat[-1] * 1000:.1f} ms, "
                  f"mean {statistics.mean(lat) * 1000:.1f} ms")
    finally:
        host.stop()
        azurite.stop()


if __name__ == "__main__":
    main()
