"""Persons and companies on Lime (a LimeCrm mixin): a person per e-mail address, found or created
under the lock on the address; lookups; companies matched by e-mail, e-mail domain or website
(LIME_PROP_COMPANY_EMAIL, LIME_PROP_COMPANY_WEBSITE) and created once per key.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

from .creates import PERSON_RECORD_TRUSTED
from .schema import SchemaReport
from .transport import LimeRejected
from .values import KEY_VALUE_LENGTH, _clip, _oid, _rel_id, _time_out
from ..crm_table import check_company_match, normalize_domain, normalize_email, split_name
from ..keys import exact_hash
from ...domain.errors import PermanentError
from ...domain.matching import website_domain
from ...domain.model import PersonRef

log = logging.getLogger("inbox.crm.lime")


class _PersonsCompanies:
    """find_or_create_person, lookups and the company helpers TableCrm has too."""

    # persons ------------------------------------------------------------------------------------
    async def _find_person_row(self, email: str) -> dict[str, Any] | None:
        rows = await self._query("person", ("email", "company"), {"key": "email", "op": "=", "exp": email})
        return rows[0] if rows else None

    async def find_or_create_person(self, address: str, name: str, company_id: str = "") -> str:
        """The first person (lowest id) with this address (compared without case); created with
        `company_id` when there is none (an existing person is left as it is). Concurrent calls for
        one address, in any worker, make one person: the create record on the address (creates.py).
        Lime is asked first unless this worker just saw the address without a person (the lookup
        of the mail's sender a moment ago) or knows the person already: a new sender costs one
        POST, a known one nothing."""
        email = normalize_email(address)
        cached = self.lookups.persons.get(email)
        if cached is not None:
            return cached.id
        report = await self._schema()
        limit = report.length("person", "email")
        if limit and len(email) > limit:
            raise PermanentError(f"Lime CRM: the sender address is {len(email)} characters; person.email holds {limit}")
        company = _oid(company_id) if company_id else None
        if company_id and company is None:
            raise PermanentError(f"Lime CRM: no company {company_id}")
        first, last, _ = split_name(name, email)
        body: dict[str, Any] = {"firstname": _clip(first, report.length("person", "firstname")) or email[:1],
                                "lastname": _clip(last, report.length("person", "lastname")), "email": email}
        if company is not None:
            body["company"] = company
        now = self._records.now()
        obj, created = await self._create_once(
            "person", body, email, lambda: self._find_person_row(email),
            fresh=lambda c: c.created_at is not None and now - c.created_at < PERSON_RECORD_TRUSTED,
            extra=lambda o: {"company": _rel_id(o.get("company"))},
            external=True, absent=bool(self.lookups.absent.get(email)))
        person = PersonRef(str(obj["_id"]), _rel_id(obj.get("company")))
        if created:
            log.info("lime.person-created id=%s", obj.get("_id"))
            self.lookups.created_person(email, person)
        else:
            self.lookups.found_person(email, person)
        return person.id

    async def lookup_person(self, address: str) -> PersonRef | None:
        """The first person whose email is `address` (case-insensitive), with its company."""
        try:
            email = normalize_email(address)
        except ValueError:
            return None
        cached = self.lookups.persons.get(email)
        if cached is not None:
            return cached
        row = await self._find_person_row(email)
        person = PersonRef(str(row["_id"]), _rel_id(row.get("company"))) if row is not None else None
        self.lookups.found_person(email, person)
        return person

    async def lookup_sender(self, address: str, domain_persons: bool) -> tuple[PersonRef | None, list[str] | None]:
        """The sender's person (as lookup_person) and, when `domain_persons`, the distinct company
        ids ('' for none, at most 2) of the persons at its domain (as person_company_ids): one
        query for both while the domain has at most 50 persons, answered from the cache within
        LOOKUP_TTL."""
        try:
            email = normalize_email(address)
        except ValueError:
            return None, [] if domain_persons else None
        dom = email.rpartition("@")[2]
        person = self.lookups.persons.get(email)
        companies = self.lookups.domains.get(dom) if domain_persons else None
        if not domain_persons:
            return (person if person is not None else await self.lookup_person(email)), None
        if person is not None and companies is not None:
            return person, list(companies)
        suffix = "@" + dom
        rows = await self._query("person", ("email", "company"), {"key": "email", "op": "?", "exp": suffix}, limit=50)
        full = len(rows) >= 50
        hits = [r for r in rows if str(r.get("email") or "").strip().lower().endswith(suffix)]
        exact = next((r for r in hits if str(r.get("email") or "").strip().lower() == email), None)
        if exact is not None:
            person = PersonRef(str(exact["_id"]), _rel_id(exact.get("company")))
            self.lookups.found_person(email, person)
        elif person is None:
            person = await self.lookup_person(email) if full else None
            if not full:
                self.lookups.found_person(email, None)
        if companies is None:
            companies = list(dict.fromkeys(_rel_id(r.get("company")) for r in hits))[:2]
            if full and len(companies) < 2:
                companies = await self.person_company_ids(dom)
            self.lookups.domains.put(dom, tuple(companies))
        return person, list(companies)

    async def find_person(self, address: str) -> str | None:
        found = await self.lookup_person(address)
        return found.id if found is not None else None

    async def person_company_ids(self, domain: str, limit: int = 2) -> list[str]:
        """Distinct company ids ('' for none) of the persons whose email has `domain`, at most
        `limit`: one query per distinct id, each excluding the ids already found."""
        dom = normalize_domain(domain)
        if not dom or limit <= 0:
            return []
        out: list[str] = []
        suffix = "@" + dom
        while len(out) < limit:
            terms: list[dict[str, Any]] = [{"key": "email", "op": "?", "exp": suffix}]
            terms += [{"key": "company", "op": "!", "exp": int(c) if c else None} for c in out]
            rows = await self._query("person", ("email", "company"), {"op": "AND", "exp": terms}, limit=50)
            hit = next((r for r in rows if str(r.get("email") or "").strip().lower().endswith(suffix)
                        and _rel_id(r.get("company")) not in out), None)
            if hit is None:
                break
            out.append(_rel_id(hit.get("company")))
        return out

    async def get_person(self, person_id: str) -> dict[str, Any] | None:
        oid = _oid(person_id)
        obj = await self._get_object("person", oid) if oid is not None and not str(person_id).startswith("hd") else None
        if obj is None:
            return None
        return {"id": str(obj["_id"]), "email": obj.get("email") or "", "name": obj.get("name") or
                f"{obj.get('firstname') or ''} {obj.get('lastname') or ''}".strip(),
                "firstname": obj.get("firstname") or "", "lastname": obj.get("lastname") or "",
                "company_id": _rel_id(obj.get("company")), "created": _time_out(obj.get("_createdtime")),
                "updated": _time_out(obj.get("_timestamp"))}

    async def set_person_company(self, person_id: str, company_id: str) -> None:
        oid = _oid(person_id)
        company = _oid(company_id) if company_id else None
        if company_id and company is None:
            raise PermanentError(f"Lime CRM: no company {company_id}")
        try:
            obj = await self._put("person", oid, {"company": company}) if oid is not None else None
        except LimeRejected as exc:
            if company is not None and await self._get_object("company", company) is None:
                raise PermanentError(f"Lime CRM: no company {company_id}") from exc
            raise
        if obj is None:
            raise PermanentError(f"Lime CRM: no person {person_id}")

    # companies ----------------------------------------------------------------------------------
    def _company_fields(self, report: SchemaReport) -> list[str]:
        n = self.names
        return ["name"] + [p for p in (n.company_website, n.company_email, n.key_property) if report.has("company", p)]

    def _company_values(self, report: SchemaReport, row: Mapping[str, Any]) -> tuple[str, str]:
        """(the company's e-mail, lower case; its website's domain), '' where the schema has none."""
        n = self.names
        mail = str(row.get(n.company_email) or "").strip().lower() if report.has("company", n.company_email) else ""
        web = website_domain(str(row.get(n.company_website) or "")) if report.has("company", n.company_website) else ""
        return mail, web

    def _company_matches(self, report: SchemaReport, row: Mapping[str, Any], match: str, value: str) -> bool:
        mail, web = self._company_values(report, row)
        if match == "email":
            return bool(mail) and mail == value
        if match == "email_domain":
            return "@" in mail and mail.rpartition("@")[2] == value
        return bool(web) and web == value

    def _company_term(self, report: SchemaReport, match: str, value: str) -> dict[str, Any] | None:
        """A query term that finds at least the matching companies (`?` is contains; rows are
        confirmed exactly afterwards), or None when the schema has no property for `match`."""
        n = self.names
        if match == "website":
            return {"key": n.company_website, "op": "?", "exp": value} \
                if report.has("company", n.company_website) else None
        if not report.has("company", n.company_email):
            return None
        if match == "email":
            return {"key": n.company_email, "op": "=", "exp": value}
        return {"key": n.company_email, "op": "?", "exp": "@" + value}

    async def _companies(self, report: SchemaReport, terms: list[tuple[str, str]],
                         extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        flt = [t for t in (self._company_term(report, m, v) for m, v in terms) if t is not None]
        if extra is not None:
            flt.append(extra)
        if not flt:
            return []
        return await self._query("company", self._company_fields(report), flt[0] if len(flt) == 1 else
                                 {"op": "OR", "exp": flt}, limit=50)

    async def find_company_ids(self, match: str, value: str, limit: int = 2) -> list[str]:
        """Companies (at most `limit`, lowest id first) whose email equals `value` (match="email"),
        whose email has the domain `value` ("email_domain"), or whose website's domain is `value`
        ("website"): LIME_PROP_COMPANY_EMAIL and LIME_PROP_COMPANY_WEBSITE; [] when unset."""
        check_company_match(match)
        norm = (value or "").strip().lower()
        norm = website_domain(norm) if match == "website" else norm if match == "email" else normalize_domain(norm)
        if not norm or limit <= 0:
            return []
        report = await self._schema()
        rows = await self._companies(report, [(match, norm)])
        hits = sorted((r for r in rows if self._company_matches(report, r, match, norm)), key=lambda r: int(r["_id"]))
        return [str(r["_id"]) for r in hits[:limit]]

    async def match_companies(self, address: str, domain: str, matches: tuple[str, ...]) -> dict[str, list[str]]:
        """find_company_ids for several matches at once (levels b-d: "email" against `address`,
        "email_domain" and "website" against `domain`), in one query; cached for LOOKUP_TTL."""
        for m in matches:
            check_company_match(m)
        mail = (address or "").strip().lower()
        dom = normalize_domain(domain or "")
        cache_key = (mail, dom, matches)
        cached = self.lookups.companies.get(cache_key)
        if cached is not None:
            return {m: list(ids) for m, ids in cached.items()}
        report = await self._schema()
        wanted = [(m, mail if m == "email" else dom) for m in matches if (mail if m == "email" else dom)]
        rows = await self._companies(report, wanted) if wanted else []
        if len(rows) >= 50:  # maybe not all: ask per match
            out = {m: await self.find_company_ids(m, v) for m, v in wanted}
        else:
            out = {m: [str(r["_id"]) for r in sorted((r for r in rows if self._company_matches(report, r, m, v)),
                                                     key=lambda r: int(r["_id"]))][:2] for m, v in wanted}
        out = {m: out.get(m, []) for m in matches}
        self.lookups.companies.put(cache_key, {m: tuple(ids) for m, ids in out.items()})
        return out

    async def find_company_by_domain(self, domain: str) -> str | None:
        """The first company (lowest id) whose email or website has this domain."""
        dom = normalize_domain(domain)
        if not dom:
            return None
        report = await self._schema()
        rows = await self._companies(report, [("email_domain", dom), ("website", dom)])
        hits = [r for r in rows if self._company_matches(report, r, "email_domain", dom)
                or self._company_matches(report, r, "website", dom)]
        return str(min(hits, key=lambda r: int(r["_id"]))["_id"]) if hits else None

    async def find_or_create_company(self, name: str, domain: str | None = None, key: str = "",
                                     email: str = "", website: str = "") -> str:
        """The company owning `domain` if there is one; else the company for `key` (by the key
        property; by name when there is no key or no key property), created when none with
        `email` and `website` (`domain` stands in for the website when none is given)."""
        report = await self._schema()
        clean = " ".join((name or "").split())
        if not clean:
            raise ValueError("a company needs a name")
        clean = _clip(clean, report.length("company", "name"))
        n = self.names
        mail = (email or "").strip().lower()
        dom = normalize_domain(domain or "") or (mail.rpartition("@")[2] if "@" in mail else "")
        if dom:
            existing = await self.find_company_by_domain(dom)
            if existing:
                return existing
        keyed = bool(key) and self._keyed(report, "company")
        kv = exact_hash(f"key|{key}", KEY_VALUE_LENGTH) if keyed else ""
        own = {"key": n.key_property, "op": "=", "exp": kv} if keyed else {"key": "name", "op": "=", "exp": clean}

        async def find() -> dict[str, Any] | None:
            rows = await self._companies(report, [("email_domain", dom), ("website", dom)] if dom else [], own)
            hits = [r for r in rows if dom and (self._company_matches(report, r, "email_domain", dom)
                                                or self._company_matches(report, r, "website", dom))]
            if not hits:
                hits = [r for r in rows if (r.get(n.key_property) == kv if keyed else
                                            str(r.get("name", "")).casefold() == clean.casefold())]
            return min(hits, key=lambda r: int(r["_id"])) if hits else None

        body: dict[str, Any] = {"name": clean}
        site = (website or "").strip() or dom
        if site and report.has("company", n.company_website):
            limit = report.length("company", n.company_website)
            if not limit or len(site) <= limit:
                body[n.company_website] = site
        if mail and report.has("company", n.company_email):
            limit = report.length("company", n.company_email)
            if not limit or len(mail) <= limit:
                body[n.company_email] = mail
        if keyed:
            body[n.key_property] = kv
        obj, created = await self._create_once("company", body, dom or kv or clean.casefold(), find, external=True)
        if created:
            self.lookups.created_company()
        return str(obj["_id"])

    async def get_company(self, company_id: str) -> dict[str, Any] | None:
        oid = _oid(company_id)
        obj = await self._get_object("company", oid) if oid is not None and company_id else None
        if obj is None:
            return None
        report = await self._schema()
        mail, web = self._company_values(report, obj)
        n = self.names
        return {"id": str(obj["_id"]), "name": obj.get("name") or "",
                "domain": web or (mail.rpartition("@")[2] if "@" in mail else ""), "email": mail,
                "website": str(obj.get(n.company_website) or "") if report.has("company", n.company_website) else "",
                "created": _time_out(obj.get("_createdtime"))}
