"""Domain errors: what can go wrong, told apart by how the pipeline must react. Performs no I/O."""
from __future__ import annotations


class InboxError(Exception):
    """Base of every error the services raise on purpose."""


class TransientError(InboxError):
    """Worth retrying: Graph 429/5xx, CRM 5xx, timeouts, a lease held by another worker.

    `retry_after` (seconds) is the wait the remote side asked for, if any.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(InboxError):
    """Retrying cannot help (malformed data, a 4xx the remote side will repeat). Recorded with its reason."""


class ContentTooLarge(PermanentError):
    """Content (an attachment's, a whole mail's MIME) turned out larger than the limit it was read
    under: the reading stopped there and what was read is discarded."""


class MailNotFound(PermanentError):
    """Graph answered 404 for the mail: deleted or moved away before we got to it."""


class MalformedNotification(InboxError):
    """The webhook body is not a changeNotificationCollection."""


class MalformedEnvelope(PermanentError):
    """A queue message that is not one of our envelopes (or a version no reader understands)."""


class LeaseHeld(TransientError):
    """Another worker holds the mail's lease; the redelivery will find it finished or the lease expired."""
