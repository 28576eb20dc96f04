"""Lime CRM (`CRM_BACKEND=lime`): the CrmGateway over Lime's REST API (facts §1), plus the browsing
and company helpers TableCrm has, with the same business results.

Wire: httpx (async), base `LIME_CRM_URL` + `/api/v1/`, headers `x-api-key` and
`Accept: application/hal+json`, TLS verified against the system store plus `OUTBOUND_CA_BUNDLE`.
Calls: limeobject CRUD (`POST|GET|PUT limeobject/{limetype}/[{id}/]`), the query API
(`GET query/?q=<json>`) for every lookup (person by email, helpdesk by number, by idempotency key, by
Message-ID), `POST file/` then a `document` limeobject for files, `GET limetype/{name}/?_embed=properties`
for the schema check.

Ids: persons, companies, history notes and documents are Lime's `_id` as a string; a ticket id is
`hd<_id>` (so `set_ticket_status("1042")`, a ticket NUMBER, can never be mistaken for an id).
`reserve_ticket_number()` is '' (Lime numbers tickets itself, e.g. the Helpdesk add-on's save hook);
the number is read from the created object.

Idempotency (Lime has no unique constraints): every object the inbox creates carries the hash of its
idempotency key in a text property (`LIME_KEY_PROPERTY`, default `inboxkey`, on helpdesk, history,
document and company). A create holds a lock on (limetype, key), queries the key, and POSTs only when
nothing has it; an answer lost after Lime's commit is resolved by querying the key again. Persons are
keyed by their e-mail address under the same lock, so concurrent first mails of a new sender make one
person. The lock is an ETag-guarded row in the Azure Table `ratelimits` (partition `limelock`, row =
hash of the name) holding an expiry; a crashed holder's row is taken over once it expired
(TableKeyLock), behind an in-process asyncio lock per name. Without the key property on a limetype
(reported by check_schema) creates of that limetype are NOT idempotent: a crash or timeout between
Lime's commit and the ledger record, or the same mail in two monitored mailboxes at once, can make a
duplicate. docs/lime.md states the schema requirement.

Limits (read from the schema, Lime's core lengths as fallback): titles are clipped to 128; a note
longer than `note` (4,000) is cut, marked, and its full text stored as a document on the ticket,
linked from the note; a description likewise; an empty note becomes "(no text)" (Lime requires one).

Errors: 429 and 5xx and network failures are retried here while the wait is short (Retry-After
honoured up to `max_wait`), then raised as TransientError(retry_after). A POST create is never
blindly repeated: an ambiguous failure (500/502/504, no answer) is resolved by the key query. Other
4xx are PermanentError with Lime's message (401/403 name the API key setting, never the key). A
client-side sliding-window limiter keeps this worker under LIME_RATE_LIMIT_REQUESTS per
LIME_RATE_LIMIT_WINDOW_SECONDS (Lime Cloud: 3,000 per 5 minutes per IP); a long wait is raised as
TransientError(retry_after) instead of blocking.
"""
from __future__ import annotations

import asyncio
import contextlib
import json as jsonlib
import logging
import random
import re
import ssl
import time
import uuid
import weakref
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Protocol
from urllib.parse import quote

import httpx

from . import tls
from .http_util import parse_retry_after
from .. import telemetry
from ..config import SETTINGS, ConfigError, Settings
from ..domain.errors import PermanentError, TransientError
from ..domain.matching import website_domain
from ..domain.model import DocumentDraft, HistoryDraft, PersonRef, TicketDraft, TicketRef
from .crm_table import (
    HISTORY_TYPES, STATUSES, check_company_match, check_history_type, check_status, clip_title, merge_message_ids,
    normalize_domain, normalize_email, normalize_message_id, require_key, split_name, utc,
)
from .keys import exact_hash

log = logging.getLogger("inbox.crm.lime")

USER_AGENT = "inbox-functions/1 (+lime)"
API_PREFIX = "/api/v1/"
# Connections to Lime per worker, all kept alive; the worker's other invocations (up to 64, see
# host.json) wait for one in httpx's pool. 8 carry ~400 requests/s at 20 ms, more than one worker's
# CPU can use (and 40x Lime Cloud's limit). httpx's default (100, of which 20 kept alive) closed and
# reopened connections under load, and its pool scans every connection on each request: with 24
# connections that scan was ~25% of a worker's CPU per mail in bench/pipeline.py (70 -> 54 ms).
LIME_CONNECTIONS = 8
LIMETYPES = ("person", "company", "helpdesk", "history", "document")
KEYED = ("helpdesk", "history", "document", "company")  # limetypes created with an idempotency key
KEY_VALUE_LENGTH = 40  # the key property holds sha256(key)[:40]
NO_TEXT = "(no text)"
QUERY_URL_MAX = 1900  # a threading query's query string: the query API is a GET, and servers cap URLs
                      # (IIS: 2,048 bytes of query string by default); longer reference lists take more GETs
DEFAULT_LENGTHS = {  # Lime's core model (facts §1.11), used until the schema says otherwise
    ("helpdesk", "title"): 128, ("helpdesk", "description"): 1024, ("helpdesk", "email"): 100,
    ("history", "note"): 4000, ("person", "firstname"): 32, ("person", "lastname"): 50,
    ("person", "email"): 100, ("company", "name"): 200, ("company", "www"): 100, ("company", "email"): 100,
    ("document", "comment"): 512,
}
STRING_TYPES = ("string", "text", "link", "phone")
SCHEMA_TTL_OK = 3600.0
SCHEMA_TTL_BAD = 60.0


# Settings ---------------------------------------------------------------------------------------
_DEFAULTS = {s.name: s.default or "" for s in SETTINGS}


@dataclass(frozen=True)
class LimeNames:
    """Property and option names of the customer's helpdesk model (LIME_* settings)."""
    helpdesk_number: str = "helpdesknumber"
    helpdesk_status: str = "helpdeskstatus"
    statuses: Mapping[str, str] = field(default_factory=lambda: {s: s for s in STATUSES})
    history_types: Mapping[str, str] = field(default_factory=lambda: {t: t for t in HISTORY_TYPES})
    key_property: str = "inboxkey"
    message_ids: str = "inboxmessageids"
    company_website: str = "www"
    company_email: str = "email"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "LimeNames":
        problems: list[str] = []

        def required(name: str) -> str:
            value = (env.get(name) if name in env else _DEFAULTS.get(name, "")) or ""
            if not value.strip():
                problems.append(f"{name} must name a Lime property or option key (default {_DEFAULTS.get(name)!r})")
            return value.strip()

        def optional(name: str) -> str:  # '' switches the feature off
            return ((env.get(name) if name in env else _DEFAULTS.get(name, "")) or "").strip()

        names = cls(
            helpdesk_number=required("LIME_PROP_HELPDESK_NUMBER"),
            helpdesk_status=required("LIME_PROP_HELPDESK_STATUS"),
            statuses={"started": required("LIME_STATUS_STARTED"), "done": required("LIME_STATUS_DONE"),
                      "parked": required("LIME_STATUS_PARKED")},
            history_types={"receivedemail": required("LIME_HISTORY_TYPE_RECEIVED"),
                           "sentemail": required("LIME_HISTORY_TYPE_SENT"),
                           "comment": required("LIME_HISTORY_TYPE_COMMENT")},
            key_property=optional("LIME_KEY_PROPERTY"),
            message_ids=optional("LIME_PROP_MESSAGE_IDS"),
            company_website=optional("LIME_PROP_COMPANY_WEBSITE"),
            company_email=optional("LIME_PROP_COMPANY_EMAIL"),
        )
        if len(set(names.statuses.values())) != len(names.statuses):
            problems.append("LIME_STATUS_STARTED, LIME_STATUS_DONE and LIME_STATUS_PARKED must be different keys")
        if problems:
            raise ConfigError("Invalid Lime settings: " + "; ".join(problems))
        return names


