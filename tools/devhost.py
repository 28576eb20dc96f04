"""Dev host: runs the Python v2 function app locally without Azure Functions Core Tools.

Stands in for `func start`. It imports `function_app` from the app directory, takes the
`FunctionApp` named `app`, indexes `app.get_functions()` and then:

* serves HTTP triggers on `http://127.0.0.1:<port>/<routePrefix>/<route>` (route templates with
  `{p}`, `{p?}`, `{p:int}`, `{*rest}`; methods and auth levels enforced; `admin*`/`runtime*` routes
  refused at start-up, as the host refuses them; routes tried in the order of their functions'
  names, as the host tries them, so a catch-all must be named to sort last);
* drains Storage queues into queue triggers with host.json's `extensions.queues` semantics
  (batchSize, newBatchThreshold, maxPollingInterval, visibilityTimeout, maxDequeueCount,
  messageEncoding, `<queue>-poison`), renewing the lease of long-running messages;
* runs timer triggers on their NCRONTAB schedules;
* writes `queue` output bindings (base64, like the host) after the function returns; a failed
  write fails the invocation;
* accepts `POST /admin/functions/{name}` `{"input": "..."}` to fire a non-HTTP function now, and
  `GET /admin/host/status`, as Core Tools does.

`%NAME%` binding expressions resolve from the app settings (local.settings.json `Values`, which
do not override variables already in the environment); a missing one fails start-up naming it.

Where it differs from the real host (Functions host 4.x + Python worker):
* Function keys: off by default (like Core Tools). With `--enforce-keys`, FUNCTION routes take the
  key from setting `DEVHOST_FUNCTION_KEY` (`?code=` or `x-functions-key`), ADMIN routes and the
  admin API take `DEVHOST_MASTER_KEY` (defaults to the function key); there is no key store in
  blob storage and no per-function keys.
* Timers use no blob lease (no single-instance lock across processes), no schedule monitor
  (`useMonitor`), so `past_due` is only set when a run starts more than 1 s late in this process;
  missed runs while the dev host was down are not reported. `WEBSITE_TIME_ZONE` is ignored (UTC).
* HTTP: its own asyncio HTTP/1.1 server (not Kestrel): the whole body is read before the
  function runs, with the host's default 100 MB limit (413 beyond;
  `FUNCTIONS_REQUEST_BODY_SIZE_LIMIT` overrides); no HTTP/2, TLS, CORS, proxies, HTTP streaming
  or 230 s front-end timeout. A known route with a method it does not accept answers 404, as the
  host does. Returning None from an HTTP function gives 200 with an empty body.
* Queues: the host's 10-minute fetch lease is renewed at half-life (configurable for tests);
  identity-based connections (`<name>__queueServiceUri`) are not supported, use a connection
  string. Only `httpTrigger`, `queueTrigger`, `timerTrigger` and `queue` output bindings exist here;
  `@app.retry` policies are ignored. Shutdown waits a bounded time for in-flight messages and
  abandons the rest (they reappear when their lease lapses, as after a host crash).
* `functionTimeout` from host.json fails an invocation that runs too long (async ones are
  cancelled; a sync one keeps its worker thread, as there is no process to recycle).
* One process, one worker: sync functions run in a ThreadPoolExecutor sized by
  `PYTHON_THREADPOOL_THREAD_COUNT`, async functions each in their own task on the host's event
  loop (the Python worker, too, runs them on the loop that receives its invocations; an app that
  blocks the loop stalls the HTTP server and the queue listeners, as it stalls a real worker);
  `worker_thread=True` runs them on a second loop in a dedicated thread instead (each invocation
  then crosses threads twice: ~20% of the webhook's CPU in bench/webhook.py);
  `FUNCTIONS_WORKER_PROCESS_COUNT` is ignored. Run one DevHost per process at a time: it
  sets os.environ and sys.modules['function_app'].

CLI:  python tools/devhost.py [--app-dir .] [--port 7071] [--settings local.settings.json]
                              [--enforce-keys] [--disable-timers] [--only fn1,fn2] [--host 127.0.0.1]
                              [--log-level INFO]
prints `ready http://127.0.0.1:<port>` on stdout once listening (logs go to stderr).

Library:
    host = DevHost(app_dir, settings={...}, port=0, enforce_keys=False, disable_timers=True)
    host.start(); host.url; host.invoke("sweep_inbox"); host.stop()
"""
from __future__ import annotations

