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

import copy
import hashlib
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..domain import mailbox_rules
from ..domain.errors import MailNotFound, PermanentError, Refusal
from ..domain.model import AutoreplySettings, Mailbox
from ..ports import Clock, MailboxRegistry
from .subscriptions import MailboxOutcome, SubscriptionRecord, SubscriptionService

log = logging.getLogger("inbox.mailboxes")

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{2,}$")
CLOSED_TICKET_POLICIES = mailbox_rules.CHOICES["closed_ticket_policy"]
# Every field a POST may set and a PATCH may change (the choices come from mailbox_rules.CHOICES).
EDITABLE = ("client", "active", "start_date", *mailbox_rules.CHOICES, "move_folder", "autoreply", "routing",
            "closed_ticket_days")
AUTOREPLY_FIELDS = ("enabled", "template", "from_name", "merge_codes")
ADDRESS_ONLY_WARNING = ("the app may not read users (User.Read.All): the mailbox is addressed by its address "
                        "and its notifications are verified by the mailbox key in the notification URL")
MAILBOX_ROUTE = "PATCH /api/manage/mailboxes/{id}"


class ValidationError(Refusal, PermanentError):
    """Input the manage API refuses: `kind` bad_request (400: not what the route takes) or invalid
    (422: a value the rules refuse), the field at fault, and a message saying what to fix."""

    kind, reason = "invalid", "invalid_value"


class MailboxNotFound(Refusal, PermanentError):
    """No mailbox with that id (or address)."""

    kind, reason = "not_found", "not_found"


class MailboxExists(Refusal, PermanentError):
    """The mailbox is registered already (409): change it with PATCH instead."""

    kind, reason = "conflict", "mailbox_exists"


class MailboxUnreachable(Refusal, PermanentError):
    """The Graph client cannot reach the mailbox: `reason` is mailbox_not_found or mailbox_unreachable."""

    kind = "invalid"

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message, reason, field="address")


def address_only_id(address: str) -> str:
    return "addr-" + hashlib.sha256(address.strip().lower().encode()).hexdigest()[:32]


def _bad(field: str, message: str) -> ValidationError:
    """A value of the wrong type or form: 400."""
    return ValidationError(message, "invalid_field", field=field, kind="bad_request")


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(name, f"'{name}' must be true or false")
    return value


def _date(value: Any, now: datetime) -> datetime:
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise _bad("start_date", "'start_date' must be an ISO 8601 date or date-time, e.g. 2026-11-01") from None
    return when if when.tzinfo else when.replace(tzinfo=now.tzinfo)


def _autoreply(current: AutoreplySettings, doc: Any) -> AutoreplySettings:
    """The autoreply settings with the keys `doc` gives changed (a PATCH of one key keeps the others)."""
    if doc is None:
        return AutoreplySettings()
    if not isinstance(doc, dict):
        raise _bad("autoreply", "'autoreply' must be an object {enabled, template, from_name, merge_codes}")
    unknown = sorted(set(doc) - set(AUTOREPLY_FIELDS))
    if unknown:
        raise _bad(f"autoreply.{unknown[0]}", f"unknown field(s) in 'autoreply': {', '.join(unknown)}; allowed: "
                                              f"{', '.join(AUTOREPLY_FIELDS)}")
    out = AutoreplySettings(enabled=current.enabled, template=current.template, from_name=current.from_name,
                            merge_codes=dict(current.merge_codes))
    if "enabled" in doc:
        out.enabled = _bool(doc["enabled"], "autoreply.enabled")
    for name in ("template", "from_name"):
        if name in doc:
            value = doc[name] if doc[name] is not None else ""
            if not isinstance(value, str) or len(value) > 256:
                raise _bad(f"autoreply.{name}", f"'autoreply.{name}' must be a string (up to 256 characters)")
            setattr(out, name, value.strip())
    if "merge_codes" in doc:
        codes = doc["merge_codes"] or {}
        if not isinstance(codes, dict):
            raise _bad("autoreply.merge_codes", "'autoreply.merge_codes' must be an object {name: value}")
        out.merge_codes = {str(k): str(v) for k, v in codes.items()}
    return out