def _int_setting(env: Mapping[str, str], name: str, minimum: int) -> int:
    raw = (env.get(name) or _DEFAULTS.get(name) or "0").strip()
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}")
    return value


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


# Rate limiter -----------------------------------------------------------------------------------
class SlidingWindowLimiter:
    """At most `limit` requests in any `window` seconds (this worker). A wait up to `max_wait` is
    slept; a longer one raises TransientError(retry_after) so the caller can re-enqueue."""

    def __init__(self, limit: int, window: float, *, max_wait: float = 5.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] | None = None) -> None:
        self.limit = limit
        self.window = window
        self.max_wait = max_wait
        self._clock = clock
        self._sleep = sleep or asyncio.sleep
        self._stamps: deque[float] = deque()

    async def acquire(self) -> None:
        if self.limit <= 0:
            return
        while True:
            now = self._clock()
            while self._stamps and self._stamps[0] <= now - self.window:
                self._stamps.popleft()
            if len(self._stamps) < self.limit:
                self._stamps.append(now)
                return
            wait = self._stamps[0] + self.window - now
            if wait > self.max_wait:
                raise TransientError(f"Lime CRM: the client-side budget of {self.limit} requests per "
                                     f"{self.window:g} s is used up", retry_after=wait)
            await self._sleep(max(wait, 0.001))


# Locks ------------------------------------------------------------------------------------------
class Held(Protocol):
    def check(self) -> None:
        """Raise TransientError when the lock is about to expire (do not start a write)."""


class KeyLock(Protocol):
    def hold(self, name: str) -> contextlib.AbstractAsyncContextManager[Held]: ...


class _LocalHeld:
    def check(self) -> None:
        return None


