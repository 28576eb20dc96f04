"""Graph subscriptions that never lapse: create, renew, recreate, clean up, and lifecycle events.

One subscription per active mailbox: changeType=created on `users/{id or address}/mailFolders('Inbox')/
messages`, clientState = HMAC(tenant, mailbox id) (domain/clientstate.py), notification and lifecycle
URLs from PUBLIC_BASE_URL with `?code=<WEBHOOK_KEY>&mailbox=<mailbox id>` (Graph sends query strings
back; the `mailbox` parameter is how the webhook verifies mailboxes registered by address, whose
notifications name a user id we never learned).

Decisions:
- Renewal window RENEW_WINDOW = 72 h.  The timer runs every 30 minutes and a subscription lives
  SUBSCRIPTION_LIFETIME (10,080 minutes, Outlook's maximum, less an hour of clock-skew margin), so
  a renewal happens about every four days, and a credential or Graph problem that starts on a Friday
  evening still leaves the whole weekend (144 timer runs) to renew before anything lapses.  We
  never ask beyond the maximum and always keep the expiration Graph granted.
- Our own lock, not Graph's 409: every change to a mailbox's subscription happens under a lease
  on that mailbox's row in the `subscriptions` table, taken and released with ETags.  A run that
  finds the lease held skips the mailbox ("busy"); the holder does the work.  Decisions are made on
  the row read when the lease was taken, and an id missing from an older Graph listing is
  confirmed with a GET before anything is recreated.
- Orphans (subscriptions Graph lists for our notification URL that no mailbox owns: deleted or
  inactive mailboxes, duplicates, replaced ones) are deleted under the owning mailbox's lease too.
- Recreate (delete, then create) when Graph no longer knows the subscription (404 or absent from
  the listing), when its clientState key version is not the current one (rotation retires keys),
  or when what we would ask for changed (client, resource, URLs; compared through a hash stored on
  the row, because the URLs hold the function key and the table holds no secret).
- Record fields read by status (issue 4): `status` is `active`, `expired` (we could not create or
  renew it, or its credential fails: `last_error` says why), `needs_sync` (a lifecycle event could
  not be handled; the next sync repairs it) or `inactive`; `expiration` is what Graph granted.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable, Protocol
from urllib.parse import parse_qs, quote, urlsplit

from .. import telemetry
from ..domain.clientstate import ClientStateSigner
from ..domain.envelope import LifecycleJob
from ..domain.errors import InboxError, MailNotFound, PermanentError, TransientError
from ..domain.model import Mailbox, SubscriptionInfo
from ..ports import Clock, MailboxRegistry

log = logging.getLogger("inbox.subscriptions")

# Outlook's maximum is 10,080 minutes; stay an hour under it (clock skew between us and Graph).
MAX_SUBSCRIPTION_MINUTES = 10_080
SUBSCRIPTION_LIFETIME = timedelta(minutes=MAX_SUBSCRIPTION_MINUTES - 60)
RENEW_WINDOW = timedelta(hours=72)
LEASE = timedelta(minutes=2)
SYNC_CONCURRENCY = 4
MAILBOX_PARAM = "mailbox"

STATUS_ACTIVE = "active"
STATUS_EXPIRED = "expired"
STATUS_NEEDS_SYNC = "needs_sync"
STATUS_INACTIVE = "inactive"

# What a sync did to one mailbox.
UNCHANGED, CREATED, RENEWED, RECREATED, REAUTHORIZED, REMOVED, BUSY, FAILED = (
    "unchanged", "created", "renewed", "recreated", "reauthorized", "removed", "busy", "failed")

_MAILBOX_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9@._-]{0,127}$")


@dataclass
class SubscriptionRecord:
    """A mailbox's subscription as we know it (one row per mailbox in the `subscriptions` table)."""
    mailbox_id: str
    client: str
    subscription_id: str = ""
    expiration: datetime | None = None
    key_version: int = 0
    status: str = ""  # active | expired | needs_sync | inactive
    last_error: str = ""
    target: str = ""  # hash of client, resource and URLs asked for; a change means recreate
    checked_at: datetime | None = None
    lease_owner: str = ""
    lease_until: datetime | None = None
    etag: str = ""


