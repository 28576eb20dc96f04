"""LimeCrm: the CrmGateway on Lime CRM's REST API, plus the browsing and company helpers TableCrm
has. The class is composed of one mixin per concern (see the package docstring for the file map);
this module keeps what every part shares: construction from the settings, the API key (held here
only, name-mangled) and the httpx client built with it, closing, and the lock table's creation.
"""
from __future__ import annotations

import asyncio
import contextvars
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

import httpx

from .documents import _Documents
from .history import _History
from .limiter import SlidingWindowLimiter
from .creates import WriteScope, _KeyedCreates
from .lookups import SenderLookups
from .maintenance import _Maintenance
from .persons import _PersonsCompanies
from .records import CreateRecords, MemoryRecordTable, RecordTable, TableRecordTable
from .schema import SchemaReport, _SchemaChecks
from .tickets import _Tickets
from .transport import API_PREFIX, LIME_CONNECTIONS, USER_AGENT, _Transport
from .values import LimeNames, _int_setting
from .views import _Views
from .. import tls
from ...config import Settings
from ...domain.errors import PermanentError


# The adapter ------------------------------------------------------------------------------------
class LimeCrm(_PersonsCompanies, _Tickets, _History, _Documents, _Views, _SchemaChecks, _KeyedCreates,
              _Maintenance, _Transport):
    """CrmGateway on Lime CRM's REST API, plus TableCrm's browsing and company helpers."""

    TICKET_FIELDS = ("title", "person", "company")

    def __init__(self, base_url: str, api_key: str, *, names: LimeNames | None = None,
                 records: RecordTable | None = None, ca_bundle: str = "", rate_limit: int = 3000,
                 rate_window: float = 300.0, timeout: float = 30.0, upload_timeout: float = 300.0,
                 attempts: int = 4, max_wait: float = 5.0, backoff: float = 0.5,
                 max_file_bytes: int = 100 * 1024 * 1024,
                 sleep: Callable[[float], Awaitable[None]] | None = None,
                 clock: Callable[[], datetime] | None = None,
                 record_clock: Callable[[], datetime] | None = None,
                 limiter: SlidingWindowLimiter | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._base = base_url.rstrip("/")
        self.__key = api_key
        self.names = names or LimeNames()
        self._ca_bundle = ca_bundle
        self._verify: Any = tls.verify_for(ca_bundle)
        self._timeout = timeout
        self._upload_timeout = upload_timeout
        self._attempts = max(1, attempts)
        self._max_wait = max_wait
        self._backoff = backoff
        self.max_file_bytes = max_file_bytes
        self._sleep = sleep or asyncio.sleep
        self._now = clock or (lambda: datetime.now(timezone.utc))
        self._limiter = limiter or SlidingWindowLimiter(rate_limit, rate_window, max_wait=max_wait, sleep=self._sleep)
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._report: SchemaReport | None = None
        self._report_at = float("-inf")
        self._schema_lock: asyncio.Lock | None = None
        self._status_back = {v: k for k, v in self.names.statuses.items()}
        # our own records of what we created (records.py) and the scope of the current mail's writes
        # the records' leases run on real time (`record_clock` for tests), not on `clock`, which a
        # test may move by hours: a holder's lease must not end between its check and its write
        self._records = CreateRecords(records or MemoryRecordTable(), clock=record_clock)
        self._scope_var: contextvars.ContextVar[WriteScope | None] = contextvars.ContextVar(
            f"lime-writes-{id(self)}", default=None)
        self._had_mail: Callable[[], Awaitable[bool]] | None = None
        self.lookups = SenderLookups()  # per-worker cache of person and company lookups (lookups.py)

    @classmethod
    def from_settings(cls, settings: Settings, account: Any = None, **kwargs: Any) -> "LimeCrm":
        """Built by shared/bootstrap.py. The create records and the ticket index live in the
        `ratelimits` table of `account` (a StorageAccount; one is made from AzureWebJobsStorage when
        not given)."""
        env = settings.env
        if account is None:
            from ..storage_clients import StorageAccount
            account = StorageAccount(settings.storage_connection, env)
        kwargs.setdefault("names", LimeNames.from_env(env))
        kwargs.setdefault("rate_limit", _int_setting(env, "LIME_RATE_LIMIT_REQUESTS", 0))
        kwargs.setdefault("rate_window", float(_int_setting(env, "LIME_RATE_LIMIT_WINDOW_SECONDS", 1)))
        kwargs.setdefault("records", TableRecordTable(account))
        crm = cls(settings.lime_url, settings.lime_api_key, ca_bundle=settings.ca_bundle, **kwargs)
        crm._had_mail = lambda: _ledger_has_rows(account)
        return crm

    def __repr__(self) -> str:  # never the key
        return f"LimeCrm(base_url={self._base!r})"

    # plumbing -----------------------------------------------------------------------------------
    def _http(self) -> httpx.AsyncClient:
        if not self._base:
            raise PermanentError("LIME_CRM_URL is not set (CRM_BACKEND=lime)")
        if not self.__key:
            raise PermanentError("LIME_CRM_API_KEY is not set (CRM_BACKEND=lime)")
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self._base + API_PREFIX, verify=self._verify, transport=self._transport,
                timeout=httpx.Timeout(self._timeout, connect=min(self._timeout, 10.0)), follow_redirects=False,
                headers={"x-api-key": self.__key, "Accept": "application/hal+json", "User-Agent": USER_AGENT},
                limits=httpx.Limits(max_connections=LIME_CONNECTIONS, max_keepalive_connections=LIME_CONNECTIONS))
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def ensure(self) -> None:
        """Create the records' table (Services.ready() calls this). Does not call Lime."""
        await self._records.ensure(self._had_mail)

    def _scrub(self, text: str) -> str:
        key = self.__key
        return text.replace(key, "***") if key and len(key) >= 4 else text


async def _ledger_has_rows(account: Any) -> bool:
    """Whether the app processed mail before (an upgrade to the create records: records.py)."""
    from azure.core.exceptions import ResourceNotFoundError
    try:
        async for _ in account.table("ledger").query_entities(
                "PartitionKey ge @lo and PartitionKey lt @hi", parameters={"lo": "m-", "hi": "m."},
                select=["PartitionKey"], results_per_page=1):
            return True
    except ResourceNotFoundError:
        return False
    return False
