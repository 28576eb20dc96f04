"""Envelopes and settings: versioned, validated, secret-free."""
from __future__ import annotations

import json

import pytest

from shared.config import ConfigError, Settings
from shared.domain import envelope
from shared.domain.envelope import AutoreplyJob, MessageJob
from shared.domain.errors import MalformedEnvelope

BASE_ENV = {"AzureWebJobsStorage": "UseDevelopmentStorage=true",
            "CLIENT_STATE_KEYS": "1:0123456789abcdef0123", "GRAPH_CLIENTS": "{}"}


def test_envelope_round_trip_and_version():
    job = MessageJob(mailbox_id="m", message_id="x/y+z=", tenant_id="t")
    text = envelope.encode(job)
    assert json.loads(text)["v"] == 1 and json.loads(text)["correlation_id"] == job.correlation_id
    assert envelope.decode(text, MessageJob) == job


@pytest.mark.parametrize("raw", ["nope", "[]", '{"v": 99, "kind": "message"}', '{"v": 1, "kind": "message"}',
                                 '{"v": 1, "kind": "autoreply", "mailbox_id": "m", "message_id": "x", '
                                 '"ticket_id": "1", "ticket_number": "2"}',
                                 '{"v": 1, "kind": ' + "[" * 100_000])  # past the parser's recursion limit
def test_envelope_rejects_what_it_cannot_read(raw):
    with pytest.raises(MalformedEnvelope):
        envelope.decode(raw, MessageJob)


def test_envelope_ignores_unknown_fields_from_newer_writers():
    doc = json.loads(envelope.encode(AutoreplyJob("m", "x", "1", "1042")))
    doc["future_field"] = 1
    assert envelope.decode(json.dumps(doc), AutoreplyJob).ticket_number == "1042"


def test_settings_defaults_and_fail_fast_lists_every_problem():
    s = Settings.from_env(BASE_ENV)
    assert s.crm_backend == "table" and s.sweep_grace_seconds == 300 and s.graph_mailbox_concurrency == 4
    with pytest.raises(ConfigError) as exc:
        Settings.from_env({"GRAPH_CLIENTS": "{bad", "CRM_BACKEND": "lime", "SWEEP_GRACE_SECONDS": "x"})
    message = str(exc.value)
    for expected in ("AzureWebJobsStorage", "CLIENT_STATE_KEYS", "GRAPH_CLIENTS", "LIME_CRM_URL", "SWEEP_GRACE_SECONDS"):
        assert expected in message


def test_settings_never_print_secrets():
    env = dict(BASE_ENV, LIME_CRM_API_KEY="super-secret-value", CLIENT_STATE_KEYS="1:another-secret-value-123")
    s = Settings.from_env(env)
    assert "super-secret" not in repr(s) and "another-secret" not in repr(s)
    with pytest.raises(ConfigError) as exc:
        Settings.from_env(dict(BASE_ENV, CLIENT_STATE_KEYS="1:short"))
    assert "short" not in str(exc.value)


def test_graph_clients_parsed_with_secret_setting_names():
    env = dict(BASE_ENV, GRAPH_CLIENTS=json.dumps({"contoso-eu": {"tenant_id": "t", "client_id": "c"}}))
    client = Settings.from_env(env).graph_clients["contoso-eu"]
    assert client.credential == "secret" and client.secret_setting == "GRAPH_CLIENT_SECRET_CONTOSO_EU"
