"""Processing extensions the tests load through PROCESSING_EXTENSION (`tests.support.extensions:<name>`)."""
from __future__ import annotations

import asyncio
import logging

from examples.helpdesk_type_by_address import helpdesk_type
from shared.domain.errors import TransientError

log = logging.getLogger("inbox.extension.probe")
CALLS: list[str] = []
NOT_CALLABLE = 42


def raising(mail, decision, change):
    raise RuntimeError("no helpdesk type for this mail")


async def async_title(mail, decision, change):
    await asyncio.sleep(0)
    change.set_title("Set by an async extension")
    change.set("priority", 2)


async def slow(mail, decision, change):
    await asyncio.sleep(30)


def returns_value(mail, decision, change):
    return decision


def reserved_name(mail, decision, change):
    change.set("title", "not like this")


def reopen_always(mail, decision, change):
    change.reopen()


def skip_newsletters(mail, decision, change):
    if "newsletter" in mail.subject.lower():
        change.skip("a newsletter, not a support request")


def needs_retry(mail, decision, change):
    raise TransientError("the lookup service the extension needs is down", retry_after=1)


def flip_flop(mail, decision, change):
    """A new ticket the first time it is asked, a skip after: a redelivery must not ask again."""
    CALLS.append(mail.message_id)
    if len(CALLS) == 1:
        change.new_ticket("first answer")
        change.set("helpdesktype", "first")
    else:
        change.skip("second answer")


def type_on_follow_up(mail, decision, change):
    change.set("helpdesktype", "ignored on a follow-up")


def two_arguments(mail, decision):
    pass


def probe(mail, decision, change):
    """The e2e tests' extension: the seed's helpdesk type by address, and a failure on request."""
    if "explode" in mail.subject.lower():
        raise RuntimeError("the probe extension refuses this mail")
    helpdesk_type(mail, decision, change)
    log.info("probe.decided creates_ticket=%s", decision.creates_ticket)  # no correlation here: the filter adds it
