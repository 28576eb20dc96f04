"""Issue 13 through the real app (dev host), Azurite, the Graph and TRAML simulators: every mailbox
setting the processor would trip over is refused when it is saved (422 naming the field, the same
rules the processor applies), duplicates are 409 naming the PATCH route, `validate_only` saves
nothing, every manage refusal is JSON {error, reason, field?, detail}, unknown routes and methods
get JSON 404/405, query parameters are checked, `options` and `folders` feed the console's form,
and the status warns about what would stop mail or autoreplies.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from tests.support.stack import TENANT, Stack
from tools.sim.traml import DEMO_API_KEY, TramlSim

MAILBOX = "support@contoso.example"
TEMPLATE = "Thanks"


@pytest.fixture(scope="module")
def traml():
    sim = TramlSim().start()
    sim.add_template(TEMPLATE, "<p>Ticket $$helpdesknumber$$</p>", "Ticket $$helpdesknumber$$")
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def stack(traml):
    s = Stack(extra_settings={"TRAML_BASE_URL": traml.api_url, "TRAML_API_KEY": DEMO_API_KEY})
    s.start()  # its own Azurite: the status counts every mailbox in the tables
    try:
        s.add_mailbox(MAILBOX)
        s.processed_folder = s.graph.add_folder(MAILBOX, "Processed", parent="inbox")
        yield s
    finally:
        s.stop()


def mailbox_id(stack: Stack) -> str:
    return stack.mailboxes[MAILBOX]["id"]


def refused(resp, status: int, reason: str, field: str | None = None) -> dict:
    """The error contract: JSON {error: sentence, reason, field?, detail}."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    doc = resp.json()
    assert doc["reason"] == reason, doc
    assert isinstance(doc["error"], str) and len(doc["error"]) > 20 and isinstance(doc["detail"], dict)
    if field is not None:
        assert doc["field"] == field, doc
    return doc


def patch(stack: Stack, doc: dict, **params):
    return stack.http.patch(f"/api/manage/mailboxes/{mailbox_id(stack)}", json=doc, params=params)


def saved(stack: Stack) -> dict:
    return stack.http.get(f"/api/manage/mailboxes/{mailbox_id(stack)}").json()


# -- one test per rule: refused at save, with the field, nothing saved ------------------------------
@pytest.mark.parametrize("doc, reason, field, words", [
    ({"sender_id_behaviour": "exact"}, "invalid_choice", "sender_id_behaviour", "PersonEmailExact"),
    ({"closed_ticket_policy": "close"}, "invalid_choice", "closed_ticket_policy", "new_after_days"),
    ({"closed_ticket_policy": "new_after_days"}, "closed_ticket_days_required", "closed_ticket_days", "1 or more"),
    ({"closed_ticket_days": 99999}, "invalid_value", "closed_ticket_days", "3650"),
    ({"action": "shred"}, "invalid_choice", "action", "delete, move"),
    ({"action": "move"}, "move_folder_required", "move_folder", "folders"),
    ({"action": "move", "move_folder": "NoSuchFolder"}, "folder_unknown", "move_folder", "no folder"),
    ({"action": "move", "move_folder": "inbox"}, "folder_is_inbox", "move_folder", "Inbox"),
    ({"autoreply": {"enabled": True}}, "autoreply_template_required", "autoreply.template", "TRAML"),
    ({"autoreply": {"enabled": True, "template": "Nope"}}, "template_unknown", "autoreply.template", "Thanks"),
    ({"routing": {"values": {"title": "x"}}}, "routing_property_reserved", "routing.values.title", "pipeline"),
    ({"routing": {"colour": "red"}}, "invalid_routing", "routing", "values, by_recipient"),
    ({"routing": {"values": {"helpdesktype": ["a"]}}}, "invalid_value", "routing.values.helpdesktype", "string"),
    ({"client": "nobody"}, "client_unknown", "client", "demo"),
])
def test_a_setting_the_rules_refuse_is_422_naming_the_field_and_nothing_is_saved(stack, doc, reason, field, words):
    before = saved(stack)
    body = refused(patch(stack, doc), 422, reason, field)
    assert words in body["error"]
    after = saved(stack)
    assert {k: after[k] for k in doc} == {k: before[k] for k in doc}


