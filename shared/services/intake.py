"""Webhook intake: verify Graph change notifications and enqueue one job per real one.

No table read, no Graph call: a clientState is checked against the HMAC of its tenant and mailbox
(constant time), valid notifications are enqueued concurrently, and the caller answers 202.
Forged ones are dropped with a log line giving the reason; the response never says which.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace

from ..config import QUEUE_LIFECYCLE, QUEUE_MESSAGES
from ..domain.clientstate import ClientStateSigner
from ..domain.envelope import LifecycleJob, MessageJob, new_correlation_id
from ..domain.notifications import parse_change_notifications, parse_lifecycle_notifications
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


async def accept_lifecycle(body: bytes, queue: JobQueue, mailbox_of_subscription, signer: ClientStateSigner
                           ) -> IntakeResult:
    """Lifecycle notifications carry no resource, so the mailbox comes from our subscription
    record (`mailbox_of_subscription(subscription_id) -> (mailbox_id, tenant_id) | None`)."""
    result = IntakeResult()
    for n in parse_lifecycle_notifications(body):
        found = await mailbox_of_subscription(n.subscription_id)
        if not found or not signer.verify(n.client_state, n.tenant_id, found[0]):
            result.rejected += 1
            log.warning("graph.lifecycle.rejected subscription=%s reason=%s", n.subscription_id,
                        "unknown-subscription" if not found else "invalid-client-state")
            continue
        result.enqueued.append(LifecycleJob(subscription_id=n.subscription_id, tenant_id=n.tenant_id,
                                            lifecycle_event=n.lifecycle_event, mailbox_id=found[0]))
    await asyncio.gather(*(queue.send(QUEUE_LIFECYCLE, job) for job in result.enqueued))
    for job in result.enqueued:
        log.info("graph.lifecycle.enqueued correlation=%s subscription=%s event=%s", job.correlation_id,
                 job.subscription_id, job.lifecycle_event)
    return result
