"""Lime CRM on the wire: every request under the retry policy, and what a failed one raises.

`_Transport` (a LimeCrm mixin) sends the calls: `_send` (the client-side rate limit, retries of 429,
5xx and network failures while the wait is short, AmbiguousWrite for a create that may have been
committed), `_json`, the query API (`_query`) and limeobject GET/PUT. The httpx client is built by
LimeCrm._http (gateway.py), the only code that holds the API key. Also here: LimeRejected,
AmbiguousWrite, Lime's error text, a file body streamed in chunks, and the TLS context.
"""
from __future__ import annotations

import asyncio
import json as jsonlib
import logging
import random
from typing import Any, AsyncIterator, Iterable, Mapping

import httpx

from ..errors import NEEDS_A_SETTING, unreachable
from ..http_util import parse_retry_after
from ... import telemetry
from ...domain.errors import PermanentError, TransientError, Unavailable

log = logging.getLogger("inbox.crm.lime")


USER_AGENT = "inbox-functions/1 (+lime)"


API_PREFIX = "/api/v1/"


# Connections to Lime per worker, all kept alive; the worker's other invocations (up to 64, see
# host.json) wait for one in httpx's pool. 8 carry ~400 requests/s at 20 ms, more than one worker's
# CPU can use (and 40x Lime Cloud's limit). httpx's default (100, of which 20 kept alive) closed and
# reopened connections under load, and its pool scans every connection on each request: with 24
# connections that scan was ~25% of a worker's CPU per mail in bench/pipeline.py (70 -> 54 ms).
LIME_CONNECTIONS = 8


# Errors -----------------------------------------------------------------------------------------
class LimeRejected(PermanentError):
    """Lime answered a 4xx: retrying cannot help. `status` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class AmbiguousWrite(TransientError):
    """A write may or may not have been committed (no answer, 500/502/504)."""


_retry_after = parse_retry_after


def _error_message(response: httpx.Response) -> str:
    """Lime's error text: `message` of its JSON (or `error`/`detail`), else the body's text."""
    try:
        doc = response.json()
    except ValueError:
        return " ".join(response.text.split())[:300] or response.reason_phrase
    if isinstance(doc, dict):
        for name in ("message", "Message", "detail", "error", "errors"):
            if doc.get(name):
                return str(doc[name])[:500]
    return str(doc)[:300]


class _FileBody:
    """A seekable binary file sent as a request body in chunks, from the start on every attempt."""

    CHUNK = 256 * 1024

    def __init__(self, file: Any) -> None:
        self._file = file
        file.seek(0, 2)
        self._size = file.tell()
        file.seek(0)

    def __len__(self) -> int:
        return self._size

    async def stream(self) -> AsyncIterator[bytes]:
        self._file.seek(0)
        while True:
            chunk = await asyncio.to_thread(self._file.read, self.CHUNK)
            if not chunk:
                return
            yield chunk


class _Transport:
    """HTTP calls to Lime's REST API (uses LimeCrm's client, limiter and retry settings)."""

    async def _send(self, method: str, path: str, *, params: Mapping[str, str] | None = None, json: Any = None,
                    content: "bytes | _FileBody | None" = None, headers: Mapping[str, str] | None = None,
                    write: bool = False, allow_404: bool = False,
                    timeout: float | None = None) -> httpx.Response | None:
        """One call with the retry policy. `write` (a POST create): a request that may have been
        committed without an answer raises AmbiguousWrite, never repeated here."""
        client = self._http()
        what = f"Lime CRM {method} {path.split('?', 1)[0]}"
        for attempt in range(1, self._attempts + 1):
            await self._limiter.acquire()
            try:
                body = content.stream() if isinstance(content, _FileBody) else content  # a fresh stream per attempt
                request = telemetry.timed(client.request, "crm", telemetry.operation_name(method, path))
                response = await request(method, path, params=params, json=json, content=body,
                                         headers=headers, timeout=timeout or httpx.USE_CLIENT_DEFAULT)
            except (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.InvalidURL) as exc:
                raise PermanentError(f"{what}: cannot be sent ({type(exc).__name__}); check LIME_CRM_URL") from None
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError) as exc:
                error: TransientError = unreachable("lime", self._base, exc, self._ca_bundle, what)
                if error.reason in NEEDS_A_SETTING:
                    raise error from None  # retrying cannot help until a setting is fixed
            except httpx.TransportError as exc:  # read/write timeouts, dropped connections
                if write:
                    raise AmbiguousWrite(f"{what}: no answer ({type(exc).__name__})") from None
                error = TransientError(f"{what}: no answer ({type(exc).__name__})")
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return response
                if status == 404 and allow_404:
                    return None
                message = self._scrub(_error_message(response))
                retry_after = _retry_after(response.headers.get("Retry-After"))
                if status == 429 or status >= 500:
                    if write and status not in (429, 503):
                        raise AmbiguousWrite(f"{what}: {status} {message[:200]}", retry_after=retry_after)
                    error = Unavailable(f"{what}: {status} {message[:200]}", "lime_unavailable", service="Lime CRM",
                                        host=httpx.URL(self._base).host, retry_after=retry_after,
                                        detail={"status": status})
                elif status in (401, 403):
                    raise LimeRejected(status, f"Lime CRM refused the API key (HTTP {status}: {message[:200]}); "
                                               "check LIME_CRM_API_KEY and the API user's rights")
                else:
                    raise LimeRejected(status, f"{what}: {status} {message}")
            wait = error.retry_after if error.retry_after is not None else \
                self._backoff * (2 ** (attempt - 1)) * (0.5 + random.random())
            if attempt >= self._attempts or wait > self._max_wait:
                raise error
            log.info("lime.retry method=%s path=%s attempt=%s wait=%.2fs error=%s", method, path.split("?", 1)[0],
                     attempt, wait, error)
            await self._sleep(wait)
        raise AssertionError("unreachable")

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._send(method, path, **kwargs)
        if response is None:
            return None
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            raise TransientError(f"Lime CRM {method} {path}: the answer is not JSON") from None

    async def _query(self, limetype: str, fields: Iterable[str] | Mapping[str, Any], flt: Any = None,
                     order: list[dict[str, str]] | None = None, limit: int = 1) -> list[dict[str, Any]]:
        """The query API: `GET query/?q=<json>` -> objects."""
        fmt = dict(fields) if isinstance(fields, Mapping) else {name: "" for name in fields}
        fmt.setdefault("_id", "")
        q: dict[str, Any] = {"limetype": limetype, "responseFormat": {"object": fmt},
                             "orderBy": order or [{"_id": "ASC"}], "limit": limit, "offset": 0}
        if flt is not None:
            q["filter"] = flt
        doc = await self._json("GET", "query/", params={"q": jsonlib.dumps(q, separators=(",", ":"))})
        objects = (doc or {}).get("objects") if isinstance(doc, dict) else None
        if not isinstance(objects, list):
            raise TransientError(f"Lime CRM query on {limetype}: the answer has no 'objects' list")
        return [o for o in objects if isinstance(o, dict)]

    async def _get_object(self, limetype: str, oid: int) -> dict[str, Any] | None:
        return await self._json("GET", f"limeobject/{limetype}/{oid}/", allow_404=True)

    async def _put(self, limetype: str, oid: int, values: dict[str, Any]) -> dict[str, Any] | None:
        return await self._json("PUT", f"limeobject/{limetype}/{oid}/", json=values, allow_404=True)
