"""The subscription service, the mailbox CRUD and the client listing against in-memory fakes.

The fakes keep the semantics the services rely on: the store's lease is a read followed by an
ETag-guarded write (so interleaved runs really race), the Graph fake keeps subscriptions on a movable
clock, forgets expired ones, refuses expirations beyond 10,080 minutes, answers 404 for unknown ids
and may or may not enforce its 409 on duplicates.  Every fake operation yields to the event loop.
"""
from __future__ import annotations

import asyncio
import copy
import itertools
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.config import GraphClientConfig
from shared.domain.clientstate import ClientStateSigner
from shared.domain.envelope import LifecycleJob
from shared.domain.errors import MailNotFound, PermanentError, TransientError
from shared.domain.model import Mailbox, SubscriptionInfo
from shared.services.clients import ClientNotFound, ClientService, secret_expiry
from shared.services.mailboxes import (
    MailboxExists, MailboxNotFound, MailboxService, MailboxUnreachable, ValidationError, address_only_id,
    mailbox_from_request,
)
from shared.services.subscriptions import (
    MAX_SUBSCRIPTION_MINUTES, RENEW_WINDOW, STATUS_ACTIVE, STATUS_EXPIRED, STATUS_INACTIVE, STATUS_NEEDS_SYNC,
    SUBSCRIPTION_LIFETIME, LeaseLost, SubscriptionDeps, SubscriptionRecord, SubscriptionService,
)
from tests.fakes import FakeClock, FakeRegistry

KEYS = {1: b"unit-test-client-state-key-1"}
BASE = "https://inbox.example"
TENANT = "t-1"


class CredentialError(TransientError):
    """Stands in for shared.adapters.graph.CredentialError (the service tells it apart by name)."""
    code = "7000222"


class GraphAccessDenied(PermanentError):
    pass


@dataclass
class _Sub:
    id: str
    client: str
    resource: str
    url: str
    lifecycle: str
    state: str
    expiration: Any


class FakeGraph:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.subs: dict[str, _Sub] = {}
        self.reject_duplicates = True
        self.grant_cap: timedelta | None = None
        self.calls: Counter = Counter()
        self.asked: list[Any] = []
        self.faults: dict[str, list[Exception]] = {}
        self.reauthorized: list[str] = []
        self.users: dict[str, str] = {}  # address -> object id (resolve_user)
        self.unreachable: dict[str, Exception] = {}  # graph_user -> error for probe_mailbox

    async def _tick(self, op: str) -> None:
        self.calls[op] += 1
        await asyncio.sleep(0)
        queue = self.faults.get(op)
        if queue:
            raise queue.pop(0)

    def _purge(self) -> None:
        for sid in [s.id for s in self.subs.values() if s.expiration <= self.clock.now()]:
            del self.subs[sid]

    def _grant(self, asked: Any) -> Any:
        now = self.clock.now()
        self.asked.append((now, asked))
        if asked > now + timedelta(minutes=MAX_SUBSCRIPTION_MINUTES):
            raise PermanentError("Graph 400 during subscription create: expiration beyond 10080 minutes")
        return min(asked, now + self.grant_cap) if self.grant_cap else asked

    @staticmethod
    def _info(s: _Sub) -> SubscriptionInfo:
        return SubscriptionInfo(s.id, s.resource, s.expiration, s.state, s.url)

    async def create(self, client, resource, notification_url, lifecycle_url, client_state, expiration):
        await self._tick("create")
        self._purge()
        granted = self._grant(expiration)
        if self.reject_duplicates and any(s.client == client and s.resource.lower() == resource.lower()
                                          for s in self.subs.values()):
            raise PermanentError("Graph 409 during subscription create: duplicate")
        await asyncio.sleep(0)  # the validation handshake takes a while
        sub = _Sub(str(uuid.uuid4()), client, resource, notification_url, lifecycle_url, client_state, granted)
        self.subs[sub.id] = sub
        return self._info(sub)

    def _own(self, client: str, sid: str) -> _Sub:
        self._purge()
        sub = self.subs.get(sid)
        if sub is None or sub.client != client:
            raise MailNotFound("Graph 404 during subscription")
        return sub

    async def renew(self, client, subscription_id, expiration):
        await self._tick("renew")
        sub = self._own(client, subscription_id)
        sub.expiration = self._grant(expiration)
        return self._info(sub)

    async def reauthorize(self, client, subscription_id):
        await self._tick("reauthorize")
        self._own(client, subscription_id)
        self.reauthorized.append(subscription_id)

    async def delete(self, client, subscription_id):
        await self._tick("delete")
        sub = self.subs.get(subscription_id)
        if sub is not None and sub.client == client:
            del self.subs[subscription_id]

    async def get(self, client, subscription_id):
        await self._tick("get")
        try:
            return self._info(self._own(client, subscription_id))
        except MailNotFound:
            return None

    async def list(self, client):
        await self._tick("list")
        self._purge()
        return [self._info(s) for s in self.subs.values() if s.client == client]

    async def resolve_user(self, client, address):
        await self._tick("resolve")
        return self.users.get(address.lower())

    async def probe_mailbox(self, client, graph_user):
        await self._tick("probe")
        if graph_user in self.unreachable:
            raise self.unreachable[graph_user]
        return "inbox-id"

    async def token_claims(self, client):
        await self._tick("token")
        return {"roles": ["Mail.ReadWrite"]}

    def of(self, mailbox_id: str) -> list[_Sub]:
        return [s for s in self.subs.values() if parse_qs(urlsplit(s.url).query).get("mailbox") == [mailbox_id]]


