"""Management API under /api/manage (auth level FUNCTION; JSON in and out)."""
from __future__ import annotations

import logging
from urllib.parse import quote

import azure.functions as func

from functions.http_util import error, json_body, json_response
from shared.bootstrap import services
from shared.domain.errors import PermanentError, TransientError

bp = func.Blueprint()
log = logging.getLogger("inbox.manage")


@bp.route(route="manage/tickets", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def manage_tickets(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    lister = getattr(svc.crm, "list_tickets", None)
    if lister is None:
        return error(404, "the configured CRM backend does not expose tickets here; look in the CRM")
    try:
        limit = min(500, max(1, int(req.params.get("limit", "100"))))
    except ValueError:
        return error(400, "limit must be an integer")
    return json_response({"tickets": await lister(limit=limit)})


TICKET_STATUSES = ("started", "done", "parked")


@bp.route(route="manage/tickets/{number}", methods=["GET", "PATCH"], auth_level=func.AuthLevel.FUNCTION)
async def manage_ticket(req: func.HttpRequest) -> func.HttpResponse:
    """GET: the ticket with its person, company, history and documents. PATCH {"status":
    "done"|"started"|"parked"}: close, reopen or park it (exercises the closed-ticket policies)."""
    svc = await services().ready()
    number = req.route_params.get("number", "")
    if req.method == "PATCH":
        try:
            status = (json_body(req, limit=4096) or {}).get("status")
        except (ValueError, AttributeError) as exc:
            return error(400, str(exc) if isinstance(exc, ValueError) else "body must be a JSON object")
        if status not in TICKET_STATUSES:
            return error(400, f"status must be one of {', '.join(TICKET_STATUSES)}")
        try:
            ref = await svc.crm.set_ticket_status(number, status)
        except TransientError as exc:
            return error(503, f"the CRM is unavailable, try again: {exc}")
        except PermanentError as exc:
            return error(502, f"the CRM refused: {exc}")
        if ref is None:
            return error(404, "no such ticket")
        log.info("manage.ticket-status ticket=%s status=%s", ref.number, status)
    detail = getattr(svc.crm, "ticket_detail", None)
    if detail is None:
        return error(404, "the configured CRM backend does not expose tickets here; look in the CRM")
    ticket = await detail(number)
    return json_response(ticket) if ticket else error(404, "no such ticket")


# Served as downloads (never rendered as a page of this origin), except images shown in notes.
_INLINE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
# Downloads that keep their own type (a browser never renders these as a page): a stored original
# opens in the mail client.
_DOWNLOAD_TYPES = ("message/rfc822",)


@bp.route(route="manage/documents/{doc_id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
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
        return error(404, "no such document")
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
