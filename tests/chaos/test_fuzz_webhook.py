"""Fuzzing the webhook: arbitrary bodies, arbitrary JSON, and Graph-shaped notification collections
with forged, retired, missing or foreign clientStates, odd change types and resources.

1. The intake service (shared/services/intake.py), many examples: it answers or raises
   MalformedNotification (nothing enqueued then), nothing else; every job it enqueues is one of the
   body's `created` notifications whose clientState is the HMAC of its own tenant and mailbox.
2. The real HTTP function through the dev host and Azurite, fewer examples: 202, 400, 413 or the
   validation echo, never a 5xx; the queue holds exactly the jobs of the validly signed `created`
   notifications (none for anything invalid).
3. Bodies nested past the JSON parser's recursion limit, to both routes: 400, never the 503 (and
   its storage alarm) that tells Graph to deliver again.
Seeded (derandomized) and bounded, so the suite stays deterministic and fast.
"""
from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from shared.config import QUEUE_MESSAGES
from shared.domain import envelope
from shared.domain.clientstate import ClientStateSigner
from shared.domain.envelope import MessageJob
from shared.domain.errors import MalformedNotification
from shared.services.intake import accept_notifications
from tests.fakes import FakeQueue

KEY = b"fuzz-client-state-key-0123456789"
SIGNER = ClientStateSigner({2: KEY})
RETIRED = ClientStateSigner({1: b"an-old-key-that-was-rotated-away"})
TENANT = "00000000-0000-0000-0000-0000000000aa"
USERS = ["5a1e5a1e-0000-4000-8000-00000000c0de", "6b2f6b2f-0000-4000-8000-00000000c0de", "Shared@Contoso.example"]

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=10)


@st.composite
def notification(draw: Any, well_formed: bool = False) -> tuple[dict[str, Any], tuple[str, str] | None]:
    """One item of a changeNotificationCollection, and the job it must produce (None: must not).
    `well_formed`: every field has its documented type (only signatures, tenants, change types and
    message paths vary), so the collection is not refused whole."""
    user = draw(st.sampled_from(USERS))
    message = draw(st.sampled_from(["AAMkAGI2TG93AAA=", "AAkALgAAAAAAHYQDEapmEc2byACqAC-EWg0A" + "x" * 40])
                   | st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=30))
    tenant = draw(st.sampled_from([TENANT, TENANT.upper(), "11111111-0000-0000-0000-0000000000aa"]))
    how = draw(st.sampled_from(["valid", "valid", "valid", "other-mailbox", "other-tenant", "retired-key", "forged", "missing",
                                "truncated"] + ([] if well_formed else ["not-a-string"])))
    state: Any = {
        "valid": SIGNER.sign(tenant, user), "other-mailbox": SIGNER.sign(tenant, USERS[(USERS.index(user) + 1) % 3]),
        "other-tenant": SIGNER.sign("22222222-0000-0000-0000-0000000000aa", user),
        "retired-key": RETIRED.sign(tenant, user), "forged": "v2." + "A" * 43, "missing": None,
        "not-a-string": 42, "truncated": SIGNER.sign(tenant, user)[:-1]}[how]
    change = draw(st.sampled_from(["created", "Created", "updated", "deleted"]) if well_formed else
                  st.sampled_from(["created", "updated", ""]) | st.text(max_size=10))
    shape = draw(st.sampled_from(["Users/{u}/Messages/{m}", "users('{u}')/messages('{m}')",
                                  "Users/{u}/mailFolders('Inbox')/Messages/{m}"]
                                 + ([] if well_formed else ["Users/{u}", "{m}", "bogus"])))
    item: dict[str, Any] = {"subscriptionId": str(uuid.UUID(int=draw(st.integers(0, 2 ** 32)))),
                            "subscriptionExpirationDateTime": "2026-12-01T00:00:00Z", "changeType": change,
                            "resource": shape.format(u=user, m=message), "tenantId": tenant,
                            "resourceData": {"@odata.type": "#Microsoft.Graph.Message", "id": message}}
    if state is not None:
        item["clientState"] = state
    for _ in range(0 if well_formed else draw(st.integers(0, 2))):  # a field dropped, retyped or added
        field = draw(st.sampled_from(sorted(item) + ["extra"]))
        item[field] = draw(json_values)
    signed = (isinstance(item.get("clientState"), str) and isinstance(item.get("tenantId"), str)
              and item["clientState"] == SIGNER.sign(item["tenantId"], user) and how == "valid")
    created = isinstance(item.get("changeType"), str) and item["changeType"].lower() == "created"
    data = item.get("resourceData")
    job_message = data["id"] if isinstance(data, dict) and isinstance(data.get("id"), str) and data["id"] else message
    ok_resource = isinstance(item.get("resource"), str) and "{m}" in shape and "{u}" in shape
    return item, ((user.lower(), job_message) if signed and created and ok_resource else None)


collections = st.booleans().flatmap(lambda ok: st.lists(notification(ok), max_size=5))
bodies = (st.binary(max_size=600) | json_values.map(lambda v: json.dumps(v).encode())
          | collections.map(lambda items: json.dumps({"value": [i for i, _ in items]}).encode()))


def expected_jobs(items: list[tuple[dict[str, Any], tuple[str, str] | None]]) -> set[tuple[str, str]]:
    return {job for _, job in items if job is not None}