class FakeStore:
    """The subscriptions table: read, then an ETag-guarded write (with a yield in between)."""

    def __init__(self) -> None:
        self.rows: dict[str, SubscriptionRecord] = {}
        self.lookup: dict[str, str] = {}
        self._etags = itertools.count(1)

    async def get(self, mailbox_id):
        await asyncio.sleep(0)
        row = self.rows.get(mailbox_id)
        return copy.deepcopy(row) if row else None

    async def list(self):
        await asyncio.sleep(0)
        return [copy.deepcopy(r) for r in self.rows.values()]

    def _write(self, rec: SubscriptionRecord, expect: str | None) -> SubscriptionRecord:
        current = self.rows.get(rec.mailbox_id)
        if expect is not None and (current.etag if current else None) != (expect or None):
            raise LeaseLost("changed")
        rec.etag = str(next(self._etags))
        self.rows[rec.mailbox_id] = copy.deepcopy(rec)
        if rec.subscription_id:
            self.lookup[rec.subscription_id] = rec.mailbox_id
        return rec

    async def acquire(self, mailbox_id, owner, now, until):
        rec = await self.get(mailbox_id)
        await asyncio.sleep(0)
        if rec is None:
            rec = SubscriptionRecord(mailbox_id=mailbox_id, client="")
            expect = ""
        else:
            if rec.lease_owner and rec.lease_owner != owner and rec.lease_until and rec.lease_until > now:
                return None
            expect = rec.etag
        rec.lease_owner, rec.lease_until = owner, until
        try:
            return self._write(rec, expect)
        except LeaseLost:
            return None

    async def save(self, rec, if_match=False):
        await asyncio.sleep(0)
        return self._write(rec, rec.etag if if_match and rec.etag else None)

    async def release(self, rec):
        rec.lease_owner, rec.lease_until = "", None
        await self.save(rec, if_match=True)

    async def delete(self, mailbox_id, subscription_id=""):
        self.rows.pop(mailbox_id, None)
        if subscription_id:
            self.lookup.pop(subscription_id, None)

    async def forget(self, subscription_id):
        self.lookup.pop(subscription_id, None)

    async def mailbox_of(self, subscription_id):
        return self.lookup.get(subscription_id)


class FakeSyncLog:
    def __init__(self) -> None:
        self.entries: dict[str, list[dict]] = {}

    async def append(self, client, entry, keep):
        self.entries.setdefault(client, []).insert(0, entry)
        del self.entries[client][keep:]

    async def list(self, client, limit=50):
        return self.entries.get(client, [])[:limit]


def box(mid: str = "user-1", client: str = "main", active: bool = True, user_id: str | None = None) -> Mailbox:
    return Mailbox(id=mid, address=f"{mid}@ours.example", client=client, tenant_id=TENANT,
                   user_id=mid if user_id is None else user_id, active=active)


