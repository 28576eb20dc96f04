"""InMemoryCrm: the CrmGateway (and TableCrm's browsing helpers) in memory, for fast service tests.

Same ids, numbers, validation, limits and idempotency semantics as shared/adapters/crm_table.py
(it reuses that module's pure helpers; tests/integration/test_crm_table.py runs the same checks
against both). `created` counts the objects really created, per kind ("person", "company",
"ticket", "history", "document"); `fail(method, exc)` makes the next call(s) of a method raise,
to simulate a CRM outage or a crash between two steps. Performs no I/O.
"""
from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone
from typing import Any, Callable

from shared.adapters import crm_table as ct
from shared.domain.errors import PermanentError
from shared.domain.matching import website_domain
from shared.domain.model import DocumentDraft, HistoryDraft, PersonRef, TicketDraft, TicketRef


class InMemoryCrm:
    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self._now = clock or (lambda: datetime.now(timezone.utc))
        self.created: Counter[str] = Counter()
        self.persons: dict[str, dict[str, Any]] = {}
        self.companies: dict[str, dict[str, Any]] = {}
        self.domains: dict[str, str] = {}
        self.company_index: dict[tuple[str, str], list[str]] = {}  # (match, value) -> company ids
        self.tickets: dict[str, dict[str, Any]] = {}  # by number
        self.ticket_keys: dict[str, str] = {}  # key hash -> number
        self.message_index: dict[str, str] = {}  # normalized Message-ID -> number
        self.history: dict[str, dict[str, Any]] = {}  # by id
        self.documents: dict[str, dict[str, Any]] = {}  # by id
        self.files: dict[str, bytes] = {}  # document id -> bytes
        self.next_number = ct.FIRST_TICKET_NUMBER
        self._failures: dict[str, list[BaseException]] = {}

    # fault injection ------------------------------------------------------------------------------
    def fail(self, method: str, exc: BaseException, times: int = 1) -> None:
        """The next `times` calls of `method` raise `exc` before doing anything."""
        self._failures.setdefault(method, []).extend([exc] * times)

    def _maybe_fail(self, method: str) -> None:
        pending = self._failures.get(method)
        if pending:
            raise pending.pop(0)

    async def ensure(self) -> None:
        self._maybe_fail("ensure")

    # persons and companies ------------------------------------------------------------------------
    async def find_or_create_person(self, address: str, name: str, company_id: str = "") -> str:
        self._maybe_fail("find_or_create_person")
        email = ct.normalize_email(address)
        pid = ct.person_id_for(email)
        if pid not in self.persons:
            first, last, full = ct.split_name(name, email)
            now = self._now()
            self.persons[pid] = {"id": pid, "email": email, "firstname": first, "lastname": last, "name": full,
                                 "company_id": company_id, "created": now, "updated": now}
            self.created["person"] += 1
        return pid

    async def lookup_person(self, address: str) -> PersonRef | None:
        self._maybe_fail("lookup_person")
        try:
            pid = ct.person_id_for(address)
        except ValueError:
            return None
        row = self.persons.get(pid)
        return PersonRef(pid, row["company_id"]) if row else None

    async def find_company_ids(self, match: str, value: str, limit: int = 2) -> list[str]:
        self._maybe_fail("find_company_ids")
        ct.check_company_match(match)
        norm = (value or "").strip().lower()
        if match == "website":
            norm = website_domain(norm)
        return list(self.company_index.get((match, norm), []))[:max(limit, 0)] if norm else []

    async def person_company_ids(self, domain: str, limit: int = 2) -> list[str]:
        self._maybe_fail("person_company_ids")
        dom = ct.normalize_domain(domain)
        out: list[str] = []
        for row in self.persons.values():
            if dom and row["email"].rpartition("@")[2] == dom and row["company_id"] not in out:
                out.append(row["company_id"])
                if len(out) >= limit:
                    break
        return out

    async def find_person(self, address: str) -> str | None:
        pid = ct.person_id_for(address)
        return pid if pid in self.persons else None

    async def get_person(self, person_id: str) -> dict[str, Any] | None:
        row = self.persons.get(person_id)
        return ct.person_view(row) if row else None

    async def find_or_create_company(self, name: str, domain: str | None = None, key: str = "",
                                     email: str = "", website: str = "") -> str:
        self._maybe_fail("find_or_create_company")
        clean = " ".join((name or "").split())[:ct.COMPANY_NAME_MAX]
        if not clean:
            raise ValueError("a company needs a name")
        dom = ct.normalize_domain(domain or "")
        if dom and dom in self.domains:
            return self.domains[dom]
        cid = ct.company_id_for(clean, key)
        for index in ct.company_index_values(dom, email, website):
            ids = self.company_index.setdefault(index, [])
            if cid not in ids:
                ids.append(cid)
        if cid not in self.companies:
            self.companies[cid] = {"id": cid, "name": clean, "domain": dom, "email": (email or "").strip().lower(),
                                   "website": (website or "").strip(), "created": self._now()}
            self.created["company"] += 1
        if dom:
            self.domains.setdefault(dom, cid)
        return cid

    async def find_company_by_domain(self, domain: str) -> str | None:
        return self.domains.get(ct.normalize_domain(domain))

    async def get_company(self, company_id: str) -> dict[str, Any] | None:
        row = self.companies.get(company_id)
        return ct.company_view(row) if row else None

    async def set_person_company(self, person_id: str, company_id: str) -> None:
        self._maybe_fail("set_person_company")
        if company_id and company_id not in self.companies:
            raise PermanentError(f"embedded CRM: no company {company_id}")
        person = self.persons.get(person_id)
        if person is None:
            raise PermanentError(f"embedded CRM: no person {person_id}")
        if person["company_id"] != company_id:
            person.update(company_id=company_id, updated=self._now())

    # tickets ----------------------------------------------------------------------------------------
    async def reserve_ticket_number(self) -> str:
        self._maybe_fail("reserve_ticket_number")
        number, self.next_number = self.next_number, self.next_number + 1
        return str(number)

    def _ticket(self, ticket_id_or_number: str) -> dict[str, Any] | None:
        number = ct.number_of(ticket_id_or_number)
        return self.tickets.get(number) if number else None

    async def create_ticket(self, draft: TicketDraft, key: str) -> TicketRef:
        self._maybe_fail("create_ticket")
        ct.check_status(draft.status)
        kh = ct.key_hash(ct.require_key(key))
        if kh not in self.ticket_keys:
            self.ticket_keys[kh] = ct.check_number(draft.number) if draft.number else await self.reserve_ticket_number()
        number = self.ticket_keys[kh]
        row = self.tickets.get(number)
        if row is None:
            now = self._now()
            row = self.tickets[number] = {
                "id": ct.ticket_id_for(number), "number": number, "key_hash": kh, "title": ct.clip_title(draft.title),
                "status": draft.status, "person_id": draft.person_id, "company_id": draft.company_id,
                "email": draft.email.strip(), "linked_ticket_id": draft.linked_ticket_id,
                "description": draft.description,
                "values": json.dumps(draft.values, ensure_ascii=False, sort_keys=True, default=str),
                "message_ids": json.dumps(ct.merge_message_ids([], draft.message_ids)),
                "parties": json.dumps(ct.party_list([draft.email], draft.parties)),
                "startdate": now, "created": now, "updated": now,
            }
            if draft.status == "done":
                row["enddate"] = now
            self.created["ticket"] += 1
        if row["key_hash"] != kh:
            del self.ticket_keys[kh]
            raise PermanentError(f"embedded CRM: ticket number {number} already belongs to another ticket")
        self._index(number, draft.message_ids)
        return ct.ticket_ref(row)

    def _index(self, number: str, message_ids: Any) -> None:
        for mid in message_ids:
            norm = ct.normalize_message_id(mid)
            if norm:
                self.message_index.setdefault(norm, number)

    async def get_ticket(self, number: str) -> TicketRef | None:
        self._maybe_fail("get_ticket")
        row = self._ticket(number)
        return ct.ticket_ref(row) if row else None

    async def find_ticket_by_message_ids(self, ids: list[str]) -> TicketRef | None:
        self._maybe_fail("find_ticket_by_message_ids")
        numbers = {self.message_index.get(ct.normalize_message_id(m)) for m in ids} - {None}
        for number in sorted(numbers, key=int, reverse=True):
            if number in self.tickets:
                return ct.ticket_ref(self.tickets[number])
        return None

    async def add_message_ids(self, ticket_id: str, ids: list[str], parties: Any = ()) -> None:
        self._maybe_fail("add_message_ids")
        row = self._ticket(ticket_id)
        if row is None:
            raise PermanentError(f"embedded CRM: no ticket {ticket_id}")
        self._index(row["number"], ids)
        old = json.loads(row["message_ids"])
        merged = ct.merge_message_ids(old, ids)
        if merged != old:
            row.update(message_ids=json.dumps(merged), updated=self._now())
        if row.get("parties"):
            row["parties"] = json.dumps(ct.party_list(json.loads(row["parties"]), parties))

    async def set_ticket_status(self, ticket_id_or_number: str, status: str) -> TicketRef | None:
        self._maybe_fail("set_ticket_status")
        ct.check_status(status)
        row = self._ticket(ticket_id_or_number)
        if row is None:
            return None
        if row["status"] != status:
            now = self._now()
            row.update(status=status, updated=now)
            if status == "done":
                row["enddate"] = now
            else:
                row.pop("enddate", None)
        return ct.ticket_ref(row)

    # history and documents ----------------------------------------------------------------------------
    def _require_ticket(self, ticket_id: str) -> None:
        if ticket_id and self._ticket(ticket_id) is None:
            raise PermanentError(f"embedded CRM: no ticket {ticket_id}")

    async def add_history(self, draft: HistoryDraft, key: str) -> str:
        self._maybe_fail("add_history")
        ct.check_history_type(draft.type)
        hid = ct.history_id_for(key)
        if hid not in self.history:
            self._require_ticket(draft.ticket_id)
            self.history[hid] = {
                "id": hid, "ticket_id": draft.ticket_id, "person_id": draft.person_id, "company_id": draft.company_id,
                "type": draft.type, "date": ct.utc(draft.date), "note": draft.note,
                "message_ids": json.dumps(ct.merge_message_ids([], draft.message_ids)), "created": self._now(),
            }
            self.created["history"] += 1
        return hid

    def document_url(self, doc_id: str) -> str:
        return ct.DOCUMENT_URL_PREFIX + doc_id

    async def add_document_file(self, draft: DocumentDraft, file: Any, key: str) -> str:
        self._maybe_fail("add_document_file")
        file.seek(0)
        return await self.add_document(draft, file.read(), key)

    async def add_document(self, draft: DocumentDraft, data: bytes, key: str) -> str:
        self._maybe_fail("add_document")
        if len(data) > ct.MAX_DOCUMENT_BYTES:
            raise PermanentError(f"embedded CRM: document of {len(data)} bytes is over the "
                                 f"{ct.MAX_DOCUMENT_BYTES}-byte limit")
        did = ct.document_id_for(key)
        if did not in self.documents:
            self._require_ticket(draft.ticket_id)
            self.documents[did] = {
                "id": did, "ticket_id": draft.ticket_id, "filename": (draft.filename or "file")[:ct.FILENAME_MAX],
                "content_type": draft.content_type or "application/octet-stream", "size": len(data),
                "comment": draft.comment[:4000], "created": self._now(),
            }
            self.files[did] = bytes(data)
            self.created["document"] += 1
        return did

    async def find_document(self, key: str) -> str | None:
        self._maybe_fail("find_document")
        did = ct.document_id_for(key)
        return did if did in self.documents else None

    async def get_document(self, doc_id: str) -> dict[str, Any] | None:
        row = self.documents.get(doc_id)
        return ct.document_view(row) if row else None

    async def get_document_bytes(self, doc_id: str) -> bytes | None:
        return self.files.get(doc_id)

    # browsing -----------------------------------------------------------------------------------------
    async def list_tickets(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = sorted(self.tickets.values(), key=lambda r: int(r["number"]), reverse=True)
        return [ct.ticket_summary(r) for r in rows[:max(limit, 0)]]

    async def ticket_detail(self, number: str) -> dict[str, Any] | None:
        row = self._ticket(number)
        if row is None:
            return None
        person = await self.get_person(row["person_id"])
        company = await self.get_company(row["company_id"] or (person or {}).get("company_id", ""))
        history = sorted((h for h in self.history.values() if h["ticket_id"] == row["id"]),
                         key=lambda h: (ct.sortable_time(h["date"]), h["id"]))
        documents = sorted((d for d in self.documents.values() if d["ticket_id"] == row["id"]), key=lambda d: d["id"])
        return {"ticket": ct.ticket_view(row, row["description"], row["values"]), "person": person, "company": company,
                "history": [ct.history_view(h, h["note"]) for h in history],
                "documents": [ct.document_view(d) for d in documents]}
