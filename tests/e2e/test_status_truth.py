"""Issue 13 item 4 through the real app: `GET /api/manage/status` says healthy only when nothing
would stop mail or autoreplies. This stack runs as a copied example would: placeholder secrets,
no TRAML, and at first no mailbox; each cause is a warning with its reason and fix."""
from __future__ import annotations

import pytest

from tests.support.stack import TENANT, Stack

MAILBOX = "support@contoso.example"


@pytest.fixture(scope="module")
def stack():
    s = Stack(extra_settings={"CLIENT_STATE_KEYS": "1:change-me-to-a-long-random-secret",
                              "WEBHOOK_KEY": "change-me-function-key", "TRAML_BASE_URL": "", "TRAML_API_KEY": ""})
    s.start()  # its own Azurite: "no mailbox registered" must be true
    try:
        yield s
    finally:
        s.stop()


def status(stack: Stack) -> tuple[dict, dict]:
    resp = stack.http.get("/api/manage/status")
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    by_reason: dict[str, list[dict]] = {}
    for w in doc["warnings"]:
        assert w["message"] and w["reason"] and w["level"] in ("error", "warning")
        by_reason.setdefault(w["reason"], []).append(w)
    return doc, by_reason


def test_no_inbox_and_placeholder_secrets_are_not_healthy(stack):
    doc, warnings = status(stack)
    assert doc["summary"]["inboxes"] == 0 and doc["summary"]["healthy"] is False
    assert "POST /api/manage/mailboxes" in warnings["no_inbox"][0]["fix"]
    assert sorted(w["setting"] for w in warnings["placeholder_secret"]) == ["CLIENT_STATE_KEYS", "WEBHOOK_KEY"]
    assert "change-me-to-a-long-random-secret" not in str(doc) and "change-me-function-key" not in str(doc)


def test_autoreplies_without_traml_are_refused_at_save_and_warned_about_when_stored(stack):
    stack.graph.add_mailbox(MAILBOX, tenant_id=TENANT)
    resp = stack.http.post("/api/manage/mailboxes", json={"address": MAILBOX, "client": "demo",
                                                          "autoreply": {"enabled": True, "template": "Thanks"}})
    assert resp.status_code == 422 and resp.json()["reason"] == "traml_not_configured"
    assert resp.json()["field"] == "autoreply.enabled" and "TRAML_BASE_URL" in resp.json()["error"]
    created = stack.http.post("/api/manage/mailboxes", json={"address": MAILBOX, "client": "demo"})
    assert created.status_code == 201, created.text
    _, warnings = status(stack)
    assert "no_inbox" not in warnings

    # rows written before the API checked them (straight into the table), as older versions allowed
    svc = stack.services()
    box = stack.run(svc.registry.get(created.json()["id"]))
    box.autoreply.enabled, box.autoreply.template = True, "Thanks"
    box.sender_id_behaviour = "exact"
    stack.run(svc.registry.save(box))
    doc, warnings = status(stack)
    assert warnings["autoreply_traml_missing"][0]["mailbox"] == MAILBOX
    assert "'sender_id_behaviour' is 'exact'" in warnings["mailbox_misconfigured"][0]["message"]
    assert doc["summary"]["healthy"] is False
    # the per-mailbox view keeps its own and the service-wide warnings
    one = stack.http.get("/api/manage/status", params={"mailbox": MAILBOX}).json()
    assert {w["reason"] for w in one["warnings"]} >= {"placeholder_secret", "autoreply_traml_missing",
                                                     "mailbox_misconfigured"}
    other = stack.http.get("/api/manage/status", params={"mailbox": "nobody@contoso.example"}).json()
    assert "mailbox_misconfigured" not in {w["reason"] for w in other["warnings"]}
