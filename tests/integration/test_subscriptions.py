"""Subscriptions, mailboxes and Graph clients against a real Azurite and the Graph simulator.

The app's own adapters run unchanged: msgraph-sdk and azure-identity talk to the simulator (token
endpoint over HTTPS with its test CA, App Service managed-identity endpoint, subscriptions with the
validation handshake to a small webhook here), the Table SDK to Azurite.  Time moves on the
simulator's clock, which the services read as theirs: no test waits for an expiry.
"""
from __future__ import annotations

import asyncio
import http.server
import json
import threading
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.adapters.graph import GraphAdapter, GraphClients
from shared.adapters.mailboxes_table import TableMailboxRegistry
from shared.adapters.storage_clients import StorageAccount
from shared.adapters.subscriptions_table import TableSubscriptionStore
from shared.adapters.synclog_table import TableSyncLog
from shared.config import QUEUE_MESSAGES, Settings
from shared.domain.clientstate import ClientStateSigner
from shared.domain.envelope import LifecycleJob, MessageJob, decode
from shared.domain.model import Mailbox
from shared.services.clients import ClientService
from shared.services.intake import accept_notifications
from shared.services.mailboxes import MailboxService, address_only_id, mailbox_from_request
from shared.services.subscriptions import (
    RENEW_WINDOW, STATUS_ACTIVE, STATUS_EXPIRED, STATUS_INACTIVE, LeaseLost, SubscriptionDeps, SubscriptionService,
)
from tests.fakes import FakeQueue
from tools.sim.graph import GraphSim

TENANT = "00000000-0000-0000-0000-0000000000aa"
KEYS = "1:integration-client-state-key-01"
WEBHOOK_KEY = "integration-key"
APPS = {  # name -> (client id, secret, permissions)
    "main": ("10000000-0000-0000-0000-000000000001", "main-secret-value",
             {"Mail.ReadWrite", "Mail.Read", "User.Read.All"}),
    "nouser": ("10000000-0000-0000-0000-000000000002", "nouser-secret-value", {"Mail.ReadWrite"}),
    "readonly": ("10000000-0000-0000-0000-000000000003", "readonly-secret-value", {"Mail.Read"}),
    "fenced": ("10000000-0000-0000-0000-000000000004", "fenced-secret-value", {"Mail.ReadWrite"}),
    "expired": ("10000000-0000-0000-0000-000000000005", "expired-secret-value", {"Mail.ReadWrite"}),
    "wrong": ("10000000-0000-0000-0000-000000000006", "the-real-secret-value", {"Mail.ReadWrite"}),
    "fedfile": ("10000000-0000-0000-0000-000000000007", None, {"Mail.ReadWrite"}),
    "mi": ("10000000-0000-0000-0000-000000000008", None, {"Mail.ReadWrite"}),
}
MI_CLIENT_ID = "20000000-0000-0000-0000-000000000001"


class Webhook:
    """Answers Graph's validation handshake (echoes the decoded token) and records the rest."""

    def __init__(self) -> None:
        self.posts: list[dict] = []
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                if "validationToken" in query:
                    out, ctype = query["validationToken"][0].encode(), "text/plain; charset=utf-8"
                else:
                    hook.posts.append({"path": parts.path, "query": query, "body": body})
                    out, ctype = b"", "text/plain"
                self.send_response(200 if "validationToken" in query else 202)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SimClock:
    def __init__(self, sim: GraphSim) -> None:
        self.sim = sim

    def now(self):
        return self.sim.now()


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    sim = GraphSim().start()
    hook = Webhook()
    sim.webhook = hook
    for name, (client_id, secret, perms) in APPS.items():
        expires = sim.now() - timedelta(days=1) if name == "expired" else None
        sim.add_app(TENANT, client_id, secret=secret, secret_expires_at=expires, permissions=perms)
    sim.set_access_policy(TENANT, APPS["fenced"][0], ["someone-else@contoso.example"])
    token_file = tmp_path_factory.mktemp("fed") / "token"
    issuer, subject = "https://workload.example/issuer", "system:serviceaccount:inbox:functions"
    sim._app(TENANT, APPS["fedfile"][0]).federated.append({"issuer": issuer, "subject": subject})
    token_file.write_text(sim.make_federated_assertion(issuer, subject))
    sim._app(TENANT, APPS["mi"][0]).federated.append(sim.add_managed_identity(MI_CLIENT_ID, TENANT))
    sim.token_file = str(token_file)
    yield sim
    hook.close()
    sim.stop()


