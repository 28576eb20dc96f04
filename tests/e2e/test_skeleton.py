"""Issue 2's end-to-end checks: the dev host serves function_app over HTTP against a real Azurite
and the Graph simulator; msgraph-sdk and azure-identity run unchanged."""
from __future__ import annotations

import base64
import json
from urllib.parse import quote

import pytest
from azure.storage.queue import QueueClient

from tests.support.stack import Stack, make_mime

MAILBOX = "support@contoso.example"


@pytest.fixture(scope="module")
def stack():
    with Stack() as s:
        s.add_mailbox(MAILBOX)
        yield s


def processed(stack: Stack, message_id: str):
    return stack.finished_row(MAILBOX, message_id)


def test_mailbox_registration_created_a_validated_subscription(stack):
    box = stack.mailboxes[MAILBOX]
    assert box["subscription"]["id"] and box["user_id"]
    assert box["subscription"]["expiration"] > "2026"
    subs = stack.graph.subscriptions()
    assert any(s["id"] == box["subscription"]["id"] for s in subs)


@pytest.mark.parametrize("token", ["a b+c/d=e", "Validation: Testing client application reachability",
                                   "x%2Fy", "ÅÄÖ-ü"])
def test_handshake_echoes_the_decoded_token_as_text_plain(stack, token):
    resp = stack.http.post(f"/api/notifications?validationToken={quote(token, safe='')}",
                           headers={"Content-Type": "text/plain; charset=utf-8"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    assert resp.text == token


@pytest.mark.parametrize("token", ["x" * 1100, "bad\x01token"])
def test_absurd_validation_token_is_refused(stack, token):
    resp = stack.http.post(f"/api/notifications?validationToken={quote(token, safe='')}")
    assert resp.status_code == 400


def test_mail_becomes_ticket_person_history_and_leaves_the_inbox(stack):
    before = {t["number"] for t in stack.tickets()}
    mid = stack.deliver(MAILBOX, make_mime(sender="Anna Andersson <anna@customer.example>", to=MAILBOX,
                                           subject="Printer broken", body="It does not print."))
    row = stack.wait_until(lambda: processed(stack, mid), what="mail processed")
    assert row.status == "processed", row.last_error
    new = [t for t in stack.tickets() if t["number"] not in before]
    assert len(new) == 1 and new[0]["title"] == "Printer broken"
    detail = stack.ticket(new[0]["number"])
    assert detail["person"]["email"] == "anna@customer.example"
    assert len(detail["history"]) == 1 and "does not print" in detail["history"][0]["note"]
    assert all(m["id"] != mid for m in stack.inbox(MAILBOX))
    assert any(m["id"] == mid for m in stack.graph.recoverable_items(MAILBOX))
    assert set(row.steps) >= {"fetched", "crm", "mailbox_action"}


def test_same_notification_three_times_makes_one_ticket(stack):
    before = len(stack.tickets())
    mid = stack.graph.deliver(MAILBOX, make_mime(to=MAILBOX, subject="Delivered thrice"), duplicate=2)
    stack.wait_until(lambda: processed(stack, mid), what="processed")
    mine = lambda: [n for n in stack.graph.notification_log("change") if mid in json.dumps(n.payload)]  # noqa: E731
    stack.wait_until(lambda: len(mine()) == 3 and all(n.status for n in mine()), what="3 notifications answered")
    assert all(n.status == 202 for n in mine())
    import time
    time.sleep(1.5)  # let the duplicate jobs drain
    titles = [t["title"] for t in stack.tickets()]
    assert titles.count("Delivered thrice") == 1 and len(titles) == before + 1
    detail = stack.ticket(next(t["number"] for t in stack.tickets() if t["title"] == "Delivered thrice"))
    assert len(detail["history"]) == 1


def test_graph_503_twice_then_200_is_processed_once(stack):
    before = len(stack.tickets())
    stack.graph.faults.add(503, method="GET", path_regex=r"/v1\.0/users/[^/]+/messages/", count=2, retry_after=0)
    mid = stack.deliver(MAILBOX, subject="Flaky Graph")
    row = stack.wait_until(lambda: processed(stack, mid), what="processed")
    assert row.status == "processed"
    assert [t["title"] for t in stack.tickets()].count("Flaky Graph") == 1 and len(stack.tickets()) == before + 1


def test_forged_malformed_and_oversized_bodies_enqueue_nothing(stack):
    conn = stack.connection
    q = QueueClient.from_connection_string(conn, "inbox-messages")
    forged = {"value": [{"subscriptionId": "s", "tenantId": "00000000-0000-0000-0000-0000000000aa",
                         "clientState": "v1." + "A" * 43, "changeType": "created",
                         "resource": f"Users/{stack.mailboxes[MAILBOX]['id']}/Messages/forged",
                         "resourceData": {"id": "forged"}, "subscriptionExpirationDateTime": "2026-12-01T00:00:00Z"}]}
    r1 = stack.http.post("/api/notifications", json=forged)
    r2 = stack.http.post("/api/notifications", content=b"{not json")
    r3 = stack.http.post("/api/notifications", content=b'{"value": [' + b'{"a":1},' * 150_000 + b'{"a":1}]}')
    assert (r1.status_code, r2.status_code, r3.status_code) == (202, 400, 413)
    svc = stack.services()
    assert stack.run(svc.ledger.get(stack.mailboxes[MAILBOX]["id"], "forged")) is None
    peeked = q.peek_messages(max_messages=32)
    assert not any(b"forged" in base64.b64decode(m.content) for m in peeked)


def test_notification_for_mail_outside_the_inbox_makes_no_ticket(stack):
    before = len(stack.tickets())
    mid = stack.graph.deliver(MAILBOX, make_mime(to=MAILBOX, subject="In Sent Items"), folder="SentItems",
                              notify=False)
    sub = stack.mailboxes[MAILBOX]["subscription"]["id"]
    [s] = [s for s in stack.graph.subscriptions() if s["id"] == sub]
    body = {"value": [{"subscriptionId": sub, "tenantId": "00000000-0000-0000-0000-0000000000aa",
                       "clientState": s["clientState"], "changeType": "created",
                       "resource": f"Users/{stack.mailboxes[MAILBOX]['id']}/Messages/{mid}",
                       "resourceData": {"id": mid}, "subscriptionExpirationDateTime": s["expirationDateTime"]}]}
    assert stack.http.post("/api/notifications", json=body).status_code == 202
    row = stack.wait_until(lambda: processed(stack, mid), what="refused")
    assert row.status == "skipped" and "Inbox" in row.skip_reason
    assert len(stack.tickets()) == before
    assert any(m["id"] == mid for m in stack.graph.messages(MAILBOX, "SentItems"))


def test_queue_bytes_are_base64_as_the_host_expects(stack):
    q = QueueClient.from_connection_string(stack.connection, "inbox-e2e-probe")
    q.create_queue()
    from shared.adapters.queues import StorageJobQueue
    from shared.domain.envelope import MessageJob
    svc = stack.services()
    stack.run(StorageJobQueue(svc.account).send("inbox-e2e-probe", MessageJob(mailbox_id="m", message_id="x")))
    [raw] = q.receive_messages(max_messages=1)
    doc = json.loads(base64.b64decode(raw.content))
    assert doc["v"] == 1 and doc["kind"] == "message" and doc["message_id"] == "x"


def test_two_first_mails_from_one_new_sender_make_one_person_and_twenty_distinct_numbers(stack):
    before = {t["number"] for t in stack.tickets()}
    ids = stack.graph.deliver_many(MAILBOX, [make_mime(sender="new.sender@fresh.example", to=MAILBOX,
                                                       subject=f"Burst {i}") for i in range(20)])
    stack.wait_until(lambda: all(processed(stack, i) for i in ids), timeout=60, what="20 processed")
    new = [t for t in stack.tickets() if t["number"] not in before]
    assert len(new) == 20 and len({t["number"] for t in new}) == 20
    persons = {stack.ticket(t["number"])["person"]["id"] for t in new}
    assert len(persons) == 1
