"""Monitored mailboxes: register, read, change and delete them (the manage API's mailbox CRUD).

A mailbox is addressed in Graph by the user's object id when the app may read users (User.Read.All),
else by its address, with a warning.  Its `id` is the object id, or for an address-only mailbox an
opaque `addr-<hash of the address>`: the id goes into the notification URL (`mailbox=`), and an
address must not end up in URLs, request logs or Graph's records.

Every change that affects the subscription (registering, (de)activating, moving to another client)
converges it at once through shared/services/subscriptions.py, under the mailbox's lease; a failure
there keeps the mailbox and shows its subscription as Expired with the reason (the next sync retries).
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..domain.errors import MailNotFound, PermanentError
from ..domain.model import ACTION_DELETE, ACTION_MOVE, STORE_ORIGINAL_MODES, AutoreplySettings, Mailbox
from ..ports import Clock, MailboxRegistry
from .subscriptions import MailboxOutcome, SubscriptionRecord, SubscriptionService

log = logging.getLogger("inbox.mailboxes")

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{2,}$")
CLOSED_TICKET_POLICIES = ("reopen", "new", "new_after_days")
EDITABLE = ("client", "active", "start_date", "action", "move_folder", "autoreply", "routing",
            "closed_ticket_policy", "closed_ticket_days", "sender_id_behaviour", "store_original")
ADDRESS_ONLY_WARNING = ("the app may not read users (User.Read.All): the mailbox is addressed by its address "
                        "and its notifications are verified by the mailbox key in the notification URL")


class ValidationError(PermanentError):
    """Bad input to the manage API: the message says what to fix."""


class MailboxNotFound(PermanentError):
    """No mailbox with that id (or address)."""


class MailboxUnreachable(PermanentError):
    """The Graph client cannot reach the mailbox: `reason` is mailbox_not_found or mailbox_unreachable."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def address_only_id(address: str) -> str:
    return "addr-" + hashlib.sha256(address.strip().lower().encode()).hexdigest()[:32]


def _bool(doc: dict[str, Any], name: str) -> bool:
    value = doc[name]
    if not isinstance(value, bool):
        raise ValidationError(f"'{name}' must be true or false")
    return value


def _date(value: Any, now: datetime) -> datetime:
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError("'start_date' must be an ISO 8601 date or date-time") from None
    return when if when.tzinfo else when.replace(tzinfo=now.tzinfo)


def _apply(box: Mailbox, doc: dict[str, Any], clients: dict[str, Any], now: datetime) -> Mailbox:
    """Validate the editable fields present in `doc` and set them on `box`."""
    if "client" in doc:
        client = str(doc["client"] or "")
        if client not in clients:
            raise ValidationError(f"'client' must name a configured Graph client "
                                  f"({', '.join(sorted(clients)) or 'none configured'})")
        box.client, box.tenant_id = client, clients[client].tenant_id
    if "active" in doc:
        box.active = _bool(doc, "active")
    if "start_date" in doc:
        box.start_date = _date(doc["start_date"], now) if doc["start_date"] else now
    if "action" in doc:
        if doc["action"] not in (ACTION_DELETE, ACTION_MOVE):
            raise ValidationError("'action' must be 'delete' or 'move'")
        box.action = doc["action"]
    if "move_folder" in doc:
        folder = doc["move_folder"] or ""
        if not isinstance(folder, str) or len(folder) > 512:
            raise ValidationError("'move_folder' must be a folder id or well-known folder name")
        box.move_folder = folder
    if box.action == ACTION_MOVE and not box.move_folder:
        raise ValidationError("'move_folder' is required when action is 'move'")
    if "autoreply" in doc:
        auto = doc["autoreply"] or {}
        if not isinstance(auto, dict):
            raise ValidationError("'autoreply' must be an object")
        codes = auto.get("merge_codes") or {}
        if not isinstance(codes, dict):
            raise ValidationError("'autoreply.merge_codes' must be an object")
        box.autoreply = AutoreplySettings(enabled=bool(auto.get("enabled", False)),
                                          template=str(auto.get("template", "")),
                                          from_name=str(auto.get("from_name", "")),
                                          merge_codes={str(k): str(v) for k, v in codes.items()})
    if "routing" in doc:
        if not isinstance(doc["routing"] or {}, dict):
            raise ValidationError("'routing' must be an object")
        box.routing = doc["routing"] or {}
    if "closed_ticket_policy" in doc:
        if doc["closed_ticket_policy"] not in CLOSED_TICKET_POLICIES:
            raise ValidationError(f"'closed_ticket_policy' must be one of {', '.join(CLOSED_TICKET_POLICIES)}")
        box.closed_ticket_policy = doc["closed_ticket_policy"]
    if "closed_ticket_days" in doc:
        days = doc["closed_ticket_days"]
        if not isinstance(days, int) or isinstance(days, bool) or not 0 <= days <= 3650:
            raise ValidationError("'closed_ticket_days' must be an integer from 0 to 3650")
        box.closed_ticket_days = days
    if "sender_id_behaviour" in doc:
        value = doc["sender_id_behaviour"]
        if not isinstance(value, str) or not 0 < len(value) <= 64:
            raise ValidationError("'sender_id_behaviour' must be a short string")
        box.sender_id_behaviour = value
    if "store_original" in doc:
        if doc["store_original"] not in STORE_ORIGINAL_MODES:
            raise ValidationError(f"'store_original' must be one of {', '.join(STORE_ORIGINAL_MODES)}")
        box.store_original = doc["store_original"]
    return box


