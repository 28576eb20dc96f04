"""Autoreplies: the queue trigger that sends them, its poison handler, and their manage routes.

shared/services/autoreply.py does the work (at most once per ticket, through TRAML).
"""
from __future__ import annotations

import logging

import azure.functions as func

from functions.http_util import error, json_response
from shared import telemetry
from shared.bootstrap import services
from shared.config import QUEUE_AUTOREPLIES
from shared.domain import envelope
from shared.domain.envelope import AutoreplyJob
from shared.domain.errors import MalformedEnvelope, TransientError
from shared.services.autoreply import AutoreplyNotFound, ResendRefused

bp = func.Blueprint()
log = logging.getLogger("inbox.autoreply")


@bp.queue_trigger(arg_name="msg", queue_name=QUEUE_AUTOREPLIES, connection="AzureWebJobsStorage")
async def send_autoreply(msg: func.QueueMessage) -> None:
    try:
        job = envelope.decode(msg.get_body(), AutoreplyJob)
    except MalformedEnvelope as exc:
        log.error("autoreply.malformed-envelope queue_message=%s reason=%s", msg.id, exc)
        return
    svc = await services().ready()
    # Transient errors propagate: the host retries, then moves the job to inbox-autoreplies-poison.
    with telemetry.job_scope(job, "send_autoreply"):
        await svc.autoreplies.send(job)


@bp.queue_trigger(arg_name="msg", queue_name=QUEUE_AUTOREPLIES + "-poison", connection="AzureWebJobsStorage")
async def autoreply_failed(msg: func.QueueMessage) -> None:
    try:
        job = envelope.decode(msg.get_body(), AutoreplyJob)
    except MalformedEnvelope as exc:
        log.error("autoreply.poison-malformed queue_message=%s reason=%s", msg.id, exc)
        return
    svc = await services().ready()
    # Failed (or Uncertain if a send was claimed) for the autoreply only: the ticket stays as it is.
    with telemetry.job_scope(job, "autoreply_failed"):
        await svc.autoreplies.record_poisoned(job, getattr(msg, "dequeue_count", 0) or 0)


@bp.route(route="manage/autoreplies", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def manage_autoreplies(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    try:
        limit = int(req.params.get("limit", "100"))
        items = await svc.autoreplies.list_autoreplies(req.params.get("status", "failed"), limit)
    except ValueError as exc:
        return error(400, str(exc) if "status" in str(exc) else "limit must be an integer")
    return json_response({"autoreplies": items})


@bp.route(route="manage/autoreplies/{ticket_id}/resend", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def manage_autoreply_resend(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    try:
        view = await svc.autoreplies.resend(req.route_params.get("ticket_id", ""))
    except AutoreplyNotFound as exc:
        return error(404, str(exc))
    except ResendRefused as exc:
        return error(409, str(exc))
    except TransientError as exc:
        return error(503, f"storage is unavailable, try again: {exc}")
    return json_response(view, 202)
