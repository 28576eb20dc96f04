"""Notification parsing and clientState verification: pure, no I/O."""
from __future__ import annotations

import json

import pytest

from shared.domain.clientstate import ClientStateSigner
from shared.domain.errors import MalformedNotification
from shared.domain.notifications import (
    parse_change_notifications, parse_lifecycle_notifications, parse_resource, validation_token_problem,
)

TENANT = "00000000-0000-0000-0000-0000000000aa"
USER = "11111111-2222-3333-4444-555555555555"
SIGNER = ClientStateSigner({1: b"a-test-key-of-sufficient-length"})


def body(*items: dict) -> bytes:
    return json.dumps({"value": list(items)}).encode()


def note(**over) -> dict:
    base = {"subscriptionId": "sub-1", "subscriptionExpirationDateTime": "2026-11-25T00:00:00Z",
            "changeType": "created", "resource": f"Users/{USER}/Messages/AAMk=",
            "resourceData": {"@odata.type": "#Microsoft.Graph.Message", "id": "AAMk="},
            "clientState": SIGNER.sign(TENANT, USER), "tenantId": TENANT}
    base.update(over)
    return base


def test_parses_documented_shape_and_prefers_resource_data_id():
    [n] = parse_change_notifications(body(note(resource=f"Users/{USER}/Messages/other")))
    assert (n.mailbox_id, n.message_id, n.change_type) == (USER, "AAMk=", "created")


@pytest.mark.parametrize("resource", [
    f"Users/{USER}/Messages/AAMk=", f"users/{USER}@{TENANT}/messages/AAMk=",
    f"Users('{USER}')/Messages('AAMk=')", f"users/{USER}/mailFolders('Inbox')/messages/AAMk=",
])
def test_resource_variants(resource):
    assert parse_resource(resource) == (USER, "AAMk=")


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"value": 3}', b'{"value": [1]}',
                                 body(note(resource="groups/x/threads/y")), body(note(subscriptionId=None)),
                                 body(note(tenantId=["x"]))])
def test_malformed_bodies_are_refused_whole(raw):
    with pytest.raises(MalformedNotification):
        parse_change_notifications(raw)


@pytest.mark.parametrize("depth", [1_000, 100_000])
@pytest.mark.parametrize("parse", [parse_change_notifications, parse_lifecycle_notifications])
def test_a_body_nested_past_the_parsers_limit_is_malformed(parse, depth):
    """The outside review's body: json.loads raised RecursionError, which escaped as a crash."""
    for raw in (b'{"value":[' + b"[" * depth, b'{"value":[' + b"[" * depth + b"]" * depth + b"]}",
                b'{"value":[{"resourceData":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}]}"):
        with pytest.raises(MalformedNotification, match="nested too deeply"):
            parse(raw)


def test_plausible_client_states_have_our_shape_and_a_key_version_we_hold():
    assert SIGNER.plausible(SIGNER.sign(TENANT, USER))
    assert SIGNER.plausible("v1." + "A" * 43)  # the shape only: verify() checks the HMAC
    assert not SIGNER.plausible("v2." + "A" * 43)  # no key 2 here
    for bad in (None, "", "v1.short", "x1." + "A" * 43, "v1." + "A" * 44):
        assert not SIGNER.plausible(bad)


def test_client_state_verifies_per_tenant_and_mailbox_in_constant_time_api():
    good = SIGNER.sign(TENANT, USER)
    assert good.startswith("v1.") and len(good) <= 128
    assert SIGNER.verify(good, TENANT, USER)
    assert SIGNER.verify(good, TENANT.upper(), USER.upper())  # ids are case-insensitive
    assert not SIGNER.verify(good, TENANT, "99999999-2222-3333-4444-555555555555")
    assert not SIGNER.verify(good[:-1] + ("A" if good[-1] != "A" else "B"), TENANT, USER)
    assert not SIGNER.verify("v1.short", TENANT, USER)
    assert not SIGNER.verify(None, TENANT, USER)


def test_key_rotation_accepts_old_until_retired():
    old = SIGNER.sign(TENANT, USER)
    rotated = ClientStateSigner({1: b"a-test-key-of-sufficient-length", 2: b"the-next-key-of-sufficient-len"})
    assert rotated.sign(TENANT, USER).startswith("v2.")
    assert rotated.verify(old, TENANT, USER) and not rotated.is_current(old)
    retired = ClientStateSigner({2: b"the-next-key-of-sufficient-len"})
    assert not retired.verify(old, TENANT, USER)


def test_validation_token_limits():
    assert validation_token_problem("a b+c/d=e") is None
    assert validation_token_problem("x" * 1025)
    assert validation_token_problem("bad\x00token")


def test_lifecycle_parse():
    [n] = parse_lifecycle_notifications(body({"subscriptionId": "s", "tenantId": TENANT, "clientState": "c",
                                              "lifecycleEvent": "missed",
                                              "subscriptionExpirationDateTime": "2026-11-25T00:00:00Z"}))
    assert n.lifecycle_event == "missed"
