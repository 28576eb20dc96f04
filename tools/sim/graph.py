"""Microsoft Graph + Entra ID simulator for local development, tests and benchmarks.

Owns the HTTP APIs the production code (msgraph-sdk + azure-identity, unchanged) talks to:

* Entra token endpoint (serve it over HTTPS; MSAL refuses http authorities):
  ``GET /{tenant}/v2.0/.well-known/openid-configuration``, ``POST /{tenant}/oauth2/v2.0/token``
  (client_credentials with client_secret, certificate client_assertion verified against the
  registered certificate, or a federated assertion matched on iss/sub/aud), Entra error shapes.
* Graph ``/v1.0``: users, mail folders, messages ($select, $expand=attachments, $filter on
  receivedDateTime, $orderby, paging with @odata.nextLink), attachments and their ``$value``,
  PATCH / DELETE / move / permanentDelete, subscriptions with the real validation handshake,
  change and lifecycle notifications POSTed to the webhook, Outlook throttling per app and
  mailbox, Exchange application access policies, ``Prefer`` headers (ImmutableId, text bodies,
  odata.maxpagesize).
* The App Service managed-identity endpoint (``GET /msi/token``, for ``IDENTITY_ENDPOINT`` and
  ``IDENTITY_HEADER``): :meth:`GraphSim.add_managed_identity` returns the federated credential to put
  on an app, whose tokens for ``api://AzureADTokenExchange`` the token endpoint then accepts.
* A movable clock (subscriptions expire by it; tokens use real time), delivery of mail (Graph
  JSON or raw MIME via :mod:`tools.sim.mime2graph`) and notification chaos (drop, duplicate,
  delay, reorder), all controllable in-process and over ``/_sim/...`` (no auth).

Start it with ``GraphSim().start()`` or ``python -m tools.sim.graph --port 0 --demo``.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import datetime as dt
import hashlib
import heapq
import hmac
import html
import html.parser
import http.client
import ipaddress
import itertools
import json
import math
import os
import random
import re
import signal
import ssl
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Callable, Iterable
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from .httpbase import (HttpError, Request, Response, SimServer, empty_response, json_dumps,
                       json_response, stream_bytes)
from .mime2graph import mime_to_graph_message

__all__ = ["GraphSim", "DEMO_TENANT", "DEMO_CLIENT_ID", "DEMO_SECRET", "DEMO_MAILBOX"]

DEMO_TENANT = "00000000-0000-0000-0000-0000000000aa"
DEMO_CLIENT_ID = "00000000-0000-0000-0000-0000000000bb"
DEMO_SECRET = "sim-secret"
DEMO_MAILBOX = "support@contoso.example"

GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
FEDERATED_AUDIENCE = "api://AzureADTokenExchange"
GRAPH_RESOURCES = {"https://graph.microsoft.com", "https://graph.microsoft.us",
                   "https://dod-graph.microsoft.us", "https://microsoftgraph.chinacloudapi.cn",
                   GRAPH_APP_ID}
ODATA_JSON = ("application/json;odata.metadata=minimal;odata.streaming=true;"
              "IEEE754Compatible=false;charset=utf-8")
MAX_SUB_MINUTES = 10080
MIN_SUB_MINUTES = 45
READ_PERMS = {"Mail.Read", "Mail.ReadWrite"}
BASIC_PERMS = READ_PERMS | {"Mail.ReadBasic", "Mail.ReadBasic.All"}
WRITE_PERMS = {"Mail.ReadWrite"}
USER_PERMS = {"User.Read.All", "User.ReadBasic.All", "Directory.Read.All",
              "Directory.ReadWrite.All", "User.ReadWrite.All"}
_DEFAULT = object()

WELL_KNOWN = {  # name -> (display name, parent well-known name, hidden)
    "msgfolderroot": ("Top of Information Store", None, False),
    "inbox": ("Inbox", "msgfolderroot", False),
    "drafts": ("Drafts", "msgfolderroot", False),
    "sentitems": ("Sent Items", "msgfolderroot", False),
    "deleteditems": ("Deleted Items", "msgfolderroot", False),
    "junkemail": ("Junk Email", "msgfolderroot", False),
    "archive": ("Archive", "msgfolderroot", False),
    "outbox": ("Outbox", "msgfolderroot", False),
    "conversationhistory": ("Conversation History", "msgfolderroot", False),
    "recoverableitemsroot": ("Recoverable Items", None, True),
    "recoverableitemsdeletions": ("Deletions", "recoverableitemsroot", True),
}

MESSAGE_PROPS = [
    "createdDateTime", "lastModifiedDateTime", "changeKey", "categories", "receivedDateTime",
    "sentDateTime", "hasAttachments", "internetMessageId", "subject", "bodyPreview",
    "importance", "parentFolderId", "conversationId", "conversationIndex",
    "isDeliveryReceiptRequested", "isReadReceiptRequested", "isRead", "isDraft", "webLink",
    "inferenceClassification", "body", "sender", "from", "toRecipients", "ccRecipients",
    "bccRecipients", "replyTo", "flag",
]
SELECT_ONLY_PROPS = ["internetMessageHeaders", "uniqueBody", "meetingMessageType"]
MESSAGE_SELECT = {p.lower(): p for p in ["id"] + MESSAGE_PROPS + SELECT_ONLY_PROPS}
ATTACHMENT_PROPS = ["id", "lastModifiedDateTime", "name", "contentType", "size", "isInline",
                    "contentId", "contentLocation", "contentBytes"]
ATTACHMENT_SELECT = {p.lower(): p for p in ATTACHMENT_PROPS}
PATCHABLE = {"categories", "isRead", "flag", "importance", "inferenceClassification"}
DRAFT_ONLY = {"subject", "body", "toRecipients", "ccRecipients", "bccRecipients", "replyTo",
              "from", "sender", "internetMessageId", "isDeliveryReceiptRequested",
              "isReadReceiptRequested"}


# --------------------------------------------------------------------------------------------
# small helpers


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    text = text.strip()
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _new_id(prefix: str, nbytes: int = 45) -> str:
    # Exchange-like: long, URL-safe base64 with a trailing '=' (exercise your URL encoding).
    return prefix + base64.urlsafe_b64encode(os.urandom(nbytes)).decode("ascii").rstrip("=") + "="


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso7(when: dt.datetime) -> str:
    when = when.astimezone(dt.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond:06d}0Z"


_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_datetime(value: Any) -> dt.datetime:
    """ISO 8601 (any fraction length, 'Z' or offset; naive means UTC) or a datetime."""
    if isinstance(value, dt.datetime):
        when = value
    elif isinstance(value, (int, float)):
        when = dt.datetime.fromtimestamp(value, dt.timezone.utc)
    else:
        text = _FRACTION.sub(r"\1", str(value).strip().strip("'\""))
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc)


def _ci_get(data: dict[str, Any], name: str, default: Any = None) -> Any:
    """Property lookup by name, case-insensitively (Graph reads JSON names that way)."""
    if name in data:
        return data[name]
    lname = name.lower()
    for key, value in data.items():
        if key.lower() == lname:
            return value
    return default


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside parentheses and quotes."""
    out, depth, quote_char, cur = [], 0, "", []
    for ch in text:
        if quote_char:
            cur.append(ch)
            if ch == quote_char:
                quote_char = ""
            continue
        if ch in "'\"":
            quote_char = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == sep and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _TextExtractor(html.parser.HTMLParser):
    _BLOCK = {"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("style", "script", "head"):
            self._skip += 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script", "head"):
            self._skip = max(0, self._skip - 1)
        elif tag in ("p", "div", "tr"):
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    parser = _TextExtractor()
    try:
        parser.feed(markup)
        parser.close()
    except Exception:  # noqa: BLE001 - broken HTML: strip tags crudely
        return re.sub(r"<[^>]+>", " ", markup)
    text = "".join(parser.parts)
    lines = [re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def text_to_html(text: str) -> str:
    body = html.escape(text).replace("\r\n", "\n").replace("\n", "<br>\r\n")
    return ("<html><head>\r\n<meta http-equiv=\"Content-Type\" content=\"text/html; "
            "charset=utf-8\">\r\n</head>\r\n<body>\r\n<div>" + body
            + "</div>\r\n</body>\r\n</html>")


def _preview(body: dict[str, Any]) -> str:
    content = body.get("content") or ""
    if (body.get("contentType") or "").lower() == "html":
        content = html_to_text(content)
    return re.sub(r"\s+", " ", content).strip()[:255]


def _recipient(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return {"emailAddress": {"name": value, "address": value}}
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return {"emailAddress": {"name": value[0] or value[1], "address": value[1]}}
    if isinstance(value, dict):
        if "emailAddress" in value:
            return value
        if "address" in value:
            return {"emailAddress": {"name": value.get("name") or value["address"],
                                     "address": value["address"]}}
    raise ValueError(f"not a recipient: {value!r}")


# --------------------------------------------------------------------------------------------
# state


@dataclass
class _App:
    tenant_id: str
    client_id: str
    secrets: list[tuple[str, dt.datetime | None]]
    certificates: list[x509.Certificate]
    federated: list[dict[str, Any]]
    permissions: set[str]
    allowed_mailboxes: set[str] | None  # lower-cased ids/addresses; None = no policy
    sp_id: str
    display_name: str


@dataclass
class _Token:
    value: str
    app: _App
    expires_at: float  # real time
    revoked: bool = False


@dataclass
class _Att:
    id: str
    odata_type: str
    name: str
    content_type: str
    data: bytes
    is_inline: bool
    content_id: str | None
    content_location: str | None
    last_modified: str
    _b64: str | None = None

    def size_hint(self) -> int:
        return len(self.data)

    @property
    def b64(self) -> str:
        if self._b64 is None:
            self._b64 = base64.b64encode(self.data).decode("ascii")
        return self._b64


class _Msg:
    __slots__ = ("imm_id", "rest_id", "folder_id", "props", "attachments", "ts", "seq", "raw",
                 "odata_type")

    def __init__(self, imm_id: str, rest_id: str, folder_id: str, props: dict[str, Any],
                 attachments: list[_Att], ts: float, seq: int, raw: bytes | None,
                 odata_type: str) -> None:
        self.imm_id = imm_id
        self.rest_id = rest_id
        self.folder_id = folder_id
        self.props = props
        self.attachments = attachments
        self.ts = ts
        self.seq = seq
        self.raw = raw
        self.odata_type = odata_type

    @property
    def key(self) -> tuple[float, int, str]:
        return (self.ts, self.seq, self.imm_id)


class _Folder:
    def __init__(self, folder_id: str, display_name: str, parent_id: str | None,
                 well_known: str | None, hidden: bool) -> None:
        self.id = folder_id
        self.display_name = display_name
        self.parent_id = parent_id
        self.well_known = well_known
        self.hidden = hidden
        self.messages: dict[str, _Msg] = {}
        self.index: list[tuple[float, int, str]] = []  # sorted by receivedDateTime, seq
        self.unread = 0
        self.children: list[str] = []

    def add(self, msg: _Msg) -> None:
        self.messages[msg.imm_id] = msg
        key = msg.key
        if not self.index or self.index[-1] <= key:
            self.index.append(key)
        else:
            bisect.insort(self.index, key)
        if not msg.props.get("isRead"):
            self.unread += 1

    def remove(self, msg: _Msg) -> None:
        if self.messages.pop(msg.imm_id, None) is None:
            return
        key = msg.key
        pos = bisect.bisect_left(self.index, key)
        if pos < len(self.index) and self.index[pos] == key:
            del self.index[pos]
        if not msg.props.get("isRead"):
            self.unread -= 1


class _Mailbox:
    def __init__(self, user_id: str, tenant_id: str, address: str, display_name: str) -> None:
        self.id = user_id
        self.tenant_id = tenant_id
        self.address = address
        self.display_name = display_name
        self.aliases: set[str] = {address.lower()}
        self.folders: dict[str, _Folder] = {}
        self.well_known: dict[str, str] = {}
        self.ids: dict[str, _Msg] = {}  # immutable id and current REST id -> message
        for name, (display, parent, hidden) in WELL_KNOWN.items():
            folder_id = _new_id("AAMkAGFo", 30)
            parent_id = self.well_known.get(parent) if parent else None
            folder = _Folder(folder_id, display, parent_id, name, hidden)
            self.folders[folder_id] = folder
            self.well_known[name] = folder_id
            if parent_id:
                self.folders[parent_id].children.append(folder_id)

    def folder(self, ref: str) -> _Folder | None:
        folder_id = self.well_known.get(ref.lower(), ref)
        return self.folders.get(folder_id)

    def is_deleted(self, msg: _Msg) -> bool:
        return msg.folder_id == self.well_known["recoverableitemsdeletions"]


@dataclass
class _Sub:
    id: str
    app: _App
    resource: str
    user_id: str
    folder_id: str | None
    change_types: tuple[str, ...]
    notification_url: str
    lifecycle_url: str | None
    expiration: dt.datetime
    client_state: str | None
    tls: str
    immutable: bool
    include_resource_data: bool = False

    def json(self) -> dict[str, Any]:
        return {
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity",
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.app.client_id,
            "changeType": ",".join(self.change_types),
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "notificationQueryOptions": None,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": _iso7(self.expiration),
            "creatorId": self.app.sp_id,
            "includeResourceData": self.include_resource_data,
            "latestSupportedTlsVersion": self.tls,
            "encryptionCertificate": None,
            "encryptionCertificateId": None,
            "notificationUrlAppId": None,
        }


# --------------------------------------------------------------------------------------------
# throttling


class _Throttle:
    """Outlook limits per (app, mailbox): concurrent requests and a token bucket."""

    def __init__(self, concurrency: int | None, rate_per_s: float | None, burst: float | None,
                 retry_after: int) -> None:
        self.concurrency = concurrency
        self.rate = rate_per_s
        self.burst = burst if burst is not None else (rate_per_s * 600 if rate_per_s else None)
        self.retry_after = retry_after
        self._lock = threading.Lock()
        self._inflight: dict[tuple[str, str], int] = {}
        self._bucket: dict[tuple[str, str], list[float]] = {}
        self.throttled: dict[tuple[str, str], int] = {}

    def acquire(self, key: tuple[str, str]) -> tuple[bool, int, str]:
        with self._lock:
            inflight = self._inflight.get(key, 0)
            if self.concurrency is not None and inflight >= self.concurrency:
                self.throttled[key] = self.throttled.get(key, 0) + 1
                return False, self.retry_after, "Application is over its MailboxConcurrency limit."
            if self.rate:
                now = time.monotonic()
                bucket = self._bucket.get(key)
                if bucket is None:
                    bucket = self._bucket[key] = [float(self.burst or 1), now]
                tokens = min(float(self.burst or 1), bucket[0] + (now - bucket[1]) * self.rate)
                bucket[1] = now
                if tokens < 1:
                    bucket[0] = tokens
                    self.throttled[key] = self.throttled.get(key, 0) + 1
                    wait = max(1, math.ceil((1 - tokens) / self.rate))
                    return False, wait, "Application is over its resource limit."
                bucket[0] = tokens - 1
            self._inflight[key] = inflight + 1
            return True, 0, ""

    def release(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._inflight[key] = max(0, self._inflight.get(key, 1) - 1)


# --------------------------------------------------------------------------------------------
# notification delivery


@dataclass
class NotificationRecord:
    """One POST (with its retries) that Graph makes to a webhook."""

    id: int
    kind: str                 # change | lifecycle | validation | custom
    url: str
    payload: Any
    subscription_ids: list[str] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    status: int | None = None
    delivered: bool = False
    failed: bool = False
    dropped: bool = False
    duplicate: bool = False
    created: float = field(default_factory=time.time)
    response_body: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class _Notifier:
    """Background POSTs to webhooks with Graph-like retries, on a small pool of threads."""

    def __init__(self, sim: "GraphSim", workers: int) -> None:
        self.sim = sim
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int, NotificationRecord, bytes]] = []
        self._seq = itertools.count()
        self._stopped = False
        self._threads = [threading.Thread(target=self._run, name=f"graph-notify-{i}",
                                          daemon=True) for i in range(workers)]
        self._local = threading.local()
        for thread in self._threads:
            thread.start()

    def submit(self, record: NotificationRecord, body: bytes, delay_s: float = 0.0) -> None:
        with self._cv:
            heapq.heappush(self._heap, (time.monotonic() + delay_s, next(self._seq), record, body))
            self._cv.notify()

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify_all()

    def pending(self) -> int:
        with self._cv:
            return len(self._heap)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopped:
                    if self._heap:
                        wait = self._heap[0][0] - time.monotonic()
                        if wait <= 0:
                            break
                        self._cv.wait(wait)
                    else:
                        self._cv.wait()
                if self._stopped:
                    return
                _, _, record, body = heapq.heappop(self._heap)
            self._attempt(record, body)

    def _attempt(self, record: NotificationRecord, body: bytes) -> None:
        sim = self.sim
        started = time.perf_counter()
        status, text, error = None, None, None
        try:
            status, _ctype, data = sim._http_post(record.url, body, {
                "Content-Type": "application/json; charset=utf-8"},
                timeout=sim.notification_timeout, pool=self._local)
            text = data[:2000].decode("utf-8", "replace")
        except Exception as exc:  # noqa: BLE001 - any failure is a failed delivery attempt
            error = f"{type(exc).__name__}: {exc}"
        attempt = {"time": time.time(), "status": status, "error": error,
                   "ms": round((time.perf_counter() - started) * 1000, 2)}
        retry_in = None
        with sim._notify_cv:
            record.attempts.append(attempt)
            record.status = status
            record.response_body = text
            if status is not None and 200 <= status < 300:
                record.delivered = True
            else:
                n = len(record.attempts)
                delays = sim.notification_retry_delays
                if n <= len(delays):
                    retry_in = delays[n - 1]
                else:
                    record.failed = True
            sim._notify_cv.notify_all()
        if retry_in is not None:
            self.submit(record, body, retry_in)


# --------------------------------------------------------------------------------------------
# the simulator


class _Ctx:
    """What a Graph mailbox handler knows: the caller's app and the target mailbox."""

    __slots__ = ("app", "mbx", "immutable", "prefs")

    def __init__(self, app: _App, mbx: _Mailbox | None, immutable: bool,
                 prefs: dict[str, str]) -> None:
        self.app = app
        self.mbx = mbx
        self.immutable = immutable
        self.prefs = prefs


class GraphSim(SimServer):
    """The Graph + Entra simulator: ``GraphSim().start()``, then ``.graph_url``, ``.https_url``
    (token endpoint, ``authority=``), ``.ca_path`` (trust it) and the in-process control API."""

    name = "graph"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, tls: bool = True,
                 latency_ms: float = 0, webhook_base: str | None = None,
                 notification_workers: int = 8,
                 notification_retry_delays: Iterable[float] = (0.2, 0.5, 1.0, 2.0, 5.0),
                 notification_timeout: float = 10.0, validation_timeout: float = 10.0,
                 token_lifetime: int = 3599, seed: int | None = None) -> None:
        super().__init__(host, port, tls=tls, latency_ms=latency_ms)
        self.webhook_base = webhook_base.rstrip("/") if webhook_base else None
        self.notification_retry_delays = list(notification_retry_delays)
        self.notification_timeout = notification_timeout
        self.validation_timeout = validation_timeout
        self.notification_batch_size = 20
        self.notification_log_limit = 200_000  # oldest half dropped beyond this
        self.notification_ssl_context: ssl.SSLContext | None = None  # None: do not verify
        self.token_lifetime = token_lifetime
        self.reject_duplicate_subscriptions = True
        self.allow_http_notification_url = True  # http only to loopback (or via webhook_base)
        self.generate_missing_message_id = True  # Exchange stamps one when it is missing
        # notification chaos (change notifications only)
        self.drop_notifications: bool | float = False
        self.duplicate_notifications: float = 0.0
        self.notification_delay_ms: float = 0.0
        self.notification_jitter_ms: float = 0.0  # random extra delay per POST: reorders them
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._notify_cv = threading.Condition(threading.Lock())
        self._clock_offset = 0.0
        self._tenants: set[str] = set()
        self._apps: dict[tuple[str, str], _App] = {}
        self._tokens: dict[str, _Token] = {}
        self._mailboxes: dict[str, _Mailbox] = {}
        self._by_address: dict[str, str] = {}
        self._subs: dict[str, _Sub] = {}
        self._subs_by_user: dict[str, set[str]] = {}
        self._seq = itertools.count(1)
        self._records: list[NotificationRecord] = []
        self._record_ids = itertools.count(1)
        self._jwt_key = os.urandom(32)
        self._throttle: _Throttle | None = None
        self.throttled_count = 0
        self._notifier: _Notifier | None = None
        self._notification_workers = notification_workers
        # App Service managed identity endpoint (IDENTITY_ENDPOINT / IDENTITY_HEADER)
        self.identity_header = _b64url(os.urandom(18))
        self._identities: dict[str | None, dict[str, str]] = {}  # client id (None: system) -> identity
        self.identity_requests = 0
        self.reauthorizations: dict[str, int] = {}  # subscription id -> POST .../reauthorize count
        self._register_routes()

    # ================================================================ lifecycle / clock

    def start(self) -> "GraphSim":
        super().start()
        if self._notifier is None:
            self._notifier = _Notifier(self, self._notification_workers)
        return self

    def stop(self) -> None:
        if self._notifier is not None:
            self._notifier.stop()
            self._notifier = None
        super().stop()

    @property
    def graph_url(self) -> str:
        """Base URL for msgraph-sdk: ``client.request_adapter.base_url = sim.graph_url``."""
        return self.url + "/v1.0"

    @property
    def authority_host(self) -> str:
        """Value for azure-identity ``authority=`` (HTTPS)."""
        return self.https_url

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=self._clock_offset)

    def advance_clock(self, seconds: float) -> dt.datetime:
        with self._lock:
            self._clock_offset += float(seconds)
            self._purge_expired()
        return self.now()

    # ================================================================ registration API

    def add_app(self, tenant_id: str, client_id: str, secret: str | None = None,
                secret_expires_at: Any = None, certificate_pem: bytes | str | None = None,
                federated: dict[str, Any] | list[dict[str, Any]] | None = None,
                permissions: Iterable[str] = ("Mail.ReadWrite", "Mail.Read", "User.Read.All"),
                allowed_mailboxes: Iterable[str] | None = None,
                display_name: str | None = None) -> str:
        """Register an app (service principal) in a tenant; returns the client id.

        federated: ``{"issuer": ..., "subject": ..., "audiences": ["api://AzureADTokenExchange"]}``
        (one or a list). allowed_mailboxes: an Exchange application access policy (ids or
        addresses) limiting which mailboxes the app may touch; None means no policy.
        """
        certs = []
        if certificate_pem:
            pem = certificate_pem.encode() if isinstance(certificate_pem, str) else certificate_pem
            certs = list(x509.load_pem_x509_certificates(pem))
        feds = [federated] if isinstance(federated, dict) else list(federated or [])
        with self._lock:
            self._tenants.add(tenant_id.lower())
            app = _App(
                tenant_id=tenant_id.lower(), client_id=client_id.lower(), secrets=[],
                certificates=certs, federated=feds, permissions=set(permissions),
                allowed_mailboxes=None, sp_id=str(uuid.uuid4()),
                display_name=display_name or f"app {client_id}")
            self._apps[(app.tenant_id, app.client_id)] = app
            if secret is not None:
                self.add_secret(tenant_id, client_id, secret, secret_expires_at)
            if allowed_mailboxes is not None:
                self.set_access_policy(tenant_id, client_id, allowed_mailboxes)
        return client_id

    def _app(self, tenant_id: str, client_id: str) -> _App:
        app = self._apps.get((tenant_id.lower(), client_id.lower()))
        if app is None:
            raise KeyError(f"no app {client_id} in tenant {tenant_id}")
        return app

    def add_secret(self, tenant_id: str, client_id: str, secret: str,
                   expires_at: Any = None) -> None:
        """Add a client secret; ``expires_at`` is compared with the sim clock (:meth:`now`)."""
        with self._lock:
            self._app(tenant_id, client_id).secrets.append(
                (secret, parse_datetime(expires_at) if expires_at is not None else None))

    def set_permissions(self, tenant_id: str, client_id: str, permissions: Iterable[str]) -> None:
        """Application permissions (roles) of the app; applies to tokens issued afterwards too."""
        with self._lock:
            self._app(tenant_id, client_id).permissions = set(permissions)

    def set_access_policy(self, tenant_id: str, client_id: str,
                          allowed_mailboxes: Iterable[str] | None) -> None:
        with self._lock:
            self._app(tenant_id, client_id).allowed_mailboxes = (
                None if allowed_mailboxes is None else {m.lower() for m in allowed_mailboxes})

    def revoke_tokens(self, client_id: str | None = None) -> int:
        """Invalidate issued access tokens (all, or one app's): Graph then answers 401."""
        with self._lock:
            n = 0
            for token in self._tokens.values():
                if client_id is None or token.app.client_id == client_id.lower():
                    token.revoked = True
                    n += 1
            return n

    def add_mailbox(self, address: str, display_name: str | None = None,
                    user_id: str | None = None, tenant_id: str = DEMO_TENANT,
                    aliases: Iterable[str] = ()) -> str:
        """Create a user with a mailbox; returns its object id (a GUID)."""
        user_id = (user_id or str(uuid.uuid4())).lower()
        with self._lock:
            if address.lower() in self._by_address:
                raise ValueError(f"mailbox {address} exists")
            self._tenants.add(tenant_id.lower())
            mbx = _Mailbox(user_id, tenant_id.lower(), address,
                           display_name or address.split("@")[0])
            mbx.aliases.update(a.lower() for a in aliases)
            self._mailboxes[user_id] = mbx
            for alias in mbx.aliases:
                self._by_address[alias] = user_id
            self._subs_by_user.setdefault(user_id, set())
        return user_id

    def add_folder(self, mailbox: str, display_name: str, parent: str = "msgfolderroot") -> str:
        """Create a mail folder (e.g. a per-mailbox 'Processed' folder); returns its id."""
        with self._lock:
            mbx = self._mbx(mailbox)
            parent_folder = mbx.folder(parent)
            if parent_folder is None:
                raise KeyError(parent)
            return self._create_folder(mbx, parent_folder, display_name).id

    def folder_id(self, mailbox: str, folder: str) -> str:
        with self._lock:
            found = self._mbx(mailbox).folder(folder)
            if found is None:
                raise KeyError(folder)
            return found.id

    def _mbx(self, ref: str) -> _Mailbox:
        mbx = self._resolve_mailbox(ref)
        if mbx is None:
            raise KeyError(f"no mailbox {ref}")
        return mbx

    def _resolve_mailbox(self, ref: str, tenant_id: str | None = None) -> _Mailbox | None:
        ref = ref.strip()
        low = ref.lower()
        if low.startswith("aad-upn:"):
            low = low[8:]
        mbx = self._mailboxes.get(low)
        if mbx is None:
            user_id = self._by_address.get(low)
            mbx = self._mailboxes.get(user_id) if user_id else None
        if mbx is not None and tenant_id is not None and mbx.tenant_id != tenant_id:
            return None
        return mbx

    # ================================================================ delivering mail

    def deliver(self, mailbox: str, message: dict[str, Any] | bytes | str,
                folder: str = "Inbox", notify: bool = True, duplicate: int = 0,
                delay_ms: float = 0, received_at: Any = None) -> str:
        """Store a message (Graph JSON dict or raw MIME bytes) and notify subscribers.

        Returns the message's immutable id. The change notification is POSTed on a background
        thread (``duplicate`` extra copies, after ``delay_ms``).
        """
        return self.deliver_many(mailbox, [message], folder=folder, notify=notify,
                                 duplicate=duplicate, delay_ms=delay_ms,
                                 received_at=received_at)[0]

    def deliver_many(self, mailbox: str, messages: Iterable[dict[str, Any] | bytes | str],
                     folder: str = "Inbox", notify: bool = True, duplicate: int = 0,
                     delay_ms: float = 0, received_at: Any = None) -> list[str]:
        """Store several messages; their notifications go out batched (per webhook URL)."""
        prepared = [self._prepare(m) for m in messages]
        with self._lock:
            mbx = self._mbx(mailbox)
            target = mbx.folder(folder)
            if target is None:
                raise KeyError(f"no folder {folder} in {mailbox}")
            stored = []
            for props, atts, raw, odata_type in prepared:
                when = parse_datetime(received_at) if received_at is not None else self.now()
                stored.append(self._store(mbx, target, props, atts, raw, odata_type, when))
            if notify:
                self._notify_change(mbx, target.id, "created", stored, duplicate=duplicate,
                                    delay_ms=delay_ms)
        return [m.imm_id for m in stored]

    def notify_created(self, mailbox: str, message_ids: Iterable[str], duplicate: int = 0,
                       delay_ms: float = 0) -> list[NotificationRecord]:
        """Send the `created` change notifications of messages delivered with ``notify=False``
        (a test sets up its plans for a message before anyone is told of it). Returns the
        notification records (``dropped`` says which the simulator's chaos swallowed)."""
        with self._lock:
            mbx = self._mbx(mailbox)
            by_folder: dict[str, list[_Msg]] = {}
            for mid in message_ids:
                msg = mbx.ids.get(mid)
                if msg is None:
                    raise KeyError(f"no message {mid} in {mailbox}")
                by_folder.setdefault(msg.folder_id, []).append(msg)
            records: list[NotificationRecord] = []
            for folder_id, msgs in by_folder.items():
                records += self._notify_change(mbx, folder_id, "created", msgs, duplicate=duplicate,
                                               delay_ms=delay_ms)
            return records

    def _prepare(self, message: dict[str, Any] | bytes | str
                 ) -> tuple[dict[str, Any], list[dict[str, Any]], bytes | None, str]:
        raw = None
        if isinstance(message, str):
            message = message.encode("utf-8")
        if isinstance(message, (bytes, bytearray)):
            raw = bytes(message)
            data = mime_to_graph_message(raw)
        else:
            data = dict(message)
        odata_type = data.pop("@odata.type", None) or "#microsoft.graph.message"
        atts = list(data.pop("attachments", None) or [])
        props: dict[str, Any] = {}
        for key, value in data.items():
            canonical = MESSAGE_SELECT.get(key.lower(), key)
            props[canonical] = value
        if props.get("from") is not None:
            props["from"] = _recipient(props["from"])
        if props.get("sender") is not None:
            props["sender"] = _recipient(props["sender"])
        props.setdefault("from", {"emailAddress": {"name": "sender@example.com",
                                                   "address": "sender@example.com"}})
        if props.get("sender") is None:
            props["sender"] = props["from"]
        for name in ("toRecipients", "ccRecipients", "bccRecipients", "replyTo"):
            value = props.get(name) or []
            if isinstance(value, (str, dict)):
                value = [value]
            props[name] = [_recipient(v) for v in value]
        body = props.get("body")
        if body is None:
            body = {"contentType": "text", "content": ""}
        elif isinstance(body, str):
            kind = "html" if re.search(r"<(html|body|div|p|br|table)\b", body, re.I) else "text"
            body = {"contentType": kind, "content": body}
        else:
            body = {"contentType": (body.get("contentType") or "text").lower(),
                    "content": body.get("content") or ""}
        props["body"] = body
        headers = props.get("internetMessageHeaders") or []
        if isinstance(headers, dict):
            headers = [{"name": k, "value": v} for k, v in headers.items()]
        props["internetMessageHeaders"] = [
            h if isinstance(h, dict) else {"name": h[0], "value": h[1]} for h in headers]
        props.setdefault("subject", "")
        props.setdefault("importance", "normal")
        props.setdefault("isReadReceiptRequested", False)
        props.setdefault("isDeliveryReceiptRequested", False)
        return props, atts, raw, odata_type

    def _store(self, mbx: _Mailbox, folder: _Folder, props: dict[str, Any],
               atts: list[dict[str, Any]], raw: bytes | None, odata_type: str,
               when: dt.datetime) -> _Msg:
        now_s = _iso(self.now())
        props = dict(props)
        if not props.get("internetMessageId") and self.generate_missing_message_id:
            generated = f"<{uuid.uuid4().hex.upper()}@sim.prod.outlook.example>"
            props["internetMessageId"] = generated
            props["internetMessageHeaders"] = list(props["internetMessageHeaders"]) + [
                {"name": "Message-ID", "value": generated}]
        attachments = []
        for att in atts:
            attachments.append(self._make_attachment(att, now_s))
        props.setdefault("hasAttachments", any(not a.is_inline for a in attachments))
        props["receivedDateTime"] = _iso(when)
        props.setdefault("sentDateTime", props["receivedDateTime"])
        props.setdefault("createdDateTime", props["receivedDateTime"])
        props["lastModifiedDateTime"] = now_s
        props["changeKey"] = _new_id("CQAAABYAAA", 15)
        props.setdefault("categories", [])
        props.setdefault("isRead", False)
        props.setdefault("isDraft", False)
        props.setdefault("inferenceClassification", "focused")
        props.setdefault("flag", {"flagStatus": "notFlagged"})
        props["bodyPreview"] = props.get("bodyPreview") or _preview(props["body"])
        if not props.get("conversationId"):
            root = self._conversation_root(props)
            props["conversationId"] = "AAQkAG" + _b64url(hashlib.sha256(
                (mbx.id + root).encode()).digest())[:40] + "="
        props.setdefault("conversationIndex", base64.b64encode(os.urandom(22)).decode())
        msg = _Msg(_new_id("AAkALgAAAAAAHYQDEapmEc2byACqAC-EWg0A"), _new_id("AAMkAGI2TG93AAA"),
                   folder.id, props, attachments, when.timestamp(), next(self._seq), raw,
                   odata_type)
        mbx.ids[msg.imm_id] = msg
        mbx.ids[msg.rest_id] = msg
        folder.add(msg)
        return msg

    @staticmethod
    def _conversation_root(props: dict[str, Any]) -> str:
        refs = ""
        for header in props.get("internetMessageHeaders") or []:
            if str(header.get("name", "")).lower() in ("references", "in-reply-to"):
                refs = refs or str(header.get("value") or "")
        found = re.findall(r"<[^>]+>", refs)
        if found:
            return found[0]
        return props.get("internetMessageId") or uuid.uuid4().hex

    @staticmethod
    def _make_attachment(att: dict[str, Any], now_s: str) -> _Att:
        odata_type = att.get("@odata.type") or "#microsoft.graph.fileAttachment"
        if "_raw" in att:
            data = att["_raw"]
        elif att.get("content") is not None:
            data = att["content"]
            data = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        else:
            data = base64.b64decode(att.get("contentBytes") or "")
        cid = att.get("contentId")
        if cid and cid.startswith("<") and cid.endswith(">"):
            cid = cid[1:-1]
        return _Att(id=_new_id("AAMkAGI2AttA", 30), odata_type=odata_type,
                    name=att.get("name") or "attachment", data=data,
                    content_type=att.get("contentType") or "application/octet-stream",
                    is_inline=bool(att.get("isInline", False)), content_id=cid or None,
                    content_location=att.get("contentLocation"), last_modified=now_s)

    # ================================================================ inspection API

    def get_message(self, mailbox: str, message_id: str) -> dict[str, Any] | None:
        """Full Graph JSON (immutable id, headers, attachments with contentBytes) or None."""
        with self._lock:
            msg = self._mbx(mailbox).ids.get(message_id)
            if msg is None:
                return None
            data = self._msg_json(msg, None, True, None, True, None)
            data["internetMessageHeaders"] = msg.props.get("internetMessageHeaders", [])
            data["restId"] = msg.rest_id
            return data

    def messages(self, mailbox: str, folder: str = "Inbox") -> list[dict[str, Any]]:
        """Messages of a folder (oldest first), with headers and attachment metadata."""
        with self._lock:
            mbx = self._mbx(mailbox)
            target = mbx.folder(folder)
            if target is None:
                raise KeyError(folder)
            out = []
            for key in target.index:
                msg = target.messages[key[2]]
                data = self._msg_json(msg, None, True, ["id", "name", "contentType", "size",
                                                        "isInline", "contentId"], True, None)
                data["internetMessageHeaders"] = msg.props.get("internetMessageHeaders", [])
                out.append(data)
            return out

    def recoverable_items(self, mailbox: str) -> list[dict[str, Any]]:
        """Deleted messages (Recoverable Items\\Deletions), oldest first."""
        return self.messages(mailbox, "recoverableitemsdeletions")

    def subscriptions(self) -> list[dict[str, Any]]:
        with self._lock:
            self._purge_expired()
            return [sub.json() for sub in self._subs.values()]

    def notification_log(self, kind: str | None = None) -> list[NotificationRecord]:
        with self._notify_cv:
            return [r for r in self._records if kind is None or r.kind == kind]

    def clear_notifications(self) -> None:
        with self._notify_cv:
            self._records = []

    def wait_for_notifications(self, count: int = 1, kind: str | None = "change",
                               timeout: float = 5.0, delivered: bool = True
                               ) -> list[NotificationRecord]:
        """Block until ``count`` records of ``kind`` are delivered (2xx), or finished when
        ``delivered`` is False; return them (TimeoutError otherwise)."""
        deadline = time.monotonic() + timeout
        with self._notify_cv:
            while True:
                done = [r for r in self._records if (kind is None or r.kind == kind)
                        and (r.delivered if delivered else (r.delivered or r.failed))]
                if len(done) >= count:
                    return done
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(done)} of {count} {kind} notifications after "
                                       f"{timeout}s: {[r.to_dict() for r in self._records]}")
                self._notify_cv.wait(left)

    def pending_notifications(self) -> int:
        return self._notifier.pending() if self._notifier else 0

    # ================================================================ throttling API

    def throttle(self, concurrency: int | None = 4, rate_per_s: Any = _DEFAULT,
                 burst: float | None = None, retry_after: int = 1) -> None:
        """Outlook limits per (app, mailbox). ``throttle(None)`` turns throttling off.

        Defaults are Outlook's: 4 concurrent requests, 10,000 per 10 minutes (a bucket of
        ``burst`` = 10,000 refilled at 16.7/s). Pass a small burst to see the rate limit.
        """
        if concurrency is None and rate_per_s is _DEFAULT:
            self._throttle = None
            return
        rate = 10000 / 600 if rate_per_s is _DEFAULT else rate_per_s
        self._throttle = _Throttle(concurrency, rate, burst, retry_after)

    def throttle_stats(self) -> dict[str, Any]:
        per = self._throttle.throttled if self._throttle else {}
        return {"throttled": self.throttled_count,
                "by_app_mailbox": {f"{a}|{m}": n for (a, m), n in per.items()}}

    # ================================================================ lifecycle notifications

    def fire_lifecycle(self, subscription_id: str, event: str) -> NotificationRecord:
        """POST a lifecycle notification (missed | subscriptionRemoved | reauthorizationRequired).

        ``subscriptionRemoved`` also deletes the subscription.
        """
        if event not in ("missed", "subscriptionRemoved", "reauthorizationRequired"):
            raise ValueError(f"unknown lifecycle event {event}")
        with self._lock:
            sub = self._live_sub(subscription_id)
            if sub is None:
                raise KeyError(f"no live subscription {subscription_id}")
            if not sub.lifecycle_url:
                raise ValueError("the subscription has no lifecycleNotificationUrl")
            item = {"subscriptionId": sub.id,
                    "subscriptionExpirationDateTime": _iso7(sub.expiration),
                    "tenantId": sub.app.tenant_id, "clientState": sub.client_state,
                    "lifecycleEvent": event}
            url = sub.lifecycle_url
            if event == "subscriptionRemoved":
                self._remove_sub(sub.id)
        return self._enqueue("lifecycle", url, {"value": [item]}, [sub.id])

    def post_notification(self, url: str, body: Any, headers: dict[str, str] | None = None,
                          timeout: float = 10.0) -> tuple[int, str]:
        """Synchronously POST an arbitrary body (e.g. a forged notification); (status, text)."""
        data = body if isinstance(body, bytes) else json_dumps(body)
        hdrs = {"Content-Type": "application/json; charset=utf-8"}
        hdrs.update(headers or {})
        status, _ctype, resp = self._http_post(self._target_url(url), data, hdrs, timeout)
        record = NotificationRecord(next(self._record_ids), "custom", url, body, status=status,
                                    delivered=200 <= status < 300)
        with self._notify_cv:
            self._records.append(record)
        return status, resp.decode("utf-8", "replace")

    def make_federated_assertion(self, issuer: str, subject: str,
                                 audience: str = FEDERATED_AUDIENCE, lifetime: int = 3600) -> str:
        """A JWT such as a managed identity would present for a federated credential."""
        now = int(time.time())
        return self._jwt({"iss": issuer, "sub": subject, "aud": audience, "iat": now,
                          "nbf": now, "exp": now + lifetime, "jti": str(uuid.uuid4())})

    # ================================================================ managed identity

    @property
    def identity_endpoint(self) -> str:
        """Value for ``IDENTITY_ENDPOINT`` (App Service / Functions managed identity protocol)."""
        return self.url + "/msi/token"

    def add_managed_identity(self, client_id: str | None = None, tenant_id: str = DEMO_TENANT,
                             principal_id: str | None = None) -> dict[str, Any]:
        """An identity of the hosting app (user-assigned with ``client_id``, else system-assigned).

        Returns the federated credential to put on an app registration (``add_app(federated=...)``):
        the identity's tokens for ``api://AzureADTokenExchange`` carry that issuer and subject."""
        ident = {"client_id": (client_id or str(uuid.uuid4())).lower(),
                 "principal_id": (principal_id or str(uuid.uuid4())).lower(),
                 "issuer": f"https://login.microsoftonline.com/{tenant_id.lower()}/v2.0"}
        with self._lock:
            self._identities[client_id.lower() if client_id else None] = ident
        return {"issuer": ident["issuer"], "subject": ident["principal_id"], "audiences": [FEDERATED_AUDIENCE]}

    def _h_identity_token(self, req: Request) -> Response:
        """``GET /msi/token?api-version=2019-08-01&resource=...[&client_id=...]``."""
        if not hmac.compare_digest((req.header("X-IDENTITY-HEADER") or "").encode(), self.identity_header.encode()):
            return json_response({"statusCode": 401, "message": "Unauthorized: missing or wrong X-IDENTITY-HEADER"},
                                 401)
        if req.arg("api-version") != "2019-08-01":
            return json_response({"statusCode": 400, "message": "api-version 2019-08-01 is required"}, 400)
        resource = (req.arg("resource") or "").strip()
        if not resource:
            return json_response({"statusCode": 400, "message": "resource is required"}, 400)
        client_id = (req.arg("client_id") or "").lower() or None
        with self._lock:
            ident = self._identities.get(client_id)
            if ident is None and client_id is None and len(self._identities) == 1:
                ident = next(iter(self._identities.values()))
            self.identity_requests += 1
        if ident is None:
            return json_response({"statusCode": 400, "message": "No managed identity found for the requested "
                                  "client id" if client_id else "No system-assigned managed identity"}, 400)
        audience = resource[:-len("/.default")] if resource.endswith("/.default") else resource
        lifetime = 3600
        token = self.make_federated_assertion(ident["issuer"], ident["principal_id"], audience, lifetime)
        return json_response({"access_token": token, "expires_on": str(int(time.time()) + lifetime),
                              "resource": resource, "token_type": "Bearer", "client_id": ident["client_id"]})

    # ================================================================ routes

    def _register_routes(self) -> None:
        i = re.IGNORECASE
        r = self.route
        # Entra
        r("GET", r"/(?P<tenant>[^/]+)/v2\.0/\.well-known/openid-configuration", self._h_oidc,
          flags=i)
        r("GET", r"/(?P<tenant>[^/]+)/\.well-known/openid-configuration", self._h_oidc, flags=i)
        r("GET", r"/common/discovery/instance", self._h_instance_discovery, flags=i)
        r("POST", r"/(?P<tenant>[^/]+)/oauth2/v2\.0/token", self._h_token, flags=i)
        r("GET", r"/msi/token", self._h_identity_token)
        # Graph
        user = r"/v1\.0/users/(?P<user>[^/]+)"
        folder = r"/mailfolders(?:/(?P<folder>[^/()']+)|\('(?P<folderq>[^']*)'\))"
        msg = user + r"(?:" + folder + r")?/messages/(?P<msg>[^/]+)"
        r("GET", user, self._mail(self._h_get_user, scope="user"), flags=i)
        r("GET", user + r"/mailfolders", self._mail(self._h_list_folders, scope="basic"), flags=i)
        r("POST", user + r"/mailfolders", self._mail(self._h_create_folder, scope="write"),
          flags=i)
        r("GET", user + folder, self._mail(self._h_get_folder, scope="basic"), flags=i)
        r("GET", user + folder + r"/childfolders",
          self._mail(self._h_list_folders, scope="basic"), flags=i)
        r("POST", user + folder + r"/childfolders",
          self._mail(self._h_create_folder, scope="write"), flags=i)
        r("GET", user + folder + r"/messages", self._mail(self._h_list_messages), flags=i)
        r("GET", user + r"/messages", self._mail(self._h_list_messages), flags=i)
        r("GET", msg, self._mail(self._h_get_message), flags=i)
        r("PATCH", msg, self._mail(self._h_patch_message, scope="write"), flags=i)
        r("DELETE", msg, self._mail(self._h_delete_message, scope="write"), flags=i)
        r("GET", msg + r"/\$value", self._mail(self._h_message_mime), flags=i)
        r("POST", msg + r"/move", self._mail(self._h_move_message, scope="write"), flags=i)
        r("POST", msg + r"/permanentdelete",
          self._mail(self._h_permanent_delete, scope="write"), flags=i)
        r("GET", msg + r"/attachments", self._mail(self._h_list_attachments), flags=i)
        r("GET", msg + r"/attachments/(?P<att>[^/]+)", self._mail(self._h_get_attachment),
          flags=i)
        r("GET", msg + r"/attachments/(?P<att>[^/]+)/\$value",
          self._mail(self._h_attachment_value), flags=i)
        r("POST", r"/v1\.0/subscriptions", self._graph(self._h_create_sub), flags=i)
        r("GET", r"/v1\.0/subscriptions", self._graph(self._h_list_subs), flags=i)
        sub = r"/v1\.0/subscriptions/(?P<sub>[^/]+)"
        r("GET", sub, self._graph(self._h_get_sub), flags=i)
        r("PATCH", sub, self._graph(self._h_patch_sub), flags=i)
        r("DELETE", sub, self._graph(self._h_delete_sub), flags=i)
        r("POST", sub + r"/reauthorize", self._graph(self._h_reauthorize_sub), flags=i)
        # control surface
        r("GET", r"/_sim/info", lambda q: json_response(self.info()))
        r("POST", r"/_sim/apps", self._c_add_app)
        r("POST", r"/_sim/mailboxes", self._c_add_mailbox)
        r("GET", r"/_sim/mailboxes", self._c_list_mailboxes)
        r("POST", r"/_sim/folders", self._c_add_folder)
        r("POST", r"/_sim/deliver", self._c_deliver)
        r("GET", r"/_sim/messages", self._c_messages)
        r("GET", r"/_sim/recoverable", self._c_recoverable)
        r("GET", r"/_sim/subscriptions", lambda q: json_response({"value": self.subscriptions()}))
        r("GET", r"/_sim/clock", lambda q: json_response({"now": _iso7(self.now()),
                                                          "offset_seconds": self._clock_offset}))
        r("POST", r"/_sim/clock", self._c_clock)
        r("POST", r"/_sim/lifecycle", self._c_lifecycle)
        r("GET", r"/_sim/notifications", self._c_notifications)
        r("DELETE", r"/_sim/notifications", self._c_clear_notifications)
        r("POST", r"/_sim/notifications/settings", self._c_notification_settings)
        r("POST", r"/_sim/notifications/post", self._c_post_notification)
        r("GET", r"/_sim/throttle", lambda q: json_response(self.throttle_stats()))
        r("POST", r"/_sim/throttle", self._c_throttle)
        r("POST", r"/_sim/tokens/revoke", self._c_revoke)

    def info(self) -> dict[str, Any]:
        out = {"name": self.name, "url": self.url, "graph_url": self.graph_url,
               "port": self.port}
        if self.tls:
            out.update(https_url=self.https_url, authority_host=self.authority_host,
                       ca_path=self.ca_path)
        return out

    # ---------------------------------------------------------------- error shapes

    def error_body(self, status: int, code: str, message: str) -> Any:
        return {"error": {"code": code, "message": message, "innerError": {
            "date": _iso(dt.datetime.now(dt.timezone.utc)), "request-id": str(uuid.uuid4()),
            "client-request-id": str(uuid.uuid4())}}}

    def _entra_error(self, status: int, error: str, code: int, description: str) -> Response:
        trace, corr = str(uuid.uuid4()), str(uuid.uuid4())
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        return json_response({
            "error": error,
            "error_description": f"AADSTS{code}: {description} Trace ID: {trace} "
                                 f"Correlation ID: {corr} Timestamp: {stamp}",
            "error_codes": [code], "timestamp": stamp, "trace_id": trace,
            "correlation_id": corr,
            "error_uri": f"{self.https_url if self.tls else self.url}/error?code={code}",
        }, status)

    # ---------------------------------------------------------------- Entra

    def _h_oidc(self, req: Request) -> Response:
        tenant = req.params["tenant"]
        if tenant.lower() not in self._tenants and tenant.lower() not in (
                "common", "organizations", "consumers"):
            return self._entra_error(400, "invalid_tenant", 90002,
                                     f"Tenant '{tenant}' not found. Check to make sure you have "
                                     "the correct tenant ID and are signing into the correct "
                                     "cloud.")
        base = f"{req.base_url}/{tenant}"
        issuer_tenant = tenant if tenant.lower() in self._tenants else "{tenantid}"
        return json_response({
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt",
                                                      "client_secret_basic"],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{req.base_url}/{issuer_tenant}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{self.url}/oidc/userinfo",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "tid", "oid"],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
        })

    def _h_instance_discovery(self, req: Request) -> Response:
        host = urlsplit(req.base_url).netloc
        return json_response({
            "tenant_discovery_endpoint":
                f"{req.base_url}/common/v2.0/.well-known/openid-configuration",
            "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host,
                          "aliases": [host]}]})

    def _h_token(self, req: Request) -> Response:
        tenant = req.params["tenant"].lower()
        form = req.form()
        if tenant not in self._tenants:
            return self._entra_error(400, "invalid_request", 90002,
                                     f"Tenant '{tenant}' not found. Check to make sure you have "
                                     "the correct tenant ID and are signing into the correct "
                                     "cloud.")
        grant = form.get("grant_type", "")
        if grant != "client_credentials":
            return self._entra_error(400, "unsupported_grant_type", 70003,
                                     f"The app requested an unsupported grant type "
                                     f"'{grant}'.")
        client_id = (form.get("client_id") or "").lower()
        auth = req.header("Authorization") or ""
        basic_secret = None
        if auth.lower().startswith("basic "):
            try:
                user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
                client_id = client_id or user.lower()
                basic_secret = pw
            except ValueError:
                pass
        if not client_id:
            return self._entra_error(400, "invalid_request", 900144,
                                     "The request body must contain the following parameter: "
                                     "'client_id'.")
        scope = form.get("scope", "")
        with self._lock:
            app = self._apps.get((tenant, client_id))
        if app is None:
            return self._entra_error(
                400, "unauthorized_client", 700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{tenant}'. This can happen if the application has not been installed by the "
                "administrator of the tenant or consented to by any user in the tenant. You may "
                "have sent your authentication request to the wrong tenant.")
        scopes = scope.split()
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            return self._entra_error(
                400, "invalid_scope", 1002012,
                f"The provided value for scope {scope} is not valid. Client credential flows "
                "must have a scope value with /.default suffixed to the resource identifier "
                "(application ID URI).")
        resource = scopes[0][:-len("/.default")].rstrip("/")
        if resource.lower() not in GRAPH_RESOURCES and not resource.lower().startswith(
                (self.url.lower(), f"https://{self.host}:{self.port}")):
            return self._entra_error(
                400, "invalid_resource", 500011,
                f"The resource principal named {resource} was not found in the tenant named "
                f"{tenant}. This can happen if the application has not been installed by the "
                "administrator of the tenant or consented to by any user in the tenant.")
        secret = form.get("client_secret", basic_secret)
        assertion = form.get("client_assertion")
        if secret is not None:
            err = self._check_secret(app, secret)
        elif assertion is not None:
            if form.get("client_assertion_type") != JWT_BEARER:
                return self._entra_error(400, "invalid_request", 50027,
                                         "Invalid client_assertion_type.")
            err = self._check_assertion(app, assertion, req)
        else:
            err = self._entra_error(401, "invalid_client", 7000218,
                                    "The request body must contain the following parameter: "
                                    "'client_assertion' or 'client_secret'.")
        if err is not None:
            return err
        return json_response(self._issue_token(app), headers={"Cache-Control": "no-store"})

    def _check_secret(self, app: _App, secret: str) -> Response | None:
        now = self.now()
        expired = False
        for value, expires_at in app.secrets:
            if hmac.compare_digest(value.encode(), secret.encode()):
                if expires_at is not None and expires_at <= now:
                    expired = True
                    continue
                return None
        if expired:
            return self._entra_error(
                401, "invalid_client", 7000222,
                f"The provided client secret keys for app '{app.client_id}' are expired. Visit "
                "the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret"
                ", or consider using certificate credentials for added security: "
                "https://aka.ms/certCreds.")
        return self._entra_error(
            401, "invalid_client", 7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the "
            f"client secret value, not the client secret ID, for a secret added to app "
            f"'{app.client_id}'.")

    def _check_assertion(self, app: _App, assertion: str, req: Request) -> Response | None:
        parts = assertion.split(".")
        try:
            header = json.loads(_b64url_decode(parts[0]))
            claims = json.loads(_b64url_decode(parts[1]))
            signature = _b64url_decode(parts[2]) if len(parts) == 3 else b""
        except (ValueError, IndexError):
            return self._entra_error(401, "invalid_client", 50027,
                                     "JWT token is invalid or malformed.")
        if len(parts) != 3 or not isinstance(claims, dict) or not isinstance(header, dict):
            return self._entra_error(401, "invalid_client", 50027,
                                     "JWT token is invalid or malformed.")
        now = time.time()
        exp = claims.get("exp")
        if exp is not None and float(exp) < now - 300:
            return self._entra_error(401, "invalid_client", 700024,
                                     "Client assertion is not within its valid time range.")
        nbf = claims.get("nbf")
        if nbf is not None and float(nbf) > now + 300:
            return self._entra_error(401, "invalid_client", 700024,
                                     "Client assertion is not within its valid time range.")
        iss = str(claims.get("iss", ""))
        sub = str(claims.get("sub", ""))
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else list(aud or [])
        if iss.lower() == app.client_id and sub.lower() == app.client_id:
            # certificate credential: aud is the token endpoint, signature by a registered cert
            token_path = f"/{app.tenant_id}/oauth2/v2.0/token"
            if not any(urlsplit(str(a)).path.lower().rstrip("/") == token_path
                       or str(a).lower().rstrip("/").endswith(f"/{app.tenant_id}/v2.0")
                       for a in auds):
                return self._entra_error(401, "invalid_client", 700021,
                                         "Client assertion audience claim does not match Realm "
                                         "issuer.")
            signing_input = (parts[0] + "." + parts[1]).encode("ascii")
            thumb = header.get("x5t#S256") or header.get("x5t")
            for cert in app.certificates:
                tp1 = _b64url(cert.fingerprint(hashes.SHA1()))  # noqa: S303 - x5t is SHA-1
                tp256 = _b64url(cert.fingerprint(hashes.SHA256()))
                if thumb is not None and thumb.rstrip("=") not in (tp1, tp256):
                    continue
                if _verify_jws(cert, header.get("alg", ""), signing_input, signature):
                    return None
                return self._entra_error(401, "invalid_client", 700027,
                                         "Client assertion failed signature validation.")
            return self._entra_error(
                401, "invalid_client", 700027,
                "Client assertion contains an invalid signature. [Reason - The key was not "
                f"found., Thumbprint of key used by client: '{thumb}']")
        for fed in app.federated:
            audiences = [a.lower() for a in fed.get("audiences") or [FEDERATED_AUDIENCE]]
            if iss == fed.get("issuer") and sub == fed.get("subject") and any(
                    str(a).lower() in audiences for a in auds):
                return None
        return self._entra_error(
            400, "invalid_request", 70021,
            f"No matching federated identity record found for presented assertion. Assertion "
            f"Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: "
            f"'{','.join(map(str, auds))}'.")

    def _jwt(self, claims: dict[str, Any]) -> str:
        head = _b64url(json_dumps({"typ": "JWT", "alg": "HS256", "kid": "sim"}))
        body = _b64url(json_dumps(claims))
        sig = hmac.new(self._jwt_key, f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{_b64url(sig)}"

    def _issue_token(self, app: _App) -> dict[str, Any]:
        now = int(time.time())
        exp = now + self.token_lifetime
        value = self._jwt({
            "aud": "https://graph.microsoft.com",
            "iss": f"https://sts.windows.net/{app.tenant_id}/",
            "iat": now, "nbf": now, "exp": exp, "app_displayname": app.display_name,
            "appid": app.client_id, "appidacr": "1", "idtyp": "app", "oid": app.sp_id,
            "roles": sorted(app.permissions), "sub": app.sp_id, "tid": app.tenant_id,
            "ver": "1.0", "uti": _b64url(os.urandom(16))})
        with self._lock:
            if len(self._tokens) > 10000:  # forget long-expired tokens
                cutoff = time.time() - 3600
                self._tokens = {k: t for k, t in self._tokens.items() if t.expires_at > cutoff}
            self._tokens[value] = _Token(value, app, exp)
        return {"token_type": "Bearer", "expires_in": self.token_lifetime,
                "ext_expires_in": self.token_lifetime, "access_token": value}

    # ---------------------------------------------------------------- Graph plumbing

    def _auth(self, req: Request) -> _App:
        header = req.header("Authorization") or ""
        scheme, _, value = header.partition(" ")
        value = value.strip()
        www = {"WWW-Authenticate": 'Bearer realm="", authorization_uri="https://login.'
               'microsoftonline.com/common/oauth2/authorize", client_id="' + GRAPH_APP_ID + '"'}
        if scheme.lower() != "bearer" or not value:
            raise HttpError(401, "InvalidAuthenticationToken", "Access token is empty.",
                            headers=www)
        token = self._tokens.get(value)
        if token is None or token.revoked:
            msg = ("IDX14100: JWT is not well formed, there are no dots (.)."
                   if value.count(".") != 2 else "Access token validation failure.")
            raise HttpError(401, "InvalidAuthenticationToken", msg, headers=www)
        if token.expires_at <= time.time():
            raise HttpError(401, "InvalidAuthenticationToken",
                            "Lifetime validation failed, the token is expired.", headers=www)
        req.log["app"] = token.app.client_id
        return token.app

    @staticmethod
    def _prefs(req: Request) -> dict[str, str]:
        prefs: dict[str, str] = {}
        for header in req.header_all("Prefer"):
            for part in _split_top(header):
                key, _, value = part.partition("=")
                prefs[key.strip().lower()] = value.strip().strip('"')
        return prefs

    def _graph(self, handler: Callable[[Request, _Ctx], Response]
               ) -> Callable[[Request], Response]:
        def wrapped(req: Request) -> Response:
            app = self._auth(req)
            prefs = self._prefs(req)
            immutable = prefs.get("idtype", "").lower() == "immutableid"
            req.log["immutable"] = immutable
            resp = handler(req, _Ctx(app, None, immutable, prefs))
            resp.set_header("request-id", str(uuid.uuid4()))
            client_request_id = req.header("client-request-id")
            if client_request_id:
                resp.set_header("client-request-id", client_request_id)
            return resp
        return wrapped

    def _mail(self, handler: Callable[[Request, _Ctx], Response], scope: str = "read"
              ) -> Callable[[Request], Response]:
        """Wrap a mailbox handler: auth, permission, mailbox, access policy, throttling."""
        perms = {"read": READ_PERMS, "write": WRITE_PERMS, "basic": BASIC_PERMS,
                 "user": USER_PERMS}[scope]

        def inner(req: Request, ctx: _Ctx) -> Response:
            app = ctx.app
            if not (app.permissions & perms):
                if scope == "user":
                    raise HttpError(403, "Authorization_RequestDenied",
                                    "Insufficient privileges to complete the operation.")
                raise HttpError(403, "ErrorAccessDenied",
                                "Access is denied. Check credentials and try again.")
            ref = req.params["user"]
            with self._lock:
                mbx = self._resolve_mailbox(ref, app.tenant_id)
            if mbx is None:
                if scope == "user":
                    raise HttpError(404, "Request_ResourceNotFound",
                                    f"Resource '{ref}' does not exist or one of its queried "
                                    "reference-property objects are not present.")
                raise HttpError(404, "ErrorInvalidUser", f"The requested user '{ref}' is invalid.")
            req.log["mailbox"] = mbx.id
            ctx.mbx = mbx
            if scope == "user":
                return handler(req, ctx)
            self._check_policy(app, mbx)
            throttle = self._throttle
            key = (app.client_id, mbx.id)
            if throttle is not None:
                ok, retry_after, message = throttle.acquire(key)
                if not ok:
                    with self._lock:
                        self.throttled_count += 1
                    req.log["throttled"] = True
                    raise HttpError(429, "ApplicationThrottled", message,
                                    headers={"Retry-After": str(retry_after)})
            try:
                resp = handler(req, ctx)
            except BaseException:
                if throttle is not None:
                    throttle.release(key)
                raise
            if throttle is not None:
                resp.on_complete.append(lambda: throttle.release(key))
            return resp
        return self._graph(inner)

    @staticmethod
    def _check_policy(app: _App, mbx: _Mailbox) -> None:
        allowed = app.allowed_mailboxes
        if allowed is not None and mbx.id not in allowed and not (mbx.aliases & allowed):
            raise HttpError(403, "ErrorAccessDenied",
                            "Access to OData is disabled: [RAOP] : Blocked by tenant configured "
                            "AppOnly AccessPolicy settings.")

    def _odata(self, data: Any, status: int = 200, prefs_applied: list[str] | None = None
               ) -> Response:
        resp = json_response(data, status, content_type=ODATA_JSON)
        resp.set_header("OData-Version", "4.0")
        if prefs_applied:
            resp.set_header("Preference-Applied", ", ".join(prefs_applied))
        return resp

    def _folder_ref(self, mbx: _Mailbox, req: Request, required: bool = False) -> _Folder | None:
        ref = req.params.get("folder") or req.params.get("folderq")
        if ref is None:
            if required:
                raise HttpError(400, "ErrorInvalidIdMalformed", "Id is malformed.")
            return None
        found = mbx.folder(ref)
        if found is None:
            raise HttpError(404, "ErrorItemNotFound",
                            "The specified object was not found in the store.")
        return found

    def _find_msg(self, mbx: _Mailbox, req: Request) -> _Msg:
        folder = self._folder_ref(mbx, req)
        msg = mbx.ids.get(req.params["msg"])
        if msg is None or (folder is None and mbx.is_deleted(msg)) or (
                folder is not None and msg.folder_id != folder.id):
            raise HttpError(404, "ErrorItemNotFound",
                            "The specified object was not found in the store.")
        return msg

    # ---------------------------------------------------------------- users / folders

    def _h_get_user(self, req: Request, ctx: _Ctx) -> Response:
        mbx = ctx.mbx
        assert mbx is not None
        data = {"businessPhones": [], "displayName": mbx.display_name, "givenName": None,
                "jobTitle": None, "mail": mbx.address, "mobilePhone": None,
                "officeLocation": None, "preferredLanguage": None, "surname": None,
                "userPrincipalName": mbx.address, "id": mbx.id}
        select = req.arg("$select", ignore_case=True)
        if select:
            wanted = {s.strip().lower() for s in select.split(",")}
            data = {k: v for k, v in data.items() if k.lower() in wanted or k == "id"}
        data = {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users/$entity",
                **data}
        return self._odata(data)

    def _folder_json(self, folder: _Folder) -> dict[str, Any]:
        return {"id": folder.id, "displayName": folder.display_name,
                "parentFolderId": folder.parent_id, "childFolderCount": len(folder.children),
                "unreadItemCount": folder.unread, "totalItemCount": len(folder.messages),
                "sizeInBytes": 0, "isHidden": folder.hidden}

    def _h_list_folders(self, req: Request, ctx: _Ctx) -> Response:
        mbx = ctx.mbx
        assert mbx is not None
        include_hidden = (req.arg("includeHiddenFolders", "", ignore_case=True) or "").lower() \
            == "true"
        flt = req.arg("$filter", ignore_case=True)
        name_eq = None
        if flt:
            m = re.fullmatch(r"\s*displayName\s+eq\s+'((?:[^']|'')*)'\s*", flt, re.I)
            if not m:
                raise HttpError(400, "ErrorInvalidUrlQueryFilter",
                                "The query filter contains one or more invalid nodes.")
            name_eq = m.group(1).replace("''", "'")
        with self._lock:
            parent = self._folder_ref(mbx, req) or mbx.folders[mbx.well_known["msgfolderroot"]]
            folders = [mbx.folders[f] for f in parent.children]
            folders = [f for f in folders if include_hidden or not f.hidden]
            if name_eq is not None:
                folders = [f for f in folders if f.display_name.lower() == name_eq.lower()]
            items = [self._folder_json(f) for f in folders]
        top = _int_arg(req, "$top", 10, 1, 1000)
        skip = _int_arg(req, "$skip", 0, 0, 10 ** 9)
        page = items[skip:skip + top]
        data: dict[str, Any] = {"value": page}
        if skip + top < len(items):
            data["@odata.nextLink"] = _next_link(req, {"$skip": str(skip + top)})
        return self._odata(data)

    def _h_get_folder(self, req: Request, ctx: _Ctx) -> Response:
        with self._lock:
            folder = self._folder_ref(ctx.mbx, req, required=True)  # type: ignore[arg-type]
            data = self._folder_json(folder)  # type: ignore[arg-type]
        return self._odata(data)

    def _create_folder(self, mbx: _Mailbox, parent: _Folder, name: str) -> _Folder:
        for child in parent.children:
            if mbx.folders[child].display_name.lower() == name.lower():
                raise HttpError(409, "ErrorFolderExists",
                                "A folder with the specified name already exists.")
        folder = _Folder(_new_id("AAMkAGFo", 30), name, parent.id, None, False)
        mbx.folders[folder.id] = folder
        parent.children.append(folder.id)
        return folder

    def _h_create_folder(self, req: Request, ctx: _Ctx) -> Response:
        body = req.json()
        name = _ci_get(body, "displayName") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name.strip():
            raise HttpError(400, "ErrorInvalidParameter", "The value of the parameter "
                            "'DisplayName' is empty.")
        mbx = ctx.mbx
        assert mbx is not None
        with self._lock:
            parent = self._folder_ref(mbx, req) or mbx.folders[mbx.well_known["msgfolderroot"]]
            folder = self._create_folder(mbx, parent, name)
            if _ci_get(body, "isHidden"):
                folder.hidden = True
            data = self._folder_json(folder)
        return self._odata(data, 201)

    # ---------------------------------------------------------------- messages

    def _parse_select(self, req: Request) -> list[str] | None:
        select = req.arg("$select", ignore_case=True)
        if not select:
            return None
        out = []
        for name in select.split(","):
            name = name.strip()
            if not name:
                continue
            canonical = MESSAGE_SELECT.get(name.lower())
            if canonical is None:
                raise HttpError(400, "RequestBroker--ParseUri",
                                f"Could not find a property named '{name}' on type "
                                "'microsoft.graph.message'.")
            if canonical != "id" and canonical not in out:
                out.append(canonical)
        return out

    @staticmethod
    def _parse_att_select(text: str | None) -> list[str] | None:
        if not text:
            return None
        out = []
        for name in text.split(","):
            canonical = ATTACHMENT_SELECT.get(name.strip().lower())
            if canonical is None:
                raise HttpError(400, "RequestBroker--ParseUri",
                                f"Could not find a property named '{name.strip()}' on type "
                                "'microsoft.graph.attachment'.")
            out.append(canonical)
        return out

    def _parse_expand(self, req: Request) -> tuple[bool, list[str] | None]:
        expand = req.arg("$expand", ignore_case=True)
        if not expand:
            return False, None
        want, att_select = False, None
        for item in _split_top(expand):
            m = re.fullmatch(r"\s*attachments\s*(?:\((.*)\))?\s*", item, re.I | re.S)
            if not m:
                raise HttpError(400, "BadRequest",
                                f"Parsing OData Select and Expand failed: Could not find a "
                                f"property named '{item}' on type 'microsoft.graph.message'.")
            want = True
            if m.group(1):
                for opt in m.group(1).split(";"):
                    key, _, value = opt.partition("=")
                    if key.strip().lower() == "$select":
                        att_select = self._parse_att_select(value)
        return want, att_select

    def _att_json(self, att: _Att, select: list[str] | None = None) -> dict[str, Any]:
        is_file = att.odata_type == "#microsoft.graph.fileAttachment"
        data: dict[str, Any] = {"@odata.type": att.odata_type}
        if is_file:
            data["@odata.mediaContentType"] = att.content_type
        values = {"id": att.id, "lastModifiedDateTime": att.last_modified, "name": att.name,
                  "contentType": att.content_type, "size": att.size_hint(),
                  "isInline": att.is_inline}
        if is_file:
            values.update(contentId=att.content_id, contentLocation=att.content_location)
        for key in (select or ATTACHMENT_PROPS):
            if key == "contentBytes":
                if is_file:
                    data["contentBytes"] = att.b64
            elif key in values:
                data[key] = values[key]
        data.setdefault("id", att.id)
        return data

    def _msg_json(self, msg: _Msg, select: list[str] | None, expand: bool,
                  att_select: list[str] | None, immutable: bool, body_type: str | None
                  ) -> dict[str, Any]:
        props = msg.props
        data: dict[str, Any] = {"@odata.etag": f'W/"{props["changeKey"]}"',
                                "id": msg.imm_id if immutable else msg.rest_id}
        if msg.odata_type != "#microsoft.graph.message":
            data = {"@odata.type": msg.odata_type, **data}
        for name in (select or MESSAGE_PROPS):
            if name == "parentFolderId":
                data[name] = msg.folder_id
            elif name == "webLink":
                data[name] = ("https://outlook.office365.com/owa/?ItemID=" + quote(msg.rest_id)
                              + "&exvsurl=1&viewmodel=ReadMessageItem")
            elif name in ("body", "uniqueBody"):
                data[name] = _convert_body(props["body"], body_type)
            else:
                data[name] = props.get(name)
        if expand:
            data["attachments"] = [self._att_json(a, att_select) for a in msg.attachments]
        return data

    def _body_pref(self, ctx: _Ctx) -> tuple[str | None, list[str]]:
        wanted = ctx.prefs.get("outlook.body-content-type", "").lower()
        applied = []
        if ctx.immutable:
            applied.append('IdType="ImmutableId"')
        if wanted in ("text", "html"):
            applied.append(f'outlook.body-content-type="{wanted}"')
            return wanted, applied
        return None, applied

    def _h_get_message(self, req: Request, ctx: _Ctx) -> Response:
        select = self._parse_select(req)
        expand, att_select = self._parse_expand(req)
        body_type, applied = self._body_pref(ctx)
        with self._lock:
            msg = self._find_msg(ctx.mbx, req)  # type: ignore[arg-type]
            data = self._msg_json(msg, select, expand, att_select, ctx.immutable, body_type)
        return self._odata(data, prefs_applied=applied)

    def _h_message_mime(self, req: Request, ctx: _Ctx) -> Response:
        with self._lock:
            msg = self._find_msg(ctx.mbx, req)  # type: ignore[arg-type]
            raw = msg.raw
            snapshot = None if raw is not None else (dict(msg.props), list(msg.attachments))
        if raw is None and snapshot is not None:
            raw = _build_mime(*snapshot)
        return Response(200, raw, {"Content-Type": "text/plain"})

    def _h_list_messages(self, req: Request, ctx: _Ctx) -> Response:
        mbx = ctx.mbx
        assert mbx is not None
        select = self._parse_select(req)
        expand, att_select = self._parse_expand(req)
        body_type, applied = self._body_pref(ctx)
        if req.arg("$search", ignore_case=True):
            raise HttpError(400, "ErrorInvalidUrlQuery", "$search is not simulated.")
        lo, hi, post, filter_fields = _parse_filter(req.arg("$filter", ignore_case=True))
        orderby = (req.arg("$orderby", ignore_case=True) or "").strip()
        desc = True
        if orderby:
            m = re.fullmatch(r"receivedDateTime(?:\s+(asc|desc))?", orderby, re.I)
            if not m:
                raise HttpError(400, "ErrorInvalidProperty",
                                f"The property '{orderby}' does not support sorting.")
            desc = (m.group(1) or "asc").lower() == "desc"
            if filter_fields and filter_fields[0] != "receiveddatetime":
                raise HttpError(400, "InefficientFilter",
                                "The restriction or sort order is too complex for this "
                                "operation.")
        page_size = _int_arg(req, "$top", 10, 1, 1000)
        maxpage = ctx.prefs.get("odata.maxpagesize")
        if maxpage and maxpage.isdigit():
            page_size = max(1, min(int(maxpage), 1000))
            applied.append(f"odata.maxpagesize={page_size}")
        skip = _int_arg(req, "$skip", 0, 0, 10 ** 9)
        cursor = None
        token = req.arg("$skiptoken", ignore_case=True)
        if token:
            try:
                ts, seq = json.loads(_b64url_decode(token))
                cursor = (float(ts), int(seq))
            except (ValueError, TypeError):
                raise HttpError(400, "ErrorInvalidUrlQuery", "Invalid $skiptoken.") from None
        want_count = (req.arg("$count", "", ignore_case=True) or "").lower() == "true"
        with self._lock:
            folder = self._folder_ref(mbx, req)
            if folder is not None:
                index = folder.index
                folders = {folder.id: folder}
                lo_i = bisect.bisect_left(index, (lo[0], -1)) if lo else 0
                if lo and not lo[1]:  # gt
                    lo_i = bisect.bisect_right(index, (lo[0], math.inf))
                hi_i = bisect.bisect_right(index, (hi[0], math.inf)) if hi else len(index)
                if hi and not hi[1]:  # lt
                    hi_i = bisect.bisect_left(index, (hi[0], -1))
                if cursor is not None:
                    if desc:
                        hi_i = min(hi_i, bisect.bisect_left(index, cursor))
                    else:
                        lo_i = max(lo_i, bisect.bisect_right(index, (cursor[0], cursor[1],
                                                                     "\U0010ffff")))
                keys: Iterable[tuple[float, int, str]] = (
                    (index[k] for k in range(hi_i - 1, lo_i - 1, -1)) if desc
                    else (index[k] for k in range(lo_i, hi_i)))
                total = max(0, hi_i - lo_i)
            else:
                folders = {f.id: f for f in mbx.folders.values()
                           if not f.hidden and f.well_known != "recoverableitemsroot"}
                merged = heapq.merge(*[f.index for f in folders.values()], reverse=False)
                allkeys = [k for k in merged if _in_range(k[0], lo, hi)]
                if cursor is not None:
                    allkeys = [k for k in allkeys if ((k[0], k[1]) < cursor if desc
                                                      else (k[0], k[1]) > cursor)]
                total = len(allkeys)
                keys = reversed(allkeys) if desc else iter(allkeys)
            page: list[_Msg] = []
            skipped = 0
            more = False
            for key in keys:
                msg = mbx.ids[key[2]]
                if post and not all(pred(msg) for pred in post):
                    continue
                if skipped < skip:
                    skipped += 1
                    continue
                if len(page) == page_size:
                    more = True
                    break
                page.append(msg)
            values = [self._msg_json(m, select, expand, att_select, ctx.immutable, body_type)
                      for m in page]
        data: dict[str, Any] = {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#"
                                f"users('{mbx.id}')/messages"}
        if want_count:
            data["@odata.count"] = total if not post else None
        data["value"] = values
        if more and page:
            last = page[-1]
            token = _b64url(json_dumps([last.ts, last.seq]))
            data["@odata.nextLink"] = _next_link(req, {"$skiptoken": token}, drop=("$skip",))
        return self._odata(data, prefs_applied=applied)

    def _h_patch_message(self, req: Request, ctx: _Ctx) -> Response:
        body = req.json()
        if not isinstance(body, dict):
            raise HttpError(400, "RequestBodyRead", "Expected a JSON object.")
        changes: dict[str, Any] = {}
        for key, value in body.items():
            if key.startswith("@odata"):
                continue
            canonical = MESSAGE_SELECT.get(key.lower())
            if canonical is None:
                raise HttpError(400, "RequestBodyRead",
                                f"The property '{key}' does not exist on type "
                                "'microsoft.graph.message'. Make sure to only use property names "
                                "that are defined by the type or mark the type as open type.")
            changes[canonical] = value
        _validate_patch(changes)
        body_type, applied = self._body_pref(ctx)
        with self._lock:
            mbx = ctx.mbx
            assert mbx is not None
            msg = self._find_msg(mbx, req)
            if not msg.props.get("isDraft"):
                bad = sorted(set(changes) & DRAFT_ONLY)
                if bad:
                    raise HttpError(400, "ErrorInvalidPropertyUpdateSentMessage",
                                    "Update operation cannot be performed on a sent message for "
                                    f"property '{bad[0]}'.")
            folder = mbx.folders[msg.folder_id]
            props = dict(msg.props)
            was_read = bool(props.get("isRead"))
            for key, value in changes.items():
                if key not in PATCHABLE and key not in DRAFT_ONLY:
                    raise HttpError(400, "ErrorInvalidPropertySet",
                                    f"The property '{key}' cannot be updated.")
                props[key] = list(value) if isinstance(value, list) else value
            if bool(props.get("isRead")) != was_read:
                folder.unread += -1 if props.get("isRead") else 1
            props["changeKey"] = _new_id("CQAAABYAAA", 15)
            props["lastModifiedDateTime"] = _iso(self.now())
            msg.props = props
            data = self._msg_json(msg, None, False, None, ctx.immutable, body_type)
            self._notify_change(mbx, msg.folder_id, "updated", [msg])
        return self._odata(data, prefs_applied=applied)

    def _h_delete_message(self, req: Request, ctx: _Ctx) -> Response:
        with self._lock:
            mbx = ctx.mbx
            assert mbx is not None
            msg = self._find_msg(mbx, req)
            if mbx.is_deleted(msg):
                self._purge(mbx, msg)
            else:
                self._move(mbx, msg, mbx.folders[mbx.well_known["recoverableitemsdeletions"]])
        return empty_response(204)

    def _h_permanent_delete(self, req: Request, ctx: _Ctx) -> Response:
        with self._lock:
            mbx = ctx.mbx
            assert mbx is not None
            msg = self._find_msg(mbx, req)
            old_folder = msg.folder_id
            self._purge(mbx, msg)
            self._notify_change(mbx, old_folder, "deleted", [msg])
        return empty_response(204)

    def _purge(self, mbx: _Mailbox, msg: _Msg) -> None:
        mbx.folders[msg.folder_id].remove(msg)
        mbx.ids.pop(msg.imm_id, None)
        mbx.ids.pop(msg.rest_id, None)

    def _move(self, mbx: _Mailbox, msg: _Msg, dest: _Folder) -> None:
        source = msg.folder_id
        mbx.folders[source].remove(msg)
        self._notify_change(mbx, source, "deleted", [msg])
        mbx.ids.pop(msg.rest_id, None)
        msg.rest_id = _new_id("AAMkAGI2TG93AAA")  # the REST id changes on move; immutable not
        mbx.ids[msg.rest_id] = msg
        props = dict(msg.props)
        props["changeKey"] = _new_id("CQAAABYAAA", 15)
        props["lastModifiedDateTime"] = _iso(self.now())
        msg.props = props
        msg.folder_id = dest.id
        dest.add(msg)
        self._notify_change(mbx, dest.id, "created", [msg])

    def _h_move_message(self, req: Request, ctx: _Ctx) -> Response:
        body = req.json()
        dest_ref = _ci_get(body, "destinationId") if isinstance(body, dict) else None
        if not isinstance(dest_ref, str) or not dest_ref:
            raise HttpError(400, "ErrorInvalidParameter",
                            "The value of the parameter 'DestinationId' is empty.")
        body_type, applied = self._body_pref(ctx)
        with self._lock:
            mbx = ctx.mbx
            assert mbx is not None
            msg = self._find_msg(mbx, req)
            dest = mbx.folder(dest_ref)
            if dest is None:
                raise HttpError(404, "ErrorItemNotFound",
                                "The specified object was not found in the store.")
            self._move(mbx, msg, dest)
            data = self._msg_json(msg, None, False, None, ctx.immutable, body_type)
        return self._odata(data, 201, prefs_applied=applied)

    # ---------------------------------------------------------------- attachments

    def _find_att(self, msg: _Msg, att_id: str) -> _Att:
        for att in msg.attachments:
            if att.id == att_id:
                return att
        raise HttpError(404, "ErrorItemNotFound",
                        "The specified object was not found in the store.")

    def _h_list_attachments(self, req: Request, ctx: _Ctx) -> Response:
        select = self._parse_att_select(req.arg("$select", ignore_case=True))
        with self._lock:
            msg = self._find_msg(ctx.mbx, req)  # type: ignore[arg-type]
            atts = list(msg.attachments)
            msg_id = msg.imm_id if ctx.immutable else msg.rest_id
        values = [self._att_json(a, select) for a in atts]
        user_id = ctx.mbx.id if ctx.mbx else ""
        return self._odata({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#"
                            f"users('{user_id}')/messages('{msg_id}')/attachments",
                            "value": values})

    def _h_get_attachment(self, req: Request, ctx: _Ctx) -> Response:
        select = self._parse_att_select(req.arg("$select", ignore_case=True))
        with self._lock:
            msg = self._find_msg(ctx.mbx, req)  # type: ignore[arg-type]
            att = self._find_att(msg, req.params["att"])
        return self._odata(self._att_json(att, select))

    def _h_attachment_value(self, req: Request, ctx: _Ctx) -> Response:
        with self._lock:
            msg = self._find_msg(ctx.mbx, req)  # type: ignore[arg-type]
            att = self._find_att(msg, req.params["att"])
        data = att.data
        ctype = "text/plain" if att.odata_type == "#microsoft.graph.itemAttachment" \
            else att.content_type
        if len(data) > 256 * 1024:
            return Response(200, stream_bytes(data), {"Content-Type": ctype}, length=len(data))
        return Response(200, data, {"Content-Type": ctype})

    # ---------------------------------------------------------------- subscriptions

    def _parse_resource(self, app: _App, resource: str) -> tuple[_Mailbox, str | None]:
        m = re.fullmatch(r"/?(users/(?P<user>[^/]+)|(?P<me>me))"
                         r"(?:/mailfolders(?:/(?P<folder>[^/()']+)|\('(?P<folderq>[^']*)'\)))?"
                         r"/messages(?:\?.*)?", resource.strip(), re.I)
        if not m:
            raise HttpError(400, "InvalidRequest",
                            f"Resource '{resource}' is not supported by the simulator (use "
                            "users/{id}/mailFolders('Inbox')/messages).")
        if m.group("me"):
            raise HttpError(400, "InvalidRequest",
                            "/me request is only valid with delegated authentication flow.")
        ref = m.group("user")
        with self._lock:
            mbx = self._resolve_mailbox(ref, app.tenant_id)
        if mbx is None:
            raise HttpError(404, "ExtensionError",
                            f"Operation: Create; Exception: [Status Code: NotFound; Reason: The "
                            f"requested user '{ref}' is invalid.]")
        folder_ref = m.group("folder") or m.group("folderq")
        folder_id = None
        if folder_ref:
            folder = mbx.folder(folder_ref)
            if folder is None:
                raise HttpError(404, "ExtensionError",
                                "Operation: Create; Exception: [Status Code: NotFound; Reason: "
                                "The specified object was not found in the store.]")
            folder_id = folder.id
        return mbx, folder_id

    def _expiration(self, value: Any) -> dt.datetime:
        if value is None:
            raise HttpError(400, "InvalidRequest", "expirationDateTime is a required property "
                            "for subscription creation.")
        try:
            when = parse_datetime(value)
        except (ValueError, TypeError):
            raise HttpError(400, "InvalidRequest",
                            f"Invalid expirationDateTime '{value}'.") from None
        now = self.now()
        if when > now + dt.timedelta(minutes=MAX_SUB_MINUTES):
            raise HttpError(400, "InvalidRequest",
                            f"Subscription expiration can only be {MAX_SUB_MINUTES} minutes in "
                            "the future.")
        return max(when, now + dt.timedelta(minutes=MIN_SUB_MINUTES))

    def _check_url(self, url: Any, name: str) -> str:
        if not isinstance(url, str) or not url:
            raise HttpError(400, "InvalidRequest", f"{name} is a required property.")
        parts = urlsplit(url)
        if parts.scheme == "https":
            return url
        if parts.scheme == "http" and self.allow_http_notification_url and (
                _is_loopback(parts.hostname) or self.webhook_base):
            return url
        raise HttpError(400, "InvalidRequest",
                        f"The {name} must be an https URL (the simulator also accepts http on "
                        "loopback).")

    def _handshake(self, url: str) -> None:
        token = ("Validation: Testing client application reachability for subscription "
                 f"Request-Id: {uuid.uuid4()} sig={base64.b64encode(os.urandom(12)).decode()}+/=")
        sep = "&" if "?" in url else "?"
        target = self._target_url(url) + sep + "validationToken=" + quote(token, safe="")
        record = NotificationRecord(next(self._record_ids), "validation", url,
                                    {"validationToken": token})
        with self._notify_cv:
            self._records.append(record)
        started = time.perf_counter()
        try:
            status, ctype, body = self._http_post(
                target, b"", {"Content-Type": "text/plain; charset=utf-8"},
                timeout=self.validation_timeout)
        except Exception as exc:  # noqa: BLE001 - any failure fails the handshake
            self._finish_record(record, None, f"{type(exc).__name__}: {exc}", started)
            if isinstance(exc, TimeoutError) or "timed out" in str(exc):
                raise HttpError(400, "InvalidRequest",
                                "Subscription validation request timed out.") from None
            raise HttpError(400, "InvalidRequest",
                            "Subscription validation request failed. Notification endpoint "
                            f"must respond with 200 OK to validation request. ({exc})") from None
        self._finish_record(record, status, None, started, body)
        if status != 200:
            raise HttpError(400, "InvalidRequest",
                            "Subscription validation request failed. Notification endpoint must "
                            f"respond with 200 OK to validation request. (got {status})")
        if not ctype.lower().startswith("text/plain"):
            raise HttpError(400, "InvalidRequest",
                            "Subscription validation request failed. Response must have "
                            f"Content-Type text/plain (got '{ctype}').")
        if body.decode("utf-8", "replace") != token:
            raise HttpError(400, "InvalidRequest",
                            "Subscription validation request failed. Response must exactly "
                            "match validationToken query parameter.")

    def _finish_record(self, record: NotificationRecord, status: int | None, error: str | None,
                       started: float, body: bytes = b"") -> None:
        with self._notify_cv:
            record.attempts.append({"time": time.time(), "status": status, "error": error,
                                    "ms": round((time.perf_counter() - started) * 1000, 2)})
            record.status = status
            record.delivered = status is not None and 200 <= status < 300
            record.failed = not record.delivered
            record.response_body = body[:2000].decode("utf-8", "replace")
            self._notify_cv.notify_all()

    def _h_create_sub(self, req: Request, ctx: _Ctx) -> Response:
        body = req.json()
        if not isinstance(body, dict):
            raise HttpError(400, "InvalidRequest", "Expected a JSON object.")
        app = ctx.app
        change = _ci_get(body, "changeType")
        if not isinstance(change, str) or not change:
            raise HttpError(400, "InvalidRequest", "changeType is a required property.")
        change_types = tuple(c.strip() for c in change.split(","))
        if any(c not in ("created", "updated", "deleted") for c in change_types):
            raise HttpError(400, "InvalidRequest", f"Invalid changeType '{change}'.")
        resource = _ci_get(body, "resource")
        if not isinstance(resource, str) or not resource:
            raise HttpError(400, "InvalidRequest", "resource is a required property.")
        if not (app.permissions & BASIC_PERMS):
            raise HttpError(403, "ExtensionError",
                            "Operation: Create; Exception: [Status Code: Forbidden; Reason: "
                            "Access is denied. Check credentials and try again.]")
        mbx, folder_id = self._parse_resource(app, resource)
        self._check_policy(app, mbx)
        notification_url = self._check_url(_ci_get(body, "notificationUrl"), "notificationUrl")
        lifecycle_url = _ci_get(body, "lifecycleNotificationUrl")
        if lifecycle_url is not None:
            lifecycle_url = self._check_url(lifecycle_url, "lifecycleNotificationUrl")
        expiration = self._expiration(_ci_get(body, "expirationDateTime"))
        client_state = _ci_get(body, "clientState")
        if client_state is not None and (not isinstance(client_state, str)
                                         or len(client_state) > 128):
            raise HttpError(400, "InvalidRequest",
                            "clientState must be a string of at most 128 characters.")
        tls = _ci_get(body, "latestSupportedTlsVersion") or "v1_2"
        if tls not in ("v1_0", "v1_1", "v1_2", "v1_3"):
            raise HttpError(400, "InvalidRequest", f"Invalid latestSupportedTlsVersion '{tls}'.")
        if _ci_get(body, "includeResourceData"):
            raise HttpError(400, "InvalidRequest",
                            "includeResourceData (rich notifications) is not simulated.")
        dup_key = (app.client_id, mbx.id, folder_id, tuple(sorted(change_types)))
        if self.reject_duplicate_subscriptions:
            with self._lock:
                self._check_duplicate(dup_key)
        self._handshake(notification_url)
        if lifecycle_url:
            self._handshake(lifecycle_url)
        with self._lock:
            if self.reject_duplicate_subscriptions:
                self._check_duplicate(dup_key)
            sub = _Sub(id=str(uuid.uuid4()), app=app, resource=resource, user_id=mbx.id,
                       folder_id=folder_id, change_types=change_types,
                       notification_url=notification_url, lifecycle_url=lifecycle_url,
                       expiration=expiration, client_state=client_state, tls=tls,
                       immutable=ctx.immutable)
            self._subs[sub.id] = sub
            self._subs_by_user.setdefault(mbx.id, set()).add(sub.id)
            data = sub.json()
        return self._odata(data, 201)

    def _check_duplicate(self, key: tuple) -> None:
        self._purge_expired()
        for sub in self._subs.values():
            if (sub.app.client_id, sub.user_id, sub.folder_id,
                    tuple(sorted(sub.change_types))) == key:
                raise HttpError(409, "ExtensionError",
                                "Operation: Create; Exception: [Status Code: Conflict; Reason: "
                                f"A subscription with the same resource and changeType already "
                                f"exists (id {sub.id}).]")

    def _own_sub(self, ctx: _Ctx, sub_id: str) -> _Sub:
        sub = self._live_sub(sub_id)
        if sub is None or sub.app is not ctx.app:
            raise HttpError(404, "ResourceNotFound", "The object was not found.")
        return sub

    def _h_list_subs(self, req: Request, ctx: _Ctx) -> Response:
        with self._lock:
            self._purge_expired()
            values = [s.json() for s in self._subs.values() if s.app is ctx.app]
        for value in values:
            value.pop("@odata.context", None)
        return self._odata({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#"
                            "subscriptions", "value": values})

    def _h_get_sub(self, req: Request, ctx: _Ctx) -> Response:
        with self._lock:
            data = self._own_sub(ctx, req.params["sub"]).json()
        return self._odata(data)

    def _h_patch_sub(self, req: Request, ctx: _Ctx) -> Response:
        body = req.json()
        if not isinstance(body, dict):
            raise HttpError(400, "InvalidRequest", "Expected a JSON object.")
        with self._lock:
            self._own_sub(ctx, req.params["sub"])
        new_url = _ci_get(body, "notificationUrl")
        if new_url is not None:
            new_url = self._check_url(new_url, "notificationUrl")
            self._handshake(new_url)
        if _ci_get(body, "lifecycleNotificationUrl") is not None:
            raise HttpError(400, "InvalidRequest", "lifecycleNotificationUrl cannot be updated; "
                            "delete and recreate the subscription.")
        expiration = _ci_get(body, "expirationDateTime")
        with self._lock:
            sub = self._own_sub(ctx, req.params["sub"])
            if expiration is not None:
                sub.expiration = self._expiration(expiration)
            if new_url is not None:
                sub.notification_url = new_url
            data = sub.json()
        return self._odata(data)

    def _h_delete_sub(self, req: Request, ctx: _Ctx) -> Response:
        with self._lock:
            sub = self._own_sub(ctx, req.params["sub"])
            self._remove_sub(sub.id)
        return empty_response(204)

    def _h_reauthorize_sub(self, req: Request, ctx: _Ctx) -> Response:
        with self._lock:
            sub = self._own_sub(ctx, req.params["sub"])
            self.reauthorizations[sub.id] = self.reauthorizations.get(sub.id, 0) + 1
        return empty_response(204)

    def _live_sub(self, sub_id: str) -> _Sub | None:
        sub = self._subs.get(sub_id)
        if sub is not None and sub.expiration <= self.now():
            self._remove_sub(sub_id)
            return None
        return sub

    def _remove_sub(self, sub_id: str) -> None:
        sub = self._subs.pop(sub_id, None)
        if sub is not None:
            self._subs_by_user.get(sub.user_id, set()).discard(sub_id)

    def _purge_expired(self) -> None:
        now = self.now()
        for sub_id in [s.id for s in self._subs.values() if s.expiration <= now]:
            self._remove_sub(sub_id)

    # ---------------------------------------------------------------- change notifications

    def _notify_change(self, mbx: _Mailbox, folder_id: str, change: str, msgs: list[_Msg],
                       duplicate: int = 0, delay_ms: float = 0) -> list[NotificationRecord]:
        """Queue change notifications for the subscriptions watching that folder (lock held)."""
        sub_ids = self._subs_by_user.get(mbx.id)
        records: list[NotificationRecord] = []
        if not sub_ids or not msgs:
            return records
        by_url: dict[str, tuple[list[dict[str, Any]], list[str]]] = {}
        for sub_id in list(sub_ids):
            sub = self._live_sub(sub_id)
            if sub is None or change not in sub.change_types:
                continue
            if sub.folder_id is not None and sub.folder_id != folder_id:
                continue
            if sub.folder_id is None and mbx.folders[folder_id].hidden:
                continue
            for msg in msgs:
                msg_id = msg.imm_id if sub.immutable else msg.rest_id
                path = f"Users/{mbx.id}/Messages/{msg_id}"
                item = {"subscriptionId": sub.id,
                        "subscriptionExpirationDateTime": _iso7(sub.expiration),
                        "changeType": change, "resource": path,
                        "resourceData": {"@odata.type": "#Microsoft.Graph.Message",
                                         "@odata.id": path,
                                         "@odata.etag": f'W/"{msg.props["changeKey"]}"',
                                         "id": msg_id},
                        "clientState": sub.client_state, "tenantId": sub.app.tenant_id}
                if item["clientState"] is None:
                    del item["clientState"]
                items, ids = by_url.setdefault(sub.notification_url, ([], []))
                items.append(item)
                if sub.id not in ids:
                    ids.append(sub.id)
        size = max(1, self.notification_batch_size)
        for url, (items, ids) in by_url.items():
            for start in range(0, len(items), size):
                chunk = items[start:start + size]
                chunk_ids = sorted({i["subscriptionId"] for i in chunk}, key=ids.index)
                for copy in range(1 + max(0, duplicate)):
                    records.append(self._enqueue("change", url, {"value": chunk}, chunk_ids,
                                                 delay_ms=delay_ms, duplicate=copy > 0))
        return records

    def _enqueue(self, kind: str, url: str, payload: Any, sub_ids: list[str],
                 delay_ms: float = 0, duplicate: bool = False) -> NotificationRecord:
        record = NotificationRecord(next(self._record_ids), kind, url, payload,
                                    subscription_ids=list(sub_ids), duplicate=duplicate)
        copies = 1
        delay = delay_ms + self.notification_delay_ms
        if kind == "change":
            drop = self.drop_notifications
            if drop is True or (drop and self._rng.random() < float(drop)):
                record.dropped = True
            elif self.duplicate_notifications and self._rng.random() < \
                    self.duplicate_notifications:
                copies = 2
            if self.notification_jitter_ms:
                delay += self._rng.random() * self.notification_jitter_ms
        with self._notify_cv:
            self._records.append(record)
            if len(self._records) > self.notification_log_limit:
                del self._records[:len(self._records) // 2]
            self._notify_cv.notify_all()
        if record.dropped:
            return record
        body = json_dumps(payload)
        notifier = self._notifier
        if notifier is None:
            raise RuntimeError("the simulator is not started")
        target = self._target_url(url)
        record.url = target
        notifier.submit(record, body, delay / 1000.0)
        for _ in range(copies - 1):
            dup = NotificationRecord(next(self._record_ids), kind, target, payload,
                                     subscription_ids=list(sub_ids), duplicate=True)
            with self._notify_cv:
                self._records.append(dup)
            extra = self._rng.random() * max(self.notification_jitter_ms, 50)
            notifier.submit(dup, body, (delay + extra) / 1000.0)
        return record

    def _target_url(self, url: str) -> str:
        """The URL actually called: non-loopback hosts go to ``webhook_base`` when it is set."""
        if not self.webhook_base:
            return url
        parts = urlsplit(url)
        if _is_loopback(parts.hostname):
            return url
        base = urlsplit(self.webhook_base)
        path = parts.path
        if base.path and base.path != "/":
            path = base.path.rstrip("/") + path
        return urlunsplit((base.scheme, base.netloc, path, parts.query, ""))

    def _http_post(self, url: str, body: bytes, headers: dict[str, str], timeout: float,
                   pool: threading.local | None = None) -> tuple[int, str, bytes]:
        """POST with http.client (keep-alive per thread when ``pool`` is given)."""
        parts = urlsplit(url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        key = (parts.scheme, parts.hostname, parts.port)
        conns: dict[Any, http.client.HTTPConnection] | None = None
        if pool is not None:
            conns = getattr(pool, "conns", None)
            if conns is None:
                conns = pool.conns = {}
        for attempt in range(2):
            conn = conns.get(key) if conns is not None else None
            reused = conn is not None
            if conn is None:
                if parts.scheme == "https":
                    ctx = self.notification_ssl_context or ssl._create_unverified_context()
                    conn = http.client.HTTPSConnection(parts.hostname, parts.port,
                                                       timeout=timeout, context=ctx)
                else:
                    conn = http.client.HTTPConnection(parts.hostname, parts.port,
                                                      timeout=timeout)
            try:
                hdrs = dict(headers)
                hdrs.setdefault("Accept", "*/*")
                hdrs.setdefault("User-Agent", "graph-sim-notifications")
                conn.request("POST", path, body=body, headers=hdrs)
                resp = conn.getresponse()
                data = resp.read()
                status, ctype = resp.status, resp.getheader("Content-Type") or ""
                if conns is not None and not resp.will_close:
                    conns[key] = conn
                else:
                    conn.close()
                    if conns is not None:
                        conns.pop(key, None)
                return status, ctype, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    http.client.CannotSendRequest) as exc:
                conn.close()
                if conns is not None:
                    conns.pop(key, None)
                if reused and attempt == 0:
                    continue  # a stale keep-alive connection: retry once on a fresh one
                raise OSError(str(exc)) from exc
            except BaseException:
                conn.close()
                if conns is not None:
                    conns.pop(key, None)
                raise
        raise OSError("unreachable")

    # ---------------------------------------------------------------- control endpoints

    def _c_add_app(self, req: Request) -> Response:
        body = req.json()
        try:
            client_id = self.add_app(
                body["tenant_id"], body["client_id"], secret=body.get("secret"),
                secret_expires_at=body.get("secret_expires_at"),
                certificate_pem=body.get("certificate_pem"), federated=body.get("federated"),
                permissions=body.get("permissions", ("Mail.ReadWrite", "Mail.Read",
                                                     "User.Read.All")),
                allowed_mailboxes=body.get("allowed_mailboxes"))
        except (KeyError, ValueError) as exc:
            raise HttpError(400, "BadRequest", str(exc)) from None
        return json_response({"client_id": client_id}, 201)

    def _c_add_mailbox(self, req: Request) -> Response:
        body = req.json()
        try:
            user_id = self.add_mailbox(body["address"], body.get("display_name"),
                                       body.get("user_id"), body.get("tenant_id", DEMO_TENANT),
                                       body.get("aliases", ()))
        except (KeyError, ValueError) as exc:
            raise HttpError(400, "BadRequest", str(exc)) from None
        return json_response({"id": user_id, "address": body["address"]}, 201)

    def _c_list_mailboxes(self, req: Request) -> Response:
        with self._lock:
            values = [{"id": m.id, "address": m.address, "tenant_id": m.tenant_id,
                       "display_name": m.display_name,
                       "inbox_count": len(m.folders[m.well_known["inbox"]].messages)}
                      for m in self._mailboxes.values()]
        return json_response({"value": values})

    def _c_add_folder(self, req: Request) -> Response:
        body = req.json()
        try:
            folder_id = self.add_folder(body["mailbox"], body["display_name"],
                                        body.get("parent", "msgfolderroot"))
        except KeyError as exc:
            raise HttpError(400, "BadRequest", f"missing or unknown {exc}") from None
        return json_response({"id": folder_id}, 201)

    def _c_deliver(self, req: Request) -> Response:
        body = req.json()
        items: list[Any] = []
        for entry in body.get("messages") or [body]:
            if entry.get("mime_base64"):
                items.append(base64.b64decode(entry["mime_base64"]))
            elif entry.get("mime") is not None:
                items.append(entry["mime"].encode("utf-8"))
            elif entry.get("message") is not None:
                items.append(entry["message"])
            else:
                raise HttpError(400, "BadRequest", "give message, mime or mime_base64")
        try:
            ids = self.deliver_many(body["mailbox"], items, folder=body.get("folder", "Inbox"),
                                    notify=body.get("notify", True),
                                    duplicate=int(body.get("duplicate", 0)),
                                    delay_ms=float(body.get("delay_ms", 0)),
                                    received_at=body.get("received_at"))
        except KeyError as exc:
            raise HttpError(400, "BadRequest", f"missing or unknown {exc}") from None
        return json_response({"ids": ids, "id": ids[0] if ids else None}, 201)

    def _c_messages(self, req: Request) -> Response:
        try:
            values = self.messages(req.arg("mailbox") or "", req.arg("folder", "Inbox") or "Inbox")
        except KeyError as exc:
            raise HttpError(404, "NotFound", str(exc)) from None
        return json_response({"value": values})

    def _c_recoverable(self, req: Request) -> Response:
        try:
            values = self.recoverable_items(req.arg("mailbox") or "")
        except KeyError as exc:
            raise HttpError(404, "NotFound", str(exc)) from None
        return json_response({"value": values})

    def _c_clock(self, req: Request) -> Response:
        body = req.json()
        now = self.advance_clock(float(body.get("advance_seconds", 0)))
        return json_response({"now": _iso7(now), "offset_seconds": self._clock_offset})

    def _c_lifecycle(self, req: Request) -> Response:
        body = req.json()
        try:
            record = self.fire_lifecycle(body["subscription_id"], body["event"])
        except (KeyError, ValueError) as exc:
            raise HttpError(400, "BadRequest", str(exc)) from None
        return json_response(record.to_dict(), 202)

    def _c_notifications(self, req: Request) -> Response:
        values = [r.to_dict() for r in self.notification_log(req.arg("kind"))]
        return json_response({"value": values, "pending": self.pending_notifications()})

    def _c_clear_notifications(self, req: Request) -> Response:
        self.clear_notifications()
        return empty_response()

    def _c_notification_settings(self, req: Request) -> Response:
        body = req.json()
        if "drop" in body:
            self.drop_notifications = body["drop"]
        if "duplicate" in body:
            self.duplicate_notifications = float(body["duplicate"])
        if "delay_ms" in body:
            self.notification_delay_ms = float(body["delay_ms"])
        if "jitter_ms" in body:
            self.notification_jitter_ms = float(body["jitter_ms"])
        if "retry_delays" in body:
            self.notification_retry_delays = [float(x) for x in body["retry_delays"]]
        if "batch_size" in body:
            self.notification_batch_size = int(body["batch_size"])
        if "seed" in body:
            self._rng.seed(body["seed"])
        return json_response({"drop": self.drop_notifications,
                              "duplicate": self.duplicate_notifications,
                              "delay_ms": self.notification_delay_ms,
                              "jitter_ms": self.notification_jitter_ms,
                              "retry_delays": self.notification_retry_delays,
                              "batch_size": self.notification_batch_size})

    def _c_post_notification(self, req: Request) -> Response:
        body = req.json()
        status, text = self.post_notification(body["url"], body.get("body", {}),
                                               body.get("headers"))
        return json_response({"status": status, "body": text})

    def _c_throttle(self, req: Request) -> Response:
        body = req.json()
        if body is None or body.get("off"):
            self.throttle(None)
        else:
            self.throttle(body.get("concurrency", 4), body.get("rate_per_s", 10000 / 600),
                          body.get("burst"), int(body.get("retry_after", 1)))
        return json_response({"enabled": self._throttle is not None})

    def _c_revoke(self, req: Request) -> Response:
        body = req.json() if req.body else {}
        return json_response({"revoked": self.revoke_tokens(body.get("client_id"))})


# --------------------------------------------------------------------------------------------
# helpers used by handlers


def _verify_jws(cert: x509.Certificate, alg: str, signing_input: bytes, signature: bytes) -> bool:
    key = cert.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            digest = {"RS256": hashes.SHA256(), "PS256": hashes.SHA256(),
                      "RS384": hashes.SHA384(), "RS512": hashes.SHA512()}.get(alg)
            if digest is None:
                return False
            pad = (padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
                   if alg.startswith("PS") else padding.PKCS1v15())
            key.verify(signature, signing_input, pad, digest)
            return True
        if isinstance(key, ec.EllipticCurvePublicKey) and alg == "ES256":
            from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
            half = len(signature) // 2
            der = encode_dss_signature(int.from_bytes(signature[:half], "big"),
                                       int.from_bytes(signature[half:], "big"))
            key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
            return True
    except InvalidSignature:
        return False
    return False


def _convert_body(body: dict[str, Any], wanted: str | None) -> dict[str, Any]:
    kind = (body.get("contentType") or "text").lower()
    if wanted is None or wanted == kind:
        return {"contentType": kind, "content": body.get("content") or ""}
    if wanted == "text":
        return {"contentType": "text", "content": html_to_text(body.get("content") or "")}
    return {"contentType": "html", "content": text_to_html(body.get("content") or "")}


def _int_arg(req: Request, name: str, default: int, lo: int, hi: int) -> int:
    value = req.arg(name, ignore_case=True)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise HttpError(400, "BadRequest", f"Invalid value '{value}' for {name}.") from None
    return max(lo, min(hi, number))


def _next_link(req: Request, extra: dict[str, str], drop: Iterable[str] = ()) -> str:
    skip = {k.lower() for k in drop} | {k.lower() for k in extra}
    pairs = [(k, v) for k, values in req.query.items() if k.lower() not in skip for v in values]
    pairs.extend(extra.items())
    return f"{req.base_url}{req.raw_path}?" + urlencode(pairs, quote_via=quote, safe="$,()'")


_CLAUSE = re.compile(
    r"\s*(?P<field>[A-Za-z][\w/]*)\s+(?P<op>eq|ne|ge|gt|le|lt)\s+(?P<value>'(?:[^']|'')*'|\S+)\s*",
    re.I)


def _parse_filter(text: str | None) -> tuple[tuple[float, bool] | None, tuple[float, bool] | None,
                                             list[Callable[[_Msg], bool]], list[str]]:
    """$filter -> (lower bound (ts, inclusive), upper bound, post predicates, field order)."""
    lo: tuple[float, bool] | None = None
    hi: tuple[float, bool] | None = None
    post: list[Callable[[_Msg], bool]] = []
    fields: list[str] = []
    if not text or not text.strip():
        return lo, hi, post, fields
    bad = HttpError(400, "ErrorInvalidUrlQueryFilter",
                    "The query filter contains one or more invalid nodes.")
    for clause in re.split(r"\s+and\s+", text.strip(), flags=re.I):
        m = _CLAUSE.fullmatch(clause)
        if not m:
            raise bad
        fld, op, raw = m.group("field").lower(), m.group("op").lower(), m.group("value")
        fields.append(fld)
        if fld == "receiveddatetime":
            try:
                ts = parse_datetime(raw).timestamp()
            except ValueError:
                raise bad from None
            if op in ("ge", "gt"):
                bound = (ts, op == "ge")
                if lo is None or bound[0] > lo[0] or (bound[0] == lo[0] and not bound[1]):
                    lo = bound
            elif op in ("le", "lt"):
                bound = (ts, op == "le")
                if hi is None or bound[0] < hi[0] or (bound[0] == hi[0] and not bound[1]):
                    hi = bound
            else:
                lo, hi = (ts, True), (ts, True)
            continue
        if raw.startswith("'"):
            value: Any = raw[1:-1].replace("''", "'")
        elif raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            raise bad
        getter = _FILTER_FIELDS.get(fld)
        if getter is None or op not in ("eq", "ne"):
            raise bad
        post.append(_predicate(getter, op, value))
    return lo, hi, post, fields


def _predicate(getter: Callable[[_Msg], Any], op: str, value: Any) -> Callable[[_Msg], bool]:
    def pred(msg: _Msg) -> bool:
        current = getter(msg)
        if isinstance(current, str) and isinstance(value, str):
            equal = current.lower() == value.lower()
        else:
            equal = current == value
        return equal if op == "eq" else not equal
    return pred


_FILTER_FIELDS: dict[str, Callable[[_Msg], Any]] = {
    "isread": lambda m: bool(m.props.get("isRead")),
    "hasattachments": lambda m: bool(m.props.get("hasAttachments")),
    "isdraft": lambda m: bool(m.props.get("isDraft")),
    "subject": lambda m: m.props.get("subject") or "",
    "internetmessageid": lambda m: m.props.get("internetMessageId") or "",
    "from/emailaddress/address": lambda m: ((m.props.get("from") or {}).get("emailAddress")
                                            or {}).get("address", ""),
    "importance": lambda m: m.props.get("importance") or "",
}


def _in_range(ts: float, lo: tuple[float, bool] | None, hi: tuple[float, bool] | None) -> bool:
    if lo is not None and (ts < lo[0] or (ts == lo[0] and not lo[1])):
        return False
    if hi is not None and (ts > hi[0] or (ts == hi[0] and not hi[1])):
        return False
    return True


def _validate_patch(changes: dict[str, Any]) -> None:
    def fail(name: str) -> HttpError:
        return HttpError(400, "RequestBodyRead", f"Invalid value for property '{name}'.")
    if "categories" in changes:
        cats = changes["categories"]
        if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
            raise fail("categories")
    if "isRead" in changes and not isinstance(changes["isRead"], bool):
        raise fail("isRead")
    if "flag" in changes:
        flag = changes["flag"]
        if not isinstance(flag, dict) or _ci_get(flag, "flagStatus", "notFlagged") not in (
                "notFlagged", "flagged", "complete"):
            raise fail("flag")
    if "importance" in changes and changes["importance"] not in ("low", "normal", "high"):
        raise fail("importance")
    if "inferenceClassification" in changes and changes["inferenceClassification"] not in (
            "focused", "other"):
        raise fail("inferenceClassification")


def _build_mime(props: dict[str, Any], atts: list[_Att]) -> bytes:
    """A MIME rendering of a message that was delivered as JSON (for GET .../$value)."""
    msg = EmailMessage()

    def addr(rec: dict[str, Any] | None) -> str:
        email_address = (rec or {}).get("emailAddress") or {}
        name, address = email_address.get("name"), email_address.get("address", "")
        return f'"{name}" <{address}>' if name and name != address else address

    skip = {"content-type", "content-transfer-encoding", "mime-version"}
    have = set()
    for header in props.get("internetMessageHeaders") or []:
        name = str(header.get("name", ""))
        if name.lower() in skip:
            continue
        try:
            msg[name] = str(header.get("value", ""))
            have.add(name.lower())
        except (ValueError, TypeError):
            continue
    if "from" not in have and props.get("from"):
        msg["From"] = addr(props["from"])
    if "to" not in have and props.get("toRecipients"):
        msg["To"] = ", ".join(addr(r) for r in props["toRecipients"])
    if "subject" not in have:
        msg["Subject"] = props.get("subject") or ""
    if "message-id" not in have and props.get("internetMessageId"):
        msg["Message-ID"] = props["internetMessageId"]
    body = props.get("body") or {}
    subtype = "html" if (body.get("contentType") or "").lower() == "html" else "plain"
    msg.set_content(body.get("content") or "", subtype=subtype)
    for att in atts:
        maintype, _, sub = att.content_type.partition("/")
        if att.odata_type == "#microsoft.graph.itemAttachment":
            msg.add_attachment(att.data, maintype="application", subtype="octet-stream",
                               filename=att.name + ".eml")
            continue
        msg.add_attachment(att.data, maintype=maintype or "application",
                           subtype=sub or "octet-stream", filename=att.name,
                           disposition="inline" if att.is_inline else "attachment",
                           cid=f"<{att.content_id}>" if att.content_id else None)
    return msg.as_bytes()


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.sim.graph",
                                     description="Microsoft Graph + Entra simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRAPH_SIM_PORT", "0")))
    parser.add_argument("--webhook-base", default=os.environ.get("GRAPH_SIM_WEBHOOK_BASE"),
                        help="deliver notifications for non-loopback URLs to this base instead")
    parser.add_argument("--no-tls", action="store_true", help="plain HTTP only (no token "
                        "endpoint usable by MSAL)")
    parser.add_argument("--demo", action="store_true",
                        default=os.environ.get("GRAPH_SIM_DEMO", "") not in ("", "0"),
                        help="seed a demo tenant, app and mailbox")
    parser.add_argument("--tenant", default=os.environ.get("GRAPH_SIM_TENANT", DEMO_TENANT))
    parser.add_argument("--client-id", default=os.environ.get("GRAPH_SIM_CLIENT_ID"))
    parser.add_argument("--secret", default=os.environ.get("GRAPH_SIM_SECRET"))
    parser.add_argument("--mailbox", action="append",
                        default=[m for m in os.environ.get("GRAPH_SIM_MAILBOXES", "").split(",")
                                 if m], help="add a mailbox (repeatable)")
    parser.add_argument("--throttle", action="store_true", help="enable Outlook throttling")
    parser.add_argument("--latency-ms", type=float, default=0)
    args = parser.parse_args(argv)

    sim = GraphSim(args.host, args.port, tls=not args.no_tls, webhook_base=args.webhook_base,
                   latency_ms=args.latency_ms)
    seeded: dict[str, Any] = {}
    if args.demo:
        sim.add_app(DEMO_TENANT, DEMO_CLIENT_ID, secret=DEMO_SECRET)
        seeded["demo"] = {"tenant_id": DEMO_TENANT, "client_id": DEMO_CLIENT_ID,
                          "secret": DEMO_SECRET, "mailboxes": {
                              DEMO_MAILBOX: sim.add_mailbox(DEMO_MAILBOX, "Support",
                                                            tenant_id=DEMO_TENANT)}}
    if args.client_id and args.secret:
        sim.add_app(args.tenant, args.client_id, secret=args.secret)
        seeded["app"] = {"tenant_id": args.tenant, "client_id": args.client_id}
    extra = {}
    for address in args.mailbox:
        if address.lower() != DEMO_MAILBOX or not args.demo:
            extra[address] = sim.add_mailbox(address, tenant_id=args.tenant)
    if extra:
        seeded["mailboxes"] = extra
    if args.throttle:
        sim.throttle()
    sim.start()
    print(json.dumps({**sim.info(), **seeded}), flush=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
