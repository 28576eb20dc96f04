"""Issue 3 end to end: the dev host serves function_app against Azurite and the Graph simulator.

The app reads the simulator's movable clock (bootstrap.override(clock=...)), so a week of
subscription expiries passes in seconds and no test waits for one.  Covered here: the manage API
(mailbox CRUD, clients, validate, sync log, Sync and Save), lifecycle events through the real
webhook -> queue -> handle_lifecycle path, forged lifecycle events, and the simulated week.
"""
from __future__ import annotations

import json
from datetime import timedelta

import pytest

from shared.domain.model import FINISHED
from tests.support.stack import CLIENT_ID, SECRET, TENANT, Stack, make_mime

NOUSER_CLIENT_ID = "00000000-0000-0000-0000-0000000000cc"
NOUSER_SECRET = "nouser-secret-value-456"
CLIENTS = {"demo": {"tenant_id": TENANT, "client_id": CLIENT_ID, "credential": "secret"},
           "nouser": {"tenant_id": TENANT, "client_id": NOUSER_CLIENT_ID, "credential": "secret",
                      "secret_expires": "2099-01-01"}}
BY_ID = "support@contoso.example"      # the app may read users: addressed by object id
BY_ADDRESS = "shared@contoso.example"  # registered with a client that may not: addressed by address


class SimClock:
    def __init__(self, graph) -> None:
        self.graph = graph

    def now(self):
        return self.graph.now()


@pytest.fixture(scope="module")
def stack():
    from shared import bootstrap
    s = Stack(extra_settings={"GRAPH_CLIENTS": json.dumps(CLIENTS), "GRAPH_CLIENT_SECRET_NOUSER": NOUSER_SECRET})
    with s:
        s.graph.add_app(TENANT, NOUSER_CLIENT_ID, secret=NOUSER_SECRET, permissions={"Mail.ReadWrite"})
        bootstrap.override(clock=SimClock(s.graph))
        s.add_mailbox(BY_ID)
        s.graph.add_mailbox(BY_ADDRESS, tenant_id=TENANT)
        resp = s.http.post("/api/manage/mailboxes", json={"address": BY_ADDRESS, "client": "nouser"})
        assert resp.status_code == 201, resp.text
        s.mailboxes[BY_ADDRESS] = resp.json()
        yield s


def box_id(stack: Stack, address: str) -> str:
    return stack.mailboxes[address]["id"]


def live_subs(stack: Stack, address: str) -> list[dict]:
    key = f"mailbox={box_id(stack, address)}"
    return [s for s in stack.graph.subscriptions() if key in s["notificationUrl"]]


def the_sub(stack: Stack, address: str) -> dict:
    subs = live_subs(stack, address)
    assert len(subs) == 1, subs
    return subs[0]


def row(stack: Stack, address: str, message_id: str):
    return stack.run(stack.services().ledger.get(box_id(stack, address), message_id))


def finished(stack: Stack, address: str, message_id: str) -> bool:
    r = row(stack, address, message_id)
    return bool(r and r.status in FINISHED)


def handled(stack: Stack) -> int:
    return len([r for r in stack.host.invocations if r.function == "handle_lifecycle"])


def run_sweep(stack: Stack) -> None:
    """The sweep_inbox timer, now (picks up mail whose notification was missed)."""
    assert "sweep_inbox" in stack.host.functions, "function_app registers no sweep_inbox timer"
    stack.host.invoke("sweep_inbox")


# -- manage API ------------------------------------------------------------------------------------
def test_registration_addresses_each_mailbox_as_graph_allows(stack):
    by_id, by_address = stack.mailboxes[BY_ID], stack.mailboxes[BY_ADDRESS]
    assert by_id["user_id"] and by_id["id"] == by_id["user_id"] and by_id["subscription"]["status"] == "active"
    assert by_address["id"].startswith("addr-") and "@" not in by_address["id"] and by_address["warnings"]
    assert the_sub(stack, BY_ADDRESS)["resource"] == f"users/{BY_ADDRESS}/mailFolders('Inbox')/messages"


def test_mail_to_an_address_only_mailbox_is_verified_and_processed(stack):
    mid = stack.deliver(BY_ADDRESS, subject="Address-only mailbox works")
    stack.wait_until(lambda: finished(stack, BY_ADDRESS, mid), what="processed")
    assert row(stack, BY_ADDRESS, mid).status == "processed"


