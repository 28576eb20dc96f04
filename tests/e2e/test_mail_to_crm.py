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


def deliver(stack: Stack, raw: bytes):
    return stack.deliver_and_wait(MAILBOX, raw)[1]


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


def test_a_mailbox_that_keeps_originals_offers_each_mail_as_eml_for_download(stack):
    """store_original set over the manage API; the mail arrives as MIME through Graph's notification;
    its .eml is in the ticket's documents with a url that downloads it as message/rfc822, exactly the
    MIME Graph's `$value` served (Received, DKIM-Signature, Message-ID, every attachment); the GET
    for it is the one Graph request the setting adds."""
    import email
    from email import policy as email_policy
    address = "evidence@contoso.example"
    box = stack.add_mailbox(address)
    assert box["store_original"] == "none"
    bad = stack.http.patch(f"/api/manage/mailboxes/{box['id']}", json={"store_original": "msg"})
    assert bad.status_code == 422 and bad.json()["field"] == "store_original"  # a value the rules refuse
    changed = stack.http.patch(f"/api/manage/mailboxes/{box['id']}", json={"store_original": "eml"})
    assert changed.status_code == 200 and changed.json()["store_original"] == "eml"
    assert stack.http.get(f"/api/manage/mailboxes/{box['id']}").json()["store_original"] == "eml"

    photo, scan = m.blob(200_000, "e2e-photo"), m.blob(1_300_000, "e2e-scan")
    raw = m.delivered(m.outlook(ANNA, address, "Damaged goods", "Photo and scan attached.",
                                message_id=m.outlook_id("e2e/eml"), attachments=[
                                    ("photo.jpg", "image/jpeg", photo), ("scan.pdf", "application/pdf", scan)]))
    seq = stack.graph.requests.entries()[-1]["seq"]
    message_id = stack.deliver(address, raw)

    def finished():
        row = stack.run(stack.services().ledger.get(box["id"], message_id))
        return row if row and row.status in ("processed", "skipped", "failed") else None
    row = stack.wait_until(finished, what="mail processed")
    assert row.status == "processed" and row.data["original"]["status"] == "stored", (row.last_error, row.data)
    docs = {d["filename"]: d for d in stack.ticket(row.data["ticket_number"])["documents"]}
    eml = docs[row.data["original"]["filename"]]
    assert eml["content_type"] == "message/rfc822" and eml["filename"].endswith("Damaged goods.eml")
    assert {"photo.jpg", "scan.pdf"} <= set(docs)  # the attachments too, each its own document
    got = stack.http.get(eml["url"])
    assert got.status_code == 200 and got.headers["content-type"] == "message/rfc822"
    assert got.headers["content-disposition"].startswith('attachment; filename="') and ".eml" in \
        got.headers["content-disposition"]
    assert got.content == raw
    parsed = email.message_from_bytes(got.content, policy=email_policy.default)
    assert parsed["Message-ID"].strip() == m.outlook_id("e2e/eml") and len(parsed.get_all("Received")) == 2
    assert parsed["DKIM-Signature"]
    assert {p.get_filename(): p.get_content() for p in parsed.iter_attachments()} == {
        "photo.jpg": photo, "scan.pdf": scan}
    calls = [e["path"].split(message_id, 1)[1] or "/" for e in stack.graph.requests.entries(since_seq=seq)
             if message_id in e["path"] and e["method"] == "GET"]
    assert calls.count("/$value") == 1, calls  # the mail's MIME, once
