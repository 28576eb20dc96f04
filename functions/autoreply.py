"""Autoreplies: the queue trigger that sends them, its poison handler, and their manage routes.

shared/services/autoreply.py does the work (at most once per ticket, through TRAML).
"""
from __future__ import annotations

import logging

import azure.functions as func

from functions.http_util import int_param, json_object, json_response, manage
from shared import telemetry
from shared.bootstrap import services
from shared.config import QUEUE_AUTOREPLIES
from shared.domain import envelope
from shared.domain.envelope import AutoreplyJob
from shared.domain.errors import MalformedEnvelope

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


@manage(bp, "manage/autoreplies", ["GET"])
async def manage_autoreplies(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    items = await svc.autoreplies.list_autoreplies(req.params.get("status", "failed"),
                                                   int_param(req, "limit", 100, 1, 500))
    return json_response({"autoreplies": items})


@manage(bp, "manage/autoreplies/{ticket_id}/resend", ["POST"])
async def manage_autoreply_resend(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    return json_response(await svc.autoreplies.resend(req.route_params.get("ticket_id", "")), 202)


@manage(bp, "manage/autoreplies/{ticket_id}/dismiss", ["POST"])
async def manage_autoreply_dismiss(req: func.HttpRequest) -> func.HttpResponse:
    note = json_object(req, limit=16_000).get("note", "")
    svc = await services().ready()
    return json_response(await svc.autoreplies.dismiss(req.route_params.get("ticket_id", ""), note))
