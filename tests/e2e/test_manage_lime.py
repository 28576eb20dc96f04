"""Issue 13 item 2 with CRM_BACKEND=lime: a mailbox's routing values are checked against Lime CRM's
schema when it is saved (the Lime adapter's schema check, against the Lime simulator): a property the
helpdesk lacks, or an option it does not have, is refused with the field; `options` lists the
routing properties and their options for the console.
"""
from __future__ import annotations

import pytest

from tests.support.stack import TENANT, Stack
from tools.sim.lime import DEMO_API_KEY as LIME_KEY, LimeSim, prop

MAILBOX = "support@contoso.example"


@pytest.fixture(scope="module")
def lime():
    sim = LimeSim().start()
    sim.add_property("helpdesk", prop("priority", "option", options=["low", "high"]))
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def stack(lime):
    with Stack(extra_settings={"CRM_BACKEND": "lime", "LIME_CRM_URL": lime.lime_url, "LIME_CRM_API_KEY": LIME_KEY,
                               "LIME_RATE_LIMIT_REQUESTS": "0"}) as s:
        s.graph.add_mailbox(MAILBOX, tenant_id=TENANT)
        yield s


def post(stack: Stack, routing: dict):
    return stack.http.post("/api/manage/mailboxes", params={"validate_only": "true"},
                           json={"address": MAILBOX, "client": "demo", "routing": routing})


@pytest.mark.parametrize("routing, reason, field", [
    ({"values": {"helpdesk_type": 1}}, "routing_property_unknown", "routing.values.helpdesk_type"),
    ({"by_recipient": {"invoices@contoso.example": {"prio": "high"}}}, "routing_property_unknown",
     "routing.by_recipient.invoices@contoso.example.prio"),
    ({"values": {"priority": "urgent"}}, "routing_value_unknown", "routing.values.priority"),
])
def test_a_routing_property_or_option_the_crm_lacks_is_refused(stack, routing, reason, field):
    resp = post(stack, routing)
    assert resp.status_code == 422, resp.text
    doc = resp.json()
    assert doc["reason"] == reason and doc["field"] == field and "helpdesk" in doc["error"]


def test_routing_the_schema_has_is_accepted_and_offered(stack):
    ok = post(stack, {"values": {"priority": "high", "helpdesktype": 1},
                      "by_recipient": {"invoices@contoso.example": {"priority": "low"}}})
    assert ok.status_code == 200 and ok.json()["ok"] is True, ok.text
    crm = stack.http.get("/api/manage/options").json()["crm"]
    assert crm["backend"] == "lime" and {"priority", "helpdesktype", "coworker"} <= set(crm["routing_properties"])
    assert not {"title", "helpdesknumber", "helpdeskstatus", "history", "inboxkey"} & set(crm["routing_properties"])
    assert crm["routing_options"]["priority"] == ["high", "low"]
