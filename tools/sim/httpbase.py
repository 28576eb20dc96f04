"""Reusable threaded HTTP/1.1 server base for the local simulators (Graph, TRAML, Lime CRM).

Owns: the route table (method + regex on the percent-decoded path), request/response helpers,
one-write responses (headers and body in one ``sendall``: two small writes meet delayed ACK and
cost ~40 ms), HTTP and HTTPS on the same port (the first byte of a connection decides: 0x16 is a
TLS handshake), fault injection (``sim.faults``), latency injection (``sim.latency_ms``), a request
log (``sim.requests``) and the ``/_sim/faults``, ``/_sim/requests``, ``/_sim/latency`` and
``/_sim/health`` control endpoints. Control endpoints (``/_sim/...``) need no auth and are never
subject to faults, latency or logging.

A simulator subclasses :class:`SimServer`, registers routes in ``__init__`` with :meth:`route`
and may override :meth:`error_body` to shape error JSON like the API it imitates.
"""

from __future__ import annotations

import email.utils
import http.server
import itertools
import json
import re
import socket
import socketserver
import ssl
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import parse_qs, unquote

__all__ = [
    "FaultInjector",
    "FaultRule",
    "HttpError",
    "Request",
    "RequestLog",
    "Response",
    "SimServer",
    "empty_response",
    "json_response",
    "text_response",
]

MAX_BODY = 256 * 1024 * 1024
STREAM_CHUNK = 64 * 1024


# --------------------------------------------------------------------------------------------
# Request / response


# Statuses the services answer that http.HTTPStatus does not know (Graph documents 509).
_EXTRA_PHRASES = {509: "Bandwidth Limit Exceeded"}


def reason_phrase(status: int) -> str:
    """The status line's reason for any status a fault may inject (never raises)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return _EXTRA_PHRASES.get(status, "Unknown")


class HttpError(Exception):
    """Raise from a handler to answer with an error; the server shapes it with error_body()."""

    def __init__(self, status: int, code: str = "", message: str = "", *,
                 headers: dict[str, str] | None = None, body: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code or reason_phrase(status).replace(" ", "")
        self.message = message or reason_phrase(status)
        self.headers = headers or {}
        self.body = body  # when given, sent as JSON instead of error_body()


class Request:
    """One parsed HTTP request as handlers see it."""

    __slots__ = ("method", "path", "raw_path", "query_string", "query", "headers", "body",
                 "params", "scheme", "client_address", "log", "server", "_json")

    def __init__(self, method: str, raw_path: str, query_string: str, headers: Any, body: bytes,
                 scheme: str, client_address: tuple, server: "SimServer") -> None:
        self.method = method
        self.raw_path = raw_path
        self.path = unquote(raw_path)
        self.query_string = query_string
        self.query: dict[str, list[str]] = parse_qs(query_string, keep_blank_values=True)
        self.headers = headers  # http.client.HTTPMessage: case-insensitive get()/get_all()
        self.body = body
        self.params: dict[str, str] = {}
        self.scheme = scheme
        self.client_address = client_address
        self.log: dict[str, Any] = {}  # extra fields a handler wants in the request log
        self.server = server
        self._json: Any = None

    def arg(self, name: str, default: str | None = None, *,
            ignore_case: bool = False) -> str | None:
        """First value of a query parameter (``$top`` and ``%24top`` are the same key)."""
        values = self.query.get(name)
        if values is None and ignore_case:
            lname = name.lower()
            for key, vals in self.query.items():
                if key.lower() == lname:
                    values = vals
                    break
        return values[0] if values else default

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name, default)

    def header_all(self, name: str) -> list[str]:
        return self.headers.get_all(name) or []

    def json(self) -> Any:
        """The body parsed as JSON; 400 when it is not JSON."""
        if self._json is None:
            if not self.body:
                raise HttpError(400, "BadRequest", "Empty request body.")
            try:
                self._json = json.loads(self.body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise HttpError(400, "BadRequest", f"Invalid JSON body: {exc}") from None
        return self._json

    def form(self) -> dict[str, str]:
        """An application/x-www-form-urlencoded body as a dict of first values."""
        parsed = parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)
        return {k: v[0] for k, v in parsed.items()}

    @property
    def base_url(self) -> str:
        """scheme://host:port the client used (for absolute links such as @odata.nextLink)."""
        host = self.headers.get("Host") or f"127.0.0.1:{self.server.port}"
        return f"{self.scheme}://{host}"


