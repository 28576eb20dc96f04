"""`make run`: the app locally on embedded defaults, showing mail turning into tickets.

Starts Azurite (data kept in .azurite/), the Graph simulator (no Microsoft 365 tenant here) and the
dev host serving function_app on http://127.0.0.1:7071 with the embedded CRM; registers the demo
mailbox through the manage API (which creates its Graph subscription, validation handshake
included), delivers three demo mails through the simulator, waits until they are tickets, prints
them, and keeps running until Ctrl-C.  Options: --port, --no-demo-mail, --fresh (wipe .azurite).
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.azurite import Azurite, free_port  # noqa: E402
from tests.support.stack import CLIENT_ID, SECRET, TENANT, app_settings, make_mime  # noqa: E402
from tools.devhost import DevHost  # noqa: E402
from tools.sim.graph import GraphSim  # noqa: E402

MAILBOX = "support@contoso.example"
DEMO_MAILS = [
    ("Anna Andersson <anna@customer.example>", "Printer broken", "The printer on floor 2 prints blank pages."),
    ("Bertil Berg <bertil@bigcorp.example>", "Invoice 4711 is wrong", "We were charged twice for March."),
    ("Cecilia <cecilia@gmail.com>", "Cannot log in", "Password reset mail never arrives."),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=7071)
    ap.add_argument("--no-demo-mail", action="store_true")
    ap.add_argument("--fresh", action="store_true", help="start with empty storage")
    args = ap.parse_args()

    data = ROOT / ".azurite"
    if args.fresh:
        shutil.rmtree(data, ignore_errors=True)
    data.mkdir(exist_ok=True)
    azurite = Azurite(free_port(), free_port(), free_port(), location=str(data)).start()
    graph = GraphSim().start()
    graph.add_app(TENANT, CLIENT_ID, secret=SECRET, permissions={"Mail.ReadWrite", "Mail.Read", "User.Read.All"})
    # A fixed object id, so storage kept in .azurite/ still matches the next run's simulator.
    graph.add_mailbox(MAILBOX, display_name="Contoso Support", tenant_id=TENANT,
                      user_id="5a1e5a1e-0000-4000-8000-00000000c0de")
    public = f"http://127.0.0.1:{args.port}"
    host = DevHost(ROOT, settings=app_settings(azurite.connection_string, graph, public), port=args.port,
                   disable_timers=False)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        host.start()
        http = httpx.Client(base_url=host.url, timeout=30)
        print(f"Azurite    {azurite.connection_string.split(';')[4]} (data in {data})")
        print(f"Graph sim  {graph.graph_url} (token endpoint {graph.authority_host})")
        print(f"Function app on {host.url}/api/...")
        boxes = http.get("/api/manage/mailboxes").json()["mailboxes"]
        if not any(b["address"].lower() == MAILBOX for b in boxes):
            resp = http.post("/api/manage/mailboxes", json={"address": MAILBOX, "client": "demo"})
            if resp.status_code != 201:
                print(f"registering {MAILBOX} failed: {resp.status_code} {resp.text}", file=sys.stderr)
                return 1
            print(f"Registered {MAILBOX}; Graph subscription {resp.json()['subscription']['id']} "
                  f"(expires {resp.json()['subscription']['expiration']})")
        else:
            # Storage survived a restart but this simulator is new: give the mailbox a subscription again.
            http.post("/api/manage/subscriptions/sync")
        follow_up = ("Printer broken", "anna@customer.example")
        if not args.no_demo_mail:
            before = {t["number"] for t in http.get("/api/manage/tickets").json()["tickets"]}
            for sender, subject, body in DEMO_MAILS:
                graph.deliver(MAILBOX, make_mime(sender=sender, to=MAILBOX, subject=subject, body=body))
                print(f"Delivered: {subject!r} from {sender}")
            deadline = time.monotonic() + 60
            new: list[dict] = []
            while time.monotonic() < deadline and len(new) < len(DEMO_MAILS):
                time.sleep(0.3)
                new = [t for t in http.get("/api/manage/tickets").json()["tickets"] if t["number"] not in before]
            print(f"\n{len(new)} new ticket(s):")
            for t in sorted(new, key=lambda t: t["number"]):
                print(f"  [{t['number']}] {t['title']}  (status {t['status']}, person {t.get('person_id', '')})")
            follow_up = next(((f"Re: {t['title']} [{t['number']}]", "anna@customer.example") for t in new
                              if t["title"] == "Printer broken"), follow_up)
            drain = time.monotonic() + 10
            while graph.messages(MAILBOX, "Inbox") and time.monotonic() < drain:
                time.sleep(0.2)  # the mailbox action follows the CRM step
            print(f"Inbox of {MAILBOX} now holds {len(graph.messages(MAILBOX, 'Inbox'))} mail(s).")
        print("\nDeliver more mail:\n"
              f"  curl -X POST {graph.url}/_sim/deliver -H 'Content-Type: application/json' \\\n"
              f"    -d '{json.dumps({'mailbox': MAILBOX, 'message': {'subject': follow_up[0], 'from': {'emailAddress': {'address': follow_up[1]}}, 'body': {'contentType': 'text', 'content': 'A follow-up'}}})}'\n"
              f"Tickets: curl {host.url}/api/manage/tickets   ·   Ctrl-C stops.")
        while not stop.is_set():
            stop.wait(1)
        return 0
    finally:
        host.stop()
        graph.stop()
        azurite.stop()


if __name__ == "__main__":
    raise SystemExit(main())
