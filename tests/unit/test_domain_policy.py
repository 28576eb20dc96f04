"""Auto-reply classification, subject handling and sanitising."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from shared.domain.mail import Address, InboundMail
from shared.domain.policy import classify, clean_subject, sanitize_html, ticket_tag, ticket_title


def mail(sender="anna@customer.example", headers=(), subject="Printer broken") -> InboundMail:
    return InboundMail(mailbox_id="m", message_id="x", internet_message_id="<a@b>", sender=Address(sender),
                       subject=subject, received_at=datetime.now(timezone.utc), body_content_type="text",
                       body="hi", headers=tuple(headers))


@pytest.mark.parametrize("headers,sender", [
    ((("Auto-Submitted", "auto-replied"),), "anna@customer.example"),
    ((("X-Auto-Response-Suppress", "All"),), "anna@customer.example"),
    ((("Precedence", "bulk"),), "anna@customer.example"),
    ((("List-Unsubscribe", "<mailto:x>"),), "anna@customer.example"),
    ((("Return-Path", "<>"),), "anna@customer.example"),
    ((), "MAILER-DAEMON@customer.example"),
    ((), "no-reply@customer.example"),
    ((), "support@ours.example"),
])
def test_automated_mail_is_recognised(headers, sender):
    assert classify(mail(sender, headers), frozenset({"support@ours.example"})).automated


def test_human_mail_is_not_automated():
    assert not classify(mail(headers=(("Auto-Submitted", "no"),))).automated


def test_subject_prefixes_and_tags():
    assert clean_subject("RE: AW: SV: WG: Fwd: Printer") == "Printer"
    assert ticket_tag("Re: Printer broken [1042]") == "1042"
    assert ticket_tag("Budget [2024] for [1042]") == "1042"
    assert ticket_tag("no tag") is None
    assert ticket_title("Re: Printer broken [1042]") == ("Printer broken", False)
    title, truncated = ticket_title("x" * 300)
    assert truncated and len(title) == 128


def test_sanitiser_blocks_scripts_and_remote_content_and_maps_cid():
    out = sanitize_html('<p onclick="x()">Hi<script>alert(1)</script><img src="https://tracker/p.gif">'
                        '<img src="cid:logo@1"><a href="javascript:evil()">x</a></p>', {"logo@1": "/doc/7"})
    assert "script" not in out and "onclick" not in out and "tracker" not in out and "javascript" not in out
    assert 'src="/doc/7"' in out
