"""Indexing: turn `app.get_functions()` into validated function specs, like host + worker indexing."""
from __future__ import annotations

import inspect
import json
import threading
import typing
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import azure.functions as func

from .config import DevHostError, is_truthy, resolve_expression, storage_connection_string
from .ncrontab import Schedule
from .routing import RouteTemplate

RESERVED_ROUTE_PREFIXES = ("admin", "runtime")
SUPPORTED_TRIGGERS = ("httpTrigger", "queueTrigger", "timerTrigger")
_NOT_RESOLVED = ("name", "type", "direction", "connection")
_QUEUE_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-")


@dataclass
class QueueOutputSpec:
    arg_name: str              # parameter name, or "$return"
    queue_name: str
    connection: str            # connection string


@dataclass
class FunctionSpec:
    name: str
    func: Callable[..., Any]
    is_async: bool
    trigger_type: str
    trigger_arg: str
    trigger: dict
    outputs: list[QueueOutputSpec] = field(default_factory=list)
    wants_context: bool = False
    disabled: bool = False
    # HTTP
    route: RouteTemplate | None = None
    methods: frozenset[str] | None = None
    auth_level: str = "function"
    # queue
    queue_name: str | None = None
    connection: str | None = None
    # timer
    schedule: Schedule | None = None
    run_on_startup: bool = False

    @property
    def trigger_kind(self) -> str:
        return {"httpTrigger": "http", "queueTrigger": "queue", "timerTrigger": "timer"}[self.trigger_type]


class Out(func.Out):
    """The worker's output-binding holder: the function calls `set()`, the host reads `get()`."""

    def __init__(self) -> None:
        self._value: Any = None

    def set(self, val: Any) -> None:
        self._value = val

    def get(self) -> Any:
        return self._value


class _TraceContext:
    def __init__(self) -> None:
        self.trace_parent = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
        self.trace_state = ""
        self.attributes: dict[str, str] = {}


class _RetryContext:
    retry_count = 0
    max_retry_count = 0
    exception = None


class Context(func.Context):
    def __init__(self, invocation_id: str, function_name: str, function_directory: str) -> None:
        self._invocation_id = invocation_id
        self._function_name = function_name
        self._function_directory = function_directory
        self._tls = threading.local()
        self._trace = _TraceContext()

    invocation_id = property(lambda self: self._invocation_id)
    function_name = property(lambda self: self._function_name)
    function_directory = property(lambda self: self._function_directory)
    thread_local_storage = property(lambda self: self._tls)
    trace_context = property(lambda self: self._trace)
    retry_context = property(lambda self: _RetryContext())


def _is_out_annotation(annotation: Any) -> bool:
    origin = typing.get_origin(annotation) or annotation
    return isinstance(origin, type) and issubclass(origin, func.Out)


def _validate_queue_name(name: str, function: str) -> None:
    if not (3 <= len(name) <= 63) or not set(name) <= _QUEUE_NAME_CHARS or name[0] == "-" \
            or name[-1] == "-" or "--" in name:
        raise DevHostError(
            f"function '{function}': invalid queue name {name!r} (3-63 lowercase letters, digits, single hyphens)")


def index_functions(app: func.FunctionApp, env: Mapping[str, str], *, only: set[str] | None,
                    app_dir: str) -> list[FunctionSpec]:
    # get_functions() records names to detect duplicates and refuses a second call on the same app
    # object; reset that record so that a re-used module can be indexed again.
    if hasattr(app, "functions_bindings"):
        app.functions_bindings = {}
    try:
        functions = app.get_functions()
    except ValueError as exc:
        raise DevHostError(f"Error indexing function app: {exc}") from None
    names = {f.get_function_name() for f in functions}
    if only:
        unknown = sorted(set(only) - names)
        if unknown:
            raise DevHostError(f"--only names functions that do not exist: {', '.join(unknown)}")
    specs = []
    for fn in functions:
        name = fn.get_function_name()
        if only and name not in only:
            continue
        specs.append(_index_one(fn, name, env, app_dir))
    return specs


