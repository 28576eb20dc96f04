"""Mailbox CRUD under /api/manage/mailboxes (shared/services/mailboxes.py does the work)."""
from __future__ import annotations

import logging

import azure.functions as func

from functions.http_util import error, json_body, json_response
from shared.bootstrap import services
from shared.domain.errors import PermanentError, TransientError
from shared.services.mailboxes import (
    MailboxNotFound, MailboxResult, MailboxUnreachable, ValidationError, mailbox_from_request,
)
from shared.services.views import mailbox_view

bp = func.Blueprint()
log = logging.getLogger("inbox.manage")


def _view(result: MailboxResult) -> dict:
    doc = mailbox_view(result.mailbox, result.subscription)
    if result.outcome is not None:
        doc["subscription_outcome"] = result.outcome.as_dict()
    return doc


def _failure(exc: Exception) -> func.HttpResponse:
    if isinstance(exc, (ValueError, ValidationError)):
        return error(400, str(exc))
    if isinstance(exc, MailboxNotFound):
        return error(404, str(exc))
    if isinstance(exc, MailboxUnreachable):
        return error(422, str(exc), reason=exc.reason)
    if type(exc).__name__ == "CredentialError":
        return error(502, f"the Graph client cannot get a token: {exc}", reason="credential")
    if isinstance(exc, TransientError):
        return error(503, f"Graph or storage is unavailable, nothing was changed; try again: {exc}")
    return error(502, f"Graph refused: {exc}")


@bp.route(route="manage/mailboxes", methods=["GET", "POST"], auth_level=func.AuthLevel.FUNCTION)
async def manage_mailboxes(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    if req.method == "GET":
        subs = {s.mailbox_id: s for s in await svc.subscriptions.list()}
        return json_response({"mailboxes": [mailbox_view(m, subs.get(m.id)) for m in await svc.registry.list()]})
    try:
        mailbox = mailbox_from_request(json_body(req), svc.settings.graph_clients, svc.clock.now())
        result = await svc.mailboxes.add(mailbox)
    except (ValueError, PermanentError, TransientError) as exc:
        return _failure(exc)
    return json_response(_view(result), 201)


@bp.route(route="manage/mailboxes/{id}", methods=["GET", "PATCH", "DELETE"], auth_level=func.AuthLevel.FUNCTION)
async def manage_mailbox(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    ref = req.route_params.get("id", "")
    try:
        if req.method == "GET":
            return json_response(_view(await svc.mailboxes.get(ref)))
        if req.method == "PATCH":
            return json_response(_view(await svc.mailboxes.update(ref, json_body(req))))
        outcome = await svc.mailboxes.delete(ref)
    except (ValueError, PermanentError, TransientError) as exc:
        return _failure(exc)
    return json_response({"deleted": ref, "subscription": outcome.as_dict()})
