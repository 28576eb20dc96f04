"""Delivery reports (shared/domain/reports.py): which message a bounce reports on and what happened,
from every shape the corpus's mail servers write: RFC 3464 with the original or only its headers,
Gmail's X-Original-Message-ID, Exchange's HTML "Original message headers", qmail's quoted copy, an
SMS gateway's multipart/mixed, RFC 6533's global variants; cut short, or garbage."""
from __future__ import annotations

import json
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest

from shared.domain import reports
from shared.domain.reports import DELAYED, DELIVERED, FAILED, UNKNOWN, DeliveryReport, parse_report
from tests.fixtures.mail import mime as m

CUSTOMER_MAIL = "<c1@acme.example>"
REPLY_ID = m.outlook_id("reports/agent-reply")
DAEMON = "Mail Delivery System <MAILER-DAEMON@mail.partner.example>"
SUPPORT = "support@contoso.example"


def agent_reply(to: str = "anna.andersson@acme.example") -> bytes:
    """What the support mailbox sent (an agent's reply on ticket 1001): the mail that bounces."""
    return m.outlook(f"Support <{SUPPORT}>", to, "RE: Printer broken [1001]", "We replaced the toner.",
                     message_id=REPLY_ID, in_reply_to=CUSTOMER_MAIL, references=["<c0@acme.example>", CUSTOMER_MAIL])


def test_a_dsn_with_the_original_attached_names_its_message_ids_and_a_permanent_failure():
    report = parse_report(m.ndr(DAEMON, SUPPORT, "Undelivered Mail Returned to Sender", "I'm sorry to inform you",
                                "anna.andersson@acme.example", agent_reply(), message_id="<b1@partner.example>"))
    assert report.original_message_id == REPLY_ID and report.source == "message/rfc822"
    # its own id first, then its parent, then the rest of the thread (newest first)
    assert report.original_refs == (REPLY_ID, CUSTOMER_MAIL, "<c0@acme.example>")
    assert report.outcome == FAILED and report.original_subject == "RE: Printer broken [1001]"
    assert report.note_lines()[0] == ("Delivery failed permanently to anna.andersson@acme.example: 5.1.1 "
                                      "(550 5.1.1 RESOLVER.ADR.RecipNotFound; not found)")
    assert report.note_lines()[1] == f'The report is about "RE: Printer broken [1001]" ({REPLY_ID}).'


def test_only_the_originals_headers_are_enough():
    report = parse_report(m.ndr(DAEMON, SUPPORT, "Undelivered Mail Returned to Sender", "Sorry.",
                                "anna.andersson@acme.example", agent_reply(), message_id="<b2@partner.example>",
                                headers_only=True))
    assert report.source == "text/rfc822-headers" and report.original_refs[0] == REPLY_ID


def test_a_delayed_dsn_says_delayed_not_failed():
    report = parse_report(m.ndr("postmaster@contoso.example", SUPPORT, "Delivery delayed: RE: Printer broken [1001]",
                                "Delivery is delayed to these recipients or groups.", "slow@partner.example",
                                agent_reply("slow@partner.example"), message_id="<d1@contoso.example>",
                                action="delayed", status="4.4.7", diagnostic="smtp; 451 4.4.7 Message delayed"))
    assert report.outcome == DELAYED
    assert report.note_lines()[0].startswith("Delivery delayed to slow@partner.example: 4.4.7 (451 4.4.7")
    assert not any("permanently" in line for line in report.note_lines())


def test_a_status_without_an_action_is_judged_by_its_class():
    assert reports.RecipientStatus("a@x", "", "5.2.2").outcome == FAILED
    assert reports.RecipientStatus("a@x", "", "4.2.2").outcome == DELAYED
    assert reports.RecipientStatus("a@x", "relayed", "2.0.0").outcome == DELIVERED
    assert reports.RecipientStatus("a@x", "failed", "4.4.7").outcome == FAILED  # the server gave up
    assert reports.RecipientStatus("a@x").outcome == UNKNOWN


def test_gmails_x_original_message_id_stands_in_for_a_missing_original():
    report = parse_report(m.ndr("Mail Delivery Subsystem <mailer-daemon@googlemail.com>", SUPPORT,
                                "Delivery Status Notification (Failure)", "Address not found", "gone@gmail.com", None,
                                message_id="<g1@mx.google.com>", x_original_message_id=REPLY_ID))
    assert report.original_refs == (REPLY_ID,) and report.source == "X-Original-Message-ID"
    assert report.note_lines()[-1] == f"The report is about a mail ({REPLY_ID})."


