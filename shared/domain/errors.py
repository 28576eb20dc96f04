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


# -- refusals the manage API maps to its error responses (functions/http_util.py) -----------------
# kind -> HTTP status there: bad_request 400, not_found 404, conflict 409, invalid 422,
# bad_gateway 502, unavailable 503.
class Refusal(InboxError):
    """A request the service refuses on purpose: a sentence naming the field and the fix, a
    snake_case `reason`, the `field` at fault (dotted for nested ones) and `detail`."""

    kind = "invalid"
    reason = "invalid_value"

    def __init__(self, message: str, reason: str | None = None, field: str | None = None,
                 detail: dict | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        if reason:
            self.reason = reason
        if kind:
            self.kind = kind
        self.field = field
        self.detail = dict(detail or {})


class Unavailable(TransientError):
    """A dependency (Entra, Graph, Lime CRM, TRAML, Storage) could not be reached or did not answer
    usefully. `reason` names what (authority_unreachable, tls_untrusted, ...), `host` where, `fix`
    what to check. Transient for the pipeline (the mail waits), 502/503 for the manage API."""

    kind = "unavailable"

    def __init__(self, message: str, reason: str, service: str = "", host: str = "", fix: str = "",
                 retry_after: float | None = None, kind: str | None = None, detail: dict | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.reason = reason
        self.service = service
        self.host = host
        self.fix = fix
        if kind:
            self.kind = kind
        self.detail = dict(detail or {})