import argparse
import asyncio
import hmac
import importlib.util
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import parse_qsl

if __package__:
    from .devhost_parts.config import (DevHostError, EnvPatch, HostConfig, load_host_json,
                                       load_settings_file)
    from .devhost_parts.functions import Context, FunctionSpec, Out, index_functions
    from .devhost_parts.httpserver import HttpServer, Request, Response
    from .devhost_parts.queues import HOST_QUEUE_OPS, QueueListener, StorageClients, _ops_lock, output_payloads
    from .devhost_parts.records import InvocationRecord, close_leftover_sessions, http_subject, queue_subject
    from .devhost_parts.routing import split_path
    from .devhost_parts.timers import TimerRunner
else:  # run as a script: python tools/devhost.py
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from devhost_parts.config import (DevHostError, EnvPatch, HostConfig, load_host_json,  # type: ignore
                                      load_settings_file)
    from devhost_parts.functions import Context, FunctionSpec, Out, index_functions  # type: ignore
    from devhost_parts.httpserver import HttpServer, Request, Response  # type: ignore
    from devhost_parts.queues import (HOST_QUEUE_OPS, QueueListener, StorageClients, _ops_lock,  # type: ignore
                                      output_payloads)
    from devhost_parts.records import (InvocationRecord, close_leftover_sessions, http_subject,  # type: ignore
                                       queue_subject)
    from devhost_parts.routing import split_path  # type: ignore
    from devhost_parts.timers import TimerRunner  # type: ignore

import azure.functions as func  # noqa: E402
from azure.functions.queue import QueueMessage  # noqa: E402

__all__ = ["DevHost", "DevHostError", "InvocationRecord", "main"]

log = logging.getLogger("devhost")

DEFAULT_MAX_BODY = 104_857_600
MESSAGE_LEASE = 600.0   # the queue extension fetches with a 10-minute visibility and renews it


