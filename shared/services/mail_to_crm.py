"""The CRM side of one mail: who sent it (person and company) and which ticket it belongs to.

Used by the processor's CRM step (shared/services/process.py). The rules are in the pure domain
modules (matching.py, threading.py, policy.py); this module runs their lookups against the
CrmGateway, in the order that stops at the first answer (as few CRM calls as the rules allow).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ..domain import matching
from ..domain.mail import InboundMail
from ..domain.model import TicketRef
from ..ports import CrmGateway

MAX_REFERENCES = 50  # Message-IDs looked up per mail (long threads carry hundreds)
MAX_TAGS = 3  # bracketed numbers tried per subject


@dataclass(frozen=True)
class Sender:
    address: str
    name: str
    person_id: str  # '' while the person does not exist in the CRM
    company_id: str  # the person's company, else the one the levels matched, else ''
    level: str = ""  # the sender_id_behaviour level that gave the company: a..e, or ''


async def identify_sender(crm: CrmGateway, address: str, name: str, behaviour: str,
                          free_mail: Iterable[str] = ()) -> Sender:
    """Lime Inbox's matching levels (domain/matching.py), read-only: nothing is created here."""
    levels = matching.levels(behaviour)
    person = await crm.lookup_person(address)
    person_id = person.id if person else ""
    if person and person.company_id:
        return Sender(address, name, person_id, person.company_id, "a")
    domain = matching.email_domain(address)
    free = matching.is_free_mail(domain, free_mail)
    company, level = "", ""
    if "b" in levels:
        company, level = matching.unique(await crm.find_company_ids("email", address)), "b"
    if not company and not free:
        for lvl, lookup in (("c", "email_domain"), ("d", "website")):
            if lvl in levels and not company:
                company, level = matching.unique(await crm.find_company_ids(lookup, domain)), lvl
        if "e" in levels and not company:
            company, level = matching.unique(await crm.person_company_ids(domain)), "e"
    return Sender(address, name, person_id, company, level if company else "")


@dataclass(frozen=True)
class ThreadMatch:
    ticket: TicketRef | None
    how: str = ""  # references | subject-tag | bounce-original (services/delivery_reports.py) | ''
    refused_tags: tuple[str, ...] = ()  # tags of existing tickets the sender is no contact of
    tags_seen: tuple[str, ...] = ()  # tags that name existing tickets (stripped from a new title)


async def find_thread(crm: CrmGateway, mail: InboundMail, sender: Sender, tags: list[str]) -> ThreadMatch:
    """The ticket the mail follows up: its References/In-Reply-To first, then its subject tag,
    honoured only for an existing ticket whose contact the sender is."""
    refs = list(mail.thread_refs)[:MAX_REFERENCES]
    if refs:
        found = await crm.find_ticket_by_message_ids(refs)
        if found is not None:
            return ThreadMatch(found, "references")
    refused: list[str] = []
    seen: list[str] = []
    for tag in tags[:MAX_TAGS]:
        ticket = await crm.get_ticket(tag)
        if ticket is None:
            continue  # `[2024]` that is no ticket: just text
        seen.append(tag)
        if matching.is_contact(ticket, sender.person_id, sender.company_id):
            return ThreadMatch(ticket, "subject-tag", tuple(refused), tuple(seen))
        refused.append(tag)
    return ThreadMatch(None, "", tuple(refused), tuple(seen))
