"""Browsing for the manage API (a LimeCrm mixin): the newest tickets, and one ticket's detail with
its person, company, history (date order) and documents.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any, Mapping

from .schema import _kind
from .values import _option_key, _rel_id, _time_out, parse_message_ids
from ..crm_table import merge_message_ids


class _Views:
    """list_tickets and ticket_detail."""

    # browsing (manage API) -------------------------------------------------------------------------
    def _summary(self, row: Mapping[str, Any]) -> dict[str, Any]:
        ref = self._ticket_ref(row)
        return {"id": ref.id, "number": ref.number, "title": ref.title, "status": ref.status,
                "person_id": ref.person_id, "company_id": ref.company_id, "email": str(row.get("email") or ""),
                "linked_ticket_id": "", "startdate": _time_out(row.get("startdate")),
                "enddate": _time_out(row.get("enddate")), "created": _time_out(row.get("_createdtime")),
                "updated": _time_out(row.get("_timestamp"))}

    async def list_tickets(self, limit: int = 100) -> list[dict[str, Any]]:
        """Newest (highest id) first."""
        if limit <= 0:
            return []
        report = await self._schema()
        fields = self._ticket_fields(report, ("email", "startdate", "enddate")) + ["_createdtime", "_timestamp"]
        rows = await self._query("helpdesk", fields, None, [{"_id": "DESC"}], limit=min(limit, 1000))
        return [self._summary(r) for r in rows]

    async def ticket_detail(self, number: str) -> dict[str, Any] | None:
        """The ticket with its person, company, history (date order) and documents."""
        report = await self._schema()
        row = await self._ticket_row(report, number)
        if row is None:
            return None
        oid = int(row["_id"])
        obj = await self._get_object("helpdesk", oid)
        if obj is None:
            return None
        n = self.names
        own = {"title", "description", "person", "company", "email", "startdate", "enddate", n.helpdesk_number,
               n.helpdesk_status, n.key_property, n.message_ids}
        values = {}
        for name, spec in report.properties.get("helpdesk", {}).items():
            value = obj.get(name)
            if name in own or _kind(spec) in ("hasmany", "hasandbelongstomany") or value in (None, "", False):
                continue
            values[name] = _option_key(value) if _kind(spec) == "option" else value
        # the Message-IDs: those it was created with (Lime's property), then its follow-ups' (our index)
        indexed = await self._index_row(f"hd{oid}")
        mids = merge_message_ids(parse_message_ids(str(obj.get(n.message_ids) or "")),
                                 json.loads((indexed or {}).get("mids") or "[]"))
        ticket = {**self._summary(obj), "description": str(obj.get("description") or ""), "values": values,
                  "message_ids": mids, "parties": json.loads((indexed or {}).get("parties") or "[]")}
        person = await self.get_person(ticket["person_id"]) if ticket["person_id"] else None
        company_id = ticket["company_id"] or (person or {}).get("company_id", "")
        company = await self.get_company(company_id) if company_id else None
        history_fields = ["date", "type", "note", "person", "company", "_createdtime"]
        if report.has("history", "document"):
            history_fields.append("document")
        notes = await self._query("history", history_fields, {"key": "helpdesk", "op": "=", "exp": oid},
                                  [{"date": "ASC"}, {"_id": "ASC"}], limit=1000)
        history = [{"id": str(h["_id"]), "ticket_id": ticket["id"], "person_id": _rel_id(h.get("person")),
                    "company_id": _rel_id(h.get("company")), "type": self._history_type(h.get("type")),
                    "date": _time_out(h.get("date")), "note": str(h.get("note") or ""), "message_ids": [],
                    "document_id": _rel_id(h.get("document")), "created": _time_out(h.get("_createdtime"))}
                   for h in notes]
        docs = await self._query("document", ["document", "comment", "helpdesk", "_createdtime"],
                                 {"key": "helpdesk", "op": "=", "exp": oid}, limit=1000)
        metas = await asyncio.gather(*(self._json("GET", f"file/{int(d['document'])}/", allow_404=True)
                                       for d in docs if d.get("document") not in (None, "")))
        documents = [self._document_view(d, m) for d, m in
                     zip([d for d in docs if d.get("document") not in (None, "")], metas) if m is not None]
        return {"ticket": ticket, "person": person, "company": company, "history": history, "documents": documents}

    def _history_type(self, value: Any) -> str:
        key = _option_key(value)
        back = {v: k for k, v in self.names.history_types.items()}
        return back.get(key, key)
