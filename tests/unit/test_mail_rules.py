"""The pure mail-to-CRM rules: classification, subjects and titles, the note, file names, routing,
sender matching levels, conversation keys and closed-ticket policies, and their settings."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import nh3
import pytest

from shared.config import ConfigError, MailRules, Settings
from shared.domain import matching, policy
from shared.domain import threading as conv
from shared.domain.mail import Address, AttachmentMeta, InboundMail
from shared.domain.model import TicketRef

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)


def mail(sender="anna@acme.example", headers=(), subject="Printer broken", body="hi", body_type="text",
         mid="<m1@acme.example>", odata_type="", to=(), cc=(), attachments=()) -> InboundMail:
    return InboundMail(mailbox_id="box", message_id="x", internet_message_id=mid, sender=Address(sender),
                       subject=subject, received_at=T0, body_content_type=body_type, body=body,
                       headers=tuple(headers), odata_type=odata_type, to=tuple(Address(a) for a in to),
                       cc=tuple(Address(a) for a in cc), attachments=tuple(attachments))


ATTACHED_MAIL = AttachmentMeta("a1", "Your invoice", "message/rfc822", 2048, kind="item")


# -- classification -------------------------------------------------------------------------------------
@pytest.mark.parametrize("headers,sender,subject,kind,reason", [
    ((("Content-Type", "multipart/report; report-type=delivery-status; boundary=x"),),
     "microsoftexchange329e@acme.example", "Undeliverable: x", policy.BOUNCE, "delivery report"),
    ((("Content-Type", "multipart/report; report-type=disposition-notification"),), "anna@acme.example",
     "Read: x", policy.BOUNCE, "read receipt"),
    ((("X-Failed-Recipients", "gone@acme.example"),), "anna@acme.example", "x", policy.BOUNCE, "X-Failed-Recipients"),
    ((), "MAILER-DAEMON@mail.acme.example", "x", policy.BOUNCE, "bounce sender"),
    ((("Auto-Submitted", "auto-notified"),), "anna@acme.example", "x", policy.AUTO_REPLY, "auto-notified"),
    ((("X-Auto-Response-Suppress", "All"),), "anna@acme.example", "x", policy.AUTO_REPLY, "Suppress"),
    ((("X-Autoreply", "yes"),), "anna@acme.example", "x", policy.AUTO_REPLY, "X-Autoreply"),
    ((("X-Loop", "helpdesk"),), "anna@acme.example", "x", policy.AUTO_REPLY, "X-Loop"),
    ((("Precedence", "list"),), "anna@acme.example", "x", policy.BULK, "Precedence: list"),
    ((("List-Id", "<news.vendor.example>"),), "news@vendor.example", "x", policy.BULK, "List-Id"),
    ((("Return-Path", "<>"),), "anna@acme.example", "x", policy.BOUNCE, "empty Return-Path"),
    ((), "no-reply+abc@saas.example", "x", policy.NO_REPLY, "no-reply"),
    ((), "bounce-1234@esp.example", "x", policy.NO_REPLY, "bounce"),
    ((), "donotreply@bank.example", "x", policy.NO_REPLY, "donotreply"),
    ((), "Support@Contoso.example", "x", policy.OWN, "own mailboxes"),
    ((), "", "x", policy.NO_SENDER, "no sender"),
    ((), "anna@acme.example", "Automatic reply: Printer broken", policy.AUTO_REPLY, "subject"),
    ((), "anna@acme.example", "Autosvar: Skrivaren", policy.AUTO_REPLY, "subject"),
    ((), "anna@acme.example", "Undeliverable: Printer broken", policy.BOUNCE, "delivery failure"),
])
def test_automated_mail_is_told_apart_with_its_reason(headers, sender, subject, kind, reason):
    verdict = policy.classify(mail(sender, headers, subject), frozenset({"support@contoso.example"}))
    assert verdict.automated and verdict.kind == kind and reason.lower() in verdict.reason.lower(), verdict


# Issue 15 item 5: automated mail that used to open tickets, one general rule per class.
@pytest.mark.parametrize("sender,headers,attachments,kind,reason", [
    # delivery failures of mobile/SMS gateways: post_master-style senders, plain multipart/mixed
    ("post_master@mms.operator.example", (("Content-Type", "multipart/mixed; boundary=x"),), (ATTACHED_MAIL,),
     policy.BOUNCE, "bounce sender (post_master)"),
    ("Post.Master@sms.gateway.example", (), (), policy.BOUNCE, "bounce sender"),
    ("mailer_daemon@old-mta.example", (), (), policy.BOUNCE, "bounce sender"),
    # Exchange's own NDRs mark themselves
    ("microsoftexchange329e71ec88ae@acme.example", (("X-MS-Exchange-Message-Is-Ndr", ""),), (), policy.BOUNCE,
     "X-MS-Exchange-Message-Is-Ndr"),
    # mailing-list servers' loop alerts and admin notices without List-*
    ("fml-admin@lists.partner.example", (("X-MLServer", "fml [fml 8.0]; post only"), ("X-ML-Name", "users")), (),
     policy.BULK, "mailing-list server (X-MLServer)"),
    ("users-owner@lists.partner.example", (("X-ML-Name", "users"),), (), policy.BULK, "X-ML-Name"),
    ("users-owner@lists.partner.example", (("X-Mailman-Version", "2.1.39"), ("X-List-Administrivia", "yes")), (),
     policy.BULK, "X-Mailman-Version"),
    ("users-owner@lists.partner.example", (("X-BeenThere", "users@lists.partner.example"),), (), policy.BULK,
     "X-BeenThere"),
    ("users-help@lists.partner.example", (("Mailing-List", "contact users-help@lists.partner.example; run by ezmlm"),),
     (), policy.BULK, "Mailing-List"),
    # abuse and complaint feedback
    ("fbl@isp.example", (("Content-Type", 'multipart/report; report-type="feedback-report"; boundary=x'),), (),
     policy.COMPLAINT, "feedback-report"),
    ("reports@abuse-network.example", (("X-ARF", "YES"),), (ATTACHED_MAIL,), policy.COMPLAINT, "X-ARF"),
    ("abuse@isp.example", (("Content-Type", "multipart/mixed; boundary=x"),), (ATTACHED_MAIL,), policy.COMPLAINT,
     "abuse/complaint report (abuse, with the reported message attached)"),
    ("abuse-reports@isp.example", (), (AttachmentMeta("a1", "headers.txt", "text/rfc822-headers", 900),),
     policy.COMPLAINT, "abuse/complaint report"),
])
def test_more_classes_of_automated_mail(sender, headers, attachments, kind, reason):
    verdict = policy.classify(mail(sender, headers, "Notice", attachments=attachments))
    assert verdict.automated and verdict.kind == kind and reason in verdict.reason, verdict


@pytest.mark.parametrize("mid,own", [
    ("<20261121.abc@mta.traml.example>", "mta.traml.example"),
    ("<x1@eu2.mta.traml.example>", "mta.traml.example"),  # a host under it
    ("<x1@MTA.TRAML.EXAMPLE.>", "mta.traml.example"),
    ("<x1@traml.example>", ""),  # the parent is not ours
    ("<x1@notmta.traml.example>", ""),
    ("<AM9PR04MB1@AM9PR04MB1.eurprd04.prod.outlook.com>", ""),
    ("", ""),
])
def test_a_message_id_of_our_own_sending_host_is_our_own_mail(mid, own):
    verdict = policy.classify(mail("team@acme.example", mid=mid), frozenset(), ("mta.traml.example",))
    if own:
        assert verdict.automated and verdict.kind == policy.OWN and own in verdict.reason
        assert policy.automated_note_lines(verdict)[0].startswith("Our own mail (Message-ID of our own sending host")
    else:
        assert not verdict.automated, verdict


def test_only_delivery_reports_thread_through_their_original():
    dsn = policy.classify(mail("MAILER-DAEMON@mx.partner.example", (
        ("Content-Type", "multipart/report; report-type=delivery-status; boundary=x"),)))
    receipt = policy.classify(mail(headers=(
        ("Content-Type", "multipart/report; report-type=disposition-notification"),)))
    arf = policy.classify(mail("fbl@isp.example", (("Content-Type", "multipart/report; report-type=feedback-report"),)))
    sms = policy.classify(mail("post_master@mms.operator.example"))
    ooo = policy.classify(mail(headers=(("Auto-Submitted", "auto-replied"),)))
    assert dsn.delivery_report and sms.delivery_report
    assert not receipt.delivery_report and not arf.delivery_report and not ooo.delivery_report


@pytest.mark.parametrize("sender,headers,attachments,subject", [
    ("abuse@isp.example", (), (), "We saw phishing claiming to be from you"),  # a person at an abuse desk writes
    ("abuse@isp.example", (), (AttachmentMeta("a1", "screenshot.png", "image/png", 900),), "Phishing"),
    ("anna@acme.example", (), (ATTACHED_MAIL,), "FW: Your invoice"),  # forwarded as attachment
    ("anna@acme.example", (), (), "Delivery failed for order 4711"),  # about goods, not mail
    ("post.office@acme.example", (), (), "Opening hours of the post office"),  # not post_master
    ("dan@contoso.example", (), (), "Our own colleague, on-premises Message-ID"),
])
def test_human_mail_stays_human_under_the_new_rules(sender, headers, attachments, subject):
    verdict = policy.classify(mail(sender, headers, subject, attachments=attachments,
                                   mid="<1234.5678@mail.contoso.example>"), frozenset(), ("mta.traml.example",))
    assert not verdict.automated, verdict


def test_calendar_responses_are_automated_but_invitations_are_not():
    event = "#microsoft.graph.eventMessage"
    assert policy.classify(mail(subject="Accepted: Service review", odata_type=event)).kind == policy.CALENDAR_RESPONSE
    assert not policy.classify(mail(subject="Service review", odata_type=event)).automated
    assert not policy.classify(mail(subject="Accepted: the offer, thanks")).automated  # not an event


@pytest.mark.parametrize("headers,subject", [
    ((("Auto-Submitted", "no"),), "Printer broken"),
    ((("X-Auto-Response-Suppress", "DR, RN, NRN"),), "Printer broken"),
    ((("X-Autoreply", "no"),), "x"),
    ((), "Out of office request for Friday"),
    ((), "RE: Automatic replies do not work"),
])
def test_human_mail_is_not_automated(headers, subject):
    assert not policy.classify(mail(headers=headers, subject=subject)).automated


# -- subjects, tags, titles -----------------------------------------------------------------------------
@pytest.mark.parametrize("subject,clean", [
    ("RE: AW: SV: WG: Fwd: Printer", "Printer"),
    ("Re[2]: Re^3: FW: Printer", "Printer"),
    ("VS: Vs: Tulostin", "Tulostin"),
    ("TR: Réf: RIF: R: Commande", "R: Commande"),
    ("[EXTERNAL] RE: Printer", "Printer"),
    ("Antw: Odp: ENC: RES: RV: YNT: x", "x"),
    ("Reply needed: budget", "Reply needed: budget"),
    ("Fwdx: keep", "Fwdx: keep"),
])
def test_reply_and_forward_prefixes_are_stripped(subject, clean):
    assert policy.clean_subject(subject) == clean


def test_ticket_tags_and_titles():
    assert policy.ticket_tags("RE: Budget [2024] for [1042] [1042]") == ["1042", "2024"]
    assert policy.ticket_tags("no tag [abc] [12a]") == []
    assert policy.ticket_title("RE: Budget [2024] for [1042]", strip_tags=["1042"]) == ("Budget [2024] for", False)
    assert policy.ticket_title("Budget [2024]", strip_tags=[]) == ("Budget [2024]", False)
    assert policy.ticket_title("  \x00Tab\there\u200b  ") == ("Tab here", False)
    assert policy.ticket_title("RE: [1042]", strip_tags=["1042"]) == ("(no subject)", False)
    title, cut = policy.ticket_title("Å" * 300, limit=128)
    assert cut and len(title) == 128 and title.endswith("…")


# -- sanitising and the note ----------------------------------------------------------------------------
def test_sanitiser_blocks_active_and_remote_content_and_resolves_cid_images():
    result = policy.sanitize(
        '<p onclick="x()">Hi<script>alert(1)</script><style>p{}</style></p>'
        '<img src="https://tracker.example/p.gif"><img src="//cdn.example/x.png"><img src="data:image/png;base64,AA">'
        '<img src="cid:logo@1" alt="logo"><img src="cid:missing@1" alt="gone">'
        '<a href="javascript:evil()">j</a><a href="/relative">r</a><a href="cid:logo@1">c</a>'
        '<a href="mailto:a@b.example">m</a><svg><circle/></svg><iframe src="https://x.example"></iframe>',
        {"<Logo@1>": "/api/manage/documents/do1"})
    out = result.html
    for bad in ("script", "alert", "onclick", "tracker", "cdn.example", "data:", "javascript", "/relative",
                "cid:", "<svg", "<iframe", "p{}"):
        assert bad not in out, bad
    assert 'src="/api/manage/documents/do1"' in out and 'href="mailto:a@b.example"' in out
    assert result.remote_blocked == 2 and result.cid_missing == 1  # data: is not remote, but not kept either


def test_a_plain_text_mail_in_an_html_note_is_escaped():
    note = policy.render_note(mail(body="a < b & <script>alert(1)</script>\nline 2"), "html")
    assert "<script>" not in note.text and "&lt;script&gt;" in note.text and "<br>" in note.text


def test_html_to_text_keeps_structure_and_links():
    text = policy.html_to_text('<html><head><title>T</title><style>x</style></head><body><p>One</p><p>Two<br>'
                               'Three</p><ul><li>a</li><li>b</li></ul><a href="https://x.example/d">docs</a>'
                               '<a href="https://y.example">https://y.example</a>&nbsp;&amp;</body></html>')
    assert text == "One\n\nTwo\nThree\n\n- a\n- b\ndocs <https://x.example/d>https://y.example &"


@pytest.mark.parametrize("fmt", ["html", "text"])
def test_a_long_note_is_cut_to_the_limit_with_the_original_kept(fmt):
    body = "".join(f"<p>Paragraph {i} with <b>bold</b> &amp; <a href='https://x.example/{i}'>a link</a></p>"
                   for i in range(400))
    note = policy.render_note(mail(body=body, body_type="html"), fmt, limit=4000,
                              header_lines=["Automatic message"], footer_lines=["Attachment not stored: x.iso"])
    assert note.truncated and len(note.text) <= 4000 and note.original == body and note.original_name == "message.html"
    assert "Automatic message" in note.text and "Attachment not stored: x.iso" in note.text
    assert "full text is in the document message.html" in note.text
    if fmt == "html":
        assert nh3.clean(note.text, tags=policy.ALLOWED_TAGS, attributes=policy.ALLOWED_ATTRIBUTES,
                         link_rel="noopener noreferrer nofollow") == note.text  # well-formed: every tag closed
        assert note.text.count("<p>") == note.text.count("</p>")
    short = policy.render_note(mail(body="<p>short</p>", body_type="html"), fmt, limit=4000)
    assert not short.truncated and "short" in short.text


def test_empty_bodies_say_so():
    assert "(empty message)" in policy.render_note(mail(body=""), "html").text
    assert policy.render_note(mail(body="  \n"), "text").text == "(empty message)"
    with pytest.raises(ValueError, match="note format"):
        policy.render_note(mail(), "pdf")


def test_referenced_cids():
    assert policy.referenced_cids('<img src="cid:Image001.png@01DA"><img src=\'cid:<x@y>\'>') == {
        "image001.png@01da", "x@y"}


# -- file names -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,safe", [
    ("räkning 2024.pdf", "räkning 2024.pdf"),
    ("請求書.pdf", "請求書.pdf"),
    ("../../etc/passwd", "passwd"),
    ("C:\\Users\\x\\report.docx", "report.docx"),
    ("CON.txt", "_CON.txt"),
    ("nul", "_nul"),
    ('a<b>c:"d|e?*.txt', "a_b_c_d_e_.txt"),
    ("...hidden", "hidden"),
    ("", "attachment"),
    ("\x00\x1f", "attachment"),
    ("tab\tname.txt", "tab name.txt"),
])
def test_safe_filenames(name, safe):
    assert policy.safe_filename(name) == safe


def test_long_file_names_keep_their_extension_and_fit_in_bytes():
    name = policy.safe_filename("å" * 300 + ".pdf", max_bytes=200)
    assert name.endswith(".pdf") and len(name.encode()) <= 200
    assert policy.unique_filenames(["a.pdf", "A.pdf", "a.pdf", "b", "b"]) == ["a.pdf", "A (2).pdf", "a (3).pdf",
                                                                             "b", "b (2)"]


# -- routing ----------------------------------------------------------------------------------------------
def test_routing_values_by_mailbox_and_recipient_alias():
    routing = {"values": {"helpdesktype": "support", "priority": "normal"},
               "by_recipient": {"Invoices@Contoso.example": {"helpdesktype": "invoice"}}}
    assert policy.routing_values(routing, mail(to=["support@contoso.example"])) == {
        "helpdesktype": "support", "priority": "normal"}
    assert policy.routing_values(routing, mail(to=["x@y.example"], cc=["invoices@contoso.example"])) == {
        "helpdesktype": "invoice", "priority": "normal"}
    assert policy.routing_values({}, mail()) == {} and policy.routing_values(None, mail()) == {}
    assert policy.routing_problems(routing) == []
    problems = policy.routing_problems({"helpdesktype": "x", "by_recipient": {"a@b": "invoice"}})
    assert any("unknown key 'helpdesktype'" in p for p in problems) and any("by_recipient" in p for p in problems)


# -- sender matching --------------------------------------------------------------------------------------
def test_sender_id_behaviours_map_to_lime_inbox_levels():
    assert matching.levels("PersonEmailDomain") == "abcde" and matching.levels("") == "abcde"
    assert matching.levels("PersonEmailExact") == "a" and matching.levels("CompanyEmailWebsite") == "abcd"
    with pytest.raises(ValueError, match="PersonEmailExact, CompanyEmailExact"):
        matching.levels("EmailDomain")


@pytest.mark.parametrize("domain,free", [
    ("gmail.com", True), ("GMAIL.com.", True), ("yahoo.co.uk", True), ("gmx.at", True), ("hotmail.se", True),
    ("outlook.com", True), ("icloud.com", True), ("web.de", True), ("", True),
    ("acme.com", False), ("outlook.acme.com", False), ("gmxtools.com", False), ("live.acme.co.uk", False),
])
def test_free_mail_domains(domain, free):
    assert matching.is_free_mail(domain) is free


def test_extra_free_mail_domains_and_website_domains():
    assert matching.is_free_mail("mail.isp.example", ["Mail.ISP.example"])
    assert matching.website_domain("https://www.Acme.se/kontakt?x=1") == "acme.se"
    assert matching.website_domain("acme.se") == "acme.se"
    assert matching.website_domain("http://user@shop.acme.se:8080/") == "shop.acme.se"
    assert matching.website_domain("www.se") == "www.se"
    assert matching.website_domain("not a url") == ""
    assert matching.unique(["a", "a"]) == "a" and matching.unique(["a", "b"]) == "" and matching.unique(["a", ""]) == ""


def test_contacts_of_a_ticket():
    ticket = TicketRef(id="hd1", number="1", person_id="pe1", company_id="co1")
    assert matching.is_contact(ticket, "pe1", "")
    assert matching.is_contact(ticket, "pe2", "co1")
    assert not matching.is_contact(ticket, "pe2", "co2")
    assert not matching.is_contact(ticket, "", "")
    assert not matching.is_contact(TicketRef(id="hd2", number="2", person_id="pe1"), "pe2", "")


# -- conversations and closed tickets ---------------------------------------------------------------------
def test_a_conversation_has_one_key_from_its_root():
    root = mail(mid="<root@acme.example>")
    reply = mail(mid="<r1@x.example>", headers=(("In-Reply-To", "<r0@x.example>"),
                                                ("References", "<ROOT@acme.example> <r0@x.example>")))
    reply_no_refs = mail(mid="<r2@x.example>", headers=(("In-Reply-To", "<root@acme.example>"),))
    other = mail(mid="<other@acme.example>")
    assert conv.thread_key(root) == conv.thread_key(reply) == conv.thread_key(reply_no_refs) != conv.thread_key(other)
    assert reply.thread_refs == ("<r0@x.example>", "<ROOT@acme.example>")
    no_id = mail(mid="")
    assert conv.thread_key(no_id) == no_id.idempotency_key()


def test_a_bounce_through_its_original_is_exempt_from_the_party_check():
    assert conv.party_check_applies(conv.BY_REFERENCES) and conv.party_check_applies(conv.BY_SUBJECT_TAG)
    assert not conv.party_check_applies(conv.BY_BOUNCE_ORIGINAL) and not conv.party_check_applies("")
    assert conv.BY_BOUNCE_ORIGINAL == "bounce-original"  # the value on ledger rows and in the step view


def test_successor_keys_name_the_ticket_and_its_closure():
    closed = TicketRef(id="hd1", number="1", status="done", closed_at=T0)
    assert conv.successor_key(closed) == conv.successor_key(TicketRef(id="hd1", number="1", closed_at=T0))
    assert conv.successor_key(closed) != conv.successor_key(TicketRef(id="hd1", number="1", closed_at=T0 + timedelta(1)))
    assert conv.successor_key(closed) != conv.successor_key(TicketRef(id="hd2", number="2", closed_at=T0))


def test_closed_ticket_policies():
    assert conv.closed_ticket_action("reopen", 0, T0, T0 + timedelta(days=400)) == conv.REOPEN
    assert conv.closed_ticket_action("", 0, T0, T0) == conv.REOPEN
    assert conv.closed_ticket_action("new", 0, T0, T0) == conv.NEW
    assert conv.closed_ticket_action("new_after_days", 7, T0, T0 + timedelta(days=6, hours=23)) == conv.REOPEN
    assert conv.closed_ticket_action("new_after_days", 7, T0, T0 + timedelta(days=7)) == conv.NEW
    assert conv.closed_ticket_action("new_after_days", 7, None, T0) == conv.NEW
    with pytest.raises(ValueError, match="closed_ticket_policy 'close'"):
        conv.closed_ticket_action("close", 0, T0, T0)
    with pytest.raises(ValueError, match="closed_ticket_days"):
        conv.check_policy("new_after_days", 0)


# -- settings ----------------------------------------------------------------------------------------------
BASE_ENV = {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "CLIENT_STATE_KEYS": "1:0123456789abcdef"}


def test_mail_rules_from_settings_with_defaults_and_overrides():
    assert Settings.from_env(BASE_ENV).mail_rules == MailRules()
    rules = Settings.from_env({**BASE_ENV, "NOTE_FORMAT": "TEXT", "NOTE_MAX_CHARS": "32000", "TITLE_MAX_CHARS": "200",
                               "ATTACHMENT_MAX_BYTES": "1048576", "ATTACHMENTS_INLINE": "none",
                               "FREE_MAIL_DOMAINS": "isp.example, @mail.isp2.example"}).mail_rules
    assert rules == MailRules("text", 32000, 200, 1048576, "none", ("isp.example", "mail.isp2.example"))
    assert MailRules().attachment_max_bytes == 50 * 1024 * 1024


def test_bad_mail_rules_fail_fast_naming_each_setting():
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**BASE_ENV, "NOTE_FORMAT": "pdf", "ATTACHMENTS_INLINE": "some", "NOTE_MAX_CHARS": "10",
                           "ATTACHMENT_MAX_BYTES": "lots", "FREE_MAIL_DOMAINS": "gmail"})
    message = str(info.value)
    for name in ("NOTE_FORMAT", "ATTACHMENTS_INLINE", "NOTE_MAX_CHARS", "ATTACHMENT_MAX_BYTES", "FREE_MAIL_DOMAINS"):
        assert name in message, name


def test_own_message_id_hosts_setting():
    rules = Settings.from_env({**BASE_ENV, "OWN_MESSAGE_ID_HOSTS": " MTA.traml.example., @helpdesk.contoso.example"})
    assert rules.mail_rules.own_message_id_hosts == ("mta.traml.example", "helpdesk.contoso.example")
    assert Settings.from_env(BASE_ENV).mail_rules.own_message_id_hosts == ()
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**BASE_ENV, "OWN_MESSAGE_ID_HOSTS": "eurprd04.prod.outlook.com, mail.gmail.com, not a host"})
    message = str(info.value)
    assert "OWN_MESSAGE_ID_HOSTS names eurprd04.prod.outlook.com, mail.gmail.com" in message
    assert "not a host name: not a host" in message


def test_attachment_metadata_and_graph_event_type_reach_the_mail_model():
    doc = {"id": "m1", "@odata.type": "#microsoft.graph.eventMessage", "subject": "Review",
           "from": {"emailAddress": {"address": "a@b.example"}}, "receivedDateTime": "2026-11-21T12:00:00.1234567Z",
           "body": {"contentType": "html", "content": "<p>x</p>"},
           "attachments": [{"@odata.type": "#microsoft.graph.itemAttachment", "id": "a1", "name": "Fwd",
                            "contentType": "message/rfc822", "size": 10, "isInline": False}]}
    parsed = InboundMail.from_graph("box", doc)
    assert parsed.is_event and parsed.attachments == (AttachmentMeta("a1", "Fwd", "message/rfc822", 10, False, "", "item"),)
    assert re.fullmatch(r"[0-9a-f]{40}", parsed.idempotency_key())