def mailbox_from_request(doc: Any, clients: dict[str, Any], now: datetime) -> Mailbox:
    """Validate a POST /manage/mailboxes body into a Mailbox (its id is settled by MailboxService.add)."""
    if not isinstance(doc, dict):
        raise ValidationError("body must be a JSON object")
    unknown = sorted(set(doc) - set(EDITABLE) - {"address"})
    if unknown:
        raise ValidationError(f"unknown field(s): {', '.join(unknown)}; allowed: address, {', '.join(EDITABLE)}")
    address = str(doc.get("address") or "").strip()
    if not _EMAIL.match(address):
        raise ValidationError("'address' must be an email address")
    doc = dict(doc)
    if "client" not in doc:
        if len(clients) != 1:
            raise ValidationError(f"'client' is required: one of {', '.join(sorted(clients)) or 'none configured'}")
        doc["client"] = next(iter(clients))
    box = Mailbox(id=address.lower(), address=address, client="", tenant_id="", start_date=now, created_at=now)
    return _apply(box, doc, clients, now)


def patch_from_request(box: Mailbox, doc: Any, clients: dict[str, Any], now: datetime) -> Mailbox:
    if not isinstance(doc, dict) or not doc:
        raise ValidationError("body must be a JSON object with at least one field to change")
    unknown = sorted(set(doc) - set(EDITABLE))
    if unknown:
        hint = " (the address cannot change: delete the mailbox and add the new one)" if "address" in unknown else ""
        raise ValidationError(f"field(s) that cannot be changed: {', '.join(unknown)}{hint}; "
                              f"editable: {', '.join(EDITABLE)}")
    return _apply(box, doc, clients, now)


@dataclass
class MailboxResult:
    mailbox: Mailbox
    subscription: SubscriptionRecord | None
    outcome: MailboxOutcome | None = None


class MailboxService:
    def __init__(self, registry: MailboxRegistry, graph: Any, clock: Clock, clients: dict[str, Any],
                 subscriptions: SubscriptionService, store: Any) -> None:
        self.registry = registry
        self.graph = graph  # resolve_user, probe_mailbox
        self.clock = clock
        self.clients = clients
        self.subscriptions = subscriptions
        self.store = store  # SubscriptionStore

    async def find(self, ref: str) -> Mailbox | None:
        """By id, or by address."""
        ref = (ref or "").strip()
        if not ref:
            return None
        box = await self.registry.get(ref.lower())
        if box is None and "@" in ref:
            box = await self.registry.get(address_only_id(ref))
            if box is None:
                wanted = ref.lower()
                box = next((b for b in await self.registry.list() if b.address.lower() == wanted), None)
        return box

    async def _probe(self, box: Mailbox) -> None:
        try:
            await self.graph.probe_mailbox(box.client, box.graph_user)
        except MailNotFound:
            raise MailboxUnreachable(f"Graph knows no mailbox {box.address!r} for client {box.client!r}",
                                     "mailbox_not_found") from None
        except PermanentError as exc:
            if type(exc).__name__ == "GraphAccessDenied":
                raise MailboxUnreachable(f"client {box.client!r} may not read this mailbox: {exc} (an application "
                                         "access policy, or a missing Mail.ReadWrite permission)",
                                         "mailbox_unreachable") from None
            raise

    async def add(self, box: Mailbox) -> MailboxResult:
        """Resolve the id, prove the client reaches the mailbox, save it, subscribe.  Raises
        ValidationError / MailboxUnreachable (nothing saved), TransientError (nothing saved)."""
        if await self.find(box.address):
            raise ValidationError(f"mailbox {box.address} is already registered")
        try:
            user_id = await self.graph.resolve_user(box.client, box.address)
        except MailNotFound:
            raise MailboxUnreachable(f"the directory knows no user {box.address!r}", "mailbox_not_found") from None
        if user_id:
            box.user_id = box.id = user_id.lower()
            if await self.registry.get(box.id):
                raise ValidationError(f"mailbox {box.address} is already registered (as {box.id})")
        else:
            box.id = address_only_id(box.address)
            box.warnings.append(ADDRESS_ONLY_WARNING)
        await self._probe(box)
        await self.registry.save(box)
        outcome = await self.subscriptions.sync_mailbox(box) if box.active else None
        log.info("mailbox.added mailbox=%s client=%s subscription=%s", box.id, box.client,
                 outcome.action if outcome else "inactive")
        return MailboxResult(box, await self.store.get(box.id), outcome)

    async def get(self, ref: str) -> MailboxResult:
        box = await self.find(ref)
        if box is None:
            raise MailboxNotFound(f"no mailbox {ref!r}")
        return MailboxResult(box, await self.store.get(box.id))

    async def update(self, ref: str, doc: Any) -> MailboxResult:
        box = await self.find(ref)
        if box is None:
            raise MailboxNotFound(f"no mailbox {ref!r}")
        before = (box.client, box.active)
        box = patch_from_request(box, doc, self.clients, self.clock.now())
        if box.active and box.client != before[0]:
            await self._probe(box)
        await self.registry.save(box)
        outcome = None
        if (box.client, box.active) != before:
            outcome = await self.subscriptions.sync_mailbox(box)
        log.info("mailbox.updated mailbox=%s fields=%s subscription=%s", box.id, ",".join(sorted(doc)),
                 outcome.action if outcome else "-")
        return MailboxResult(box, await self.store.get(box.id), outcome)

    async def delete(self, ref: str) -> MailboxOutcome:
        """Delete the mailbox and its subscription.  If Graph cannot be reached the mailbox is still
        deleted; the next sync deletes the leftover subscription (an orphan by then)."""
        box = await self.find(ref)
        if box is None:
            raise MailboxNotFound(f"no mailbox {ref!r}")
        await self.registry.delete(box.id)
        outcome = await self.subscriptions.remove(box.id)
        log.info("mailbox.deleted mailbox=%s subscription=%s", box.id, outcome.action)
        return outcome
