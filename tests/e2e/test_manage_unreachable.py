"""Issue 13 item 3 through the real app: when Entra, Graph, Lime CRM or TRAML cannot be reached (a
closed port, a name that does not resolve, a certificate from an untrusted CA, a proxy that refuses),
the manage API answers a named JSON error naming the host and the fix (502/503), never the empty
500 it used to. Real sockets, real azure-identity / msgraph-sdk / httpx; the app in the dev host.
"""
from __future__ import annotations

import itertools
import logging

import pytest

from tests.support.azurite import free_port, start_azurite
from tests.support.stack import TENANT, Stack
from tools.sim.graph import GraphSim
from tools.sim.tls import make_test_ca

_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def connection():
    azurite = start_azurite()  # shared by this module's stacks: nothing here is saved anyway
    yield azurite.connection_string
    azurite.stop()


@pytest.fixture
def start(connection):
    stacks: list[Stack] = []

    def run(**settings: str) -> Stack:
        s = Stack(extra_settings=settings)
        stacks.append(s)
        s.start(connection=connection)
        s.address = f"support{next(_numbers)}@contoso.example"  # the module's stacks share one Azurite
        s.graph.add_mailbox(s.address, tenant_id=TENANT)
        return s
    yield run
    for s in stacks:
        s.stop()


def closed_url(scheme: str = "https", path: str = "") -> str:
    return f"{scheme}://127.0.0.1:{free_port()}{path}"  # nothing listens there: connection refused


def named(resp, status: int, reason: str, host: str, words: str) -> dict:
    assert resp.status_code == status, resp.text
    doc = resp.json()
    assert doc["reason"] == reason and doc["detail"]["host"] == host, doc
    assert host in doc["error"] and words in doc["error"], doc["error"]
    assert doc["detail"].get("fix"), doc
    return doc


def register(stack: Stack, **fields):
    return stack.http.post("/api/manage/mailboxes", json={"address": stack.address, "client": "demo", **fields})


# -- Entra (the authority) --------------------------------------------------------------------------
def test_authority_refusing_connections(start):
    s = start(GRAPH_AUTHORITY_HOST=closed_url())
    named(register(s), 503, "authority_unreachable", "127.0.0.1", "GRAPH_AUTHORITY_HOST")
    check = s.http.post("/api/manage/clients/demo/validate").json()
    assert check["ok"] is False and check["reason"] == "authority_unreachable"
    assert check["checks"][0]["host"] == "127.0.0.1" and "GRAPH_AUTHORITY_HOST" in check["checks"][0]["detail"]


def test_authority_name_that_does_not_resolve(start):
    s = start(GRAPH_AUTHORITY_HOST="https://authority.invalid")
    named(register(s), 503, "dns_failed", "authority.invalid", "does not resolve")


def test_authority_with_a_certificate_from_an_untrusted_ca(start):
    s = start(OUTBOUND_CA_BUNDLE="")  # the simulator's throwaway CA is no longer trusted
    doc = named(register(s), 502, "tls_untrusted", "127.0.0.1", "OUTBOUND_CA_BUNDLE")
    assert doc["detail"]["service"] == "Entra ID"


def test_a_proxy_that_refuses(start, monkeypatch):
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    proxy = closed_url("http")
    monkeypatch.setenv("HTTPS_PROXY", proxy)
    monkeypatch.setenv("https_proxy", proxy)
    s = start()
    doc = named(register(s), 502, "proxy_failed", "127.0.0.1", "HTTPS_PROXY")
    assert proxy in doc["error"]


# -- Graph --------------------------------------------------------------------------------------------
def test_graph_refusing_connections(start):
    s = start(GRAPH_BASE_URL=closed_url("http", "/v1.0"))
    named(register(s), 503, "graph_unreachable", "127.0.0.1", "GRAPH_BASE_URL")
    named(s.http.get("/api/manage/clients/demo/folders", params={"mailbox": s.address}), 503, "graph_unreachable",
          "127.0.0.1", "GRAPH_BASE_URL")


