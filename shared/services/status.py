"""The status page's figures: per inbox Active, Expired or Inactive (with the reason), how many
mails are Failed and unprocessed, when the last mail was processed, and the last sweep.

- Inactive: the mailbox is switched off (not monitored, not swept).
- Expired: monitored, but Graph will not notify us: no subscription, a subscription record whose
  status is not active (the subscriptions issue writes why in `last_error`), or one past its
  expiration. The sweep still finds its mail; the status says notifications are missing.
- Active: otherwise.
`warnings`: what stops mail or autoreplies, or will: a Graph client's secret that expires within
30 days (or has expired), and services/health.py's (no inbox, a misconfigured mailbox, autoreplies
without TRAML or a known template, failed or uncertain autoreplies, placeholder secrets...); any
warning makes `healthy` false. Each is {reason, level, message, fix?, mailbox?, client?}.
Failed counts come from the `s-failed` index partition; unprocessed ones are counted live from the
Inbox (see sweep.scan_unprocessed), up to COUNT_CAP per inbox (`unprocessed_more` says there are
more); of those, mail that failed transiently and waits for its next try (a dependency is down:
domain/retry.py) is counted as `retrying`, with the earliest `next_retry_at`, not as unprocessed.
Performs I/O only through the ports.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from ..domain.errors import InboxError, Refusal
from ..domain.model import FAILED, Mailbox
from ..ports import Clock, MailboxRegistry, MailGateway
from .sweep import scan_unprocessed, start_of

log = logging.getLogger("inbox.status")

ACTIVE, EXPIRED, INACTIVE = "Active", "Expired", "Inactive"
COUNT_CAP = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_LIVE_SUBSCRIPTION = ("", "active")


@dataclass
class StatusDeps:
    registry: MailboxRegistry
    ledger: Any  # TableLedger: count_status, last_processed, get_many
    subscriptions: Any  # the subscription store: get(mailbox_id) -> record with status, last_error, expiration
    mail: MailGateway
    clock: Clock
    sweep_state: Any = None  # SweepStateStore
    # the Graph clients' secret-expiry warnings (services/clients.ClientService.warnings)
    warnings: Callable[[], list[dict[str, Any]]] | None = None
    # everything else that stops mail or autoreplies (services/health.py), given every mailbox
    health: Callable[[list[Mailbox]], Awaitable[list[dict[str, Any]]]] | None = None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def inbox_state(mailbox: Mailbox, sub: Any, now: datetime) -> tuple[str, str]:
    """(Active | Expired | Inactive, reason)."""
    if not mailbox.active:
        reason = getattr(mailbox, "inactive_reason", "") or "switched off by an admin: not monitored, not swept"
        return INACTIVE, reason
    if sub is None or not getattr(sub, "subscription_id", ""):
        detail = getattr(sub, "last_error", "") if sub is not None else ""
        return EXPIRED, detail or "no Graph subscription: new mail is found only by the sweep"
    status = (getattr(sub, "status", "") or "").lower()
    if status not in _LIVE_SUBSCRIPTION:
        return EXPIRED, getattr(sub, "last_error", "") or f"subscription {status}"
    expiration = getattr(sub, "expiration", None)
    if expiration and expiration <= now:
        return EXPIRED, f"subscription expired at {expiration.isoformat()} and was not renewed"
    return ACTIVE, ""


async def inbox_status(d: StatusDeps, mailbox_ref: str | None = None, include_inactive: bool = False,
                       count_unprocessed: bool = True, concurrency: int = 4) -> dict[str, Any]:
    now = d.clock.now()
    boxes = all_boxes = await d.registry.list()
    if mailbox_ref:
        wanted = mailbox_ref.strip().lower()
        boxes = [b for b in boxes if b.id.lower() == wanted or b.address.lower() == wanted]
    elif not include_inactive:
        boxes = [b for b in boxes if b.active]
    last = await d.ledger.last_processed()
    sweeps = await d.sweep_state.list() if d.sweep_state is not None else {}
    gate = asyncio.Semaphore(concurrency)

    async def one(box: Mailbox) -> dict[str, Any]:
        async with gate:
            sub = await d.subscriptions.get(box.id)
            state, reason = inbox_state(box, sub, now)
            doc: dict[str, Any] = {
                "id": box.id, "address": box.address, "status": state, "reason": reason,
                "failed": await d.ledger.count_status(FAILED, box.id), "unprocessed": None,
                "unprocessed_more": False, "retrying": None, "next_retry_at": None,
                "last_processed_at": _iso(last.get(box.id)),
                "start_date": _iso(start_of(box)),
                "subscription_expires_at": _iso(getattr(sub, "expiration", None)) if sub else None,
            }
            sweep = sweeps.get(box.id)
            if sweep is not None:
                doc["last_sweep"] = {"at": _iso(sweep.started_at), "enqueued": sweep.enqueued,
                                     "retried": sweep.retried, "capped": sweep.capped, "error": sweep.error}
            if count_unprocessed:
                try:
                    scan = await scan_unprocessed(d.mail, d.ledger, box, now, limit=COUNT_CAP)
                    # Mail that failed transiently and waits for its next try is not stuck: it is
                    # counted apart (retrying), with the earliest next try, and never as Failed.
                    waiting = [m for m in scan.mails if m.state == "retrying"]
                    doc["unprocessed"], doc["unprocessed_more"] = len(scan.mails) - len(waiting), scan.more
                    doc["retrying"] = len(waiting)
                    doc["next_retry_at"] = min((m.next_attempt_at for m in waiting if m.next_attempt_at),
                                               default=None)
                except InboxError as exc:
                    doc["unprocessed_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                    log.warning("status.unprocessed-unknown mailbox=%s error=%s", box.id, type(exc).__name__)
            return doc
    inboxes = list(await asyncio.gather(*(one(b) for b in boxes)))
    summary = {
        "inboxes": len(inboxes),
        "active": sum(1 for i in inboxes if i["status"] == ACTIVE),
        "expired": sum(1 for i in inboxes if i["status"] == EXPIRED),
        "inactive": sum(1 for i in inboxes if i["status"] == INACTIVE),
        "failed": sum(i["failed"] for i in inboxes),
        "unprocessed": sum(i["unprocessed"] or 0 for i in inboxes),
        "retrying": sum(i["retrying"] or 0 for i in inboxes),
        "next_retry_at": min((i["next_retry_at"] for i in inboxes if i["next_retry_at"]), default=None),
    }
    warnings = d.warnings() if d.warnings is not None else []
    if d.health is not None:
        warnings = warnings + await d.health(all_boxes)
    if mailbox_ref:  # one inbox's view: its own warnings and those of the whole service
        shown = {b.address for b in boxes}
        warnings = [w for w in warnings if not w.get("mailbox") or w["mailbox"] in shown]
    summary["warnings"] = len(warnings)
    # Mail waiting for a dependency is not Failed, but it is held up: not healthy either.
    summary["healthy"] = summary["expired"] == 0 and summary["failed"] == 0 and summary["unprocessed"] == 0 \
        and summary["retrying"] == 0 and not warnings
    return {"generated_at": now.isoformat(), "summary": summary, "inboxes": inboxes, "warnings": warnings}


# the message lists ----------------------------------------------------------------------------------
LISTABLE = ("failed", "unprocessed", "skipped")
MAX_LIST = 1000


class ListRequestError(Refusal, ValueError):
    """A bad list request (400)."""

    kind, reason = "bad_request", "invalid_parameter"


def _message_view(row: Any, mailbox: Mailbox | None, status: str) -> dict[str, Any]:
    start = start_of(mailbox) if mailbox else None
    return {
        "mailbox_id": row.mailbox_id, "mailbox": mailbox.address if mailbox else "", "message_id": row.message_id,
        "status": status, "sender": row.sender, "subject": row.subject, "received_at": _iso(row.received_at),
        "attempts": row.attempts, "last_error": row.last_error, "skip_reason": row.skip_reason,
        "updated_at": _iso(row.updated_at), "category": row.data.get("category", ""),
        "retry_at": row.data.get("retry_at") or None, "permanent": bool(row.data.get("permanent")),
        "before_start_date": bool(start and row.received_at and row.received_at < start),
    }


async def list_messages(d: StatusDeps, status: str, mailbox_ref: str | None = None, since: datetime | None = None,
                        limit: int = 100) -> dict[str, Any]:
    """Failed, Skipped (from their index partitions) or unprocessed (from the Inboxes) mail."""
    if status not in LISTABLE:
        raise ListRequestError(f"'status' must be one of {', '.join(LISTABLE)}, got {str(status)[:40]!r}",
                               field="status", detail={"allowed": list(LISTABLE)})
    limit = max(1, min(limit, MAX_LIST))
    boxes = await d.registry.list()
    by_id = {b.id: b for b in boxes}
    if mailbox_ref:
        wanted = mailbox_ref.strip().lower()
        boxes = [b for b in boxes if b.id.lower() == wanted or b.address.lower() == wanted]
        if not boxes:
            raise ListRequestError(f"no mailbox {mailbox_ref!r} is registered (GET /api/manage/mailboxes lists them)",
                                   "not_found", field="mailbox", kind="not_found")
    out: list[dict[str, Any]] = []
    more = False
    if status in ("failed", "skipped"):
        rows = await d.ledger.list_status(status, boxes[0].id if mailbox_ref else None, received_since=since,
                                          limit=limit + 1)
        more = len(rows) > limit
        rows.sort(key=lambda r: r.received_at or r.updated_at or _EPOCH, reverse=True)
        out = [_message_view(r, by_id.get(r.mailbox_id), status) for r in rows[:limit]]
    else:
        now = d.clock.now()
        for box in boxes if mailbox_ref else [b for b in boxes if b.active]:
            room = limit - len(out)
            if room <= 0:
                more = True
                break
            scan = await scan_unprocessed(d.mail, d.ledger, box, now, since=since, limit=room)
            more = more or scan.more
            for m in scan.mails:
                row = m.row
                view = {
                    "mailbox_id": box.id, "mailbox": box.address, "message_id": m.item.message_id,
                    "status": "unprocessed", "state": m.state, "sender": m.item.sender.lower(),
                    "subject": m.item.subject, "received_at": _iso(m.item.received_at),
                    "attempts": row.attempts if row else 0, "last_error": row.last_error if row else "",
                    "next_attempt_at": m.next_attempt_at if m.state == "retrying" else None,
                    "skip_reason": "", "updated_at": _iso(row.updated_at) if row else None,
                    "before_start_date": bool(start_of(box) and m.item.received_at < start_of(box)),
                }
                out.append(view)
    return {"status": status, "count": len(out), "more": more, "messages": out}


async def message_detail(d: StatusDeps, message_id: str, mailbox_ref: str | None = None) -> dict[str, Any] | None:
    """One mail's ledger row: status, steps and trace (issue 9 adds more)."""
    boxes = await d.registry.list()
    if mailbox_ref:
        wanted = mailbox_ref.strip().lower()
        boxes = [b for b in boxes if b.id.lower() == wanted or b.address.lower() == wanted]
    for box in boxes:
        row = await d.ledger.get(box.id, message_id)
        if row is None:
            continue
        doc = _message_view(row, box, row.status)
        doc.update(steps=row.steps, trace=row.trace, source=row.source, correlation_id=row.correlation_id,
                   created_at=_iso(row.created_at),
                   data={k: v for k, v in row.data.items() if not k.startswith("_")})
        return doc
    return None
