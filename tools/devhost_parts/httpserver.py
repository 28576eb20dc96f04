"""A small asyncio HTTP/1.1 server: keep-alive, pipelining-safe, one socket write per response.

Headers and body go out in a single `transport.write` (a second small write would meet the peer's
delayed ACK and cost ~40 ms). Bodies are read completely before the handler runs (Content-Length
or chunked), bounded by `max_body` (413 beyond). `Expect: 100-continue` is honoured.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Awaitable, Callable

log = logging.getLogger("devhost.http")

MAX_HEADER_BYTES = 64 * 1024


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    peer: tuple | None = None

    def header(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


class _BadRequest(Exception):
    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message)
        self.status = status


_date_cache = [0, ""]


def _http_date() -> str:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0], _date_cache[1] = now, formatdate(now, usegmt=True)
    return _date_cache[1]


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def render(resp: Response, *, head_only: bool, keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {resp.status} {_reason(resp.status)}"]
    has_type = False
    for k, v in resp.headers:
        lk = k.lower()
        if lk in ("content-length", "transfer-encoding", "connection", "date"):
            continue
        if lk == "content-type":
            has_type = True
        if "\r" in k or "\n" in k or "\r" in v or "\n" in v:
            raise ValueError(f"invalid character in response header {k!r}")
        lines.append(f"{k}: {v}")
    if not has_type and resp.body:
        lines.append("Content-Type: application/octet-stream")
    lines.append(f"Content-Length: {len(resp.body)}")
    lines.append(f"Date: {_http_date()}")
    lines.append("Server: devhost")
    if not keep_alive:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + resp.body


class HttpServer:
    def __init__(self, handler: Callable[[Request], Awaitable[Response]], host: str, port: int,
                 max_body: int, idle_timeout: float = 120.0) -> None:
        self._handler = handler
        self._host = host
        self._port = port
        self._max_body = max_body
        self._idle_timeout = idle_timeout
        self._server: asyncio.base_events.Server | None = None
        self._conns: dict[asyncio.StreamWriter, bool] = {}   # writer -> busy
        self._closing = False
        self.port: int | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port,
                                                  limit=MAX_HEADER_BYTES, reuse_address=True, backlog=512)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self, grace: float) -> None:
        self._closing = True
        if self._server:
            self._server.close()
        for writer, busy in list(self._conns.items()):
            if not busy:
                writer.close()
        deadline = time.monotonic() + grace
        while any(self._conns.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for writer in list(self._conns):
            writer.close()
        if self._server:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            except (asyncio.TimeoutError, Exception):
                pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns[writer] = False
        peer = writer.get_extra_info("peername")
        try:
            while not self._closing:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self._idle_timeout)
                except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
                    return
                except asyncio.LimitOverrunError:
                    writer.write(render(Response(431), head_only=False, keep_alive=False))
                    return
                self._conns[writer] = True
                try:
                    request, keep_alive = await self._read_request(head, reader, writer, peer)
                except _BadRequest as exc:
                    writer.write(render(Response(exc.status, [("Content-Type", "text/plain; charset=utf-8")],
                                                 str(exc).encode()), head_only=False, keep_alive=False))
                    await writer.drain()
                    return
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                try:
                    response = await self._handler(request)
                except Exception:  # the handler maps user errors itself; this is a dev host bug
                    log.exception("unhandled error serving %s %s", request.method, request.target.split("?")[0])
                    response = Response(500)
                keep_alive = keep_alive and not self._closing
                try:
                    data = render(response, head_only=request.method == "HEAD", keep_alive=keep_alive)
                except ValueError:
                    log.exception("invalid response headers")
                    data = render(Response(500), head_only=False, keep_alive=keep_alive)
                writer.write(data)
                await writer.drain()
                self._conns[writer] = False
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._conns.pop(writer, None)
            writer.close()

    async def _read_request(self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            peer) -> tuple[Request, bool]:
        text = head.decode("latin-1")
        lines = text.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(400, "malformed request line")
        method, target, version = parts
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if not line:
                continue
            if ":" not in line or line[0] in " \t":
                raise _BadRequest(400, "malformed header")
            k, v = line.split(":", 1)
            headers.append((k.strip(), v.strip()))
        request = Request(method.upper(), target, version, headers, b"", peer)
        connection = (request.header("connection") or "").lower()
        keep_alive = ("close" not in connection) if version == "HTTP/1.1" else ("keep-alive" in connection)

        te = (request.header("transfer-encoding") or "").lower()
        cl = request.header("content-length")
        if te and "chunked" in te:
            request.body = await self._read_chunked(reader, writer, request)
        elif cl is not None:
            try:
                length = int(cl)
                if length < 0:
                    raise ValueError
            except ValueError:
                raise _BadRequest(400, "bad Content-Length") from None
            if length > self._max_body:
                raise _BadRequest(413, "request body too large")
            if length:
                self._continue(request, writer)
                request.body = await reader.readexactly(length)
        return request, keep_alive

    def _continue(self, request: Request, writer: asyncio.StreamWriter) -> None:
        if (request.header("expect") or "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    async def _read_chunked(self, reader, writer, request: Request) -> bytes:
        self._continue(request, writer)
        chunks: list[bytes] = []
        total = 0
        while True:
            line = await reader.readuntil(b"\r\n")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadRequest(400, "bad chunk size") from None
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":   # trailers
                    pass
                return b"".join(chunks)
            total += size
            if total > self._max_body:
                raise _BadRequest(413, "request body too large")
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
