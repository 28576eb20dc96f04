"""Helpdesk tickets on Lime (a LimeCrm mixin): created once per key (Lime numbers them), found by
id, number or Message-ID, follow-ups' Message-IDs remembered, status changes; a description longer
than helpdesk.description is cut and its full text stored as a document on the ticket.
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Iterable, Mapping

from .schema import SchemaReport, _kind
from .values import (
    QUERY_URL_MAX, _chunks, _clip, _key_value, _looks_html, _oid, _option_key, _query_url_length, _rel_id, _time_in,
    _time_out, fit_message_ids, parse_message_ids, ticket_id_of, truncate_note,
)
from ..crm_table import check_status, clip_title, merge_message_ids, normalize_message_id
from ...domain.errors import PermanentError
from ...domain.model import TicketDraft, TicketRef

log = logging.getLogger("inbox.crm.lime")


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
        obj, created = await self._create_once(
            "helpdesk", body, f"helpdesk|{kv}" if keyed else None,
            (lambda: self._find_key("helpdesk", kv, fields)) if keyed else None)
        ticket = self._ticket_ref(obj)
        if not ticket.number:
            fresh = await self._get_object("helpdesk", int(obj["_id"]))
            ticket = self._ticket_ref(fresh or obj)
            if not ticket.number:
                log.warning("lime.ticket-without-number id=%s: helpdesk.%s was not set by the solution",
                            obj.get("_id"), n.helpdesk_number)
        if created:
            log.info("lime.ticket-created id=%s number=%s", obj.get("_id"), ticket.number)
        if long_description and report.has("helpdesk", "description"):
            await self._long_text_document(report, int(obj["_id"]), f"{key}#description", description,
                                           "description", f"Full ticket description ({len(description)} characters)")
        return ticket

    async def get_ticket(self, number: str) -> TicketRef | None:
        """By number (a ticket id 'hd<_id>' is accepted too)."""
        report = await self._schema()
        row = await self._ticket_row(report, number)
        return self._ticket_ref(row) if row is not None else None

    async def find_ticket_by_message_ids(self, ids: list[str]) -> TicketRef | None:
        """The newest ticket (highest id) holding any of the Message-IDs, compared without <> and case."""
        report = await self._schema()
        prop = self.names.message_ids
        mids = [m for m in dict.fromkeys(normalize_message_id(m) for m in ids) if m]
        if not mids or not report.has("helpdesk", prop):
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

    async def add_message_ids(self, ticket_id: str, ids: list[str]) -> None:
        """Remember follow-ups' Message-IDs on the ticket (idempotent; read-modify-write under a lock)."""
        report = await self._schema()
        prop = self.names.message_ids
        oid = _oid(ticket_id)
        if oid is None:
            raise PermanentError(f"Lime CRM: no ticket {ticket_id}")
        if not report.has("helpdesk", prop):
            return  # threading by Message-ID is off (check_schema warned)
        async with self._locks.hold(f"msgids|{oid}") as held:
            obj = await self._get_object("helpdesk", oid)
            if obj is None:
                raise PermanentError(f"Lime CRM: no ticket {ticket_id}")
            old = parse_message_ids(str(obj.get(prop) or ""))
            merged = merge_message_ids(old, ids)
            if merged == old:
                return
            text = fit_message_ids(merged, report.length("helpdesk", prop))
            if text == str(obj.get(prop) or ""):
                return
            held.check()
            await self._put("helpdesk", oid, {prop: text})

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
