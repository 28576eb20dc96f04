"""Queue trigger: process one mail (shared/services/process.py does the work)."""
from __future__ import annotations

import logging

import azure.functions as func

from shared import telemetry
from shared.bootstrap import services
from shared.config import QUEUE_MESSAGES
from shared.domain import envelope
from shared.domain.envelope import MessageJob
from shared.domain.errors import MalformedEnvelope

bp = func.Blueprint()
log = logging.getLogger("inbox.processor")


@bp.queue_trigger(arg_name="msg", queue_name=QUEUE_MESSAGES, connection="AzureWebJobsStorage")
async def process_message(msg: func.QueueMessage) -> None:
    try:
        job = envelope.decode(msg.get_body(), MessageJob)
    except MalformedEnvelope as exc:
        # Retrying cannot fix it; completing it loses nothing we could have processed.
        log.error("process.malformed-envelope queue_message=%s reason=%s", msg.id, exc)
        return
    svc = await services().ready()
    # Transient errors propagate: the host makes the message visible again and, after
    # maxDequeueCount attempts, moves it to inbox-messages-poison.
    with telemetry.job_scope(job, "process_message"):  # the mail's correlation id on every log line and span
        await svc.processor.run(job, getattr(msg, "dequeue_count", 1) or 1)
