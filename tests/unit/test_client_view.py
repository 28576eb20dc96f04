"""GET clients' view of one Graph client: the tenant as configured and the GUID Graph sends."""
from __future__ import annotations

from shared.config import GraphClientConfig
from shared.domain.model import Mailbox
from shared.services.clients import ClientService
from tests.fakes import FakeClock

GUID = "6f1c2c4e-0000-4000-8000-00000000abcd"


def view(cfg: GraphClientConfig, boxes: list[Mailbox]) -> dict:
    service = ClientService({cfg.name: cfg}, registry=None, graph=None, clock=FakeClock(),
                            secret_is_set=lambda setting: True)
    return service.describe(cfg, boxes)


def box(address: str, client: str, tenant: str) -> Mailbox:
    return Mailbox(id=address, address=address, client=client, tenant_id=tenant, user_id=address)


def test_a_tenant_given_by_guid_is_its_own_guid():
    cfg = GraphClientConfig("demo", GUID.upper(), "app", "secret", secret_setting="S")
    assert view(cfg, [])["tenant_guid"] == GUID


def test_a_tenant_given_by_domain_shows_the_guid_its_inboxes_were_saved_with():
    cfg = GraphClientConfig("demo", "contoso.onmicrosoft.com", "app", "secret", secret_setting="S")
    assert view(cfg, [])["tenant_guid"] is None  # nothing registered yet: not known
    other = box("x@fabrikam.example", "other", "11111111-0000-4000-8000-000000000000")
    mine = box("support@contoso.example", "demo", GUID)
    doc = view(cfg, [mine, other])
    assert doc["tenant_id"] == "contoso.onmicrosoft.com" and doc["tenant_guid"] == GUID
    assert doc["mailboxes"] == ["support@contoso.example"]
    # two GUIDs under one client would be a misconfiguration: none is shown rather than a guess
    odd = box("odd@contoso.example", "demo", "22222222-0000-4000-8000-000000000000")
    assert view(cfg, [mine, odd])["tenant_guid"] is None