class SubscriptionStore(Protocol):
    async def get(self, mailbox_id: str) -> SubscriptionRecord | None: ...
    async def list(self) -> list[SubscriptionRecord]: ...
    async def acquire(self, mailbox_id: str, owner: str, now: datetime,
                      until: datetime) -> SubscriptionRecord | None:
        """Take the mailbox's lease (creating its row if needed); None when someone else holds it."""
    async def save(self, rec: SubscriptionRecord, if_match: bool = False) -> SubscriptionRecord:
        """if_match: ETag-guarded (raises LeaseLost when the row changed since it was read)."""
    async def release(self, rec: SubscriptionRecord) -> None:
        """Write the record with the lease cleared (ETag-guarded; a lost lease is logged, not raised)."""
    async def delete(self, mailbox_id: str, subscription_id: str = "") -> None: ...
    async def forget(self, subscription_id: str) -> None:
        """Drop the subscription-id lookup row of a replaced subscription."""


class SyncLogStore(Protocol):
    async def append(self, client: str, entry: dict[str, Any], keep: int) -> None: ...
    async def list(self, client: str, limit: int = 50) -> list[dict[str, Any]]: ...


class LeaseLost(TransientError):
    """The lease on a mailbox's subscription row ran out and someone else wrote it."""


def validate_mailbox_param(value: str | None) -> str | None:
    """The `mailbox` query parameter of a notification URL, if well-formed (else None)."""
    return value if value and _MAILBOX_ID.match(value) else None


def notification_urls(public_base_url: str, webhook_key: str, mailbox_id: str = "") -> tuple[str, str]:
    if not public_base_url:
        raise PermanentError("PUBLIC_BASE_URL is not set: Graph needs an HTTPS URL to call back on")
    params = []
    if webhook_key:
        params.append(f"code={quote(webhook_key, safe='')}")
    if mailbox_id:
        params.append(f"{MAILBOX_PARAM}={quote(mailbox_id, safe='')}")
    suffix = ("?" + "&".join(params)) if params else ""
    return f"{public_base_url}/api/notifications{suffix}", f"{public_base_url}/api/lifecycle{suffix}"


def inbox_resource(mailbox: Mailbox) -> str:
    return f"users/{mailbox.graph_user}/mailFolders('Inbox')/messages"


def _url_base(url: str) -> str:
    parts = urlsplit(url or "")
    return f"{parts.netloc.lower()}{parts.path.rstrip('/').lower()}"


def _mailbox_param(url: str) -> str | None:
    values = parse_qs(urlsplit(url or "").query).get(MAILBOX_PARAM)
    return validate_mailbox_param(values[0]) if values else None


def _resource_user(resource: str) -> str:
    match = re.match(r"^/?users(?:/|\(')([^/']+)", resource or "", re.IGNORECASE)
    return match.group(1).lower() if match else ""


def describe_error(exc: BaseException) -> str:
    """A short reason for a record and the sync log (no secrets: our errors never carry them)."""
    kind = type(exc).__name__
    text = str(exc)[:400]
    if kind == "CredentialError":
        return f"credential: {text}"
    if kind == "GraphAccessDenied":
        return f"access denied: {text}"
    return f"{kind}: {text}"


@dataclass
class MailboxOutcome:
    mailbox_id: str
    action: str
    reason: str = ""
    expiration: datetime | None = None
    subscription_id: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"mailbox": self.mailbox_id, "action": self.action, "reason": self.reason,
                "expiration": self.expiration.isoformat() if self.expiration else None}


@dataclass
class SubscriptionDeps:
    registry: MailboxRegistry
    store: SubscriptionStore
    graph: Any  # SubscriptionGateway (shared/ports.py) + reauthorize
    signer: ClientStateSigner
    clock: Clock
    public_base_url: str
    webhook_key: str
    clients: tuple[str, ...]
    synclog: SyncLogStore | None = None
    history_length: int = 50
    # sweep(mailbox, reason): look for Inbox mail a notification did not bring (issue 4's sweep).
    sweep: Callable[[Mailbox, str], Awaitable[Any]] | None = None
    worker_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])


