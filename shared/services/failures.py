"""Failed mail: the poison handler's use case, and the mailbox category that makes it visible.

`record_poisoned` runs on `inbox-messages-poison` (a job that exhausted the queue's retries):
1. the ledger row becomes Failed, keeping the last error and the attempt count, with the sweep's
   retry schedule (`retry_at`, `retries`) and `category: pending`; this write comes first and is
   the only thing that may fail the handler (Storage down: the poison queue retries it);
2. then, best effort, the mail gets the category FAILED_CATEGORY, which Outlook shows, and stays
   in the Inbox. If Graph is what is failing, the row keeps `category: pending` and the sweep
   applies it later. The handler never fails for that.

`record_permanent` is the processor's hook for permanent errors (Failed without burning retries,
the row already marked `permanent` by the processor: the sweep does not retry it, an admin's
recovery does): the category, the same way.  Performs I/O only through the ports.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from .. import telemetry
from ..domain.envelope import MessageJob
from ..domain.errors import InboxError, LeaseHeld, MailNotFound
from ..domain.model import FAILED, FINISHED, PROCESSING, LedgerEntry, Mailbox
from ..ports import Clock, MailboxRegistry, MailGateway

log = logging.getLogger("inbox.failures")

# Shown in Outlook on the mail (a category missing from the mailbox's master list shows uncoloured).
FAILED_CATEGORY = "Inbox: Failed"
# The sweep retries Failed mail after 10 min, 20, 40, 80, 160, then every 4 h (until
# FAILED_RETRY_MAX_AGE_HOURS): each retry is a full queue budget of 5 deliveries.
RETRY_BASE = timedelta(minutes=10)
RETRY_MAX = timedelta(hours=4)
# data["category"] values
CATEGORY_PENDING, CATEGORY_APPLIED, CATEGORY_GONE = "pending", "applied", "gone"
CATEGORY_CLEARED = "cleared"  # removed again when the mail was done after all (moved, not deleted)


def retry_delay(retries_done: int) -> timedelta:
    """How long after a failure the sweep tries again, given how many sweep retries were done."""
    return min(RETRY_BASE * (2 ** max(0, retries_done)), RETRY_MAX)


def _trace(entry: LedgerEntry, now: datetime, event: str, **extra: Any) -> None:
    entry.trace.append({"at": now.isoformat(), "event": event, **extra})


async def apply_failed_category(mail: MailGateway, mailbox: Mailbox, entry: LedgerEntry) -> str:
    """Add FAILED_CATEGORY to the mail (keeping its other categories); record the result in
    entry.data["category"], and the mail's sender, subject and received time where the row has
    none yet (the caller saves). Never raises for Graph: returns the new state."""
    try:
        current = await mail.get_message(mailbox, entry.message_id)
        # a job that failed before its first fetch left no summary: the lists need one
        entry.sender = entry.sender or current.sender.normalized
        entry.subject = entry.subject or current.subject
        entry.received_at = entry.received_at or current.received_at
        categories = list(current.categories)
        if FAILED_CATEGORY not in categories:
            await mail.set_categories(mailbox, entry.message_id, categories + [FAILED_CATEGORY])
        state = CATEGORY_APPLIED
    except MailNotFound:
        state = CATEGORY_GONE  # deleted or moved away meanwhile; a recovery settles the row
    except InboxError as exc:
        log.warning("failures.category-pending mailbox=%s message=%s error=%s", mailbox.id, entry.message_id,
                    type(exc).__name__)
        state = CATEGORY_PENDING
    except Exception as exc:  # noqa: BLE001 - an SDK surprise must not fail the poison handler
        log.warning("failures.category-pending mailbox=%s message=%s error=%s", mailbox.id, entry.message_id,
                    type(exc).__name__)
        state = CATEGORY_PENDING
    entry.data["category"] = state
    return state


async def clear_failed_category(mail: MailGateway, mailbox: Mailbox, entry: LedgerEntry) -> None:
    """Before a mail that was Failed is moved to a folder, processed after all (a recovery, the
    sweep's retry): take FAILED_CATEGORY off it, keeping its other categories, so the folder does
    not show done mail as failed. Only for rows that got (or may have got) the category; best
    effort: a category left behind is cosmetic and must not hold up the move."""
    if entry.data.get("category") not in (CATEGORY_APPLIED, CATEGORY_PENDING):
        return
    try:
        current = await mail.get_message(mailbox, entry.message_id)
        kept = [c for c in current.categories if c != FAILED_CATEGORY]
        if len(kept) != len(current.categories):
            await mail.set_categories(mailbox, entry.message_id, kept)
        entry.data["category"] = CATEGORY_CLEARED
    except MailNotFound:
        entry.data["category"] = CATEGORY_GONE
    except Exception as exc:  # noqa: BLE001 - InboxError or an SDK surprise: the move goes ahead
        log.warning("failures.category-not-cleared mailbox=%s message=%s error=%s", mailbox.id, entry.message_id,
                    type(exc).__name__)


class FailureService:
    def __init__(self, registry: MailboxRegistry, ledger: Any, mail: MailGateway, clock: Clock) -> None:
        self.registry = registry
        self.ledger = ledger
        self.mail = mail
        self.clock = clock

    async def record_poisoned(self, job: MessageJob, dequeue_count: int = 0) -> str:
        """The ledger row becomes Failed (first), then the category (best effort). Returns what happened:
        failed | already-finished | in-flight | unknown-mailbox."""
        mailbox = await self.registry.get(job.mailbox_id)
        if mailbox is None:
            log.warning("failures.unknown-mailbox correlation=%s message=%s", job.correlation_id, job.message_id)
            return "unknown-mailbox"
        entry: LedgerEntry | None = None
        for attempt in range(5):
            now = self.clock.now()
            entry = await self.ledger.get(mailbox.id, job.message_id)
            if entry is not None and entry.status in FINISHED:
                # a duplicate job of a mail another delivery finished: nothing failed
                log.info("failures.already-finished correlation=%s message=%s status=%s", job.correlation_id,
                         job.message_id, entry.status)
                return "already-finished"
            if (entry is not None and entry.status == PROCESSING and entry.lease_owner
                    and entry.lease_until and entry.lease_until > now):
                # another job of the same mail is working on it right now: its outcome decides
                log.info("failures.in-flight correlation=%s message=%s", job.correlation_id, job.message_id)
                return "in-flight"
            fresh = entry is None
            if entry is None:
                entry = LedgerEntry(mailbox_id=mailbox.id, message_id=job.message_id, source=job.source,
                                    correlation_id=job.correlation_id, created_at=now)
            entry.status = FAILED
            entry.lease_owner, entry.lease_until = "", None
            entry.attempts = max(entry.attempts, dequeue_count, 1)
            entry.last_error = entry.last_error or "the queue's retry budget was exhausted without a recorded error"
            retries = int(entry.data.get("retries") or 0)
            entry.data["retry_at"] = (now + retry_delay(retries)).isoformat()
            entry.data["category"] = CATEGORY_PENDING
            entry.data.pop("permanent", None)
            _trace(entry, now, "failed", reason="retry budget exhausted", attempts=entry.attempts,
                   correlation_id=job.correlation_id, source=job.source)
            try:
                entry = await (self.ledger.insert(entry) if fresh else self.ledger.save(entry))
                break
            except LeaseHeld:
                continue  # written by someone else in between: read again
        else:
            raise LeaseHeld("the ledger row kept changing; the poison queue will retry")
        assert entry is not None
        log.warning("failures.failed correlation=%s mailbox=%s message=%s attempts=%s", job.correlation_id,
                    mailbox.id, job.message_id, entry.attempts)
        telemetry.count(telemetry.MAILS_FAILED, source=job.source)
        await self._categorize(mailbox, entry)
        return "failed"

    async def record_permanent(self, mailbox: Mailbox, entry: LedgerEntry) -> None:
        """The processor's hook after it recorded a permanent failure (the row is Failed and
        `permanent` already): the category (best effort). Never raises."""
        try:
            await self._categorize(mailbox, entry)
        except Exception as exc:  # noqa: BLE001 - the failure itself is recorded; the sweep finishes this
            log.warning("failures.permanent-note-unsaved mailbox=%s message=%s error=%s", mailbox.id,
                        entry.message_id, type(exc).__name__)

    async def _categorize(self, mailbox: Mailbox, entry: LedgerEntry) -> None:
        state = await apply_failed_category(self.mail, mailbox, entry)
        try:
            await self.ledger.save(entry)
        except LeaseHeld:
            pass  # changed meanwhile (a retry claimed it): the sweep looks again
        except InboxError as exc:
            log.warning("failures.category-state-unsaved mailbox=%s message=%s error=%s", mailbox.id,
                        entry.message_id, type(exc).__name__)
        log.info("failures.category mailbox=%s message=%s state=%s", mailbox.id, entry.message_id, state)