class World:
    def __init__(self, *boxes: Mailbox, keys: dict[int, bytes] = KEYS, clients=("main", "other")) -> None:
        self.clock = FakeClock()
        self.graph = FakeGraph(self.clock)
        self.store = FakeStore()
        self.registry = FakeRegistry(*boxes)
        self.synclog = FakeSyncLog()
        self.swept: list[tuple[str, str]] = []
        self.signer = ClientStateSigner(keys)
        self.clients = clients
        self.service = self.make()

    def make(self, signer: ClientStateSigner | None = None) -> SubscriptionService:
        async def sweep(mailbox: Mailbox, reason: str) -> None:
            self.swept.append((mailbox.id, reason))
        self.signer = signer or self.signer
        return SubscriptionService(SubscriptionDeps(
            registry=self.registry, store=self.store, graph=self.graph, signer=self.signer, clock=self.clock,
            public_base_url=BASE, webhook_key="fn-key", clients=self.clients, synclog=self.synclog,
            history_length=3, sweep=sweep))

    def live(self, mailbox_id: str) -> list[_Sub]:
        self.graph._purge()
        return self.graph.of(mailbox_id)


# -- create, renew, read back, never beyond the maximum ------------------------------------------
async def test_first_sync_creates_one_subscription_with_signed_state_and_mailbox_key():
    shared = box(address_only_id("shared@ours.example"), user_id="")
    shared.address = "shared@ours.example"
    w = World(box("user-1"), shared)
    report = await w.service.sync()
    assert report["clients"]["main"]["counts"] == {"created": 2}
    for mid in ("user-1", address_only_id("shared@ours.example")):
        [sub] = w.live(mid)
        assert w.signer.verify(sub.state, TENANT, mid)
        assert sub.url.startswith(f"{BASE}/api/notifications?code=fn-key&mailbox=")
        assert sub.lifecycle.startswith(f"{BASE}/api/lifecycle?")
        rec = w.store.rows[mid]
        assert (rec.status, rec.subscription_id, rec.lease_owner) == (STATUS_ACTIVE, sub.id, "")
        assert w.store.lookup[sub.id] == mid
    assert w.live(address_only_id("shared@ours.example"))[0].resource == "users/shared@ours.example/mailFolders('Inbox')/messages"


async def test_a_subscription_signed_with_the_tenants_domain_is_recreated_with_the_guid_by_the_next_sync():
    """Entra takes a tenant's domain for tokens, but Graph's notifications carry the tenant's GUID: a
    clientState signed with the domain never verifies. The sync re-signs it and saves the GUID."""
    guid = "6f1c2a3b-0000-4000-8000-0000000000aa"
    old = box("user-1")
    old.tenant_id = "contoso.onmicrosoft.com"
    w = World(old)
    await w.service.sync()  # what a version without tenant resolution did: signed with the domain
    [before] = w.live("user-1")
    assert not w.signer.verify(before.state, guid, "user-1")

    async def tenant_id(client: str) -> str:
        return guid
    w.graph.tenant_id = tenant_id
    report = await w.service.sync()
    assert report["clients"]["main"]["counts"] == {"recreated": 1}
    [after] = w.live("user-1")
    assert after.id != before.id and w.signer.verify(after.state, guid, "user-1")
    assert (await w.registry.get("user-1")).tenant_id == guid
    assert (await w.service.sync())["clients"]["main"]["counts"] == {"unchanged": 1}  # repaired once


async def test_renews_inside_the_window_only_and_keeps_what_graph_granted():
    w = World(box())
    w.graph.grant_cap = timedelta(days=3, hours=1)  # Graph may grant less than asked
    await w.service.sync()
    rec = w.store.rows["user-1"]
    assert rec.expiration == w.clock.now() + timedelta(days=3, hours=1)
    # still 73 h left: outside the 72 h window, no PATCH
    await w.service.sync()
    assert w.graph.calls["renew"] == 0
    w.clock.advance(3600 + 60)
    outcome = await w.service.sync_mailbox(w.registry.boxes["user-1"])
    assert outcome.action == "renewed" and w.graph.calls["renew"] == 1
    assert w.store.rows["user-1"].expiration == w.clock.now() + timedelta(days=3, hours=1)
    for when, asked in w.graph.asked:
        assert asked - when <= timedelta(minutes=MAX_SUBSCRIPTION_MINUTES)
    assert w.graph.asked[-1][1] - w.graph.asked[-1][0] == SUBSCRIPTION_LIFETIME


async def test_renewal_before_expiry_keeps_one_subscription_alive_for_a_month():
    w = World(box())
    first = None
    for _ in range(30 * 48):  # every 30 minutes for 30 days
        await w.service.sync()
        [sub] = w.live("user-1")
        first = first or sub.id
        assert sub.expiration - w.clock.now() > RENEW_WINDOW - timedelta(minutes=31)
        w.clock.advance(1800)
    assert sub.id == first and w.graph.calls["create"] == 1
    assert 6 <= w.graph.calls["renew"] <= 9  # about every four days