class DevHost:
    """A local Functions host for one function app (see the module docstring)."""

    def __init__(self, app_dir: str | os.PathLike = ".", settings: Mapping[str, str] | None = None, *,
                 port: int = 0, host: str = "127.0.0.1", enforce_keys: bool = False,
                 disable_timers: bool = True, only: Iterable[str] | None = None,
                 settings_file: str | os.PathLike | None = None, override_env: bool = True,
                 message_lease: float = MESSAGE_LEASE, shutdown_timeout: float = 10.0,
                 worker_thread: bool = False,
                 on_invocation: Callable[[InvocationRecord], None] | None = None) -> None:
        """`settings` are applied to os.environ (overriding when `override_env`, restored on stop);
        `settings_file` Values never override the environment, like Core Tools. `on_invocation` is
        called with each finished invocation's record (`make run` prints `record.line()`)."""
        self.app_dir = Path(app_dir).resolve()
        self._settings = dict(settings or {})
        self._settings_file = Path(settings_file) if settings_file else None
        self._override_env = override_env
        self._bind_host = host
        self._port = port
        self.enforce_keys = enforce_keys
        self.disable_timers = disable_timers
        self._only = {s.strip() for s in only if s.strip()} if only else None
        self.message_lease = float(message_lease)
        self.shutdown_timeout = shutdown_timeout
        self.worker_thread = worker_thread
        self.on_invocation = on_invocation

        self.config: HostConfig = HostConfig()
        self.functions: dict[str, FunctionSpec] = {}
        self.module = None
        self.app: func.FunctionApp | None = None
        self.invocations: list[InvocationRecord] = []
        self._records_cv = threading.Condition()
        self._env = EnvPatch()
        self._added_path = False
        self._prev_module = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker_loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []
        self._executor: ThreadPoolExecutor | None = None
        self._server: HttpServer | None = None
        self._clients: StorageClients | None = None
        self._listeners: dict[str, QueueListener] = {}
        self._timers: dict[str, TimerRunner] = {}
        self._background: set[asyncio.Task] = set()
        self._routes: list[FunctionSpec] = []
        self._started = False
        self._stopped = False
        self._function_key: str | None = None
        self._master_key: str | None = None
        self._max_body = DEFAULT_MAX_BODY
        self.port: int | None = None
        self._t0 = time.monotonic()

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the dev host is not started")
        return f"http://{self._bind_host}:{self.port}"

    def __enter__(self) -> "DevHost":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "DevHost":
        if self._started:
            raise RuntimeError("DevHost.start() called twice")
        self._started = True
        try:
            self._load()
            self._start_threads()
            fut = asyncio.run_coroutine_threadsafe(self._astart(), self._loop)
            fut.result(timeout=60)
        except BaseException:
            self.stop()
            raise
        names = ", ".join(f"{s.name} [{s.trigger_kind}{' disabled' if s.disabled else ''}]"
                          for s in self.functions.values())
        log.info("dev host listening on %s with functions: %s", self.url, names or "(none)")
        return self

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            if self._loop and self._loop.is_running():
                fut = asyncio.run_coroutine_threadsafe(self._astop(), self._loop)
                try:
                    fut.result(timeout=self.shutdown_timeout + 15)
                except Exception:
                    log.exception("error while stopping the dev host")
        finally:
            for loop in (self._loop, self._worker_loop):
                if loop and loop.is_running():
                    loop.call_soon_threadsafe(loop.stop)
            for thread in self._threads:
                thread.join(timeout=5)
            for loop in (self._loop, self._worker_loop):
                if loop and not loop.is_running() and not loop.is_closed():
                    loop.close()
            if self._executor:
                self._executor.shutdown(wait=False, cancel_futures=True)
            self._env.restore()
            if self.module is not None and sys.modules.get("function_app") is self.module:
                if self._prev_module is not None:
                    sys.modules["function_app"] = self._prev_module
                else:
                    sys.modules.pop("function_app", None)
            if self._added_path:
                try:
                    sys.path.remove(str(self.app_dir))
                except ValueError:
                    pass
                self._added_path = False

    # ------------------------------------------------------------------ loading / indexing
    def _load(self) -> None:
        if self._settings_file is not None:
            self._env.apply(load_settings_file(self._settings_file), override=False)
        self._env.apply(self._settings, override=self._override_env)
        env = os.environ
        self.config = load_host_json(self.app_dir)
        limit = env.get("FUNCTIONS_REQUEST_BODY_SIZE_LIMIT")
        self._max_body = int(limit) if limit and limit.isdigit() else DEFAULT_MAX_BODY

        if self.enforce_keys:
            self._function_key = env.get("DEVHOST_FUNCTION_KEY")
            if not self._function_key:
                raise DevHostError("--enforce-keys needs app setting 'DEVHOST_FUNCTION_KEY' (the function key)")
            self._master_key = env.get("DEVHOST_MASTER_KEY") or self._function_key

        app_file = self.app_dir / "function_app.py"
        if not app_file.exists():
            raise DevHostError(f"no function_app.py in {self.app_dir}")
        if str(self.app_dir) not in sys.path:
            sys.path.insert(0, str(self.app_dir))
            self._added_path = True
        spec = importlib.util.spec_from_file_location("function_app", app_file)
        module = importlib.util.module_from_spec(spec)
        self._prev_module = sys.modules.get("function_app")
        sys.modules["function_app"] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            if self._prev_module is not None:
                sys.modules["function_app"] = self._prev_module
            else:
                sys.modules.pop("function_app", None)
            raise DevHostError(f"importing {app_file} failed: {type(exc).__name__}: {exc}") from exc
        app = getattr(module, "app", None)
        if app is None or not hasattr(app, "get_functions"):
            raise DevHostError(f"{app_file} defines no FunctionApp named 'app'")
        self.module, self.app = module, app

        only = set(self._only) if self._only else None
        if self.config.functions is not None:
            only = (only or set(self.config.functions)) & set(self.config.functions)
        specs = index_functions(app, env, only=only, app_dir=str(self.app_dir))
        self.functions = {s.name: s for s in specs}
        # The Functions host tries routes in the order of their functions' names, not by how specific
        # a template is (azure-functions-host#9876; WebScriptHostHttpRoutesManager maps host.Functions
        # in order, WebJobsRouteBuilder keeps it): `items/{id}` in function `a` shadows `items/recent` in
        # function `b` there, so it does here.
        self._routes = sorted((s for s in specs if s.trigger_kind == "http" and not s.disabled),
                              key=lambda s: (s.name.lower(), s.name))

    def _start_threads(self) -> None:
        count = os.environ.get("PYTHON_THREADPOOL_THREAD_COUNT")
        self._executor = ThreadPoolExecutor(max_workers=int(count) if count and count.isdigit() else None,
                                            thread_name_prefix="devhost-sync")
        self._loop = asyncio.new_event_loop()
        self._worker_loop = asyncio.new_event_loop() if self.worker_thread else self._loop
        self._worker_loop.set_default_executor(self._executor)
        loops = [("devhost-host", self._loop)]
        if self.worker_thread:
            loops.append(("devhost-worker-loop", self._worker_loop))
        for name, loop in loops:
            thread = threading.Thread(target=self._run_loop, args=(loop,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    async def _astart(self) -> None:
        self._clients = StorageClients()
        for spec in self.functions.values():
            if spec.disabled:
                continue
            if spec.trigger_kind == "queue":
                listener = QueueListener(spec, self.config.queues, self._clients, self._execute,
                                         self._notify_write, self.message_lease)
                try:
                    await asyncio.wait_for(listener.start(), 30)
                except Exception as exc:
                    detail = str(exc).splitlines()[0] if str(exc) else "no answer within 30 s"
                    raise DevHostError(
                        f"function '{spec.name}': cannot open queue '{spec.queue_name}' at "
                        f"{listener.client.primary_endpoint.split('?')[0]} (is Azurite running?): "
                        f"{type(exc).__name__}: {detail}") from None
                self._listeners[spec.name] = listener
        for spec in self.functions.values():
            if spec.trigger_kind == "timer":
                runner = TimerRunner(spec, self._execute)
                self._timers[spec.name] = runner
                runner.start(schedule_runs=not (spec.disabled or self.disable_timers))
        self._server = HttpServer(self._handle, self._bind_host, self._port, self._max_body)
        await self._server.start()
        self.port = self._server.port

    async def _astop(self) -> None:
        grace = self.shutdown_timeout
        await asyncio.gather(*(l.stop(grace) for l in self._listeners.values()),
                             *(t.stop(grace) for t in self._timers.values()),
                             return_exceptions=True)
        if self._server:
            await self._server.close(grace)
        if self._background:
            _, pending = await asyncio.wait(set(self._background), timeout=grace)
            for task in pending:
                task.cancel()
        if self._clients:
            await self._clients.close()
        # what the app opened on our loops (it has no shutdown hook): close it, as a process exit would
        if self._worker_loop is not None and self._worker_loop is not self._loop:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(close_leftover_sessions(), self._worker_loop))
        await close_leftover_sessions()

    # ------------------------------------------------------------------ invocation core
    async def _call_user(self, spec: FunctionSpec, kwargs: dict) -> Any:
        loop = asyncio.get_running_loop()
        if spec.is_async and self._worker_loop is loop:
            fut = asyncio.ensure_future(spec.func(**kwargs))  # its own task: its own contextvars
        elif spec.is_async:
            fut = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(spec.func(**kwargs), self._worker_loop))
        else:
            fut = loop.run_in_executor(self._executor, lambda: spec.func(**kwargs))
        timeout = self.config.function_timeout
        if timeout is None:
            return await fut
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise FunctionTimeoutError(
                f"Timeout value of {timeout:g}s exceeded by function '{spec.name}'") from None

    async def _execute(self, spec: FunctionSpec, trigger_value: Any, *, message_id: str | None = None,
                       dequeue_count: int | None = None, source: str = "trigger", subject: str = "") -> Any:
        """Invoke a function with its trigger value, then write its output bindings."""
        invocation_id = str(uuid.uuid4())
        if spec.trigger_kind == "queue" and not subject:
            subject = queue_subject(trigger_value.get_body())
        status: int | None = None
        outs = {o.arg_name: Out() for o in spec.outputs if o.arg_name != "$return"}
        kwargs: dict[str, Any] = {spec.trigger_arg: trigger_value, **outs}
        if spec.wants_context:
            kwargs["context"] = Context(invocation_id, spec.name, str(self.app_dir))
        start = time.perf_counter()
        error: BaseException | None = None
        try:
            result = await self._call_user(spec, kwargs)
            response = _to_response(result) if spec.trigger_kind == "http" else None
            status = response.status if response is not None else None
            for output in spec.outputs:
                value = result if output.arg_name == "$return" else outs[output.arg_name].get()
                payloads = output_payloads(value)
                if payloads:
                    try:
                        await self._clients.send(output.connection, output.queue_name, payloads,
                                                 self.config.queues.message_encoding)
                    except Exception as exc:
                        raise OutputBindingError(
                            f"writing output binding '{output.arg_name}' to queue '{output.queue_name}' failed: "
                            f"{type(exc).__name__}") from exc
                    self._notify_write(output.connection, output.queue_name)
            return response if spec.trigger_kind == "http" else result
        except BaseException as exc:
            error = exc
            raise
        finally:
            ms = (time.perf_counter() - start) * 1000
            if spec.trigger_kind == "http":
                status = 500 if error is not None else status
            extra = f" status={status}" if status is not None else ""
            if message_id is not None:
                extra += f" queue_message_id={message_id} dequeue_count={dequeue_count}"
            if subject and spec.trigger_kind != "http":
                extra += f" {subject}"
            if error is None:
                log.info("Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%.0fms) trigger=%s%s",
                         spec.name, invocation_id, ms, spec.trigger_kind, extra)
            else:
                # One outcome line (ids only, never bodies), then the stack like the host's
                # "Exception while executing function" record.
                log.error("Executed 'Functions.%s' (Failed, Id=%s, Duration=%.0fms) trigger=%s%s exception=%s",
                          spec.name, invocation_id, ms, spec.trigger_kind, extra, type(error).__name__)
                if not isinstance(error, asyncio.CancelledError):
                    log.warning("Exception while executing 'Functions.%s' (Id=%s)", spec.name, invocation_id,
                                exc_info=error)
            self._record(InvocationRecord(spec.name, spec.trigger_kind, invocation_id, error is None, ms,
                                          None if error is None else type(error).__name__,
                                          message_id, dequeue_count, source, status=status, subject=subject))

    def _record(self, record: InvocationRecord) -> None:
        if self.on_invocation is not None:  # first: whoever waits for the record sees its line printed
            try:
                self.on_invocation(record)
            except Exception:  # noqa: BLE001 - a printer must not fail the invocation
                log.exception("on_invocation callback failed")
        with self._records_cv:
            self.invocations.append(record)
            self._records_cv.notify_all()

    def _notify_write(self, connection: str, queue: str) -> None:
        """The host's shared queue watcher: a write by this host wakes the listener of that queue."""
        if not self._clients:
            return
        key = self._clients.key(connection, queue)
        for listener in self._listeners.values():
            if listener.key == key:
                listener.wake()

    # ------------------------------------------------------------------ non-HTTP invocation
    def _nonhttp_trigger(self, spec: FunctionSpec, input: str | None):
        if spec.trigger_kind == "queue":
            now = datetime.now(timezone.utc)
            body = (input or "").encode("utf-8")
            return QueueMessage(id=str(uuid.uuid4()), body=body, dequeue_count=1, insertion_time=now,
                                expiration_time=now + timedelta(days=7), time_next_visible=now,
                                pop_receipt=None)
        raise AssertionError

    async def _invoke_nonhttp(self, name: str, input: str | None, raise_errors: bool) -> Any:
        spec = self.functions.get(name)
        if spec is None:
            raise KeyError(f"no function named {name!r}")
        if spec.trigger_kind == "http":
            raise ValueError(f"function {name!r} is HTTP-triggered; call it over HTTP")
        if spec.trigger_kind == "timer":
            return await self._timers[name].fire(False, raise_errors=raise_errors)
        msg = self._nonhttp_trigger(spec, input)
        try:
            return await self._execute(spec, msg, message_id=msg.id, dequeue_count=1, source="admin")
        except Exception:
            if raise_errors:
                raise
            return None

    def invoke(self, name: str, input: str | None = None, timeout: float = 60.0) -> Any:
        """Run a non-HTTP function now (like POST /admin/functions/{name}), wait, return or raise."""
        if not self._loop or self.port is None:
            raise RuntimeError("the dev host is not started")
        fut = asyncio.run_coroutine_threadsafe(self._invoke_nonhttp(name, input, True), self._loop)
        return fut.result(timeout)

    def wait_for_invocations(self, function: str, count: int = 1, timeout: float = 10.0,
                             predicate: Callable[[InvocationRecord], bool] | None = None) -> list[InvocationRecord]:
        """Block until `count` recorded invocations of `function` (matching `predicate`) exist."""
        deadline = time.monotonic() + timeout
        with self._records_cv:
            while True:
                found = [r for r in self.invocations
                         if r.function == function and (predicate is None or predicate(r))]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{function}: {len(found)} of {count} invocations after {timeout}s")
                self._records_cv.wait(remaining)

    # ------------------------------------------------------------------ HTTP
    async def _handle(self, req: Request) -> Response:
        path, _, query = req.target.partition("?")
        if path.startswith(("http://", "https://")):          # absolute-form target
            path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
        segments = split_path(path)
        if segments and segments[0].lower() == "admin":
            return await self._admin(req, segments[1:])
        prefix = split_path(self.config.route_prefix)
        if [s.lower() for s in segments[:len(prefix)]] == [p.lower() for p in prefix] \
                and (prefix or segments):
            rest = segments[len(prefix):]
            for spec in self._routes:
                params = spec.route.match(rest)
                if params is None:
                    continue
                if spec.methods is not None and req.method not in spec.methods:
                    continue
                return await self._http_invoke(spec, req, path, query, params)
            return Response(404)
        if not segments:
            return Response(200, [("Content-Type", "text/html; charset=utf-8")],
                            b"<html><body><h1>Your Functions 4.0 app (dev host) is up and running</h1></body></html>")
        return Response(404)

    def _key_ok(self, req: Request, query: str, level: str) -> bool:
        if not self.enforce_keys or level == "anonymous":
            return True
        supplied = req.header("x-functions-key")
        if supplied is None:
            supplied = dict(parse_qsl(query, keep_blank_values=True)).get("code")
        if not supplied:
            return False
        keys = [self._master_key] if level == "admin" else [self._function_key, self._master_key]
        return any(k and hmac.compare_digest(supplied.encode(), k.encode()) for k in keys)

    async def _http_invoke(self, spec: FunctionSpec, req: Request, path: str, query: str,
                           route_params: dict[str, str]) -> Response:
        if not self._key_ok(req, query, spec.auth_level):
            return Response(401)
        headers: dict[str, str] = {}
        for k, v in req.headers:
            lk = k.lower()
            headers[lk] = f"{headers[lk]}, {v}" if lk in headers else v
        params: dict[str, str] = {}
        for k, v in parse_qsl(query, keep_blank_values=True):
            params[k] = f"{params[k]},{v}" if k in params else v
        host_header = headers.get("host") or f"{self._bind_host}:{self.port}"
        url = f"http://{host_header}{path}" + (f"?{query}" if query else "")
        request = func.HttpRequest(method=req.method, url=url, headers=headers, params=params,
                                   route_params=route_params, body=req.body)
        try:
            return await self._execute(spec, request, subject=http_subject(req.method, path))
        except Exception:
            return Response(500)

    async def _admin(self, req: Request, rest: list[str]) -> Response:
        query = req.target.partition("?")[2]
        if not self._key_ok(req, query, "admin"):
            return Response(401)
        lower = [s.lower() for s in rest]
        if lower == ["host", "status"] and req.method in ("GET", "HEAD"):
            return _json(200, {"id": "devhost", "state": "Running", "version": "devhost",
                               "processUptime": int((time.monotonic() - self._t0) * 1000)})
        if lower == ["devhost", "storage-ops"] and req.method == "GET":
            # Storage requests by kind: the host's queue traffic, and the app's when it counts its
            # own (shared/adapters/storage_ops.py); bench/pipeline.py reads them before and after
            with _ops_lock:
                host = dict(HOST_QUEUE_OPS)
            app = sys.modules.get("shared.adapters.storage_ops")
            return _json(200, {"host": host, "app": app.COUNTS.snapshot() if app is not None else {}})
        if lower == ["functions"] and req.method == "GET":
            return _json(200, [self._describe(s) for s in self.functions.values()])
        if len(rest) == 2 and lower[0] == "functions":
            spec = self._find(rest[1])
            if spec is None:
                return Response(404)
            if req.method == "GET":
                return _json(200, self._describe(spec))
            if req.method != "POST":
                return Response(405, [("Allow", "GET, POST")])
            if spec.trigger_kind == "http":
                return _json(400, {"error": f"'{spec.name}' is HTTP-triggered; call it on its route"})
            try:
                payload = json.loads(req.body or b"{}")
                value = payload.get("input") if isinstance(payload, dict) else None
            except ValueError:
                return _json(400, {"error": "body must be JSON {\"input\": \"...\"}"})
            if value is not None and not isinstance(value, str):
                value = json.dumps(value)
            task = asyncio.ensure_future(self._invoke_nonhttp(spec.name, value, False))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return Response(202)
        return Response(404)

    def _find(self, name: str) -> FunctionSpec | None:
        return self.functions.get(name) or next(
            (s for s in self.functions.values() if s.name.lower() == name.lower()), None)

    def _describe(self, spec: FunctionSpec) -> dict:
        info: dict[str, Any] = {"name": spec.name, "trigger": spec.trigger_type, "isDisabled": spec.disabled,
                                "isAsync": spec.is_async}
        if spec.trigger_kind == "http":
            info.update(route=spec.route.template, methods=sorted(spec.methods) if spec.methods else None,
                        authLevel=spec.auth_level,
                        invoke_url_template=f"{self.url}/{self.config.route_prefix}/{spec.route.template}".replace(
                            "//", "/").replace(":/", "://"))
        elif spec.trigger_kind == "queue":
            info.update(queueName=spec.queue_name)
        else:
            info.update(schedule=spec.schedule.expression, runOnStartup=spec.run_on_startup)
        if spec.outputs:
            info["outputs"] = [{"name": o.arg_name, "queueName": o.queue_name} for o in spec.outputs]
        return info


