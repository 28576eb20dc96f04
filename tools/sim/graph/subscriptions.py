"""Subscriptions of the simulated Graph: create (with the real validation handshake on the
notification and lifecycle URLs, expiry limits, duplicate refusal), list, get, renew or re-point
(PATCH), delete, reauthorize, and expiry by the simulator's clock.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import re
import time
import uuid
from typing import Any
from urllib.parse import quote, urlsplit

from .helpers import _ci_get, _is_loopback, parse_datetime
from .model import BASIC_PERMS, MAX_SUB_MINUTES, MIN_SUB_MINUTES, _App, _Ctx, _Mailbox, _Sub
from .notifications import NotificationRecord
from ..httpbase import HttpError, Request, Response, empty_response


class _SubscriptionsMixin:
    """The /subscriptions endpoints and the subscription store."""

    def subscriptions(self) -> list[dict[str, Any]]:
        with self._lock:
            self._purge_expired()
            return [sub.json() for sub in self._subs.values()]

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
