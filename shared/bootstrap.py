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
from typing import Any

from .adapters.graph import GraphAdapter, GraphClients
from .adapters.ledger_table import TableLedger
from .adapters.mailboxes_table import TableMailboxRegistry
from .adapters.queues import StorageJobQueue
from .adapters.storage_clients import StorageAccount
from .adapters.subscriptions_table import TableSubscriptionStore
from .config import QUEUE_AUTOREPLIES, QUEUE_LIFECYCLE, QUEUE_MESSAGES, Settings
from .domain.clientstate import ClientStateSigner
from .services.mailboxes import MailboxService
from .services.process import MessageProcessor, ProcessDeps

log = logging.getLogger("inbox.bootstrap")

TABLES = ("mailboxes", "subscriptions", "ledger", "synclog", "recoverytasks", "ratelimits")
QUEUES = (QUEUE_MESSAGES, QUEUE_AUTOREPLIES, QUEUE_LIFECYCLE)


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

    async def own_addresses(self) -> frozenset[str]:
        return frozenset(m.address.lower() for m in await self.registry.list())


def _build_crm(settings: Settings, account: StorageAccount) -> Any:
    if settings.crm_backend == "lime":
        from .adapters.crm_lime import LimeCrm  # written by the mail-to-CRM issue
        return LimeCrm.from_settings(settings)
    from .adapters.crm_table import TableCrm
    return TableCrm(account)


def build_services(settings: Settings | None = None, **overrides: Any) -> Services:
    settings = settings or Settings.from_env()
    account = overrides.get("account") or StorageAccount(settings.storage_connection, settings.env)
    clock = overrides.get("clock") or SystemClock()
    signer = ClientStateSigner(settings.client_state_keys)
    queue = StorageJobQueue(account)
    ledger = TableLedger(account, clock)
    registry = TableMailboxRegistry(account)
    subscriptions = TableSubscriptionStore(account)
    graph = overrides.get("graph") or GraphAdapter(GraphClients(settings), settings.graph_mailbox_concurrency,
                                                   settings.custom_select)
    crm = overrides.get("crm") or _build_crm(settings, account)
    services = Services(settings=settings, account=account, clock=clock, signer=signer, queue=queue, ledger=ledger,
                        registry=registry, subscriptions=subscriptions, graph=graph, crm=crm,
                        processor=None, mailboxes=None)  # type: ignore[arg-type]
    services.processor = MessageProcessor(ProcessDeps(
        registry=registry, ledger=ledger, mail=graph, crm=crm, queue=queue, clock=clock,
        own_addresses=services.own_addresses))
    services.mailboxes = MailboxService(registry, graph, signer, clock, settings.public_base_url,
                                        settings.webhook_key, subscriptions)
    return services


_current: Services | None = None


def services() -> Services:
    """The worker's services, built on first use; rebuilt if the running event loop changed."""
    global _current
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if _current is None or (loop is not None and _current.loop is not None and _current.loop is not loop):
        _current = build_services()
        _current.loop = loop
    elif _current.loop is None:
        _current.loop = loop
    return _current


def reset() -> None:
    """Forget the cached services (tests; settings changed)."""
    global _current
    _current = None
