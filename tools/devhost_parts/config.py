"""Settings, host.json and binding-expression handling for the dev host."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

DEVSTORE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
                "K1SZFPTOtr/KBHBeksoGMGw==")


class DevHostError(Exception):
    """Start-up (indexing/configuration) failure, with a message naming what is wrong."""


# --------------------------------------------------------------------------- TimeSpan
_TIMESPAN = re.compile(r"^(?:(?P<d>\d+)\.)?(?P<h>\d{1,2}):(?P<m>\d{1,2})(?::(?P<s>\d{1,2})(?:\.(?P<f>\d{1,7}))?)?$")


def parse_timespan(value: Any, what: str) -> float:
    """Parse a .NET TimeSpan string ("hh:mm:ss[.fffffff]", "d.hh:mm:ss") into seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = _TIMESPAN.match(str(value).strip()) if value is not None else None
    if not match:
        raise DevHostError(f"host.json: {what} = {value!r} is not a TimeSpan (expected hh:mm:ss)")
    seconds = (int(match["d"] or 0) * 86400 + int(match["h"]) * 3600 + int(match["m"]) * 60
               + int(match["s"] or 0))
    if match["f"]:
        seconds += int(match["f"]) / (10 ** len(match["f"]))
    return float(seconds)


# --------------------------------------------------------------------------- host.json
@dataclass(frozen=True)
class QueueOptions:
    batch_size: int = 16
    new_batch_threshold: int = 8
    max_polling_interval: float = 2.0       # Core Tools (development) default; Azure's is 1 min
    visibility_timeout: float = 0.0
    max_dequeue_count: int = 5
    message_encoding: str = "base64"        # "base64" | "none"

    @property
    def max_in_flight(self) -> int:
        return self.batch_size + self.new_batch_threshold


@dataclass(frozen=True)
class HostConfig:
    queues: QueueOptions = field(default_factory=QueueOptions)
    function_timeout: float | None = None
    route_prefix: str = "api"
    functions: tuple[str, ...] | None = None   # host.json "functions": load only these


