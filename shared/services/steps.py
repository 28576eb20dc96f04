"""The step view of one mail (`GET /api/manage/messages/{id}`): what happened to it, in order.

Built from the mail's ledger row (status.message_detail: status, steps, raw trace, data) and, for a
new ticket's autoreply, the autoreply's claim row. Adds:
- `timeline`: every step with its time, outcome, whether it went well, and the correlation id of
  the delivery that did it (a mail retried by the sweep or a recovery has several);
- `ticket`: the ticket's number, id, what the mail did to it, and the manage API's ticket URL
  (embedded CRM) or where to look (Lime);
- `decision`: the ticket decision (default policy or processing extension) as recorded before the
  CRM writes; `autoreply`: the autoreply's state; `correlation_ids`: every delivery's id.
Performs I/O only through the ports it is given.
"""
from __future__ import annotations

from typing import Any, Callable

from .status import message_detail

_DESCRIBE = {
    "new": "opens a new ticket", "successor": "opens a new ticket following up the closed one",
    "follow-up": "adds to the open ticket", "reopened": "reopens the closed ticket",
    "history-only": "adds a note only (automatic mail)", "skip": "skips the mail", "joined": "joins the ticket "
    "another mail of the conversation opened",
}
_FAILED_EVENTS = ("error", "failed")


def _outcome(event: str, ev: dict[str, Any]) -> str:
    if event == "queued":
        return f"queued by the {ev.get('source') or 'sweep'}"
    if event == "claimed":
        return f"picked up ({ev.get('source') or 'queue'})" + (" again" if ev.get("previous") else "")
    if event == "fetched":
        return "read from the mailbox"
    if event == "decided":
        text = f"{_DESCRIBE.get(str(ev.get('action')), ev.get('action'))}"
        if ev.get("ticket"):
            text += f" (ticket {ev['ticket']})"
        if ev.get("by") == "extension":
            text += " - decided by the processing extension"
            if ev.get("default"):
                text += f", instead of: {_DESCRIBE.get(str(ev['default']), ev['default'])}"
        return text + (f": {ev['reason']}" if ev.get("reason") else "")
    if event == "crm":
        return f"ticket {ev.get('ticket')} written ({ev.get('action')})"
    if event == "autoreply_queued":
        return "autoreply queued"
    if event == "mailbox_action":
        return "moved out of the Inbox" if ev.get("action") == "move" else "deleted from the Inbox (recoverable)"
    if event == "error":
        return f"error, will be retried: {ev.get('error', '')}"
    if event in ("processed", "skipped", "failed"):
        return event + (f": {ev['reason']}" if ev.get("reason") else "")
    extra = ", ".join(f"{k}={v}" for k, v in ev.items() if k not in ("at", "event", "correlation_id"))
    return f"{event}" + (f" ({extra})" if extra else "")


def timeline(trace: list[dict[str, Any]], first_correlation: str = "") -> list[dict[str, Any]]:
    """The ledger trace as steps; each carries the correlation id of the delivery it belongs to."""
    out: list[dict[str, Any]] = []
    correlation = first_correlation
    for ev in trace:
        event = str(ev.get("event", ""))
        if ev.get("correlation_id") and event in ("queued", "claimed"):
            correlation = str(ev["correlation_id"])
        details = {k: v for k, v in ev.items() if k not in ("at", "event", "correlation_id") and v not in ("", None)}
        out.append({"at": ev.get("at"), "step": event, "outcome": _outcome(event, ev),
                    "ok": event not in _FAILED_EVENTS, "correlation_id": str(ev.get("correlation_id") or correlation)
                    or None, **({"details": details} if details else {})})
    return out


def _autoreply_steps(record: Any) -> list[dict[str, Any]]:
    steps = []
    for ev in getattr(record, "trace", []) or []:
        event = str(ev.get("event", ""))
        details = {k: v for k, v in ev.items() if k not in ("at", "event") and v not in ("", None)}
        steps.append({"at": ev.get("at"), "step": f"autoreply.{event}",
                      "outcome": f"autoreply {event}" + (f": {ev.get('reason') or ev.get('error')}"
                                                        if ev.get("reason") or ev.get("error") else ""),
                      "ok": event not in ("failed", "uncertain"),
                      "correlation_id": getattr(record, "correlation_id", "") or None,
                      **({"details": details} if details else {})})
    return steps


async def message_steps(status_deps: Any, message_id: str, mailbox_ref: str | None = None, *,
                        autoreply_store: Any = None, ticket_url: Callable[[str], str | None] | None = None,
                        crm_name: str = "table") -> dict[str, Any] | None:
    doc = await message_detail(status_deps, message_id, mailbox_ref)
    if doc is None:
        return None
    data: dict[str, Any] = doc.get("data") or {}
    plan: dict[str, Any] = data.get("plan") or {}
    steps = timeline(doc.get("trace") or [], str(doc.get("correlation_id") or ""))
    number = str(data.get("ticket_number") or plan.get("number") or "")
    if number:
        url = ticket_url(number) if ticket_url else None
        doc["ticket"] = {"number": number, "id": data.get("ticket_id") or None,
                         "action": data.get("action") or plan.get("action") or None,
                         "new": bool(data.get("new_ticket")), "url": url, "crm": crm_name,
                         **({} if url else {"where": "open it in the CRM by its number"})}
    else:
        doc["ticket"] = None
    if plan:
        doc["decision"] = {k: plan[k] for k in ("action", "ticket", "decided_by", "skip_reason", "forced_new",
                                                "values", "title", "extension", "threaded_by") if plan.get(k)}
    doc["autoreply"] = None
    if data.get("autoreply") and data.get("ticket_id") and autoreply_store is not None:
        record = await autoreply_store.get(str(data["ticket_id"]))
        if record is None:
            doc["autoreply"] = {"status": "pending"}
        else:
            doc["autoreply"] = {"status": record.status, "sent_at": record.sent_at.isoformat() if record.sent_at
                                else None, "transaction_id": record.transaction_id or None,
                                "reason": record.reason or record.last_error or None}
            steps += _autoreply_steps(record)
    steps.sort(key=lambda s: str(s.get("at") or ""))
    doc["timeline"] = steps
    doc["correlation_ids"] = list(dict.fromkeys(s["correlation_id"] for s in steps if s.get("correlation_id")))
    return doc


async def message_steps_of(svc: Any, message_id: str, mailbox_ref: str | None = None) -> dict[str, Any] | None:
    """message_steps with the worker's parts (shared/bootstrap.Services)."""
    base = (getattr(svc.settings, "public_base_url", "") or "").rstrip("/")
    browsable = getattr(svc.crm, "ticket_detail", None) is not None

    def ticket_url(number: str) -> str | None:
        return f"{base}/api/manage/tickets/{number}" if browsable else None
    store = getattr(getattr(svc.autoreplies, "d", None), "store", None)
    return await message_steps(svc.status_deps, message_id, mailbox_ref, autoreply_store=store,
                               ticket_url=ticket_url, crm_name=getattr(svc.settings, "crm_backend", "table"))