class _LocalLocks:
    """asyncio.Lock per name, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: "weakref.WeakValueDictionary[str, asyncio.Lock]" = weakref.WeakValueDictionary()

    def get(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[name] = lock
        return lock


class LocalKeyLock:
    """In-process only: enough for one worker (tests, a single instance); not across instances."""

    def __init__(self) -> None:
        self._locks = _LocalLocks()

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[Held]:
        async with self._locks.get(name):
            yield _LocalHeld()


@dataclass
class _TableHeld:
    etag: str
    deadline: float  # time.monotonic() when the lease runs out
    margin: float

    def check(self) -> None:
        if time.monotonic() > self.deadline - self.margin:
            raise TransientError("Lime CRM: the create lock's lease ran out before the write; try again",
                                 retry_after=1)


class TableKeyLock:
    """A lock per name across every worker and instance: an ETag-guarded row in an Azure Table.

    Acquire = insert the row (PartitionKey `limelock`, RowKey sha256(name)) with an expiry; if it
    exists and has expired (its holder crashed), take it over with an If-Match replace; else wait
    (jittered backoff) up to `wait_seconds`, then TransientError. Release = delete If-Match our
    ETag (a holder whose lease ran out cannot delete its successor's row). A holder checks
    `held.check()` before each write, so it never writes after its lease could have been taken."""

    PARTITION = "limelock"

    def __init__(self, account: Any, table: str = "ratelimits", lease_seconds: float = 60.0,
                 wait_seconds: float = 30.0) -> None:
        self._account = account
        self.table_name = table
        self.lease = lease_seconds
        self.wait = wait_seconds
        self._local = _LocalLocks()
        self._ensured = False

    @property
    def _table(self) -> Any:
        return self._account.table(self.table_name)

    async def ensure(self) -> None:
        await self._account.ensure_tables(self.table_name)
        self._ensured = True

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[Held]:
        async with self._local.get(name):
            held = await self._acquire(name)
            try:
                yield held
            finally:
                await self._release(name, held)

    async def _acquire(self, name: str) -> _TableHeld:
        from azure.core import MatchConditions
        from azure.core.exceptions import (
            HttpResponseError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError,
        )
        from azure.data.tables import UpdateMode

        from .errors import raise_storage

        rk = exact_hash(name)
        give_up = time.monotonic() + self.wait
        attempt = 0
        while True:
            attempt += 1
            now = datetime.now(timezone.utc)
            started = time.monotonic()
            entity = {"PartitionKey": self.PARTITION, "RowKey": rk, "owner": uuid.uuid4().hex,
                      "expires": now + timedelta(seconds=self.lease)}
            try:
                try:
                    meta = await self._table.create_entity(entity)
                    return _TableHeld(meta["etag"], started + self.lease, min(10.0, self.lease / 3))
                except ResourceExistsError:
                    pass
                try:
                    current = await self._table.get_entity(self.PARTITION, rk)
                except ResourceNotFoundError as exc:
                    if _table_missing(exc):
                        raise
                    continue  # released in between: insert again
                expires = current.get("expires")
                if isinstance(expires, datetime) and utc(expires) <= now:
                    try:
                        meta = await self._table.update_entity(
                            entity, mode=UpdateMode.REPLACE, etag=current.metadata["etag"],
                            match_condition=MatchConditions.IfNotModified)
                        log.info("lime.lock-taken-over lock=%s", rk[:12])
                        return _TableHeld(meta["etag"], started + self.lease, min(10.0, self.lease / 3))
                    except (ResourceModifiedError, ResourceNotFoundError):
                        pass
                    except HttpResponseError as exc:
                        if exc.status_code not in (409, 412):
                            raise
            except ResourceNotFoundError as exc:
                if _table_missing(exc) and not self._ensured:
                    await self.ensure()
                    continue
                raise_storage(exc, "Lime create lock")
            except HttpResponseError as exc:
                raise_storage(exc, "Lime create lock")
            except Exception as exc:  # azure-core transport errors
                from azure.core.exceptions import ServiceRequestError, ServiceResponseError
                if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
                    raise_storage(exc, "Lime create lock")
                raise
            if time.monotonic() > give_up:
                raise TransientError("Lime CRM: another worker holds the create lock for this object; try again",
                                     retry_after=min(self.lease, 5.0))
            await asyncio.sleep(random.uniform(0.005, min(0.02 * attempt, 0.25)))

    async def _release(self, name: str, held: _TableHeld) -> None:
        from azure.core import MatchConditions
        try:
            await self._table.delete_entity(self.PARTITION, exact_hash(name), etag=held.etag,
                                            match_condition=MatchConditions.IfNotModified)
        except Exception as exc:  # noqa: BLE001 - the lease expires anyway; never mask the real outcome
            if type(exc).__name__ not in ("ResourceNotFoundError", "ResourceModifiedError"):
                log.warning("lime.lock-release-failed lock=%s error=%s", exact_hash(name)[:12], type(exc).__name__)


def _table_missing(exc: BaseException) -> bool:
    return "TableNotFound" in f"{getattr(exc, 'error_code', '') or ''} {exc}"


# Schema -----------------------------------------------------------------------------------------
@dataclass
class SchemaReport:
    """What check_schema found. `problems`: the settings name something the schema lacks (writes
    would fail); `warnings`: works, with the stated loss; `properties`: limetype -> name -> spec."""
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    properties: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def has(self, limetype: str, name: str) -> bool:
        return bool(name) and name in self.properties.get(limetype, {})

    def length(self, limetype: str, name: str) -> int:
        spec = self.properties.get(limetype, {}).get(name)
        if spec is not None:
            return int(spec.get("length") or 0)
        return DEFAULT_LENGTHS.get((limetype, name), 0)

    def options(self, limetype: str, name: str) -> set[str]:
        spec = self.properties.get(limetype, {}).get(name) or {}
        return {str(o.get("key")) for o in spec.get("options") or [] if not o.get("inactive")}


def _kind(spec: Mapping[str, Any] | None) -> str:
    return str((spec or {}).get("type", ""))


def _related(spec: Mapping[str, Any] | None) -> str:
    return str((((spec or {}).get("_links") or {}).get("related_type") or {}).get("name", ""))


# Values -----------------------------------------------------------------------------------------
def _option_key(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("key") or "")
    return "" if value is None else str(value)


def _rel_id(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("_id", value.get("id"))
    return "" if value in (None, "", 0) else str(value)


def _time_out(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        return utc(value).isoformat()
    text = str(value).strip()
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        return text
    return utc(parsed).isoformat()


def _time_in(value: datetime) -> str:
    return utc(value).isoformat()


def _oid(value: Any) -> int | None:
    text = str(value or "").strip()
    if text.startswith("hd"):
        text = text[2:]
    return int(text) if text.isdigit() and len(text) <= 12 else None


def ticket_id_of(oid: Any) -> str:
    return f"hd{oid}"


def _key_value(key: str) -> str:
    return exact_hash(require_key(key), KEY_VALUE_LENGTH)


def _clip(text: str, limit: int) -> str:
    return text[:limit] if limit and len(text) > limit else text


def parse_message_ids(text: str) -> list[str]:
    return merge_message_ids([], re.findall(r"<([^<>\s]+)>", text or ""))


def fit_message_ids(ids: list[str], limit: int) -> str:
    """'<a> <b> ...' within `limit` characters: the first (the thread's root) and the newest win."""
    def text(items: list[str]) -> str:
        return " ".join(f"<{m}>" for m in items)

    ids = [m for m in ids if not limit or len(m) + 2 <= limit]
    if not ids or not limit or len(text(ids)) <= limit:
        return text(ids)
    keep, budget = [ids[0]], limit - len(ids[0]) - 2
    tail: list[str] = []
    for mid in reversed(ids[1:]):
        if len(mid) + 3 > budget:
            break
        tail.insert(0, mid)
        budget -= len(mid) + 3
    return text(keep + tail)


def _query_url_length(value: Any) -> int:
    """Characters `value` takes in `?q=<url-encoded JSON>`."""
    return len(quote(jsonlib.dumps(value, separators=(",", ":")), safe="")) + 2


def _chunks(items: list[Any], budget: int, size: Callable[[Any], int]) -> Iterable[list[Any]]:
    """Consecutive groups whose total size stays within `budget` (a bigger item goes alone)."""
    group: list[Any] = []
    total = 0
    for item in items:
        cost = size(item)
        if group and total + cost > budget:
            yield group
            group, total = [], 0
        group.append(item)
        total += cost
    if group:
        yield group


def _looks_html(text: str) -> bool:
    return bool(re.search(r"<(html|body|p|div|br|table|span)\b", text[:2000], re.IGNORECASE))


def truncate_note(text: str, limit: int, marker: str) -> str:
    """`text` cut to fit `limit` with `marker` appended; never ends inside an HTML tag."""
    room = max(0, limit - len(marker))
    cut = text[:room]
    if cut.rfind("<") > cut.rfind(">"):
        cut = cut[:cut.rfind("<")]
    return cut + marker


def _clean_filename(name: str) -> str:
    cleaned = "".join(ch for ch in (name or "") if ch >= " " and ch != "\x7f").strip()
    return cleaned[:255] or "file"


# The adapter ------------------------------------------------------------------------------------
class LimeCrm:
    """CrmGateway on Lime CRM's REST API, plus TableCrm's browsing and company helpers."""

    TICKET_FIELDS = ("title", "person", "company")

    def __init__(self, base_url: str, api_key: str, *, names: LimeNames | None = None,
                 locks: KeyLock | None = None, ca_bundle: str = "", rate_limit: int = 3000,
                 rate_window: float = 300.0, timeout: float = 30.0, upload_timeout: float = 300.0,
                 attempts: int = 4, max_wait: float = 5.0, backoff: float = 0.5,
                 max_file_bytes: int = 100 * 1024 * 1024,
                 sleep: Callable[[float], Awaitable[None]] | None = None,
                 clock: Callable[[], datetime] | None = None,
                 limiter: SlidingWindowLimiter | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._base = base_url.rstrip("/")
        self.__key = api_key
        self.names = names or LimeNames()
        self._locks: KeyLock = locks or LocalKeyLock()
        self._ca_bundle = ca_bundle
        self._verify: Any = tls.verify_for(ca_bundle)
        self._timeout = timeout
        self._upload_timeout = upload_timeout
        self._attempts = max(1, attempts)
        self._max_wait = max_wait
        self._backoff = backoff
        self.max_file_bytes = max_file_bytes
        self._sleep = sleep or asyncio.sleep
        self._now = clock or (lambda: datetime.now(timezone.utc))
        self._limiter = limiter or SlidingWindowLimiter(rate_limit, rate_window, max_wait=max_wait, sleep=self._sleep)
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._report: SchemaReport | None = None
        self._report_at = float("-inf")
        self._schema_lock: asyncio.Lock | None = None
        self._status_back = {v: k for k, v in self.names.statuses.items()}

    @classmethod
    def from_settings(cls, settings: Settings, account: Any = None, **kwargs: Any) -> "LimeCrm":
        """Built by shared/bootstrap.py. The create locks live in the `ratelimits` table of
        `account` (a StorageAccount; one is made from AzureWebJobsStorage when not given)."""
        env = settings.env
        if account is None:
            from .storage_clients import StorageAccount
            account = StorageAccount(settings.storage_connection, env)
        kwargs.setdefault("names", LimeNames.from_env(env))
        kwargs.setdefault("rate_limit", _int_setting(env, "LIME_RATE_LIMIT_REQUESTS", 0))
        kwargs.setdefault("rate_window", float(_int_setting(env, "LIME_RATE_LIMIT_WINDOW_SECONDS", 1)))
        kwargs.setdefault("locks", TableKeyLock(account))
        return cls(settings.lime_url, settings.lime_api_key, ca_bundle=settings.ca_bundle, **kwargs)

    def __repr__(self) -> str:  # never the key
        return f"LimeCrm(base_url={self._base!r})"

    # plumbing -----------------------------------------------------------------------------------
    def _http(self) -> httpx.AsyncClient:
        if not self._base:
            raise PermanentError("LIME_CRM_URL is not set (CRM_BACKEND=lime)")
        if not self.__key:
            raise PermanentError("LIME_CRM_API_KEY is not set (CRM_BACKEND=lime)")
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self._base + API_PREFIX, verify=self._verify, transport=self._transport,
                timeout=httpx.Timeout(self._timeout, connect=min(self._timeout, 10.0)), follow_redirects=False,
                headers={"x-api-key": self.__key, "Accept": "application/hal+json", "User-Agent": USER_AGENT},
                limits=httpx.Limits(max_connections=LIME_CONNECTIONS, max_keepalive_connections=LIME_CONNECTIONS))
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def ensure(self) -> None:
        """Create the lock table (Services.ready() calls this). Does not call Lime."""
        ensure = getattr(self._locks, "ensure", None)
        if ensure is not None:
            await ensure()

    def _scrub(self, text: str) -> str:
        key = self.__key
        return text.replace(key, "***") if key and len(key) >= 4 else text

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
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                untrusted = tls.certificate_problem(exc)
                if untrusted:  # retrying cannot help until OUTBOUND_CA_BUNDLE is fixed
                    raise tls.untrusted("Lime CRM", self._base, untrusted, self._ca_bundle) from None
                error: TransientError = TransientError(f"{what}: unreachable ({type(exc).__name__})")
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
                    error = TransientError(f"{what}: {status} {message[:200]}", retry_after=retry_after)
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

    # schema -------------------------------------------------------------------------------------
    async def check_schema(self) -> SchemaReport:
        """Read `limetype/{name}/?_embed=properties` for person, company, helpdesk, history and
        document, and report every configured property or option that does not exist."""
        report = SchemaReport()
        for lt in LIMETYPES:
            doc = await self._json("GET", f"limetype/{lt}/", params={"_embed": "properties"}, allow_404=True)
            if doc is None:
                report.problems.append(f"limetype '{lt}' does not exist")
                continue
            props = ((doc or {}).get("_embedded") or {}).get("properties") or []
            report.properties[lt] = {str(p.get("name")): p for p in props if isinstance(p, dict) and p.get("name")}
        if not report.properties:
            report.problems[:] = [f"LIME_CRM_URL ({self._base}) has none of the limetypes {', '.join(LIMETYPES)}: "
                                  "check the database part of the URL"]
        self._check_properties(report)
        self._report, self._report_at = report, time.monotonic()
        return report

    def _check_properties(self, report: SchemaReport) -> None:
        n = self.names
        P = report.properties

        def need(lt: str, name: str, kinds: tuple[str, ...], related: str = "", setting: str = "") -> bool:
            if lt not in P:
                return False
            spec = P[lt].get(name)
            origin = f" (set by {setting})" if setting else ""
            if spec is None:
                report.problems.append(f"{lt}.{name}{origin} does not exist")
                return False
            if _kind(spec) not in kinds:
                report.problems.append(f"{lt}.{name}{origin} is of type '{_kind(spec)}', expected {' or '.join(kinds)}")
                return False
            if related and _related(spec) and _related(spec) != related:
                report.problems.append(f"{lt}.{name} relates to '{_related(spec)}', expected '{related}'")
                return False
            return True

        text = STRING_TYPES
        need("person", "firstname", text)
        need("person", "lastname", text)
        need("person", "email", text)
        need("company", "name", text)
        need("helpdesk", "title", text)
        need("helpdesk", n.helpdesk_number, ("integer", "string", "text"), setting="LIME_PROP_HELPDESK_NUMBER")
        if need("helpdesk", n.helpdesk_status, ("option",), setting="LIME_PROP_HELPDESK_STATUS"):
            available = report.options("helpdesk", n.helpdesk_status)
            for ours, setting in (("started", "LIME_STATUS_STARTED"), ("done", "LIME_STATUS_DONE"),
                                  ("parked", "LIME_STATUS_PARKED")):
                if n.statuses[ours] not in available:
                    report.problems.append(f"helpdesk.{n.helpdesk_status} has no active option '{n.statuses[ours]}' "
                                           f"(set by {setting}); its options: {', '.join(sorted(available)) or 'none'}")
        need("helpdesk", "person", ("belongsto",), "person")
        need("helpdesk", "company", ("belongsto",), "company")
        need("history", "date", ("time", "date"))
        need("history", "note", text)
        need("history", "helpdesk", ("belongsto",), "helpdesk")
        need("history", "person", ("belongsto",), "person")
        if need("history", "type", ("option",)):
            available = report.options("history", "type")
            for ours, setting in (("receivedemail", "LIME_HISTORY_TYPE_RECEIVED"),
                                  ("sentemail", "LIME_HISTORY_TYPE_SENT"), ("comment", "LIME_HISTORY_TYPE_COMMENT")):
                if n.history_types[ours] not in available:
                    report.problems.append(f"history.type has no active option '{n.history_types[ours]}' (set by "
                                           f"{setting}); its options: {', '.join(sorted(available)) or 'none'}")
        need("document", "document", ("file",))
        need("document", "helpdesk", ("belongsto",), "helpdesk")

        # the idempotency key property on every limetype the inbox creates
        for lt in KEYED:
            if lt not in P:
                continue
            loss = ("companies are matched by name instead of by key" if lt == "company" else
                    f"creating a {lt} is not idempotent: a crash or timeout between Lime's create and the ledger "
                    f"record, or the same mail arriving in two monitored mailboxes at once, can make a duplicate "
                    f"{'ticket' if lt == 'helpdesk' else lt}")
            if not n.key_property:
                report.warnings.append(f"LIME_KEY_PROPERTY is empty: {loss}")
                continue
            spec = P[lt].get(n.key_property)
            if spec is None:
                report.warnings.append(f"{lt}.{n.key_property} (LIME_KEY_PROPERTY) does not exist: {loss}")
            elif _kind(spec) not in ("string", "text"):
                report.problems.append(f"{lt}.{n.key_property} (LIME_KEY_PROPERTY) is of type '{_kind(spec)}'; "
                                       "it must be a text property")
            elif spec.get("length") and int(spec["length"]) < KEY_VALUE_LENGTH:
                report.problems.append(f"{lt}.{n.key_property} (LIME_KEY_PROPERTY) holds {spec['length']} "
                                       f"characters; it needs at least {KEY_VALUE_LENGTH}")
        if "helpdesk" in P:
            if not n.message_ids:
                report.warnings.append("LIME_PROP_MESSAGE_IDS is empty: replies thread by the subject tag only, "
                                       "not by In-Reply-To/References")
            elif n.message_ids not in P["helpdesk"]:
                report.warnings.append(f"helpdesk.{n.message_ids} (LIME_PROP_MESSAGE_IDS) does not exist: replies "
                                       "thread by the subject tag only, not by In-Reply-To/References")
            elif _kind(P["helpdesk"][n.message_ids]) not in ("string", "text"):
                report.problems.append(f"helpdesk.{n.message_ids} (LIME_PROP_MESSAGE_IDS) must be a text property")
        if "company" in P:
            for name, setting in ((n.company_website, "LIME_PROP_COMPANY_WEBSITE"),
                                  (n.company_email, "LIME_PROP_COMPANY_EMAIL")):
                if name and name not in P["company"]:
                    report.warnings.append(f"company.{name} ({setting}) does not exist: companies are not matched "
                                           "by it")
        if "history" in P and "document" not in P["history"]:
            report.warnings.append("history.document does not exist: a long note's full-text document is on the "
                                   "ticket but not linked from the note")
        # required properties the inbox never sets: creates would fail unless routing values set them
        sets = {"person": {"firstname", "lastname", "email", "name"},
                "company": {"name", n.company_website, n.key_property},
                "helpdesk": {"title", n.helpdesk_status, n.helpdesk_number, "person", "company", "email",
                             "description", "startdate", "enddate", n.key_property, n.message_ids},
                "history": {"date", "type", "note", "helpdesk", "person", "company", "document", n.key_property},
                "document": {"document", "comment", "type", "helpdesk", n.key_property}}
        for lt, props in P.items():
            for name, spec in props.items():
                if spec.get("required") and name not in sets.get(lt, set()) and _kind(spec) not in ("hasmany",):
                    report.warnings.append(f"{lt}.{name} is required and the inbox does not set it: creates fail "
                                           "unless the mailbox's routing values set it" if lt == "helpdesk" else
                                           f"{lt}.{name} is required and the inbox does not set it: creates fail")

    async def _schema(self) -> SchemaReport:
        """The cached schema report (re-checked hourly, every minute while it has problems)."""
        age = time.monotonic() - self._report_at
        report = self._report
        if report is not None and age < (SCHEMA_TTL_OK if report.ok else SCHEMA_TTL_BAD):
            return self._raise_problems(report)
        if self._schema_lock is None:
            self._schema_lock = asyncio.Lock()
        async with self._schema_lock:
            if self._report is None or time.monotonic() - self._report_at >= (
                    SCHEMA_TTL_OK if self._report.ok else SCHEMA_TTL_BAD):
                fresh = await self.check_schema()
                for warning in fresh.warnings:
                    log.warning("lime.schema %s", warning)
                for problem in fresh.problems:
                    log.error("lime.schema %s", problem)
        assert self._report is not None
        return self._raise_problems(self._report)

    @staticmethod
    def _raise_problems(report: SchemaReport) -> SchemaReport:
        if report.problems:
            raise PermanentError("Lime CRM schema does not match the LIME_* settings: " + "; ".join(report.problems))
        return report

    @property
    def schema_report(self) -> SchemaReport | None:
        """The last schema check (None before the first call to Lime)."""
        return self._report

    def _keyed(self, report: SchemaReport, limetype: str) -> bool:
        return report.has(limetype, self.names.key_property)

    # creating under a lock -------------------------------------------------------------------------
    async def _create_once(self, limetype: str, body: dict[str, Any], lock_name: str | None,
                           find: Callable[[], Awaitable[dict[str, Any] | None]] | None) -> tuple[dict[str, Any], bool]:
        """(object, created). With `find` (the key query) under the lock `lock_name`: what `find`
        returns, else a POST; an ambiguous POST is resolved by `find` again. Without `find`: one POST."""
        if find is None or lock_name is None:
            try:
                return await self._json("POST", f"limeobject/{limetype}/", json=body, write=True), True
            except AmbiguousWrite as exc:
                raise TransientError(f"{exc} (without the key property {limetype}.{self.names.key_property or '-'} "
                                     "a retry may create it twice)", retry_after=exc.retry_after) from None
        async with self._locks.hold(lock_name) as held:
            last: AmbiguousWrite | None = None
            for attempt in range(3):
                found = await find()
                if found is not None:
                    return found, False
                held.check()
                try:
                    return await self._json("POST", f"limeobject/{limetype}/", json=body, write=True), True
                except AmbiguousWrite as exc:
                    last = exc
                    log.info("lime.ambiguous-create limetype=%s attempt=%s error=%s", limetype, attempt + 1, exc)
                    wait = exc.retry_after if exc.retry_after is not None else self._backoff * (attempt + 1)
                    if wait > self._max_wait:
                        break
                    await self._sleep(wait)
            assert last is not None
            raise TransientError(str(last), retry_after=last.retry_after)

    async def _find_key(self, limetype: str, kv: str,
                        fields: Iterable[str] | Mapping[str, Any]) -> dict[str, Any] | None:
        rows = await self._query(limetype, fields, {"key": self.names.key_property, "op": "=", "exp": kv})
        return rows[0] if rows else None

    async def _require_ticket_on_reject(self, exc: LimeRejected, ticket_id: str) -> None:
        """A 4xx while writing onto a ticket: if the ticket is gone, say so plainly."""
        oid = _oid(ticket_id)
        if ticket_id and (oid is None or await self._get_object("helpdesk", oid) is None):
            raise PermanentError(f"Lime CRM: no ticket {ticket_id}") from exc

    # persons ------------------------------------------------------------------------------------
    async def _find_person_row(self, email: str) -> dict[str, Any] | None:
        rows = await self._query("person", ("email", "company"), {"key": "email", "op": "=", "exp": email})
        return rows[0] if rows else None

    async def find_or_create_person(self, address: str, name: str, company_id: str = "") -> str:
        """The first person (lowest id) with this address (compared without case); created with
        `company_id` when there is none (an existing person is left as it is). Concurrent calls for
        one address, in any worker, make one person: the lookup runs under the lock on the address
        (one Lime call for a known sender, two for a new one; the lock costs Table calls, not Lime's)."""
        email = normalize_email(address)
        report = await self._schema()
        limit = report.length("person", "email")
        if limit and len(email) > limit:
            raise PermanentError(f"Lime CRM: the sender address is {len(email)} characters; person.email holds {limit}")
        company = _oid(company_id) if company_id else None
        if company_id and company is None:
            raise PermanentError(f"Lime CRM: no company {company_id}")
        first, last, _ = split_name(name, email)
        body: dict[str, Any] = {"firstname": _clip(first, report.length("person", "firstname")) or email[:1],
                                "lastname": _clip(last, report.length("person", "lastname")), "email": email}
        if company is not None:
            body["company"] = company
        obj, created = await self._create_once("person", body, f"person|{email}",
                                               lambda: self._find_person_row(email))
        if created:
            log.info("lime.person-created id=%s", obj.get("_id"))
        return str(obj["_id"])

    async def lookup_person(self, address: str) -> PersonRef | None:
        """The first person whose email is `address` (case-insensitive), with its company."""
        try:
            email = normalize_email(address)
        except ValueError:
            return None
        row = await self._find_person_row(email)
        return PersonRef(str(row["_id"]), _rel_id(row.get("company"))) if row is not None else None

    async def find_person(self, address: str) -> str | None:
        found = await self.lookup_person(address)
        return found.id if found is not None else None

    async def person_company_ids(self, domain: str, limit: int = 2) -> list[str]:
        """Distinct company ids ('' for none) of the persons whose email has `domain`, at most
        `limit`: one query per distinct id, each excluding the ids already found."""
        dom = normalize_domain(domain)
        if not dom or limit <= 0:
            return []
        out: list[str] = []
        suffix = "@" + dom
        while len(out) < limit:
            terms: list[dict[str, Any]] = [{"key": "email", "op": "?", "exp": suffix}]
            terms += [{"key": "company", "op": "!", "exp": int(c) if c else None} for c in out]
            rows = await self._query("person", ("email", "company"), {"op": "AND", "exp": terms}, limit=50)
            hit = next((r for r in rows if str(r.get("email") or "").strip().lower().endswith(suffix)
                        and _rel_id(r.get("company")) not in out), None)
            if hit is None:
                break
            out.append(_rel_id(hit.get("company")))
        return out

    async def get_person(self, person_id: str) -> dict[str, Any] | None:
        oid = _oid(person_id)
        obj = await self._get_object("person", oid) if oid is not None and not str(person_id).startswith("hd") else None
        if obj is None:
            return None
        return {"id": str(obj["_id"]), "email": obj.get("email") or "", "name": obj.get("name") or
                f"{obj.get('firstname') or ''} {obj.get('lastname') or ''}".strip(),
                "firstname": obj.get("firstname") or "", "lastname": obj.get("lastname") or "",
                "company_id": _rel_id(obj.get("company")), "created": _time_out(obj.get("_createdtime")),
                "updated": _time_out(obj.get("_timestamp"))}

    async def set_person_company(self, person_id: str, company_id: str) -> None:
        oid = _oid(person_id)
        company = _oid(company_id) if company_id else None
        if company_id and company is None:
            raise PermanentError(f"Lime CRM: no company {company_id}")
        try:
            obj = await self._put("person", oid, {"company": company}) if oid is not None else None
        except LimeRejected as exc:
            if company is not None and await self._get_object("company", company) is None:
                raise PermanentError(f"Lime CRM: no company {company_id}") from exc
            raise
        if obj is None:
            raise PermanentError(f"Lime CRM: no person {person_id}")

    # companies ----------------------------------------------------------------------------------
    def _company_fields(self, report: SchemaReport) -> list[str]:
        n = self.names
        return ["name"] + [p for p in (n.company_website, n.company_email, n.key_property) if report.has("company", p)]

    def _company_values(self, report: SchemaReport, row: Mapping[str, Any]) -> tuple[str, str]:
        """(the company's e-mail, lower case; its website's domain), '' where the schema has none."""
        n = self.names
        mail = str(row.get(n.company_email) or "").strip().lower() if report.has("company", n.company_email) else ""
        web = website_domain(str(row.get(n.company_website) or "")) if report.has("company", n.company_website) else ""
        return mail, web

    def _company_matches(self, report: SchemaReport, row: Mapping[str, Any], match: str, value: str) -> bool:
        mail, web = self._company_values(report, row)
        if match == "email":
            return bool(mail) and mail == value
        if match == "email_domain":
            return "@" in mail and mail.rpartition("@")[2] == value
        return bool(web) and web == value

    def _company_term(self, report: SchemaReport, match: str, value: str) -> dict[str, Any] | None:
        """A query term that finds at least the matching companies (`?` is contains; rows are
        confirmed exactly afterwards), or None when the schema has no property for `match`."""
        n = self.names
        if match == "website":
            return {"key": n.company_website, "op": "?", "exp": value} \
                if report.has("company", n.company_website) else None
        if not report.has("company", n.company_email):
            return None
        if match == "email":
            return {"key": n.company_email, "op": "=", "exp": value}
        return {"key": n.company_email, "op": "?", "exp": "@" + value}

    async def _companies(self, report: SchemaReport, terms: list[tuple[str, str]],
                         extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        flt = [t for t in (self._company_term(report, m, v) for m, v in terms) if t is not None]
        if extra is not None:
            flt.append(extra)
        if not flt:
            return []
        return await self._query("company", self._company_fields(report), flt[0] if len(flt) == 1 else
                                 {"op": "OR", "exp": flt}, limit=50)

    async def find_company_ids(self, match: str, value: str, limit: int = 2) -> list[str]:
        """Companies (at most `limit`, lowest id first) whose email equals `value` (match="email"),
        whose email has the domain `value` ("email_domain"), or whose website's domain is `value`
        ("website"): LIME_PROP_COMPANY_EMAIL and LIME_PROP_COMPANY_WEBSITE; [] when unset."""
        check_company_match(match)
        norm = (value or "").strip().lower()
        norm = website_domain(norm) if match == "website" else norm if match == "email" else normalize_domain(norm)
        if not norm or limit <= 0:
            return []
        report = await self._schema()
        rows = await self._companies(report, [(match, norm)])
        hits = sorted((r for r in rows if self._company_matches(report, r, match, norm)), key=lambda r: int(r["_id"]))
        return [str(r["_id"]) for r in hits[:limit]]

    async def find_company_by_domain(self, domain: str) -> str | None:
        """The first company (lowest id) whose email or website has this domain."""
        dom = normalize_domain(domain)
        if not dom:
            return None
        report = await self._schema()
        rows = await self._companies(report, [("email_domain", dom), ("website", dom)])
        hits = [r for r in rows if self._company_matches(report, r, "email_domain", dom)
                or self._company_matches(report, r, "website", dom)]
        return str(min(hits, key=lambda r: int(r["_id"]))["_id"]) if hits else None

    async def find_or_create_company(self, name: str, domain: str | None = None, key: str = "",
                                     email: str = "", website: str = "") -> str:
        """The company owning `domain` if there is one; else the company for `key` (by the key
        property; by name when there is no key or no key property), created when none with
        `email` and `website` (`domain` stands in for the website when none is given)."""
        report = await self._schema()
        clean = " ".join((name or "").split())
        if not clean:
            raise ValueError("a company needs a name")
        clean = _clip(clean, report.length("company", "name"))
        n = self.names
        mail = (email or "").strip().lower()
        dom = normalize_domain(domain or "") or (mail.rpartition("@")[2] if "@" in mail else "")
        if dom:
            existing = await self.find_company_by_domain(dom)
            if existing:
                return existing
        keyed = bool(key) and self._keyed(report, "company")
        kv = exact_hash(f"key|{key}", KEY_VALUE_LENGTH) if keyed else ""
        own = {"key": n.key_property, "op": "=", "exp": kv} if keyed else {"key": "name", "op": "=", "exp": clean}

        async def find() -> dict[str, Any] | None:
            rows = await self._companies(report, [("email_domain", dom), ("website", dom)] if dom else [], own)
            hits = [r for r in rows if dom and (self._company_matches(report, r, "email_domain", dom)
                                                or self._company_matches(report, r, "website", dom))]
            if not hits:
                hits = [r for r in rows if (r.get(n.key_property) == kv if keyed else
                                            str(r.get("name", "")).casefold() == clean.casefold())]
            return min(hits, key=lambda r: int(r["_id"])) if hits else None

        body: dict[str, Any] = {"name": clean}
        site = (website or "").strip() or dom
        if site and report.has("company", n.company_website):
            limit = report.length("company", n.company_website)
            if not limit or len(site) <= limit:
                body[n.company_website] = site
        if mail and report.has("company", n.company_email):
            limit = report.length("company", n.company_email)
            if not limit or len(mail) <= limit:
                body[n.company_email] = mail
        if keyed:
            body[n.key_property] = kv
        obj, _ = await self._create_once("company", body, f"company|{dom or kv or clean.casefold()}", find)
        return str(obj["_id"])

    async def get_company(self, company_id: str) -> dict[str, Any] | None:
        oid = _oid(company_id)
        obj = await self._get_object("company", oid) if oid is not None and company_id else None
        if obj is None:
            return None
        report = await self._schema()
        mail, web = self._company_values(report, obj)
        n = self.names
        return {"id": str(obj["_id"]), "name": obj.get("name") or "",
                "domain": web or (mail.rpartition("@")[2] if "@" in mail else ""), "email": mail,
                "website": str(obj.get(n.company_website) or "") if report.has("company", n.company_website) else "",
                "created": _time_out(obj.get("_createdtime"))}

    # tickets ------------------------------------------------------------------------------------
    async def reserve_ticket_number(self) -> str:
        return ""  # Lime numbers tickets itself

    def _ticket_fields(self, report: SchemaReport, extra: Iterable[str] = ()) -> list[str]:
        n = self.names
        fields = [*self.TICKET_FIELDS, n.helpdesk_number, n.helpdesk_status]
        fields += [p for p in ("enddate", *extra) if report.has("helpdesk", p) and p not in fields]
        return fields

    def _status_of(self, value: Any) -> str:
        key = _option_key(value)
        return self._status_back.get(key, key)

    def _ticket_ref(self, row: Mapping[str, Any]) -> TicketRef:
        number = row.get(self.names.helpdesk_number)
        status = self._status_of(row.get(self.names.helpdesk_status))
        end = _time_out(row.get("enddate")) if status == "done" else None
        return TicketRef(id=ticket_id_of(row["_id"]), number="" if number in (None, "", 0) else str(number),
                         status=status, person_id=_rel_id(row.get("person")), company_id=_rel_id(row.get("company")),
                         title=str(row.get("title") or ""),
                         closed_at=datetime.fromisoformat(end) if end and end[:1].isdigit() else None)

    def _number_value(self, report: SchemaReport, number: str) -> Any:
        kind = _kind(report.properties.get("helpdesk", {}).get(self.names.helpdesk_number))
        return int(number) if kind in ("integer", "") else number

    async def _ticket_row(self, report: SchemaReport, ref: str, extra: Iterable[str] = ()) -> dict[str, Any] | None:
        """By ticket id ('hd<_id>') or by number (digits)."""
        ref = str(ref or "").strip()
        fields = self._ticket_fields(report, extra)
        if ref.startswith("hd"):
            oid = _oid(ref)
            if oid is None:
                return None
            rows = await self._query("helpdesk", fields, {"key": "_id", "op": "=", "exp": oid})
        elif ref.isdigit() and len(ref) <= 12:
            rows = await self._query("helpdesk", fields, {"key": self.names.helpdesk_number, "op": "=",
                                                          "exp": self._number_value(report, ref)})
        else:
            return None
        return rows[0] if rows else None

    async def _long_text_document(self, report: SchemaReport, ticket_oid: int | None, key: str, text: str,
                                  filename: str, comment: str) -> str:
        html = _looks_html(text)
        name = filename + (".html" if html else ".txt")
        return await self._add_document(report, ticket_oid, str(ticket_oid or ""), name,
                                        "text/html; charset=utf-8" if html else "text/plain; charset=utf-8",
                                        text.encode("utf-8"), key, comment)

    async def create_ticket(self, draft: TicketDraft, key: str) -> TicketRef:
        """The helpdesk for `key`, created once (Lime assigns the number; `draft.number` is ignored)."""
        check_status(draft.status)
        kv = _key_value(key)
        report = await self._schema()
        n = self.names
        body: dict[str, Any] = {k: v for k, v in draft.values.items()}
        title_limit = report.length("helpdesk", "title")
        title = clip_title(draft.title)
        body.update({"title": _clip(title, title_limit), n.helpdesk_status: n.statuses[draft.status]})
        person, company = _oid(draft.person_id), _oid(draft.company_id)
        if draft.person_id and person is None:
            raise ValueError(f"not a Lime person id: {draft.person_id!r}")
        if person is not None:
            body["person"] = person
        if company is not None:
            body["company"] = company
        email = draft.email.strip()
        if email and report.has("helpdesk", "email") and len(email) <= (report.length("helpdesk", "email") or 10**6):
            body["email"] = email
        now = self._now()
        if report.has("helpdesk", "startdate"):
            body["startdate"] = _time_in(now)
        if draft.status == "done" and report.has("helpdesk", "enddate"):
            body["enddate"] = _time_in(now)
        description = draft.description
        if draft.linked_ticket_id:
            linked = await self._ticket_row(report, draft.linked_ticket_id)
            if linked is not None:
                description = (f"Follows up ticket {linked.get(n.helpdesk_number) or draft.linked_ticket_id}.\n\n"
                               + description).strip()
        desc_limit = report.length("helpdesk", "description")
        long_description = bool(desc_limit) and len(description) > desc_limit
        if description and report.has("helpdesk", "description"):
            body["description"] = truncate_note(description, desc_limit, " [...]") if long_description else description
        if draft.message_ids and report.has("helpdesk", n.message_ids):
            body[n.message_ids] = fit_message_ids(merge_message_ids([], draft.message_ids),
                                                  report.length("helpdesk", n.message_ids))
        fields = self._ticket_fields(report)
        keyed = self._keyed(report, "helpdesk")
        if keyed:
            body[n.key_property] = kv
        obj, created = await self._create_once(
            "helpdesk", body, f"helpdesk|{kv}" if keyed else None,
            (lambda: self._find_key("helpdesk", kv, fields)) if keyed else None)
        ticket = self._ticket_ref(obj)
        if not ticket.number:
            fresh = await self._get_object("helpdesk", int(obj["_id"]))
            ticket = self._ticket_ref(fresh or obj)
            if not ticket.number:
                log.warning("lime.ticket-without-number id=%s: helpdesk.%s was not set by the solution",
                            obj.get("_id"), n.helpdesk_number)
        if created:
            log.info("lime.ticket-created id=%s number=%s", obj.get("_id"), ticket.number)
        if long_description and report.has("helpdesk", "description"):
            await self._long_text_document(report, int(obj["_id"]), f"{key}#description", description,
                                           "description", f"Full ticket description ({len(description)} characters)")
        return ticket

    async def get_ticket(self, number: str) -> TicketRef | None:
        """By number (a ticket id 'hd<_id>' is accepted too)."""
        report = await self._schema()
        row = await self._ticket_row(report, number)
        return self._ticket_ref(row) if row is not None else None

    async def find_ticket_by_message_ids(self, ids: list[str]) -> TicketRef | None:
        """The newest ticket (highest id) holding any of the Message-IDs, compared without <> and case."""
        report = await self._schema()
        prop = self.names.message_ids
        mids = [m for m in dict.fromkeys(normalize_message_id(m) for m in ids) if m]
        if not mids or not report.has("helpdesk", prop):
            return None
        best: dict[str, Any] | None = None
        fields = self._ticket_fields(report, (prop,))
        terms = [{"key": prop, "op": "?", "exp": f"<{m}>"} for m in mids]
        base = _query_url_length({"limetype": "helpdesk", "responseFormat": {"object": {f: "" for f in fields}},
                                  "orderBy": [{"_id": "DESC"}], "limit": 50, "offset": 0,
                                  "filter": {"op": "OR", "exp": []}, "_id": ""})
        for group in _chunks(terms, QUERY_URL_MAX - base, lambda t: _query_url_length(t) + 3):
            chunk = [t["exp"][1:-1] for t in group]
            rows = await self._query("helpdesk", fields, {"op": "OR", "exp": group}, [{"_id": "DESC"}], limit=50)
            wanted = set(chunk)
            for row in rows:  # `?` is a contains match: confirm the exact id
                if wanted & set(parse_message_ids(str(row.get(prop) or ""))):
                    if best is None or int(row["_id"]) > int(best["_id"]):
                        best = row
                    break
        return self._ticket_ref(best) if best is not None else None

    async def add_message_ids(self, ticket_id: str, ids: list[str]) -> None:
        """Remember follow-ups' Message-IDs on the ticket (idempotent; read-modify-write under a lock)."""
        report = await self._schema()
        prop = self.names.message_ids
        oid = _oid(ticket_id)
        if oid is None:
            raise PermanentError(f"Lime CRM: no ticket {ticket_id}")
        if not report.has("helpdesk", prop):
            return  # threading by Message-ID is off (check_schema warned)
        async with self._locks.hold(f"msgids|{oid}") as held:
            obj = await self._get_object("helpdesk", oid)
            if obj is None:
                raise PermanentError(f"Lime CRM: no ticket {ticket_id}")
            old = parse_message_ids(str(obj.get(prop) or ""))
            merged = merge_message_ids(old, ids)
            if merged == old:
                return
            text = fit_message_ids(merged, report.length("helpdesk", prop))
            if text == str(obj.get(prop) or ""):
                return
            held.check()
            await self._put("helpdesk", oid, {prop: text})

    async def set_ticket_status(self, ticket_id_or_number: str, status: str) -> TicketRef | None:
        """Close ('done'), park or reopen ('started'). None when there is no such ticket."""
        check_status(status)
        report = await self._schema()
        row = await self._ticket_row(report, ticket_id_or_number)
        if row is None:
            return None
        current = self._ticket_ref(row)
        if current.status == status:
            return current
        values: dict[str, Any] = {self.names.helpdesk_status: self.names.statuses[status]}
        if report.has("helpdesk", "enddate"):
            values["enddate"] = _time_in(self._now()) if status == "done" else None
        obj = await self._put("helpdesk", int(row["_id"]), values)
        return self._ticket_ref(obj) if obj is not None else None

    # history ------------------------------------------------------------------------------------
    async def add_history(self, draft: HistoryDraft, key: str) -> str:
        """A history note, once per key. A note longer than history.note is cut and marked, its
        full text kept as a document on the ticket (linked from the note)."""
        check_history_type(draft.type)
        kv = _key_value(key)
        report = await self._schema()
        ticket = _oid(draft.ticket_id)
        if draft.ticket_id and ticket is None:
            raise PermanentError(f"Lime CRM: no ticket {draft.ticket_id}")
        keyed = self._keyed(report, "history")
        note = draft.note if draft.note and draft.note.strip() else NO_TEXT
        limit = report.length("history", "note")
        body: dict[str, Any] = {"date": _time_in(draft.date), "type": self.names.history_types[draft.type]}
        if ticket is not None:
            body["helpdesk"] = ticket
        if _oid(draft.person_id) is not None:
            body["person"] = _oid(draft.person_id)
        if _oid(draft.company_id) is not None and report.has("history", "company"):
            body["company"] = _oid(draft.company_id)
        if keyed:
            body[self.names.key_property] = kv

        async def build_and_find() -> dict[str, Any] | None:
            found = await self._find_key("history", kv, ("date",)) if keyed else None
            if found is None and "note" not in body:
                body["note"] = note
                if limit and len(note) > limit:
                    stamp = utc(draft.date).strftime("%Y%m%d-%H%M%S")
                    doc_id = await self._long_text_document(
                        report, ticket, f"{key}#note", note, f"note-{stamp}",
                        f"Full text of the history note of {stamp} ({len(note)} characters)")
                    body["note"] = truncate_note(note, limit, f"\n\n[... cut at {limit} characters: the full text "
                                                              f"({len(note)} characters) is in the document "
                                                              f"note-{stamp}]")
                    if report.has("history", "document"):
                        body["document"] = int(doc_id)
            return found

        try:
            if keyed:
                obj, _ = await self._create_once("history", body, f"history|{kv}", build_and_find)
            else:
                await build_and_find()
                obj, _ = await self._create_once("history", body, None, None)
        except LimeRejected as exc:
            await self._require_ticket_on_reject(exc, draft.ticket_id)
            raise
        return str(obj["_id"])

    # documents ----------------------------------------------------------------------------------
    async def add_document(self, draft: DocumentDraft, data: bytes, key: str) -> str:
        """A file on a ticket, once per key: `POST file/`, then a `document` limeobject."""
        report = await self._schema()
        ticket = _oid(draft.ticket_id)
        if draft.ticket_id and ticket is None:
            raise PermanentError(f"Lime CRM: no ticket {draft.ticket_id}")
        return await self._add_document(report, ticket, draft.ticket_id, draft.filename,
                                        draft.content_type or "application/octet-stream", data, key, draft.comment)

    async def add_document_file(self, draft: DocumentDraft, file: Any, key: str) -> str:
        """As add_document, from a seekable binary file (a large attachment spooled to disk): the
        upload streams it in chunks instead of holding it in memory."""
        report = await self._schema()
        ticket = _oid(draft.ticket_id)
        if draft.ticket_id and ticket is None:
            raise PermanentError(f"Lime CRM: no ticket {draft.ticket_id}")
        return await self._add_document(report, ticket, draft.ticket_id, draft.filename,
                                        draft.content_type or "application/octet-stream", _FileBody(file), key,
                                        draft.comment)

    async def _add_document(self, report: SchemaReport, ticket: int | None, ticket_id: str, filename: str,
                            content_type: str, data: "bytes | _FileBody", key: str, comment: str) -> str:
        kv = _key_value(key)
        if len(data) > self.max_file_bytes:
            raise PermanentError(f"Lime CRM: a document of {len(data)} bytes is over the {self.max_file_bytes}-byte "
                                 "limit of the file store")
        keyed = self._keyed(report, "document")
        name = _clean_filename(filename)
        body: dict[str, Any] = {}
        if ticket is not None:
            body["helpdesk"] = ticket
        if report.has("document", "comment"):
            body["comment"] = _clip(comment or name, report.length("document", "comment"))
        if "email" in report.options("document", "type"):
            body["type"] = "email"
        if keyed:
            body[self.names.key_property] = kv

        async def upload_and_find() -> dict[str, Any] | None:
            found = await self._find_key("document", kv, ("document",)) if keyed else None
            if found is None and "document" not in body:
                meta = await self._json("POST", "file/", content=data, timeout=self._upload_timeout, headers={
                    "Content-Type": content_type, "Content-Length": str(len(data)),
                    "Content-Disposition": f";filename*=\"UTF-8''{quote(name, safe='')}\""})
                file_id = (meta or {}).get("id") if isinstance(meta, dict) else None
                if file_id is None:
                    raise TransientError("Lime CRM POST file/: the answer has no file id")
                body["document"] = int(file_id)
            return found

        try:
            if keyed:
                obj, _ = await self._create_once("document", body, f"document|{kv}", upload_and_find)
            else:
                await upload_and_find()
                obj, _ = await self._create_once("document", body, None, None)
        except LimeRejected as exc:
            await self._require_ticket_on_reject(exc, ticket_id)
            raise
        return str(obj["_id"])

    async def _document(self, doc_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        oid = _oid(doc_id) if not str(doc_id).startswith("hd") else None
        obj = await self._get_object("document", oid) if oid is not None else None
        if obj is None or obj.get("document") in (None, ""):
            return None
        meta = await self._json("GET", f"file/{int(obj['document'])}/", allow_404=True)
        return (obj, meta) if meta is not None else None

    def _document_view(self, obj: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
        ticket = _rel_id(obj.get("helpdesk"))
        return {"id": str(obj["_id"]), "ticket_id": ticket_id_of(ticket) if ticket else "",
                "filename": str(meta.get("filename") or ""), "content_type": str(meta.get("content_type") or ""),
                "comment": str(obj.get("comment") or ""), "size": int(meta.get("size") or 0),
                "created": _time_out(obj.get("_createdtime"))}

    async def get_document(self, doc_id: str) -> dict[str, Any] | None:
        found = await self._document(doc_id)
        return self._document_view(*found) if found is not None else None

    async def get_document_bytes(self, doc_id: str) -> bytes | None:
        found = await self._document(doc_id)
        if found is None:
            return None
        response = await self._send("GET", f"file/{int(found[0]['document'])}/contents/", allow_404=True,
                                    timeout=self._upload_timeout, headers={"Accept": "*/*"})
        return response.content if response is not None else None

    # browsing (manage API) -------------------------------------------------------------------------
    def _summary(self, row: Mapping[str, Any]) -> dict[str, Any]:
        ref = self._ticket_ref(row)
        return {"id": ref.id, "number": ref.number, "title": ref.title, "status": ref.status,
                "person_id": ref.person_id, "company_id": ref.company_id, "email": str(row.get("email") or ""),
                "linked_ticket_id": "", "startdate": _time_out(row.get("startdate")),
                "enddate": _time_out(row.get("enddate")), "created": _time_out(row.get("_createdtime")),
                "updated": _time_out(row.get("_timestamp"))}

    async def list_tickets(self, limit: int = 100) -> list[dict[str, Any]]:
        """Newest (highest id) first."""
        if limit <= 0:
            return []
        report = await self._schema()
        fields = self._ticket_fields(report, ("email", "startdate", "enddate")) + ["_createdtime", "_timestamp"]
        rows = await self._query("helpdesk", fields, None, [{"_id": "DESC"}], limit=min(limit, 1000))
        return [self._summary(r) for r in rows]

    async def ticket_detail(self, number: str) -> dict[str, Any] | None:
        """The ticket with its person, company, history (date order) and documents."""
        report = await self._schema()
        row = await self._ticket_row(report, number)
        if row is None:
            return None
        oid = int(row["_id"])
        obj = await self._get_object("helpdesk", oid)
        if obj is None:
            return None
        n = self.names
        own = {"title", "description", "person", "company", "email", "startdate", "enddate", n.helpdesk_number,
               n.helpdesk_status, n.key_property, n.message_ids}
        values = {}
        for name, spec in report.properties.get("helpdesk", {}).items():
            value = obj.get(name)
            if name in own or _kind(spec) in ("hasmany", "hasandbelongstomany") or value in (None, "", False):
                continue
            values[name] = _option_key(value) if _kind(spec) == "option" else value
        ticket = {**self._summary(obj), "description": str(obj.get("description") or ""), "values": values,
                  "message_ids": parse_message_ids(str(obj.get(n.message_ids) or ""))}
        person = await self.get_person(ticket["person_id"]) if ticket["person_id"] else None
        company_id = ticket["company_id"] or (person or {}).get("company_id", "")
        company = await self.get_company(company_id) if company_id else None
        history_fields = ["date", "type", "note", "person", "company", "_createdtime"]
        if report.has("history", "document"):
            history_fields.append("document")
        notes = await self._query("history", history_fields, {"key": "helpdesk", "op": "=", "exp": oid},
                                  [{"date": "ASC"}, {"_id": "ASC"}], limit=1000)
        history = [{"id": str(h["_id"]), "ticket_id": ticket["id"], "person_id": _rel_id(h.get("person")),
                    "company_id": _rel_id(h.get("company")), "type": self._history_type(h.get("type")),
                    "date": _time_out(h.get("date")), "note": str(h.get("note") or ""), "message_ids": [],
                    "document_id": _rel_id(h.get("document")), "created": _time_out(h.get("_createdtime"))}
                   for h in notes]
        docs = await self._query("document", ["document", "comment", "helpdesk", "_createdtime"],
                                 {"key": "helpdesk", "op": "=", "exp": oid}, limit=1000)
        metas = await asyncio.gather(*(self._json("GET", f"file/{int(d['document'])}/", allow_404=True)
                                       for d in docs if d.get("document") not in (None, "")))
        documents = [self._document_view(d, m) for d, m in
                     zip([d for d in docs if d.get("document") not in (None, "")], metas) if m is not None]
        return {"ticket": ticket, "person": person, "company": company, "history": history, "documents": documents}

    def _history_type(self, value: Any) -> str:
        key = _option_key(value)
        back = {v: k for k, v in self.names.history_types.items()}
        return back.get(key, key)


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


def _tls_context(ca_bundle: str) -> ssl.SSLContext:
    """The system trust store plus the PEM bundle named by OUTBOUND_CA_BUNDLE (shared/adapters/tls.py)."""
    return tls.ssl_context(ca_bundle)
