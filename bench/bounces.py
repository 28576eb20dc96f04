"""Benchmark: what a bounce costs, in Graph requests and CPU, next to a plain mail.

    .venv/bin/python bench/bounces.py [--mails 40]

In one process: the Graph simulator (no latency, no throttling), the real Graph adapter (msgraph-sdk,
azure-identity), the real MessageProcessor, the in-memory CRM and ledger of the unit tests. For each
kind of mail (a plain mail, one with two small attachments, a DSN carrying the original of a reply on
a ticket, a DSN whose original is on no ticket, an Exchange NDR with the ticket's tag and the
original attached), `--mails` of them are processed one by one; reported per kind: Graph requests per
mail (by request), the outcome, and the processor's CPU ms per mail; and the CPU ms of reading one
report (shared/domain/reports.parse_report) of a 1 MB bounce. Prints JSON; asserts nothing.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.adapters.graph import GraphAdapter, GraphClients  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.domain.envelope import MessageJob  # noqa: E402
from shared.domain.model import Mailbox  # noqa: E402
from shared.services.process import MessageProcessor, ProcessDeps  # noqa: E402
from tests.fakes import FakeClock, FakeLedger, FakeQueue, FakeRegistry  # noqa: E402
from tests.fakes_crm import InMemoryCrm  # noqa: E402
from tests.fixtures.mail import mime as m  # noqa: E402
from tests.support.stack import CLIENT_ID, SECRET, TENANT, app_settings  # noqa: E402
from tools.sim.graph import GraphSim  # noqa: E402

ANNA = "Anna Andersson <anna.andersson@acme.example>"
DAEMON = "Mail Delivery System <MAILER-DAEMON@mx.acme.example>"


def reply(box: str, request: str, number: str, big: bool = False) -> bytes:
    return m.outlook(f"Support <{box}>", ANNA, f"RE: Invoice missing [{number}]", "Attached again.",
                     message_id=m.outlook_id(f"bench/reply/{uuid.uuid4()}"), in_reply_to=request, references=[request],
                     attachments=[("invoice.pdf", "application/pdf", m.blob(900_000, "inv") if big else m.PDF)])


def kinds(box: str, request: str, number: str) -> dict[str, Any]:
    def uid() -> str:
        return uuid.uuid4().hex
    return {
        "plain": lambda: m.outlook(ANNA, box, "Invoice missing", "Where is it?", message_id=f"<{uid()}@acme.example>"),
        "two small attachments": lambda: m.outlook(
            ANNA, box, "Logs", "Attached.", message_id=f"<{uid()}@acme.example>",
            attachments=[("a.txt", "text/plain", b"alpha"), ("b.pdf", "application/pdf", m.PDF)]),
        "DSN of a reply on a ticket": lambda: m.ndr(
            DAEMON, box, "Undelivered Mail Returned to Sender", "Could not be delivered.", "anna.andersson@acme.example",
            reply(box, request, number), message_id=f"<{uid()}@mx.acme.example>", status="5.2.2",
            diagnostic="smtp; 552 5.2.2 Mailbox full"),
        "DSN on no ticket": lambda: m.ndr(
            DAEMON, box, "Undelivered Mail Returned to Sender", "Could not be delivered.", "x@partner.example",
            m.plain(box, "x@partner.example", "Hello", "x", message_id=f"<{uid()}@contoso.example>"),
            message_id=f"<{uid()}@mx.acme.example>"),
        "Exchange NDR with the tag": lambda: m.ndr(
            "Microsoft Outlook <MicrosoftExchange329e71ec88ae@acme.example>", box,
            f"Undeliverable: Invoice missing [{number}]", "Delivery has failed.", "gone@acme.example",
            reply(box, request, number), message_id=f"<{uid()}@acme.example>",
            extra=[("X-MS-Exchange-Message-Is-Ndr", "")]),
    }


async def main(mails: int) -> dict[str, Any]:
    graph = GraphSim().start()
    try:
        graph.add_app(TENANT, CLIENT_ID, secret=SECRET, permissions={"Mail.ReadWrite", "User.Read.All"})
        address = "bench-bounces@contoso.example"
        user = graph.add_mailbox(address, tenant_id=TENANT)
        adapter = GraphAdapter(GraphClients(Settings.from_env(app_settings("UseDevelopmentStorage=true", graph,
                                                                           "http://127.0.0.1:1"))))
        box = Mailbox(id=user.lower(), address=address, client="demo", tenant_id=TENANT, user_id=user.lower())
        clock, crm = FakeClock(), InMemoryCrm()
        await crm.find_or_create_company("Acme AB", "acme.example")
        processor = MessageProcessor(ProcessDeps(registry=FakeRegistry(box), ledger=FakeLedger(clock), mail=adapter,
                                                 crm=crm, queue=FakeQueue(), clock=clock))

        async def run(raw: bytes) -> tuple[Any, list[str], float]:
            message_id = graph.deliver(address, raw, notify=False)
            since = graph.requests.entries()[-1]["seq"] if len(graph.requests) else 0
            before = adapter.stats["requests"]
            cpu = time.process_time()
            outcome = await processor.run(MessageJob(mailbox_id=box.id, message_id=message_id, tenant_id=TENANT))
            cpu = time.process_time() - cpu
            for _ in range(500):
                calls = [e for e in graph.requests.entries(since_seq=since) if "/users/" in e["path"]]
                if len(calls) >= adapter.stats["requests"] - before:
                    break
                await asyncio.sleep(0.01)
            names = [re.sub(r"/attachments/[^/]+", "/attachments/{id}",
                            f"{e['method']} {e['path'].split(message_id, 1)[-1] or '/'}") for e in calls]
            return outcome, names, cpu

        await adapter.inbox_folder_id(box)
        request_id = m.outlook_id(f"bench/request/{uuid.uuid4()}")
        first, _, _ = await run(m.outlook(ANNA, address, "Invoice missing", "Where is it?", message_id=request_id))
        report: dict[str, Any] = {}
        for kind, build in kinds(address, request_id, first.ticket_number).items():
            requests: Counter[str] = Counter()
            outcomes: Counter[str] = Counter()
            total, cpu = 0, 0.0
            for _ in range(mails):
                outcome, names, spent = await run(build())
                requests.update(names)
                total += len(names)
                cpu += spent
                outcomes[f"{outcome.status} {outcome.data.get('action', '')}".strip()] += 1
            report[kind] = {"graph_requests_per_mail": round(total / mails, 2),
                            "by_request": {k: round(v / mails, 2) for k, v in requests.items()},
                            "outcomes": dict(outcomes), "processor_cpu_ms_per_mail": round(cpu * 1000 / mails, 2)}
        try:
            from shared.domain import reports
            big = m.ndr(DAEMON, address, "Undelivered", "Sorry.", "anna.andersson@acme.example",
                        reply(address, request_id, first.ticket_number, big=True), message_id="<big@mx.acme.example>")
            head = big[:reports.MAX_REPORT_BYTES]
            cpu = time.process_time()
            for _ in range(mails):
                reports.parse_report(head, True)
            report["parse_report_cpu_ms (256 KiB of a 1.2 MB bounce)"] = round(
                (time.process_time() - cpu) * 1000 / mails, 3)
        except ImportError:
            report["parse_report_cpu_ms"] = "n/a (no report parsing in this version)"
        return report
    finally:
        graph.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mails", type=int, default=40)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.mails)), indent=2))