def settings_for(sim: GraphSim, public: str) -> Settings:
    clients = {}
    env = {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "CLIENT_STATE_KEYS": KEYS,
           "GRAPH_BASE_URL": sim.graph_url, "GRAPH_AUTHORITY_HOST": sim.authority_host,
           "OUTBOUND_CA_BUNDLE": sim.ca_path, "PUBLIC_BASE_URL": public, "WEBHOOK_KEY": WEBHOOK_KEY}
    for name, (client_id, secret, _perms) in APPS.items():
        spec = {"tenant_id": TENANT, "client_id": client_id, "credential": "secret"}
        if name == "fedfile":
            spec.update(credential="federated_file", federated_token_file=sim.token_file)
        elif name == "mi":
            spec.update(credential="managed_identity", managed_identity_client_id=MI_CLIENT_ID)
        else:
            env[f"GRAPH_CLIENT_SECRET_{name.upper()}"] = "not-the-secret" if name == "wrong" else secret
        clients[name] = spec
    env["GRAPH_CLIENTS"] = json.dumps(clients)
    return Settings.from_env(env)


class App:
    """The services this issue owns, wired like shared/bootstrap.py but on tables of their own."""

    def __init__(self, sim: GraphSim, account: StorageAccount, unique: str) -> None:
        self.sim = sim
        self.settings = settings_for(sim, sim.webhook.url)
        self.clock = SimClock(sim)
        self.graph = GraphAdapter(GraphClients(self.settings))
        self.registry = TableMailboxRegistry(account, f"mbx{unique}")
        self.store = TableSubscriptionStore(account, f"subs{unique}")
        self.synclog = TableSyncLog(account, f"sync{unique}")
        self.signer = ClientStateSigner(self.settings.client_state_keys)
        self.swept: list[tuple[str, str]] = []
        self.tables = (self.registry.table_name, self.store.table_name, self.synclog.table_name)
        self.subs = self.service()
        self.mailboxes = MailboxService(self.registry, self.graph, self.clock, self.settings.graph_clients,
                                        self.subs, self.store)
        self.clients = ClientService(self.settings.graph_clients, self.registry, self.graph, self.clock,
                                     lambda name: bool(self.settings.secret(name)), self.synclog)

    def service(self, history: int = 50) -> SubscriptionService:
        async def sweep(box: Mailbox, reason: str) -> None:
            self.swept.append((box.id, reason))
        return SubscriptionService(SubscriptionDeps(
            registry=self.registry, store=self.store, graph=self.graph, signer=self.signer, clock=self.clock,
            public_base_url=self.settings.public_base_url, webhook_key=self.settings.webhook_key,
            clients=tuple(self.settings.graph_clients), synclog=self.synclog, history_length=history, sweep=sweep))

    async def add(self, address: str, client: str = "main", **fields):
        if address.lower() not in self.sim._by_address:
            self.sim.add_mailbox(address, tenant_id=TENANT)
        doc = {"address": address, "client": client, **fields}
        return await self.mailboxes.add(mailbox_from_request(doc, self.settings.graph_clients, self.clock.now()))

    def live(self, mailbox_id: str) -> list[dict]:
        return [s for s in self.sim.subscriptions()
                if parse_qs(urlsplit(s["notificationUrl"]).query).get("mailbox") == [mailbox_id]]


