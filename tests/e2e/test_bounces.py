"""Issue 15 items 4 and 5 end to end through the real app (dev host), Azurite, the Graph simulator and
TRAML's simulator: a ticket mail goes out (the TRAML autoreply, an agent's reply), its bounce comes back
carrying it, and the bounce lands as history on that ticket: the closed ticket stays closed, no
autoreply goes out, a delayed report says delayed; a bounce costs three Graph requests; our own mail
come back under a stranger's From is recognised by its Message-ID host (OWN_MESSAGE_ID_HOSTS)."""
from __future__ import annotations

from email.message import EmailMessage
from email.utils import format_datetime
from datetime import datetime, timezone
from urllib.parse import quote

import pytest

from tests.fixtures.mail import mime as m
from tests.support.stack import Stack, traml_with_template
from tools.sim.traml import DEMO_API_KEY

SUPPORT = "support@contoso.example"
ANNA = "Anna Andersson <anna.andersson@acme.example>"
TEMPLATE = "Thanks"
OUR_HOST = "mta.traml.example"


@pytest.fixture(scope="module")
def traml():
    with traml_with_template(TEMPLATE) as sim:
        yield sim


@pytest.fixture(scope="module")
def stack(traml):
    with Stack(extra_settings={"TRAML_BASE_URL": traml.https_url + traml.base_path, "TRAML_API_KEY": DEMO_API_KEY,
                               "OWN_MESSAGE_ID_HOSTS": OUR_HOST}) as s:
        s.add_mailbox(SUPPORT, autoreply={"enabled": True, "template": TEMPLATE})
        yield s


def deliver(stack: Stack, raw: bytes):
    return stack.deliver_and_wait(SUPPORT, raw)


def as_sent_by_traml(record: dict, message_id: str) -> bytes:
    """The autoreply as the transactional mail service put it on the wire: what TRAML was asked to send
    (From, To, Subject, our headers: In-Reply-To/References of the customer's mail, Auto-Submitted),
    with the Message-ID its MTA gives every mail (TRAML does not return it)."""
    msg = EmailMessage()
    msg["From"] = f"{record.get('FromName') or 'Support'} <{record['FromEmail']}>"
    msg["To"] = record["RecipientEmail"]
    msg["Subject"] = record["Subject"]
    msg["Date"] = format_datetime(datetime.now(timezone.utc))
    msg["Message-ID"] = message_id
    for name, value in record["Headers"].items():
        msg[name] = value
    msg.set_content(record["Text"] or "Your ticket")
    return bytes(msg)


def graph_calls(stack: Stack, message_id: str) -> list[str]:
    entries = stack.graph.requests.entries(path_regex=quote(message_id, safe="") + "|" + message_id)
    return [f"{e['method']} {e['path'].rsplit(message_id, 1)[-1] or '/'}" for e in entries]


