"""What the status page must warn about beyond the inboxes' own states (design.md "Status is
truthful"): anything here makes `summary.healthy` false, one warning per cause, each with a
snake_case `reason`, a sentence, the `fix` and the mailbox or client it concerns:

  no_inbox                       no mailbox is registered: nothing is monitored
  mailbox_misconfigured          a stored mailbox breaks a rule (domain/mailbox_rules.py): its mail fails
  autoreply_traml_missing        autoreplies enabled, TRAML_BASE_URL / TRAML_API_KEY not set
  autoreply_template_missing     autoreplies enabled without a template
  autoreply_template_unknown     TRAML has no template by that name
  traml_unreachable, tls_untrusted, ...   TRAML could not be asked (the reason of the failure)
  autoreplies_failed, autoreplies_uncertain   autoreplies that need an admin (resend them)
  placeholder_secret             a secret setting still holds an example value (change-me...)
  webhook_key_missing            WEBHOOK_KEY empty while Graph calls a public URL (every notification 401s)
  crm_schema                     Lime CRM's schema lacks what the LIME_* settings name
Secrets are named by their setting, never shown. Performs I/O only through its dependencies (the
TRAML adapter's cached template lookup, the autoreply index in the ledger table).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..config import Settings
from ..domain import mailbox_rules
from ..domain.errors import InboxError
from ..domain.model import Mailbox
from .autoreply import FAILED as AUTOREPLY_FAILED, UNCERTAIN as AUTOREPLY_UNCERTAIN, TemplateNotFound

log = logging.getLogger("inbox.status")

PLACEHOLDER_MARKERS = ("change-me", "changeme", "change_me", "replace-me", "replaceme", "replace_me", "placeholder",
                       "your-secret", "your_secret", "<secret>", "todo-", "xxxxxxxx")
TRAML_CHECK_SECONDS = 5.0  # a status page waits no longer for TRAML's template list
COUNT_LIMIT = 100


def is_placeholder(value: str) -> bool:
    text = (value or "").strip().lower()
    return bool(text) and any(marker in text for marker in PLACEHOLDER_MARKERS)


def placeholder_settings(settings: Settings) -> list[str]:
    """The names of secret settings that still hold an example value (change-me...)."""
    names: list[str] = []
    if any(is_placeholder(key.decode("utf-8", "replace")) for key in settings.client_state_keys.values()):
        names.append("CLIENT_STATE_KEYS")
    if is_placeholder(settings.webhook_key):
        names.append("WEBHOOK_KEY")
    for cfg in settings.graph_clients.values():
        for setting in {"secret": (cfg.secret_setting,), "certificate": (cfg.certificate_setting,)}.get(
                cfg.credential, ()):
            if is_placeholder(settings.secret(setting)):
                names.append(setting)
    if settings.crm_backend == "lime" and is_placeholder(settings.lime_api_key):
        names.append("LIME_CRM_API_KEY")
    if is_placeholder(settings.traml_api_key):
        names.append("TRAML_API_KEY")
    return names


def _public(url: str) -> bool:
    host = (urlsplit(url or "").hostname or "").lower()
    return bool(host) and host not in ("localhost", "127.0.0.1", "::1") and not host.endswith(".localhost")


@dataclass
class HealthDeps:
    settings: Settings
    traml: Any  # template_id(name, fresh=True): TRAML is asked on every status, once per template
    traml_configured: bool
    autoreply_store: Any = None  # list(status, limit)
    crm: Any = None  # Lime: schema_report (the last check, no I/O)


def _w(reason: str, message: str, fix: str = "", level: str = "error", **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"reason": reason, "level": level, "message": message}
    if fix:
        doc["fix"] = fix
    doc.update({k: v for k, v in extra.items() if v not in (None, "")})
    return doc


async def health_warnings(d: HealthDeps, boxes: list[Mailbox]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not boxes:
        out.append(_w("no_inbox", "no mailbox is registered: no mail is monitored",
                      "add one: POST /api/manage/mailboxes {\"address\": ..., \"client\": ...} (or the console)"))
    for name in placeholder_settings(d.settings):
        out.append(_w("placeholder_secret", f"{name} still holds an example value (change-me...): anyone who read "
                      "the example knows it", f"set {name} to a long random secret (a Key Vault reference in Azure)",
                      setting=name))
    s = d.settings
    if not s.webhook_key and _public(s.public_base_url):
        out.append(_w("webhook_key_missing", "WEBHOOK_KEY is empty: Graph calls the webhook without a function "
                      "key, which the Functions host refuses (401), so no notification arrives",
                      "set WEBHOOK_KEY to the function key of graph_notifications, then POST "
                      "/api/manage/subscriptions/sync", setting="WEBHOOK_KEY"))
    active = [b for b in boxes if b.active]
    for box in active:
        broken = mailbox_rules.violations(box, (mailbox_rules.PROCESSING,))
        if broken:
            out.append(_w("mailbox_misconfigured", f"mailbox {box.address}: {broken[0].message}; its mail fails "
                          "until this is fixed", f"PATCH /api/manage/mailboxes/{box.id} with a valid "
                          f"'{broken[0].field.split('.')[0]}'", mailbox=box.address, field=broken[0].field))
    out.extend(await _autoreply_warnings(d, active))
    out.extend(await _autoreply_outcomes(d))
    report = getattr(d.crm, "schema_report", None) if s.crm_backend == "lime" else None
    if report is not None and getattr(report, "problems", None):
        out.append(_w("crm_schema", "Lime CRM's schema does not match the LIME_* settings: "
                      + "; ".join(report.problems[:5]), "fix the settings or the Lime solution (docs/lime.md)"))
    return out


async def _autoreply_warnings(d: HealthDeps, boxes: list[Mailbox]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    wanting = [b for b in boxes if b.autoreply.enabled]
    if not wanting:
        return out
    if not d.traml_configured:
        return [_w("autoreply_traml_missing", f"mailbox {b.address} has autoreplies enabled but TRAML is not "
                   "configured: no autoreply is sent", "set TRAML_BASE_URL and TRAML_API_KEY, or switch its "
                   "autoreplies off", mailbox=b.address) for b in wanting]
    unreachable: dict[str, Any] | None = None
    asked: dict[str, BaseException | None] = {}  # each template asked once per status, afresh
    for box in wanting:
        name = box.autoreply.template.strip()
        if not name:
            out.append(_w("autoreply_template_missing", f"mailbox {box.address} has autoreplies enabled without a "
                          "template: no autoreply is sent", f"PATCH /api/manage/mailboxes/{box.id} with "
                          "'autoreply.template'", mailbox=box.address, field="autoreply.template"))
            continue
        if unreachable is not None:
            continue
        try:
            if name not in asked:
                try:
                    await asyncio.wait_for(d.traml.template_id(name, fresh=True), TRAML_CHECK_SECONDS)
                    asked[name] = None
                except TemplateNotFound as exc:
                    asked[name] = exc
            if asked[name] is not None:
                raise asked[name]
        except TemplateNotFound as exc:
            out.append(_w("autoreply_template_unknown", f"mailbox {box.address}: {exc}", "create the template in "
                          f"TRAML or PATCH /api/manage/mailboxes/{box.id} with the right 'autoreply.template'",
                          mailbox=box.address, field="autoreply.template"))
        except (InboxError, asyncio.TimeoutError) as exc:
            reason = getattr(exc, "reason", "") or ("traml_unreachable" if isinstance(exc, asyncio.TimeoutError)
                                                    else "traml_failed")
            text = str(exc) or f"no answer within {TRAML_CHECK_SECONDS:.0f} s"
            unreachable = _w(reason, f"TRAML could not be asked about the autoreply templates: {text}",
                             getattr(exc, "fix", "") or "check TRAML_BASE_URL, TRAML_API_KEY and outbound access",
                             host=getattr(exc, "host", ""))
            out.append(unreachable)
    return out


async def _autoreply_outcomes(d: HealthDeps) -> list[dict[str, Any]]:
    if d.autoreply_store is None:
        return []
    out: list[dict[str, Any]] = []
    for status, reason, what, fix in (
            (AUTOREPLY_FAILED, "autoreplies_failed", "failed",
             "resend them once the cause is fixed, or dismiss those that need no send"),
            (AUTOREPLY_UNCERTAIN, "autoreplies_uncertain", "uncertain (perhaps sent, perhaps not)",
             "check TRAML's sent mail: resend those that were not sent, dismiss those that were")):
        try:
            records = await d.autoreply_store.list(status, COUNT_LIMIT)
        except InboxError as exc:
            log.warning("status.autoreplies-unknown status=%s error=%s", status, type(exc).__name__)
            continue
        if records:
            count = f"{len(records)}{'+' if len(records) >= COUNT_LIMIT else ''}"
            out.append(_w(reason, f"{count} autoreplies are {what}", f"look at GET /api/manage/autoreplies?status="
                          f"{status} and {fix} (POST /api/manage/autoreplies/{{ticket_id}}/resend or /dismiss)",
                          count=len(records), tickets=[r.ticket_number for r in records[:10]]))
    return out