def test_mailbox_crud_and_bad_input(stack):
    http = stack.http
    stack.graph.add_mailbox("crud@contoso.example", tenant_id=TENANT)
    bad = http.post("/api/manage/mailboxes", json={"address": "not-an-address", "client": "demo"})
    assert bad.status_code == 422 and bad.json()["field"] == "address"
    bad = http.post("/api/manage/mailboxes", json={"address": "crud@contoso.example", "client": "demo", "colour": "red"})
    assert bad.status_code == 400 and bad.json()["reason"] == "unknown_field" and bad.json()["field"] == "colour"
    bad = http.post("/api/manage/mailboxes", content=b"{nope")
    assert bad.status_code == 400 and bad.json()["reason"] == "invalid_json"
    resp = http.post("/api/manage/mailboxes", json={"address": "ghost@contoso.example", "client": "demo"})
    assert resp.status_code == 422 and resp.json()["reason"] == "mailbox_not_found"
    created = http.post("/api/manage/mailboxes", json={"address": "crud@contoso.example", "client": "demo",
                                                       "start_date": "2026-01-01T00:00:00Z"})
    assert created.status_code == 201, created.text
    mid = created.json()["id"]
    again = http.post("/api/manage/mailboxes", json={"address": "CRUD@contoso.example", "client": "demo"})
    assert again.status_code == 409 and again.json()["reason"] == "mailbox_exists"
    assert f"PATCH /api/manage/mailboxes/{mid}" in again.json()["error"]
    assert http.get(f"/api/manage/mailboxes/{mid}").json()["subscription"]["status"] == "active"
    assert http.get("/api/manage/mailboxes/crud@contoso.example").json()["id"] == mid
    assert mid in {m["id"] for m in http.get("/api/manage/mailboxes").json()["mailboxes"]}
    key = f"mailbox={mid}"
    count = lambda: len([s for s in stack.graph.subscriptions() if key in s["notificationUrl"]])  # noqa: E731
    assert count() == 1
    patched = http.patch(f"/api/manage/mailboxes/{mid}", json={"active": False})
    assert patched.status_code == 200 and patched.json()["active"] is False and count() == 0
    assert patched.json()["subscription"]["status"] == "inactive"
    patched = http.patch(f"/api/manage/mailboxes/{mid}", json={"active": True, "action": "move",
                                                               "move_folder": "archive"})
    assert patched.status_code == 200 and patched.json()["action"] == "move" and count() == 1
    assert http.patch(f"/api/manage/mailboxes/{mid}", json={"address": "x@y.example"}).status_code == 400
    shred = http.patch(f"/api/manage/mailboxes/{mid}", json={"action": "shred"})
    assert shred.status_code == 422 and shred.json()["field"] == "action" and "delete, move" in shred.json()["error"]
    deleted = http.delete(f"/api/manage/mailboxes/{mid}")
    assert deleted.status_code == 200 and deleted.json()["subscription"]["action"] == "removed" and count() == 0
    assert http.get(f"/api/manage/mailboxes/{mid}").status_code == 404
    assert http.delete(f"/api/manage/mailboxes/{mid}").status_code == 404


def test_a_graph_answer_retrying_cannot_change_is_shown_as_what_it_is(stack):
    """Graph answering 501 (and the like) was shown as "Graph or storage is unavailable, try again"."""
    address = "not-implemented@contoso.example"
    stack.graph.add_mailbox(address, tenant_id=TENANT)
    rule = stack.graph.faults.add(501, path_regex=r"/mailFolders/inbox", count=-1)
    try:
        resp = stack.http.post("/api/manage/mailboxes", json={"address": address, "client": "demo"})
        assert resp.status_code == 502, resp.text
        error = resp.json()["error"]
        assert "501 (Not Implemented)" in error and "retrying cannot change" in error and "try again" not in error
        report = stack.http.post("/api/manage/clients/demo/validate", params={"mailbox": BY_ID}).json()
        [check] = [c for c in report["checks"] if c["check"] == "mailbox"]
        assert check["ok"] is False and check["reason"] == "graph_refused" and "501" in check["detail"], check
        assert rule.fired == 2  # once each: never retried
    finally:
        stack.graph.faults.remove(rule.id)
    assert stack.http.get(f"/api/manage/mailboxes/{address}").status_code == 404  # nothing saved


