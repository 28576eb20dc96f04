"""Management API under /api/manage (auth level FUNCTION; JSON in and out)."""
from __future__ import annotations

import logging
from urllib.parse import quote

import azure.functions as func

from functions.http_util import BadRequest, error, int_param, json_object, json_response, manage
from shared.bootstrap import services

bp = func.Blueprint()
log = logging.getLogger("inbox.manage")


NOT_HERE = "the configured CRM backend (CRM_BACKEND=lime) does not expose tickets here; look in Lime CRM"


@manage(bp, "manage/tickets", ["GET"])
async def manage_tickets(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    lister = getattr(svc.crm, "list_tickets", None)
    if lister is None:
        return error(404, NOT_HERE, "not_here")
    limit = int_param(req, "limit", 100, 1, 500)
    return json_response({"tickets": await lister(limit=limit)})


TICKET_STATUSES = ("started", "done", "parked")


@manage(bp, "manage/tickets/{number}", ["GET", "PATCH"])
async def manage_ticket(req: func.HttpRequest) -> func.HttpResponse:
    """GET: the ticket with its person, company, history and documents. PATCH {"status":
    "done"|"started"|"parked"}: close, reopen or park it (exercises the closed-ticket policies)."""
    svc = await services().ready()
    number = req.route_params.get("number", "")
    if req.method == "PATCH":
        status = json_object(req, limit=4096).get("status")
        if status not in TICKET_STATUSES:
            raise BadRequest(f"'status' must be one of {', '.join(TICKET_STATUSES)}", "invalid_field", field="status",
                             detail={"allowed": list(TICKET_STATUSES)})
        ref = await svc.crm.set_ticket_status(number, status)
        if ref is None:
            return error(404, f"no ticket {number!r}", "not_found")
        log.info("manage.ticket-status ticket=%s status=%s", ref.number, status)
    detail = getattr(svc.crm, "ticket_detail", None)
    if detail is None:
        return error(404, NOT_HERE, "not_here")
    ticket = await detail(number)
    return json_response(ticket) if ticket else error(404, f"no ticket {number!r}", "not_found")


# Served as downloads (never rendered as a page of this origin), except images shown in notes.
_INLINE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
# Downloads that keep their own type (a browser never renders these as a page): a stored original
# opens in the mail client.
_DOWNLOAD_TYPES = ("message/rfc822",)


@manage(bp, "manage/documents/{doc_id}", ["GET"])
async def manage_document(req: func.HttpRequest) -> func.HttpResponse:
    """A document's file (what `cid:` images in HTML notes of the embedded CRM point to, and the
    `url` of each document in a ticket's detail): images inline, a stored original (.eml) as
    `message/rfc822`, everything else as an `application/octet-stream` download."""
    svc = await services().ready()
    meta_of, bytes_of = getattr(svc.crm, "get_document", None), getattr(svc.crm, "get_document_bytes", None)
    doc_id = req.route_params.get("doc_id", "")
    meta = await meta_of(doc_id) if meta_of else None
    data = await bytes_of(doc_id) if meta and bytes_of else None
    if meta is None or data is None:
        return error(404, f"no document {doc_id!r}", "not_found")
    ctype = str(meta.get("content_type") or "application/octet-stream").split(";")[0].strip().lower()
    inline = ctype in _INLINE_TYPES
    name = str(meta.get("filename") or "file")
    # an ASCII fallback for old clients, then the exact name (RFC 6266)
    fallback = "".join(c if " " <= c < "\x7f" and c not in '"\\' else "_" for c in name)
    headers = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; sandbox",
               "Content-Disposition": ("inline" if inline else "attachment")
               + f"; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"}
    return func.HttpResponse(data, status_code=200, headers=headers,
                             mimetype=ctype if inline or ctype in _DOWNLOAD_TYPES else "application/octet-stream")