def _ci(mapping: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """Case-insensitive lookup (.NET configuration keys are case-insensitive)."""
    if not isinstance(mapping, Mapping):
        return default
    for k, v in mapping.items():
        if k.lower() == key.lower():
            return v
    return default


def load_host_json(app_dir: Path) -> HostConfig:
    path = Path(app_dir) / "host.json"
    if not path.exists():
        return HostConfig()
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except ValueError as exc:
        raise DevHostError(f"host.json is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DevHostError("host.json must hold a JSON object")
    extensions = _ci(data, "extensions", {}) or {}
    q = _ci(extensions, "queues", {}) or {}

    batch_size = int(_ci(q, "batchSize", 16))
    if not 1 <= batch_size <= 32:
        raise DevHostError(f"host.json: extensions.queues.batchSize must be 1..32, got {batch_size}")
    threshold = _ci(q, "newBatchThreshold")
    threshold = batch_size // 2 if threshold is None else int(threshold)
    if threshold < 0:
        raise DevHostError("host.json: extensions.queues.newBatchThreshold must be >= 0")
    polling = parse_timespan(_ci(q, "maxPollingInterval", 2.0), "extensions.queues.maxPollingInterval")
    polling = max(polling, 0.1)  # the host's minimum is 100 ms
    visibility = parse_timespan(_ci(q, "visibilityTimeout", 0.0), "extensions.queues.visibilityTimeout")
    max_dequeue = int(_ci(q, "maxDequeueCount", 5))
    if max_dequeue < 1:
        raise DevHostError("host.json: extensions.queues.maxDequeueCount must be >= 1")
    encoding = str(_ci(q, "messageEncoding", "base64")).lower()
    if encoding not in ("base64", "none"):
        raise DevHostError(f"host.json: extensions.queues.messageEncoding must be base64 or none, got {encoding!r}")

    timeout_raw = _ci(data, "functionTimeout")
    timeout = None
    if timeout_raw not in (None, "-1", -1):
        timeout = parse_timespan(timeout_raw, "functionTimeout")

    http = _ci(extensions, "http", {}) or {}
    prefix = _ci(http, "routePrefix")
    prefix = "api" if prefix is None else str(prefix).strip("/")

    functions = _ci(data, "functions")
    if functions is not None:
        functions = tuple(str(f) for f in functions)

    return HostConfig(
        queues=QueueOptions(batch_size, threshold, polling, visibility, max_dequeue, encoding),
        function_timeout=timeout, route_prefix=prefix, functions=functions)


# --------------------------------------------------------------------------- settings
def load_settings_file(path: Path) -> dict[str, str]:
    """The `Values` of a local.settings.json (every value must be a string, as Core Tools demands)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise DevHostError(f"settings file not found: {path}") from None
    except ValueError as exc:
        raise DevHostError(f"settings file {path} is not valid JSON: {exc}") from None
    values = data.get("Values") or {}
    if not isinstance(values, dict):
        raise DevHostError(f"{path}: Values must be an object")
    out: dict[str, str] = {}
    for key, value in values.items():
        if not isinstance(value, str):
            raise DevHostError(f"{path}: Values.{key} must be a string (Core Tools rejects other types)")
        out[key] = value
    return out


class EnvPatch:
    """Applies settings to os.environ and can undo exactly what it changed."""

    def __init__(self) -> None:
        self._saved: dict[str, str | None] = {}

    def apply(self, values: Mapping[str, str], override: bool) -> None:
        for key, value in values.items():
            if not override and key in os.environ:
                continue
            if key not in self._saved:
                self._saved[key] = os.environ.get(key)
            os.environ[key] = str(value)

    def restore(self) -> None:
        for key, old in self._saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
        self._saved.clear()


_EXPR = re.compile(r"%([^%\s]+)%")


def resolve_expression(value: str, env: Mapping[str, str], function: str, prop: str) -> str:
    """Resolve `%NAME%` app-setting references; fail naming the setting like host indexing does."""

    def repl(match: re.Match) -> str:
        name = match.group(1)
        if name not in env:
            raise DevHostError(
                f"Error indexing function '{function}': '%{name}%' in '{prop}' does not resolve to a value "
                f"(app setting '{name}' is missing)")
        return env[name]

    return _EXPR.sub(repl, value)


def is_truthy(value: str | None) -> bool:
    return str(value or "").strip().lower() in ("1", "true", "yes")


def storage_connection_string(connection: str | None, env: Mapping[str, str], function: str) -> str:
    """Connection setting name -> connection string (`AzureWebJobsStorage` when empty)."""
    name = connection or "AzureWebJobsStorage"
    candidates = [name] if name.startswith("AzureWebJobs") else [name, f"AzureWebJobs{name}"]
    for candidate in candidates:
        value = env.get(candidate)
        if value:
            return normalise_connection_string(value)
    if any(k.startswith(name + "__") for k in env):
        raise DevHostError(
            f"function '{function}': connection '{name}' is identity-based ({name}__...); the dev host "
            f"only supports connection strings (point it at Azurite with a full connection string)")
    raise DevHostError(
        f"function '{function}': missing value for app setting '{name}' (the storage connection string; "
        f"required for all triggers and bindings other than HTTP)")


def normalise_connection_string(value: str) -> str:
    """Expand `UseDevelopmentStorage=true` to a full Azurite connection string on the default ports."""
    parts = dict(p.split("=", 1) for p in value.strip().strip(";").split(";") if "=" in p)
    if parts.get("UseDevelopmentStorage", "").lower() == "true":
        proxy = parts.get("DevelopmentStorageProxyUri", "http://127.0.0.1").rstrip("/")
        return (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={DEVSTORE_KEY};"
                f"BlobEndpoint={proxy}:10000/devstoreaccount1;QueueEndpoint={proxy}:10001/devstoreaccount1;"
                f"TableEndpoint={proxy}:10002/devstoreaccount1;")
    return value