@pytest.fixture
async def app(sim, azurite_connection, unique):
    account = StorageAccount(azurite_connection, {})
    application = App(sim, account, unique)
    await account.ensure_tables(*application.tables)
    offset = sim._clock_offset
    sim.reject_duplicate_subscriptions = True
    yield application
    for sub in sim.subscriptions():  # leave the simulator clean for the next test
        sim._remove_sub(sub["id"])
    sim.advance_clock(offset - sim._clock_offset)
    await application.graph._clients.close()
    await account.close()


# -- renewal, removal, duplicates ------------------------------------------------------------------
async def test_renewal_before_expiry_on_the_moved_clock(app):
    result = await app.add("renew@contoso.example")
    box = result.mailbox
    [sub] = app.live(box.id)
    assert result.subscription.status == STATUS_ACTIVE and result.subscription.subscription_id == sub["id"]
    assert sub["resource"] == f"users/{box.user_id}/mailFolders('Inbox')/messages"
    first_expiry = result.subscription.expiration
    app.sim.advance_clock(2 * 86400)
    assert (await app.subs.sync())["clients"]["main"]["counts"] == {"unchanged": 1}
    app.sim.advance_clock((first_expiry - app.clock.now() - RENEW_WINDOW).total_seconds() + 60)
    assert (await app.subs.sync())["clients"]["main"]["counts"] == {"renewed": 1}
    [renewed] = app.live(box.id)
    rec = await app.store.get(box.id)
    assert renewed["id"] == sub["id"] and rec.expiration > first_expiry
    assert abs((rec.expiration - app.clock.now() - timedelta(minutes=10_020)).total_seconds()) < 60
    # a fortnight of 30-minute timer runs in 6-hour steps: still the same subscription, never lapsed
    for _ in range(4 * 14):
        app.sim.advance_clock(6 * 3600)
        await app.subs.sync()
        assert [s["id"] for s in app.live(box.id)] == [sub["id"]]


async def test_recreate_after_removal_by_graph_or_lifecycle_event(app):
    box = (await app.add("removed@contoso.example")).mailbox
    [sub] = app.live(box.id)
    await app.graph.delete("main", sub["id"])  # gone, and nobody told us
    assert (await app.subs.sync())["clients"]["main"]["counts"] == {"recreated": 1}
    [second] = app.live(box.id)
    assert second["id"] != sub["id"]
    app.sim.fire_lifecycle(second["id"], "subscriptionRemoved")  # Graph removes it and says so
    job = LifecycleJob(subscription_id=second["id"], tenant_id=TENANT, lifecycle_event="subscriptionRemoved",
                       mailbox_id=box.id)
    assert await app.subs.handle_lifecycle(job) == "recreated"
    [third] = app.live(box.id)
    assert third["id"] not in (sub["id"], second["id"]) and app.swept == [(box.id, "subscription removed")]
    assert await app.store.mailbox_of(third["id"]) == box.id and await app.store.mailbox_of(second["id"]) is None


async def test_reauthorization_required_reauthorizes_and_renews(app):
    box = (await app.add("reauth@contoso.example")).mailbox
    [sub] = app.live(box.id)
    app.sim.advance_clock(86400)
    job = LifecycleJob(subscription_id=sub["id"], tenant_id=TENANT, lifecycle_event="reauthorizationRequired",
                       mailbox_id=box.id)
    assert await app.subs.handle_lifecycle(job) == "reauthorized"
    assert app.sim.reauthorizations.get(sub["id"]) == 1
    assert (await app.store.get(box.id)).expiration > app.clock.now() + timedelta(days=6)