def test_exchanges_html_original_message_headers_are_read_from_the_text():
    html = ("<html><body><p><b>Your message to gone@acme.example couldn't be delivered.</b></p>"
            "<p>Diagnostic information for administrators:</p><p>Remote Server returned '550 5.1.10 "
            "RESOLVER.ADR.RecipientNotFound'</p><p>Original message headers:</p><pre>Received: from AM9PR04MB1234 "
            f"(2603:10a6::1) by AM9PR04MB1234\n with HTTPS; Sat, 21 Nov 2026 11:55:00 +0000\nMessage-ID: {REPLY_ID}"
            f"\nIn-Reply-To: {CUSTOMER_MAIL}\nReferences: &lt;c0@acme.example&gt;\n {CUSTOMER_MAIL}\n"
            "Subject: RE: Printer broken [1001]\n</pre></body></html>").replace(f"{REPLY_ID}", REPLY_ID.replace(
                "<", "&lt;").replace(">", "&gt;")).replace(CUSTOMER_MAIL, "&lt;c1@acme.example&gt;")
    report = parse_report(m.ndr("Microsoft Outlook <MicrosoftExchange329e71ec88ae@contoso.example>", SUPPORT,
                                "Undeliverable: RE: Printer broken [1001]", "Your message couldn't be delivered.",
                                "gone@acme.example", None, message_id="<x1@contoso.example>", html=html))
    assert report.source == "text" and report.original_refs == (REPLY_ID, CUSTOMER_MAIL, "<c0@acme.example>")
    assert report.outcome == FAILED and report.original_subject == "RE: Printer broken [1001]"


def test_a_qmail_bounce_quotes_the_original_after_its_marker():
    raw = m.text_bounce("MAILER-DAEMON@mx.partner.example", SUPPORT, "failure notice",
                        "Hi. This is the qmail-send program at mx.partner.example.\nI'm afraid I wasn't able to "
                        "deliver your message to the following addresses.\nThis is a permanent error; I've given up. "
                        "Sorry it didn't work out.\n\n<gone@partner.example>:\nSorry, no mailbox here by that name. "
                        "(#5.1.1)", agent_reply("gone@partner.example"), message_id="<q1@mx.partner.example>")
    report = parse_report(raw)
    assert report.source == "text" and report.original_refs[:2] == (REPLY_ID, CUSTOMER_MAIL)
    assert report.outcome == FAILED
    assert report.note_lines()[0] == ("Delivery failed permanently to gone@partner.example: 5.1.1 (Sorry, no mailbox "
                                      "here by that name. (#5.1.1))")


def test_an_sms_gateways_multipart_mixed_bounce_names_the_number_it_could_not_reach():
    raw = m.mixed_with_message("post_master@mms.operator.example", SUPPORT, "Message not delivered",
                               "Your message to 46701234567@sms.operator.example could not be delivered: the number "
                               "is not in service.", agent_reply("46701234567@sms.operator.example"),
                               message_id="<s1@mms.operator.example>")
    report = parse_report(raw)
    assert report.original_refs[0] == REPLY_ID and report.outcome == FAILED
    assert report.note_lines()[0] == "Delivery failed permanently to 46701234567@sms.operator.example"


def test_delay_wording_in_a_text_bounce_is_a_delay_unless_the_server_gave_up():
    delayed = m.text_bounce("MAILER-DAEMON@mx.partner.example", SUPPORT, "Warning: message delayed",
                            "This is a warning message only; you do not need to resend your message.\n"
                            "<slow@partner.example>: connect to mx.partner.example: Connection timed out (4.4.1)",
                            agent_reply("slow@partner.example"), message_id="<w1@mx.partner.example>")
    assert parse_report(delayed).outcome == DELAYED
    gave_up = m.text_bounce("MAILER-DAEMON@mx.partner.example", SUPPORT, "failure notice",
                            "Sorry, I wasn't able to establish an SMTP connection. (#4.4.1)\nI'm not going to try "
                            "again; this message has been in the queue too long.", agent_reply(),
                            message_id="<w2@mx.partner.example>")
    assert parse_report(gave_up).outcome == FAILED


def test_rfc6533_global_delivery_status_and_global_headers():
    raw = (f"From: MAILER-DAEMON@mx.partner.example\r\nTo: {SUPPORT}\r\nSubject: Undelivered\r\n"
           "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=global-delivery-status; boundary=b\r\n"
           "\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nDelivery failed.\r\n"
           "--b\r\nContent-Type: message/global-delivery-status\r\n\r\nReporting-MTA: dns; mx.partner.example\r\n"
           "\r\nFinal-Recipient: utf-8; jörg@müller.example\r\nAction: failed\r\nStatus: 5.1.1\r\n"
           "Diagnostic-Code: smtp; 550 5.1.1 unknown\r\n\r\n"
           f"--b\r\nContent-Type: message/global-headers\r\n\r\nFrom: {SUPPORT}\r\nMessage-ID: {REPLY_ID}\r\n"
           f"In-Reply-To: {CUSTOMER_MAIL}\r\nSubject: Svar på frågan\r\n\r\n--b--\r\n").encode("utf-8")
    report = parse_report(raw)
    assert report.recipients[0].address == "jörg@müller.example" and report.outcome == FAILED
    assert report.original_refs == (REPLY_ID, CUSTOMER_MAIL) and report.source == "message/global-headers"
    assert report.original_subject == "Svar på frågan"
    json.dumps(report.summary(), ensure_ascii=False).encode("utf-8")  # storable: no surrogate escapes


