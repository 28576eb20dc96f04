"""Nothing lost, nothing doubled: the whole pipeline under seeded faults (issue 8).

The real app in the dev host, Azurite on disk, the Graph, Lime CRM and TRAML simulators
(tests/chaos/world.py). While mail arrives in three mailboxes the run injects, phase by phase:

  notifications  duplicated, delayed and reordered (jitter), dropped; all dropped for a while
  Graph          429 bursts with Retry-After, 500 and 503 bursts, dropped connections (timeouts)
  workers        a worker killed after each side-effecting call of the pipeline (the 1st, 2nd, ...
                 11th of process_message; the 1st ... 5th of the autoreply sender)
  CRM, TRAML     five minutes (of the app's clock) of 503 from Lime and from TRAML's send
  Azurite        restarted mid-run (on-disk persistence)
  Graph          a subscription removed (mail arrives before it is recreated); a `missed` lifecycle
                 event after notifications were lost

Then the faults stop, the clock moves past every lease and retry schedule, the sweep runs, and for
every delivered mail: exactly one history note in the CRM, on its conversation's ticket (one per
conversation, none shared), at most one autoreply per ticket, one person per sender, and the mail
gone from its Inbox or Failed with a reason (and the category). The totals are printed (`-s`) and
written to artifacts/chaos-totals.json.

Scale: CI runs about 85 mails. `CHAOS_MAILS=2000` (or `python -m tests.chaos --mails 2000`, by hand,
a benchmark-style run of some 20 minutes) scales every phase's mail count to about that many, with
the same faults: the kill plans (one per pipeline step, whatever the steps are) among the first
phase's mails, the outages, the restart, the removed subscription and the `missed` event. Its
totals go to artifacts/chaos-totals-<mails>.json.
"""
from __future__ import annotations

import json
import os
import random
import time
from collections import Counter, defaultdict

import pytest

from shared.adapters.keys import exact_hash
from tests.chaos.world import AUTOREPLY_SEQUENCE, PROCESS_SEQUENCE, World
from tests.fixtures.mail import mime as m
from tests.support.stack import ROOT

SEED = 8
# New conversations per phase in CI's run; CHAOS_MAILS scales them all (replies and moved kill plans
# come on top: CI's run delivers about 85 mails).
BASE = {"notify": 36, "crosspost": 3, "crm-outage": 8, "traml-outage": 6, "restart": 8, "unsubscribed": 5,
        "missed": 5, "reply": 10}
MAILS = int(os.environ.get("CHAOS_MAILS") or 0)
FACTOR = max(1.0, MAILS / sum(BASE.values())) if MAILS else 1.0


def count(phase: str) -> int:
    return max(BASE[phase], round(BASE[phase] * FACTOR))


def wait(seconds: float) -> float:
    """A timeout of CI's run, for this run's size (a backlog of 2,000 mails drains for minutes)."""
    return seconds * FACTOR
SUPPORT, SALES, BILLING = "support@contoso.example", "sales@contoso.example", "billing@contoso.example"
BOXES = [SUPPORT, SALES, BILLING]
FINISHED = ("processed", "skipped", "failed")
# A worker dies right after each step of a new mail's pipeline in turn (world.PROCESS_SEQUENCE: 11
# side-effecting calls, from the claim to the finished row) and of the autoreply sender's
# (AUTOREPLY_SEQUENCE: 5): between every two steps, and after the last (the queue message unsettled).
PROCESS_KILL_STEPS = range(1, len(PROCESS_SEQUENCE) + 1)
AUTOREPLY_KILL_STEPS = range(1, len(AUTOREPLY_SEQUENCE) + 1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("chaos"), seed=SEED)
    try:
        yield w.start(BOXES)
    finally:
        w.stop()


