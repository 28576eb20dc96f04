"""`make run`: the app locally on embedded defaults, showing mail turning into tickets and autoreplies.

Starts Azurite (data kept in .azurite/), the Graph simulator (no Microsoft 365 tenant here), the
TRAML simulator with one mail template, and the dev host serving function_app on
http://127.0.0.1:7071 with the embedded CRM; registers the demo mailbox through the manage API
(which creates its Graph subscription, validation handshake included) with autoreplies on,
delivers three demo mails through the simulator, waits until they are tickets and their
autoreplies are sent, prints them, and keeps running until Ctrl-C, printing one line per function
invocation (time, function, HTTP status or outcome, duration, request or mail id).
Options: --port, --no-demo-mail, --fresh (wipe the data), --data DIR (instead of .azurite/),
--quiet (no invocation lines).
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import threading
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.azurite import Azurite, free_port  # noqa: E402
from tests.support.stack import CLIENT_ID, SECRET, TENANT, app_settings, make_mime, stop_all  # noqa: E402
from tools.devhost import DevHost  # noqa: E402
from tools.sim.graph import GraphSim  # noqa: E402
from tools.sim.traml import DEMO_API_KEY, TramlSim  # noqa: E402

MAILBOX = "support@contoso.example"
TEMPLATE = "Ticket received"
AUTOREPLY = {"enabled": True, "template": TEMPLATE, "from_name": "Contoso Support"}
DEMO_MAILS = [
    ("Anna Andersson <anna@customer.example>", "Printer broken", "The printer on floor 2 prints blank pages."),
    ("Bertil Berg <bertil@bigcorp.example>", "Invoice 4711 is wrong", "We were charged twice for March."),
    ("Cecilia <cecilia@gmail.com>", "Cannot log in", "Password reset mail never arrives."),
]


def start_traml() -> TramlSim:
    traml = TramlSim().start()
    traml.add_template(TEMPLATE, "<p>Thank you for your mail. Your ticket number is $$helpdesknumber$$: "
                       "$$title$$.</p>", "Thank you for your mail. Your ticket number is $$helpdesknumber$$.")
    return traml


def register(http: httpx.Client) -> str | None:
    """The demo mailbox with autoreplies on: registered, or (storage kept from an earlier run, a new
    simulator now) given a subscription again. None, or why it failed."""
    boxes = http.get("/api/manage/mailboxes").json()["mailboxes"]
    box = next((b for b in boxes if b["address"].lower() == MAILBOX), None)
    if box is None:
        resp = http.post("/api/manage/mailboxes", json={"address": MAILBOX, "client": "demo", "autoreply": AUTOREPLY})
        if resp.status_code != 201:
            return f"registering {MAILBOX} failed: {resp.status_code} {resp.text}"
        sub = resp.json().get("subscription") or {}
        print(f"Registered {MAILBOX}; Graph subscription {sub.get('id')} (expires {sub.get('expiration')})")
        return None
    if not (box.get("autoreply") or {}).get("enabled") or (box.get("autoreply") or {}).get("template") != TEMPLATE:
        resp = http.patch(f"/api/manage/mailboxes/{box['id']}", json={"autoreply": AUTOREPLY})
        if resp.status_code != 200:
            return f"turning on autoreplies for {MAILBOX} failed: {resp.status_code} {resp.text}"
    http.post("/api/manage/subscriptions/sync")
    return None


def demo(http: httpx.Client, host: DevHost, graph: GraphSim, traml: TramlSim) -> tuple[str, str]:
    """Deliver the demo mails, wait for their tickets and autoreplies, print them; the follow-up to suggest."""
    before = {t["number"] for t in http.get("/api/manage/tickets").json()["tickets"]}
    sent_before = len(traml.sent_mail())
    ids = []
    for sender, subject, body in DEMO_MAILS:
        ids.append(graph.deliver(MAILBOX, make_mime(sender=sender, to=MAILBOX, subject=subject, body=body)))
        print(f"Delivered: {subject!r} from {sender}")
    wanted = {f"message_id={i}" for i in ids}
    try:
        host.wait_for_invocations("process_message", len(ids), timeout=60,
                                  predicate=lambda r: r.ok and r.subject in wanted)
    except TimeoutError as exc:
        print(f"not all demo mails were processed: {exc}", file=sys.stderr)
    new = [t for t in http.get("/api/manage/tickets").json()["tickets"] if t["number"] not in before]
    try:  # the autoreply is its own queue job, after the ticket
        host.wait_for_invocations("send_autoreply", len(new), timeout=30,
                                  predicate=lambda r: r.ok and r.subject in wanted)
    except TimeoutError as exc:
        print(f"not all autoreplies were sent: {exc}", file=sys.stderr)
    print(f"\n{len(new)} new ticket(s):")
    for t in sorted(new, key=lambda t: t["number"]):
        print(f"  [{t['number']}] {t['title']}  (status {t['status']}, person {t.get('person_id', '')})")
    sent = traml.sent_mail()[sent_before:]
    print(f"{len(sent)} autoreply(ies) sent through the TRAML simulator:")
    for mail in sent:
        print(f"  to {mail.get('RecipientEmail')}: {mail.get('Subject')!r}")
    print(f"Inbox of {MAILBOX} now holds {len(graph.messages(MAILBOX, 'Inbox'))} mail(s).")
    return next(((f"Re: {t['title']} [{t['number']}]", "anna@customer.example") for t in new
                 if t["title"] == "Printer broken"), ("Printer broken", "anna@customer.example"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=7071)
    ap.add_argument("--no-demo-mail", action="store_true")
    ap.add_argument("--fresh", action="store_true", help="start with empty storage")
    ap.add_argument("--data", type=Path, default=ROOT / ".azurite", help="Azurite's data directory")
    ap.add_argument("--quiet", action="store_true", help="do not print a line per function invocation")
    args = ap.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    data = args.data.resolve()
    if args.fresh:
        shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True, exist_ok=True)
    azurite = graph = traml = host = http = None
    try:
        azurite = Azurite(free_port(), free_port(), free_port(), location=str(data)).start()
        graph = GraphSim().start()
        graph.add_app(TENANT, CLIENT_ID, secret=SECRET, permissions={"Mail.ReadWrite", "Mail.Read", "User.Read.All"})
        # A fixed object id, so storage kept in .azurite/ still matches the next run's simulator.
        graph.add_mailbox(MAILBOX, display_name="Contoso Support", tenant_id=TENANT,
                          user_id="5a1e5a1e-0000-4000-8000-00000000c0de")
        traml = start_traml()
        public = f"http://127.0.0.1:{args.port}"
        settings = app_settings(azurite.connection_string, graph, public,
                                TRAML_BASE_URL=traml.api_url, TRAML_API_KEY=DEMO_API_KEY)
        printer = None if args.quiet else (lambda r: print(r.line(), flush=True))
        host = DevHost(ROOT, settings=settings, port=args.port, disable_timers=False, on_invocation=printer)
        host.start()
        http = httpx.Client(base_url=host.url, timeout=30)
        print(f"Azurite    {azurite.connection_string.split(';')[4]} (data in {data})")
        print(f"Graph sim  {graph.graph_url} (token endpoint {graph.authority_host})")
        print(f"TRAML sim  {traml.api_url} (template {TEMPLATE!r}; sent mail: {traml.url}/_sim/traml/sent)")
        print(f"Function app on {host.url}/api/...")
        failure = register(http)
        if failure:
            print(failure, file=sys.stderr)
            return 1
        follow_up = ("Printer broken", "anna@customer.example")
        if not args.no_demo_mail:
            follow_up = demo(http, host, graph, traml)
        message = {"subject": follow_up[0], "from": {"emailAddress": {"address": follow_up[1]}},
                   "body": {"contentType": "text", "content": "A follow-up"}}
        print("\nDeliver more mail:\n"
              f"  curl -X POST {graph.url}/_sim/deliver -H 'Content-Type: application/json' \\\n"
              f"    -d '{json.dumps({'mailbox': MAILBOX, 'message': message})}'\n"
              f"Console: {host.url}/api/manage/dashboard   ·   Ctrl-C stops.", flush=True)
        while not stop.is_set():
            stop.wait(1)
        return 0
    finally:
        print("\nStopping...", flush=True)
        stop_all(http, host, traml, graph, azurite)


if __name__ == "__main__":
    raise SystemExit(main())