@pytest.mark.parametrize("doc, reason, field", [
    ({"active": "yes"}, "invalid_field", "active"),
    ({"autoreply": {"enabled": "true"}}, "invalid_field", "autoreply.enabled"),
    ({"autoreply": {"colour": "red"}}, "invalid_field", "autoreply.colour"),
    ({"start_date": "yesterday"}, "invalid_field", "start_date"),
    ({"address": "other@contoso.example"}, "unknown_field", "address"),
])
def test_a_value_of_the_wrong_type_is_400_naming_the_field(stack, doc, reason, field):
    refused(patch(stack, doc), 400, reason, field)


def test_the_processor_and_the_api_read_the_same_rules(stack):
    """A row saved before the API checked it (written straight to the table) fails its mail with the
    sentence the API would have answered, and the status names it."""
    from shared.domain import mailbox_rules
    from shared.services.mailboxes import ValidationError, patch_from_request
    svc = stack.services()
    box = stack.run(svc.registry.get(mailbox_id(stack)))
    with pytest.raises(ValidationError) as api:
        patch_from_request(box, {"sender_id_behaviour": "exact"}, svc.settings.graph_clients, svc.clock.now())
    box.sender_id_behaviour = "exact"
    with pytest.raises(mailbox_rules.MailboxRuleError) as processor:
        mailbox_rules.check_processable(box)
    assert str(api.value) == str(processor.value)


def test_a_valid_change_is_saved_and_a_partial_autoreply_patch_keeps_the_template(stack):
    resp = patch(stack, {"sender_id_behaviour": "CompanyEmailDomain", "closed_ticket_policy": "new_after_days",
                         "closed_ticket_days": 14, "action": "move", "move_folder": stack.processed_folder,
                         "autoreply": {"enabled": True, "template": TEMPLATE},
                         "routing": {"values": {"helpdesktype": "support"}}})
    assert resp.status_code == 200, resp.text
    assert patch(stack, {"autoreply": {"enabled": False}}).json()["autoreply"] == {
        "enabled": False, "template": TEMPLATE, "from_name": "", "merge_codes": {}}
    back = patch(stack, {"action": "delete", "move_folder": "", "closed_ticket_policy": "reopen",
                         "closed_ticket_days": 0, "sender_id_behaviour": "PersonEmailDomain", "routing": {}})
    assert back.status_code == 200, back.text


def test_registering_a_mailbox_twice_is_409_naming_the_patch_route(stack):
    resp = stack.http.post("/api/manage/mailboxes", json={"address": MAILBOX.upper(), "client": "demo"})
    doc = refused(resp, 409, "mailbox_exists", "address")
    assert f"PATCH /api/manage/mailboxes/{mailbox_id(stack)}" in doc["error"]
    assert doc["detail"]["id"] == mailbox_id(stack)


def test_validate_only_runs_every_check_and_saves_nothing(stack):
    address = "dryrun@contoso.example"
    stack.graph.add_mailbox(address, tenant_id=TENANT)
    body = {"address": address, "client": "demo", "autoreply": {"enabled": True, "template": TEMPLATE}}
    ok = stack.http.post("/api/manage/mailboxes", params={"validate_only": "true"}, json=body)
    assert ok.status_code == 200 and ok.json()["ok"] is True and ok.json()["warnings"] == []
    assert stack.http.get(f"/api/manage/mailboxes/{address}").status_code == 404
    assert not [s for s in stack.graph.subscriptions() if "dryrun" in s["resource"]]
    bad = stack.http.post("/api/manage/mailboxes", params={"validate_only": "true"},
                          json={**body, "autoreply": {"enabled": True, "template": "Nope"}})
    refused(bad, 422, "template_unknown", "autoreply.template")
    refused(stack.http.post("/api/manage/mailboxes", params={"validate_only": "true"},
                            json={"address": MAILBOX, "client": "demo"}), 409, "mailbox_exists")
    before = saved(stack)
    dry = patch(stack, {"sender_id_behaviour": "PersonEmailExact"}, validate_only="true")
    assert dry.status_code == 200 and dry.json()["ok"] is True
    assert saved(stack)["sender_id_behaviour"] == before["sender_id_behaviour"]
    refused(patch(stack, {"sender_id_behaviour": "exact"}, validate_only="true"), 422, "invalid_choice",
            "sender_id_behaviour")


