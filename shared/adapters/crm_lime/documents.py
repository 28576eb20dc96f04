"""Documents on tickets (a LimeCrm mixin): `POST file/` (streamed from a spooled file for a large
attachment), then a `document` limeobject, once per key; a document's metadata and bytes.
"""
from __future__ import annotations

from typing import Any, Mapping
from urllib.parse import quote

from .records import NEW, UNKNOWN
from .schema import SchemaReport
from .transport import LimeRejected, _FileBody
from .values import _clean_filename, _clip, _key_value, _oid, _rel_id, _time_out, ticket_id_of
from ...domain.errors import PermanentError, TransientError
from ...domain.model import DocumentDraft


class _Documents:
    """add_document, add_document_file, find_document, get_document and get_document_bytes."""

    # documents ----------------------------------------------------------------------------------
    async def add_document(self, draft: DocumentDraft, data: bytes, key: str) -> str:
        """A file on a ticket, once per key: `POST file/`, then a `document` limeobject."""
        report = await self._schema()
        ticket = _oid(draft.ticket_id)
        if draft.ticket_id and ticket is None:
            raise PermanentError(f"Lime CRM: no ticket {draft.ticket_id}")
        return await self._add_document(report, ticket, draft.ticket_id, draft.filename,
                                        draft.content_type or "application/octet-stream", data, key, draft.comment)

    async def add_document_file(self, draft: DocumentDraft, file: Any, key: str) -> str:
        """As add_document, from a seekable binary file (a large attachment spooled to disk): the
        upload streams it in chunks instead of holding it in memory."""
        report = await self._schema()
        ticket = _oid(draft.ticket_id)
        if draft.ticket_id and ticket is None:
            raise PermanentError(f"Lime CRM: no ticket {draft.ticket_id}")
        return await self._add_document(report, ticket, draft.ticket_id, draft.filename,
                                        draft.content_type or "application/octet-stream", _FileBody(file), key,
                                        draft.comment)

    async def _add_document(self, report: SchemaReport, ticket: int | None, ticket_id: str, filename: str,
                            content_type: str, data: "bytes | _FileBody", key: str, comment: str) -> str:
        kv = _key_value(key)
        if len(data) > self.max_file_bytes:
            raise PermanentError(f"Lime CRM: a document of {len(data)} bytes is over the {self.max_file_bytes}-byte "
                                 "limit of the file store")
        keyed = self._keyed(report, "document")
        name = _clean_filename(filename)
        body: dict[str, Any] = {}
        if ticket is not None:
            body["helpdesk"] = ticket
        if report.has("document", "comment"):
            body["comment"] = _clip(comment or name, report.length("document", "comment"))
        if "email" in report.options("document", "type"):
            body["type"] = "email"
        if keyed:
            body[self.names.key_property] = kv

        async def upload() -> None:  # only when the document is really to be created
            if isinstance(data, _FileBody):
                await self.flush_writes()  # a long upload: do not keep other mails waiting for our records
            meta = await self._json("POST", "file/", content=data, timeout=self._upload_timeout, headers={
                "Content-Type": content_type, "Content-Length": str(len(data)),
                "Content-Disposition": f";filename*=\"UTF-8''{quote(name, safe='')}\""})
            file_id = (meta or {}).get("id") if isinstance(meta, dict) else None
            if file_id is None:
                raise TransientError("Lime CRM POST file/: the answer has no file id")
            body["document"] = int(file_id)

        try:
            obj, _ = await self._create_once("document", body, key,
                                             (lambda: self._find_key("document", kv, ("document",))) if keyed else None,
                                             prepare=upload)
        except LimeRejected as exc:
            await self._require_ticket_on_reject(exc, ticket_id)
            raise
        return str(obj["_id"])

    async def find_document(self, key: str) -> str | None:
        """The id of the document created under `key`, None when there is none (a retry asks before
        it reads a large file again). In the mail's write scope our record answers (no request)
        unless an earlier attempt's outcome is unknown; then one query. Without the key property
        Lime cannot be asked."""
        scope = self._scope()
        if scope is not None and scope.covers(key) and not scope.sole:
            claim = await self._scope_claim(scope)
            known = scope.known.get(f"document|{key}")
            if known:
                return known
            if claim.outcome == NEW or (claim.outcome == UNKNOWN and scope.trusted):
                return None  # our record lists everything made under the mail's key: not this
        report = await self._schema()
        if not self._keyed(report, "document"):
            return None
        found = await self._find_key("document", _key_value(key), ("document",))
        return str(found["_id"]) if found is not None else None

    async def _document(self, doc_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        oid = _oid(doc_id) if not str(doc_id).startswith("hd") else None
        obj = await self._get_object("document", oid) if oid is not None else None
        if obj is None or obj.get("document") in (None, ""):
            return None
        meta = await self._json("GET", f"file/{int(obj['document'])}/", allow_404=True)
        return (obj, meta) if meta is not None else None

    def _document_view(self, obj: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
        ticket = _rel_id(obj.get("helpdesk"))
        return {"id": str(obj["_id"]), "ticket_id": ticket_id_of(ticket) if ticket else "",
                "filename": str(meta.get("filename") or ""), "content_type": str(meta.get("content_type") or ""),
                "comment": str(obj.get("comment") or ""), "size": int(meta.get("size") or 0),
                "created": _time_out(obj.get("_createdtime"))}

    async def get_document(self, doc_id: str) -> dict[str, Any] | None:
        found = await self._document(doc_id)
        return self._document_view(*found) if found is not None else None

    async def get_document_bytes(self, doc_id: str) -> bytes | None:
        found = await self._document(doc_id)
        if found is None:
            return None
        response = await self._send("GET", f"file/{int(found[0]['document'])}/contents/", allow_404=True,
                                    timeout=self._upload_timeout, headers={"Accept": "*/*"})
        return response.content if response is not None else None
