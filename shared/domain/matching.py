"""Sender -> person and company: Lime Inbox's `sender_id_behaviour` levels, free-mail domains, and
who counts as a contact of a ticket. Pure: no I/O (the lookups live in shared/services/mail_to_crm.py).

Lime Inbox (facts/lime-crm-and-traml.md §2.2) matches the sender in this order, stopping at the
first level that gives an answer; the behaviour names the deepest level used:

    a  the person whose email is exactly the sender's; the company is that person's company
    b  the one company whose email is exactly the sender's address
    c  the one company whose email has the sender's domain
    d  the one company whose website has the sender's domain
    e  the persons with the sender's domain, if they all belong to one company

    PersonEmailExact: a   CompanyEmailExact: a-b   CompanyEmailDomain: a-c
    CompanyEmailWebsite: a-d   PersonEmailDomain (default): a-e

Free-mail domains (gmail.com, outlook.com, ...) never match a company by domain (c-e): thousands of
unrelated people share them. An exact company address (b) still matches, since it names one mailbox.
"""
from __future__ import annotations

import re
from typing import Iterable

from .model import TicketRef

SENDER_ID_BEHAVIOURS: dict[str, str] = {
    "PersonEmailExact": "a",
    "CompanyEmailExact": "ab",
    "CompanyEmailDomain": "abc",
    "CompanyEmailWebsite": "abcd",
    "PersonEmailDomain": "abcde",
}
DEFAULT_SENDER_ID_BEHAVIOUR = "PersonEmailDomain"

# Consumer mailbox providers. Families (gmx.*, yahoo.*, ...) are matched on their first label below.
FREE_MAIL_DOMAINS = frozenset({
    "gmail.com", "googlemail.com", "outlook.com", "hotmail.com", "live.com", "msn.com", "passport.com",
    "yahoo.com", "ymail.com", "rocketmail.com", "icloud.com", "me.com", "mac.com", "aol.com", "aim.com",
    "gmx.de", "gmx.net", "gmx.com", "gmx.at", "gmx.ch", "web.de", "t-online.de", "freenet.de", "mail.de",
    "mail.com", "email.com", "usa.com", "protonmail.com", "protonmail.ch", "proton.me", "pm.me",
    "tutanota.com", "tutanota.de", "tuta.io", "tuta.com", "zoho.com", "zohomail.com", "fastmail.com",
    "fastmail.fm", "hey.com", "yandex.com", "yandex.ru", "ya.ru", "mail.ru", "inbox.ru", "list.ru", "bk.ru",
    "qq.com", "163.com", "126.com", "yeah.net", "sina.com", "naver.com", "daum.net", "hanmail.net",
    "libero.it", "virgilio.it", "alice.it", "tiscali.it", "orange.fr", "wanadoo.fr", "free.fr", "laposte.net",
    "sfr.fr", "seznam.cz", "centrum.cz", "wp.pl", "o2.pl", "interia.pl", "onet.pl", "abv.bg", "btinternet.com",
    "sky.com", "virginmedia.com", "ntlworld.com", "comcast.net", "verizon.net", "att.net", "sbcglobal.net",
    "bellsouth.net", "cox.net", "earthlink.net", "shaw.ca", "rogers.com", "sympatico.ca", "bigpond.com",
    "optusnet.com.au", "xtra.co.nz", "telenet.be", "skynet.be", "ziggo.nl", "kpnmail.nl", "planet.nl",
    "home.nl", "bluewin.ch", "online.no", "bredband.net", "comhem.se", "spray.se", "home.se", "passagen.se",
    "telia.se", "bahnhof.se", "glocalnet.net", "swipnet.se", "jubii.dk", "mail.dk", "suomi24.fi", "luukku.com",
    "gmx.se", "outlook.se", "hotmail.se", "live.se", "yahoo.se", "icloud.se",
})
FREE_MAIL_FAMILIES = frozenset({"gmx", "yahoo", "hotmail", "outlook", "live", "windowslive", "yandex", "aol", "ymail"})
_SECOND_LEVEL = {"co", "com", "net", "org", "ne", "or"}


def levels(behaviour: str) -> str:
    """The levels ('a'..'e') a behaviour uses. Raises ValueError naming the valid ones."""
    try:
        return SENDER_ID_BEHAVIOURS[behaviour or DEFAULT_SENDER_ID_BEHAVIOUR]
    except KeyError:
        raise ValueError(f"sender_id_behaviour {behaviour!r} is not one of "
                         f"{', '.join(SENDER_ID_BEHAVIOURS)}") from None


def email_domain(address: str) -> str:
    return (address or "").strip().strip("<>").lower().rpartition("@")[2].rstrip(".")


def is_free_mail(domain: str, extra: Iterable[str] = ()) -> bool:
    """True for consumer mail domains (and their country variants: yahoo.co.uk, gmx.at, hotmail.se)."""
    dom = (domain or "").strip().lower().rstrip(".")
    if not dom:
        return True
    if dom in FREE_MAIL_DOMAINS or dom in {e.strip().lower() for e in extra}:
        return True
    labels = dom.split(".")
    if labels[0] in FREE_MAIL_FAMILIES and (len(labels) == 2 or (len(labels) == 3 and labels[1] in _SECOND_LEVEL)):
        return True
    return False


def website_domain(url: str) -> str:
    """'https://www.Acme.se/kontakt' -> 'acme.se'; 'acme.se' -> 'acme.se'; '' for nothing usable."""
    text = (url or "").strip().lower()
    text = re.sub(r"^[a-z][a-z0-9+.-]*://", "", text)
    host = re.split(r"[/?#:]", text, maxsplit=1)[0].rpartition("@")[2].strip(".")
    if host.startswith("www.") and host.count(".") >= 2:
        host = host[4:]
    return host if "." in host and re.fullmatch(r"[a-z0-9.-]+|[^\s/]+", host) else ""


def unique(ids: Iterable[str]) -> str:
    """The one id when exactly one distinct non-empty id is given (and no empty one), else ''."""
    distinct = set(ids)
    if len(distinct) == 1:
        (only,) = distinct
        return only
    return ""


def is_contact(ticket: TicketRef, person_id: str, company_id: str) -> bool:
    """May this sender add to the ticket by its subject tag? Its person, or a person of its company
    (osTicket's rule; zammad#5064 shows what happens without it)."""
    if person_id and ticket.person_id and person_id == ticket.person_id:
        return True
    return bool(company_id and ticket.company_id and company_id == ticket.company_id)


def is_party(ticket: TicketRef, address: str, person_id: str = "", company_id: str = "") -> bool | None:
    """May this sender add to the ticket through In-Reply-To/References or its subject tag?
    (design.md "Threading parties"): its person, a person of its company, or an address that was on
    To/Cc of a mail already on the ticket. None when the CRM has no record of the ticket's parties
    (a ticket from before they were recorded) and the sender is not its contact: the caller decides."""
    addr = (address or "").strip().lower()
    if addr and ticket.parties is not None and addr in ticket.parties:
        return True
    if is_contact(ticket, person_id, company_id):
        return True
    return None if ticket.parties is None else False
