"""Manage API for failed and unprocessed mail: lists, one mail's trace, recoveries, the status,
the admin console and the privacy erase (auth level FUNCTION; JSON in and out, HTML for the console).

Every route parses its input and calls one service (shared/services/status.py, recovery.py,
privacy.py); `manage()` maps what they raise (functions/http_util.py): bad input 400, unknown
things 404, a time in the future 422, Graph or Storage down 503.
"""
from __future__ import annotations

import logging

import azure.functions as func

from functions.http_util import bool_param, error, int_param, json_body, json_object, json_response, manage
from shared.bootstrap import services
from shared.services.recovery import parse_since
from shared.services.status import inbox_status, list_messages
from shared.services.steps import message_steps_of
from shared.web.console import console_page

bp = func.Blueprint()
log = logging.getLogger("inbox.manage")


@manage(bp, "manage/messages", ["GET"])
async def manage_messages(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    return json_response(await list_messages(
        svc.status_deps, req.params.get("status", "failed"), req.params.get("mailbox"),
        parse_since(req.params.get("since"), svc.clock.now()), int_param(req, "limit", 100, 1, 1000)))


@manage(bp, "manage/messages/recover", ["POST"])
async def manage_messages_recover(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    task = await svc.recovery.start(json_object(req, limit=64_000))
    return json_response(task.view(), 202)


@manage(bp, "manage/messages/{message_id}", ["GET"])
async def manage_message(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    message_id = req.route_params.get("message_id", "")
    # its steps with times and outcomes, correlation ids, decision, ticket link, autoreply (services/steps.py)
    doc = await message_steps_of(svc, message_id, req.params.get("mailbox"))
    return json_response(doc) if doc else error(
        404, f"no record of mail {message_id[:80]!r} (not processed, failed or queued yet)", "not_found")


@manage(bp, "manage/recovery", ["GET"])
async def manage_recoveries(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    tasks = await svc.recovery.list(req.params.get("mailbox"), int_param(req, "limit", 5, 1, 50))
    return json_response({"tasks": [t.view() for t in tasks]})


@manage(bp, "manage/recovery/{task_id}", ["GET"])
async def manage_recovery(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    task, items = await svc.recovery.progress(req.route_params.get("task_id", ""))
    return json_response(task.view(items))


@manage(bp, "manage/status", ["GET"])
async def manage_status(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    wide = bool_param(req, "include_inactive") or bool_param(req, "all")
    return json_response(await inbox_status(svc.status_deps, req.params.get("mailbox"), include_inactive=wide))


@manage(bp, "manage/dashboard", ["GET"])
async def manage_dashboard(req: func.HttpRequest) -> func.HttpResponse:
    """The admin console (shared/web/console/): every screen calls the JSON routes above and beside."""
    page, csp = console_page()
    return func.HttpResponse(page, status_code=200, mimetype="text/html", charset="utf-8",
                             headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                                      "Referrer-Policy": "no-referrer", "Content-Security-Policy": csp})


@manage(bp, "manage/privacy/erase", ["POST"])
async def manage_privacy_erase(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    return json_response(await svc.privacy.erase(json_body(req, limit=4_000)))