def test_several_recipients_each_outcome_on_its_own_line():
    msg = MIMEMultipart("report", report_type="delivery-status")
    msg["From"], msg["Subject"] = DAEMON, "Delivery Status Notification"
    msg.attach(MIMEText("Some recipients failed.", "plain"))
    dsn = MIMEBase("message", "delivery-status")
    blocks = [Message() for _ in range(4)]
    blocks[0]["Reporting-MTA"] = "dns; mx.partner.example"
    for block, (who, action, status) in zip(blocks[1:], [("a@x.example", "failed", "5.1.1"),
                                                         ("b@x.example", "delayed", "4.2.2"),
                                                         ("c@x.example", "failed", "5.2.1")]):
        block["Final-Recipient"], block["Action"], block["Status"] = f"rfc822;{who}", action, status
    dsn.set_payload(blocks)
    msg.attach(dsn)
    lines = parse_report(msg.as_bytes()).note_lines()
    assert lines == ["Delivery failed permanently to a@x.example, c@x.example: 5.1.1",
                     "Delivery delayed to b@x.example: 4.2.2; the sending server keeps trying"]


def test_a_report_cut_short_still_yields_the_originals_headers_but_not_what_was_never_read():
    raw = m.ndr(DAEMON, SUPPORT, "Undelivered Mail Returned to Sender", "Sorry.", "anna.andersson@acme.example",
                m.outlook(f"Support <{SUPPORT}>", "anna.andersson@acme.example", "RE: Logs [1001]", "Logs.",
                          message_id=REPLY_ID, attachments=[("dump.bin", "application/octet-stream",
                                                             m.blob(600_000, "dump"))]),
                message_id="<b3@partner.example>")
    cut = raw[:reports.MAX_REPORT_BYTES]
    assert len(raw) > len(cut)
    report = parse_report(cut, truncated=True)
    assert report.original_message_id == REPLY_ID and report.truncated and report.outcome == FAILED
    early = raw[:raw.index(b"Content-Type: message/delivery-status")]
    assert parse_report(early, truncated=True).original_refs == ()


@pytest.mark.parametrize("raw", [b"", b"\x00\xff" * 50, b"Content-Type: multipart/report; boundary=x\r\n\r\n--x\r\n",
                                 b"Content-Type: message/delivery-status\r\n\r\nFinal-Recipient: ;\r\nStatus: 9.9",
                                 b"Content-Type: multipart/mixed; boundary=a\r\n\r\n" + b"--a\r\n" * 5000])
def test_garbage_is_an_empty_report_not_an_error(raw):
    report = parse_report(raw)
    assert isinstance(report, DeliveryReport) and report.original_refs == ()
    json.dumps(report.summary())


def test_the_ledger_summary_round_trips():
    report = parse_report(m.ndr(DAEMON, SUPPORT, "Undelivered", "Sorry.", "anna.andersson@acme.example",
                                agent_reply(), message_id="<b4@partner.example>"))
    again = DeliveryReport.from_summary(json.loads(json.dumps(report.summary())))
    assert again.note_lines() == report.note_lines() and again.original_refs == report.original_refs
    assert DeliveryReport.from_summary("nonsense").note_lines() == [
        "Delivery problem reported (the report does not say whether it is final)"]


def test_the_skip_reason_says_what_was_reported_without_addresses():
    with_original = parse_report(m.ndr(DAEMON, SUPPORT, "Undelivered", "Sorry.", "anna.andersson@acme.example",
                                       agent_reply(), message_id="<b5@partner.example>"))
    reason = reports.unthreaded_reason("delivery report (multipart/report)", with_original)
    assert reason == ("automated mail (delivery report (multipart/report)) that belongs to no ticket: it reports "
                      "a permanent failure of a mail that is on no ticket")
    assert "@" not in reason
    bare = reports.unthreaded_reason("bounce sender (mailer-daemon)", DeliveryReport())
    assert bare.endswith("it reports a delivery problem and carries no original message to thread by")
    assert reports.unthreaded_reason("X-Loop", None) == "automated mail (X-Loop) that belongs to no ticket"
