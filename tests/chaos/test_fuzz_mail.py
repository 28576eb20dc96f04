"""Fuzzing the mail parser: any byte sequence as MIME (tools/sim/mime2graph, as Exchange would store
it), and any JSON in Graph's message shape, through InboundMail.from_graph and what the processor
does with the result before any I/O (classification, keys, title, note, thread tags).

A mail the parser cannot understand must be refused with a PermanentError (the processor records
it as Failed with the reason); anything else escaping is a crash. Seeded (derandomized, fixed
example counts) so the suite stays deterministic and fast.
"""
from __future__ import annotations

import email.policy
import json
from email.message import EmailMessage
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st

from shared.domain import policy, reports
from shared.domain.errors import PermanentError
from shared.domain.mail import InboundMail
from tools.sim.mime2graph import mime_to_graph_message

FUZZ = settings(max_examples=400, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
OWN = frozenset({"support@contoso.example"})

# text with lone surrogates too: JSON can carry "\\udcff", and json.loads makes it a str no UTF-8 encoder takes
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40) | st.text(
    st.sampled_from(["a", " ", "@", "<", ">", "[", "1", "é", "\udcff", "\ud800", "\udfff"]), max_size=24)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40) | any_text
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)
address = st.fixed_dictionaries({}, optional={"emailAddress": st.fixed_dictionaries(
    {}, optional={"address": json_scalars, "name": json_scalars}) | json_values})
graph_message = st.fixed_dictionaries({}, optional={
    "id": json_scalars, "subject": json_scalars, "internetMessageId": json_scalars,
    "receivedDateTime": st.sampled_from(["2026-11-21T11:55:00Z", "2026-11-21T11:55:00.1234567Z", "", "yesterday"])
    | json_scalars,
    "from": address | json_values, "sender": address | json_values,
    "toRecipients": st.lists(address | json_values, max_size=3) | json_values,
    "ccRecipients": st.lists(address, max_size=3) | json_values, "replyTo": st.lists(address, max_size=2),
    "body": st.fixed_dictionaries({}, optional={"contentType": st.sampled_from(["html", "text", "HTML"]) | json_scalars,
                                                "content": st.text(max_size=300) | any_text | json_scalars}) | json_values,
    "internetMessageHeaders": st.lists(st.fixed_dictionaries({}, optional={"name": json_scalars,
                                                                           "value": json_scalars}) | json_values,
                                       max_size=5) | json_values,
    "attachments": st.lists(st.fixed_dictionaries({}, optional={
        "id": json_scalars, "name": json_scalars, "contentType": json_scalars, "size": json_scalars,
        "isInline": json_scalars, "contentId": json_scalars, "@odata.type": json_scalars}) | json_values,
        max_size=3) | json_values,
    "parentFolderId": json_scalars, "conversationId": json_scalars, "categories": json_values,
    "@odata.type": json_scalars,
})


def _use(mail: InboundMail) -> None:
    """What the processor derives from a parsed mail before it talks to anyone."""
    mail.idempotency_key()
    verdict = policy.classify(mail, OWN, ("mta.traml.example",))
    policy.automated_note_lines(verdict)
    policy.ticket_tags(mail.subject)
    policy.ticket_title(mail.subject, 128)
    policy.render_note(mail, "html", 4000)
    policy.render_note(mail, "text", 4000)
    policy.body_excerpt(mail, 800)
    assert isinstance(verdict.automated, bool)
    mail.thread_refs, mail.thread_root, mail.content_type  # noqa: B018 - properties that parse headers


def _parse(doc: Any) -> InboundMail | None:
    try:
        return InboundMail.from_graph("box-1", doc)
    except PermanentError:
        return None  # refused with a reason: the processor records it as Failed


@FUZZ
@given(st.binary(max_size=3000))
def test_any_bytes_as_mime_parse_or_are_refused_never_crash(raw: bytes):
    doc = mime_to_graph_message(raw)
    json.dumps(doc, ensure_ascii=False).encode("utf-8")  # the simulator can serve it, as Graph would
    json.dumps(reports.parse_report(raw).summary(), ensure_ascii=False).encode("utf-8")
    mail = _parse(doc)
    if mail is not None:
        _use(mail)