# -- recreate ----------------------------------------------------------------------------------
async def test_recreates_a_subscription_graph_no_longer_knows():
    w = World(box())
    await w.service.sync()
    old = w.store.rows["user-1"].subscription_id
    del w.graph.subs[old]  # removed by Graph, the lifecycle event lost
    report = await w.service.sync()
    assert report["clients"]["main"]["counts"] == {"recreated": 1}
    [sub] = w.live("user-1")
    assert sub.id != old and w.store.rows["user-1"].subscription_id == sub.id
    assert old not in w.store.lookup


async def test_recreates_after_it_lapsed_while_graph_refused_renewals():
    w = World(box())
    await w.service.sync()
    down = TransientError("Graph 503 during subscription call")
    w.graph.faults = {"renew": [down] * 1000, "create": [down] * 1000}
    outcomes = []
    while w.live("user-1"):
        w.clock.advance(1800)
        outcomes.append(await w.service.sync_mailbox(w.registry.boxes["user-1"]))
    assert {o.action for o in outcomes} == {"unchanged", "failed"}
    rec = w.store.rows["user-1"]
    assert rec.status == STATUS_EXPIRED and "503" in rec.last_error and rec.subscription_id == ""
    w.clock.advance(1800)
    w.graph.faults.clear()
    assert (await w.service.sync())["clients"]["main"]["counts"] == {"created": 1}
    assert w.store.rows["user-1"].status == STATUS_ACTIVE and len(w.live("user-1")) == 1


async def test_a_lapsed_subscription_is_recreated_by_the_next_run():
    w = World(box())
    await w.service.sync()
    old = w.store.rows["user-1"].subscription_id
    w.clock.advance(8 * 86400)  # nobody ran for eight days
    assert (await w.service.sync())["clients"]["main"]["counts"] == {"recreated": 1}
    assert [s.id != old for s in w.live("user-1")] == [True]


async def test_a_transient_renewal_failure_with_time_left_stays_active_but_says_why():
    w = World(box())
    await w.service.sync()
    w.clock.advance(5 * 86400)
    w.graph.faults["renew"] = [TransientError("Graph 503 during subscription renew")]
    assert (await w.service.sync_mailbox(w.registry.boxes["user-1"])).action == "failed"
    rec = w.store.rows["user-1"]
    assert rec.status == STATUS_ACTIVE and "503" in rec.last_error and rec.lease_owner == ""
    assert (await w.service.sync_mailbox(w.registry.boxes["user-1"])).action == "renewed"
    assert w.store.rows["user-1"].last_error == ""


async def test_recreates_when_the_client_state_key_version_is_retired():
    w = World(box())
    await w.service.sync()
    old = w.store.rows["user-1"].subscription_id
    rotated = ClientStateSigner({2: b"the-next-client-state-key-22"})  # v1 retired
    w.service = w.make(rotated)
    report = await w.service.sync()
    assert report["clients"]["main"]["counts"] == {"recreated": 1}
    [sub] = w.live("user-1")
    assert sub.id != old and sub.state.startswith("v2.") and rotated.verify(sub.state, TENANT, "user-1")
    assert w.store.rows["user-1"].key_version == 2


async def test_moving_a_mailbox_to_another_client_moves_its_subscription():
    w = World(box())
    await w.service.sync()
    w.registry.boxes["user-1"].client = "other"
    await w.service.sync()
    assert [s.client for s in w.live("user-1")] == ["other"]


async def test_a_409_from_a_leftover_is_cleared_and_the_create_retried():
    w = World(box())
    await w.service.sync()
    w.store.rows.clear()  # our row is lost; Graph still has the subscription
    report = await w.service.sync()
    assert report["clients"]["main"]["counts"] == {"created": 1}
    assert len(w.live("user-1")) == 1 and w.store.rows["user-1"].status == STATUS_ACTIVE


# -- no duplicates, orphans --------------------------------------------------------------------
@pytest.mark.parametrize("reject_duplicates", [False, True])
async def test_concurrent_sync_runs_never_create_duplicates(reject_duplicates):
    boxes = [box(f"user-{i}") for i in range(6)]
    w = World(*boxes)
    w.graph.reject_duplicates = reject_duplicates
    services = [w.service] + [w.make() for _ in range(4)]  # five workers
    reports = await asyncio.gather(*(s.sync() for s in services), *(s.sync_mailbox(boxes[0]) for s in services))
    for b in boxes:
        assert len(w.live(b.id)) == 1, b.id
        assert w.store.rows[b.id].subscription_id == w.live(b.id)[0].id
        assert w.store.rows[b.id].lease_owner == ""
    assert w.graph.calls["create"] == 6
    counts = Counter(o.action for o in reports[5:])
    for r in reports[:5]:
        counts.update(r["clients"]["main"]["counts"])
    assert counts["created"] == 6 and counts["failed"] == 0 and counts["busy"] > 0