def test_clients_validate_sync_and_synclog(stack):
    http = stack.http
    clients = http.get("/api/manage/clients").json()["clients"]
    assert [c["name"] for c in clients] == ["demo", "nouser"]
    assert SECRET not in json.dumps(clients) and NOUSER_SECRET not in json.dumps(clients)
    ok = http.post("/api/manage/clients/demo/validate").json()
    assert ok["ok"] is True and {c["check"] for c in ok["checks"]} == {"token", "permissions", "mailbox"}
    assert http.post("/api/manage/clients/nope/validate").status_code == 404
    report = http.post("/api/manage/subscriptions/sync").json()
    assert report["trigger"] == "manual" and report["clients"]["demo"]["ok"] is True
    log = http.get("/api/manage/clients/demo/synclog").json()["entries"]
    assert log[0]["run"] == report["clients"]["demo"]["run"]
    assert http.get("/api/manage/clients/nope/synclog").status_code == 404


# -- lifecycle events through the webhook ---------------------------------------------------------
def test_reauthorization_required_reauthorizes_the_subscription(stack):
    sub = the_sub(stack, BY_ID)
    stack.graph.fire_lifecycle(sub["id"], "reauthorizationRequired")
    stack.wait_until(lambda: stack.graph.reauthorizations.get(sub["id"]) == 1, what="reauthorized")
    assert the_sub(stack, BY_ID)["id"] == sub["id"]


def unnotified_mail(stack: Stack, address: str, subject: str) -> str:
    """Mail that arrived without a notification, older than the sweep's grace, after the start date."""
    stack.graph.advance_clock(900)
    mid = stack.graph.deliver(address, make_mime(to=address, subject=subject), notify=False)
    stack.graph.advance_clock(400)
    return mid


def test_subscription_removed_recreates_it_and_sweeps_the_mailbox(stack):
    old = the_sub(stack, BY_ADDRESS)
    mid = unnotified_mail(stack, BY_ADDRESS, "While it was removed")
    stack.graph.fire_lifecycle(old["id"], "subscriptionRemoved")  # also removes it in the simulator
    new = stack.wait_until(lambda: [s for s in live_subs(stack, BY_ADDRESS) if s["id"] != old["id"]],
                           what="recreated")
    assert len(new) == 1 and len(live_subs(stack, BY_ADDRESS)) == 1
    stack.wait_until(lambda: finished(stack, BY_ADDRESS, mid), what="swept and processed")
    assert row(stack, BY_ADDRESS, mid).source == "sweep"


def test_mail_that_arrived_while_no_subscription_existed_is_taken_at_once_however_young(stack):
    """After subscriptionRemoved no notification will ever come for the mail that arrived meanwhile:
    the repair's sweep takes it now, however young (it used to skip mail younger than the grace
    period, which then waited for the next timer sweep, up to 15 minutes). The timer is not run."""
    old = the_sub(stack, BY_ID)
    mid = stack.graph.deliver(BY_ID, make_mime(to=BY_ID, subject="Arrived while unsubscribed"), notify=False)
    stack.graph.fire_lifecycle(old["id"], "subscriptionRemoved")  # removes it in the simulator too
    stack.wait_until(lambda: [s for s in live_subs(stack, BY_ID) if s["id"] != old["id"]], what="recreated")
    stack.wait_until(lambda: finished(stack, BY_ID, mid), what="swept at once and processed")
    assert row(stack, BY_ID, mid).status == "processed" and row(stack, BY_ID, mid).source == "sweep"


def test_young_mail_whose_notification_was_missed_is_taken_at_once(stack):
    stack.graph.drop_notifications = True
    try:
        mid = stack.graph.deliver(BY_ID, make_mime(to=BY_ID, subject="Missed and young"))
    finally:
        stack.graph.drop_notifications = False
    stack.graph.fire_lifecycle(the_sub(stack, BY_ID)["id"], "missed")
    stack.wait_until(lambda: finished(stack, BY_ID, mid), what="swept at once and processed")
    assert row(stack, BY_ID, mid).source == "sweep"


def test_missed_sweeps_the_mailbox(stack):
    mid = unnotified_mail(stack, BY_ID, "Notification missed")
    stack.graph.fire_lifecycle(the_sub(stack, BY_ID)["id"], "missed")
    stack.wait_until(lambda: finished(stack, BY_ID, mid), what="swept and processed")
    assert row(stack, BY_ID, mid).status == "processed" and row(stack, BY_ID, mid).source == "sweep"


