"""The Graph simulator with the demo app registered, and the real Graph adapter (msgraph-sdk) against
it: what the Graph adapter tests share. Storage is not touched (the adapter needs none)."""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

from shared.adapters.graph import GraphAdapter, GraphClients
from shared.config import Settings
from shared.domain.model import Mailbox
from tests.support.stack import CLIENT_ID, SECRET, TENANT, app_settings
from tools.sim.graph import GraphSim


@contextmanager
def running_graph(**options) -> Iterator[GraphSim]:
    """A started simulator (GraphSim options, e.g. latency_ms) whose tenant knows the demo app."""
    sim = GraphSim(**options).start()
    sim.add_app(TENANT, CLIENT_ID, secret=SECRET, permissions={"Mail.ReadWrite", "User.Read.All"})
    try:
        yield sim
    finally:
        sim.stop()


def graph_settings(graph: GraphSim, storage: str = "UseDevelopmentStorage=true") -> Settings:
    return Settings.from_env(app_settings(storage, graph, "http://127.0.0.1:1"))


def graph_adapter(graph: GraphSim, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> GraphAdapter:
    """The production adapter, signed in as the demo app; `sleep` replaces its short in-place waits."""
    return GraphAdapter(GraphClients(graph_settings(graph)), sleep=sleep)


def new_mailbox(graph: GraphSim, **fields) -> Mailbox:
    """A fresh mailbox in the simulator, and its Mailbox row (extra Mailbox fields as keywords)."""
    address = f"box-{uuid.uuid4().hex[:6]}@contoso.example"
    user = graph.add_mailbox(address, tenant_id=TENANT).lower()
    return Mailbox(id=user, address=address, client="demo", tenant_id=TENANT, user_id=user, **fields)
