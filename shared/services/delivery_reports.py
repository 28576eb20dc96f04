"""A bounce or delivery report finds its ticket through the original message it carries.

Used by the processor's decision (shared/services/process.py) for mail the classification marked as a
delivery report (domain/policy.Classification.delivery_report), and only for such mail: one extra Graph
request, the first reports.MAX_REPORT_BYTES of the mail's MIME, which hold the delivery-status fields
and the original's headers (the rest of a large original is never downloaded). The original's
Message-ID, In-Reply-To and References are looked up like a reply's; the match is told apart as
`bounce-original`, because the sender of a report is a mail server, never a party to the ticket
(design.md "Threading parties": bounces and delivery reports thread through the original they carry).
"""
from __future__ import annotations

import logging

from ..domain import reports
from ..domain.threading import BY_BOUNCE_ORIGINAL
from ..domain.errors import MailNotFound, PermanentError
from ..domain.mail import InboundMail
from ..domain.model import Mailbox
from ..domain.reports import DeliveryReport
from ..ports import CrmGateway, MailGateway
from .mail_to_crm import MAX_REFERENCES, ThreadMatch

log = logging.getLogger("inbox.process")

BOUNCE_ORIGINAL = BY_BOUNCE_ORIGINAL  # ThreadMatch.how of a report matched through its original


async def read_report(gateway: MailGateway, mailbox: Mailbox, mail: InboundMail) -> DeliveryReport:
    """What the report says, from the start of its MIME. A report that cannot be read (gone, refused,
    a gateway without MIME access) is an empty report: the mail is then treated as carrying no
    original, never failed for it."""
    reader = getattr(gateway, "read_message_mime", None)
    if reader is None:
        return DeliveryReport()
    try:
        raw, truncated = await reader(mailbox, mail.message_id, reports.MAX_REPORT_BYTES)
    except MailNotFound:
        return DeliveryReport()  # gone meanwhile: the mailbox action will find it gone too
    except PermanentError as exc:
        log.warning("process.report-unreadable message=%s error=%s", mail.message_id, type(exc).__name__)
        return DeliveryReport()
    return reports.parse_report(raw, truncated)


async def find_report_thread(crm: CrmGateway, report: DeliveryReport) -> ThreadMatch:
    """The ticket the report's original belongs to (its Message-ID, its parent, its thread)."""
    refs = list(report.original_refs)[:MAX_REFERENCES]
    if refs:
        found = await crm.find_ticket_by_message_ids(refs)
        if found is not None:
            return ThreadMatch(found, BOUNCE_ORIGINAL)
    return ThreadMatch(None)