class Response:
    """A response. ``body`` is bytes or an iterable of bytes chunks (then give ``length``)."""

    __slots__ = ("status", "headers", "body", "length", "on_complete")

    def __init__(self, status: int = 200, body: bytes | Iterable[bytes] = b"",
                 headers: dict[str, str] | list[tuple[str, str]] | None = None,
                 length: int | None = None) -> None:
        self.status = status
        self.body = body
        if headers is None:
            self.headers: list[tuple[str, str]] = []
        elif isinstance(headers, dict):
            self.headers = list(headers.items())
        else:
            self.headers = list(headers)
        self.length = length
        self.on_complete: list[Callable[[], None]] = []

    def set_header(self, name: str, value: str) -> None:
        lname = name.lower()
        self.headers = [(k, v) for k, v in self.headers if k.lower() != lname]
        self.headers.append((name, value))

    def get_header(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None


def json_dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None,
                  content_type: str = "application/json; charset=utf-8") -> Response:
    hdrs = {"Content-Type": content_type}
    if headers:
        hdrs.update(headers)
    return Response(status, json_dumps(obj), hdrs)


def text_response(text: str, status: int = 200, content_type: str = "text/plain; charset=utf-8",
                  headers: dict[str, str] | None = None) -> Response:
    hdrs = {"Content-Type": content_type}
    if headers:
        hdrs.update(headers)
    return Response(status, text.encode("utf-8"), hdrs)


def empty_response(status: int = 204, headers: dict[str, str] | None = None) -> Response:
    return Response(status, b"", headers)


# --------------------------------------------------------------------------------------------
# Fault injection


@dataclass
class FaultRule:
    """Answer matching requests with ``status`` (or only delay them when status is None).

    count: how many more times it fires (-1: forever). Rules are tried in insertion order.
    """

    status: int | None = 503
    method: str | None = None
    path_regex: str | None = None
    count: int = 1
    retry_after: float | int | None = None
    delay_ms: int = 0
    body: Any = None
    drop_connection: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    id: int = 0
    fired: int = 0

    def __post_init__(self) -> None:
        self._rx = re.compile(self.path_regex, re.IGNORECASE) if self.path_regex else None

    def matches(self, method: str, path: str) -> bool:
        if self.count == 0:
            return False
        if self.method and self.method.upper() != method:
            return False
        return self._rx is None or self._rx.search(path) is not None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return data


class FaultInjector:
    """Thread-safe list of fault rules, shared by the server's request threads."""

    _FIELDS = {"status", "method", "path_regex", "count", "retry_after", "delay_ms", "body",
               "drop_connection", "headers"}

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._ids = itertools.count(1)

    def add(self, status: int | None = 503, *, method: str | None = None,
            path_regex: str | None = None, count: int = 1, retry_after: float | None = None,
            delay_ms: int = 0, body: Any = None, drop_connection: bool = False,
            headers: dict[str, str] | None = None) -> FaultRule:
        rule = FaultRule(status=status, method=method, path_regex=path_regex, count=count,
                         retry_after=retry_after, delay_ms=delay_ms, body=body,
                         drop_connection=drop_connection, headers=dict(headers or {}))
        with self._lock:
            rule.id = next(self._ids)
            self._rules.append(rule)
        return rule

    def add_dict(self, spec: dict[str, Any]) -> FaultRule:
        unknown = set(spec) - self._FIELDS
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        return self.add(**spec)

    def remove(self, rule_id: int) -> bool:
        with self._lock:
            before = len(self._rules)
            self._rules = [r for r in self._rules if r.id != rule_id]
            return len(self._rules) != before

    def clear(self) -> None:
        with self._lock:
            self._rules = []

    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def take(self, method: str, path: str) -> FaultRule | None:
        """The first live rule matching the request, its count consumed; None if none."""
        if not self._rules:
            return None
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path):
                    if rule.count > 0:
                        rule.count -= 1
                    rule.fired += 1
                    return rule
        return None


# --------------------------------------------------------------------------------------------
# Request log


class RequestLog:
    """Bounded, thread-safe log of API requests (not control requests)."""

    def __init__(self, limit: int = 200_000) -> None:
        self._lock = threading.Lock()
        self._entries: deque[dict[str, Any]] = deque(maxlen=limit)
        self._seq = itertools.count(1)

    def append(self, entry: dict[str, Any]) -> None:
        with self._lock:
            entry["seq"] = next(self._seq)
            self._entries.append(entry)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def entries(self, method: str | None = None, path_regex: str | None = None,
                status: int | None = None, since_seq: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self._entries)
        rx = re.compile(path_regex, re.IGNORECASE) if path_regex else None
        out = []
        for entry in items:
            if entry["seq"] <= since_seq:
                continue
            if method and entry["method"] != method.upper():
                continue
            if status is not None and entry["status"] != status:
                continue
            if rx and not rx.search(entry["path"]):
                continue
            out.append(entry)
        return out

    def count(self, **kwargs: Any) -> int:
        return len(self.entries(**kwargs))

    def __len__(self) -> int:
        return len(self._entries)


