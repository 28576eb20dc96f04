"""Graph clients (Entra app registrations) as the manage API shows and validates them.

Listing never shows a secret: only the credential kind, which setting holds it and whether it is
set, the configured secret expiry (with a warning from 30 days ahead), the mailboxes each client
serves and its last sync.  Validation acquires a token with a fresh credential (no cached token can
hide a revoked secret), reads the application roles from it, and tries a harmless read of each
mailbox's Inbox, answering with a distinct reason for each failure:

  secret_missing, bad_secret, expired_secret, bad_certificate, federation_mismatch, unknown_app,
  unknown_tenant, token_failed (credential); missing_permission (no Mail.ReadWrite);
  mailbox_not_found, mailbox_unreachable (e.g. an application access policy); graph_unavailable;
  graph_refused (an answer retrying cannot change, e.g. 501).
"""
from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta
from typing import Any

from ..domain.errors import MailNotFound, PermanentError, Refusal, TransientError
from ..domain.model import Mailbox
from ..ports import Clock, MailboxRegistry

_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
log = logging.getLogger("inbox.clients")

SECRET_WARNING = timedelta(days=30)
REQUIRED_ROLE = "Mail.ReadWrite"
USER_READ_ROLES = {"User.Read.All", "User.ReadBasic.All", "Directory.Read.All"}

# Entra AADSTS codes -> our reasons (https://learn.microsoft.com/entra/identity-platform/reference-error-codes).
AADSTS_REASONS = {
    "7000215": "bad_secret",        # invalid client secret
    "7000222": "expired_secret",    # the client secret keys are expired
    "700027": "bad_certificate",    # assertion signature / key not found
    "700024": "bad_certificate",    # assertion not within its valid time range
    "700021": "bad_certificate",    # assertion audience mismatch
    "70021": "federation_mismatch",  # no matching federated identity record
    "700016": "unknown_app",        # application not found in the directory
    "90002": "unknown_tenant",      # tenant not found
    "7000218": "secret_missing",    # neither client_assertion nor client_secret
}


class ClientNotFound(Refusal, PermanentError):
    """No Graph client (or mailbox) by that name (404)."""

    kind, reason = "not_found", "not_found"


def secret_expiry(expires: str, now: datetime) -> dict[str, Any] | None:
    """The warning about a configured secret expiry date, or None (no date, or more than 30 days)."""
    if not expires:
        return None
    try:
        when = datetime.fromisoformat(expires.replace("Z", "+00:00"))
    except ValueError:
        return {"reason": "secret_expiry_invalid", "level": "error",
                "message": f"secret_expires {expires!r} is not an ISO 8601 date"}
    if when.tzinfo is None:
        when = when.replace(tzinfo=now.tzinfo)
    left = when - now
    if left <= timedelta(0):
        return {"reason": "secret_expired", "level": "error", "expires": when.isoformat(),
                "message": f"the client secret expired {-left.days} day(s) ago: create a new one, or move to a "
                           "federated credential (managed identity) that has nothing to expire"}
    if left <= SECRET_WARNING:
        return {"reason": "secret_expiring", "level": "warning", "expires": when.isoformat(),
                "message": f"the client secret expires in {left.days} day(s): create a new one and update the "
                           "Key Vault secret, or move to a federated credential"}
    return None


def _where(exc: BaseException) -> dict[str, str]:
    """The host and fix a dependency failure names (shared/adapters/errors.py), for a failing check."""
    return {k: v for k in ("host", "fix") if (v := getattr(exc, k, ""))}


