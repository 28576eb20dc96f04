"""The CRM backends the mail-to-CRM suites run against, as one parametrized fixture.

`crm_backend` yields a `Backend` whose `new(clock)` makes a fresh, empty CRM (one per scenario) and
whose `company(crm, spec)` / `person(...)` seed it. Adding a backend is one entry in BACKENDS and
one branch in `new`.

- memory: tests/fakes_crm.InMemoryCrm (the fast twin)
- table:  shared/adapters/crm_table.TableCrm on a real Azurite (tables and container per CRM)
- lime:   shared/adapters/crm_lime.LimeCrm against tools/sim/lime.LimeSim; skipped, naming what is
          missing, while the adapter does not implement the port's sender-matching methods
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest

from shared.adapters.crm_table import TableCrm
from shared.adapters.storage_clients import StorageAccount
from tests.fakes import FakeClock
from tests.fakes_crm import InMemoryCrm

BACKENDS = ["memory", "table", "lime"]
PORT_METHODS = ("lookup_person", "find_company_ids", "person_company_ids", "find_or_create_person",
                "create_ticket", "add_history", "add_document", "get_ticket", "find_ticket_by_message_ids",
                "add_message_ids", "set_ticket_status", "reserve_ticket_number")


@dataclass
class Backend:
    name: str
    connection: str = ""
    _closers: list[Any] = field(default_factory=list)
    lime_sim: Any = None
    helpdesktypes: dict[str, Any] = field(default_factory=dict)

    async def new(self, clock: FakeClock) -> Any:
        now = clock.now
        if self.name == "memory":
            return InMemoryCrm(clock=now)
        if self.name == "table":
            account = StorageAccount(self.connection, {})
            self._closers.append(account.close)
            prefix = "crm" + uuid.uuid4().hex[:10]
            crm = TableCrm(account, prefix=prefix, container=prefix, clock=now)
            await crm.ensure()
            return crm
        if self.name == "lime":
            from tests.integration.test_crm_lime import make_lime
            account = StorageAccount(self.connection, {})
            self._closers.append(account.close)
            self.lime_sim.reset()
            from tools.sim.lime import SEED_HELPDESKTYPES
            known = {str(o.get("name", "")).lower(): o["_id"] for o in self.lime_sim.objects("helpdesktype")}
            self.helpdesktypes = {name.lower(): known.get(name.lower()) or self.lime_sim.create(
                "helpdesktype", {"name": name, "inactive": False})["_id"] for name in SEED_HELPDESKTYPES.values()}
            # the records' leases on the test's clock too: advancing it past a dead worker's ledger
            # lease ends its record leases as well
            crm = make_lime(self.lime_sim, account, uuid.uuid4().hex[:10], clock=now, record_clock=now)
            await crm.ensure()
            self._closers.append(crm.close)
            return crm
        raise AssertionError(self.name)

    async def company(self, crm: Any, spec: dict[str, Any]) -> str:
        """A company the suite expects the sender matching to find (name, domain, email, website)."""
        if self.name == "lime":
            obj = self.lime_sim.create("company", {
                "name": spec["name"], **({"email": spec["email"]} if spec.get("email") else {}),
                **({"www": spec["website"]} if spec.get("website") else {}),
                **({"email": f"info@{spec['domain']}"} if spec.get("domain") and not spec.get("email") else {})})
            return str(obj["_id"])
        return await crm.find_or_create_company(spec["name"], spec.get("domain"), key=spec.get("key", ""),
                                                email=spec.get("email", ""), website=spec.get("website", ""))

    def values(self, values: dict[str, Any]) -> dict[str, Any]:
        """Routing values as this CRM takes them: Lime's helpdesktype is a relation (the id of the
        helpdesktype object), the embedded CRM stores what it is given."""
        if self.name != "lime":
            return values
        return {k: self.helpdesktypes.get(str(v).lower(), v) if k == "helpdesktype" else v
                for k, v in values.items()}

    def routing(self, routing: dict[str, Any]) -> dict[str, Any]:
        if not routing:
            return routing
        return {"values": self.values(routing.get("values", {})),
                "by_recipient": {a: self.values(v) for a, v in routing.get("by_recipient", {}).items()}}

    def linked_number(self, detail: dict[str, Any]) -> str:
        """The number of the ticket this one follows up: the embedded CRM links them; Lime's core
        helpdesk has no such relation, so the adapter says it in the description."""
        linked = detail["ticket"].get("linked_ticket_id") or ""
        if linked:
            return linked[2:] if linked.startswith("hd") else linked
        import re
        found = re.match(r"Follows up ticket (\d+)", detail["ticket"].get("description") or "")
        return found.group(1) if found else ""

    async def close(self) -> None:
        for close in reversed(self._closers):
            await close()


@pytest.fixture(params=BACKENDS)
async def crm_backend(request: pytest.FixtureRequest) -> Any:
    name = request.param
    backend = Backend(name)
    if name in ("table", "lime"):
        backend.connection = request.getfixturevalue("azurite_connection")
    if name == "lime":
        from shared.adapters.crm_lime import LimeCrm
        from tools.sim.lime import LimeSim
        missing = [m for m in PORT_METHODS if not hasattr(LimeCrm, m)]
        assert not missing, f"LimeCrm does not implement the CrmGateway port's {', '.join(missing)}"
        backend.lime_sim = LimeSim().start()
    try:
        yield backend
    finally:
        await backend.close()
        if backend.lime_sim is not None:
            backend.lime_sim.stop()
