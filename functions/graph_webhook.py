"""HTTP triggers Graph calls: change notifications and lifecycle notifications.

Answer fast (Graph's budget is 3 s, 10 s at most): echo the validation token, or verify and
enqueue, then 202. Nothing here talks to Graph or the CRM.
"""
from __future__ import annotations

import logging

import azure.functions as func

from shared.bootstrap import services
from shared.domain.errors import InboxError, MalformedNotification
from shared.domain.notifications import MAX_BODY_BYTES, validation_token_problem
from shared.services.intake import accept_lifecycle, accept_notifications
from shared.services.subscriptions import MAILBOX_PARAM, validate_mailbox_param

bp = func.Blueprint()
log = logging.getLogger("inbox.webhook")


def _handshake_or_size(req: func.HttpRequest) -> func.HttpResponse | None:
    token = req.params.get("validationToken")
    if token is not None:
        problem = validation_token_problem(token)
        if problem:
            log.warning("graph.webhook.bad-validation-token reason=%s", problem)
            return func.HttpResponse(problem, status_code=400, mimetype="text/plain")
        # Exactly the URL-decoded token, as text/plain: Graph fails validation on anything else.
        return func.HttpResponse(token, status_code=200, mimetype="text/plain")
    if len(req.get_body() or b"") > MAX_BODY_BYTES:
        return func.HttpResponse("body too large", status_code=413, mimetype="text/plain")
    return None


@bp.route(route="notifications", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def graph_notifications(req: func.HttpRequest) -> func.HttpResponse:
    early = _handshake_or_size(req)
    if early is not None:
        return early
    svc = services()
    try:
        await accept_notifications(req.get_body(), svc.signer, svc.queue,
                                   validate_mailbox_param(req.params.get(MAILBOX_PARAM)))
    except MalformedNotification as exc:
        log.warning("graph.webhook.malformed reason=%s", exc)
        return func.HttpResponse("malformed notification", status_code=400, mimetype="text/plain")
    except InboxError as exc:  # the queue put failed (Storage): 503 so Graph delivers again
        log.error("graph.webhook.enqueue-failed error=%s", type(exc).__name__)
        return func.HttpResponse("temporarily unavailable", status_code=503, mimetype="text/plain")
    except Exception as exc:  # noqa: BLE001 - not Storage: a bug; never reported as a storage alarm
        log.error("graph.webhook.error error=%s", type(exc).__name__)
        return func.HttpResponse("internal error", status_code=500, mimetype="text/plain")
    return func.HttpResponse(status_code=202)


@bp.route(route="lifecycle", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def graph_lifecycle(req: func.HttpRequest) -> func.HttpResponse:
    early = _handshake_or_size(req)
    if early is not None:
        return early
    svc = services()
    try:
        await accept_lifecycle(req.get_body(), svc.queue, svc.subscriptions, svc.mailbox_reader, svc.signer,
                               validate_mailbox_param(req.params.get(MAILBOX_PARAM)))
    except MalformedNotification as exc:
        log.warning("graph.lifecycle.malformed reason=%s", exc)
        return func.HttpResponse("malformed notification", status_code=400, mimetype="text/plain")
    except InboxError as exc:  # a table read or the queue put failed (Storage)
        log.error("graph.lifecycle.enqueue-failed error=%s", type(exc).__name__)
        return func.HttpResponse("temporarily unavailable", status_code=503, mimetype="text/plain")
    except Exception as exc:  # noqa: BLE001 - not Storage: a bug; never reported as a storage alarm
        log.error("graph.lifecycle.error error=%s", type(exc).__name__)
        return func.HttpResponse("internal error", status_code=500, mimetype="text/plain")
    return func.HttpResponse(status_code=202)