class ClientService:
    def __init__(self, clients: dict[str, Any], registry: MailboxRegistry, graph: Any, clock: Clock,
                 secret_is_set: Any, synclog: Any = None) -> None:
        self.clients = clients  # name -> GraphClientConfig
        self.registry = registry
        self.graph = graph  # token_claims, probe_mailbox
        self.clock = clock
        self.secret_is_set = secret_is_set  # (setting name) -> bool
        self.synclog = synclog

    def _config(self, name: str) -> Any:
        cfg = self.clients.get(name)
        if cfg is None:
            raise ClientNotFound(f"no Graph client named {name!r} (configured: {', '.join(sorted(self.clients)) or 'none'})")
        return cfg

    def describe(self, cfg: Any, boxes: list[Mailbox]) -> dict[str, Any]:
        mine = [b for b in boxes if b.client == cfg.name]
        doc: dict[str, Any] = {"name": cfg.name, "tenant_id": cfg.tenant_id, "client_id": cfg.client_id,
                               "credential": cfg.credential, "mailboxes": sorted(b.id for b in mine)}
        # A tenant configured by its domain: the GUID its mailboxes were saved with (a token's tid,
        # what Graph's notifications carry); None until a mailbox is registered under it.
        resolved = {b.tenant_id.lower() for b in mine if b.tenant_id and b.tenant_id.lower() != cfg.tenant_id.lower()}
        doc["tenant_guid"] = (cfg.tenant_id.lower() if _GUID.match(cfg.tenant_id)
                              else next(iter(resolved)) if len(resolved) == 1 else None)
        if cfg.credential == "secret":
            doc["secret_setting"] = cfg.secret_setting
            doc["secret_set"] = bool(self.secret_is_set(cfg.secret_setting))
            doc["secret_expires"] = cfg.secret_expires or None
        elif cfg.credential == "certificate":
            doc["certificate_setting"] = cfg.certificate_setting
            doc["certificate_set"] = bool(self.secret_is_set(cfg.certificate_setting))
        elif cfg.credential == "managed_identity":
            doc["managed_identity_client_id"] = cfg.managed_identity_client_id or None
        warnings = []
        expiry = secret_expiry(cfg.secret_expires, self.clock.now()) if cfg.credential == "secret" else None
        if expiry:
            warnings.append(expiry)
        if cfg.credential == "secret" and not doc["secret_set"]:
            warnings.append({"level": "error", "message": f"{cfg.secret_setting} is not set"})
        doc["warnings"] = warnings
        return doc

    async def list(self) -> list[dict[str, Any]]:
        boxes = await self.registry.list()
        out = []
        for name in sorted(self.clients):
            doc = self.describe(self.clients[name], boxes)
            if self.synclog is not None:
                try:
                    last = await self.synclog.list(name, limit=1)
                except (TransientError, PermanentError):
                    last = []
                doc["last_sync"] = ({k: last[0].get(k) for k in ("started", "trigger", "ok", "counts", "error")}
                                    if last else None)
            out.append(doc)
        return out

    async def synclog_of(self, name: str, limit: int = 50) -> list[dict[str, Any]]:
        self._config(name)
        return await self.synclog.list(name, limit=limit) if self.synclog is not None else []

    def warnings(self) -> list[dict[str, Any]]:
        """Secret-expiry warnings of every client (for the status page)."""
        out = []
        for name in sorted(self.clients):
            cfg = self.clients[name]
            expiry = secret_expiry(cfg.secret_expires, self.clock.now()) if cfg.credential == "secret" else None
            if expiry:
                out.append({"client": name, **expiry,
                            "fix": "create a new client secret and update its setting (Key Vault), or move to "
                                   "a federated credential (managed_identity)"})
        return out

    async def validate(self, name: str, mailbox: str | None = None) -> dict[str, Any]:
        """Token, roles, then a harmless read of each mailbox (or only `mailbox`, an id or address)."""
        cfg = self._config(name)
        checks: list[dict[str, Any]] = []
        result: dict[str, Any] = {"client": name, "credential": cfg.credential, "checked_at":
                                  self.clock.now().isoformat(), "checks": checks}

        def fail(check: str, reason: str, detail: str, **extra: Any) -> dict[str, Any]:
            checks.append({"check": check, "ok": False, "reason": reason, "detail": detail, **extra})
            result.setdefault("reason", reason)
            return result

        try:
            claims = await self.graph.token_claims(name)
        except TransientError as exc:
            code = getattr(exc, "code", None)
            if code is None:  # not a credential problem: Entra or the network is down, or its certificate
                return self._finish(fail("token", getattr(exc, "reason", "") or "graph_unavailable", str(exc),
                                         **_where(exc)))
            reason = "secret_missing" if code == "config" else AADSTS_REASONS.get(code, "token_failed")
            return self._finish(fail("token", reason, str(exc)))
        checks.append({"check": "token", "ok": True})
        roles = set(claims.get("roles") or ())
        if REQUIRED_ROLE not in roles:
            fail("permissions", "missing_permission",
                 f"the token has no {REQUIRED_ROLE} application permission (admin consent missing?); "
                 f"roles: {', '.join(sorted(roles)) or 'none'}", roles=sorted(roles))
        else:
            checks.append({"check": "permissions", "ok": True, "roles": sorted(roles),
                           "can_read_users": bool(roles & USER_READ_ROLES)})
        targets = await self._targets(name, mailbox)
        for target_id, graph_user in targets:
            try:
                await self.graph.probe_mailbox(name, graph_user)
                checks.append({"check": "mailbox", "mailbox": target_id, "ok": True})
            except MailNotFound:
                fail("mailbox", "mailbox_not_found", "Graph knows no such mailbox", mailbox=target_id)
            except TransientError as exc:
                fail("mailbox", getattr(exc, "reason", "") or "graph_unavailable", str(exc), mailbox=target_id,
                     **_where(exc))
            except PermanentError as exc:
                text = str(exc)
                if getattr(exc, "status", None):  # not a refusal of access: an answer like 501, as it is
                    reason = "graph_refused"
                else:
                    reason = "mailbox_unreachable" if ("AccessPolicy" in text or "RAOP" in text
                                                      or REQUIRED_ROLE in roles) else "missing_permission"
                fail("mailbox", reason, text, mailbox=target_id)
        return self._finish(result)

    async def _targets(self, name: str, mailbox: str | None) -> list[tuple[str, str]]:
        boxes = await self.registry.list()
        if mailbox:
            wanted = mailbox.strip().lower()
            for b in boxes:
                if wanted in (b.id.lower(), b.address.lower()):
                    return [(b.id, b.graph_user)]
            if "@" in wanted:
                return [("(address given)", wanted)]  # not registered yet: probe it by address
            raise ClientNotFound(f"no mailbox {mailbox!r}")
        return [(b.id, b.graph_user) for b in boxes if b.client == name]

    def _finish(self, result: dict[str, Any]) -> dict[str, Any]:
        result["ok"] = all(c["ok"] for c in result["checks"])
        log.info("client.validated client=%s ok=%s reason=%s", result["client"], result["ok"],
                 result.get("reason", "-"))
        return result