# -- the routes themselves ------------------------------------------------------------------------
def test_unknown_routes_and_methods_answer_json(stack):
    doc = refused(stack.http.get("/api/manage/nothing/here"), 404, "unknown_route")
    assert "GET /api/manage/status" in doc["detail"]["routes"]
    refused(stack.http.get("/api/manage"), 404, "unknown_route")
    resp = stack.http.delete("/api/manage/status")
    refused(resp, 405, "method_not_allowed")
    assert resp.headers["allow"] == "GET"
    assert stack.http.put(f"/api/manage/mailboxes/{mailbox_id(stack)}").headers["allow"] == "GET, PATCH, DELETE"
    refused(stack.http.get("/api/manage/mailboxes/nobody@contoso.example"), 404, "not_found", "id")


@pytest.mark.parametrize("method, path, kwargs, status, reason, field", [
    ("get", "/api/manage/messages", {"params": {"status": "failed", "since": "2099-01-01"}}, 422, "since_in_future",
     "since"),
    ("post", "/api/manage/messages/recover", {"json": {"status": "failed", "since": "2099-01-01T00:00:00Z"}}, 422,
     "since_in_future", "since"),
    ("get", "/api/manage/messages", {"params": {"status": "everything"}}, 400, "invalid_parameter", "status"),
    ("get", "/api/manage/messages", {"params": {"mailbox": "nobody@contoso.example"}}, 404, "not_found", "mailbox"),
    ("get", "/api/manage/messages", {"params": {"limit": "ten"}}, 400, "invalid_parameter", "limit"),
    ("get", "/api/manage/messages", {"params": {"limit": "0"}}, 400, "invalid_parameter", "limit"),
    ("get", "/api/manage/recovery", {"params": {"limit": "-1"}}, 400, "invalid_parameter", "limit"),
    ("get", "/api/manage/autoreplies", {"params": {"status": "lost"}}, 400, "invalid_parameter", "status"),
    ("get", "/api/manage/autoreplies", {"params": {"limit": "x"}}, 400, "invalid_parameter", "limit"),
    ("get", "/api/manage/tickets", {"params": {"limit": "1e3"}}, 400, "invalid_parameter", "limit"),
    ("get", "/api/manage/clients/demo/synclog", {"params": {"limit": "many"}}, 400, "invalid_parameter", "limit"),
    ("get", "/api/manage/status", {"params": {"include_inactive": "perhaps"}}, 400, "invalid_parameter",
     "include_inactive"),
    ("post", "/api/manage/messages/recover", {"json": ["failed"]}, 400, "invalid_json", None),
    ("post", "/api/manage/messages/recover", {"json": {"status": "failed", "colour": 1}}, 400, "unknown_field",
     "colour"),
    ("patch", "/api/manage/tickets/1", {"json": {"status": "closed"}}, 400, "invalid_field", "status"),
    ("post", "/api/manage/autoreplies/nope/resend", {}, 404, "not_found", None),
    ("get", "/api/manage/clients/nope/folders", {"params": {"mailbox": MAILBOX}}, 404, "not_found", "client"),
    ("get", "/api/manage/clients/demo/folders", {}, 400, "invalid_parameter", "mailbox"),
])
def test_query_and_body_parameters_are_checked(stack, method, path, kwargs, status, reason, field):
    refused(getattr(stack.http, method)(path, **kwargs), status, reason, field)


def test_since_in_the_past_still_works(stack):
    since = (datetime.now(timezone.utc) - timedelta(days=1)).isoformat()
    assert stack.http.get("/api/manage/messages", params={"status": "failed", "since": since}).status_code == 200


