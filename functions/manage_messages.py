"""Manage API for failed and unprocessed mail: lists, one mail's trace, recoveries, the status,
the admin console and the privacy erase (auth level FUNCTION; JSON in and out, HTML for the console).

Every route parses its input, calls one service (shared/services/status.py, recovery.py,
privacy.py) and maps its errors: bad input 400, unknown things 404, Graph or Storage down 503.
"""
from __future__ import annotations

import logging

import azure.functions as func

from functions.http_util import error, json_body, json_response
from shared.bootstrap import services
from shared.domain.errors import TransientError
from shared.services.privacy import PrivacyRequestError
from shared.services.recovery import RecoveryNotFound, RecoveryRequestError, parse_since
from shared.services.status import ListRequestError, inbox_status, list_messages
from shared.services.steps import message_steps_of
from shared.web.console import console_page

bp = func.Blueprint()
log = logging.getLogger("inbox.manage")

_TRUE = ("1", "true", "yes", "on")


def _limit(req: func.HttpRequest, default: int, maximum: int) -> int:
    try:
        return max(1, min(maximum, int(req.params.get("limit", str(default)))))
    except ValueError:
        raise ListRequestError("limit must be an integer") from None


@bp.route(route="manage/messages", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def manage_messages(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    try:
        doc = await list_messages(svc.status_deps, req.params.get("status", "failed"), req.params.get("mailbox"),
                                  parse_since(req.params.get("since")), _limit(req, 100, 1000))
    except (ListRequestError, RecoveryRequestError) as exc:
        return error(400, str(exc))
    except TransientError as exc:
        return error(503, f"Graph or Storage is unavailable, try again: {exc}")
    return json_response(doc)


@bp.route(route="manage/messages/recover", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def manage_messages_recover(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    try:
        task = await svc.recovery.start(json_body(req, limit=64_000))
    except (ValueError, RecoveryRequestError) as exc:
        return error(400, str(exc))
    except RecoveryNotFound as exc:
        return error(404, str(exc))
    except TransientError as exc:
        return error(503, f"could not start the recovery, try again: {exc}")
    return json_response(task.view(), 202)


@bp.route(route="manage/messages/{message_id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def manage_message(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    # its steps with times and outcomes, correlation ids, decision, ticket link, autoreply (services/steps.py)
    doc = await message_steps_of(svc, req.route_params.get("message_id", ""), req.params.get("mailbox"))
    return json_response(doc) if doc else error(404, "no record of this mail (not processed, failed or queued yet)")


@bp.route(route="manage/recovery", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def manage_recoveries(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    try:
        tasks = await svc.recovery.list(req.params.get("mailbox"), _limit(req, 5, 50))
    except ListRequestError as exc:
        return error(400, str(exc))
    except RecoveryNotFound as exc:
        return error(404, str(exc))
    return json_response({"tasks": [t.view() for t in tasks]})


@bp.route(route="manage/recovery/{task_id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def manage_recovery(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    try:
        task, items = await svc.recovery.progress(req.route_params.get("task_id", ""))
    except RecoveryNotFound as exc:
        return error(404, str(exc))
    return json_response(task.view(items))


@bp.route(route="manage/status", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def manage_status(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    wide = any(req.params.get(k, "").lower() in _TRUE for k in ("include_inactive", "all"))
    try:
        return json_response(await inbox_status(svc.status_deps, req.params.get("mailbox"), include_inactive=wide))
    except TransientError as exc:
        return error(503, f"storage is unavailable, try again: {exc}")


@bp.route(route="manage/dashboard", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def manage_dashboard(req: func.HttpRequest) -> func.HttpResponse:
    """The admin console (shared/web/console/): every screen calls the JSON routes above and beside."""
    page, csp = console_page()
    return func.HttpResponse(page, status_code=200, mimetype="text/html", charset="utf-8",
                             headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                                      "Referrer-Policy": "no-referrer", "Content-Security-Policy": csp})


@bp.route(route="manage/privacy/erase", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def manage_privacy_erase(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    try:
        report = await svc.privacy.erase(json_body(req, limit=4_000))
    except (ValueError, PrivacyRequestError) as exc:
        return error(400, str(exc))
    except TransientError as exc:
        return error(503, f"storage is unavailable, try again: {exc}")
    return json_response(report)