MIME_PARTS = st.sampled_from([
    b"From: Anna <anna@customer.example>\r\n", b"From: =?utf-8?b?w6XDpMO2?= <\xff@x>\r\n", b"To: support@contoso.example\r\n",
    b"Subject: =?iso-8859-1?q?R=E4kning?= [1042]\r\n", b"Subject: " + b"x" * 500 + b"\r\n",
    b"Message-ID: <a@b>\r\n", b"Message-ID: <<>>\r\n", b"In-Reply-To: <x@y> <z@w>\r\n", b"References: \r\n",
    b"Auto-Submitted: auto-replied\r\n", b"Content-Type: multipart/mixed; boundary=\"b\"\r\n",
    b"Content-Type: text/html; charset=utf-16\r\n", b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Type: application/pdf; name*=utf-8''r%C3%A4kning.pdf\r\n", b"Content-Disposition: attachment\r\n",
    b"--b\r\n", b"--b--\r\n", b"\r\n", b"=C3=A5=\r\n", b"PGI+aGk8L2I+\r\n", b"<p>hi</p>\r\n", b"\x00\x01\xfe",
    b"Date: Sat, 21 Nov 2026 11:55:00 +0100\r\n", b"Date: not a date\r\n", b"Content-ID: <cid@1>\r\n",
])


@FUZZ
@given(st.lists(MIME_PARTS, max_size=25))
def test_mime_shaped_garbage_parses_or_is_refused(parts: list[bytes]):
    test_any_bytes_as_mime_parse_or_are_refused_never_crash.hypothesis.inner_test(b"".join(parts))


REPORT_PARTS = st.sampled_from([
    b"From: MAILER-DAEMON@mx.example\r\n",
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n",
    b"Content-Type: multipart/mixed; boundary=b\r\n", b"--b\r\n", b"--b--\r\n", b"\r\n",
    b"Content-Type: message/delivery-status\r\n", b"Content-Type: message/global-delivery-status\r\n",
    b"Content-Type: message/rfc822\r\n", b"Content-Type: text/rfc822-headers\r\n",
    b"Content-Type: message/global-headers\r\n", b"Content-Type: text/html\r\n",
    b"Content-Transfer-Encoding: base64\r\n", b"Final-Recipient: rfc822; a@b\r\n", b"Final-Recipient: ;\r\n",
    b"Action: failed\r\n", b"Action: \xff\r\n", b"Status: 5.1.1\r\n", b"Status: 4.4.7 (x)\r\n",
    b"Diagnostic-Code: smtp; 550 5.1.1 no\r\n", b"X-Original-Message-ID: <o@x>\r\n", b"Message-ID: <m@x>\r\n",
    b"In-Reply-To: <p@x>\r\n", b"References: <r1@x>\r\n <r2@x>\r\n", b"Subject: =?utf-8?b?w6XDpMO2?=\r\n",
    b"<gone@partner.example>:\r\n", b"--- Below this line is a copy of the message.\r\n", b"\xc3\xa5\xff\x00",
    b"<pre>Message-ID: &lt;q@x&gt;</pre>\r\n", b"X-Failed-Recipients: a@b, c@d\r\n",
])


@FUZZ
@given(st.lists(REPORT_PARTS, max_size=40))
def test_report_shaped_garbage_is_read_as_some_report_never_a_crash(parts: list[bytes]):
    raw = b"".join(parts)
    report = reports.parse_report(raw, truncated=True)
    assert all(ref.startswith("<") and ref.endswith(">") for ref in report.original_refs)
    assert report.outcome in (reports.FAILED, reports.DELAYED, reports.DELIVERED, reports.UNKNOWN)
    json.dumps(report.summary(), ensure_ascii=False).encode("utf-8")  # storable on the ledger row
    again = reports.DeliveryReport.from_summary(report.summary())
    assert again.note_lines() == report.note_lines()
    reports.unthreaded_reason("delivery report", report)


@FUZZ
@given(graph_message)
def test_any_graph_message_json_parses_or_is_refused(doc: dict):
    mail = _parse(doc)
    if mail is not None:
        _use(mail)


@FUZZ
@given(st.text(max_size=200), st.text(max_size=200), st.lists(st.tuples(st.text(max_size=20), st.text(max_size=60)),
                                                                max_size=6))
def test_messages_the_email_package_writes_round_trip(subject: str, body: str, headers: list[tuple[str, str]]):
    msg = EmailMessage(policy=email.policy.default.clone(raise_on_defect=False))
    msg["From"] = "Anna <anna@customer.example>"
    msg["To"] = "support@contoso.example"
    try:
        msg["Subject"] = subject
        for name, value in headers:
            msg[name] = value
        msg.set_content(body)
        raw = bytes(msg)
    except (ValueError, TypeError, LookupError, UnicodeError):
        return  # the email package refuses to write it: no mail server would deliver it either
    mail = _parse(mime_to_graph_message(raw))
    assert mail is not None
    _use(mail)