def test_options_come_from_the_validators_constants(stack):
    from shared.domain import mailbox_rules
    doc = stack.http.get("/api/manage/options").json()
    assert doc["mailbox"] == {k: list(v) for k, v in mailbox_rules.CHOICES.items()}
    assert doc["mailbox"]["action"] == ["delete", "move"]
    assert doc["clients"] == [{"name": "demo", "tenant_id": TENANT, "credential": "secret"}]
    assert doc["autoreply"] == {"traml_configured": True, "templates": [TEMPLATE]}
    assert doc["crm"] == {"backend": "table", "routing_properties": None}


def test_folders_lists_the_mailboxs_folders_with_their_paths(stack):
    doc = stack.http.get("/api/manage/clients/demo/folders", params={"mailbox": MAILBOX}).json()
    by_path = {f["path"]: f for f in doc["folders"]}
    assert by_path["Inbox/Processed"]["id"] == stack.processed_folder
    assert {"Inbox", "Archive", "Deleted Items"} <= set(by_path)
    assert all(set(f) == {"id", "path", "display_name"} for f in doc["folders"])
    # a mailbox about to be registered, by its address
    stack.graph.add_mailbox("new@contoso.example", tenant_id=TENANT)
    assert stack.http.get("/api/manage/clients/demo/folders", params={"mailbox": "new@contoso.example"}
                          ).status_code == 200
    refused(stack.http.get("/api/manage/clients/demo/folders", params={"mailbox": "ghost@contoso.example"}), 404,
            "mailbox_not_found", "mailbox")


# -- status tells the truth -------------------------------------------------------------------------
def warnings_of(stack: Stack) -> dict:
    doc = stack.http.get("/api/manage/status").json()
    return doc


def test_status_warns_about_a_missing_template_and_failed_or_uncertain_autoreplies(stack, traml):
    from shared.services.autoreply import AutoreplyRecord
    assert patch(stack, {"autoreply": {"enabled": True, "template": TEMPLATE}}).status_code == 200
    doc = warnings_of(stack)
    assert not [w for w in doc["warnings"] if w["reason"].startswith("autoreply")]
    traml.remove_template(TEMPLATE)  # deleted in TRAML after the mailbox was saved (and its id cached)
    try:
        doc = warnings_of(stack)
        [w] = [w for w in doc["warnings"] if w["reason"] == "autoreply_template_unknown"]
        assert w["mailbox"] == MAILBOX and doc["summary"]["healthy"] is False and w["fix"]
        # a save or a Check asks TRAML too, not the cache that still holds the deleted template's id
        refused(patch(stack, {"autoreply": {"enabled": True, "template": TEMPLATE}}, validate_only="true"),
                422, "template_unknown", "autoreply.template")
    finally:
        traml.add_template(TEMPLATE, "<p>x</p>", "x")
    store = stack.services().autoreplies.d.store
    for ticket, status in (("t-failed", "failed"), ("t-uncertain", "uncertain")):
        stack.run(store.save(AutoreplyRecord(ticket_id=ticket, status=status, mailbox_id=mailbox_id(stack),
                                             ticket_number=ticket)))
    doc = warnings_of(stack)
    reasons = {w["reason"]: w for w in doc["warnings"]}
    assert reasons["autoreplies_failed"]["count"] == 1 and reasons["autoreplies_uncertain"]["count"] == 1
    assert "resend" in reasons["autoreplies_failed"]["fix"] and doc["summary"]["healthy"] is False
    for ticket in ("t-failed", "t-uncertain"):
        record = stack.run(store.get(ticket))
        record.status = "sent"
        stack.run(store.save(record))
    assert not [w for w in warnings_of(stack)["warnings"] if w["reason"].startswith("autoreplies_")]
    svc = stack.services()  # a row saved before the API checked it: autoreplies on, no template
    box = stack.run(svc.registry.get(mailbox_id(stack)))
    box.autoreply.template = ""
    stack.run(svc.registry.save(box))
    [w] = [w for w in warnings_of(stack)["warnings"] if w["reason"] == "autoreply_template_missing"]
    assert w["mailbox"] == MAILBOX and w["field"] == "autoreply.template"
    assert patch(stack, {"autoreply": {"enabled": False}}).status_code == 200