# --------------------------------------------------------------------------------------------
# Server plumbing


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sim/1.0"
    sys_version = ""
    timeout = 300  # idle keep-alive connections

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def handle_one_request(self) -> None:
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.send_error(414)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            self.server.sim._serve(self)  # type: ignore[attr-defined]
        except (TimeoutError, socket.timeout, ConnectionError, ssl.SSLError, OSError):
            self.close_connection = True


class _ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], sim: "SimServer") -> None:
        self.sim = sim
        super().__init__(addr, _Handler)

    def server_bind(self) -> None:  # skip HTTPServer's getfqdn() (slow without DNS)
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = host
        self.server_port = port

    def finish_request(self, request: socket.socket, client_address: Any) -> None:
        sim = self.sim
        conn: socket.socket = request
        sim._track(request)
        try:
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            request.settimeout(_Handler.timeout)
            first = request.recv(1, socket.MSG_PEEK)
            if not first:
                return
            if first[0] == 0x16:
                ctx = sim._ssl_context()
                if ctx is None:
                    return
                conn = ctx.wrap_socket(request, server_side=True)
                sim._track(conn)
            _Handler(conn, client_address, self)
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            if conn is not request:
                sim._untrack(conn)
                try:
                    conn.close()
                except OSError:
                    pass
            sim._untrack(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class SimServer:
    """Base of every simulator: threaded HTTP/1.1 + optional TLS on one loopback port."""

    name = "sim"
    #: request headers copied into the request log (lower-case)
    log_headers: tuple[str, ...] = ("content-type", "prefer", "user-agent", "client-request-id",
                                    "accept")

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, tls: bool = True,
                 latency_ms: float = 0, log_limit: int = 200_000) -> None:
        self.host = host
        self._requested_port = port
        self.tls = tls
        self.latency_ms = latency_ms
        self.faults = FaultInjector()
        self.requests = RequestLog(log_limit)
        self._routes: list[tuple[str, re.Pattern[str], Callable[[Request], Response], bool]] = []
        self._server: _ThreadingServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[Any] = set()
        self._conns_lock = threading.Lock()
        self._ctx: ssl.SSLContext | None = None
        self._register_base_routes()

    # ---- routes -----------------------------------------------------------------------------

    def route(self, method: str, pattern: str, handler: Callable[[Request], Response], *,
              flags: int = 0) -> None:
        """Register ``handler`` for ``method`` and a regex on the percent-decoded path.

        The regex is anchored (fullmatch); named groups become ``req.params``.
        """
        control = pattern.startswith("/_sim/") or pattern.startswith(r"/_sim/")
        self._routes.append((method.upper(), re.compile(pattern, flags), handler, control))

    def _register_base_routes(self) -> None:
        self.route("GET", r"/_sim/health", lambda r: json_response({"ok": True, "name": self.name}))
        self.route("GET", r"/_sim/faults", self._ctl_faults_get)
        self.route("POST", r"/_sim/faults", self._ctl_faults_post)
        self.route("DELETE", r"/_sim/faults", self._ctl_faults_delete)
        self.route("DELETE", r"/_sim/faults/(?P<id>\d+)", self._ctl_faults_delete_one)
        self.route("GET", r"/_sim/requests", self._ctl_requests_get)
        self.route("DELETE", r"/_sim/requests", self._ctl_requests_delete)
        self.route("GET", r"/_sim/latency", lambda r: json_response({"ms": self.latency_ms}))
        self.route("POST", r"/_sim/latency", self._ctl_latency)

    def _ctl_faults_get(self, req: Request) -> Response:
        return json_response({"value": [r.to_dict() for r in self.faults.rules()]})

    def _ctl_faults_post(self, req: Request) -> Response:
        body = req.json()
        specs = body if isinstance(body, list) else [body]
        try:
            rules = [self.faults.add_dict(spec) for spec in specs]
        except (TypeError, ValueError) as exc:
            raise HttpError(400, "BadRequest", str(exc)) from None
        return json_response({"value": [r.to_dict() for r in rules]}, 201)

    def _ctl_faults_delete(self, req: Request) -> Response:
        self.faults.clear()
        return empty_response()

    def _ctl_faults_delete_one(self, req: Request) -> Response:
        if not self.faults.remove(int(req.params["id"])):
            raise HttpError(404, "NotFound", "no such fault rule")
        return empty_response()

    def _ctl_requests_get(self, req: Request) -> Response:
        status = req.arg("status")
        items = self.requests.entries(method=req.arg("method"), path_regex=req.arg("path"),
                                      status=int(status) if status else None,
                                      since_seq=int(req.arg("since", "0") or 0))
        return json_response({"value": items, "count": len(items)})

    def _ctl_requests_delete(self, req: Request) -> Response:
        self.requests.clear()
        return empty_response()

    def _ctl_latency(self, req: Request) -> Response:
        body = req.json()
        self.latency_ms = float(body.get("ms", 0))
        return json_response({"ms": self.latency_ms})

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> "SimServer":
        if self._server is not None:
            return self
        if self.tls:
            self._ssl_context()  # generate the CA and cert now, not on the first handshake
        self._server = _ThreadingServer((self.host, self._requested_port), self)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name=f"{self.name}-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._conns_lock:
            conns = list(self._conns)
            self._conns.clear()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> "SimServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"{self.name} simulator is not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def https_url(self) -> str:
        if not self.tls:
            raise RuntimeError("TLS is disabled on this simulator")
        return f"https://{self.host}:{self.port}"

    @property
    def ca_path(self) -> str:
        from . import tls
        return tls.get_test_ca().ca_path

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        if self._ctx is None:
            from . import tls
            self._ctx = tls.get_test_ca().server_context()
        return self._ctx

    def _track(self, conn: Any) -> None:
        with self._conns_lock:
            self._conns.add(conn)

    def _untrack(self, conn: Any) -> None:
        with self._conns_lock:
            self._conns.discard(conn)

    # ---- hooks for subclasses -----------------------------------------------------------------

    def error_body(self, status: int, code: str, message: str) -> Any:
        """JSON body of an error answer; override to match the imitated API."""
        return {"error": {"code": code, "message": message}}

    def error_response(self, err: HttpError) -> Response:
        body = err.body if err.body is not None else self.error_body(err.status, err.code,
                                                                     err.message)
        resp = json_response(body, err.status)
        for key, value in err.headers.items():
            resp.set_header(key, value)
        return resp

    def fault_response(self, rule: FaultRule) -> Response:
        status = rule.status or 503
        if rule.body is None:
            code = {429: "TooManyRequests", 500: "InternalServerError", 502: "BadGateway",
                    503: "ServiceUnavailable", 504: "GatewayTimeout"}.get(
                        status, reason_phrase(status).replace(" ", ""))
            resp = json_response(self.error_body(status, code, "Injected fault."), status)
        elif isinstance(rule.body, (bytes, str)):
            data = rule.body.encode("utf-8") if isinstance(rule.body, str) else rule.body
            resp = Response(status, data, {"Content-Type": "text/plain; charset=utf-8"})
        else:
            resp = json_response(rule.body, status)
        if rule.retry_after is not None:
            resp.set_header("Retry-After", _fmt_retry_after(rule.retry_after))
        for key, value in rule.headers.items():
            resp.set_header(key, value)
        return resp

    # ---- serving ----------------------------------------------------------------------------

    def _serve(self, h: _Handler) -> None:
        started = time.perf_counter()
        method = h.command.upper()
        target = h.path
        raw_path, _, query_string = target.partition("?")
        if raw_path.startswith("http://") or raw_path.startswith("https://"):
            raw_path = "/" + raw_path.split("/", 3)[3] if raw_path.count("/") >= 3 else "/"
        body = self._read_body(h)
        if body is None:
            return
        scheme = "https" if isinstance(h.connection, ssl.SSLSocket) else "http"
        req = Request(method, raw_path, query_string, h.headers, body, scheme, h.client_address,
                      self)
        control = req.path.startswith("/_sim/")
        fault: FaultRule | None = None
        fault_resp: Response | None = None
        delay_s = 0.0
        if not control:
            delay_s = self.latency_ms / 1000.0
            fault = self.faults.take(method, req.path)
            if fault is not None:
                delay_s += fault.delay_ms / 1000.0
                if fault.drop_connection:
                    if delay_s:
                        time.sleep(delay_s)
                    self._log(req, 0, started, fault)
                    h.close_connection = True
                    try:
                        h.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                if fault.status is not None:
                    fault_resp = self.fault_response(fault)
        resp = fault_resp if fault_resp is not None else self._dispatch(req)
        if delay_s:
            # After the handler, before the answer: the request stays "in flight" meanwhile,
            # so a simulator's concurrency accounting (released on_complete) sees it.
            time.sleep(delay_s)
        try:
            self._write(h, req, resp)
        finally:
            for callback in resp.on_complete:
                try:
                    callback()
                except Exception:  # noqa: BLE001 - a callback must not kill the connection
                    traceback.print_exc()
            if not control:
                self._log(req, resp.status, started, fault)

    def _dispatch(self, req: Request) -> Response:
        path_matched = False
        for method, rx, handler, _control in self._routes:
            m = rx.fullmatch(req.path)
            if m is None:
                continue
            path_matched = True
            if method != req.method and not (method == "GET" and req.method == "HEAD"):
                continue
            req.params = {k: v for k, v in m.groupdict().items() if v is not None}
            try:
                return handler(req)
            except HttpError as err:
                return self.error_response(err)
            except Exception as exc:  # noqa: BLE001 - a simulator answers 500 like a server
                traceback.print_exc(file=sys.stderr)
                return self.error_response(HttpError(500, "InternalServerError",
                                                     f"{type(exc).__name__}: {exc}"))
        if path_matched:
            return self.error_response(HttpError(405, "MethodNotAllowed",
                                                 f"{req.method} is not allowed on {req.path}"))
        return self.error_response(HttpError(404, "NotFound",
                                             f"No route for {req.method} {req.path}"))

    def _read_body(self, h: _Handler) -> bytes | None:
        te = (h.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            chunks = []
            total = 0
            while True:
                line = h.rfile.readline(65537)
                if not line:
                    h.close_connection = True
                    return None
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers
                        trailer = h.rfile.readline(65537)
                        if trailer in (b"\r\n", b"\n", b""):
                            break
                    break
                total += size
                if total > MAX_BODY:
                    h.close_connection = True
                    return None
                chunks.append(h.rfile.read(size))
                h.rfile.readline()
            return b"".join(chunks)
        length = h.headers.get("Content-Length")
        if not length:
            return b""
        try:
            n = int(length)
        except ValueError:
            h.close_connection = True
            return None
        if n > MAX_BODY or n < 0:
            h.close_connection = True
            return None
        data = h.rfile.read(n) if n else b""
        if len(data) != n:
            h.close_connection = True
            return None
        return data

    def _write(self, h: _Handler, req: Request, resp: Response) -> None:
        status = resp.status
        reason = reason_phrase(status)
        body = resp.body
        chunks: Iterator[bytes] | None = None
        if isinstance(body, (bytes, bytearray, memoryview)):
            first = bytes(body)
            length = len(first)
        else:
            chunks = iter(body)
            first = b""
            length = resp.length
        no_body = req.method == "HEAD" or status in (204, 304) or 100 <= status < 200
        lines = [f"HTTP/1.1 {status} {reason}"]
        have = set()
        for key, value in resp.headers:
            have.add(key.lower())
            lines.append(f"{key}: {value}")
        if "date" not in have:
            lines.append("Date: " + email.utils.formatdate(usegmt=True))
        if status != 204 and "content-length" not in have:
            if length is None:
                lines.append("Transfer-Encoding: chunked")
            else:
                lines.append(f"Content-Length: {length}")
        if h.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        wfile = h.wfile
        if no_body:
            wfile.write(head)
            return
        if chunks is None:
            wfile.write(head + first)  # ONE write: avoids the delayed-ACK stall
            return
        chunked = length is None
        pending = head
        for chunk in chunks:
            if not chunk:
                continue
            if chunked:
                chunk = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
            wfile.write(pending + chunk)
            pending = b""
        if chunked:
            pending += b"0\r\n\r\n"
        if pending:
            wfile.write(pending)

    def _log(self, req: Request, status: int, started: float, fault: FaultRule | None) -> None:
        headers = {}
        for name in self.log_headers:
            values = req.headers.get_all(name)
            if values:
                headers[name] = ", ".join(values)
        entry = {
            "time": time.time(),
            "method": req.method,
            "path": req.path,
            "query": req.query_string,
            "headers": headers,
            "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "fault": fault.id if fault else None,
            "scheme": req.scheme,
        }
        if req.log:
            entry.update(req.log)
        self.requests.append(entry)


def _fmt_retry_after(value: float | int) -> str:
    if isinstance(value, float) and not value.is_integer():
        return str(max(1, int(value + 0.999)))
    return str(int(value))


def stream_bytes(data: bytes, chunk: int = STREAM_CHUNK) -> Iterator[bytes]:
    """Chunks of ``data`` for a streamed Response body (pass length=len(data))."""
    view = memoryview(data)
    for offset in range(0, len(data), chunk):
        yield bytes(view[offset:offset + chunk])
