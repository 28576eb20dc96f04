"""Start a real Azurite (from tools/azurite/node_modules) on free ports for the tests.

In memory by default; `location=` gives on-disk persistence (restart tests).  Set
AZURITE_CONNECTION to use an Azurite you started yourself instead.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / "tools" / "azurite" / "node_modules" / ".bin" / "azurite"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connection_string(blob: int, queue: int, table: int) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};"
            f"BlobEndpoint=http://127.0.0.1:{blob}/devstoreaccount1;"
            f"QueueEndpoint=http://127.0.0.1:{queue}/devstoreaccount1;"
            f"TableEndpoint=http://127.0.0.1:{table}/devstoreaccount1;")


@dataclass
class Azurite:
    blob_port: int
    queue_port: int
    table_port: int
    location: str | None = None
    process: subprocess.Popen | None = None

    @property
    def connection_string(self) -> str:
        return connection_string(self.blob_port, self.queue_port, self.table_port)

    def start(self) -> "Azurite":
        if not BINARY.exists():
            raise RuntimeError(f"Azurite is not installed at {BINARY}: run `npm ci --prefix tools/azurite`")
        args = [str(BINARY), "--silent", "--loose", "--skipApiVersionCheck", "--disableTelemetry",
                "--blobPort", str(self.blob_port), "--queuePort", str(self.queue_port),
                "--tablePort", str(self.table_port)]
        args += ["--location", self.location] if self.location else ["--inMemoryPersistence"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        for port in (self.blob_port, self.queue_port, self.table_port):
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError("Azurite exited: " + (self.process.stderr.read() or b"").decode()[-2000:])
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"Azurite did not listen on port {port} within 30 s")
                    time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def wipe(self) -> None:
        if self.location:
            shutil.rmtree(self.location, ignore_errors=True)


def start_azurite(location: str | None = None) -> Azurite:
    """Azurite on three free ports. A free port is free only until someone takes it: when another
    process on the machine took one between the probe and Azurite's listen, try new ports."""
    for attempt in range(5):
        try:
            return Azurite(free_port(), free_port(), free_port(), location).start()
        except RuntimeError as exc:
            if "EADDRINUSE" not in str(exc) or attempt == 4:
                raise
    raise AssertionError("unreachable")


def external_connection() -> str | None:
    return os.environ.get("AZURITE_CONNECTION") or None