class Mails:
    """Conversations and their MIME, deterministic per seed."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.originals: dict[str, tuple[str, str, str, str]] = {}  # conversation -> (box, sender, subject, id)
        # as many conversations per sender at any scale (the per-recipient autoreply limit is 10)
        self.senders = [f"Customer {i} <customer{i}@firm{i % 5}.example>" for i in range(round(24 * FACTOR))]
        self.count = 0

    def new(self, box: str, phase: str, fresh_sender: bool = False) -> tuple[str, bytes]:
        """A new conversation; `fresh_sender`: from someone the CRM does not know yet."""
        self.count += 1
        conv = f"{phase}-{self.count}"
        sender = self.rng.choice(self.senders)
        if fresh_sender:
            sender = f"Newcomer {self.count} <newcomer{self.count}@newcomers.example>"
        subject = f"Chaos case {self.count}: {self.rng.choice(['printer', 'invoice', 'login', 'VPN', 'order'])}"
        message_id = m.outlook_id(f"chaos/{SEED}/{conv}")
        self.originals[conv] = (box, sender, subject, message_id)
        body = " ".join(self.rng.choice(["it", "does", "not", "work", "since", "monday", "please", "help"])
                        for _ in range(self.rng.randint(5, 40)))
        return conv, m.outlook(sender, box, subject, body, message_id=message_id)

    def reply(self, conv: str) -> bytes:
        box, sender, subject, original = self.originals[conv]
        return m.outlook(sender, box, f"RE: {subject}", "Any news?", message_id=m.outlook_id(f"chaos/{SEED}/{conv}/re"),
                         in_reply_to=original, references=[original])


def test_nothing_lost_nothing_doubled_under_faults(world: World):
    started = time.monotonic()
    rng = random.Random(SEED)
    mails = Mails(rng)
    graph, lime, traml = world.graph, world.lime, world.traml
    faults: Counter = Counter()

    # 1. notification chaos, Graph fault bursts, killed workers --------------------------------------
    graph.notification_delay_ms = 150  # the kill plans are in place before a job can start
    graph.notification_jitter_ms = 600  # delayed and reordered
    graph.duplicate_notifications = 0.25
    graph.drop_notifications = 0.1
    graph_rules = [graph.faults.add(429, path_regex=r"/messages/", count=round(8 * FACTOR), retry_after=1),
                   graph.faults.add(503, path_regex=r"/messages/", count=round(6 * FACTOR)),
                   graph.faults.add(500, path_regex=r"/messages/", count=round(6 * FACTOR)),
                   graph.faults.add(None, path_regex=r"/messages/", count=round(5 * FACTOR), drop_connection=True)]
    # 36 mails, delivered silently so that every kill plan is in place before anyone is told; the
    # victims write to us for the first time, so their pipelines have every step (a person to create)
    plans = [(world.process_kills, k) for k in PROCESS_KILL_STEPS] + \
            [(world.autoreply_kills, k) for k in AUTOREPLY_KILL_STEPS]
    victim_of = dict(zip(rng.sample(range(count("notify")), len(plans)), plans))
    first = []
    for i in range(count("notify")):
        conv, raw = mails.new(BOXES[i % 3], "notify", fresh_sender=i in victim_of)
        first.append((conv, world.deliver(BOXES[i % 3], raw, conv, "notify", notify=False)))
        if i in victim_of:
            switch, k = victim_of[i]
            switch.plans[first[-1][1].message_id] = k
    for _, d in first:
        world.notify(d)
    for i in range(count("crosspost")):  # one mail to two monitored mailboxes: one ticket, both copies actioned
        conv, raw = mails.new(SUPPORT, "crosspost")
        world.deliver(SUPPORT, raw, conv, "crosspost")
        world.deliver(SALES, raw, conv, "crosspost")
    faults.update(_kill_at_every_step(world, mails))

    # 2. five minutes of CRM outage, then five of TRAML outage ---------------------------------------
    lime_down = lime.faults.add(503, count=-1)
    for i in range(count("crm-outage")):
        conv, raw = mails.new(BOXES[i % 3], "crm-outage")
        world.deliver(BOXES[i % 3], raw, conv, "crm-outage")
    for _ in range(10):
        time.sleep(0.4)
        graph.advance_clock(30)
    _wait_for(lambda: lime_down.fired >= 3, wait(30))  # a slow machine has not reached Lime yet: the outage lasts
    lime.faults.remove(lime_down.id)
    faults["CRM 503 (outage)"] = lime_down.fired
    traml_down = traml.faults.add(503, path_regex="sendtemplate", count=-1)
    for i in range(count("traml-outage")):
        conv, raw = mails.new(BOXES[i % 3], "traml-outage")
        world.deliver(BOXES[i % 3], raw, conv, "traml-outage")
    for _ in range(10):  # until the outage has refused some autoreplies, at most 5 minutes of the app's clock
        time.sleep(0.5)
        graph.advance_clock(30)
        if traml_down.fired >= 3:
            break
    _wait_for(lambda: traml_down.fired >= 1, wait(30))
    traml.faults.remove(traml_down.id)
    faults["TRAML 503 (outage)"] = traml_down.fired

    # 3. Azurite restarted while mail is in flight ---------------------------------------------------
    for i in range(count("restart")):
        conv, raw = mails.new(BOXES[i % 3], "restart")
        world.deliver(BOXES[i % 3], raw, conv, "restart")
    time.sleep(0.3)
    world.azurite.restart()
    faults["Azurite restarts"] += 1

    # 4. a subscription removed: mail arrives before it is recreated -------------------------------
    graph.fire_lifecycle(world.subscription_of(SUPPORT), "subscriptionRemoved")
    faults["subscription removed"] += 1
    for _ in range(count("unsubscribed")):
        conv, raw = mails.new(SUPPORT, "unsubscribed")
        world.deliver(SUPPORT, raw, conv, "unsubscribed").notified = False  # no subscription: nobody is told
    deadline = time.monotonic() + wait(30)
    while time.monotonic() < deadline:
        try:
            world.subscription_of(SUPPORT)
            break
        except AssertionError:
            time.sleep(0.2)

    # 5. notifications lost, then Graph says so (`missed`) -------------------------------------------
    graph.drop_notifications = True
    for _ in range(count("missed")):
        conv, raw = mails.new(SALES, "missed")
        world.deliver(SALES, raw, conv, "missed").notified = False
    graph.drop_notifications = 0.1
    graph.advance_clock(301)  # older than the sweep's grace by the time the app sweeps
    graph.fire_lifecycle(world.subscription_of(SALES), "missed")
    faults["missed lifecycle event"] += 1

    # 6. replies to earlier conversations, still under notification chaos ----------------------------
    for conv, d in rng.sample(first, min(len(first), count("reply"))):
        world.deliver(d.address, mails.reply(conv), conv, "reply")
    world.wait_settled(wait(20))

    # the faults stop; the clock passes every lease, grace and retry schedule; the sweep runs ---------
    for rule in graph_rules:
        faults[f"Graph {rule.status or 'dropped connection (timeout)'}"] = rule.fired
    graph.faults.clear()
    graph.drop_notifications, graph.duplicate_notifications, graph.notification_jitter_ms = 0, 0.0, 0
    records = graph.notification_log("change")
    faults["notifications dropped"] = sum(1 for r in records if r.dropped)
    faults["notifications duplicated"] = sum(1 for r in records if r.duplicate)
    faults["notifications reordered"] = _reordered(records)
    faults["workers killed (process_message)"] = len(world.process_kills.fired)
    faults["workers killed (send_autoreply)"] = len(world.autoreply_kills.fired)
    kill_points = {switch.name: ", ".join(f"{k} {method}" for _, k, method in sorted(switch.fired, key=lambda f: f[1]))
                   for switch in (world.process_kills, world.autoreply_kills)}
    unfired = {switch.name: {mid: (k, switch.calls.get(mid)) for mid, k in switch.plans.items()}
               for switch in (world.process_kills, world.autoreply_kills)}
    for _ in range(3):
        graph.advance_clock(16 * 60)
        world.sweep()
        if world.wait_settled(wait(45)) and not _failed_transiently(world):
            break
    _wait_quiet(world, timeout=wait(40))

    # the verdict ------------------------------------------------------------------------------------
    rows = world.rows()
    inbox = {(box, msg["id"]): msg for box in BOXES for msg in graph.messages(box, "Inbox")}
    histories = defaultdict(list)
    for h in lime.objects("history"):
        if h.get("type") == "receivedemail":
            histories[h.get("inboxkey")].append(h)
    tickets_of: dict[str, set[int]] = defaultdict(set)
    lost, doubled, failed = [], [], []
    for d in world.delivered:
        row = rows[(d.address, d.message_id)]
        notes = histories.get(exact_hash(d.key, 40), [])
        still_there = (d.address, d.message_id) in inbox
        if row is not None and row.status == "failed":
            failed.append(d)
            assert row.last_error, f"{d}: Failed without a reason"
            assert still_there and "Inbox: Failed" in inbox[(d.address, d.message_id)]["categories"], d
            continue
        if row is None or row.status not in FINISHED or still_there or not notes:
            lost.append((d, row.status if row else "no ledger row", still_there, len(notes)))
        if len(notes) > 1:
            doubled.append((d, len(notes)))
        tickets_of[d.conversation].update(n.get("helpdesk") for n in notes)
    wrong_ticket = {c: t for c, t in tickets_of.items() if len(t) != 1}
    owners: dict[int, set[str]] = defaultdict(set)
    for conv, tickets in tickets_of.items():
        for t in tickets:
            owners[t].add(conv)
    shared = {t: c for t, c in owners.items() if len(c) > 1}
    helpdesks = lime.objects("helpdesk")
    persons = Counter(p.get("email") for p in lime.objects("person"))
    sent = Counter(s["ExternalId"] for s in traml.sent_mail())
    ticket_ids = {f"hd{h['_id']}" for h in helpdesks}
    uncertain = world.run(world.services.autoreplies.list_autoreplies("uncertain", 500))

    totals = {
        "mails": len({d.key for d in world.delivered}), "mailbox copies": len(world.delivered),
        "conversations": len(tickets_of), "tickets": len(helpdesks), "autoreplies": sum(sent.values()),
        "autoreplies uncertain (not resent)": len(uncertain),
        "failed (with reason)": len(failed), "faults": dict(faults), "killed after": kill_points,
        "lost": len(lost), "doubled": len(doubled) + sum(1 for n in persons.values() if n > 1)
        + sum(1 for n in sent.values() if n > 1) + len(shared) + max(0, len(helpdesks) - len(tickets_of)),
        "seconds": round(time.monotonic() - started, 1),
    }
    totals["re-enqueued after transient failures (delayed puts)"] = world.time_lapse.delayed
    print("\nchaos totals: " + json.dumps(totals, indent=1))
    if (ROOT / "artifacts").is_dir():
        name = f"chaos-totals-{MAILS}.json" if MAILS else "chaos-totals.json"
        (ROOT / "artifacts" / name).write_text(json.dumps(totals, indent=1))

    assert not lost, f"{len(lost)} lost, e.g. {lost[:3]}"
    assert not doubled, f"{len(doubled)} with more than one history note, e.g. {doubled[:3]}"
    assert not wrong_ticket, f"conversations on more than one ticket: {wrong_ticket}"
    assert not shared, f"tickets shared by conversations: {shared}"
    assert len(helpdesks) == len(tickets_of), "tickets no conversation asked for"
    assert all(n == 1 for n in persons.values()), f"persons created twice: {persons}"
    assert all(n == 1 for n in sent.values()), f"autoreplies sent twice: {sent}"
    assert {e.removeprefix("inbox-autoreply-") for e in sent} <= ticket_ids
    assert sum(sent.values()) <= len(tickets_of)
    # every kind of fault was actually injected
    assert all(faults[k] > 0 for k in ("notifications dropped", "notifications duplicated", "notifications reordered",
                                       "CRM 503 (outage)", "TRAML 503 (outage)")), faults
    # a worker died after every step, and where the plan said
    for switch in (world.process_kills, world.autoreply_kills):
        killed = sorted((k, method) for _, k, method in switch.fired)
        assert killed == list(enumerate(switch.sequence, 1)), (kill_points, unfired)


def _kill_at_every_step(world: World, mails: Mails, rounds: int = 5) -> Counter:
    """Until a worker died after every kill step. A plan whose mail finished without reaching its
    step on the planned path (a Graph fault or a lease another worker took over made a run take
    another path), or whose notification the chaos dropped (the final sweep finds that mail), moves
    to a fresh mail. Returns how many plans moved, by why."""
    moved: Counter = Counter()
    for _ in range(rounds):
        _wait_for(lambda: not _kills_pending(world), wait(30), interval=0.2 if FACTOR == 1 else 2.0)
        _wait_quiet(world, seconds=2.0, timeout=wait(20))  # the autoreplies of finished mail
        stale = [(switch, dict(switch.plans)) for switch in (world.process_kills, world.autoreply_kills)]
        if not any(plans for _, plans in stale):
            break
        notified = {d.message_id: d.notified for d in world.delivered}
        fresh = []
        for switch, plans in stale:
            for mid, k in plans.items():
                switch.plans.pop(mid, None)  # a run of the old mail still going can no longer be killed
                why = "its notification dropped" if not notified.get(mid) else "its run took another path"
                moved[f"kill plans moved to a fresh mail ({why})"] += 1
                box = BOXES[sum(moved.values()) % 3]
                conv, raw = mails.new(box, "notify", fresh_sender=True)
                d = world.deliver(box, raw, conv, "notify", notify=False)
                switch.plans[d.message_id] = k
                fresh.append(d)
        for d in fresh:
            world.notify(d)
    return moved


def _kills_pending(world: World) -> bool:
    """A planned mail that was notified and is not finished yet."""
    planned = set(world.process_kills.plans) | set(world.autoreply_kills.plans)
    watched = [d for d in world.delivered if d.message_id in planned and d.notified]
    rows = world.rows(watched)
    return any((r := rows[(d.address, d.message_id)]) is None or r.status not in FINISHED for d in watched)


def _wait_for(condition, timeout: float = 30.0, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(interval)


def _reordered(records) -> int:
    """Notifications delivered after one that was created later (each counted once)."""
    delivered = [r for r in records if r.delivered and r.attempts and not r.duplicate]
    by_arrival = sorted(delivered, key=lambda r: r.attempts[-1]["time"])
    latest, count = 0, 0
    for r in by_arrival:
        if r.id < latest:
            count += 1
        latest = max(latest, r.id)
    return count


def _failed_transiently(world: World) -> bool:
    return any(r is not None and r.status == "failed" and not r.data.get("permanent") for r in world.rows().values())


def _wait_quiet(world: World, seconds: float = 3.0, timeout: float = 40.0) -> None:
    """Until no autoreply went out for `seconds` (the last jobs, and their retries, are done)."""
    deadline = time.monotonic() + timeout
    last, since = len(world.traml.sent), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = len(world.traml.sent)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return