class FunctionTimeoutError(Exception):
    """The invocation ran longer than host.json's functionTimeout."""


class OutputBindingError(Exception):
    """An output binding could not be written after the function returned."""


def _json(status: int, body: Any) -> Response:
    return Response(status, [("Content-Type", "application/json; charset=utf-8")],
                    json.dumps(body).encode("utf-8"))


def _to_response(result: Any) -> Response:
    """Map the function's return value to an HTTP response, as the worker and host do."""
    if result is None:
        return Response(200)
    if isinstance(result, str):
        return Response(200, [("Content-Type", "text/plain; charset=utf-8")], result.encode("utf-8"))
    if isinstance(result, func.HttpResponse) or hasattr(result, "status_code") and hasattr(result, "get_body"):
        headers = list(result.headers.items())
        if not any(k.lower() == "content-type" for k, _ in headers):
            mimetype = result.mimetype
            headers.append(("Content-Type", f"{mimetype}; charset={result.charset}"
                            if mimetype.startswith("text/") else mimetype))
        return Response(int(result.status_code), headers, result.get_body() or b"")
    raise TypeError(f"an HTTP function must return func.HttpResponse or str, not {type(result).__name__}")


# ---------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devhost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--app-dir", default=".", help="directory holding function_app.py and host.json")
    parser.add_argument("--port", type=int, default=7071, help="HTTP port (0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    parser.add_argument("--settings", default=None,
                        help="local settings file (default: <app-dir>/local.settings.json if present)")
    parser.add_argument("--enforce-keys", action="store_true",
                        help="require DEVHOST_FUNCTION_KEY / DEVHOST_MASTER_KEY like the real host")
    parser.add_argument("--disable-timers", action="store_true", help="do not run timers on schedule")
    parser.add_argument("--only", default=None, help="comma-separated function names to load")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)
    app_dir = Path(args.app_dir)
    settings_file = Path(args.settings) if args.settings else app_dir / "local.settings.json"
    if not args.settings and not settings_file.exists():
        settings_file = None
    host = DevHost(app_dir, port=args.port, host=args.host, enforce_keys=args.enforce_keys,
                   disable_timers=args.disable_timers, only=args.only.split(",") if args.only else None,
                   settings_file=settings_file)
    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        host.start()
    except DevHostError as exc:
        print(f"devhost: {exc}", file=sys.stderr)
        return 2
    print(f"ready {host.url}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        host.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
