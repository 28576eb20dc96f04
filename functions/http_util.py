"""What the HTTP triggers share: JSON responses, JSON bodies, and the ONE mapping from what a
service raised to the manage API's error response.

Every manage route is wrapped in `@manage_route`: whatever escapes it becomes JSON

    {"error": <a sentence naming the field and the fix>, "reason": <snake_case>, "field": <when one
     field is at fault>, "detail": {...}}

400 for a body or parameter that is not what the route takes, 404 for an unknown id or route, 409
for a duplicate, 422 for a value the rules refuse, 502/503 naming the host of a dependency that
could not be reached (Entra, Graph, Lime CRM, TRAML, Storage), and a JSON 500 with a correlation id
for anything unexpected (its traceback only in the log). Never an empty 500.
"""
from __future__ import annotations

import functools
import json
import logging
import uuid
from typing import Any, Awaitable, Callable

import azure.functions as func

from shared.config import ConfigError
from shared.domain.errors import MailNotFound, PermanentError, Refusal, TransientError, Unavailable

log = logging.getLogger("inbox.manage")

STATUS_OF_KIND = {"bad_request": 400, "not_found": 404, "conflict": 409, "invalid": 422, "bad_gateway": 502,
                  "unavailable": 503}


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(doc, default=str), status_code=status, mimetype="application/json",
                             headers=headers)


def error(status: int, message: str, reason: str | None = None, field: str | None = None,
          detail: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> func.HttpResponse:
    doc: dict[str, Any] = {"error": message, "reason": reason or _DEFAULT_REASONS.get(status, "error")}
    if field:
        doc["field"] = field
    doc["detail"] = detail or {}
    return json_response(doc, status, headers)


_DEFAULT_REASONS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 409: "conflict",
                    422: "invalid_value", 500: "internal_error", 502: "bad_gateway", 503: "unavailable"}


class BadRequest(Refusal):
    """A body or parameter that is not what the route takes (400)."""

    kind = "bad_request"
    reason = "bad_request"


def json_body(req: func.HttpRequest, limit: int = 256_000) -> Any:
    body = req.get_body() or b""
    if len(body) > limit:
        raise BadRequest(f"the body is larger than {limit} bytes", "body_too_large", detail={"limit": limit})
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except ValueError:
        raise BadRequest("the body is not valid JSON: send a JSON object with Content-Type: application/json",
                         "invalid_json") from None


def json_object(req: func.HttpRequest, limit: int = 256_000) -> dict[str, Any]:
    doc = json_body(req, limit)
    if not isinstance(doc, dict):
        raise BadRequest("the body must be a JSON object", "invalid_json")
    return doc