async def test_orphans_of_our_url_are_deleted_others_are_left_alone():
    w = World(box("user-1"), box("user-2", active=False))
    await w.service.sync()
    w.graph.reject_duplicates = False
    dup = await w.graph.create("main", "users/user-1/mailFolders('Inbox')/messages",
                               f"{BASE}/api/notifications?code=fn-key&mailbox=user-1", "", "x",
                               w.clock.now() + timedelta(days=1))
    gone = await w.graph.create("main", "users/deleted/mailFolders('Inbox')/messages",
                                f"{BASE}/api/notifications?code=fn-key", "", "x", w.clock.now() + timedelta(days=1))
    inactive = await w.graph.create("main", "users/user-2/mailFolders('Inbox')/messages",
                                    f"{BASE}/api/notifications?code=fn-key&mailbox=user-2", "", "x",
                                    w.clock.now() + timedelta(days=1))
    foreign = await w.graph.create("main", "users/user-1/mailFolders('Inbox')/messages",
                                   "https://staging.example/api/notifications", "", "x",
                                   w.clock.now() + timedelta(days=1))
    report = await w.service.sync()
    assert report["clients"]["main"]["orphans_deleted"] == 3
    remaining = set(w.graph.subs)
    assert {dup.id, gone.id, inactive.id}.isdisjoint(remaining)
    assert foreign.id in remaining and w.store.rows["user-1"].subscription_id in remaining
    assert "deleted" not in w.store.rows  # the lease row of a mailbox that does not exist is gone


# -- inactive, deleted -------------------------------------------------------------------------
async def test_inactive_mailbox_loses_its_subscription_and_gets_it_back():
    w = World(box())
    await w.service.sync()
    w.registry.boxes["user-1"].active = False
    assert (await w.service.sync())["clients"]["main"]["counts"] == {"removed": 1}
    assert w.live("user-1") == [] and w.store.rows["user-1"].status == STATUS_INACTIVE
    w.registry.boxes["user-1"].active = True
    assert (await w.service.sync())["clients"]["main"]["counts"] == {"created": 1}
    assert len(w.live("user-1")) == 1


async def test_sync_removes_the_subscription_of_a_mailbox_deleted_behind_its_back():
    w = World(box())
    await w.service.sync()
    del w.registry.boxes["user-1"]
    report = await w.service.sync()
    assert report["deleted_mailboxes"][0]["action"] == "removed"
    assert w.graph.subs == {} and w.store.rows == {}


# -- credentials and the sync log ------------------------------------------------------------
async def test_a_failing_credential_marks_every_mailbox_of_the_client_expired_with_the_reason():
    w = World(box("user-1"), box("user-2"))
    await w.service.sync()
    w.graph.faults["list"] = [CredentialError("Graph client 'main' could not get a token: AADSTS7000222")]
    report = await w.service.sync()
    entry = report["clients"]["main"]
    assert entry["ok"] is False and entry["error"].startswith("credential:") and entry["counts"] == {"failed": 2}
    for mid in ("user-1", "user-2"):
        rec = w.store.rows[mid]
        assert rec.status == STATUS_EXPIRED and "AADSTS7000222" in rec.last_error and rec.lease_owner == ""
    assert w.synclog.entries["main"][0] is entry
    await w.service.sync()
    assert w.store.rows["user-1"].status == STATUS_ACTIVE and w.store.rows["user-1"].last_error == ""


async def test_a_mailbox_of_an_unconfigured_client_is_expired_and_the_log_keeps_the_last_entries():
    w = World(box("user-1", client="gone"), box("user-2"))
    for _ in range(5):
        await w.service.sync()
    assert w.store.rows["user-1"].status == STATUS_EXPIRED
    assert "not configured" in w.store.rows["user-1"].last_error
    assert len(w.synclog.entries["main"]) == 3 and len(w.synclog.entries["gone"]) == 3
    assert set(w.synclog.entries) == {"main", "other", "gone"}


