"""Command line of the Graph simulator: ``python -m tools.sim.graph --port 0 --demo`` starts it,
optionally seeds a demo tenant, app and mailboxes, prints its URLs as JSON and runs until SIGINT or
SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from typing import Any

from .model import DEMO_CLIENT_ID, DEMO_MAILBOX, DEMO_SECRET, DEMO_TENANT
from .server import GraphSim


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.sim.graph",
                                     description="Microsoft Graph + Entra simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRAPH_SIM_PORT", "0")))
    parser.add_argument("--webhook-base", default=os.environ.get("GRAPH_SIM_WEBHOOK_BASE"),
                        help="deliver notifications for non-loopback URLs to this base instead")
    parser.add_argument("--no-tls", action="store_true", help="plain HTTP only (no token "
                        "endpoint usable by MSAL)")
    parser.add_argument("--demo", action="store_true",
                        default=os.environ.get("GRAPH_SIM_DEMO", "") not in ("", "0"),
                        help="seed a demo tenant, app and mailbox")
    parser.add_argument("--tenant", default=os.environ.get("GRAPH_SIM_TENANT", DEMO_TENANT))
    parser.add_argument("--client-id", default=os.environ.get("GRAPH_SIM_CLIENT_ID"))
    parser.add_argument("--secret", default=os.environ.get("GRAPH_SIM_SECRET"))
    parser.add_argument("--mailbox", action="append",
                        default=[m for m in os.environ.get("GRAPH_SIM_MAILBOXES", "").split(",")
                                 if m], help="add a mailbox (repeatable)")
    parser.add_argument("--throttle", action="store_true", help="enable Outlook throttling")
    parser.add_argument("--latency-ms", type=float, default=0)
    args = parser.parse_args(argv)

    sim = GraphSim(args.host, args.port, tls=not args.no_tls, webhook_base=args.webhook_base,
                   latency_ms=args.latency_ms)
    seeded: dict[str, Any] = {}
    if args.demo:
        sim.add_app(DEMO_TENANT, DEMO_CLIENT_ID, secret=DEMO_SECRET)
        seeded["demo"] = {"tenant_id": DEMO_TENANT, "client_id": DEMO_CLIENT_ID,
                          "secret": DEMO_SECRET, "mailboxes": {
                              DEMO_MAILBOX: sim.add_mailbox(DEMO_MAILBOX, "Support",
                                                            tenant_id=DEMO_TENANT)}}
    if args.client_id and args.secret:
        sim.add_app(args.tenant, args.client_id, secret=args.secret)
        seeded["app"] = {"tenant_id": args.tenant, "client_id": args.client_id}
    extra = {}
    for address in args.mailbox:
        if address.lower() != DEMO_MAILBOX or not args.demo:
            extra[address] = sim.add_mailbox(address, tenant_id=args.tenant)
    if extra:
        seeded["mailboxes"] = extra
    if args.throttle:
        sim.throttle()
    sim.start()
    print(json.dumps({**sim.info(), **seeded}), flush=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    sim.stop()
    return 0