def _index_one(fn, name: str, env: Mapping[str, str], app_dir: str) -> FunctionSpec:
    raw = json.loads(fn.get_function_json())
    bindings = raw.get("bindings", [])
    trigger = next((b for b in bindings if str(b.get("type", "")).endswith("Trigger")), None)
    if trigger is None:
        raise DevHostError(f"function '{name}' has no trigger")
    ttype = trigger["type"]
    if ttype not in SUPPORTED_TRIGGERS:
        raise DevHostError(f"function '{name}': trigger type '{ttype}' is not supported by the dev host "
                           f"(supported: {', '.join(SUPPORTED_TRIGGERS)}); exclude it with --only")

    def resolve(binding: dict) -> dict:
        out = dict(binding)
        for key, value in binding.items():
            if key not in _NOT_RESOLVED and isinstance(value, str):
                out[key] = resolve_expression(value, env, name, key)
        return out

    trigger = resolve(trigger)
    user_fn = fn.get_user_function()
    spec = FunctionSpec(name=name, func=user_fn, is_async=inspect.iscoroutinefunction(user_fn),
                        trigger_type=ttype, trigger_arg=trigger["name"], trigger=trigger)
    spec.disabled = is_truthy(env.get(f"AzureWebJobs.{name}.Disabled"))

    # Parameters must match bindings, as the Python worker checks when it loads a function.
    sig = inspect.signature(user_fn)
    params = dict(sig.parameters)
    spec.wants_context = "context" in params and not any(b.get("name") == "context" for b in bindings)
    binding_names = {b["name"] for b in bindings if b.get("name") != "$return"}
    declared = set(params) - ({"context"} if spec.wants_context else set())
    missing = declared - binding_names
    if missing:
        raise DevHostError(f"cannot load the {name} function: the following parameters are declared in "
                           f"Python but not as bindings: {sorted(missing)}")
    unbound = binding_names - declared
    if unbound:
        raise DevHostError(f"cannot load the {name} function: the following bindings have no parameter "
                           f"in Python: {sorted(unbound)}")

    for b in bindings:
        if str(b.get("type", "")).endswith("Trigger"):
            continue
        btype, direction = b.get("type"), str(b.get("direction", "")).upper()
        if btype == "http" and direction == "OUT" and ttype == "httpTrigger":
            continue
        if btype == "queue" and direction == "OUT":
            rb = resolve(b)
            _validate_queue_name(rb["queueName"], name)
            if rb["name"] != "$return":
                anno = params[rb["name"]].annotation
                if anno is not inspect.Parameter.empty and not _is_out_annotation(anno):
                    raise DevHostError(
                        f"cannot load the {name} function: binding {rb['name']} is declared to have the 'out' "
                        f"direction, but its annotation in Python is not a subclass of azure.functions.Out")
            spec.outputs.append(QueueOutputSpec(rb["name"], rb["queueName"],
                                                storage_connection_string(rb.get("connection"), env, name)))
            continue
        raise DevHostError(f"function '{name}': binding type '{btype}' ({direction}) is not supported by the "
                           f"dev host; exclude it with --only")

    if ttype == "httpTrigger":
        route = str(trigger.get("route") or name)
        if route.strip("/").lower().startswith(RESERVED_ROUTE_PREFIXES):
            raise DevHostError(
                f"function '{name}': the specified route '{route}' conflicts with one or more built in routes "
                f"(the host reserves routes starting with 'admin' and 'runtime')")
        spec.route = RouteTemplate(route, name)
        methods = trigger.get("methods")
        spec.methods = frozenset(str(m).upper() for m in methods) if methods else None
        spec.auth_level = str(trigger.get("authLevel") or "function").lower()
        if spec.auth_level not in ("anonymous", "function", "admin"):
            raise DevHostError(f"function '{name}': unknown authLevel {spec.auth_level!r}")
    elif ttype == "queueTrigger":
        spec.queue_name = trigger["queueName"]
        _validate_queue_name(spec.queue_name, name)
        spec.connection = storage_connection_string(trigger.get("connection"), env, name)
    else:
        try:
            spec.schedule = Schedule(str(trigger["schedule"]))
        except DevHostError as exc:
            raise DevHostError(f"function '{name}': the schedule expression was not recognized as a valid "
                               f"cron expression or timespan string: {exc}") from None
        spec.run_on_startup = bool(trigger.get("runOnStartup"))
    return spec