def _apply(box: Mailbox, doc: dict[str, Any], clients: dict[str, Any], now: datetime) -> Mailbox:
    """Read the editable fields present in `doc` onto `box` (400 for a value of the wrong type), then
    apply the rules the processor applies (mailbox_rules: 422 naming the field)."""
    if "client" in doc:
        client = doc["client"]
        if not isinstance(client, str) or client not in clients:
            raise ValidationError(f"'client' must name a configured Graph client "
                                  f"({', '.join(sorted(clients)) or 'none configured: set GRAPH_CLIENTS'})",
                                  "client_unknown", field="client", detail={"allowed": sorted(clients)})
        box.client, box.tenant_id = client, clients[client].tenant_id
    if "active" in doc:
        box.active = _bool(doc["active"], "active")
    if "start_date" in doc:
        box.start_date = _date(doc["start_date"], now) if doc["start_date"] else now
    for name in mailbox_rules.CHOICES:
        if name in doc:
            broken = mailbox_rules.choice_violation(name, doc[name], stored=False)
            if broken:
                raise ValidationError(broken.message, broken.reason, field=name, detail=broken.detail)
            setattr(box, name, doc[name])
    if "move_folder" in doc:
        box.move_folder = doc["move_folder"] if doc["move_folder"] is not None else ""
    if "autoreply" in doc:
        box.autoreply = _autoreply(box.autoreply, doc["autoreply"])
    if "routing" in doc:
        box.routing = doc["routing"] if doc["routing"] is not None else {}
    if "closed_ticket_days" in doc:
        box.closed_ticket_days = doc["closed_ticket_days"]
    broken = mailbox_rules.violations(box)
    if broken:
        first = broken[0]
        raise ValidationError(first.message, first.reason, field=first.field,
                              detail={**first.detail, "violations": [v.as_dict() for v in broken]})
    return box


def mailbox_from_request(doc: Any, clients: dict[str, Any], now: datetime) -> Mailbox:
    """Validate a POST /manage/mailboxes body into a Mailbox (its id is settled by MailboxService.add)."""
    if not isinstance(doc, dict):
        raise ValidationError("the body must be a JSON object {address, client, ...}", "invalid_json",
                              kind="bad_request")
    unknown = sorted(set(doc) - set(EDITABLE) - {"address"})
    if unknown:
        raise ValidationError(f"unknown field(s): {', '.join(unknown)}; allowed: address, {', '.join(EDITABLE)}",
                              "unknown_field", field=unknown[0], kind="bad_request")
    address = doc.get("address")
    if not isinstance(address, str) or not _EMAIL.match(address.strip()):
        raise ValidationError("'address' must be the mailbox's email address, e.g. support@contoso.com",
                              "invalid_address", field="address")
    address = address.strip()
    doc = dict(doc)
    if "client" not in doc:
        if len(clients) != 1:
            raise ValidationError(f"'client' is required: one of {', '.join(sorted(clients)) or 'none configured'}",
                                  "client_required", field="client", detail={"allowed": sorted(clients)})
        doc["client"] = next(iter(clients))
    box = Mailbox(id=address.lower(), address=address, client="", tenant_id="", start_date=now, created_at=now)
    return _apply(box, doc, clients, now)


def patch_from_request(box: Mailbox, doc: Any, clients: dict[str, Any], now: datetime) -> Mailbox:
    if not isinstance(doc, dict) or not doc:
        raise ValidationError("the body must be a JSON object with at least one field to change", "invalid_json",
                              kind="bad_request")
    unknown = sorted(set(doc) - set(EDITABLE))
    if unknown:
        hint = " (the address cannot change: delete the mailbox and add the new one)" if "address" in unknown else ""
        raise ValidationError(f"field(s) that cannot be changed: {', '.join(unknown)}{hint}; "
                              f"editable: {', '.join(EDITABLE)}", "unknown_field", field=unknown[0],
                              kind="bad_request")
    if doc == {"active": False}:  # switching a mailbox off is always possible, whatever else is wrong
        box.active = False
        return box
    return _apply(box, doc, clients, now)


@dataclass
class MailboxResult:
    mailbox: Mailbox
    subscription: SubscriptionRecord | None
    outcome: MailboxOutcome | None = None
    warnings: list[dict[str, Any]] = field(default_factory=list)