async def test_no_duplicate_after_concurrent_sync_runs_even_without_graphs_409(app):
    app.sim.reject_duplicate_subscriptions = False
    boxes = []
    for i in range(3):
        address = f"race{i}@contoso.example"
        user_id = app.sim.add_mailbox(address, tenant_id=TENANT)
        box = Mailbox(id=user_id, address=address, client="main", tenant_id=TENANT, user_id=user_id,
                      start_date=app.clock.now())
        await app.registry.save(box)
        boxes.append(box)
    orphan = await app.graph.create("main", f"users/{boxes[0].id}/mailFolders('Inbox')/messages",
                                    f"{app.settings.public_base_url}/api/notifications?code=x", "", "v1.x",
                                    app.clock.now() + timedelta(days=1))
    workers = [app.service() for _ in range(4)]
    reports = await asyncio.gather(*(w.sync() for w in workers))
    for box in boxes:
        live = app.live(box.id)
        assert len(live) == 1, box.id
        rec = await app.store.get(box.id)
        assert rec.subscription_id == live[0]["id"] and rec.lease_owner == ""
    assert orphan.id not in {s["id"] for s in app.sim.subscriptions()}
    created = sum(r["clients"]["main"]["counts"].get("created", 0) for r in reports)
    assert created == 3


async def test_inactive_mailbox_loses_its_subscription_and_gets_it_back(app):
    box = (await app.add("pause@contoso.example")).mailbox
    assert len(app.live(box.id)) == 1
    result = await app.mailboxes.update(box.id, {"active": False})
    assert result.outcome.action == "removed" and app.live(box.id) == []
    assert result.subscription.status == STATUS_INACTIVE
    assert (await app.subs.sync())["clients"]["main"]["counts"] == {"removed": 1}
    assert app.live(box.id) == []
    result = await app.mailboxes.update(box.id, {"active": True})
    assert result.outcome.action == "created" and len(app.live(box.id)) == 1
    outcome = await app.mailboxes.delete(box.id)
    assert outcome.action == "removed" and app.live(box.id) == [] and await app.store.get(box.id) is None


# -- mailboxes registered by address ---------------------------------------------------------------
async def test_address_only_mailbox_is_verified_by_its_key_in_the_notification_url(app):
    result = await app.add("shared@contoso.example", client="nouser")  # this app may not read users
    box = result.mailbox
    assert box.id == address_only_id("shared@contoso.example") and box.user_id == "" and box.warnings
    [sub] = app.live(box.id)
    assert sub["resource"] == "users/shared@contoso.example/mailFolders('Inbox')/messages"
    before = len(app.sim.webhook.posts)
    message_id = app.sim.deliver("shared@contoso.example", {"subject": "hello", "from": "c@customer.example"})
    posted = await asyncio.to_thread(_wait_for, lambda: app.sim.webhook.posts[before:])
    [post] = [p for p in posted if p["path"] == "/api/notifications"]
    item = json.loads(post["body"])["value"][0]
    assert box.id not in item["resource"]  # Graph names the user id, which we never learned
    queue = FakeQueue()
    rejected = await accept_notifications(post["body"], app.signer, queue)  # resource only: cannot verify
    assert rejected.rejected == 1 and queue.sent == []
    key = post["query"]["mailbox"][0]
    accepted = await accept_notifications(post["body"], app.signer, queue, key)
    assert accepted.rejected == 0
    [job] = [decode(text, MessageJob) for text in queue.on(QUEUE_MESSAGES)]
    assert (job.mailbox_id, job.message_id) == (box.id, message_id)
    forged = await accept_notifications(post["body"], app.signer, FakeQueue(), "addr-0123456789abcdef")
    assert forged.rejected == 1


def _wait_for(predicate, timeout: float = 10.0):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("timed out")


# -- credentials --------------------------------------------------------------------------------
@pytest.mark.parametrize("client, reason", [
    ("wrong", "bad_secret"),
    ("expired", "expired_secret"),
    ("readonly", "missing_permission"),
    ("fenced", "mailbox_unreachable"),
])
async def test_validate_reports_each_failure_reason_distinctly(app, client, reason):
    app.sim.add_mailbox(f"{client}-box@contoso.example", tenant_id=TENANT)
    result = await app.clients.validate(client, mailbox=f"{client}-box@contoso.example")
    assert result["ok"] is False and result["reason"] == reason, result
    assert "secret-value" not in json.dumps(result)


