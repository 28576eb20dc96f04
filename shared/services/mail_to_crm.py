"""The CRM side of one mail: who sent it (person and company) and which ticket it belongs to.

Used by the processor's CRM step (shared/services/process.py). The rules are in the pure domain
modules (matching.py, threading.py, policy.py); this module runs their lookups against the
CrmGateway, in the order that stops at the first answer (as few CRM calls as the rules allow), and
through the gateway's batched lookups where it has them (`lookup_sender`: the person and its
domain's persons in one request; `match_companies`: levels b-d in one).

Threading parties (design.md): a match by In-Reply-To/References or by subject tag lands on a
ticket only for a party to it: the ticket's person, a person of its company, or an address that
was on To/Cc of a mail already on the ticket. A header match from anyone else opens a new ticket
linked to the matched one (`ThreadMatch.refused`). A ticket whose parties the CRM never recorded
(one from before they were) accepts its contacts and senders of its person's organisation (the
same non-free-mail domain). Matches of other kinds (e.g. a bounce threaded through the original
message it carries) are not subject to the check.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable

from ..domain import matching
from ..domain.mail import InboundMail
from ..domain.model import TicketRef
from ..ports import CrmGateway

MAX_REFERENCES = 50  # Message-IDs looked up per mail (long threads carry hundreds)
MAX_TAGS = 3  # bracketed numbers tried per subject
REFERENCES, SUBJECT_TAG = "references", "subject-tag"
_COMPANY_LEVELS = (("b", "email"), ("c", "email_domain"), ("d", "website"))


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
    domain = matching.email_domain(address)
    free = matching.is_free_mail(domain, free_mail)
    want_e = "e" in levels and not free
    lookup_sender = getattr(crm, "lookup_sender", None)
    domain_companies: list[str] | None = None
    if lookup_sender is not None:
        person, domain_companies = await lookup_sender(address, want_e)
    else:
        person = await crm.lookup_person(address)
    person_id = person.id if person else ""
    if person and person.company_id:
        return Sender(address, name, person_id, person.company_id, "a")
    company, level = "", ""
    wanted = [(lvl, m) for lvl, m in _COMPANY_LEVELS if lvl in levels and (lvl == "b" or not free)]
    match_companies = getattr(crm, "match_companies", None)
    if wanted and match_companies is not None:
        found = await match_companies(address, domain, tuple(m for _, m in wanted))
        for lvl, m in wanted:
            company, level = matching.unique(found.get(m, [])), lvl
            if company:
                break
    else:
        for lvl, m in wanted:
            company, level = matching.unique(await crm.find_company_ids(m, address if m == "email" else domain)), lvl
            if company:
                break
    if not company and want_e:
        ids = domain_companies if domain_companies is not None else await crm.person_company_ids(domain)
        company, level = matching.unique(ids), "e"
    return Sender(address, name, person_id, company, level if company else "")


@dataclass(frozen=True)
class ThreadMatch:
    ticket: TicketRef | None
    how: str = ""  # references | subject-tag | bounce-original (services/delivery_reports.py) | ''
    refused_tags: tuple[str, ...] = ()  # tags of existing tickets the sender is no party to
    tags_seen: tuple[str, ...] = ()  # tags that name existing tickets (stripped from a new title)
    refused: TicketRef | None = None  # the ticket the headers named, whose party the sender is not


SenderOf = Callable[[], Awaitable[Sender]]


async def find_thread(crm: CrmGateway, mail: InboundMail, sender: SenderOf, tags: list[str], *,
                      trusted: bool = False, free_mail: Iterable[str] = ()) -> ThreadMatch:
    """The ticket the mail follows up: its References/In-Reply-To first, then its subject tag,
    each honoured only for a party to the ticket (`trusted`: every match is, e.g. for mail from
    one of our own mailboxes). `sender()` identifies the sender, called only when the ticket's
    recorded parties do not already name the sender's address."""
    address = (mail.sender.normalized or "").lower()
    refs = list(mail.thread_refs)[:MAX_REFERENCES]
    refused_header: TicketRef | None = None
    if refs:
        found = await crm.find_ticket_by_message_ids(refs)
        if found is not None:
            if trusted or await _party(crm, found, address, sender, free_mail):
                return ThreadMatch(found, REFERENCES)
            refused_header = found
    refused: list[str] = []
    seen: list[str] = []
    for tag in tags[:MAX_TAGS]:
        ticket = await crm.get_ticket(tag)
        if ticket is None:
            continue  # `[2024]` that is no ticket: just text
        seen.append(tag)
        if refused_header is not None and ticket.id == refused_header.id:
            refused.append(tag)  # the same ticket the headers named: refused there already
            continue
        if trusted or await _party(crm, ticket, address, sender, free_mail):
            return ThreadMatch(ticket, SUBJECT_TAG, tuple(refused), tuple(seen))
        refused.append(tag)
    return ThreadMatch(None, "", tuple(refused), tuple(seen), refused=refused_header)


async def _party(crm: CrmGateway, ticket: TicketRef, address: str, sender: SenderOf,
                 free_mail: Iterable[str]) -> bool:
    if address and ticket.parties is not None and address in ticket.parties:
        return True  # no lookup needed: the ticket's person or someone on its mails' To/Cc
    who = await sender()
    verdict = matching.is_party(ticket, address, who.person_id, who.company_id)
    if verdict is not None:
        return verdict
    return await same_organisation(crm, ticket.person_id, address, free_mail)


async def same_organisation(crm: CrmGateway, person_id: str, address: str, free_mail: Iterable[str]) -> bool:
    """Whether `address` has the (non-free-mail) domain of the person `person_id`: a colleague of the
    ticket's person, for a ticket whose To/Cc history is unknown."""
    domain = matching.email_domain(address)
    getter = getattr(crm, "get_person", None)
    if not person_id or not domain or getter is None or matching.is_free_mail(domain, free_mail):
        return False
    other = await getter(person_id) or {}
    return matching.email_domain(str(other.get("email") or "")) == domain


def sender_from_ticket(ticket: TicketRef, address: str, name: str) -> Sender | None:
    """The sender as the ticket's index knows it: the ticket's own person writing again (no lookup)."""
    addr = (address or "").strip().lower()
    if addr and ticket.person_id and ticket.person_address and ticket.person_address == addr:
        return Sender(address, name, ticket.person_id, ticket.company_id, "a")
    return None
