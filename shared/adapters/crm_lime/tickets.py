"""Helpdesk tickets on Lime (a LimeCrm mixin): created once per key (Lime numbers them), found by
id, number or Message-ID, follow-ups' Message-IDs remembered, status changes; a description longer
than helpdesk.description is cut and its full text stored as a document on the ticket.
"""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import datetime
from typing import Any, Iterable, Mapping

from .records import mid_row_key, ticket_row_key
from .schema import SchemaReport, _kind
from .values import (
    QUERY_URL_MAX, _chunks, _clip, _key_value, _looks_html, _oid, _option_key, _query_url_length, _rel_id, _time_in,
    _time_out, fit_message_ids, parse_message_ids, ticket_id_of, truncate_note,
)
from ..crm_table import check_status, clip_title, merge_message_ids, normalize_message_id
from ...domain.errors import PermanentError
from ...domain.model import TicketDraft, TicketRef

log = logging.getLogger("inbox.crm.lime")

MAX_PARTIES = 200  # addresses kept per ticket (a Table string holds 32K characters)


class _Tickets:
    """create_ticket, get_ticket, threading by Message-ID and set_ticket_status."""

    # tickets ------------------------------------------------------------------------------------
    async def reserve_ticket_number(self) -> str:
        return ""  # Lime numbers tickets itself

    def _ticket_fields(self, report: SchemaReport, extra: Iterable[str] = ()) -> list[str]:
        n = self.names
        fields = [*self.TICKET_FIELDS, n.helpdesk_number, n.helpdesk_status]
        fields += [p for p in ("enddate", *extra) if report.has("helpdesk", p) and p not in fields]
        return fields

    def _status_of(self, value: Any) -> str:
        key = _option_key(value)
        return self._status_back.get(key, key)

    def _ticket_ref(self, row: Mapping[str, Any]) -> TicketRef:
        number = row.get(self.names.helpdesk_number)
        status = self._status_of(row.get(self.names.helpdesk_status))
        end = _time_out(row.get("enddate")) if status == "done" else None
        return TicketRef(id=ticket_id_of(row["_id"]), number="" if number in (None, "", 0) else str(number),
                         status=status, person_id=_rel_id(row.get("person")), company_id=_rel_id(row.get("company")),
                         title=str(row.get("title") or ""),
                         closed_at=datetime.fromisoformat(end) if end and end[:1].isdigit() else None)

    def _number_value(self, report: SchemaReport, number: str) -> Any:
        kind = _kind(report.properties.get("helpdesk", {}).get(self.names.helpdesk_number))
        return int(number) if kind in ("integer", "") else number

    async def _ticket_row(self, report: SchemaReport, ref: str, extra: Iterable[str] = ()) -> dict[str, Any] | None:
        """By ticket id ('hd<_id>') or by number (digits)."""
        ref = str(ref or "").strip()
        fields = self._ticket_fields(report, extra)
        if ref.startswith("hd"):
            oid = _oid(ref)
            if oid is None:
                return None
            rows = await self._query("helpdesk", fields, {"key": "_id", "op": "=", "exp": oid})
        elif ref.isdigit() and len(ref) <= 12:
            rows = await self._query("helpdesk", fields, {"key": self.names.helpdesk_number, "op": "=",
                                                          "exp": self._number_value(report, ref)})
        else:
            return None
        return rows[0] if rows else None

    async def _long_text_document(self, report: SchemaReport, ticket_oid: int | None, key: str, text: str,
                                  filename: str, comment: str) -> str:
        html = _looks_html(text)
        name = filename + (".html" if html else ".txt")
        return await self._add_document(report, ticket_oid, str(ticket_oid or ""), name,
                                        "text/html; charset=utf-8" if html else "text/plain; charset=utf-8",
                                        text.encode("utf-8"), key, comment)

    async def create_ticket(self, draft: TicketDraft, key: str) -> TicketRef:
        """The helpdesk for `key`, created once (Lime assigns the number; `draft.number` is ignored)."""
        check_status(draft.status)
        kv = _key_value(key)
        report = await self._schema()
        n = self.names
        body: dict[str, Any] = {k: v for k, v in draft.values.items()}
        title_limit = report.length("helpdesk", "title")
        title = clip_title(draft.title)
        body.update({"title": _clip(title, title_limit), n.helpdesk_status: n.statuses[draft.status]})
        person, company = _oid(draft.person_id), _oid(draft.company_id)
        if draft.person_id and person is None:
            raise ValueError(f"not a Lime person id: {draft.person_id!r}")
        if person is not None:
            body["person"] = person
        if company is not None:
            body["company"] = company
        email = draft.email.strip()
        if email and report.has("helpdesk", "email") and len(email) <= (report.length("helpdesk", "email") or 10**6):
            body["email"] = email
        now = self._now()
        if report.has("helpdesk", "startdate"):
            body["startdate"] = _time_in(now)
        if draft.status == "done" and report.has("helpdesk", "enddate"):
            body["enddate"] = _time_in(now)
        description = draft.description
        if draft.linked_ticket_id:
            linked = await self._ticket_row(report, draft.linked_ticket_id)
            if linked is not None:
                description = (f"Follows up ticket {linked.get(n.helpdesk_number) or draft.linked_ticket_id}.\n\n"
                               + description).strip()
        desc_limit = report.length("helpdesk", "description")
        long_description = bool(desc_limit) and len(description) > desc_limit
        if description and report.has("helpdesk", "description"):
            body["description"] = truncate_note(description, desc_limit, " [...]") if long_description else description
        if draft.message_ids and report.has("helpdesk", n.message_ids):
            body[n.message_ids] = fit_message_ids(merge_message_ids([], draft.message_ids),
                                                  report.length("helpdesk", n.message_ids))
        fields = self._ticket_fields(report)
        keyed = self._keyed(report, "helpdesk")
        if keyed:
            body[n.key_property] = kv
        find = (lambda: self._find_key("helpdesk", kv, fields)) if keyed else None
        keep = (lambda o: {"number": str(o.get(n.helpdesk_number) or "")})
        obj, created = await self._create_once("helpdesk", body, key, find, extra=keep)
        if obj.get("_record"):
            # created before (another mail of the conversation, or an earlier attempt): as it is now
            fresh = await self._get_object("helpdesk", int(obj["_id"]))
            if fresh is None:  # deleted in Lime since: the conversation gets a new ticket
                obj, created = await self._create_once("helpdesk", body, key, find, extra=keep, fresh=lambda c: False)
            else:
                obj = fresh
        ticket = self._ticket_ref(obj)
        if not ticket.number:
            fresh = await self._get_object("helpdesk", int(obj["_id"]))
            ticket = self._ticket_ref(fresh or obj)
            if not ticket.number:
                log.warning("lime.ticket-without-number id=%s: helpdesk.%s was not set by the solution",
                            obj.get("_id"), n.helpdesk_number)
        if created:
            log.info("lime.ticket-created id=%s number=%s", obj.get("_id"), ticket.number)
        if not obj.get("_record"):  # created, or found by its key after an unknown outcome: index it
            row = await self._index_ticket(ticket, draft)
        else:
            row = await self._index_row(ticket.id)
        if long_description and report.has("helpdesk", "description"):
            await self._long_text_document(report, int(obj["_id"]), f"{key}#description", description,
                                           "description", f"Full ticket description ({len(description)} characters)")
        return self._with_parties(ticket, row)

    async def get_ticket(self, number: str) -> TicketRef | None:
        """By number (a ticket id 'hd<_id>' is accepted too), with its parties from our index."""
        report = await self._schema()
        row = await self._ticket_row(report, number)
        if row is None:
            return None
        ticket = self._ticket_ref(row)
        return self._with_parties(ticket, await self._index_row(ticket.id))

    async def find_ticket_by_message_ids(self, ids: list[str]) -> TicketRef | None:
        """The newest ticket holding any of the Message-IDs (compared without <> and case), as it is
        in Lime now, with its parties. Our index answers (one or two Table reads and one Lime GET);
        Lime's Message-ID property is queried only when the index knows none of them (a ticket
        created before the index existed)."""
        mids = [m for m in dict.fromkeys(normalize_message_id(m) for m in ids) if m]
        if not mids:
            return None
        pointers = await self._records.table.get_many([mid_row_key(m) for m in mids])
        for oid in sorted({str(p.get("ticket") or "") for p in pointers.values()} - {""}, key=int, reverse=True):
            obj = await self._get_object("helpdesk", int(oid))
            if obj is not None:
                return self._with_parties(self._ticket_ref(obj), await self._index_row(ticket_id_of(oid)))
        found = await self._find_ticket_in_lime(mids)
        if found is None:
            return None
        return self._with_parties(found, await self._index_row(found.id))

    async def _find_ticket_in_lime(self, mids: list[str]) -> TicketRef | None:
        report = await self._schema()
        prop = self.names.message_ids
        if not report.has("helpdesk", prop):
            return None
        best: dict[str, Any] | None = None
        fields = self._ticket_fields(report, (prop,))
        terms = [{"key": prop, "op": "?", "exp": f"<{m}>"} for m in mids]
        base = _query_url_length({"limetype": "helpdesk", "responseFormat": {"object": {f: "" for f in fields}},
                                  "orderBy": [{"_id": "DESC"}], "limit": 50, "offset": 0,
                                  "filter": {"op": "OR", "exp": []}, "_id": ""})
        for group in _chunks(terms, QUERY_URL_MAX - base, lambda t: _query_url_length(t) + 3):
            chunk = [t["exp"][1:-1] for t in group]
            rows = await self._query("helpdesk", fields, {"op": "OR", "exp": group}, [{"_id": "DESC"}], limit=50)
            wanted = set(chunk)
            for row in rows:  # `?` is a contains match: confirm the exact id
                if wanted & set(parse_message_ids(str(row.get(prop) or ""))):
                    if best is None or int(row["_id"]) > int(best["_id"]):
                        best = row
                    break
        return self._ticket_ref(best) if best is not None else None

    async def add_message_ids(self, ticket_id: str, ids: list[str], parties: Iterable[str] = ()) -> None:
        """Remember a follow-up's Message-IDs (so replies to it thread here) and its To/Cc (parties
        of the ticket from now on): in our index, no Lime request. Idempotent."""
        oid = _oid(ticket_id)
        if oid is None:
            raise PermanentError(f"Lime CRM: no ticket {ticket_id}")
        row = await self._index_row(ticket_id_of(oid))
        mids = [m for m in dict.fromkeys(normalize_message_id(m) for m in ids) if m]
        add = sorted({str(p).strip().lower() for p in parties if p and "@" in str(p)})
        old_mids = json.loads(row.get("mids") or "[]") if row else []
        old_parties = json.loads(row.get("parties") or "[]") if row else []
        new_mids = [m for m in mids if m not in old_mids]
        new_parties = [p for p in add if p not in old_parties]
        if row is not None and not new_mids and not new_parties:
            return
        ops: list[tuple[Any, ...]] = [("upsert", {"RowKey": mid_row_key(m), "kind": "mid", "ticket": str(oid),
                                                  "updated": self._records.now()}) for m in new_mids]
        merged = {"RowKey": ticket_row_key(oid), "kind": "ticket", "mids": json.dumps((old_mids + new_mids)[-200:]),
                  "parties": json.dumps((old_parties + new_parties)[-MAX_PARTIES:]), "updated": self._records.now()}
        if row is None:
            merged["legacy"] = True  # created before the index: its earlier parties are unknown
        ops.append(("upsert", merged))
        await self._index_write(ticket_id_of(oid), {**(row or {}), **merged}, ops)

    # the ticket index (records.py's partition) ---------------------------------------------------------
    async def _index_row(self, ticket_id: str) -> dict[str, Any] | None:
        scope = self._scope()
        if scope is not None and ticket_id in scope.tickets:
            return scope.tickets[ticket_id]
        row = await self._records.table.get(ticket_row_key(ticket_id))
        if scope is not None and row is not None:
            scope.tickets[ticket_id] = row
        return row

    async def _index_write(self, ticket_id: str, row: dict[str, Any], ops: list[tuple[Any, ...]]) -> None:
        """In a scope: written with its records when it ends; else now."""
        scope = self._scope()
        if scope is not None:
            scope.tickets[ticket_id] = row
            scope.rows += ops
        else:
            await self._records.write(ops)

    async def _index_ticket(self, ticket: TicketRef, draft: TicketDraft) -> dict[str, Any]:
        email = draft.email.strip().lower()
        parties = sorted({p.strip().lower() for p in (email, *draft.parties) if p and "@" in p})[:MAX_PARTIES]
        mids = [m for m in dict.fromkeys(normalize_message_id(m) for m in draft.message_ids) if m]
        oid = str(_oid(ticket.id))
        row = {"RowKey": ticket_row_key(oid), "kind": "ticket", "number": ticket.number, "person": ticket.person_id,
               "company": ticket.company_id, "person_address": email, "parties": json.dumps(parties),
               "mids": json.dumps(mids), "legacy": False, "updated": self._records.now()}
        ops = [("upsert", {"RowKey": mid_row_key(m), "kind": "mid", "ticket": oid, "updated": self._records.now()})
               for m in mids]
        ops.append(("upsert", row))
        await self._index_write(ticket.id, row, ops)
        return row

    @staticmethod
    def _with_parties(ticket: TicketRef, row: dict[str, Any] | None) -> TicketRef:
        """The ticket with its parties from our index row; None (unknown) for a ticket without one
        or with one begun after its first mails (legacy), or whose person changed in Lime since."""
        if row is None or row.get("legacy"):
            return ticket
        person_address = str(row.get("person_address") or "")
        if str(row.get("person") or "") != ticket.person_id:
            person_address = ""  # the ticket's person was changed in Lime: the recorded address is not its
        return replace(ticket, parties=tuple(json.loads(row.get("parties") or "[]")), person_address=person_address)

    async def set_ticket_status(self, ticket_id_or_number: str, status: str) -> TicketRef | None:
        """Close ('done'), park or reopen ('started'). None when there is no such ticket."""
        check_status(status)
        report = await self._schema()
        row = await self._ticket_row(report, ticket_id_or_number)
        if row is None:
            return None
        current = self._ticket_ref(row)
        if current.status == status:
            return current
        values: dict[str, Any] = {self.names.helpdesk_status: self.names.statuses[status]}
        if report.has("helpdesk", "enddate"):
            values["enddate"] = _time_in(self._now()) if status == "done" else None
        obj = await self._put("helpdesk", int(row["_id"]), values)
        return self._ticket_ref(obj) if obj is not None else None
