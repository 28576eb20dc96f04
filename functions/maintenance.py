"""Failed and unprocessed mail, in the background: the poison handler, the sweep, recoveries, the
retention purge. Each trigger parses its input and calls one service (shared/services/)."""
from __future__ import annotations

import logging

import azure.functions as func

from shared import telemetry
from shared.bootstrap import services
from shared.config import QUEUE_MESSAGES
from shared.domain import envelope
from shared.domain.envelope import MessageJob
from shared.domain.errors import MalformedEnvelope
from shared.services.recovery import QUEUE_RECOVERY, decode_job
from shared.services.sweep import sweep_all

bp = func.Blueprint()
log = logging.getLogger("inbox.maintenance")


@bp.queue_trigger(arg_name="msg", queue_name=QUEUE_MESSAGES + "-poison", connection="AzureWebJobsStorage")
async def message_failed(msg: func.QueueMessage) -> None:
    try:
        job = envelope.decode(msg.get_body(), MessageJob)
    except MalformedEnvelope as exc:
        log.error("failures.poison-malformed queue_message=%s reason=%s", msg.id, exc)
        return
    svc = await services().ready()
    # Failed first (Storage trouble raises: the poison queue retries), then the category, best effort.
    with telemetry.job_scope(job, "message_failed"):
        await svc.failures.record_poisoned(job, getattr(msg, "dequeue_count", 0) or 0)


@bp.timer_trigger(arg_name="timer", schedule="%SWEEP_SCHEDULE%")
async def sweep_inbox(timer: func.TimerRequest) -> None:
    svc = await services().ready()
    await sweep_all(svc, svc.clock.now())


@bp.queue_trigger(arg_name="msg", queue_name=QUEUE_RECOVERY, connection="AzureWebJobsStorage")
async def run_recovery(msg: func.QueueMessage) -> None:
    try:
        job = decode_job(msg.get_body())
    except MalformedEnvelope as exc:
        log.error("recovery.malformed-envelope queue_message=%s reason=%s", msg.id, exc)
        return
    svc = await services().ready()
    await svc.recovery.run(job)


@bp.queue_trigger(arg_name="msg", queue_name=QUEUE_RECOVERY + "-poison", connection="AzureWebJobsStorage")
async def recovery_failed(msg: func.QueueMessage) -> None:
    try:
        job = decode_job(msg.get_body())
    except MalformedEnvelope as exc:
        log.error("recovery.poison-malformed queue_message=%s reason=%s", msg.id, exc)
        return
    svc = await services().ready()
    await svc.recovery.fail(job, "the recovery stopped after repeated errors (Graph or Storage); start it again")


@bp.timer_trigger(arg_name="timer", schedule="%PURGE_SCHEDULE%")
async def purge_retention(timer: func.TimerRequest) -> None:
    svc = await services().ready()
    await svc.privacy.purge()
