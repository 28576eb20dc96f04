"""What the pipeline and memory benchmarks share: the simulators, dev host processes, process figures.

Everything is real and local: Azurite (tests/support/azurite.py), the Graph, Lime and TRAML
simulators (tools/sim/, in this process, so the benchmark reads their request logs directly) and
the function app in `tools/devhost.py` subprocesses (their CPU time and memory are what is
measured, apart from the simulators and Azurite). A dev host's log goes to
$TMPDIR/bench-devhost-<port>.log. BENCH_DEVHOST_SCRIPT names a script to run instead of
tools/devhost.py with the same arguments (a profiler wrapped around it, an older checkout).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.azurite import Azurite, free_port, start_azurite  # noqa: E402
from tests.support.stack import CLIENT_ID, SECRET, TENANT, app_settings, stop_all  # noqa: E402
from tools.sim.graph import GraphSim  # noqa: E402
from tools.sim.lime import DEMO_API_KEY as LIME_KEY, LimeSim  # noqa: E402
from tools.sim.traml import DEMO_API_KEY as TRAML_KEY, TramlSim  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
TEMPLATE = "Helpdesk autoreply"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] if ordered else float("nan")


def rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 2)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of a process (this one by default) from /proc."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak since start or the last reset_peak) of a process, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class HostProcess:
    """`tools/devhost.py` serving function_app in its own process."""

    def __init__(self, env: dict[str, str], port: int = 0, log_level: str = "WARNING",
                 only: list[str] | None = None, timers: bool = False) -> None:
        self.port = port or free_port()
        self.env = env
        self.log_level = log_level
        self.only = only
        self.timers = timers
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        self._settings = Path(tempfile.gettempdir()) / f"bench-settings-{self.port}.json"
        self.log_path = Path(tempfile.gettempdir()) / f"bench-devhost-{self.port}.log"

    def start(self) -> "HostProcess":
        self._settings.write_text(json.dumps({"IsEncrypted": False, "Values": {}}))
        args = [sys.executable, os.environ.get("BENCH_DEVHOST_SCRIPT") or str(ROOT / "tools" / "devhost.py"), "--port", str(self.port), "--log-level",
                self.log_level, "--settings", str(self._settings)]
        if not self.timers:
            args.append("--disable-timers")
        if self.only:
            args += ["--only", ",".join(self.only)]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **self.env}, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            self.stop()
            raise SystemExit(f"dev host did not start: {line!r}; see {self.log_path}")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()
        self._settings.unlink(missing_ok=True)


def intake_host(connection: str, client_state_keys: str, function: str, port: int = 0,
                log_level: str = "WARNING") -> HostProcess:
    """A started dev host serving one intake function (`graph_notifications`, `graph_lifecycle`) with no
    Graph client and no timers: what the intake benchmarks measure, alone in its process."""
    env = {"AzureWebJobsStorage": connection, "CLIENT_STATE_KEYS": client_state_keys, "GRAPH_CLIENTS": "{}",
           "FUNCTIONS_WORKER_RUNTIME": "python", "RENEW_SCHEDULE": "0 */30 * * * *",
           "SWEEP_SCHEDULE": "0 */10 * * * *", "PURGE_SCHEDULE": "0 0 3 * * *"}
    return HostProcess(env, port, log_level=log_level, only=[function]).start()


@dataclass
class BenchStack:
    """Azurite + Graph/Lime/TRAML simulators + N dev host processes sharing the queues."""

    graph_latency_ms: float = 50
    crm_latency_ms: float = 20
    traml_latency_ms: float = 20
    hosts: int = 1
    throttle: dict[str, Any] | None = None
    autoreply: bool = True
    extra_settings: dict[str, str] = field(default_factory=dict)
    seed: int = 8
    crm: str = "lime"  # or "table": the embedded CRM in Azurite

    def start(self) -> "BenchStack":
        self.azurite: Azurite = start_azurite()
        self.graph = GraphSim(latency_ms=self.graph_latency_ms, seed=self.seed).start()
        self.graph.add_app(TENANT, CLIENT_ID, secret=SECRET, permissions={"Mail.ReadWrite", "User.Read.All"})
        self.lime = LimeSim(latency_ms=self.crm_latency_ms).start()
        self.traml = TramlSim(latency_ms=self.traml_latency_ms).start()
        self.traml.add_template(TEMPLATE, "<p>Ticket $$helpdesknumber$$</p>", "Ticket $$helpdesknumber$$")
        port = free_port()
        env = app_settings(self.azurite.connection_string, self.graph, f"http://127.0.0.1:{port}",
                           CRM_BACKEND=self.crm, LIME_CRM_URL=self.lime.lime_url, LIME_CRM_API_KEY=LIME_KEY,
                           TRAML_BASE_URL=self.traml.api_url, TRAML_API_KEY=TRAML_KEY, **self.extra_settings)
        self.env = env
        self.processes = [HostProcess(env, port).start()]
        for _ in range(self.hosts - 1):
            self.processes.append(HostProcess(env).start())
        self.http = httpx.Client(base_url=self.processes[0].url, timeout=60)
        if self.throttle is not None:
            self.graph.throttle(**self.throttle)
        return self

    def add_mailbox(self, address: str, **settings: Any) -> str:
        """Register the mailbox through the manage API; `settings`: more of its fields (store_original...)."""
        self.graph.add_mailbox(address, tenant_id=TENANT)
        body: dict[str, Any] = {"address": address, "client": "demo"}
        if self.autoreply:
            body["autoreply"] = {"enabled": True, "template": TEMPLATE, "from_name": "Support"}
        body.update(settings)
        resp = self.http.post("/api/manage/mailboxes", json=body)
        if resp.status_code != 201:
            raise SystemExit(f"registering {address} failed: {resp.status_code} {resp.text}")
        return resp.json()["id"]

    def storage_ops(self) -> dict[str, int] | None:
        """Storage requests by kind so far, summed over the dev host processes: the app's
        ("table ledger update" ...) and the host's own queue traffic ("host inbox-messages get" ...).
        None when a host does not report them (an older checkout's dev host)."""
        total: Counter[str] = Counter()
        for p in self.processes:
            resp = httpx.get(f"{p.url}/admin/devhost/storage-ops", timeout=10)
            if resp.status_code != 200:
                return None
            doc = resp.json()
            total.update(doc.get("app") or {})
            total.update({f"host {k}": v for k, v in (doc.get("host") or {}).items()})
        return dict(total)

    def host_cpu(self) -> float:
        return sum(p.cpu() for p in self.processes)

    def azurite_cpu(self) -> float:
        return cpu_seconds(self.azurite.process.pid)

    def stop(self) -> None:
        stop_all(getattr(self, "http", None), *getattr(self, "processes", []),
                 *(getattr(self, name, None) for name in ("graph", "lime", "traml", "azurite")))

    def __enter__(self) -> "BenchStack":
        try:
            return self.start()
        except BaseException:
            self.stop()  # what did start (Azurite, simulators, hosts) must not outlive the run
            raise

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def wait_for(predicate, timeout: float, interval: float = 0.25, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout:.0f} s")
