"""Benchmark: mail to ticket end to end at Graph's throttling ceiling, one and two dev host processes.

    .venv/bin/python bench/pipeline.py [--mails 2000] [--mailboxes 3] [--hosts 1,2] [--attachments 0.2]
                                       [--rate 0] [--burst 17] [--no-autoreply] [--seed 8]
                                       [--store-original]

Each run builds a fresh stack (bench/harness.py): Azurite, the Graph simulator (50 ms latency,
Outlook throttling per app and mailbox: 4 concurrent requests and a token bucket refilled at
16.7 requests/s, 429 with Retry-After beyond), the Lime CRM simulator (CRM_BACKEND=lime, 20 ms
latency), the TRAML simulator (autoreplies on, 20 ms) and the function app in `--hosts` dev host
processes sharing the queues (the first one receives Graph's notifications). It registers the
mailboxes through the manage API (real subscriptions, validation handshake), warms up with two mails
per mailbox and host, then delivers `--mails` mails round-robin (all at once, or `--rate` per
second), a share of them with one or two small attachments, and waits until every one has left its
Inbox and every autoreply went out.

Choices: the bucket's burst is small (17 tokens, one second) so the run measures the sustained rate,
not Outlook's allowance of 10,000 requests per 10 minutes, which 2,000 mails would never exhaust.
The CRM is an on-premise Lime without the client-side limit of Lime Cloud (3,000 requests per 5
minutes per IP, LIME_RATE_LIMIT_REQUESTS=0 here): that limit is a ceiling of its own, reported as
`lime_cloud_ceiling_mails_per_s`.

Reported per run: mails/s end to end (first delivery to last mail finished) and as a share of the
throttle ceiling (16.7 requests/s / Graph requests per mail x mailboxes), Graph requests per mail
(all, without and with attachments; 429s apart, and by kind), CRM (Lime) and TRAML requests per
mail by kind, Storage requests per mail by kind (the app's, counted by its clients' request hook,
shared/adapters/storage_ops.py, and the dev host's own queue traffic as "host ...", read from
GET /admin/devhost/storage-ops), CPU ms per mail of the dev host processes (from /proc), of this
process (the simulators) and of Azurite, 429s, p50/p99 from delivery to ticket (the ledger's CRM
step), where a mail's time goes, and the latency the simulators served. Prints JSON; asserts
nothing.

`--store-original`: the mailboxes keep each mail's original (`store_original: eml`), and the mails
are delivered as MIME, so that Graph's `$value` serves them as sent: its cost shows as one more Graph
request per mail (`GET .../messages/{id}/$value`) and one more Lime upload and document (plus the
document's key query) in the requests by kind.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import threading
import time
from collections import Counter
from datetime import datetime
from typing import Any

from harness import BenchStack, cpu_seconds, pct, rounded, wait_for

from shared.adapters.ledger_table import TableLedger
from shared.adapters.storage_clients import StorageAccount
from shared.bootstrap import SystemClock
from shared.domain.model import STEP_CRM, STEP_FETCHED
from tests.support.stack import make_mime
from tools.sim.mime2graph import mime_to_graph_message

RATE = 10000 / 600
SUBJECTS = ["Printer broken", "Invoice question", "Cannot log in", "Order status", "VPN drops every hour",
            "Password reset", "Delivery delayed", "Wrong item received", "Licence renewal", "Screen flickers"]
WORDS = ("the printer on floor two prints blank pages since the update yesterday and the queue shows "
         "errors please help us we have a deadline on friday thanks in advance regards").split()


def build_mails(n: int, boxes: list[str], share_attached: float, rng: random.Random,
                as_mime: bool = False) -> list[tuple[str, dict | bytes, bool]]:
    """(mailbox address, Graph message JSON or its MIME, has attachments) for n mails, deterministic per seed."""
    senders = [f"Customer {i} <customer{i}@firm{i % 97}.example>" for i in range(max(1, n // 3))]
    out = []
    for i in range(n):
        box = boxes[i % len(boxes)]
        attachments = []
        if rng.random() < share_attached:
            for k in range(rng.choice((1, 2))):
                size = rng.randint(5_000, 60_000)
                attachments.append((f"file{k}.pdf", "application/pdf", rng.randbytes(size)))
        body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 120)))
        raw = make_mime(sender=rng.choice(senders), to=box, subject=f"{rng.choice(SUBJECTS)} #{i}", body=body,
                        html=f"<p>{body}</p>" if rng.random() < 0.5 else None, attachments=attachments)
        out.append((box, raw if as_mime else mime_to_graph_message(raw), bool(attachments)))
    return out


class Deliverer(threading.Thread):
    """Delivers the mails: all at once (rate 0), or paced at `rate` per second; records when."""

    def __init__(self, stack: BenchStack, mails: list[tuple[str, dict, bool]], rate: float) -> None:
        super().__init__(daemon=True)
        self.stack, self.mails, self.rate = stack, mails, rate
        self.delivered: dict[str, tuple[float, str, bool]] = {}  # message id -> (time, mailbox, attached)
        self.started = 0.0

    def run(self) -> None:
        self.started = time.time()
        step = 50 if not self.rate else max(1, int(self.rate / 10))
        for start in range(0, len(self.mails), step):
            if self.rate:
                wait = self.started + start / self.rate - time.time()
                if wait > 0:
                    time.sleep(wait)
            chunk = self.mails[start:start + step]
            by_box: dict[str, list[tuple[dict, bool]]] = {}
            for box, doc, attached in chunk:
                by_box.setdefault(box, []).append((doc, attached))
            for box, items in by_box.items():
                ids = self.stack.graph.deliver_many(box, [doc if isinstance(doc, bytes) else dict(doc)
                                                          for doc, _ in items])
                now = time.time()
                for mid, (_, attached) in zip(ids, items):
                    self.delivered[mid] = (now, box, attached)


def last_seq(log) -> int:
    entries = log.entries()
    return entries[-1]["seq"] if entries else 0


def _shape(path: str) -> str:
    """A request path with its ids replaced, to count requests by kind."""
    path = re.sub(r"/users/[^/]+", "/users/{u}", path, flags=re.IGNORECASE)
    path = re.sub(r"/(messages|attachments)/[^/]+", r"/\1/{id}", path, flags=re.IGNORECASE)
    return re.sub(r"/\d+(/|$)", r"/{n}\1", path)


MESSAGE_IN_PATH = re.compile(r"/messages/([^/]+)", re.IGNORECASE)


def run(args: argparse.Namespace, hosts: int) -> dict[str, Any]:
    throttle = {"concurrency": 4, "rate_per_s": RATE, "burst": args.burst, "retry_after": 1}
    # Lime Cloud allows 3,000 requests per 5 minutes per IP, a ceiling of its own (reported below);
    # here the CRM is an on-premise Lime without that limit, so that Graph's is the one measured.
    extra = {"LIME_RATE_LIMIT_REQUESTS": "0"}
    with BenchStack(hosts=hosts, throttle=throttle, autoreply=not args.no_autoreply, seed=args.seed,
                    extra_settings=extra) as stack:
        boxes = [f"support{i}@contoso.example" for i in range(args.mailboxes)]
        keep = {"store_original": "eml"} if args.store_original else {}
        box_ids = {b: stack.add_mailbox(b, **keep) for b in boxes}
        # warm-up: imports, tokens, Lime's schema check, clients, in every host process
        for b in boxes:
            for k in range(hosts * 2):
                stack.graph.deliver(b, make_mime(sender=f"warm{k}@{b.split('@')[0]}.example", to=b, subject="warm-up"))
        wait_for(lambda: all(not stack.graph.messages(b) for b in boxes), 120, what="warm-up mail processed")
        if not args.no_autoreply:
            wait_for(lambda: len(stack.traml.sent) >= len(boxes) * hosts * 2, 60, what="warm-up autoreplies")
        time.sleep(1.0)

        mails = build_mails(args.mails, boxes, args.attachments, random.Random(args.seed), args.store_original)
        g0, l0, t0 = last_seq(stack.graph.requests), len(stack.lime.calls), len(stack.traml.sent)
        tr0 = last_seq(stack.traml.requests)
        ops0 = stack.storage_ops()
        throttled0 = stack.graph.throttled_count
        cpu0, bench_cpu0, azurite_cpu0 = stack.host_cpu(), cpu_seconds(), stack.azurite_cpu()
        deliverer = Deliverer(stack, mails, args.rate)
        deliverer.start()
        deleted: dict[str, float] = {}
        deadline = time.monotonic() + args.timeout
        next_print = time.monotonic() + 10
        seen = g0
        while time.monotonic() < deadline:
            for e in stack.graph.requests.entries(method="DELETE", since_seq=seen):
                seen = max(seen, e["seq"])
                if e["status"] in (204, 404):
                    m = MESSAGE_IN_PATH.search(e["path"])
                    if m:
                        deleted.setdefault(m.group(1), e["time"])
            if not deliverer.is_alive() and all(mid in deleted for mid in deliverer.delivered):
                break
            if time.monotonic() >= next_print:
                print(f"  [{hosts} host(s)] {len(deleted)}/{len(mails)} mails done, "
                      f"429s {stack.graph.throttled_count - throttled0}", flush=True)
                next_print += 10
            time.sleep(0.5)
        finished_at = max(deleted.values()) if deleted else time.time()
        if not args.no_autoreply:
            try:
                wait_for(lambda: len(stack.traml.sent) - t0 >= len(mails), 120, interval=0.5, what="autoreplies")
            except TimeoutError:
                pass
        ops = stack.storage_ops()
        cpu = stack.host_cpu() - cpu0
        bench_cpu = cpu_seconds() - bench_cpu0
        azurite_cpu = stack.azurite_cpu() - azurite_cpu0
        delivered = deliverer.delivered
        ids = set(delivered)

        graph_entries = [e for e in stack.graph.requests.entries(since_seq=g0) if "/users/" in e["path"].lower()]
        ok = [e for e in graph_entries if e["status"] != 429]
        per_mail: Counter[str] = Counter()
        for e in ok:
            m = MESSAGE_IN_PATH.search(e["path"])
            if m and m.group(1) in ids:
                per_mail[m.group(1)] += 1
        plain = [per_mail[m] for m, v in delivered.items() if not v[2]]
        attached = [per_mail[m] for m, v in delivered.items() if v[2]]
        lime_calls = stack.lime.calls[l0:]
        lime_ms = [e["duration_ms"] for e in stack.lime.requests.entries()[-len(lime_calls):]] if lime_calls else []
        graph_ms = [e["duration_ms"] for e in ok]
        graph_kinds = Counter(f"{e['method']} {_shape(e['path'])}" + (" 429" if e["status"] == 429 else "")
                              for e in graph_entries)
        lime_kinds = Counter(f"{c['method']} {_shape(c['path'].split('/api/v1/', 1)[-1])}" for c in lime_calls)
        traml_kinds = Counter(f"{e['method']} {_shape(e['path'].split('/api/', 1)[-1])}"
                              for e in stack.traml.requests.entries(since_seq=tr0))
        storage = {k: v - ops0.get(k, 0) for k, v in ops.items() if v - ops0.get(k, 0)} if ops is not None else {}

        statuses: Counter[str] = Counter()
        latencies: list[float] = []
        stages: dict[str, list[float]] = {"queued": [], "fetch": [], "crm": [], "finish": []}
        by_box: dict[str, list[str]] = {}
        for mid, (_, box, _) in delivered.items():
            by_box.setdefault(box_ids[box], []).append(mid)

        async def ledger_rows() -> None:
            account = StorageAccount(stack.azurite.connection_string, {})
            ledger = TableLedger(account, SystemClock())
            try:
                for box_id, mids in by_box.items():
                    rows = await ledger.get_many(box_id, mids)
                    for mid in mids:
                        row = rows.get(mid)
                        statuses[row.status if row else "no ledger row"] += 1
                        if row and STEP_CRM in row.steps:
                            at = datetime.fromisoformat(row.steps[STEP_CRM]).timestamp()
                            latencies.append((at - delivered[mid][0]) * 1000)
                            claimed = row.created_at.timestamp() if row.created_at else at
                            fetched = datetime.fromisoformat(row.steps.get(STEP_FETCHED, row.steps[STEP_CRM])).timestamp()
                            done = row.updated_at.timestamp() if row.updated_at else at
                            for name, value in (("queued", claimed - delivered[mid][0]), ("fetch", fetched - claimed),
                                                ("crm", at - fetched), ("finish", done - at)):
                                stages[name].append(value * 1000)
            finally:
                await account.close()
        asyncio.run(ledger_rows())

        n = len(delivered)
        elapsed = finished_at - deliverer.started
        graph_per_mail = len(ok) / n
        ceiling = RATE / graph_per_mail * args.mailboxes
        return {
            "hosts": hosts,
            "store_original": args.store_original,
            "mails": n,
            "finished": len(ids & set(deleted)),
            "ledger_status": dict(statuses),
            "seconds": elapsed,
            "mails_per_s": n / elapsed,
            "ceiling_mails_per_s": ceiling,
            "of_ceiling": n / elapsed / ceiling,
            "graph_calls_per_mail": graph_per_mail,
            "graph_calls_per_mail_without_attachments": sum(plain) / max(1, len(plain)),
            "graph_calls_per_mail_with_attachments": sum(attached) / max(1, len(attached)),
            "mails_with_attachments": len(attached),
            "graph_429s": stack.graph.throttled_count - throttled0,
            "crm_calls_per_mail": len(lime_calls) / n,
            "storage_ops_per_mail": sum(storage.values()) / n if ops is not None else None,
            "storage_ops_per_mail_app": sum(v for k, v in storage.items() if not k.startswith("host ")) / n
            if ops is not None else None,
            "lime_cloud_ceiling_mails_per_s": 3000 / 300 / (len(lime_calls) / n),
            "autoreplies_sent": len(stack.traml.sent) - t0,
            "host_cpu_ms_per_mail": cpu * 1000 / n,
            "host_cpu_share_of_elapsed": cpu / elapsed,
            "simulators_cpu_ms_per_mail": bench_cpu * 1000 / n,
            "azurite_cpu_ms_per_mail": azurite_cpu * 1000 / n,
            "machine_cpu_share_of_elapsed": (cpu + bench_cpu + azurite_cpu) / elapsed,
            "delivery_to_ticket_ms": {"p50": pct(latencies, 50), "p99": pct(latencies, 99),
                                      "max": max(latencies) if latencies else float("nan")},
            "served_ms": {"graph_p50": pct(graph_ms, 50), "graph_p99": pct(graph_ms, 99),
                          "crm_p50": pct(lime_ms, 50), "crm_p99": pct(lime_ms, 99)},
            "stage_ms_p50": {k: pct(v, 50) for k, v in stages.items()},
            "graph_requests_by_kind_per_mail": {k: v / n for k, v in graph_kinds.most_common()},
            "crm_requests_by_kind_per_mail": {k: v / n for k, v in lime_kinds.most_common()},
            "traml_requests_by_kind_per_mail": {k: v / n for k, v in traml_kinds.most_common()},
            "storage_ops_by_kind_per_mail": {k: v / n for k, v in sorted(storage.items(), key=lambda kv: -kv[1])},
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mails", type=int, default=2000)
    ap.add_argument("--mailboxes", type=int, default=3)
    ap.add_argument("--hosts", default="1,2", help="comma-separated: a run per number of dev host processes")
    ap.add_argument("--attachments", type=float, default=0.2, help="share of mails with 1-2 small attachments")
    ap.add_argument("--rate", type=float, default=0, help="mails delivered per second (0: all at once)")
    ap.add_argument("--burst", type=float, default=17, help="token bucket size of the Graph throttle")
    ap.add_argument("--no-autoreply", action="store_true")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--store-original", action="store_true", help="mailboxes keep each mail's .eml")
    args = ap.parse_args()
    results = []
    for hosts in (int(h) for h in args.hosts.split(",")):
        results.append(run(args, hosts))
        print(json.dumps(rounded(results[-1]), indent=2), flush=True)


if __name__ == "__main__":
    main()
