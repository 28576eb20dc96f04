"""Webhook intake: verify Graph change and lifecycle notifications and enqueue one job per real one.

Change notifications: no table read, no Graph call: a clientState is checked against the HMAC of
its tenant and mailbox (constant time), valid notifications are enqueued concurrently, and the
caller answers 202. Lifecycle notifications name no mailbox, so their subscription record is read,
but only for a clientState that could be ours, once per subscription id, concurrently.
Forged ones are dropped with a log line giving the reason; the response never says which.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ..config import QUEUE_LIFECYCLE, QUEUE_MESSAGES
from ..domain.clientstate import ClientStateSigner
from ..domain.envelope import LifecycleJob, MessageJob, new_correlation_id
from ..domain.notifications import (
    LifecycleNotification, parse_change_notifications, parse_lifecycle_notifications,
)
from ..ports import JobQueue

log = logging.getLogger("inbox.intake")


@dataclass
class IntakeResult:
    enqueued: list[MessageJob | LifecycleJob] = field(default_factory=list)
    rejected: int = 0
    ignored: int = 0


async def accept_notifications(body: bytes, signer: ClientStateSigner, queue: JobQueue,
                               mailbox_key: str | None = None) -> IntakeResult:
    """Raises MalformedNotification for a bad body (nothing enqueued), and whatever the queue
    raises when an enqueue fails (the caller answers 5xx so Graph retries).

    mailbox_key: the `mailbox` query parameter of our notification URL (Graph sends it back).  When
    present, the notifications are verified against that mailbox instead of the user id in their
    resource: a mailbox registered by address has no user id we could compare with."""
    notifications = parse_change_notifications(body)
    result = IntakeResult()
    seen: set[tuple[str, str]] = set()
    for n in notifications:
        if mailbox_key:
            n = replace(n, mailbox_id=mailbox_key)
        if not signer.verify(n.client_state, n.tenant_id, n.mailbox_id):
            result.rejected += 1
            log.warning("graph.webhook.invalid-client-state subscription=%s reason=%s", n.subscription_id,
                        "malformed" if signer.version_of(n.client_state) is None else "mismatch-or-retired-key")
            continue
        if n.change_type.lower() != "created":
            result.ignored += 1
            continue
        key = (n.mailbox_id.lower(), n.message_id)
        if key in seen:  # Graph batches duplicates; one job is enough
            result.ignored += 1
            continue
        seen.add(key)
        result.enqueued.append(MessageJob(mailbox_id=n.mailbox_id.lower(), message_id=n.message_id,
                                          tenant_id=n.tenant_id, subscription_id=n.subscription_id,
                                          source="webhook", correlation_id=new_correlation_id()))
    await asyncio.gather(*(queue.send(QUEUE_MESSAGES, job) for job in result.enqueued))
    for job in result.enqueued:
        log.info("graph.webhook.enqueued correlation=%s subscription=%s message=%s", job.correlation_id,
                 job.subscription_id, job.message_id)
    return result


class SubscriptionLookup(Protocol):
    async def mailboxes_of(self, subscription_ids: list[str]) -> dict[str, str | None]:
        """The mailbox of each subscription id, None for one we do not know, in as few reads as
        the store can (adapters/subscriptions_table.py: point reads for a few, one query for many)."""


class MailboxLookup(Protocol):
    async def get(self, mailbox_id: str) -> Any: ...

    async def list(self) -> list[Any]: ...


# Mailboxes checked one point read each, concurrently; more are checked against one registry list.
POINT_READS_MAX = 8
# Rejected notifications logged one by one, per POST; the rest are counted in one summary line.
LOG_REJECTED = 20


async def accept_lifecycle(body: bytes, queue: JobQueue, subscriptions: SubscriptionLookup,
                           registry: MailboxLookup, signer: ClientStateSigner, mailbox_key: str | None = None
                           ) -> IntakeResult:
    """Lifecycle notifications carry no resource, so the mailbox comes from our subscription record
    (`subscriptions.mailboxes_of`) and must still be registered (`registry`).

    Cheap checks first, reads after, and only what is needed: a clientState not of our shape (or of
    a key version we do not hold) is refused without a read; with `mailbox_key` (the `mailbox` query
    parameter our lifecycle URL carries, which Graph sends back) the HMAC is checked against that
    mailbox before any read too, so a forged body costs no table read at all. A subscription id is
    looked up once however often the body repeats it (a repeated (id, event) is one job), and many
    ids cost one query, not one read each (SubscriptionLookup); so do many mailboxes (`_registered`).
    A body of 1,000 answers within Graph's 3 s whatever it holds (figures: bench/lifecycle.py).
    Raises MalformedNotification for a bad body (nothing enqueued) and whatever Storage raises."""
    result = IntakeResult()
    rejections: list[tuple[str, str]] = []
    wanted: dict[tuple[str, str, str, str], LifecycleNotification] = {}
    for n in parse_lifecycle_notifications(body):
        key = (n.subscription_id, n.lifecycle_event, n.tenant_id, n.client_state)
        if key in wanted:
            result.ignored += 1  # Graph may repeat one: checked once
            continue
        if not signer.plausible(n.client_state) or (
                mailbox_key and not signer.verify(n.client_state, n.tenant_id, mailbox_key)):
            rejections.append((n.subscription_id, "invalid-client-state"))
            continue
        wanted[key] = n
    owner = await subscriptions.mailboxes_of(list(dict.fromkeys(n.subscription_id for n in wanted.values())))
    registered = await _registered(registry, list(dict.fromkeys(m for m in owner.values() if m)))
    jobs: set[tuple[str, str]] = set()
    for n in wanted.values():
        mailbox_id = owner.get(n.subscription_id)
        if not mailbox_id or mailbox_id not in registered:
            rejections.append((n.subscription_id, "unknown-subscription"))
        elif (mailbox_key and mailbox_id.lower() != mailbox_key.lower()) \
                or not signer.verify(n.client_state, n.tenant_id, mailbox_id):
            rejections.append((n.subscription_id, "invalid-client-state"))
        elif (n.subscription_id, n.lifecycle_event) in jobs:
            result.ignored += 1  # one job per (subscription, event) is enough
        else:
            jobs.add((n.subscription_id, n.lifecycle_event))
            result.enqueued.append(LifecycleJob(subscription_id=n.subscription_id, tenant_id=n.tenant_id,
                                                lifecycle_event=n.lifecycle_event, mailbox_id=mailbox_id))
    result.rejected = len(rejections)
    for subscription_id, reason in rejections[:LOG_REJECTED]:
        log.warning("graph.lifecycle.rejected subscription=%s reason=%s", subscription_id, reason)
    if len(rejections) > LOG_REJECTED:
        log.warning("graph.lifecycle.rejected-more count=%s reasons=%s", len(rejections) - LOG_REJECTED,
                    ",".join(sorted({r for _, r in rejections[LOG_REJECTED:]})))
    await asyncio.gather(*(queue.send(QUEUE_LIFECYCLE, job) for job in result.enqueued))
    for job in result.enqueued:
        log.info("graph.lifecycle.enqueued correlation=%s subscription=%s event=%s", job.correlation_id,
                 job.subscription_id, job.lifecycle_event)
    return result


async def _registered(registry: MailboxLookup, mailbox_ids: list[str]) -> set[str]:
    """Which of these mailboxes are registered: point reads for a few, one (cached) list for more."""
    if len(mailbox_ids) <= POINT_READS_MAX:
        boxes = await asyncio.gather(*(registry.get(m) for m in mailbox_ids))
        return {m for m, box in zip(mailbox_ids, boxes) if box is not None}
    known = {box.id for box in await registry.list()}
    return {m for m in mailbox_ids if m in known}
