"""Issue 4 end to end: failed and unprocessed mail through the real app (dev host), Azurite and the
Graph simulator: poison -> Failed + category, the sweep, recoveries, the status and the lists.

One module-scoped stack, one mailbox per scenario (so counts are the scenario's own). The mail that
crashes the worker needs the host's real retry budget (5 deliveries, visibilityTimeout 10 s in
host.json), so it starts when the stack does and is checked by the last test, while the other
scenarios run. (A CRM that is down is not a crash: the mail waits for it with growing delays, for
hours, and is not Failed; tests/chaos/test_outage.py.)
"""
from __future__ import annotations

import inspect
import re
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import pytest

from shared.domain import envelope
from shared.domain.envelope import MessageJob
from shared.services.failures import FAILED_CATEGORY
from tests.support.stack import TENANT, Stack, make_mime
from tools.sim.traml import DEMO_API_KEY, TramlSim

MB_CRM = "crm-outage@contoso.example"
MB_GRAPH = "graph-down@contoso.example"
MB_LOST = "lost@contoso.example"
MB_RACE = "race@contoso.example"
MB_BACKFILL = "backfill@contoso.example"
OUTAGE_SENDER = "outage@customer.example"
LOST_SENDER = "lost.sender@customer.example"


class CrmOutage:
    """The app's CRM in the dev host process, broken for mail from some senders: every call that
    concerns them crashes (an error the app does not expect, not a CRM that is down, which is waited
    for), until `down` is cleared."""

    def __init__(self, crm: Any, marker: str) -> None:
        self._crm, self._marker, self.down, self.refused = crm, marker, True, 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._crm, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.down and self._marker in repr((args, kwargs)).lower():
                self.refused += 1
                raise RuntimeError("CRM client crashed on an answer it cannot read (injected)")
            return await attr(*args, **kwargs)
        return call


def _ago(**kw: float) -> datetime:
    return datetime.now(timezone.utc) - timedelta(**kw)


@pytest.fixture(scope="module")
def traml():
    sim = TramlSim().start()  # the backfill mailbox has autoreplies on: saving it asks TRAML for its template
    sim.add_template("Thanks", "<p>Ticket $$helpdesknumber$$</p>", "Ticket $$helpdesknumber$$")
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def stack(traml):
    with Stack(extra_settings={"TRAML_BASE_URL": traml.url + traml.base_path, "TRAML_API_KEY": DEMO_API_KEY}) as s:
        for box in (MB_CRM, MB_GRAPH):
            s.add_mailbox(box)
        for box in (MB_LOST, MB_RACE):  # monitored since yesterday: mail of the last hour is theirs to sweep
            s.add_mailbox(box, start_date=_ago(days=1).isoformat())
        svc = s.services()
        outage = CrmOutage(svc.processor.d.crm, OUTAGE_SENDER)
        svc.processor.d.crm = outage
        s.outage = outage
        s.outage_ids = [s.deliver(MB_CRM, sender=f"Olle <{OUTAGE_SENDER}>", subject=f"Outage {i}")
                        for i in range(3)]
        yield s


def box_id(stack: Stack, address: str) -> str:
    return stack.mailboxes[address]["id"]


def row(stack: Stack, address: str, message_id: str) -> Any:
    return stack.run(stack.services().ledger.get(box_id(stack, address), message_id))


def finished(stack: Stack, address: str, ids: list[str]) -> bool:
    rows = stack.run(stack.services().ledger.get_many(box_id(stack, address), ids))
    return len(rows) == len(ids) and all(r.status in ("processed", "skipped", "failed") for r in rows.values())


def titles(stack: Stack) -> list[str]:
    return [t["title"] for t in stack.tickets()]


