"""One trace per mail: the correlation id on every log line and span, and the app's metrics.

- `job_scope(job, operation)`: the unit of work of one queue job (one mail, one autoreply). Sets a
  context variable with the job's correlation id (born at the webhook, the sweep or a recovery and
  carried in the queue envelope), opens a span, and makes every log record of an `inbox.*` logger
  written meanwhile carry it: as attributes (`correlation_id`, `message_id`, `mailbox_id`: custom
  dimensions in Application Insights) and, when the line does not already say it, as a trailing
  ` correlation=<id>` (the Functions host forwards only the message text). asyncio tasks started
  inside inherit the context.
- The logging filter is installed lazily, by the first scope, on the `inbox.*` loggers (never at
  import, never on the root logger or its handlers); loggers created later get it at the next scope.
- `configure(settings)`: with APPLICATIONINSIGHTS_CONNECTION_STRING set, the Azure Monitor
  OpenTelemetry distribution is imported (lazily: nothing of it is imported otherwise) and
  configured once per worker; traces, the `inbox.*` logs and the metrics below go to Application
  Insights. Without it every function here is a cheap no-op. When something else already installed
  the OpenTelemetry SDK in this process (the Python worker does with
  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY), it is used as it is, never configured twice.
- Trace context, the Functions way: host.json `telemetryMode: OpenTelemetry` makes the host trace
  each invocation, and PYTHON_ENABLE_OPENTELEMETRY=true (an app setting, infra/) makes the Python
  worker attach that invocation's W3C trace context before it calls the function. The job's span
  below therefore starts as a child of the host's invocation span, and log records written in it
  carry the same operation id: host request, app spans and `inbox.*` lines form one trace, and the
  correlation id stays on each of them.
- Metrics: `inbox.mails.received|processed|failed|skipped` (counters), `inbox.graph.duration`,
  `inbox.crm.duration`, `inbox.traml.duration` (histograms, ms, per operation and status), and
  `inbox.throttled` (429 answers, per service), `inbox.lifecycle` (Graph lifecycle events, per event
  and outcome: reauthorized, recreated, swept, stale, ignored, retry, failed).

Performs no I/O of its own (the exporter sends in its own threads).
"""
from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterator, Mapping, TypeVar

log = logging.getLogger("inbox.telemetry")
T = TypeVar("T")

# metric names (the README lists them)
MAILS_RECEIVED = "inbox.mails.received"
MAILS_PROCESSED = "inbox.mails.processed"
MAILS_FAILED = "inbox.mails.failed"
MAILS_SKIPPED = "inbox.mails.skipped"
THROTTLED = "inbox.throttled"
LIFECYCLE = "inbox.lifecycle"  # Graph lifecycle events handled, per event and outcome
DURATIONS = {"graph": "inbox.graph.duration", "crm": "inbox.crm.duration", "traml": "inbox.traml.duration"}
_COUNTERS = (MAILS_RECEIVED, MAILS_PROCESSED, MAILS_FAILED, MAILS_SKIPPED, THROTTLED, LIFECYCLE)
LOGGER_PREFIX = "inbox"


@dataclass(frozen=True)
class Scope:
    correlation_id: str
    message_id: str = ""
    mailbox_id: str = ""
    source: str = ""
    operation: str = ""


_scope: ContextVar[Scope | None] = ContextVar("inbox_scope", default=None)


def current() -> Scope | None:
    return _scope.get()


def correlation_id() -> str:
    scope = _scope.get()
    return scope.correlation_id if scope else ""


