"""Map Azure SDK exceptions to the domain's transient/permanent split. Messages never carry secrets."""
from __future__ import annotations

from typing import NoReturn

from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

from ..domain.errors import PermanentError, TransientError

# What a Storage call raises when it failed: an answer (HttpResponseError and its subclasses) or
# none at all (connection refused, reset, timed out). `except STORAGE_ERRORS: raise_storage(...)`
# turns both into the domain's errors, so an unreachable account is transient, not a crash.
STORAGE_ERRORS = (HttpResponseError, ServiceRequestError, ServiceResponseError)


def raise_storage(exc: Exception, what: str) -> NoReturn:
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        raise TransientError(f"storage unreachable during {what}: {type(exc).__name__}") from exc
    if isinstance(exc, HttpResponseError):
        status = exc.status_code or 0
        if status >= 500 or status in (408, 429):
            raise TransientError(f"storage {status} during {what}") from exc
        raise PermanentError(f"storage {status} during {what}: {exc.reason}") from exc
    raise exc
