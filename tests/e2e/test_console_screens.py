"""The admin console's screens in a real Chromium (Python playwright driving /usr/bin/chromium) against
the real stack: the dev host enforcing function keys, Azurite, the Graph and TRAML simulators, the
embedded CRM. Overview, inboxes list, clients (validate, sync log, Sync and Save), mail (lists,
filters, paging, recovery, the step view), autoreplies (resend, dismiss), tickets (notes, documents,
close/reopen), at 1280 px and at phone width, in the viewer's time zone. Each test reads what it
expects from the API at the time, so the tests do not depend on their order.
Screenshots: artifacts/console-*.png.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from shared.domain import envelope
from shared.domain.envelope import MessageJob
from shared.domain.retry import NEXT_ATTEMPT
from tests.support.console import (PHONE, TEMPLATE, ConsoleWorld, browser, click_and_wait,
                                   no_horizontal_overflow, require_chromium, shot, wait_for,
                                   watched_page)
from tests.support.stack import TENANT, WEBHOOK_KEY, make_mime

SUPPORT = "support@contoso.example"
BULK = "bulk@contoso.example"
XSS = '<img src=x onerror="document.title=1">Invoice 4711'


@pytest.fixture(scope="module", autouse=True)
def _chromium_installed():
    require_chromium()  # before the stack starts


@pytest.fixture(scope="module")
def world():
    w = ConsoleWorld()
    try:
        s = w.stack
        yesterday = (datetime.now(timezone.utc) - timedelta(days=1)).isoformat()
        w.support = s.add_mailbox(SUPPORT, autoreply={"enabled": True, "template": TEMPLATE}, start_date=yesterday)
        w.bulk = s.add_mailbox(BULK, start_date=yesterday)
        # a ticket with a note and a document, whose autoreply is uncertain: TRAML answers 504
        w.traml.faults.add(504, path_regex="sendtemplate", count=1)
        w.first = s.deliver(SUPPORT, make_mime(subject="Printer broken", body="Tray 2 jams.",
                                               attachments=[("printer-log.txt", "text/plain", b"paper jam at tray 2")]))
        s.wait_until(lambda: s.http.get("/api/manage/autoreplies", params={"status": "uncertain"}).json()["autoreplies"],
                     what="the uncertain autoreply")
        # one Failed mail (its subject is markup) and unprocessed mail: 3 in support, 30 in bulk
        ten_minutes_ago = datetime.now(timezone.utc) - timedelta(minutes=10)
        w.failed = w.graph.deliver(SUPPORT, make_mime(subject=XSS), notify=False, received_at=ten_minutes_ago)
        s.host.invoke("message_failed", envelope.encode(MessageJob(mailbox_id=w.support["id"], message_id=w.failed,
                                                                   tenant_id=TENANT)))
        waiting = w.graph.deliver_many(SUPPORT, [make_mime(sender=f"waiting{i}@customer.example", subject=f"Waiting {i}")
                                                 for i in range(3)], notify=False, received_at=ten_minutes_ago)
        # "Waiting 0" waits for a dependency: it was tried, the CRM was down, its next try is queued
        ledger = s.services().ledger
        row = s.run(ledger.claim(w.support["id"], waiting[0], "a-worker", 120, "c-retrying", "webhook"))
        row.lease_owner, row.lease_until = "", None
        row.last_error = "Unavailable: Lime CRM answered 503"
        row.data[NEXT_ATTEMPT] = (datetime.now(timezone.utc) + timedelta(minutes=20)).isoformat()
        s.run(ledger.save(row))
        w.retrying = waiting[0]
        w.graph.deliver_many(BULK, [make_mime(subject=f"Bulk {i:02d}") for i in range(30)], notify=False,
                             received_at=ten_minutes_ago)
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="module")
def chromium():
    with browser() as b:
        yield b


@pytest.fixture
def page(chromium):
    with watched_page(chromium) as (page, watch):
        page.watch = watch
        yield page
        assert not watch.unexpected_errors(*watch.allowed), watch.errors  # no script error, no CSP violation
        calls = [u for u in watch.requests if "/api/manage/" in u and "/api/manage/dashboard" not in u]
        assert all(parse_qs(urlsplit(u).query).get("code") == [WEBHOOK_KEY] for u in calls), calls


def api(world, path: str, **params):
    resp = world.stack.http.get(f"/api/manage/{path}", params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()


def texts(page, selector: str) -> list[str]:
    return page.locator(selector).all_inner_texts()


def cells(page, rows: str) -> list[list[str]]:
    """The text of each cell of each row."""
    return [r.locator("td").all_inner_texts() for r in page.locator(rows).all()]


def notice(page) -> str:
    return page.inner_text("#notice .text")


def test_the_console_is_refused_without_the_key_and_carries_it_on_every_call(world, chromium):
    with watched_page(chromium) as (page, watch):
        resp = page.request.get(f"{world.stack.url}/api/manage/dashboard")
        assert resp.status == 401 and b"Inbox console" not in resp.body()
        world.open(page, "/")
        for screen in ("inboxes", "clients", "mail", "autoreplies", "tickets"):
            click_and_wait(page, f"#nav a[data-screen={screen}]")
            assert page.evaluate("document.body.dataset.screen") == screen
        calls = [u for u in watch.requests if "/api/manage/" in u and "/dashboard" not in u]
        assert {urlsplit(u).path.rsplit("/", 1)[-1] for u in calls} >= {"status", "mailboxes", "clients", "messages",
                                                                       "autoreplies", "tickets"}
        assert all(parse_qs(urlsplit(u).query).get("code") == [WEBHOOK_KEY] for u in calls), calls
        assert not watch.unexpected_errors("401"), watch.errors
        # every screen shows its loading state before its content: never a half-loaded page that looks done
        states = page.evaluate("window.__states")
        assert ["loading", 1] in states and states[-1][0] == "ready", states


def test_overview_shows_health_counts_and_warnings_with_what_to_do(world, page):
    world.open(page, "/")
    summary = api(world, "status", all="true")["summary"]
    assert page.inner_text("#card-inboxes .value") == str(summary["inboxes"]) == "2"
    assert page.inner_text("#card-failed .value") == str(summary["failed"])
    assert page.inner_text("#card-unprocessed .value") == str(summary["unprocessed"])
    # mail waiting for a dependency: counted apart, amber, with its next try (until a recovery takes it)
    waiting = api(world, f"messages/{quote(world.retrying, safe='')}")["status"] == "processing"
    assert summary["retrying"] == (1 if waiting else 0)
    assert page.inner_text("#card-retrying .value") == str(summary["retrying"])
    if waiting:
        assert "warn" in page.get_attribute("#card-retrying", "class").split()
        next_try = page.locator("#card-retrying .small time")
        assert page.inner_text("#card-retrying .small") == "waiting for a dependency; next try " + next_try.inner_text()
        assert next_try.get_attribute("datetime") == summary["next_retry_at"]
    assert page.inner_text("#healthy") == "Needs attention" and page.inner_text("#health") == "Needs attention"
    warnings = texts(page, "#warnings li")
    assert any(w.startswith("Graph client demo: the client secret expires in 10 day(s)") for w in warnings), warnings
    secret = page.locator("#warnings li", has_text="Graph client demo")
    assert secret.get_by_role("link", name="Open Clients").get_attribute("href") == "#/clients"
    assert page.locator("#card-failed").get_attribute("href") == "#/mail?status=failed"
    shot(page, "overview")


def test_inboxes_list_status_reason_expiry_last_mail_and_counts(world, page):
    world.open(page, "/inboxes")
    state = {i["address"]: i for i in api(world, "status", all="true")["inboxes"]}
    rows = page.locator("#inboxes-table tbody tr")
    assert rows.count() == 2
    row = page.locator("#inboxes-table tbody tr", has_text=SUPPORT)
    cells = row.locator("td").all_inner_texts()
    assert "Active" in cells[1]
    assert "(in 6 days)" in cells[3] or "(in 7 days)" in cells[3], cells  # Graph grants ~7 days
    assert cells[4] != "–"  # its last mail
    assert cells[5] == str(state[SUPPORT]["failed"]) and cells[6] == str(state[SUPPORT]["unprocessed"])
    assert row.get_by_role("button", name=f"Deactivate {SUPPORT}").is_visible()
    assert row.get_by_role("button", name=f"Delete {SUPPORT}").is_visible()
    shot(page, "inboxes")


def test_clients_validate_names_the_reason_and_what_to_do(world, page):
    world.open(page, "/clients")
    broken = page.locator("section.client[data-client=broken]")
    broken.get_by_role("button", name="Validate").click()
    result = broken.locator(".result")
    result.wait_for()
    assert result.get_attribute("data-ok") == "false" and result.get_attribute("data-reason") == "bad_secret"
    advice = result.locator(".advice").inner_text()
    assert "copy the secret's Value (not its Secret ID)" in advice and "GRAPH_CLIENT_SECRET_BROKEN" in advice
    assert "AADSTS7000215" in result.locator(".detail").inner_text()  # Entra's own words, no secret
    assert "not-the-secret" not in page.content()
    shot(page, "clients-validate-bad-secret")

    demo = page.locator("section.client[data-client=demo]")
    demo.locator("input.validate-mailbox").fill(SUPPORT)
    demo.get_by_role("button", name="Validate").click()
    demo.locator(".result").wait_for()
    assert demo.locator(".result").get_attribute("data-ok") == "true"
    checks = cells(demo, ".result tbody tr")
    assert [c[0] for c in checks] == ["token", "permissions", "mailbox"], checks


def test_sync_and_save_then_the_sync_log(world, page):
    before = len(api(world, "clients/demo/synclog")["entries"])
    world.open(page, "/clients")
    click_and_wait(page, "#sync-and-save")
    assert notice(page).startswith("Sync and Save done. broken: ")
    assert "demo: 2 unchanged" in notice(page) or "demo: 2 renewed" in notice(page)
    entries = api(world, "clients/demo/synclog")["entries"]
    assert len(entries) == before + 1 and entries[0]["trigger"] == "manual"
    demo = page.locator("section.client[data-client=demo]")
    demo.get_by_role("button", name="Sync log").click()
    log = demo.locator(".synclog tbody tr")
    log.first.wait_for()
    assert log.count() == len(entries) and "manual" in log.first.inner_text()
    shot(page, "clients")


def test_mail_lists_show_mail_as_text_filter_and_page(world, page):
    world.open(page, "/mail?status=failed")
    rows = texts(page, "#mail-table tbody tr")
    assert any(XSS in r for r in rows), rows                           # shown as text ...
    assert page.locator("#main img").count() == 0 and page.title() == "Inbox console"  # ... never as markup
    shot(page, "mail-failed")

    page.click("#tab-unprocessed")
    wait_for(page, "document.body.dataset.state === 'ready' && !!document.querySelector('#mail-filters')"
                   " && location.hash.includes('unprocessed')")
    page.select_option("#filter-mailbox", world.bulk["id"])
    page.click("#mail-filters button[type=submit]")
    wait_for(page, "location.hash.includes('mailbox=') && document.body.dataset.state === 'ready'"
                   " && document.querySelector('#mail-table').dataset.rows === '30'")
    assert page.inner_text("#mail-table .pager .muted") == "1–25 of 30"
    page.click("#mail-table .pager >> text=Next ›")
    assert page.inner_text("#mail-table .pager .muted") == "26–30 of 30"
    assert page.locator("#mail-table tbody tr").count() == 5
    shot(page, "mail-unprocessed-paged")

    # a date in the future is refused, next to its filter; nothing is listed
    page.watch.allowed.append("422")
    tomorrow = (datetime.now() + timedelta(days=1)).date().isoformat()
    page.fill("#filter-since", tomorrow)
    click_and_wait(page, "#mail-filters button[type=submit]")
    assert "since" in page.inner_text("#filter-since-error")
    assert page.get_attribute("#filter-since", "aria-invalid") == "true"
    assert page.inner_text("#mail-table tbody") == "Nothing listed: the filters were refused (see above)."
    shot(page, "mail-filter-refused")

    click_and_wait(page, "#mail-filters >> text=Clear")
    click_and_wait(page, "#tab-skipped")
    assert page.inner_text("#mail-table tbody") == "No skipped mail."


def test_recovery_from_the_mail_screen_then_the_step_view(world, page):
    world.open(page, "/mail?status=unprocessed&mailbox=" + world.support["id"])
    assert sorted(r[3] for r in cells(page, "#mail-table tbody tr")) == ["Waiting 0", "Waiting 1", "Waiting 2"]
    [waiting] = [r for r in cells(page, "#mail-table tbody tr") if r[3] == "Waiting 0"]
    assert waiting[-1].startswith("retrying, next try ") and "Lime CRM answered 503" in waiting[-1], waiting
    listed = api(world, "messages", status="unprocessed", mailbox=world.support["id"])["messages"]
    [due] = [m["next_attempt_at"] for m in listed if m["message_id"] == world.retrying]
    assert page.locator(f"#mail-table time[datetime='{due}']").count() == 1  # the next try, as a time
    shot(page, "mail-retrying")
    yesterday = (datetime.now() - timedelta(days=1)).date().isoformat()
    page.select_option("#recover-mailbox", world.support["id"])
    page.select_option("#recover-status", "unprocessed")
    page.fill("#recover-since", yesterday)
    page.click("#recover-button")
    wait_for(page, "document.getElementById('notice') && !document.getElementById('notice').hidden", timeout=90)
    assert notice(page).startswith("Recovery done: 3 processed"), notice(page)
    titles = [t["title"] for t in world.stack.tickets()]
    assert all(titles.count(f"Waiting {i}") == 1 for i in range(3))
    wait_for(page, "document.body.dataset.state === 'ready' && document.querySelector('#tasks-table')")
    assert any("unprocessed" in r and "done" in r for r in texts(page, "#tasks-table tbody tr"))

    # the step view of a processed mail: its timeline, the decision, its ticket
    world.open(page, f"/mail/{quote(world.support['id'])}/{quote(world.first, safe='')}")
    steps = [r[1] for r in cells(page, "#timeline tbody tr")]
    assert steps[:7] == ["claimed", "fetched", "decided", "crm", "autoreply_queued", "mailbox_action", "processed"], steps
    number = api(world, f"messages/{quote(world.first, safe='')}")["ticket"]["number"]
    assert page.inner_text("#step-ticket").startswith(f"Ticket {number} - new")
    shot(page, "mail-steps")
    click_and_wait(page, "#step-ticket a")
    assert page.inner_text("h2").startswith(f"[{number}] Printer broken")

    # a mail nothing has picked up yet: no steps, and a button that processes it
    page.watch.allowed.append("404")
    world.open(page, f"/mail/{quote(world.bulk['id'])}/no-such-message")
    assert "No steps are recorded for this mail yet" in page.inner_text("#main")


def test_autoreplies_uncertain_resend_after_a_confirmation(world, page):
    world.open(page, "/autoreplies?status=uncertain")
    [row] = page.locator("#autoreplies-table tbody tr").all()
    number = row.locator("td").first.inner_text()

    def sent_for_this_ticket() -> int:  # other tests' autoreplies may still be going out meanwhile
        return sum(1 for m in world.traml.sent_mail() if f"[{number}]" in m["Subject"])

    sent_before = sent_for_this_ticket()
    shot(page, "autoreplies-uncertain")
    row.get_by_role("button", name=f"Resend the autoreply for ticket {number}").click()
    dialog = page.locator("dialog")
    assert "may already have it" in dialog.inner_text()
    dialog.get_by_role("button", name="Cancel").click()
    dialog.wait_for(state="detached")
    assert sent_for_this_ticket() == sent_before
    row.get_by_role("button", name=f"Resend the autoreply for ticket {number}").click()
    click_and_wait(page, "dialog >> role=button[name='Resend']")
    assert notice(page) == f"The autoreply for ticket {number} is queued to be sent again."
    world.stack.wait_until(lambda: sent_for_this_ticket() == sent_before + 1, what="the resent autoreply")
    world.stack.wait_until(lambda: [a for a in api(world, "autoreplies", status="sent")["autoreplies"]
                                    if a["ticket_number"] == number], what="recorded as sent")
    world.open(page, "/autoreplies?status=sent")
    assert any(r.startswith(number) for r in texts(page, "#autoreplies-table tbody tr"))
    assert page.locator("#autoreplies-table").get_by_role("button", name="Resend").count() == 0
    shot(page, "autoreplies-sent")


def test_a_ticket_with_its_note_and_document_closed_and_reopened(world, page):
    number = api(world, f"messages/{quote(world.first, safe='')}")["ticket"]["number"]
    world.open(page, "/tickets")
    assert any(r.startswith(number) and "Printer broken" in r for r in texts(page, "#tickets-table tbody tr"))
    shot(page, "tickets")
    world.open(page, f"/tickets/{number}")
    assert "Tray 2 jams." in page.inner_text("#ticket-notes")
    link = page.locator("#ticket-documents a", has_text="printer-log.txt")
    href = link.get_attribute("href")
    assert parse_qs(urlsplit(href).query)["code"] == [WEBHOOK_KEY]
    resp = world.stack.http.get(urlsplit(href).path)  # the document the link serves
    assert resp.status_code == 200 and resp.content == b"paper jam at tray 2"
    shot(page, "ticket")

    click_and_wait(page, "#ticket-close")
    assert page.locator("#ticket-view").get_attribute("data-status") == "done"
    assert world.stack.ticket(number)["ticket"]["status"] == "done"
    click_and_wait(page, "#ticket-reopen")
    assert world.stack.ticket(number)["ticket"]["status"] == "started"
    assert page.locator("#ticket-close").is_visible()


def test_an_unknown_ticket_shows_the_error_and_a_way_to_retry(world, chromium):
    with watched_page(chromium) as (page, watch):
        page.goto(world.url("/tickets/99999"))
        wait_for(page, "document.body.dataset.state === 'error'")
        box = page.locator("#main .state.error")
        assert "Could not load this screen" in box.inner_text() and box.get_by_role("button", name="Try again").count()


def test_times_are_shown_in_the_viewers_time_zone(world, chromium):
    with watched_page(chromium, timezone_id="America/New_York", locale="en-US") as (page, watch):
        world.open(page, f"/mail/{quote(world.support['id'])}/{quote(world.first, safe='')}")
        assert page.inner_text("footer #tz") == "America/New_York"
        first = page.locator("#timeline time").first
        iso, shown = first.get_attribute("datetime"), first.inner_text()
        expected = page.evaluate("([iso]) => new Intl.DateTimeFormat('en-US', {dateStyle: 'medium', timeStyle: 'short',"
                                 " timeZone: 'America/New_York'}).format(new Date(iso))", [iso])
        in_utc = page.evaluate("([iso]) => new Intl.DateTimeFormat('en-US', {dateStyle: 'medium', timeStyle: 'short',"
                               " timeZone: 'UTC'}).format(new Date(iso))", [iso])
        assert shown == expected != in_utc


def test_autoreplies_uncertain_dismissed_with_a_note(world, page, chromium):
    """An admin who saw in TRAML's log that an uncertain autoreply went out settles it: Cancel changes
    nothing; Dismiss with a note takes it off the list and the status's warning, sends nothing,
    and the Dismissed list shows it with the note and Resend (no second Dismiss)."""
    s = world.stack
    world.traml.faults.add(504, path_regex="sendtemplate", count=1)
    mid = s.deliver(SUPPORT, make_mime(sender="settled@customer.example", subject="Delivered after all"))
    [record] = s.wait_until(lambda: [a for a in api(world, "autoreplies", status="uncertain", limit=500)["autoreplies"]
                                     if a["message_id"] == mid], what="the uncertain autoreply")
    number = record["ticket_number"]

    def sent_for_this_ticket() -> int:
        return sum(1 for m in world.traml.sent_mail() if f"[{number}]" in m["Subject"])

    def warned_tickets() -> list[str]:
        return [t for w in api(world, "status")["warnings"] if w["reason"] == "autoreplies_uncertain"
                for t in w.get("tickets", [])]

    assert number in warned_tickets()
    sent_before = sent_for_this_ticket()
    with watched_page(chromium, viewport=PHONE, is_mobile=True, has_touch=True) as (phone, _):
        world.open(phone, "/autoreplies?status=uncertain")
        both = phone.locator("#autoreplies-table tbody tr", has_text=number).get_by_role("button")
        assert both.all_inner_texts() == ["Resend", "Dismiss"] and both.last.is_visible()
        assert no_horizontal_overflow(phone), phone.evaluate("document.documentElement.scrollWidth")
        shot(phone, "phone-autoreplies-uncertain")
    world.open(page, "/autoreplies?status=uncertain")
    row = page.locator("#autoreplies-table tbody tr", has_text=number)
    row.get_by_role("button", name=f"Dismiss the autoreply for ticket {number}").click()
    dialog = page.locator("dialog")
    assert "TRAML's sent mail shows it went out" in dialog.inner_text()
    dialog.get_by_role("button", name="Cancel").click()
    dialog.wait_for(state="detached")
    assert [a["status"] for a in api(world, "autoreplies", status="uncertain", limit=500)["autoreplies"]
            if a["message_id"] == mid] == ["uncertain"]

    row.get_by_role("button", name=f"Dismiss the autoreply for ticket {number}").click()
    page.get_by_label("Note (optional, kept with the autoreply)").fill("TRAML log: delivered 10:02")
    shot(page, "autoreplies-dismiss-dialog")
    click_and_wait(page, "dialog >> role=button[name='Dismiss']")
    assert notice(page) == f"The autoreply for ticket {number} is dismissed."
    assert not any(r.startswith(number) for r in texts(page, "#autoreplies-table tbody tr"))
    assert number not in warned_tickets()

    world.open(page, "/autoreplies?status=dismissed")
    row = page.locator("#autoreplies-table tbody tr", has_text=number)
    assert "dismissed by an admin: TRAML log: delivered 10:02" in row.inner_text()
    assert row.get_by_role("button", name=f"Resend the autoreply for ticket {number}").count() == 1
    assert row.get_by_role("button", name=f"Dismiss the autoreply for ticket {number}").count() == 0
    shot(page, "autoreplies-dismissed")
    assert sent_for_this_ticket() == sent_before


@pytest.mark.parametrize("screen", ["/", "/inboxes", "/clients", "/mail", "/autoreplies", "/tickets"])
def test_every_screen_renders_at_phone_width(world, chromium, screen):
    with watched_page(chromium, viewport=PHONE, is_mobile=True, has_touch=True) as (page, watch):
        world.open(page, screen)
        assert no_horizontal_overflow(page), page.evaluate("document.documentElement.scrollWidth")
        assert page.locator("#nav a").first.is_visible() and page.locator("#nav a").last.is_visible()
        shot(page, "phone-" + (screen.strip("/") or "overview"))
        assert not watch.unexpected_errors(), watch.errors