class SubscriptionService:
    def __init__(self, deps: SubscriptionDeps) -> None:
        self.d = deps

    # what we ask Graph for --------------------------------------------------------------------
    def _ask(self, box: Mailbox) -> tuple[str, str, str, str]:
        notify, lifecycle = notification_urls(self.d.public_base_url, self.d.webhook_key, box.id)
        resource = inbox_resource(box)
        target = hashlib.sha256("|".join((box.client, resource, notify, lifecycle)).encode()).hexdigest()[:24]
        return resource, notify, lifecycle, target

    def _ours(self, info: SubscriptionInfo) -> bool:
        notify, _ = notification_urls(self.d.public_base_url, self.d.webhook_key)
        return _url_base(info.notification_url) == _url_base(notify)

    # one mailbox -------------------------------------------------------------------------------
    async def sync_mailbox(self, box: Mailbox, listed: dict[str, SubscriptionInfo] | None = None,
                           reauthorize: bool = False, removed: str = "", resign: str = "") -> MailboxOutcome:
        """Bring one mailbox's subscription to where it must be, under the mailbox's lease.

        listed: the client's subscriptions as Graph listed them at the start of a run (an id missing
        there is confirmed with a GET); reauthorize: answer a reauthorizationRequired event;
        removed: a subscription id Graph told us it removed; resign: why its clientState must be
        signed again (recreated)."""
        d = self.d
        now = d.clock.now()
        owner = f"{d.worker_id}-{uuid.uuid4().hex[:8]}"
        rec = await d.store.acquire(box.id, owner, now, now + LEASE)
        if rec is None:
            log.info("subscription.busy mailbox=%s", box.id)
            return MailboxOutcome(box.id, BUSY, "another run holds this mailbox's lease")
        try:
            outcome = await self._converge(box, rec, listed, reauthorize, removed, resign)
        except InboxError as exc:
            outcome = self._failed(box, rec, exc)
        except BaseException:
            await self._release(rec)
            raise
        rec.checked_at = d.clock.now()
        await self._release(rec)
        level = logging.WARNING if outcome.action == FAILED else logging.INFO
        log.log(level, "subscription.%s mailbox=%s client=%s subscription=%s expiration=%s reason=%s",
                outcome.action, box.id, box.client, rec.subscription_id or "-",
                rec.expiration.isoformat() if rec.expiration else "-", outcome.reason or "-")
        return outcome

    async def _release(self, rec: SubscriptionRecord) -> None:
        try:
            await self.d.store.release(rec)
        except InboxError as exc:  # the lease runs out by itself; the next run repairs
            log.warning("subscription.release-failed mailbox=%s error=%s", rec.mailbox_id, type(exc).__name__)

    def _failed(self, box: Mailbox, rec: SubscriptionRecord, exc: InboxError) -> MailboxOutcome:
        reason = describe_error(exc)
        now = self.d.clock.now()
        live = bool(rec.subscription_id and rec.expiration and rec.expiration > now)
        # A transient failure while the subscription still lives is retried by the next run (well
        # inside RENEW_WINDOW); anything else (none left, a failing credential, a refusal) is Expired.
        credential = type(exc).__name__ == "CredentialError"
        if not (isinstance(exc, TransientError) and not credential and live):
            rec.status = STATUS_EXPIRED
        rec.last_error = reason
        return MailboxOutcome(box.id, FAILED, reason, rec.expiration, rec.subscription_id)

    async def _converge(self, box: Mailbox, rec: SubscriptionRecord, listed: dict[str, SubscriptionInfo] | None,
                        reauthorize: bool, removed: str, resign: str = "") -> MailboxOutcome:
        d = self.d
        if not box.active:
            await self._drop(rec)
            rec.status, rec.last_error = STATUS_INACTIVE, ""
            return MailboxOutcome(box.id, REMOVED, "mailbox is inactive")
        resource, notify, lifecycle, target = self._ask(box)
        why = ""
        if not rec.subscription_id:
            why = "none"
        elif rec.subscription_id == removed:
            why = "removed by Graph"
            await self._drop(rec)
        elif rec.client != box.client or rec.target != target:
            why = "client, resource or URLs changed"
            await self._drop(rec)
        elif rec.key_version != d.signer.current_version:
            why = f"clientState key v{rec.key_version} is not the current one"
            await self._drop(rec)
        elif resign:
            why = resign
            await self._drop(rec)
        else:
            info = listed.get(rec.subscription_id) if listed is not None else None
            if info is None:
                info = await d.graph.get(rec.client, rec.subscription_id)
            if info is None:
                why = "unknown to Graph (404)"
                await d.store.forget(rec.subscription_id)
                rec.subscription_id = ""
        if why:
            return await self._create(box, rec, resource, notify, lifecycle, target, why)

        now = d.clock.now()
        action = UNCHANGED
        # The listing may predate a renewal another run made since; the row read under the lease is newer.
        expiration = max(info.expiration, rec.expiration) if rec.expiration else info.expiration
        try:
            if reauthorize:
                await d.graph.reauthorize(rec.client, rec.subscription_id)
                action = REAUTHORIZED
            if reauthorize or expiration - now <= RENEW_WINDOW:
                granted = await d.graph.renew(rec.client, rec.subscription_id, now + SUBSCRIPTION_LIFETIME)
                rec.expiration = granted.expiration
                action = action if action == REAUTHORIZED else RENEWED
            else:
                rec.expiration = expiration
        except MailNotFound:
            await d.store.forget(rec.subscription_id)
            rec.subscription_id = ""
            return await self._create(box, rec, resource, notify, lifecycle, target, "unknown to Graph (404)")
        rec.status, rec.last_error = STATUS_ACTIVE, ""
        return MailboxOutcome(box.id, action, "", rec.expiration, rec.subscription_id)

    async def _create(self, box: Mailbox, rec: SubscriptionRecord, resource: str, notify: str, lifecycle: str,
                      target: str, why: str) -> MailboxOutcome:
        d = self.d
        had = why != "none"
        state = d.signer.sign(box.tenant_id, box.id)
        try:
            info = await d.graph.create(box.client, resource, notify, lifecycle, state,
                                        d.clock.now() + SUBSCRIPTION_LIFETIME)
        except PermanentError as exc:
            if "409" not in str(exc):
                raise
            # Graph says this mailbox already has one (a leftover no row points to): delete ours, retry.
            for other in await d.graph.list(box.client):
                owner = _mailbox_param(other.notification_url) or _resource_user(other.resource)
                if self._ours(other) and owner in (box.id.lower(), box.graph_user.lower()):
                    await d.graph.delete(box.client, other.id)
            info = await d.graph.create(box.client, resource, notify, lifecycle, state,
                                        d.clock.now() + SUBSCRIPTION_LIFETIME)
        rec.client, rec.subscription_id, rec.expiration = box.client, info.id, info.expiration
        rec.key_version, rec.target = d.signer.current_version, target
        rec.status, rec.last_error = STATUS_ACTIVE, ""
        return MailboxOutcome(box.id, RECREATED if had else CREATED, why, info.expiration, info.id)

    async def _drop(self, rec: SubscriptionRecord) -> None:
        """Delete the record's subscription in Graph (a 404 is fine) and forget it."""
        if rec.subscription_id:
            if rec.client in self.d.clients:
                await self.d.graph.delete(rec.client, rec.subscription_id)
            await self.d.store.forget(rec.subscription_id)
        rec.subscription_id, rec.expiration = "", None

    async def remove(self, mailbox_id: str) -> MailboxOutcome:
        """A deleted mailbox: delete its subscription and its row (under its lease)."""
        d = self.d
        now = d.clock.now()
        rec = await d.store.acquire(mailbox_id, f"{d.worker_id}-rm", now, now + LEASE)
        if rec is None:
            return MailboxOutcome(mailbox_id, BUSY, "another run holds this mailbox's lease")
        try:
            await self._drop(rec)
        except InboxError as exc:
            rec.last_error = describe_error(exc)
            await self._release(rec)
            return MailboxOutcome(mailbox_id, FAILED, rec.last_error)
        await d.store.delete(mailbox_id)
        log.info("subscription.removed mailbox=%s", mailbox_id)
        return MailboxOutcome(mailbox_id, REMOVED)

    # every mailbox -----------------------------------------------------------------------------
    async def sync(self, trigger: str = "timer") -> dict[str, Any]:
        """Sync and Save: every client's mailboxes, orphans, records of deleted mailboxes; one sync
        log entry per client.  Failures are recorded, never raised (the next run retries)."""
        d = self.d
        started = d.clock.now()
        boxes = await d.registry.list()
        by_client: dict[str, list[Mailbox]] = {}
        for box in boxes:
            by_client.setdefault(box.client, []).append(box)
        report: dict[str, Any] = {"trigger": trigger, "started": started.isoformat(), "clients": {}}
        for client in sorted(set(d.clients) | set(by_client)):
            report["clients"][client] = await self._sync_client(client, by_client.get(client, []), boxes, trigger)
        known = {b.id for b in boxes}
        for rec in await d.store.list():
            if rec.mailbox_id not in known and not await d.registry.get(rec.mailbox_id):
                outcome = await self.remove(rec.mailbox_id)
                report.setdefault("deleted_mailboxes", []).append(outcome.as_dict())
        report["finished"] = d.clock.now().isoformat()
        return report

    async def _sync_client(self, client: str, boxes: list[Mailbox], all_boxes: list[Mailbox],
                           trigger: str) -> dict[str, Any]:
        d = self.d
        started = d.clock.now()
        entry: dict[str, Any] = {"run": uuid.uuid4().hex[:12], "trigger": trigger, "started": started.isoformat(),
                                 "mailboxes": len(boxes), "counts": {}, "errors": [], "orphans_deleted": 0}
        outcomes: list[MailboxOutcome] = []
        if client not in d.clients:
            reason = f"Graph client {client!r} is not configured in GRAPH_CLIENTS"
            outcomes = [await self._mark_expired(b, reason) for b in boxes]
            entry["error"] = reason
        else:
            try:
                listed: dict[str, SubscriptionInfo] | None = {s.id: s for s in await d.graph.list(client)}
            except InboxError as exc:
                listed, entry["error"] = None, describe_error(exc)
                log.warning("subscription.list-failed client=%s reason=%s", client, entry["error"])
            if listed is None and entry.get("error", "").startswith(("credential:", "access denied:")):
                # The credential fails: every mailbox of the client is Expired, with the reason.
                outcomes = [await self._mark_expired(b, entry["error"]) for b in boxes]
            else:
                sem = asyncio.Semaphore(SYNC_CONCURRENCY)
                tenant = await self._tenant_guid(client) if listed is not None else ""

                async def one(box: Mailbox) -> MailboxOutcome:
                    async with sem:
                        if tenant and box.tenant_id.strip().lower() != tenant:
                            return await self._resign(box, tenant, listed)
                        return await self.sync_mailbox(box, listed)
                outcomes = list(await asyncio.gather(*(one(b) for b in boxes)))
                if listed is not None:
                    entry["orphans_deleted"] = await self._delete_orphans(client, listed, all_boxes)
        for o in outcomes:
            entry["counts"][o.action] = entry["counts"].get(o.action, 0) + 1
            if o.action in (FAILED, BUSY):
                entry["errors"].append({"mailbox": o.mailbox_id, "action": o.action, "reason": o.reason})
        entry["finished"] = d.clock.now().isoformat()
        entry["ok"] = not entry.get("error") and not any(o.action == FAILED for o in outcomes)
        if d.synclog is not None:
            try:
                await d.synclog.append(client, entry, d.history_length)
            except InboxError as exc:
                log.warning("synclog.write-failed client=%s error=%s", client, type(exc).__name__)
        log.info("subscription.sync client=%s trigger=%s mailboxes=%d counts=%s orphans_deleted=%d ok=%s",
                 client, trigger, len(boxes), ",".join(f"{k}:{v}" for k, v in sorted(entry["counts"].items())) or "-",
                 entry["orphans_deleted"], entry["ok"])
        return entry

    async def _tenant_guid(self, client: str) -> str:
        """The client's tenant GUID ('' when the gateway cannot tell: nothing is repaired then)."""
        resolve = getattr(self.d.graph, "tenant_id", None)
        if resolve is None:
            return ""
        try:
            return (await resolve(client)).strip().lower()
        except InboxError as exc:
            log.warning("subscription.tenant-unknown client=%s reason=%s", client, describe_error(exc))
            return ""

    async def _resign(self, box: Mailbox, tenant: str, listed: dict[str, SubscriptionInfo] | None) -> MailboxOutcome:
        """A mailbox saved with its tenant's domain (contoso.onmicrosoft.com): its subscription's
        clientState was signed with the domain, Graph's notifications carry the GUID, so the webhook
        drops them all. Recreate it signed with the GUID, then save the GUID on the mailbox (after the
        recreate: a failure leaves the domain there, and the next sync tries again)."""
        configured = box.tenant_id
        box.tenant_id = tenant
        outcome = await self.sync_mailbox(box, listed, resign=f"clientState was signed with tenant {configured!r}; "
                                                              "Graph's notifications carry its GUID")
        if outcome.action not in (FAILED, BUSY):
            fresh = await self.d.registry.get(box.id)  # only the tenant changes: never undo an admin's edit
            if fresh is not None and fresh.client == box.client and fresh.tenant_id.strip().lower() != tenant:
                fresh.tenant_id = tenant
                await self.d.registry.save(fresh)
            log.info("subscription.tenant-repaired mailbox=%s client=%s", box.id, box.client)
        return outcome

    async def _mark_expired(self, box: Mailbox, reason: str) -> MailboxOutcome:
        d = self.d
        now = d.clock.now()
        rec = await d.store.acquire(box.id, f"{d.worker_id}-x", now, now + LEASE)
        if rec is None:
            return MailboxOutcome(box.id, BUSY, "another run holds this mailbox's lease")
        if box.active:
            rec.status = STATUS_EXPIRED
        rec.last_error, rec.checked_at = reason, now
        await self._release(rec)
        return MailboxOutcome(box.id, FAILED if box.active else UNCHANGED, reason, rec.expiration)

    async def _delete_orphans(self, client: str, listed: dict[str, SubscriptionInfo],
                              boxes: list[Mailbox]) -> int:
        """Subscriptions Graph lists for our notification URL that no active mailbox owns."""
        d = self.d
        by_user = {b.graph_user.lower(): b.id for b in boxes} | {b.id.lower(): b.id for b in boxes}
        deleted = 0
        for info in listed.values():
            if not self._ours(info):
                continue  # another deployment sharing the app registration: not ours to touch
            owner = _mailbox_param(info.notification_url) or by_user.get(_resource_user(info.resource), "")
            if not owner:
                await d.graph.delete(client, info.id)
                deleted += 1
                log.info("subscription.orphan-deleted client=%s subscription=%s owner=-", client, info.id)
                continue
            rec = await d.store.get(owner)
            if rec is not None and rec.subscription_id == info.id:
                continue  # the common case: it is the mailbox's own
            deleted += await self._delete_if_orphan(client, owner, info.id)
        return deleted

    async def _delete_if_orphan(self, client: str, owner: str, subscription_id: str) -> int:
        d = self.d
        now = d.clock.now()
        rec = await d.store.acquire(owner, f"{d.worker_id}-o", now, now + LEASE)
        if rec is None:
            return 0  # being worked on: the next run looks again
        try:
            box = await d.registry.get(owner)
            if box is not None and box.active and rec.subscription_id == subscription_id:
                return 0
            try:
                await d.graph.delete(client, subscription_id)
            except InboxError as exc:
                log.warning("subscription.orphan-delete-failed client=%s subscription=%s reason=%s", client,
                            subscription_id, describe_error(exc))
                return 0
            log.info("subscription.orphan-deleted client=%s subscription=%s owner=%s", client, subscription_id, owner)
            return 1
        finally:
            if await d.registry.get(owner) is None and not rec.subscription_id:
                await d.store.delete(owner)  # the row only existed for this lease
            else:
                await self._release(rec)

    # lifecycle events --------------------------------------------------------------------------
    async def handle_lifecycle(self, job: LifecycleJob) -> str:
        """reauthorizationRequired -> reauthorize and renew; subscriptionRemoved -> recreate, then
        sweep the mailbox; missed -> sweep the mailbox.  Raises TransientError when the action could
        not be done, so the queue retries it (and, in the end, lifecycle_failed records it).  Each
        outcome is counted (`inbox.lifecycle`, by event and outcome)."""
        try:
            outcome = await self._handle_lifecycle(job)
        except TransientError:
            _count_lifecycle(job, "retry")
            raise
        _count_lifecycle(job, outcome)
        return outcome

    async def _handle_lifecycle(self, job: LifecycleJob) -> str:
        d = self.d
        box = await d.registry.get(job.mailbox_id) if job.mailbox_id else None
        event = job.lifecycle_event
        if box is None:
            log.info("lifecycle.ignored correlation=%s subscription=%s event=%s reason=unknown-mailbox",
                     job.correlation_id, job.subscription_id, event)
            return "ignored"
        if not box.active:
            log.info("lifecycle.ignored correlation=%s mailbox=%s event=%s reason=inactive", job.correlation_id,
                     box.id, event)
            return "ignored"
        if event == "missed":
            await self._sweep(box, "missed", job)
            return "swept"
        if event not in ("reauthorizationRequired", "subscriptionRemoved"):
            log.warning("lifecycle.unknown-event correlation=%s mailbox=%s event=%s", job.correlation_id, box.id,
                        event[:40])
            return "ignored"
        rec = await d.store.get(box.id)
        if event == "reauthorizationRequired" and (rec is None or rec.subscription_id != job.subscription_id):
            # Not the mailbox's current subscription: a leftover the next sync deletes as an orphan.
            log.info("lifecycle.stale correlation=%s mailbox=%s subscription=%s event=%s", job.correlation_id,
                     box.id, job.subscription_id, event)
            return "stale"
        if event == "reauthorizationRequired":
            outcome = await self.sync_mailbox(box, reauthorize=True)
        else:
            outcome = await self.sync_mailbox(box, removed=job.subscription_id)
        log.info("lifecycle.handled correlation=%s mailbox=%s event=%s action=%s", job.correlation_id, box.id,
                 event, outcome.action)
        if outcome.action in (FAILED, BUSY):
            raise TransientError(f"lifecycle {event} for mailbox {box.id}: {outcome.action} ({outcome.reason})")
        if event == "subscriptionRemoved":
            await self._sweep(box, "subscription removed", job)
        return outcome.action

    async def _sweep(self, box: Mailbox, reason: str, job: LifecycleJob) -> None:
        if self.d.sweep is None:
            log.warning("lifecycle.no-sweep correlation=%s mailbox=%s reason=%s", job.correlation_id, box.id, reason)
            return
        await self.d.sweep(box, reason)
        log.info("lifecycle.swept correlation=%s mailbox=%s reason=%s", job.correlation_id, box.id, reason)

    async def record_lifecycle_failure(self, job: LifecycleJob, dequeue_count: int = 0) -> None:
        """lifecycle_failed: the event could not be handled after the queue's retries.  The mailbox
        shows as needing a sync, with the reason; the next sync (timer or manual) repairs it."""
        d = self.d
        _count_lifecycle(job, "failed")
        log.error("lifecycle.failed correlation=%s mailbox=%s subscription=%s event=%s dequeue_count=%d",
                  job.correlation_id, job.mailbox_id or "-", job.subscription_id, job.lifecycle_event, dequeue_count)
        if not job.mailbox_id:
            return
        for _ in range(5):  # ETag-guarded: never clobber a sync writing the same row
            rec = await d.store.get(job.mailbox_id)
            if rec is None:
                return
            rec.status = STATUS_NEEDS_SYNC
            rec.last_error = (f"lifecycle event {job.lifecycle_event} could not be handled at "
                              f"{d.clock.now().isoformat()}; a sync repairs it (POST /api/manage/subscriptions/sync)")
            try:
                await d.store.save(rec, if_match=True)
                return
            except LeaseLost:
                continue


LIFECYCLE_EVENTS = ("reauthorizationRequired", "subscriptionRemoved", "missed")


def _count_lifecycle(job: LifecycleJob, outcome: str) -> None:
    """One `inbox.lifecycle` count; an event name Graph does not define is counted as `other`
    (the body came from outside: its text never becomes a metric dimension)."""
    event = job.lifecycle_event if job.lifecycle_event in LIFECYCLE_EVENTS else "other"
    telemetry.count(telemetry.LIFECYCLE, event=event, outcome=outcome)