def run_intake(body: bytes, mailbox_key: str | None = None) -> tuple[list[MessageJob], bool]:
    queue = FakeQueue()
    try:
        asyncio.run(accept_notifications(body, SIGNER, queue, mailbox_key))
    except MalformedNotification:
        assert queue.sent == [], "a refused body enqueued something"
        return [], False
    return [envelope.decode(text.encode(), MessageJob) for _, text, _ in queue.sent], True


@settings(max_examples=400, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
def test_the_intake_enqueues_only_validly_signed_created_notifications(body: bytes):
    jobs, _ = run_intake(body)
    allowed = set()
    try:
        doc = json.loads(body)
        items = doc.get("value") if isinstance(doc, dict) else None
    except (ValueError, UnicodeDecodeError):
        items = None
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict) and isinstance(item.get("clientState"), str) and isinstance(item.get("tenantId"), str):
            for user in USERS:
                if item["clientState"] == SIGNER.sign(item["tenantId"], user):
                    allowed.add(user.lower())
    assert all(job.mailbox_id in allowed for job in jobs), (jobs, allowed)
    assert len({(j.mailbox_id, j.message_id) for j in jobs}) == len(jobs), "the same mail enqueued twice"


@settings(max_examples=300, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(collections)
def test_a_well_formed_collection_enqueues_exactly_its_valid_notifications(items):
    body = json.dumps({"value": [i for i, _ in items]}).encode()
    jobs, accepted = run_intake(body)
    got = {(j.mailbox_id, j.message_id) for j in jobs}
    assert got <= expected_jobs(items)
    if accepted:
        assert got == expected_jobs(items)


# -- through the real HTTP function -------------------------------------------------------------------
@pytest.fixture(scope="module")
def webhook():
    from azure.storage.queue import QueueClient

    from shared import bootstrap
    from tests.support.azurite import start_azurite
    from tests.support.stack import ROOT
    from tools.devhost import DevHost
    azurite = start_azurite()
    settings_ = {"FUNCTIONS_WORKER_RUNTIME": "python", "AzureWebJobsStorage": azurite.connection_string,
                 "CLIENT_STATE_KEYS": f"2:{KEY.decode()}", "GRAPH_CLIENTS": "{}",
                 "RENEW_SCHEDULE": "0 */30 * * * *", "SWEEP_SCHEDULE": "0 */10 * * * *",
                 "PURGE_SCHEDULE": "0 30 3 * * *"}
    bootstrap.reset()
    host = DevHost(ROOT, settings=settings_, only=["graph_notifications", "graph_lifecycle"])
    try:
        host.start()
        with QueueClient.from_connection_string(azurite.connection_string, QUEUE_MESSAGES) as queue, \
                httpx.Client(base_url=host.url, timeout=30) as client:
            queue.create_queue()
            assert client.post("/api/notifications", content=b"{}").status_code == 400  # warm: services built
            yield client, queue
    finally:
        host.stop()
        azurite.stop()
        bootstrap.reset()


def drain(queue) -> list[MessageJob]:
    jobs = []
    for message in queue.receive_messages(messages_per_page=32, visibility_timeout=60):
        jobs.append(envelope.decode(base64.b64decode(message.content), MessageJob))
        queue.delete_message(message)
    return jobs


@settings(max_examples=150, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=400) | json_values.map(lambda v: json.dumps(v).encode()) | collections.map(
    lambda items: items), token=st.none() | st.text(max_size=40) | st.just("x" * 1100))
def test_the_http_function_answers_without_5xx_and_enqueues_only_valid_notifications(webhook, body, token):
    client, queue = webhook
    items = body if isinstance(body, list) else None
    raw = json.dumps({"value": [i for i, _ in items]}).encode() if items is not None else body
    params = {"validationToken": token} if token is not None else {}
    resp = client.post("/api/notifications", params=params, content=raw,
                       headers={"Content-Type": "application/json"})
    jobs = drain(queue)
    assert resp.status_code in (200, 202, 400, 413), resp.status_code
    if token is not None:
        assert jobs == []
        if resp.status_code == 200:
            assert resp.text == token and resp.headers["content-type"].startswith("text/plain")
        return
    got = {(j.mailbox_id, j.message_id) for j in jobs}
    if resp.status_code != 202:
        assert got == set()
    elif items is not None:
        assert got == expected_jobs(items)
    else:
        assert got == set()  # arbitrary bytes or JSON carry no valid clientState


@pytest.mark.parametrize("route", ["notifications", "lifecycle"])
@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_a_deeply_nested_body_is_malformed_not_a_storage_failure(webhook, caplog, route, depth):
    """The outside review's body: `{"value":[` and then `[` a thousand (or 100,000) times. It made
    json.loads raise RecursionError, which the route took for an enqueue failure: 503 and
    `graph.webhook.enqueue-failed error=RecursionError`."""
    client, queue = webhook
    for raw in (b'{"value":[' + b"[" * depth, b'{"value":[' + b"[" * depth + b"]" * depth + b"]}"):
        with caplog.at_level("WARNING"):
            resp = client.post(f"/api/{route}", content=raw, headers={"Content-Type": "application/json"})
        assert resp.status_code == 400, (resp.status_code, resp.text)
        assert drain(queue) == []
        assert not [r for r in caplog.records if "enqueue-failed" in r.getMessage() or r.levelname == "ERROR"]
        assert any("nested too deeply" in r.getMessage() for r in caplog.records)
        caplog.clear()