async def test_validate_passes_and_names_an_unknown_mailbox(app):
    app.sim.add_mailbox("fine@contoso.example", tenant_id=TENANT)
    ok = await app.clients.validate("main", mailbox="fine@contoso.example")
    assert ok["ok"] is True and ok["checks"][1]["can_read_users"] is True
    missing = await app.clients.validate("main", mailbox="nobody@contoso.example")
    assert missing["reason"] == "mailbox_not_found"


@pytest.mark.parametrize("client", ["fedfile", "mi"])
async def test_a_federated_credential_client_gets_its_token(app, client, monkeypatch):
    monkeypatch.setenv("IDENTITY_ENDPOINT", app.sim.identity_endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", app.sim.identity_header)
    before = app.sim.identity_requests
    result = await app.clients.validate(client)
    assert result["ok"] is True, result
    assert (app.sim.identity_requests > before) == (client == "mi")
    box = (await app.add(f"{client}-fed@contoso.example", client=client)).mailbox
    assert len(app.live(box.id)) == 1  # the whole path: subscription created with that credential


async def test_a_failing_credential_shows_its_mailboxes_expired_with_the_reason(app):
    address = "lapsed@contoso.example"
    user_id = app.sim.add_mailbox(address, tenant_id=TENANT)
    await app.registry.save(Mailbox(id=user_id, address=address, client="expired", tenant_id=TENANT,
                                    user_id=user_id, start_date=app.clock.now()))
    report = await app.subs.sync()
    entry = report["clients"]["expired"]
    assert entry["ok"] is False and "AADSTS7000222" in entry["error"]
    rec = await app.store.get(user_id)
    assert rec.status == STATUS_EXPIRED and "AADSTS7000222" in rec.last_error
    [logged] = await app.synclog.list("expired", limit=1)
    assert logged["run"] == entry["run"] and logged["ok"] is False


async def test_client_listing_holds_no_secret(app):
    listed = await app.clients.list()
    assert {c["name"] for c in listed} == set(APPS)
    text = json.dumps(listed)
    assert not any(secret and secret in text for _cid, secret, _p in APPS.values())
    main = next(c for c in listed if c["name"] == "main")
    assert main["secret_set"] is True and main["credential"] == "secret"


# -- the tables ---------------------------------------------------------------------------------
async def test_synclog_keeps_the_last_entries_newest_first(app):
    service = app.service(history=3)
    runs = []
    for _ in range(5):
        runs.append((await service.sync())["clients"]["main"]["run"])
        app.sim.advance_clock(1800)
    entries = await app.synclog.list("main")
    assert [e["run"] for e in entries] == runs[::-1][:3]


async def test_the_lease_is_exclusive_until_it_runs_out_and_guards_writes(app):
    now = app.clock.now()
    first = await app.store.acquire("m-1", "a", now, now + timedelta(minutes=2))
    assert first is not None and first.lease_owner == "a"
    assert await app.store.acquire("m-1", "b", now, now + timedelta(minutes=2)) is None
    later = now + timedelta(minutes=3)
    second = await app.store.acquire("m-1", "b", later, later + timedelta(minutes=2))
    assert second is not None and second.lease_owner == "b"
    first.status = "active"
    with pytest.raises(LeaseLost):
        await app.store.save(first, if_match=True)
    second.subscription_id, second.client = "sub-1", "main"
    await app.store.release(second)
    rec = await app.store.get("m-1")
    assert (rec.lease_owner, rec.subscription_id) == ("", "sub-1")
    assert await app.store.mailbox_of("sub-1") == "m-1"
