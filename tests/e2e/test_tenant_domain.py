"""Issue 13 item 5 through the real app: a Graph client whose tenant is given by its domain
(contoso.onmicrosoft.com, which Entra accepts for tokens). Graph's notifications carry the tenant's
GUID, so the app must sign clientStates with the GUID: registration resolves it (the token's `tid`),
mail arrives through the webhook, and a subscription an older version signed with the domain is
recreated by the next sync. The Graph simulator accepts the domain as Entra does and sends the GUID.
"""
from __future__ import annotations

import json

import pytest

from tests.support.stack import CLIENT_ID, TENANT, Stack, make_mime

DOMAIN = "contoso.onmicrosoft.com"
MAILBOX = "support@contoso.example"


@pytest.fixture(scope="module")
def stack():
    clients = {"demo": {"tenant_id": DOMAIN, "client_id": CLIENT_ID, "credential": "secret"}}
    with Stack(extra_settings={"GRAPH_CLIENTS": json.dumps(clients)}) as s:
        s.graph.add_domain(TENANT, DOMAIN)
        yield s


def row(stack: Stack, message_id: str):
    return stack.run(stack.services().ledger.get(stack.mailboxes[MAILBOX]["id"], message_id))


def notified(stack: Stack, message_id: str) -> list:
    """The change notifications the simulator POSTed for this mail, once each was answered."""
    mine = [n for n in stack.graph.notification_log("change") if message_id in json.dumps(n.payload)]
    return mine if mine and all(n.status for n in mine) else []


def test_registration_saves_the_tenant_guid_and_mail_arrives_through_the_webhook(stack):
    box = stack.add_mailbox(MAILBOX)
    assert box["tenant_id"] == TENANT and box["subscription"]["status"] == "active"
    mid = stack.deliver(MAILBOX, make_mime(to=MAILBOX, subject="Tenant by domain"))
    [note] = stack.wait_until(lambda: notified(stack, mid), what="the notification answered")
    assert note.payload["value"][0]["tenantId"] == TENANT  # Graph sends the GUID
    done = stack.wait_until(lambda: (r := row(stack, mid)) and r.status == "processed" and r, what="processed")
    assert done.source == "webhook"  # not found later by the sweep: the clientState verified


def test_a_subscription_signed_with_the_domain_is_repaired_by_the_next_sync(stack):
    svc = stack.services()
    box = stack.run(svc.registry.get(stack.mailboxes[MAILBOX]["id"]))
    box.tenant_id = DOMAIN  # what an older version saved, and signed its clientState with
    stack.run(svc.registry.save(box))
    stack.run(svc.subscription_sync.sync_mailbox(box, resign="as an older version signed it"))
    lost = stack.deliver(MAILBOX, make_mime(to=MAILBOX, subject="Signed with the domain"))
    stack.wait_until(lambda: notified(stack, lost), what="the notification answered")
    assert row(stack, lost) is None  # dropped by the webhook as invalid-client-state: the bug in the issue

    report = stack.http.post("/api/manage/subscriptions/sync").json()
    assert report["clients"]["demo"]["counts"] == {"recreated": 1}
    assert stack.http.get(f"/api/manage/mailboxes/{MAILBOX}").json()["tenant_id"] == TENANT
    mid = stack.deliver(MAILBOX, make_mime(to=MAILBOX, subject="After the repair"))
    done = stack.wait_until(lambda: (r := row(stack, mid)) and r.status == "processed" and r, what="processed")
    assert done.source == "webhook"
    assert stack.http.post("/api/manage/subscriptions/sync").json()["clients"]["demo"]["counts"] == {"unchanged": 1}


def test_the_clients_view_shows_the_guid_its_domain_resolved_to(stack):
    """GET clients names the tenant as configured and, once an inbox is registered under it, the GUID
    that Graph's notifications carry (what an admin compares with a notification's tenantId)."""
    def demo() -> dict:
        resp = stack.http.get("/api/manage/clients")
        assert resp.status_code == 200, resp.text
        [client] = [c for c in resp.json()["clients"] if c["name"] == "demo"]
        return client
    if MAILBOX not in stack.mailboxes:
        stack.add_mailbox(MAILBOX)
    client = demo()
    assert client["tenant_id"] == DOMAIN and client["tenant_guid"] == TENANT