# -- lifecycle ---------------------------------------------------------------------------------
def job(w: World, event: str, mailbox_id: str = "user-1", sub: str | None = None) -> LifecycleJob:
    rec = w.store.rows.get(mailbox_id)
    return LifecycleJob(subscription_id=sub or (rec.subscription_id if rec else "s"), tenant_id=TENANT,
                        lifecycle_event=event, mailbox_id=mailbox_id)


async def test_reauthorization_required_reauthorizes_and_renews():
    w = World(box())
    await w.service.sync()
    w.clock.advance(86400)
    sid = w.store.rows["user-1"].subscription_id
    assert await w.service.handle_lifecycle(job(w, "reauthorizationRequired")) == "reauthorized"
    assert w.graph.reauthorized == [sid] and w.graph.calls["renew"] == 1
    assert w.store.rows["user-1"].expiration == w.clock.now() + SUBSCRIPTION_LIFETIME
    assert w.swept == []


async def test_subscription_removed_recreates_then_sweeps():
    w = World(box())
    await w.service.sync()
    old = w.store.rows["user-1"].subscription_id
    del w.graph.subs[old]
    assert await w.service.handle_lifecycle(job(w, "subscriptionRemoved")) == "recreated"
    [sub] = w.live("user-1")
    assert sub.id != old and w.swept == [("user-1", "subscription removed")]


async def test_missed_sweeps_only():
    w = World(box())
    await w.service.sync()
    calls = dict(w.graph.calls)
    assert await w.service.handle_lifecycle(job(w, "missed")) == "swept"
    assert w.swept == [("user-1", "missed")] and dict(w.graph.calls) == calls


async def test_events_for_stale_unknown_or_inactive_mailboxes_change_nothing():
    w = World(box("user-1"), box("user-2", active=False))
    await w.service.sync()
    calls = dict(w.graph.calls)
    assert await w.service.handle_lifecycle(job(w, "reauthorizationRequired", sub="an-old-one")) == "stale"
    assert await w.service.handle_lifecycle(job(w, "subscriptionRemoved", "nobody", "s")) == "ignored"
    assert await w.service.handle_lifecycle(job(w, "missed", "user-2")) == "ignored"
    assert dict(w.graph.calls) == calls and w.swept == []


async def test_a_lifecycle_action_that_fails_raises_and_the_poison_handler_flags_needs_sync():
    w = World(box())
    await w.service.sync()
    del w.graph.subs[w.store.rows["user-1"].subscription_id]
    w.graph.faults["create"] = [TransientError("Graph 503 during subscription create")]
    with pytest.raises(TransientError):
        await w.service.handle_lifecycle(job(w, "subscriptionRemoved"))
    assert w.swept == []
    await w.service.record_lifecycle_failure(job(w, "subscriptionRemoved", sub="s"), 5)
    rec = w.store.rows["user-1"]
    assert rec.status == STATUS_NEEDS_SYNC and "subscriptionRemoved" in rec.last_error
    await w.service.sync()
    assert w.store.rows["user-1"].status == STATUS_ACTIVE and len(w.live("user-1")) == 1


class _Counter:
    """An OpenTelemetry counter's `add`, recorded (the exporter is tested in integration/)."""

    def __init__(self) -> None:
        self.adds: list[tuple[int, dict]] = []

    def add(self, value: int, attributes: dict) -> None:
        self.adds.append((value, attributes))


async def test_every_lifecycle_outcome_is_counted_by_event_and_outcome(monkeypatch):
    from shared import telemetry
    counter = _Counter()
    monkeypatch.setattr(telemetry._state, "enabled", True)
    monkeypatch.setattr(telemetry._state, "counters", {telemetry.LIFECYCLE: counter})
    w = World(box())
    await w.service.sync()
    await w.service.handle_lifecycle(job(w, "missed"))
    await w.service.handle_lifecycle(job(w, "reauthorizationRequired", sub="an-old-one"))
    await w.service.handle_lifecycle(job(w, "<b>made up</b>"))
    del w.graph.subs[w.store.rows["user-1"].subscription_id]
    w.graph.faults["create"] = [TransientError("Graph 503 during subscription create")]
    with pytest.raises(TransientError):
        await w.service.handle_lifecycle(job(w, "subscriptionRemoved"))
    await w.service.record_lifecycle_failure(job(w, "subscriptionRemoved"), 5)
    assert counter.adds == [
        (1, {"event": "missed", "outcome": "swept"}),
        (1, {"event": "reauthorizationRequired", "outcome": "stale"}),
        (1, {"event": "other", "outcome": "ignored"}),  # an event Graph does not define: no free text
        (1, {"event": "subscriptionRemoved", "outcome": "retry"}),
        (1, {"event": "subscriptionRemoved", "outcome": "failed"}),
    ]


