"""Fixtures for the dev host tests: the sample app, per-test queue names, a running DevHost."""
from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

from tools.devhost import DevHost

SAMPLE_APP = Path(__file__).resolve().parent / "sample_app"


@pytest.fixture
def names(unique: str) -> dict[str, str]:
    return {"WORK_QUEUE": f"work{unique}", "DONE_QUEUE": f"done{unique}", "RAW_QUEUE": f"raw{unique}",
            "SLOW_QUEUE": f"slow{unique}", "TICK_SCHEDULE": "0 0 0 1 1 *"}


@pytest.fixture
def settings(azurite_connection: str, names: dict[str, str]) -> dict[str, str]:
    return {"AzureWebJobsStorage": azurite_connection, "FUNCTIONS_WORKER_RUNTIME": "python", **names}


@pytest.fixture
def start_host(settings):
    """Factory: start_host(**overrides) -> started DevHost on the sample app; stopped after the test."""
    hosts: list[DevHost] = []

    def start(extra_settings: dict[str, str] | None = None, **kwargs) -> DevHost:
        host = DevHost(kwargs.pop("app_dir", SAMPLE_APP), {**settings, **(extra_settings or {})}, **kwargs)
        hosts.append(host)
        return host.start()

    yield start
    for host in reversed(hosts):
        host.stop()


@pytest.fixture
def devhost(start_host) -> DevHost:
    return start_host()


def raw_queue(connection: str, name: str) -> QueueClient:
    """A client that reads and writes message text exactly as stored (no encode/decode policy)."""
    return QueueClient.from_connection_string(connection, name)


def b64_queue(connection: str, name: str) -> QueueClient:
    """A client that writes base64 like the Functions host expects."""
    return QueueClient.from_connection_string(connection, name, message_encode_policy=TextBase64EncodePolicy())


def drain_raw(connection: str, name: str, count: int, timeout: float = 10.0) -> list[str]:
    """Receive and delete `count` messages (raw text) from a queue, waiting for them to arrive."""
    client = raw_queue(connection, name)
    found: list[str] = []
    deadline = time.monotonic() + timeout
    while len(found) < count:
        try:
            messages = list(client.receive_messages(max_messages=32, visibility_timeout=30))
        except Exception:
            messages = []
        for m in messages:
            found.append(m.content)
            client.delete_message(m)
        if len(found) >= count:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"queue {name}: {len(found)} of {count} messages after {timeout}s")
        time.sleep(0.05)
    return found


def b64decode_text(text: str) -> str:
    return base64.b64decode(text, validate=True).decode("utf-8")


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)


def queue_empty(connection: str, name: str) -> bool:
    props = raw_queue(connection, name).get_queue_properties()
    return props.approximate_message_count == 0
