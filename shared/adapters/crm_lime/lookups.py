"""Person and company lookups cached per worker for a short time (LOOKUP_TTL), and dropped by our
own creates, so that a sender who writes again soon costs no Lime request to identify.

What is cached, and why it is safe:
* a person found for an address (or created by us): its id and company. A person whose address or
  company changes in Lime is seen as it was for at most LOOKUP_TTL seconds (two minutes): the mail
  is filed as it would have been had it arrived that much earlier.
* that an address had no person, only for ABSENT_TTL seconds and only for `find_or_create_person`
  right after the lookup (so it need not ask Lime again before creating: the same knowledge as the
  lookup a moment earlier, which is what the old lock-and-query gave). A concurrent create by
  another worker is seen in our create records, not here.
* per domain, the companies of its persons (level e) and per address and domain the companies that
  match by e-mail or website (levels b-d), negative answers included. A company added or changed
  in Lime is matched within LOOKUP_TTL seconds: a new sender's person created in those two minutes
  gets the company it would have got two minutes earlier (none), exactly as if the mail had come
  then; persons are never changed afterwards, so nothing is undone. Our own company creates drop
  the company answers at once; our person creates add the person's company to its domain's.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Hashable

from ...domain.model import PersonRef

LOOKUP_TTL = 120.0
ABSENT_TTL = 30.0
MAX_ENTRIES = 20_000


class _Ttl:
    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self.ttl = ttl
        self._clock = clock
        self._items: dict[Hashable, tuple[float, Any]] = {}

    def get(self, key: Hashable) -> Any | None:
        hit = self._items.get(key)
        if hit is None:
            return None
        if hit[0] <= self._clock():
            self._items.pop(key, None)
            return None
        return hit[1]

    def put(self, key: Hashable, value: Any) -> None:
        if len(self._items) >= MAX_ENTRIES:
            now = self._clock()
            self._items = {k: v for k, v in self._items.items() if v[0] > now}
            if len(self._items) >= MAX_ENTRIES:
                self._items.clear()
        self._items[key] = (self._clock() + self.ttl, value)

    def drop(self, key: Hashable) -> None:
        self._items.pop(key, None)

    def clear(self) -> None:
        self._items.clear()


class SenderLookups:
    """The cache (one per LimeCrm, so one per worker)."""

    def __init__(self, ttl: float = LOOKUP_TTL, absent_ttl: float = ABSENT_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.persons = _Ttl(ttl, clock)  # address -> PersonRef
        self.absent = _Ttl(absent_ttl, clock)  # address -> True
        self.domains = _Ttl(ttl, clock)  # domain -> [company ids of its persons] ('' = none), at most 2
        self.companies = _Ttl(ttl, clock)  # (address, domain, matches) -> {match: [ids]}

    def found_person(self, address: str, person: PersonRef | None) -> None:
        if person is None:
            self.persons.drop(address)
            self.absent.put(address, True)
        else:
            self.persons.put(address, person)
            self.absent.drop(address)

    def created_person(self, address: str, person: PersonRef) -> None:
        """Our own create: the person is known, and its domain's companies gain its company."""
        self.found_person(address, person)
        domain = address.rpartition("@")[2]
        companies = self.domains.get(domain)
        if companies is not None and person.company_id not in companies and len(companies) < 2:
            self.domains.put(domain, (*companies, person.company_id))

    def created_company(self) -> None:
        self.companies.clear()
        self.domains.clear()

    def clear(self) -> None:
        for cache in (self.persons, self.absent, self.domains, self.companies):
            cache.clear()