# -- mailboxes ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cfg:
    name: str
    tenant_id: str = TENANT
    client_id: str = "c"
    credential: str = "secret"
    secret_setting: str = "GRAPH_CLIENT_SECRET_MAIN"
    certificate_setting: str = ""
    secret_expires: str = ""
    managed_identity_client_id: str = ""


CLIENTS = {"main": Cfg("main"), "other": Cfg("other")}


def mailboxes(w: World) -> MailboxService:
    return MailboxService(w.registry, w.graph, w.clock, CLIENTS, w.service, w.store)


async def test_add_resolves_the_object_id_or_uses_an_opaque_key_and_subscribes():
    w = World()
    svc = mailboxes(w)
    w.graph.users["support@ours.example"] = "GUID-1"
    r1 = await svc.add(mailbox_from_request({"address": "Support@ours.example", "client": "main"}, CLIENTS,
                                            w.clock.now()))
    assert r1.mailbox.id == "guid-1" and r1.subscription.status == STATUS_ACTIVE and r1.outcome.action == "created"
    r2 = await svc.add(mailbox_from_request({"address": "shared@ours.example", "client": "main",
                                             "active": False}, CLIENTS, w.clock.now()))
    assert r2.mailbox.id == address_only_id("shared@ours.example") and "@" not in r2.mailbox.id
    assert r2.mailbox.warnings and r2.outcome is None and w.live(r2.mailbox.id) == []
    with pytest.raises(MailboxExists) as exc:  # 409, naming the route that changes it
        await svc.add(mailbox_from_request({"address": "SHARED@ours.example", "client": "main"}, CLIENTS,
                                           w.clock.now()))
    assert exc.value.kind == "conflict" and f"PATCH /api/manage/mailboxes/{r2.mailbox.id}" in str(exc.value)
    assert (await svc.get("shared@ours.example")).mailbox.id == r2.mailbox.id


@pytest.mark.parametrize("doc, fragment", [
    ({"address": "x"}, "address"),
    ({"address": "a@b.example", "client": "nope"}, "client"),
    ({"address": "a@b.example", "action": "move"}, "move_folder"),
    ({"address": "a@b.example", "active": "false"}, "active"),
    ({"address": "a@b.example", "start_date": "yesterday"}, "start_date"),
    ({"address": "a@b.example", "colour": "red"}, "unknown field"),
    ({"address": "a@b.example", "closed_ticket_policy": "never"}, "closed_ticket_policy"),
])
def test_bad_mailbox_input_gets_a_clear_error(doc, fragment):
    with pytest.raises(ValidationError, match=fragment):
        mailbox_from_request({"client": "main", **doc}, CLIENTS, FakeClock().now())


@pytest.mark.parametrize("error, reason", [
    (MailNotFound("Graph 404"), "mailbox_not_found"),
    (GraphAccessDenied("Graph 403: Blocked by tenant configured AppOnly AccessPolicy settings"),
     "mailbox_unreachable"),
])
async def test_an_unreachable_mailbox_is_refused_and_nothing_is_saved(error, reason):
    w = World()
    w.graph.unreachable["blocked@ours.example"] = error
    with pytest.raises(MailboxUnreachable) as exc:
        await mailboxes(w).add(mailbox_from_request({"address": "blocked@ours.example", "client": "main"}, CLIENTS,
                                                    w.clock.now()))
    assert exc.value.reason == reason and w.registry.boxes == {} and w.graph.subs == {}


async def test_a_subscription_that_cannot_be_created_keeps_the_mailbox_as_expired():
    w = World()
    w.graph.faults["create"] = [PermanentError("Graph 400 during subscription create: validation timed out")]
    r = await mailboxes(w).add(mailbox_from_request({"address": "a@ours.example", "client": "main"}, CLIENTS,
                                                    w.clock.now()))
    assert r.outcome.action == "failed" and r.subscription.status == STATUS_EXPIRED
    assert "validation timed out" in r.subscription.last_error and r.mailbox.id in w.registry.boxes