# logging ---------------------------------------------------------------------------------------
class CorrelationFilter(logging.Filter):
    """Stamps records written inside a job scope with its ids (attributes, and the message text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        scope = _scope.get()
        if scope is None or getattr(record, "correlation_id", None):
            return True
        record.correlation_id = scope.correlation_id
        if scope.message_id and not hasattr(record, "message_id"):
            record.message_id = scope.message_id
        if scope.mailbox_id and not hasattr(record, "mailbox_id"):
            record.mailbox_id = scope.mailbox_id
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is the logging module's to report
            return True
        if f"correlation={scope.correlation_id}" not in text:
            record.msg, record.args = f"{text} correlation={scope.correlation_id}", None
        return True


_FILTER = CorrelationFilter()
_install_lock = threading.Lock()
_loggers_seen = -1


def install_logging() -> None:
    """Put the filter on every `inbox.*` logger that exists (cheap when none was added since)."""
    global _loggers_seen
    loggers = logging.root.manager.loggerDict
    if len(loggers) == _loggers_seen:
        return
    with _install_lock:
        items = list(loggers.items())
        for name, logger in items:
            if isinstance(logger, logging.Logger) and (name == LOGGER_PREFIX or name.startswith(LOGGER_PREFIX + ".")) \
                    and _FILTER not in logger.filters:
                logger.addFilter(_FILTER)
        _loggers_seen = len(items)


@contextlib.contextmanager
def job_scope(job: Any, operation: str) -> Iterator[Scope]:
    """The scope of one queue job: its correlation id on logs and spans, and a span around it."""
    scope = Scope(correlation_id=str(getattr(job, "correlation_id", "") or ""),
                  message_id=str(getattr(job, "message_id", "") or ""),
                  mailbox_id=str(getattr(job, "mailbox_id", "") or ""),
                  source=str(getattr(job, "source", "") or ""), operation=operation)
    install_logging()
    token = _scope.set(scope)
    try:
        with span(operation, kind="consumer"):
            yield scope
    finally:
        _scope.reset(token)


# OpenTelemetry, lazily ---------------------------------------------------------------------------
class _State:
    enabled = False
    configured_for = ""
    error = ""
    tracer: Any = None
    counters: dict[str, Any] = {}
    histograms: dict[str, Any] = {}


_state = _State()
_configure_lock = threading.Lock()


def enabled() -> bool:
    return _state.enabled


def configure(settings: Any) -> bool:
    """Set up the Azure Monitor distribution once per worker when the connection string is set.
    Returns whether telemetry is exported. Never raises: a broken exporter must not stop mail."""
    connection = str(getattr(settings, "appinsights_connection_string", "") or "")
    if not connection or _state.configured_for:
        return _state.enabled
    with _configure_lock:
        if _state.configured_for:
            return _state.enabled
        _state.configured_for = connection
        try:
            if _sdk_installed():
                _instruments()
                _state.enabled = True
                log.info("telemetry.configured exporter=existing (the OpenTelemetry SDK was already set up)")
                return _state.enabled
            from azure.monitor.opentelemetry import configure_azure_monitor
            kwargs: dict[str, Any] = {"connection_string": connection, "logger_name": LOGGER_PREFIX}
            credential = _credential(str(getattr(settings, "appinsights_authentication_string", "") or ""))
            if credential is not None:
                kwargs["credential"] = credential
            configure_azure_monitor(**kwargs)
            _instruments()
            _state.enabled = True
            log.info("telemetry.configured exporter=azure-monitor entra_auth=%s", credential is not None)
        except Exception as exc:  # noqa: BLE001
            _state.error = f"{type(exc).__name__}: {str(exc)[:300]}"
            log.error("telemetry.configure-failed error=%s", _state.error)
    return _state.enabled


def _sdk_installed() -> bool:
    """Whether this process already has an SDK tracer provider (not the API's default proxy)."""
    from opentelemetry import trace
    return type(trace.get_tracer_provider()).__module__.startswith("opentelemetry.sdk")


def _credential(auth: str) -> Any:
    """APPLICATIONINSIGHTS_AUTHENTICATION_STRING `Authorization=AAD[;ClientId=<id>]`: ingestion with
    an Entra token of the app's managed identity (the Bicep disables local auth)."""
    parts = dict(p.split("=", 1) for p in auth.split(";") if "=" in p)
    if parts.get("Authorization", "").upper() != "AAD":
        return None
    from azure.identity import ManagedIdentityCredential
    return ManagedIdentityCredential(client_id=parts.get("ClientId") or None)


def _instruments() -> None:
    from opentelemetry import metrics, trace
    meter = metrics.get_meter("inbox")
    _state.tracer = trace.get_tracer("inbox")
    _state.counters = {name: meter.create_counter(name, unit="1") for name in _COUNTERS}
    _state.histograms = {name: meter.create_histogram(name, unit="ms") for name in DURATIONS.values()}


def flush(timeout_ms: int = 10_000) -> None:
    """Export what is buffered now (tests; shutdown)."""
    if not _state.enabled:
        return
    from opentelemetry import _logs, metrics, trace
    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider(), _logs.get_logger_provider()):
        force = getattr(provider, "force_flush", None)
        if force is not None:
            force(timeout_ms)


