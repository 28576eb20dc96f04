"""Subscriptions and Graph clients: the renewal timer, lifecycle events, and their manage routes.

shared/services/subscriptions.py does the work (create, renew, recreate, orphans, lifecycle);
shared/services/clients.py lists and validates the Graph clients.
"""
from __future__ import annotations

import logging

import azure.functions as func

from functions.http_util import error, json_response
from shared.bootstrap import services
from shared.config import QUEUE_LIFECYCLE, ConfigError
from shared.domain import envelope
from shared.domain.envelope import LifecycleJob
from shared.domain.errors import MalformedEnvelope
from shared.services.clients import ClientNotFound

bp = func.Blueprint()
log = logging.getLogger("inbox.subscriptions")


@bp.timer_trigger(arg_name="timer", schedule="%RENEW_SCHEDULE%", run_on_startup=False, use_monitor=True)
async def renew_subscriptions(timer: func.TimerRequest) -> None:
    svc = await services().ready()
    # Never raises for a mailbox or a client: failures land on the records and in the sync log.
    await svc.subscription_sync.sync("timer")


@bp.queue_trigger(arg_name="msg", queue_name=QUEUE_LIFECYCLE, connection="AzureWebJobsStorage")
async def handle_lifecycle(msg: func.QueueMessage) -> None:
    try:
        job = envelope.decode(msg.get_body(), LifecycleJob)
    except MalformedEnvelope as exc:
        log.error("lifecycle.malformed-envelope queue_message=%s reason=%s", msg.id, exc)
        return
    svc = await services().ready()
    # A TransientError propagates: the host retries, then moves the job to inbox-lifecycle-poison.
    await svc.subscription_sync.handle_lifecycle(job)


@bp.queue_trigger(arg_name="msg", queue_name=QUEUE_LIFECYCLE + "-poison", connection="AzureWebJobsStorage")
async def lifecycle_failed(msg: func.QueueMessage) -> None:
    try:
        job = envelope.decode(msg.get_body(), LifecycleJob)
    except MalformedEnvelope as exc:
        log.error("lifecycle.poison-malformed queue_message=%s reason=%s", msg.id, exc)
        return
    svc = await services().ready()
    await svc.subscription_sync.record_lifecycle_failure(job, getattr(msg, "dequeue_count", 0) or 0)


@bp.route(route="manage/subscriptions/sync", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def manage_subscriptions_sync(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    return json_response(await svc.subscription_sync.sync("manual"))


@bp.route(route="manage/clients", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def manage_clients(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    return json_response({"clients": await svc.clients.list()})


@bp.route(route="manage/clients/{name}/validate", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def manage_client_validate(req: func.HttpRequest) -> func.HttpResponse:
    try:
        svc = await services().ready()
    except ConfigError as exc:  # e.g. OUTBOUND_CA_BUNDLE missing: say so here, not just in the host log
        return error(500, str(exc), reason="settings")
    try:
        result = await svc.clients.validate(req.route_params.get("name", ""), req.params.get("mailbox"))
    except ClientNotFound as exc:
        return error(404, str(exc))
    return json_response(result)


@bp.route(route="manage/clients/{name}/synclog", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def manage_client_synclog(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    try:
        limit = min(500, max(1, int(req.params.get("limit", "50"))))
        entries = await svc.clients.synclog_of(req.route_params.get("name", ""), limit)
    except ValueError:
        return error(400, "limit must be an integer")
    except ClientNotFound as exc:
        return error(404, str(exc))
    return json_response({"client": req.route_params.get("name", ""), "entries": entries})
