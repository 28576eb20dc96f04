"""Subscriptions and Graph clients: the renewal timer, lifecycle events, and their manage routes.

shared/services/subscriptions.py does the work (create, renew, recreate, orphans, lifecycle);
shared/services/clients.py lists and validates the Graph clients.
"""
from __future__ import annotations

import logging

import azure.functions as func

from functions.http_util import int_param, json_response, manage
from shared.bootstrap import services
from shared.config import QUEUE_LIFECYCLE
from shared.domain import envelope
from shared.domain.envelope import LifecycleJob
from shared.domain.errors import MalformedEnvelope

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


@manage(bp, "manage/subscriptions/sync", ["POST"])
async def manage_subscriptions_sync(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    return json_response(await svc.subscription_sync.sync("manual"))


@manage(bp, "manage/clients", ["GET"])
async def manage_clients(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    return json_response({"clients": await svc.clients.list()})


@manage(bp, "manage/clients/{name}/validate", ["POST"])
async def manage_client_validate(req: func.HttpRequest) -> func.HttpResponse:
    # settings that stop start-up (e.g. OUTBOUND_CA_BUNDLE missing) answer 500 settings_invalid naming them
    svc = await services().ready()
    return json_response(await svc.clients.validate(req.route_params.get("name", ""), req.params.get("mailbox")))


@manage(bp, "manage/clients/{name}/synclog", ["GET"])
async def manage_client_synclog(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    name = req.route_params.get("name", "")
    entries = await svc.clients.synclog_of(name, int_param(req, "limit", 50, 1, 500))
    return json_response({"client": name, "entries": entries})
