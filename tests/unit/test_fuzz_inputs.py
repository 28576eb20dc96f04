"""Hypothesis fuzzing of untrusted input: the webhook body and the mail parsers (seeded: derandomized,
no example database, so every run tries the same inputs; tests/chaos/test_fuzz_*.py go further).

Properties: no unhandled exception on any byte sequence; a body is either refused whole
(MalformedNotification: nothing enqueued) or every job it yields is well-formed and carries a valid
clientState; MIME of any shape turns into Graph JSON and then into our mail model without crashing.
"""
from __future__ import annotations

import asyncio
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.domain.clientstate import ClientStateSigner
from shared.domain.errors import MalformedNotification, PermanentError
from shared.domain.mail import InboundMail
from shared.services.intake import accept_notifications
from tests.fakes import FakeQueue
from tools.sim.mime2graph import mime_to_graph_message

SIGNER = ClientStateSigner({1: b"fuzz-client-state-key-0123456789"})
TENANT = "00000000-0000-0000-0000-0000000000aa"
USER = "11111111-2222-3333-4444-555555555555"
FAST = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=20)


def notification(**over):
    base = {"subscriptionId": "s", "tenantId": TENANT, "changeType": "created",
            "clientState": SIGNER.sign(TENANT, USER), "resource": f"Users/{USER}/Messages/AAMk=",
            "resourceData": {"id": "AAMk="}, "subscriptionExpirationDateTime": "2026-12-01T00:00:00Z"}
    base.update(over)
    return base


def run_intake(body: bytes) -> tuple[FakeQueue, object]:
    queue = FakeQueue()
    try:
        result = asyncio.run(accept_notifications(body, SIGNER, queue))
    except MalformedNotification:
        assert queue.sent == [], "a refused body must enqueue nothing"
        return queue, None
    return queue, result


@FAST
@given(st.binary(max_size=2000))
def test_any_bytes_are_refused_or_parsed_never_crash(body):
    queue, result = run_intake(body)
    assert result is None or len(queue.sent) == len(result.enqueued)


@FAST
@given(st.lists(st.dictionaries(st.sampled_from(list(notification())), json_values, max_size=8), max_size=5))
def test_notification_shaped_json_only_enqueues_verified_jobs(items):
    queue, result = run_intake(json.dumps({"value": items}).encode())
    for _, text, _ in queue.sent:
        doc = json.loads(text)
        assert doc["v"] == 1 and doc["kind"] == "message" and doc["mailbox_id"] and doc["message_id"]
    if result is not None:
        valid = [i for i in items if i.get("clientState") == SIGNER.sign(TENANT, USER)
                 and i.get("tenantId") == TENANT]
        assert len(queue.sent) <= len(valid)


@FAST
@given(st.sampled_from(list(notification())), json_values)
def test_one_corrupted_field_of_a_valid_notification(field, value):
    queue, result = run_intake(json.dumps({"value": [notification(**{field: value})]}).encode())
    assert len(queue.sent) <= 1


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.binary(max_size=3000))
def test_mime_parser_and_mail_model_never_crash_on_any_bytes(raw):
    doc = mime_to_graph_message(raw)
    doc.setdefault("id", "x")
    mail = InboundMail.from_graph("m", doc)
    assert isinstance(mail.subject, str) and isinstance(mail.idempotency_key(), str)


header_names = st.sampled_from(["From", "To", "Subject", "Message-ID", "In-Reply-To", "References", "Date",
                                "Content-Type", "Content-Transfer-Encoding", "Auto-Submitted", "X-Weird"])


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.lists(st.tuples(header_names, st.text(max_size=60)), max_size=10), st.text(max_size=300))
def test_mime_with_arbitrary_headers_never_crashes(headers, body):
    raw = "".join(f"{k}: {v.replace(chr(10), ' ').replace(chr(13), ' ')}\r\n" for k, v in headers)
    raw += "\r\n" + body
    doc = mime_to_graph_message(raw.encode("utf-8", "replace"))
    doc.setdefault("id", "x")
    mail = InboundMail.from_graph("m", doc)
    mail.in_reply_to, mail.references  # noqa: B018 - parsing them must not crash


@FAST
@given(st.dictionaries(st.sampled_from(["subject", "from", "sender", "toRecipients", "receivedDateTime",
                                        "internetMessageId", "body", "internetMessageHeaders", "attachments",
                                        "replyTo", "parentFolderId"]), json_values, max_size=8))
def test_mail_model_from_arbitrary_graph_json_is_total_or_a_clear_error(doc):
    try:
        mail = InboundMail.from_graph("m", doc)
    except PermanentError as exc:
        # malformed Graph JSON: a clear, typed error the processor records as Failed (never a crash loop)
        assert str(exc) is not None
        return
    assert isinstance(mail.idempotency_key(), str)