def test_a_forged_lifecycle_event_does_nothing(stack):
    sub = the_sub(stack, BY_ID)
    before_handled, before_reauth = handled(stack), stack.graph.reauthorizations.get(sub["id"], 0)
    forged = [{"subscriptionId": sub["id"], "tenantId": TENANT, "clientState": "v1." + "A" * 43,
               "lifecycleEvent": "subscriptionRemoved", "subscriptionExpirationDateTime": sub["expirationDateTime"]},
              {"subscriptionId": "11111111-2222-3333-4444-555555555555", "tenantId": TENANT,
               "clientState": sub["clientState"], "lifecycleEvent": "reauthorizationRequired"}]
    for item in forged:
        assert stack.http.post("/api/lifecycle", json={"value": [item]}).status_code == 202
    # a real event afterwards: once it is handled, a forged one would have been too
    stack.graph.fire_lifecycle(sub["id"], "reauthorizationRequired")
    stack.wait_until(lambda: stack.graph.reauthorizations.get(sub["id"], 0) == before_reauth + 1, what="real event")
    stack.host.wait_for_invocations("handle_lifecycle", before_handled + 1)
    assert handled(stack) == before_handled + 1
    assert the_sub(stack, BY_ID)["id"] == sub["id"]


# -- the week --------------------------------------------------------------------------------------
def test_mail_keeps_flowing_across_a_simulated_week(stack):
    """Seven and a half days in 6-hour steps on the moved clock.  Each step: the clock moves, mail
    arrives in both mailboxes, the renewal timer and the sweep run.  On the way: a removal (A) with
    its lifecycle event, notifications lost with `missed` events (both), a reauthorization (A), A
    renewed before it expires, and B's renewals refused by Graph from day 2, so that B's subscription
    really lapses near the end of the week and mail arrives while it is gone."""
    g = stack.graph
    delivered: dict[str, list[tuple[str, str]]] = {BY_ID: [], BY_ADDRESS: []}
    fault = None
    for step in range(30):
        g.advance_clock(6 * 3600)
        if step == 2:
            g.fire_lifecycle(the_sub(stack, BY_ID)["id"], "subscriptionRemoved")
        if step == 4:
            g.drop_notifications = True
        if step == 8:  # Graph refuses to renew B's subscription from here on: it lapses on day 7
            fault = g.faults.add(503, method="PATCH", count=-1, retry_after=0,
                                 path_regex=rf"/v1\.0/subscriptions/{the_sub(stack, BY_ADDRESS)['id']}$")
        for address in (BY_ID, BY_ADDRESS):
            subject = f"Week step {step} for {address.split('@')[0]}"
            delivered[address].append((stack.deliver(address, subject=subject), subject))
        if step == 4:
            g.drop_notifications = False
            g.advance_clock(600)
            for address in (BY_ID, BY_ADDRESS):
                g.fire_lifecycle(the_sub(stack, address)["id"], "missed")
        if step == 6:
            g.fire_lifecycle(the_sub(stack, BY_ID)["id"], "reauthorizationRequired")
        stack.host.invoke("renew_subscriptions")
        run_sweep(stack)
    g.faults.remove(fault.id)
    g.advance_clock(3600)
    stack.host.invoke("renew_subscriptions")
    run_sweep(stack)

    def all_finished() -> bool:
        return all(finished(stack, a, mid) for a, mails in delivered.items() for mid, _ in mails)
    stack.wait_until(all_finished, timeout=120, what="every mail of the week processed")

    titles = [t["title"] for t in stack.tickets()]
    for address, mails in delivered.items():
        for mid, subject in mails:
            assert row(stack, address, mid).status == "processed", (address, subject)
            assert titles.count(subject) == 1, subject
        assert stack.inbox(address) == []
        sub = the_sub(stack, address)
        rec = stack.run(stack.services().subscriptions.get(box_id(stack, address)))
        assert rec.status == "active" and rec.subscription_id == sub["id"]
        assert rec.expiration - g.now() > timedelta(days=3)
    nouser_log = stack.http.get("/api/manage/clients/nouser/synclog", params={"limit": 500}).json()["entries"]
    assert any(e["counts"].get("failed") for e in nouser_log)      # the refused renewals were recorded
    assert any(e["counts"].get("recreated") for e in nouser_log)   # and the lapsed subscription came back
    sources = {row(stack, BY_ADDRESS, mid).source for mid, _ in delivered[BY_ADDRESS]}
    assert sources >= {"webhook", "sweep"}