def test_graph_with_a_certificate_from_an_untrusted_ca(start, tmp_path):
    other = GraphSim()
    other._ctx = make_test_ca(str(tmp_path)).server_context()  # a CA that OUTBOUND_CA_BUNDLE does not hold
    other.start()
    try:
        s = start(GRAPH_BASE_URL=other.https_url + "/v1.0")
        doc = named(register(s), 502, "tls_untrusted", "127.0.0.1", "OUTBOUND_CA_BUNDLE")
        assert doc["detail"]["service"] == "Microsoft Graph"
    finally:
        other.stop()


# -- TRAML ----------------------------------------------------------------------------------------------
def test_traml_unreachable_when_saving_listing_templates_and_in_the_status(start):
    s = start(TRAML_BASE_URL=closed_url("http", "/bedrock/demo/api"), TRAML_API_KEY="traml-key-1")
    named(register(s, autoreply={"enabled": True, "template": "Thanks"}), 503, "traml_unreachable", "127.0.0.1",
          "TRAML_BASE_URL")
    assert s.http.get(f"/api/manage/mailboxes/{s.address}").status_code == 404  # nothing saved
    options = s.http.get("/api/manage/options").json()
    assert options["autoreply"]["templates"] is None and options["autoreply"]["error"]["reason"] == "traml_unreachable"
    created = register(s)
    assert created.status_code == 201, created.text
    svc = s.services()
    box = s.run(svc.registry.get(created.json()["id"]))
    box.autoreply.enabled, box.autoreply.template = True, "Thanks"
    s.run(svc.registry.save(box))
    status = s.http.get("/api/manage/status").json()
    [w] = [w for w in status["warnings"] if w["reason"] == "traml_unreachable"]
    assert w["host"] == "127.0.0.1" and status["summary"]["healthy"] is False
    assert "traml-key-1" not in str(status)


# -- Lime CRM -------------------------------------------------------------------------------------------
def test_lime_unreachable_when_saving_routing_listing_options_and_changing_a_ticket(start):
    s = start(CRM_BACKEND="lime", LIME_CRM_URL=closed_url("http"), LIME_CRM_API_KEY="lime-key-1")
    named(register(s, routing={"values": {"helpdesktype": "support"}}), 503, "lime_unreachable", "127.0.0.1",
          "LIME_CRM_URL")
    options = s.http.get("/api/manage/options").json()
    assert options["crm"]["routing_properties"] is None and options["crm"]["error"]["reason"] == "lime_unreachable"
    named(s.http.patch("/api/manage/tickets/1042", json={"status": "done"}), 503, "lime_unreachable", "127.0.0.1",
          "LIME_CRM_URL")


def test_lime_name_that_does_not_resolve(start):
    s = start(CRM_BACKEND="lime", LIME_CRM_URL="https://lime.invalid/customer", LIME_CRM_API_KEY="lime-key-1")
    named(register(s, routing={"values": {"helpdesktype": "support"}}), 503, "dns_failed", "lime.invalid",
          "LIME_CRM_URL")


# -- anything else: a JSON 500 with a correlation id, the traceback only in the log -------------------------
def test_an_unexpected_error_is_a_json_500_with_a_correlation_id(start, caplog):
    s = start()
    svc = s.services()

    async def broken() -> dict:
        raise RuntimeError("a bug with a secret-looking detail")
    svc.mailbox_checks.options = broken
    with caplog.at_level(logging.ERROR, logger="inbox.manage"):
        resp = s.http.get("/api/manage/options")
    assert resp.status_code == 500, resp.text
    doc = resp.json()
    assert doc["reason"] == "internal_error" and doc["detail"]["correlation"] in doc["error"]
    assert "secret-looking" not in resp.text
    [record] = [r for r in caplog.records if "manage.internal-error" in r.getMessage()]
    assert doc["detail"]["correlation"] in record.getMessage() and record.exc_info