def int_param(req: func.HttpRequest, name: str, default: int, minimum: int, maximum: int) -> int:
    """A whole-number query parameter within [minimum, maximum]; anything else is refused (400)."""
    raw = req.params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"'{name}' must be a whole number from {minimum} to {maximum}, got {raw[:40]!r}",
                         "invalid_parameter", field=name) from None
    if not minimum <= value <= maximum:
        raise BadRequest(f"'{name}' must be from {minimum} to {maximum}, got {value}", "invalid_parameter",
                         field=name)
    return value


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def bool_param(req: func.HttpRequest, name: str) -> bool:
    raw = (req.params.get(name) or "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise BadRequest(f"'{name}' must be true or false, got {raw[:40]!r}", "invalid_parameter", field=name)


def refusal(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """(HTTP status, error document) for what a manage route's service raised. None of these
    messages holds a secret: the services' and adapters' errors never carry one."""
    detail: dict[str, Any] = dict(getattr(exc, "detail", None) or {})
    field = getattr(exc, "field", None)
    if isinstance(exc, Refusal):
        status, reason = STATUS_OF_KIND.get(exc.kind, 422), exc.reason
    elif isinstance(exc, Unavailable):
        status, reason = STATUS_OF_KIND.get(exc.kind, 503), exc.reason
        detail.update({k: v for k, v in (("service", exc.service), ("host", exc.host), ("fix", exc.fix)) if v})
        if exc.retry_after is not None:
            detail["retry_after"] = exc.retry_after
    elif isinstance(exc, ConfigError):
        status, reason = 500, "settings_invalid"
    elif type(exc).__name__ == "CredentialError":
        code = getattr(exc, "code", "") or ""
        status, reason = 502, "token_failed"
        from shared.services.clients import AADSTS_REASONS
        reason = "secret_missing" if code == "config" else AADSTS_REASONS.get(code, "token_failed")
        detail["fix"] = "POST /api/manage/clients/{name}/validate names the failing check"
    elif type(exc).__name__ == "GraphAccessDenied":
        status, reason = 502, "graph_access_denied"
    elif isinstance(exc, TransientError):
        status, reason = 503, "unavailable"
    elif isinstance(exc, MailNotFound):
        status, reason = 404, "not_found"
    elif isinstance(exc, PermanentError):
        status, reason = 502, "dependency_refused"
    else:  # anything else is a bug: the caller answers a JSON 500 and logs the traceback
        raise exc
    doc: dict[str, Any] = {"error": str(exc) or type(exc).__name__, "reason": reason}
    if field:
        doc["field"] = field
    doc["detail"] = detail
    return status, doc


def failure_response(exc: BaseException, route: str = "") -> func.HttpResponse:
    """The JSON response for `exc`; an unexpected one is a JSON 500 whose correlation id is also on
    the log line with the traceback."""
    try:
        status, doc = refusal(exc)
    except Exception:  # noqa: BLE001 - unexpected: never an empty 500
        correlation = uuid.uuid4().hex[:16]
        log.exception("manage.internal-error correlation=%s route=%s error=%s", correlation, route,
                      type(exc).__name__)
        return error(500, f"an unexpected error ({type(exc).__name__}) stopped this request; the server log has "
                          f"the details under correlation={correlation}", "internal_error",
                     detail={"correlation": correlation})
    level = logging.WARNING if status >= 500 else logging.INFO
    log.log(level, "manage.refused route=%s status=%d reason=%s", route, status, doc["reason"])
    return json_response(doc, status)


Handler = Callable[[func.HttpRequest], Awaitable[func.HttpResponse]]
# Every manage route and its methods, as `manage()` registered them (the catch-all's 404 and 405).
ROUTES: dict[str, tuple[str, ...]] = {}


def manage(bp: func.Blueprint, route: str, methods: list[str]) -> Callable[[Handler], Any]:
    """Register a manage route: `bp.route(...)` at auth level FUNCTION, wrapped in `manage_route`."""
    def register(handler: Handler) -> Any:
        ROUTES[route] = tuple(m.upper() for m in methods)
        return bp.route(route=route, methods=methods, auth_level=func.AuthLevel.FUNCTION)(manage_route(handler))
    return register


def route_methods(path: str) -> tuple[str, ...]:
    """The methods the manage routes accept on `path` (e.g. 'manage/status'); () for none."""
    parts = [p for p in path.strip("/").split("/") if p]
    found: list[str] = []
    for template, methods in ROUTES.items():
        segments = template.split("/")
        if len(segments) == len(parts) and all(
                seg.startswith("{") or seg.lower() == part.lower() for seg, part in zip(segments, parts)):
            found.extend(m for m in methods if m not in found)
    return tuple(found)


def manage_route(handler: Handler) -> Handler:
    """Wrap a manage route so that nothing it raises becomes an empty 500 (see the module doc)."""

    @functools.wraps(handler)
    async def route(req: func.HttpRequest) -> func.HttpResponse:
        try:
            return await handler(req)
        except Exception as exc:  # noqa: BLE001 - every outcome becomes a JSON response
            return failure_response(exc, handler.__name__)
    return route