def _attributes(extra: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (str, bool, int, float)) else str(v) for k, v in extra.items() if v is not None}


def count(name: str, value: int = 1, **attributes: Any) -> None:
    counter = _state.counters.get(name) if _state.enabled else None
    if counter is not None:
        counter.add(value, _attributes(attributes))


def duration(service: str, milliseconds: float, **attributes: Any) -> None:
    histogram = _state.histograms.get(DURATIONS.get(service, "")) if _state.enabled else None
    if histogram is not None:
        histogram.record(milliseconds, _attributes(attributes))


@contextlib.contextmanager
def span(name: str, kind: str = "internal", **attributes: Any) -> Iterator[Any]:
    """A span carrying the scope's ids; nothing at all when telemetry is off."""
    if not _state.enabled or _state.tracer is None:
        yield None
        return
    from opentelemetry.trace import SpanKind
    scope = _scope.get()
    attrs = _attributes(attributes)
    if scope is not None:
        attrs.update({"inbox.correlation_id": scope.correlation_id, "inbox.message_id": scope.message_id,
                      "inbox.mailbox_id": scope.mailbox_id, "inbox.source": scope.source})
    with _state.tracer.start_as_current_span(name, kind=getattr(SpanKind, kind.upper()),
                                             attributes={k: v for k, v in attrs.items() if v != ""}) as current:
        yield current


_ID_SEGMENT = re.compile(r"/(?:hd)?\d+(?=/|$)")


def operation_name(method: str, path: str) -> str:
    """`GET limeobject/helpdesk/1042/` -> `GET limeobject/helpdesk/{id}/` (low-cardinality metric label)."""
    return f"{method} {_ID_SEGMENT.sub('/{id}', '/' + path.split('?', 1)[0].lstrip('/'))}"


def _status_of(value: Any) -> str:
    for attr in ("status_code", "response_status_code", "status"):
        status = getattr(value, attr, None)
        if isinstance(status, int) and status:
            return str(status)
    return type(value).__name__ if isinstance(value, BaseException) else "ok"


def timed(fn: Callable[..., Awaitable[T]], service: str, operation: str) -> Callable[..., Awaitable[T]]:
    """`fn` (an outbound call) measured: a client span, its duration by operation and status, and a
    429 counted as throttling. Returns `fn` itself when telemetry is off."""
    if not _state.enabled:
        return fn

    async def call(*args: Any, **kwargs: Any) -> T:
        started = time.perf_counter()
        status = "error"
        with span(f"{service} {operation}", kind="client", **{"inbox.service": service}):
            try:
                result = await fn(*args, **kwargs)
                status = _status_of(result)
                return result
            except BaseException as exc:
                status = _status_of(exc)
                raise
            finally:
                duration(service, (time.perf_counter() - started) * 1000.0, operation=operation, status=status)
                if status == "429":
                    count(THROTTLED, service=service)
    return call
