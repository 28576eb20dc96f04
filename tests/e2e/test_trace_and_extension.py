"""Issue 9 end to end through the real app (dev host), Azurite, the Graph simulator and TRAML's
simulator served over HTTPS (trusted through OUTBOUND_CA_BUNDLE): one trace per mail, the step view,
a processing extension changing and failing mail, and settings errors reaching the operator.

The dev host runs the app in this process, so `caplog` sees the app's own log records.
"""
from __future__ import annotations

import logging
from urllib.parse import quote, urlsplit

import pytest

from tests.support.stack import Stack, make_mime, traml_with_template
from tools.sim.traml import DEMO_API_KEY

SUPPORT = "support@contoso.example"
TEMPLATE = "Thanks"


@pytest.fixture(scope="module")
def traml():
    with traml_with_template(TEMPLATE) as sim:
        yield sim


@pytest.fixture(scope="module")
def stack(traml):
    with Stack(extra_settings={
        "TRAML_BASE_URL": traml.https_url + traml.base_path, "TRAML_API_KEY": DEMO_API_KEY,
        "PROCESSING_EXTENSION": "tests.support.extensions:probe",
    }) as s:
        s.add_mailbox(SUPPORT, autoreply={"enabled": True, "template": TEMPLATE})
        yield s


def finished(stack: Stack, message_id: str):
    return stack.finished_row(SUPPORT, message_id)


def steps_of(stack: Stack, message_id: str) -> dict:
    resp = stack.http.get(f"/api/manage/messages/{quote(message_id, safe='')}")
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_one_mail_one_correlation_id_from_the_webhook_to_the_autoreply(stack, traml, caplog):
    caplog.set_level(logging.INFO, logger="inbox")
    message_id = stack.deliver(SUPPORT, make_mime(to="invoices@contoso.example", subject="Printer broken"))
    row = stack.wait_until(lambda: finished(stack, message_id), what="mail processed")
    assert row.status == "processed", row.last_error
    number = row.data["ticket_number"]
    stack.wait_until(lambda: any(f"[{number}]" in m.get("Subject", "") for m in traml.sent_mail()),
                     what="autoreply sent")
    view = stack.wait_until(lambda: (lambda v: v if (v.get("autoreply") or {}).get("status") == "sent" else None)(
        steps_of(stack, message_id)), what="autoreply recorded")
    cid = row.correlation_id
    assert cid and view["correlation_id"] == cid

    mine = [r for r in caplog.records if getattr(r, "correlation_id", "") == cid or f"correlation={cid}" in r.getMessage()]
    by_logger = {r.name for r in mine}
    assert {"inbox.intake", "inbox.process", "inbox.autoreply"} <= by_logger, by_logger
    assert any(r.getMessage().startswith("graph.webhook.enqueued") for r in mine)
    assert any(r.getMessage().startswith("process.processed") for r in mine)
    assert any(r.getMessage().startswith("autoreply.sent") for r in mine)
    # a line the code wrote without the id (the extension's) carries it too: text and attribute
    probe = [r for r in mine if r.name == "inbox.extension.probe"]
    assert probe and probe[0].getMessage().endswith(f"correlation={cid}") and probe[0].message_id == message_id
    # and no line inside this mail's processing carries another mail's id
    assert all(f"correlation={cid}" in r.getMessage() for r in caplog.records if getattr(r, "correlation_id", "") == cid)

    # the step view: every step, in order, with its time, outcome and this correlation id
    steps = [s["step"] for s in view["timeline"]]
    for step in ("claimed", "fetched", "decided", "crm", "autoreply_queued", "mailbox_action", "processed",
                 "autoreply.claimed", "autoreply.sent"):
        assert step in steps, steps
    assert steps.index("claimed") < steps.index("decided") < steps.index("crm") < steps.index("processed")
    assert all(s["at"] and s["ok"] and s["correlation_id"] == cid for s in view["timeline"])
    assert [s["at"] for s in view["timeline"]] == sorted(s["at"] for s in view["timeline"])
    assert view["correlation_ids"] == [cid]
    decided = next(s for s in view["timeline"] if s["step"] == "decided")
    assert decided["outcome"].startswith("opens a new ticket") and "processing extension" in decided["outcome"]
    assert view["decision"]["values"] == {"helpdesktype": "invoice"}
    # ... and links its ticket
    ticket = view["ticket"]
    assert ticket["number"] == number and ticket["action"] == "new" and ticket["new"] is True
    link = stack.http.get(urlsplit(ticket["url"]).path)
    assert link.status_code == 200 and link.json()["ticket"]["number"] == number
    assert link.json()["ticket"]["values"] == {"helpdesktype": "invoice"}  # what the extension set


def test_a_raising_extension_leaves_the_mail_failed_and_visible(stack):
    message_id = stack.deliver(SUPPORT, make_mime(subject="Please explode"))
    row = stack.wait_until(lambda: finished(stack, message_id), what="mail failed")
    assert row.status == "failed"
    assert "processing extension tests.support.extensions:probe raised RuntimeError: the probe extension refuses " \
           "this mail" in row.last_error
    assert message_id in {m["id"] for m in stack.inbox(SUPPORT)}  # failed mail stays in the Inbox
    failed = stack.http.get("/api/manage/messages", params={"status": "failed", "mailbox": SUPPORT}).json()
    listed = next(m for m in failed["messages"] if m["message_id"] == message_id)
    assert "the probe extension refuses this mail" in listed["last_error"] and listed["permanent"] is True
    view = steps_of(stack, message_id)
    last = view["timeline"][-1]
    assert last["step"] == "failed" and last["ok"] is False and "the probe extension refuses" in last["outcome"]
    assert view["ticket"] is None and view["correlation_id"] == row.correlation_id


def test_settings_errors_reach_the_operator_at_startup_and_in_the_validate_endpoint(azurite_connection, caplog):
    caplog.set_level(logging.INFO, logger="inbox")
    s = Stack(extra_settings={"OUTBOUND_CA_BUNDLE": "/nonexistent/customer-ca.pem"})
    s.start(connection=azurite_connection)
    try:
        resp = s.http.post("/api/manage/clients/demo/validate")
        assert resp.status_code == 500
        assert resp.json() == {"error": "Invalid settings: OUTBOUND_CA_BUNDLE names '/nonexistent/customer-ca.pem', "
                                        "which does not exist or is not readable", "reason": "settings_invalid",
                               "detail": {}}
        assert any(r.name == "inbox.bootstrap" and r.levelno == logging.ERROR and "customer-ca.pem" in r.getMessage()
                   for r in caplog.records)
    finally:
        s.stop()
