"""Registering mailboxes and giving each a Graph subscription.

The subscription resource is `users/{object id}/mailFolders('Inbox')/messages` with
changeType=created; the clientState binds tenant and mailbox (domain/clientstate.py); the
notification and lifecycle URLs come from PUBLIC_BASE_URL with `?code=` from WEBHOOK_KEY (Graph
sends query strings back).  The expiration is read back from Graph's answer, never assumed.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from ..domain.clientstate import ClientStateSigner
from ..domain.errors import PermanentError
from ..domain.model import ACTION_DELETE, ACTION_MOVE, AutoreplySettings, Mailbox, SubscriptionInfo
from ..ports import Clock, MailboxRegistry, SubscriptionGateway

log = logging.getLogger("inbox.mailboxes")

# Outlook's maximum is 10,080 minutes; stay a little under it.
SUBSCRIPTION_LIFETIME = timedelta(minutes=10_080 - 60)
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{2,}$")


class ValidationError(PermanentError):
    """Bad input to the manage API: the message says what to fix."""


@dataclass
class SubscriptionRecord:
    mailbox_id: str
    client: str
    subscription_id: str = ""
    expiration: datetime | None = None
    key_version: int = 0
    status: str = ""  # active | expired | error
    last_error: str = ""
    etag: str = ""


def notification_urls(public_base_url: str, webhook_key: str) -> tuple[str, str]:
    if not public_base_url:
        raise ValidationError("PUBLIC_BASE_URL is not set: Graph needs an HTTPS URL to call back on")
    suffix = f"?code={quote(webhook_key, safe='')}" if webhook_key else ""
    return f"{public_base_url}/api/notifications{suffix}", f"{public_base_url}/api/lifecycle{suffix}"


def inbox_resource(mailbox: Mailbox) -> str:
    return f"users/{mailbox.graph_user}/mailFolders('Inbox')/messages"


def mailbox_from_request(doc: Any, clients: dict[str, Any], now: datetime) -> Mailbox:
    """Validate a POST /manage/mailboxes body into a Mailbox (without its object id yet)."""
    if not isinstance(doc, dict):
        raise ValidationError("body must be a JSON object")
    address = str(doc.get("address") or "").strip()
    if not _EMAIL.match(address):
        raise ValidationError("'address' must be an email address")
    client = str(doc.get("client") or (next(iter(clients)) if len(clients) == 1 else ""))
    if client not in clients:
        raise ValidationError(f"'client' must name a configured Graph client ({', '.join(sorted(clients)) or 'none configured'})")
    action = str(doc.get("action") or ACTION_DELETE)
    if action not in (ACTION_DELETE, ACTION_MOVE):
        raise ValidationError("'action' must be 'delete' or 'move'")
    if action == ACTION_MOVE and not doc.get("move_folder"):
        raise ValidationError("'move_folder' is required when action is 'move'")
    start = doc.get("start_date")
    try:
        start_date = datetime.fromisoformat(str(start).replace("Z", "+00:00")) if start else now
    except ValueError:
        raise ValidationError("'start_date' must be an ISO 8601 date-time") from None
    if start_date.tzinfo is None:
        start_date = start_date.replace(tzinfo=now.tzinfo)
    auto = doc.get("autoreply") or {}
    if not isinstance(auto, dict):
        raise ValidationError("'autoreply' must be an object")
    return Mailbox(
        id=address.lower(), address=address, client=client, tenant_id=clients[client].tenant_id,
        active=bool(doc.get("active", True)), start_date=start_date, action=action,
        move_folder=str(doc.get("move_folder") or ""),
        autoreply=AutoreplySettings(enabled=bool(auto.get("enabled", False)), template=str(auto.get("template", "")),
                                    from_name=str(auto.get("from_name", "")),
                                    merge_codes={str(k): str(v) for k, v in (auto.get("merge_codes") or {}).items()}),
        routing=doc.get("routing") if isinstance(doc.get("routing"), dict) else {},
        closed_ticket_policy=str(doc.get("closed_ticket_policy") or "reopen"),
        closed_ticket_days=int(doc.get("closed_ticket_days") or 0),
        sender_id_behaviour=str(doc.get("sender_id_behaviour") or "PersonEmailDomain"),
        created_at=now,
    )


class MailboxService:
    def __init__(self, registry: MailboxRegistry, graph: SubscriptionGateway, signer: ClientStateSigner,
                 clock: Clock, public_base_url: str, webhook_key: str, subscriptions: Any) -> None:
        self.registry = registry
        self.graph = graph
        self.signer = signer
        self.clock = clock
        self.public_base_url = public_base_url
        self.webhook_key = webhook_key
        self.subscriptions = subscriptions  # SubscriptionStore

    async def add(self, mailbox: Mailbox) -> tuple[Mailbox, SubscriptionInfo | None]:
        existing = await self.registry.get(mailbox.id)
        user_id = await self.graph.resolve_user(mailbox.client, mailbox.address)
        if user_id:
            mailbox.user_id = user_id.lower()
            mailbox.id = user_id.lower()
            existing = existing or await self.registry.get(mailbox.id)
        else:
            mailbox.warnings.append("the app may not read users (User.Read.All): the mailbox is addressed by "
                                    "its address; notifications are verified against it")
        if existing:
            raise ValidationError(f"mailbox {mailbox.address} is already registered")
        await self.registry.save(mailbox)
        sub = await self.ensure_subscription(mailbox) if mailbox.active else None
        log.info("mailbox.added mailbox=%s subscription=%s", mailbox.id, sub.id if sub else "-")
        return mailbox, sub

    async def ensure_subscription(self, mailbox: Mailbox) -> SubscriptionInfo:
        notify, lifecycle = notification_urls(self.public_base_url, self.webhook_key)
        info = await self.graph.create(
            mailbox.client, inbox_resource(mailbox), notify, lifecycle,
            self.signer.sign(mailbox.tenant_id, mailbox.id), self.clock.now() + SUBSCRIPTION_LIFETIME)
        await self.subscriptions.save(SubscriptionRecord(
            mailbox_id=mailbox.id, client=mailbox.client, subscription_id=info.id, expiration=info.expiration,
            key_version=self.signer.current_version, status="active"))
        return info
