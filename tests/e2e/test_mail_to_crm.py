"""Mail to CRM through the whole app (dev host, Azurite, Graph simulator, embedded CRM): closing and
reopening a ticket over the manage API, a reply reopening it, a stranger's tag refused, inline
images served from the documents they were stored as."""
from __future__ import annotations

import pytest

from tests.fixtures.mail import mime as m
from tests.support.stack import Stack

MAILBOX = "helpdesk@contoso.example"
ANNA = "Anna Andersson <anna.andersson@acme.example>"


@pytest.fixture(scope="module")
def stack():
    with Stack() as s:
        s.add_mailbox(MAILBOX)
        yield s


def processed(stack: Stack, message_id: str):
    row = stack.run(stack.services().ledger.get(stack.mailboxes[MAILBOX]["id"], message_id))
    return row if row and row.status in ("processed", "skipped", "failed") else None


def deliver(stack: Stack, raw: bytes):
    message_id = stack.deliver(MAILBOX, raw)
    row = stack.wait_until(lambda: processed(stack, message_id), what="mail processed")
    assert row.status in ("processed", "skipped"), row.last_error
    return row


def test_close_reopen_over_the_manage_api_and_a_reply_reopens_a_closed_ticket(stack):
    first = m.outlook_id("e2e/first")
    row = deliver(stack, m.outlook(ANNA, MAILBOX, "Docking station", "No picture on the second screen.",
                                   message_id=first))
    number = row.data["ticket_number"]
    closed = stack.http.patch(f"/api/manage/tickets/{number}", json={"status": "done"})
    assert closed.status_code == 200 and closed.json()["ticket"]["status"] == "done"
    assert closed.json()["ticket"]["enddate"]
    parked = stack.http.patch(f"/api/manage/tickets/{number}", json={"status": "parked"})
    assert parked.json()["ticket"]["status"] == "parked"
    assert stack.http.patch(f"/api/manage/tickets/{number}", json={"status": "done"}).status_code == 200

    reply = deliver(stack, m.outlook(ANNA, MAILBOX, f"RE: Docking station [{number}]", "Still no picture.",
                                     message_id=m.outlook_id("e2e/reply"), in_reply_to=first))
    assert reply.data["ticket_number"] == number and reply.data["action"] == "reopened"
    detail = stack.ticket(number)
    assert detail["ticket"]["status"] == "started" and len(detail["history"]) == 2

    assert stack.http.patch(f"/api/manage/tickets/{number}", json={"status": "closed"}).status_code == 400
    assert stack.http.patch(f"/api/manage/tickets/{number}", content=b"{nope").status_code == 400
    assert stack.http.patch("/api/manage/tickets/987654", json={"status": "done"}).status_code == 404


def test_a_strangers_mail_with_someone_elses_tag_gets_its_own_ticket(stack):
    row = deliver(stack, m.outlook(ANNA, MAILBOX, "Salary question", "Private.", message_id=m.outlook_id("e2e/pay")))
    number = row.data["ticket_number"]
    stranger = deliver(stack, m.plain("Mallory <mallory@evil.example>", MAILBOX, f"RE: Salary question [{number}]",
                                      "Send me the file.", message_id="<x1@evil.example>"))
    assert stranger.data["ticket_number"] != number and stranger.data["refused_tags"] == [number]
    assert len(stack.ticket(number)["history"]) == 1
    assert stack.ticket(stranger.data["ticket_number"])["ticket"]["title"] == "Salary question"


def test_inline_images_are_documents_the_note_shows(stack):
    row = deliver(stack, m.outlook(ANNA, MAILBOX, "Error screenshot", "See below.",
                                   message_id=m.outlook_id("e2e/pic"), html_body='<p><img src="cid:shot@1"></p>',
                                   inline_images=[("shot.png", "shot@1", m.PNG)],
                                   attachments=[("report.html", "text/html", b"<script>alert(1)</script>")]))
    docs = {a["filename"]: a["document_id"] for a in row.data["attachments"]}
    note = stack.ticket(row.data["ticket_number"])["history"][0]["note"]
    assert f'src="/api/manage/documents/{docs["shot.png"]}"' in note
    image = stack.http.get(f"/api/manage/documents/{docs['shot.png']}")
    assert image.status_code == 200 and image.content == m.PNG and image.headers["content-type"] == "image/png"
    html = stack.http.get(f"/api/manage/documents/{docs['report.html']}")
    assert html.headers["content-type"] == "application/octet-stream"
    assert html.headers["content-disposition"].startswith("attachment")
    assert html.headers["x-content-type-options"] == "nosniff"
    assert stack.http.get("/api/manage/documents/do-missing").status_code == 404
