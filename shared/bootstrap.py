"""The composition root: builds the services once per worker, lazily, never at import.

Triggers call `services()`; tests call `build_services(settings, **overrides)` to swap a part
(e.g. the clock).  Clients bound to an event loop are rebuilt if the loop changes (the Functions
Python worker keeps one loop for all async invocations, so in production this happens once).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

from . import telemetry
from .adapters.graph import GraphAdapter, GraphClients
from .adapters.ledger_table import TableLedger
from .adapters.mailboxes_table import TableMailboxRegistry
from .adapters.queues import StorageJobQueue
from .adapters.storage_clients import StorageAccount
from .adapters.subscriptions_table import TableSubscriptionStore
from .config import QUEUE_AUTOREPLIES, QUEUE_LIFECYCLE, QUEUE_MESSAGES, ConfigError, Settings
from .domain.clientstate import ClientStateSigner
from .services.extension import load_extension
from .services.mailboxes import MailboxService
from .services.process import MessageProcessor, ProcessDeps
from .services.recovery import QUEUE_RECOVERY

log = logging.getLogger("inbox.bootstrap")

TABLES = ("mailboxes", "subscriptions", "ledger", "synclog", "recoverytasks", "ratelimits")
QUEUES = (QUEUE_MESSAGES, QUEUE_AUTOREPLIES, QUEUE_LIFECYCLE, QUEUE_RECOVERY)


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(timezone.utc)


@dataclass
class Services:
    settings: Settings
    account: StorageAccount
    clock: Any
    signer: ClientStateSigner
    queue: StorageJobQueue
    ledger: TableLedger
    registry: TableMailboxRegistry
    subscriptions: TableSubscriptionStore
    graph: GraphAdapter
    crm: Any
    processor: MessageProcessor
    mailboxes: MailboxService
    loop: Any = None
    _ready: bool = field(default=False, repr=False)
    _ready_lock: Any = field(default=None, repr=False)

    async def ready(self) -> "Services":
        """Create tables, queues and containers once per worker (idempotent)."""
        if self._ready:
            return self
        if self._ready_lock is None:
            self._ready_lock = asyncio.Lock()
        async with self._ready_lock:
            if not self._ready:
                await self.account.ensure_tables(*TABLES)
                await self.account.ensure_queues(*QUEUES, *(q + "-poison" for q in QUEUES))
                ensure = getattr(self.crm, "ensure", None)
                if ensure:
                    await ensure()
                self._ready = True
        return self

    @cached_property
    def mailbox_reader(self) -> Any:
        """The registry as the per-mail path reads it (rows reused for a few seconds, see
        CachedMailboxReader); anything other than the Table registry (a test's fake) is used as is."""
        from .adapters.mailboxes_table import CachedMailboxReader
        return CachedMailboxReader(self.registry) if isinstance(self.registry, TableMailboxRegistry) else self.registry

    async def own_addresses(self) -> frozenset[str]:
        return frozenset(m.address.lower() for m in await self.mailbox_reader.list())

    # failed and unprocessed mail (issue 4): built on first use --------------------------------
    @cached_property
    def recovery_store(self) -> Any:
        from .adapters.recovery_table import TableRecoveryStore
        return TableRecoveryStore(self.account)

    @cached_property
    def sweep_state(self) -> Any:
        from .adapters.recovery_table import SweepStateStore
        return SweepStateStore(self.account)

    @cached_property
    def failures(self) -> Any:
        from .services.failures import FailureService
        return FailureService(self.registry, self.ledger, self.graph, self.clock)

    @cached_property
    def recovery(self) -> Any:
        from .services.recovery import RecoveryDeps, RecoveryService
        from .services.sweep import deps_from
        return RecoveryService(RecoveryDeps(registry=self.registry, ledger=self.ledger, queue=self.queue,
                                            clock=self.clock, store=self.recovery_store, sweep=deps_from(self)))

    @cached_property
    def status_deps(self) -> Any:
        from .services.status import StatusDeps
        from .services.health import HealthDeps, health_warnings
        health = HealthDeps(settings=self.settings, traml=self.traml, traml_configured=self.traml_configured,
                            autoreply_store=self.autoreplies.d.store, crm=self.crm)
        return StatusDeps(registry=self.registry, ledger=self.ledger, subscriptions=self.subscriptions,
                          mail=self.graph, clock=self.clock, sweep_state=self.sweep_state,
                          warnings=self.clients.warnings, health=lambda boxes: health_warnings(health, boxes))

    @cached_property
    def privacy(self) -> Any:
        from .adapters.recovery_table import TimestampPurger
        from .services.privacy import PrivacyDeps, PrivacyService
        autoreplies = getattr(self.autoreplies, "d", None)
        erasers = [(name, getattr(autoreplies, attr, None)) for name, attr in
                   (("autoreply_claims", "store"), ("autoreply_rate_limits", "limiter"))]
        purgers = [("autoreply_claims", lambda now, cutoff: autoreplies.store.purge(cutoff)),
                   ("autoreply_rate_limits", lambda now, cutoff: autoreplies.limiter.purge(now))] \
            if autoreplies is not None else []
        if hasattr(self.crm, "erase_address") and hasattr(self.crm, "purge"):
            # the Lime adapter's own records and ticket index (parties' addresses) in our storage
            erasers.append(("lime_ticket_index", self.crm))
            purgers.append(("lime_records", lambda now, cutoff: self.crm.purge(cutoff)))
        return PrivacyService(PrivacyDeps(
            clock=self.clock, retention_days=self.settings.ledger_retention_days, ledger=self.ledger,
            recovery=self.recovery_store, synclog=TimestampPurger(self.account, "synclog"),
            erasers=[(n, h) for n, h in erasers if h is not None], purgers=purgers))

    @cached_property
    def synclog(self) -> Any:
        from .adapters.synclog_table import TableSyncLog
        return TableSyncLog(self.account)

    @cached_property
    def subscription_sync(self) -> Any:
        """Create, renew, recreate and clean up subscriptions; handle lifecycle events."""
        from .services.subscriptions import SubscriptionDeps, SubscriptionService
        s = self.settings
        return SubscriptionService(SubscriptionDeps(
            registry=self.registry, store=self.subscriptions, graph=self.graph, signer=self.signer,
            clock=self.clock, public_base_url=s.public_base_url, webhook_key=s.webhook_key,
            clients=tuple(s.graph_clients), synclog=self.synclog, history_length=s.sync_history_length,
            sweep=self.sweep_mailbox))

    @cached_property
    def clients(self) -> Any:
        """The Graph clients as the manage API lists and validates them (never their secrets)."""
        from .services.clients import ClientService
        s = self.settings
        return ClientService(s.graph_clients, self.registry, self.graph, self.clock,
                             lambda name: bool(s.secret(name)), self.synclog)

    async def sweep_mailbox(self, mailbox: Any, reason: str) -> Any:
        """Sweep one mailbox's Inbox now (lifecycle `missed`, `subscriptionRemoved`): issue 4's sweep."""
        sweeper = _sweeper(self)
        if sweeper is None:
            log.warning("sweep.unavailable mailbox=%s reason=%s", mailbox.id, reason)
            return None
        return await sweeper(mailbox, reason)

    @cached_property
    def traml(self) -> Any:
        """The TRAML client (one per worker: its template cache serves the sender and the manage API)."""
        from .adapters.traml import TramlClient
        return TramlClient.from_settings(self.settings)

    @property
    def traml_configured(self) -> bool:
        return bool(self.settings.traml_base_url and self.settings.traml_api_key)

    @cached_property
    def mailbox_checks(self) -> Any:
        """What a mailbox's settings name, checked with TRAML, Graph and the CRM when it is saved."""
        from .services.mailbox_checks import MailboxChecks
        return MailboxChecks(self.graph, self.traml, self.traml_configured, self.crm, self.settings.crm_backend,
                             self.settings.graph_clients, self.registry)

    @cached_property
    def autoreplies(self) -> Any:
        """The autoreply use case (TRAML client, claim rows, per-recipient limits), built on first use."""
        from .adapters.autoreply_state import TableAutoreplyStore, TableRateLimiter
        from .services.autoreply import AutoreplyDeps, AutoreplyService, limits_from_settings
        count, minutes = limits_from_settings(self.settings)
        return AutoreplyService(AutoreplyDeps(
            registry=self.mailbox_reader, ledger=self.ledger, crm=self.crm, queue=self.queue, clock=self.clock,
            traml=self.traml, store=TableAutoreplyStore(self.account, self.clock),
            limiter=TableRateLimiter(self.account, count, minutes),
            limit_description=f"{count} per {minutes} minutes"))


def _build_crm(settings: Settings, account: StorageAccount, clock: Any) -> Any:
    if settings.crm_backend == "lime":
        from .adapters.crm_lime import LimeCrm
        # its create records and ticket index live in our storage (their leases run on real time)
        return LimeCrm.from_settings(settings, account=account, clock=clock.now)
    from .adapters.crm_table import TableCrm
    return TableCrm(account)


def build_services(settings: Settings | None = None, **overrides: Any) -> Services:
    settings = settings or Settings.from_env()
    telemetry.configure(settings)  # once per worker, only with APPLICATIONINSIGHTS_CONNECTION_STRING
    # PROCESSING_EXTENSION, imported once per worker: a missing module or function fails here, at startup
    extension = overrides["extension"] if "extension" in overrides else load_extension(settings.processing_extension)
    account = overrides.get("account") or StorageAccount(settings.storage_connection, settings.env)
    clock = overrides.get("clock") or SystemClock()
    signer = ClientStateSigner(settings.client_state_keys)
    queue = StorageJobQueue(account)
    ledger = TableLedger(account, clock)
    registry = TableMailboxRegistry(account)
    subscriptions = TableSubscriptionStore(account)
    graph = overrides.get("graph") or GraphAdapter(GraphClients(settings), settings.graph_mailbox_concurrency,
                                                   settings.custom_select)
    crm = overrides.get("crm") or _build_crm(settings, account, clock)
    services = Services(settings=settings, account=account, clock=clock, signer=signer, queue=queue, ledger=ledger,
                        registry=registry, subscriptions=subscriptions, graph=graph, crm=crm,
                        processor=None, mailboxes=None)  # type: ignore[arg-type]
    services.processor = MessageProcessor(ProcessDeps(
        registry=services.mailbox_reader, ledger=ledger, mail=graph, crm=crm, queue=queue, clock=clock,
        rules=settings.mail_rules, own_addresses=services.own_addresses,
        on_failed=lambda mailbox, entry: services.failures.record_permanent(mailbox, entry), extension=extension))
    services.mailboxes = MailboxService(registry, graph, clock, settings.graph_clients, services.subscription_sync,
                                        subscriptions, checks=services.mailbox_checks)
    return services


def _sweeper(svc: Services) -> Any:
    """Issue 4's per-mailbox sweep (shared/services/sweep.py), when that module is present."""
    try:
        from .services.sweep import sweep_mailbox
    except ImportError:
        return None

    async def run(mailbox: Any, reason: str) -> Any:
        # After `subscriptionRemoved` or `missed` no notification will come for the young mail
        # either: take it now (no grace), not at the next timer sweep, up to 15 minutes later.
        return await sweep_mailbox(svc, mailbox, source="sweep", grace_seconds=0)
    return run


_overrides: dict[str, Any] = {}
_reported: set[str] = set()


def _report_startup_error(exc: ConfigError) -> None:
    """The settings (or the processing extension) are wrong: every function fails until they are
    fixed. Say why once per worker, on one line (ConfigError messages name settings, never secrets)."""
    message = str(exc)
    if message not in _reported:
        _reported.add(message)
        log.error("startup.config-invalid error=%s", message)


def override(**parts: Any) -> None:
    """Tests: build the worker's services with these parts (e.g. a clock that reads the Graph
    simulator's movable clock) until reset().  Forgets the current services."""
    global _current
    _overrides.update(parts)
    _current = None


_current: Services | None = None


def services() -> Services:
    """The worker's services, built on first use; rebuilt if the running event loop changed."""
    global _current
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if _current is None or (loop is not None and _current.loop is not None and _current.loop is not loop):
        try:
            _current = build_services(**_overrides)
        except ConfigError as exc:
            _report_startup_error(exc)
            raise
        _current.loop = loop
    elif _current.loop is None:
        _current.loop = loop
    return _current


def reset() -> None:
    """Forget the cached services and any test overrides (tests; settings changed)."""
    global _current
    _current = None
    _overrides.clear()
