"""History notes on Lime (a LimeCrm mixin): one note per key; a note longer than history.note is
cut and marked, its full text kept as a document on the ticket and linked from the note.
"""
from __future__ import annotations

from typing import Any

from .transport import LimeRejected
from .values import NO_TEXT, _key_value, _oid, _time_in, truncate_note
from ..crm_table import check_history_type, utc
from ...domain.errors import PermanentError
from ...domain.model import HistoryDraft


class _History:
    """add_history (and the plain error for a write onto a ticket that is gone)."""

    async def _require_ticket_on_reject(self, exc: LimeRejected, ticket_id: str) -> None:
        """A 4xx while writing onto a ticket: if the ticket is gone, say so plainly."""
        oid = _oid(ticket_id)
        if ticket_id and (oid is None or await self._get_object("helpdesk", oid) is None):
            raise PermanentError(f"Lime CRM: no ticket {ticket_id}") from exc

    # history ------------------------------------------------------------------------------------
    async def add_history(self, draft: HistoryDraft, key: str) -> str:
        """A history note, once per key. A note longer than history.note is cut and marked, its
        full text kept as a document on the ticket (linked from the note)."""
        check_history_type(draft.type)
        kv = _key_value(key)
        report = await self._schema()
        ticket = _oid(draft.ticket_id)
        if draft.ticket_id and ticket is None:
            raise PermanentError(f"Lime CRM: no ticket {draft.ticket_id}")
        keyed = self._keyed(report, "history")
        note = draft.note if draft.note and draft.note.strip() else NO_TEXT
        limit = report.length("history", "note")
        body: dict[str, Any] = {"date": _time_in(draft.date), "type": self.names.history_types[draft.type]}
        if ticket is not None:
            body["helpdesk"] = ticket
        if _oid(draft.person_id) is not None:
            body["person"] = _oid(draft.person_id)
        if _oid(draft.company_id) is not None and report.has("history", "company"):
            body["company"] = _oid(draft.company_id)
        if keyed:
            body[self.names.key_property] = kv

        async def long_note() -> None:  # only when the note is really to be created
            body["note"] = note
            if limit and len(note) > limit:
                stamp = utc(draft.date).strftime("%Y%m%d-%H%M%S")
                doc_id = await self._long_text_document(
                    report, ticket, f"{key}#note", note, f"note-{stamp}",
                    f"Full text of the history note of {stamp} ({len(note)} characters)")
                body["note"] = truncate_note(note, limit, f"\n\n[... cut at {limit} characters: the full text "
                                                          f"({len(note)} characters) is in the document "
                                                          f"note-{stamp}]")
                if report.has("history", "document"):
                    body["document"] = int(doc_id)

        try:
            obj, _ = await self._create_once("history", body, key,
                                             (lambda: self._find_key("history", kv, ("date",))) if keyed else None,
                                             prepare=long_note)
        except LimeRejected as exc:
            await self._require_ticket_on_reject(exc, draft.ticket_id)
            raise
        return str(obj["_id"])
