"""GraphSim, the Graph + Entra simulator, composed of one mixin per resource (auth.py,
mailboxes.py, messages.py, subscriptions.py, notifications.py, throttling.py, control.py) on the
shared SimServer. This module keeps what they share: construction and the state every part reads,
start/stop, the movable clock, the route table, and the request pipeline of a Graph call (bearer
token, Prefer headers, permission, mailbox, application access policy, throttling).
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import random
import re
import ssl
import threading
import uuid
from typing import Any, Callable, Iterable

from .auth import _AuthMixin
from .control import _ControlMixin
from .helpers import _b64url, _iso7, _split_top
from .mailboxes import _MailboxesMixin
from .messages import _MessagesMixin
from .model import (
    BASIC_PERMS, ODATA_JSON, READ_PERMS, USER_PERMS, WRITE_PERMS, _App, _Ctx, _Mailbox, _Sub,
    _Token,
)
from .notifications import NotificationRecord, _NotificationsMixin, _Notifier
from .subscriptions import _SubscriptionsMixin
from .throttling import _Throttle, _ThrottlingMixin
from ..httpbase import HttpError, Request, Response, SimServer, json_response


# --------------------------------------------------------------------------------------------
# the simulator


class GraphSim(_AuthMixin, _MailboxesMixin, _MessagesMixin, _SubscriptionsMixin, _NotificationsMixin,
               _ThrottlingMixin, _ControlMixin, SimServer):
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
        self._domains: dict[str, str] = {}  # verified domain -> tenant GUID
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