def test_the_bounce_of_a_ticket_mail_lands_on_its_closed_ticket_without_reopening_or_autoreply(stack, traml):
    request = m.outlook_id("e2e-bounces/request")
    _, row = deliver(stack, m.outlook(ANNA, SUPPORT, "Invoice missing", "Invoice 4711 never arrived.",
                                      message_id=request))
    number = row.data["ticket_number"]
    autoreply = stack.wait_until(lambda: next((r for r in traml.sent_mail() if f"[{number}]" in r["Subject"]), None),
                                 what="autoreply sent")
    assert autoreply["Headers"]["In-Reply-To"] == request
    closed = stack.http.patch(f"/api/manage/tickets/{number}", json={"status": "done"})
    assert closed.status_code == 200 and closed.json()["ticket"]["status"] == "done"
    sends = len(traml.sent_mail())

    # 1. the autoreply bounces for good: the DSN carries it, and it names the customer's mail
    original = as_sent_by_traml(autoreply, f"<500001.{number}@{OUR_HOST}>")
    bounce_id, bounce = deliver(stack, m.ndr(
        "Mail Delivery System <MAILER-DAEMON@mx.acme.example>", SUPPORT, "Undelivered Mail Returned to Sender",
        "I'm sorry to have to inform you that your message could not be delivered.", "anna.andersson@acme.example",
        original, message_id=m.server_id("e2e-bounces/dsn", "mx.acme.example"), status="5.2.2",
        diagnostic="smtp; 552 5.2.2 Mailbox full"))
    assert bounce.status == "processed" and bounce.data["ticket_number"] == number
    assert bounce.data["action"] == "history-only" and bounce.data["autoreply"] is False
    assert bounce.data["plan"]["threaded_by"] == "bounce-original"
    detail = stack.ticket(number)
    assert detail["ticket"]["status"] == "done"  # not reopened
    note = next(h["note"] for h in detail["history"] if h["id"] == bounce.data["history_id"])
    assert "Delivery failed permanently to anna.andersson@acme.example: 5.2.2 (552 5.2.2 Mailbox full)" in note
    assert not [d for d in detail["documents"] if d.get("filename", "").endswith((".eml", ".bin"))]
    # three Graph requests: the message, the start of its MIME, the mailbox action
    assert graph_calls(stack, bounce_id) == ["GET /", "GET /$value", "DELETE /"], graph_calls(stack, bounce_id)
    view = stack.http.get(f"/api/manage/messages/{quote(bounce_id, safe='')}").json()
    assert view["decision"]["threaded_by"] == "bounce-original" and view["ticket"]["action"] == "history-only"

    # 2. an agent's reply from the support mailbox is delayed: Exchange reports it with its headers
    reply = m.outlook(f"Support <{SUPPORT}>", ANNA, f"RE: Invoice missing [{number}]", "Here it is again.",
                      message_id=m.outlook_id("e2e-bounces/agent-reply"), in_reply_to=request, references=[request])
    _, delayed = deliver(stack, m.ndr(
        "Microsoft Outlook <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@contoso.example>", SUPPORT,
        f"Delivery delayed:RE: Invoice missing [{number}]", "Delivery is delayed to these recipients or groups.",
        "anna.andersson@acme.example", reply, message_id=m.outlook_id("e2e-bounces/delayed"), headers_only=True,
        action="delayed", status="4.4.7", diagnostic="smtp; 451 4.4.7 Message delayed"))
    assert delayed.status == "processed" and delayed.data["ticket_number"] == number
    detail = stack.ticket(number)
    assert detail["ticket"]["status"] == "done"
    note = next(h["note"] for h in detail["history"] if h["id"] == delayed.data["history_id"])
    assert "Delivery delayed to anna.andersson@acme.example: 4.4.7" in note and "permanently" not in note

    # 3. a bounce of a mail on no ticket opens none: Skipped, with the reason
    _, lost = deliver(stack, m.ndr(
        "Mail Delivery System <MAILER-DAEMON@mx.partner.example>", SUPPORT, "Undelivered Mail Returned to Sender",
        "Sorry.", "nobody@partner.example", m.plain(SUPPORT, "nobody@partner.example", "Hello", "x",
                                                   message_id="<not-a-ticket-mail@contoso.example>"),
        message_id=m.server_id("e2e-bounces/lost", "mx.partner.example")))
    assert lost.status == "skipped" and "a permanent failure of a mail that is on no ticket" in lost.skip_reason
    # the request, the autoreply's sentemail note, the bounce, the delayed report: nothing for the lost one
    assert len(stack.ticket(number)["history"]) == 4

    # 4. the autoreply itself, come back through a group that rewrote From and dropped Auto-Submitted
    redirected = original.replace(b"Auto-Submitted: auto-replied\n", b"").replace(
        f"From: {autoreply.get('FromName') or 'Support'} <{SUPPORT}>".encode(), b"From: Acme Team <team@acme.example>")
    assert b"Auto-Submitted" not in redirected and b"team@acme.example" in redirected
    _, ours = deliver(stack, redirected)
    # ours, though nothing else says so: it threads (its In-Reply-To is the request) and is kept as
    # history only, like every automated mail on a ticket, and is never answered
    assert ours.status == "processed" and ours.data["automated"] == f"Message-ID of our own sending host ({OUR_HOST})"
    assert ours.data["action"] == "history-only" and ours.data["autoreply"] is False
    assert stack.ticket(number)["ticket"]["status"] == "done"
    assert len(traml.sent_mail()) == sends  # nothing of this was answered