def get(stack: Stack, path: str, **params: Any) -> Any:
    resp = stack.http.get(f"/api/manage/{path}", params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()


def recover(stack: Stack, body: dict[str, Any], timeout: float = 90) -> dict[str, Any]:
    resp = stack.http.post("/api/manage/messages/recover", json=body)
    assert resp.status_code == 202, resp.text
    task_id = resp.json()["task_id"]
    return stack.wait_until(lambda: (t := get(stack, f"recovery/{task_id}")) and t["status"] == "done" and t,
                            timeout=timeout, interval=0.3, what=f"recovery {task_id} done")


def test_lost_notifications_the_sweep_processes_every_mail_exactly_once(stack):
    stack.graph.drop_notifications = True
    try:
        ids = stack.graph.deliver_many(MB_LOST, [make_mime(sender=LOST_SENDER, to=MB_LOST, subject=f"Lost {i}")
                                                 for i in range(12)], received_at=_ago(minutes=10))
    finally:
        stack.graph.drop_notifications = False
    stack.lost_ids = ids
    unprocessed = get(stack, "messages", status="unprocessed", mailbox=MB_LOST)
    assert {m["message_id"] for m in unprocessed["messages"]} == set(ids)
    assert all(m["state"] == "new" and m["sender"] == LOST_SENDER for m in unprocessed["messages"])

    stack.host.invoke("sweep_inbox")
    stack.wait_until(lambda: finished(stack, MB_LOST, ids), timeout=60, what="12 swept mails processed")
    stack.host.invoke("sweep_inbox")  # a second run finds nothing left to do
    state = stack.run(stack.services().sweep_state.get(box_id(stack, MB_LOST)))
    assert state.enqueued == 0 and not state.error

    got = titles(stack)
    assert all(got.count(f"Lost {i}") == 1 for i in range(12))
    rows = [row(stack, MB_LOST, i) for i in ids]
    assert all(r.status == "processed" and r.source == "sweep" for r in rows)
    assert all(m["id"] not in ids for m in stack.inbox(MB_LOST))
    assert get(stack, "messages", status="unprocessed", mailbox=MB_LOST)["count"] == 0

    detail = get(stack, f"messages/{quote(ids[0], safe='')}", mailbox=MB_LOST)
    assert detail["status"] == "processed" and {"fetched", "crm", "mailbox_action"} <= set(detail["steps"])
    assert [t["event"] for t in detail["trace"]][:2] == ["queued", "claimed"]


def test_the_sweep_racing_late_notifications_creates_no_duplicate(stack):
    before = len(stack.host.invocations)
    ids = [stack.graph.deliver(MB_RACE, make_mime(to=MB_RACE, subject=f"Race {i}"), received_at=_ago(minutes=10),
                               delay_ms=150 * i) for i in range(10)]
    stack.host.invoke("sweep_inbox")  # enqueues the ten while their notifications are still on the way
    report = stack.run(stack.services().sweep_state.get(box_id(stack, MB_RACE)))
    # A notification may win the race for the first mail(s): then the sweep sees it in flight.
    assert report.enqueued + report.in_flight == 10 and report.enqueued >= 5, report
    stack.graph.wait_for_notifications(count=10, timeout=30)
    stack.wait_until(lambda: finished(stack, MB_RACE, ids), timeout=60, what="raced mails processed")
    # both jobs of every mail the sweep enqueued ran (the sweep's and the notification's)
    expected = 10 + report.enqueued
    stack.wait_until(lambda: sum(1 for r in stack.host.invocations[before:] if r.function == "process_message")
                     >= expected, timeout=60, what=f"{expected} jobs")
    got = titles(stack)
    assert all(got.count(f"Race {i}") == 1 for i in range(10))
    numbers = [t["number"] for t in stack.tickets() if t["title"].startswith("Race ")]
    assert all(len(stack.ticket(n)["history"]) == 1 for n in numbers)


def test_graph_down_while_poisoned_still_failed_and_the_sweep_applies_the_category_later(stack):
    mid = stack.graph.deliver(MB_GRAPH, make_mime(to=MB_GRAPH, subject="Poisoned in a Graph outage"), notify=False)
    # Graph down for this mail (other scenarios run beside this one)
    rule = stack.graph.faults.add(503, path_regex=f"/users/[^/]+/messages/{re.escape(mid)}", count=-1, retry_after=0)
    try:
        stack.host.invoke("message_failed", envelope.encode(MessageJob(
            mailbox_id=box_id(stack, MB_GRAPH), message_id=mid, tenant_id=TENANT)))
        failed = row(stack, MB_GRAPH, mid)
        assert failed.status == "failed" and failed.data["category"] == "pending" and failed.attempts >= 1
        assert stack.graph.get_message(MB_GRAPH, mid)["categories"] == []
        assert rule.fired >= 1  # Graph was really down for the handler
    finally:
        stack.graph.faults.remove(rule.id)
    [listed] = get(stack, "messages", status="failed", mailbox=MB_GRAPH)["messages"]
    assert listed["message_id"] == mid and listed["category"] == "pending"

    stack.host.invoke("sweep_inbox")
    assert stack.graph.get_message(MB_GRAPH, mid)["categories"] == [FAILED_CATEGORY]
    assert row(stack, MB_GRAPH, mid).data["category"] == "applied"
    assert any(m["id"] == mid for m in stack.inbox(MB_GRAPH))  # failed mail stays in the Inbox


def test_a_new_mailbox_with_500_old_mails_waits_for_a_recovery_from_a_date(stack):
    stack.graph.add_mailbox(MB_BACKFILL, tenant_id=TENANT)
    ids = {h: stack.graph.deliver(MB_BACKFILL, make_mime(to=MB_BACKFILL, sender=f"old{h}@customer.example",
                                                         subject=f"Backfill {h}"),
                                  notify=False, received_at=_ago(hours=h, minutes=30))
           for h in range(500)}
    resp = stack.http.post("/api/manage/mailboxes", json={"address": MB_BACKFILL, "client": "demo",
                                                          "autoreply": {"enabled": True, "template": "Thanks"}})
    assert resp.status_code == 201, resp.text
    stack.mailboxes[MB_BACKFILL] = resp.json()
    mbid = box_id(stack, MB_BACKFILL)

    stack.host.invoke("sweep_inbox")
    assert stack.run(stack.services().ledger.get_many(mbid, list(ids.values()))) == {}
    doc = get(stack, "status", mailbox=MB_BACKFILL)
    assert doc["warnings"] == [] and doc["summary"]["warnings"] == 0  # no secret expiry configured
    status = doc["inboxes"][0]
    assert status["unprocessed"] == 500 and status["failed"] == 0 and status["status"] == "Active"
    listed = get(stack, "messages", status="unprocessed", mailbox=MB_BACKFILL, limit=1000)
    assert listed["count"] == 500 and all(m["before_start_date"] for m in listed["messages"])

    since = (_ago(hours=48)).isoformat()
    task = recover(stack, {"status": "unprocessed", "mailbox": MB_BACKFILL, "since": since})
    after = [h for h in ids if h < 48]  # received 0.5 .. 47.5 hours ago
    assert task["counts"] == {"processed": len(after)}
    assert {i["message_id"] for i in task["items"]} == {ids[h] for h in after}
    got = titles(stack)
    assert all(got.count(f"Backfill {h}") == (1 if h < 48 else 0) for h in ids)
    for h in after:
        r = row(stack, MB_BACKFILL, ids[h])
        assert r.status == "processed" and r.source == "recovery"
        if h < 23:
            assert r.done("autoreply_queued"), h
        elif h > 24:
            assert not r.done("autoreply_queued") and r.data["autoreply"] is False, h
    assert get(stack, "status", mailbox=MB_BACKFILL)["inboxes"][0]["unprocessed"] == 500 - len(after)
    tasks = get(stack, "recovery", mailbox=MB_BACKFILL)["tasks"]
    assert tasks[0]["task_id"] == task["task_id"] and tasks[0]["status"] == "done"


def test_manage_api_refuses_bad_input_with_a_reason(stack):
    bad = [
        stack.http.post("/api/manage/messages/recover", json={"status": "everything"}),
        stack.http.post("/api/manage/messages/recover", content=b"{nope"),
        stack.http.post("/api/manage/messages/recover", json={"status": "failed", "since": "last week"}),
        stack.http.get("/api/manage/messages", params={"status": "bogus"}),
        stack.http.get("/api/manage/messages", params={"status": "failed", "since": "soon"}),
        stack.http.post("/api/manage/privacy/erase", json={"address": "not an address"}),
    ]
    assert [r.status_code for r in bad] == [400] * len(bad)
    assert all(r.json()["error"] for r in bad)
    assert stack.http.post("/api/manage/messages/recover",
                           json={"status": "failed", "mailbox": "nobody@contoso.example"}).status_code == 404
    assert stack.http.get("/api/manage/recovery/r0-nope").status_code == 404
    assert stack.http.get("/api/manage/messages/unknown-id").status_code == 404


def test_privacy_erase_scrubs_what_the_service_holds_about_an_address(stack):
    resp = stack.http.post("/api/manage/privacy/erase", json={"address": LOST_SENDER.upper()})
    assert resp.status_code == 200, resp.text
    report = resp.json()
    assert report["removed"]["ledger_rows"] == 12 and LOST_SENDER not in resp.text
    assert any("CRM" in n for n in report["not_ours"])
    rows = stack.run(stack.services().ledger.get_many(box_id(stack, MB_LOST), stack.lost_ids)).values()
    assert len(rows) == 12 and all(r.sender == "" and r.subject == "" and r.status == "processed" for r in rows)
    assert all("erased_at" in r.data and r.steps for r in rows)  # still processed: nothing is redone


def test_a_mail_that_crashes_the_worker_through_the_retry_budget_is_failed_then_recovered_once(stack):
    ids = stack.outage_ids
    stack.wait_until(lambda: all((r := row(stack, MB_CRM, i)) and r.status == "failed" for i in ids),
                     timeout=150, interval=0.5, what="crashing mails Failed after the queue's retry budget")
    rows = [row(stack, MB_CRM, i) for i in ids]
    assert all(r.attempts == 5 and "CRM client crashed" in r.last_error for r in rows)
    assert stack.outage.refused >= 15
    assert not any(t.startswith("Outage ") for t in titles(stack))
    # visible: the list, the status and the mailbox category
    listed = get(stack, "messages", status="failed", mailbox=MB_CRM)["messages"]
    assert {m["message_id"] for m in listed} == set(ids)
    assert all(m["attempts"] == 5 and m["sender"] == OUTAGE_SENDER and m["subject"].startswith("Outage ")
               for m in listed)
    assert get(stack, "status", mailbox=MB_CRM)["inboxes"][0]["failed"] == 3
    stack.wait_until(lambda: all(stack.graph.get_message(MB_CRM, i)["categories"] == [FAILED_CATEGORY] for i in ids),
                     timeout=30, what="Failed category on every mail")

    stack.outage.down = False  # the CRM is back
    task = recover(stack, {"status": "failed", "mailbox": MB_CRM})
    assert task["counts"] == {"processed": 3}
    got = titles(stack)
    assert all(got.count(f"Outage {i}") == 1 for i in range(3))
    assert get(stack, "messages", status="failed", mailbox=MB_CRM)["count"] == 0
    assert get(stack, "status", mailbox=MB_CRM)["inboxes"][0]["failed"] == 0
    assert all(row(stack, MB_CRM, i).status == "processed" for i in ids)
    assert not any(m["id"] in ids for m in stack.inbox(MB_CRM))
    summary = get(stack, "status")["summary"]
    assert summary["inboxes"] == 5 and summary["failed"] == 1  # the Graph-outage mail is still Failed