class MailboxService:
    """Register, read, change and delete mailboxes. `checks` (shared/services/mailbox_checks.py)
    asks TRAML, Graph and the CRM about what a save names (template, folder, routing properties);
    without it only the rules in domain/mailbox_rules.py apply."""

    def __init__(self, registry: MailboxRegistry, graph: Any, clock: Clock, clients: dict[str, Any],
                 subscriptions: SubscriptionService, store: Any, checks: Any = None) -> None:
        self.registry = registry
        self.graph = graph  # resolve_user, probe_mailbox, tenant_id
        self.clock = clock
        self.clients = clients
        self.subscriptions = subscriptions
        self.store = store  # SubscriptionStore
        self.checks = checks

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

    async def _tenant(self, box: Mailbox) -> None:
        """The client's tenant as its GUID (a tenant configured by domain is resolved once per client):
        clientStates are signed with it, and Graph's notifications carry it."""
        resolve = getattr(self.graph, "tenant_id", None)
        if resolve is not None:
            box.tenant_id = await resolve(box.client)

    def _exists(self, box: Mailbox, existing: Mailbox) -> MailboxExists:
        route = MAILBOX_ROUTE.replace("{id}", existing.id)
        return MailboxExists(f"mailbox {box.address} is already registered (id {existing.id}): change its settings "
                             f"with {route}", field="address",
                             detail={"id": existing.id, "route": route})

    async def _check(self, box: Mailbox, fields: set[str]) -> list[dict[str, Any]]:
        if self.checks is None:
            return []
        return await self.checks.check(box, fields)

    async def add(self, box: Mailbox, dry_run: bool = False) -> MailboxResult:
        """Resolve the id, prove the client reaches the mailbox, check what the settings name, save
        it, subscribe.  Raises Refusal subclasses (nothing saved), TransientError (nothing saved).
        dry_run: every check, nothing saved (`warnings` on the result)."""
        existing = await self.find(box.address)
        if existing:
            raise self._exists(box, existing)
        try:
            user_id = await self.graph.resolve_user(box.client, box.address)
        except MailNotFound:
            raise MailboxUnreachable(f"the directory knows no user {box.address!r}", "mailbox_not_found") from None
        if user_id:
            box.user_id = box.id = user_id.lower()
            existing = await self.registry.get(box.id)
            if existing:
                raise self._exists(box, existing)
        else:
            box.id = address_only_id(box.address)
            box.warnings.append(ADDRESS_ONLY_WARNING)
        await self._probe(box)
        await self._tenant(box)
        warnings = await self._check(box, set(EDITABLE))
        if dry_run:
            return MailboxResult(box, None, warnings=warnings)
        await self.registry.save(box)
        outcome = await self.subscriptions.sync_mailbox(box) if box.active else None
        log.info("mailbox.added mailbox=%s client=%s subscription=%s", box.id, box.client,
                 outcome.action if outcome else "inactive")
        return MailboxResult(box, await self.store.get(box.id), outcome, warnings)

    async def get(self, ref: str) -> MailboxResult:
        box = await self.find(ref)
        if box is None:
            raise MailboxNotFound(f"no mailbox {ref!r} (GET /api/manage/mailboxes lists them)", field="id")
        return MailboxResult(box, await self.store.get(box.id))

    async def update(self, ref: str, doc: Any, dry_run: bool = False) -> MailboxResult:
        box = await self.find(ref)
        if box is None:
            raise MailboxNotFound(f"no mailbox {ref!r} (GET /api/manage/mailboxes lists them)", field="id")
        before = (box.client, box.active)
        box = patch_from_request(copy.deepcopy(box), doc, self.clients, self.clock.now())
        if box.active and box.client != before[0]:
            await self._probe(box)
        if box.client != before[0]:
            await self._tenant(box)
        warnings = await self._check(box, set(doc)) if doc != {"active": False} else []
        if dry_run:
            return MailboxResult(box, await self.store.get(box.id), warnings=warnings)
        await self.registry.save(box)
        outcome = None
        if (box.client, box.active) != before:
            outcome = await self.subscriptions.sync_mailbox(box)
        log.info("mailbox.updated mailbox=%s fields=%s subscription=%s", box.id, ",".join(sorted(doc)),
                 outcome.action if outcome else "-")
        return MailboxResult(box, await self.store.get(box.id), outcome, warnings)

    async def delete(self, ref: str) -> MailboxOutcome:
        """Delete the mailbox and its subscription.  If Graph cannot be reached the mailbox is still
        deleted; the next sync deletes the leftover subscription (an orphan by then)."""
        box = await self.find(ref)
        if box is None:
            raise MailboxNotFound(f"no mailbox {ref!r} (GET /api/manage/mailboxes lists them)", field="id")
        await self.registry.delete(box.id)
        outcome = await self.subscriptions.remove(box.id)
        log.info("mailbox.deleted mailbox=%s subscription=%s", box.id, outcome.action)
        return outcome
