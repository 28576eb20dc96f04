"""Management API under /api/manage (auth level FUNCTION; JSON in and out)."""
from __future__ import annotations

import logging

import azure.functions as func

from functions.http_util import error, json_body, json_response
from shared.bootstrap import services
from shared.domain.errors import PermanentError, TransientError
from shared.services.mailboxes import ValidationError, mailbox_from_request
from shared.services.views import mailbox_view

bp = func.Blueprint()
log = logging.getLogger("inbox.manage")


@bp.route(route="manage/mailboxes", methods=["GET", "POST"], auth_level=func.AuthLevel.FUNCTION)
async def manage_mailboxes(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    if req.method == "GET":
        subs = {s.mailbox_id: s for s in await svc.subscriptions.list()}
        return json_response({"mailboxes": [mailbox_view(m, subs.get(m.id)) for m in await svc.registry.list()]})
    try:
        mailbox = mailbox_from_request(json_body(req), svc.settings.graph_clients, svc.clock.now())
        mailbox, sub = await svc.mailboxes.add(mailbox)
    except (ValueError, ValidationError) as exc:
        return error(400, str(exc))
    except TransientError as exc:
        return error(503, f"Graph is unavailable, try again: {exc}")
    except PermanentError as exc:
        return error(502, f"Graph refused: {exc}")
    return json_response(mailbox_view(mailbox, sub), 201)


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


@bp.route(route="manage/tickets/{number}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def manage_ticket(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    detail = getattr(svc.crm, "ticket_detail", None)
    if detail is None:
        return error(404, "the configured CRM backend does not expose tickets here; look in the CRM")
    ticket = await detail(req.route_params.get("number", ""))
    return json_response(ticket) if ticket else error(404, "no such ticket")