async def test_patch_deactivates_reactivates_and_moves_client_and_delete_removes_the_subscription():
    w = World()
    svc = mailboxes(w)
    w.graph.users["a@ours.example"] = "u-a"
    await svc.add(mailbox_from_request({"address": "a@ours.example", "client": "main"}, CLIENTS, w.clock.now()))
    r = await svc.update("u-a", {"active": False})
    assert r.outcome.action == "removed" and w.live("u-a") == []
    r = await svc.update("a@ours.example", {"active": True, "action": "move", "move_folder": "Processed"})
    assert r.outcome.action == "created" and r.mailbox.move_folder == "Processed" and len(w.live("u-a")) == 1
    r = await svc.update("u-a", {"client": "other"})
    assert [s.client for s in w.live("u-a")] == ["other"]
    r = await svc.update("u-a", {"routing": {"values": {"type": "support"}}})
    assert r.outcome is None and w.registry.boxes["u-a"].routing == {"values": {"type": "support"}}
    with pytest.raises(ValidationError, match="address cannot change"):
        await svc.update("u-a", {"address": "b@ours.example"})
    outcome = await svc.delete("u-a")
    assert outcome.action == "removed" and w.graph.subs == {} and w.registry.boxes == {} and w.store.rows == {}
    with pytest.raises(MailboxNotFound):
        await svc.get("u-a")


# -- clients -----------------------------------------------------------------------------------
def test_secret_expiry_warns_thirty_days_ahead():
    now = FakeClock().now()
    assert secret_expiry("", now) is None
    assert secret_expiry((now + timedelta(days=31)).isoformat(), now) is None
    assert secret_expiry((now + timedelta(days=29)).isoformat(), now)["level"] == "warning"
    assert secret_expiry((now - timedelta(days=1)).isoformat(), now)["level"] == "error"
    assert secret_expiry("soon", now)["level"] == "error"


async def test_client_listing_holds_no_secret_and_validate_reports_distinct_reasons():
    w = World(box("user-1"))
    clock = w.clock
    clients = {"main": GraphClientConfig("main", TENANT, "cid", "secret", "GRAPH_CLIENT_SECRET_MAIN",
                                         secret_expires=(clock.now() + timedelta(days=10)).date().isoformat()),
               "fed": GraphClientConfig("fed", TENANT, "cid2", "managed_identity")}
    svc = ClientService(clients, w.registry, w.graph, clock, lambda name: True, w.synclog)
    listed = await svc.list()
    assert [c["name"] for c in listed] == ["fed", "main"]
    assert listed[1]["warnings"][0]["level"] == "warning" and listed[1]["mailboxes"] == ["user-1"]
    assert "super-secret" not in repr(listed)
    assert svc.warnings()[0]["client"] == "main"
    ok = await svc.validate("main")
    assert ok["ok"] is True and [c["check"] for c in ok["checks"]] == ["token", "permissions", "mailbox"]
    w.graph.faults["token"] = [CredentialError("AADSTS7000222")]
    assert (await svc.validate("main"))["reason"] == "expired_secret"
    w.graph.unreachable["user-1"] = GraphAccessDenied("Graph 403: [RAOP] AccessPolicy")
    assert (await svc.validate("main"))["reason"] == "mailbox_unreachable"
    with pytest.raises(ClientNotFound):
        await svc.validate("nope")


# -- the webhook's verification of address-only mailboxes ---------------------------------------------
async def test_notifications_are_verified_against_the_mailbox_key_of_the_url_when_present():
    import json

    from shared.config import QUEUE_MESSAGES
    from shared.domain.envelope import MessageJob, decode
    from shared.services.intake import accept_notifications
    from shared.services.subscriptions import validate_mailbox_param
    from tests.fakes import FakeQueue
    signer = ClientStateSigner(KEYS)
    key = address_only_id("shared@ours.example")
    body = json.dumps({"value": [{
        "subscriptionId": "s-1", "tenantId": TENANT, "clientState": signer.sign(TENANT, key), "changeType": "created",
        "resource": "Users/6f1c0d9e-0000-4000-8000-000000000001/Messages/m-1", "resourceData": {"id": "m-1"},
        "subscriptionExpirationDateTime": "2026-12-01T00:00:00Z"}]}).encode()
    queue = FakeQueue()
    assert (await accept_notifications(body, signer, queue)).rejected == 1  # the user id is not the key
    assert (await accept_notifications(body, signer, queue, "addr-" + "0" * 32)).rejected == 1  # another key
    assert (await accept_notifications(body, signer, queue, key)).rejected == 0
    [job] = [decode(t, MessageJob) for t in queue.on(QUEUE_MESSAGES)]
    assert (job.mailbox_id, job.message_id) == (key, "m-1")
    assert validate_mailbox_param(key) == key
    assert validate_mailbox_param("a/b?c") is None and validate_mailbox_param("x" * 200) is None
