"""Parsing and validating Graph change and lifecycle notifications. Pure: performs no I/O.

Graph's `changeNotificationCollection` is untrusted input: every field is checked for type and
size before anything is done with it, and a collection that is not of the documented shape is
refused whole (MalformedNotification) so that nothing of a bad request is enqueued.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import unquote

from .errors import MalformedNotification

MAX_BODY_BYTES = 1_000_000
MAX_NOTIFICATIONS = 1000
MAX_VALIDATION_TOKEN = 1024
LIFECYCLE_EVENTS = ("missed", "subscriptionRemoved", "reauthorizationRequired")

# Users/{id}/Messages/{id}, users/{id}@{tenant}/messages/{id}, Users('{id}')/Messages('{id}')
_RESOURCE = re.compile(
    r"^/?users(?:\('([^']+)'\)|/([^/]+))/(?:mailfolders(?:\('[^']*'\)|/[^/]+)/)?messages(?:\('([^']+)'\)|/([^/?]+))",
    re.IGNORECASE,
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ChangeNotification:
    subscription_id: str
    tenant_id: str
    client_state: str
    change_type: str
    mailbox_id: str  # the user object id (or address) the resource names
    message_id: str
    subscription_expiration: str


@dataclass(frozen=True)
class LifecycleNotification:
    subscription_id: str
    tenant_id: str
    client_state: str
    lifecycle_event: str
    subscription_expiration: str


def validation_token_problem(token: str) -> str | None:
    """Why a validationToken is unacceptable, or None. The token itself is opaque."""
    if len(token.encode()) > MAX_VALIDATION_TOKEN:
        return "validation token longer than 1 KB"
    if _CONTROL.search(token):
        return "validation token contains control characters"
    return None


def _str(item: dict, key: str, limit: int = 512, required: bool = True) -> str:
    value = item.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value) or len(value) > limit:
        raise MalformedNotification(f"notification field {key!r} is missing or not a string of at most {limit}")
    return value


def _collection(body: bytes) -> list[dict]:
    if len(body) > MAX_BODY_BYTES:
        raise MalformedNotification("body too large")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedNotification(f"body is not JSON: {type(exc).__name__}") from None
    except RecursionError:
        # `{"value":[[[[...` nested past the parser's recursion limit: a hostile body, not a
        # storage failure (Graph's collections are four levels deep).
        raise MalformedNotification("body is nested too deeply") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("value"), list):
        raise MalformedNotification("body is not a changeNotificationCollection (no 'value' array)")
    items = doc["value"]
    if len(items) > MAX_NOTIFICATIONS:
        raise MalformedNotification(f"more than {MAX_NOTIFICATIONS} notifications in one collection")
    if not all(isinstance(i, dict) for i in items):
        raise MalformedNotification("'value' holds something that is not a notification object")
    return items


def parse_resource(resource: str) -> tuple[str, str]:
    """(mailbox id, message id) from a message resource path; MalformedNotification otherwise."""
    match = _RESOURCE.match(resource or "")
    if not match:
        raise MalformedNotification("resource is not a message of a user")
    user = unquote(match.group(1) or match.group(2))
    user = user.split("@")[0] if re.fullmatch(r"[0-9a-fA-F-]{36}@[0-9a-fA-F-]{36}", user) else user
    return user, unquote(match.group(3) or match.group(4))


def parse_change_notifications(body: bytes) -> list[ChangeNotification]:
    out: list[ChangeNotification] = []
    for item in _collection(body):
        resource = _str(item, "resource", 2048)
        mailbox_id, message_id = parse_resource(resource)
        data = item.get("resourceData")
        if isinstance(data, dict) and isinstance(data.get("id"), str) and data["id"]:
            message_id = data["id"]
        if len(message_id) > 512 or _CONTROL.search(message_id) or _CONTROL.search(mailbox_id):
            raise MalformedNotification("message or mailbox id is malformed")
        out.append(ChangeNotification(
            subscription_id=_str(item, "subscriptionId", 128),
            tenant_id=_str(item, "tenantId", 128),
            client_state=_str(item, "clientState", 255, required=False),
            change_type=_str(item, "changeType", 64),
            mailbox_id=mailbox_id,
            message_id=message_id,
            subscription_expiration=_str(item, "subscriptionExpirationDateTime", 64, required=False),
        ))
    return out


def parse_lifecycle_notifications(body: bytes) -> list[LifecycleNotification]:
    out: list[LifecycleNotification] = []
    for item in _collection(body):
        out.append(LifecycleNotification(
            subscription_id=_str(item, "subscriptionId", 128),
            tenant_id=_str(item, "tenantId", 128),
            client_state=_str(item, "clientState", 255, required=False),
            lifecycle_event=_str(item, "lifecycleEvent", 64),
            subscription_expiration=_str(item, "subscriptionExpirationDateTime", 64, required=False),
        ))
    return out
