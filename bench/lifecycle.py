"""Benchmark: how long `POST /api/lifecycle` takes to answer a body of 1,000 lifecycle notifications.

    .venv/bin/python bench/lifecycle.py [--notifications 1000] [--repeat 3]

Graph waits at most 3 s for an answer (then counts the delivery as failed and retries). Starts
Azurite and the dev host in its own process (only `graph_lifecycle`, so nothing drains the
`inbox-lifecycle` queue while it is measured), writes --notifications mailboxes with their
subscription records through the app's own table adapters, then POSTs one body of that many
notifications, --repeat times per case, and prints the median and the slowest answer:

  unknown-forged          unknown subscription ids, clientStates of the right shape but signed
                          with no key of ours (a forged body), to the URL without `mailbox=`
  unknown-forged-mailbox  the same to the lifecycle URL of a registered mailbox (`?mailbox=<id>`,
                          as every subscription we create has it)
  unknown-replayed        unknown subscription ids, each with a real clientState (a replay)
  unknown-duplicates      one unknown subscription id, 1,000 times
  valid                   one real `missed` event for each of the 1,000 subscriptions (all enqueued)

Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import HostProcess, intake_host  # noqa: E402
from shared.domain.clientstate import ClientStateSigner  # noqa: E402
from tests.support.azurite import free_port, start_azurite  # noqa: E402

TENANT = "00000000-0000-0000-0000-0000000000aa"
KEYS = "1:bench-client-state-key-0123456789"
FOREIGN = ClientStateSigner({1: b"a-key-that-is-not-one-of-ours-0123"})


def start_host(connection: str, port: int) -> HostProcess:
    return intake_host(connection, KEYS, "graph_lifecycle", port, log_level="ERROR")


async def seed(connection: str, count: int) -> list[tuple[str, str]]:
    """`count` registered mailboxes, each with an active subscription: [(mailbox id, subscription id)]."""
    from shared.adapters.mailboxes_table import TableMailboxRegistry
    from shared.adapters.storage_clients import StorageAccount
    from shared.adapters.subscriptions_table import TableSubscriptionStore
    from shared.domain.model import Mailbox
    from shared.services.subscriptions import SubscriptionRecord
    account = StorageAccount(connection, {"AzureWebJobsStorage": connection})
    await account.ensure_tables("mailboxes", "subscriptions")
    registry, store = TableMailboxRegistry(account), TableSubscriptionStore(account)
    pairs = [(str(uuid.uuid4()), str(uuid.uuid4())) for _ in range(count)]
    gate = asyncio.Semaphore(16)

    async def one(mailbox_id: str, subscription_id: str) -> None:
        async with gate:
            await registry.save(Mailbox(id=mailbox_id, address=f"box-{mailbox_id[:8]}@bench.example", client="demo",
                                        tenant_id=TENANT, user_id=mailbox_id))
            await store.save(SubscriptionRecord(mailbox_id=mailbox_id, client="demo", subscription_id=subscription_id,
                                                status="active"))
    await asyncio.gather(*(one(m, s) for m, s in pairs))
    await account.close()
    return pairs


def body(items: list[dict]) -> bytes:
    return json.dumps({"value": items}).encode()


def item(subscription_id: str, client_state: str, event: str = "missed") -> dict:
    return {"subscriptionId": subscription_id, "subscriptionExpirationDateTime": "2026-12-01T00:00:00Z",
            "tenantId": TENANT, "clientState": client_state, "lifecycleEvent": event}


def cases(signer: ClientStateSigner, pairs: list[tuple[str, str]], n: int) -> dict[str, tuple[str, bytes]]:
    first_box = pairs[0][0]
    forged = body([item(str(uuid.uuid4()), FOREIGN.sign(TENANT, str(uuid.uuid4()))) for _ in range(n)])
    replayed = body([item(str(uuid.uuid4()), signer.sign(TENANT, pairs[i % len(pairs)][0])) for i in range(n)])
    dup_id = str(uuid.uuid4())
    duplicates = body([item(dup_id, signer.sign(TENANT, first_box)) for _ in range(n)])
    valid = body([item(s, signer.sign(TENANT, m)) for m, s in pairs[:n]])
    return {"unknown-forged": ("", forged), "unknown-forged-mailbox": (f"?mailbox={first_box}", forged),
            "unknown-replayed": ("", replayed), "unknown-duplicates": ("", duplicates), "valid": ("", valid)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--notifications", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    signer = ClientStateSigner({1: KEYS.split(":", 1)[1].encode()})
    azurite = start_azurite()
    port = free_port()
    host = start_host(azurite.connection_string, port)
    results: dict[str, dict] = {}
    try:
        pairs = asyncio.run(seed(azurite.connection_string, args.notifications))
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
            http.post("/api/lifecycle", content=body([item(pairs[0][1], signer.sign(TENANT, pairs[0][0]))]))  # warm
            for name, (query, payload) in cases(signer, pairs, args.notifications).items():
                times, statuses = [], set()
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    resp = http.post("/api/lifecycle" + query, content=payload,
                                     headers={"Content-Type": "application/json"})
                    times.append(time.perf_counter() - started)
                    statuses.add(resp.status_code)
                results[name] = {"status": sorted(statuses), "median_s": round(statistics.median(times), 3),
                                 "max_s": round(max(times), 3), "body_kb": round(len(payload) / 1024)}
        print(json.dumps({"notifications_per_post": args.notifications, "cases": results}, indent=2))
    finally:
        host.stop()
        azurite.stop()


if __name__ == "__main__":
    main()
