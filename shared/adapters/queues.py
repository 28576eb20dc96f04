"""JobQueue on Azure Storage queues: envelopes base64-encoded as the Functions host expects."""
from __future__ import annotations

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError, ServiceRequestError, ServiceResponseError

from ..domain import envelope
from ..domain.envelope import Job
from ..domain.errors import TransientError
from .storage_clients import StorageAccount

MAX_VISIBILITY = 7 * 24 * 3600 - 1


class StorageJobQueue:
    def __init__(self, account: StorageAccount) -> None:
        self._account = account

    async def send(self, queue: str, job: Job, visibility_timeout: int = 0) -> None:
        client = self._account.queue(queue)
        text = envelope.encode(job)
        delay = max(0, min(int(visibility_timeout), MAX_VISIBILITY)) or None
        try:
            try:
                await client.send_message(text, visibility_timeout=delay)
            except ResourceNotFoundError:
                await self._account.ensure_queues(queue)
                await client.send_message(text, visibility_timeout=delay)
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise TransientError(f"queue {queue} unreachable: {type(exc).__name__}") from exc
        except HttpResponseError as exc:
            raise TransientError(f"queue {queue} put failed with {exc.status_code}") from exc
