"""Mailbox CRUD under /api/manage/mailboxes (shared/services/mailboxes.py does the work), and what
the console's mailbox form offers: the allowed values (`options`) and a mailbox's folders.

`?validate_only=true` on POST and PATCH runs every check (TRAML, Graph, the CRM's schema) and
answers 200 {"ok": true, "warnings": [...]} or the refusal, saving nothing.
"""
from __future__ import annotations

import azure.functions as func

from functions.http_util import bool_param, json_body, json_response, manage
from shared.bootstrap import services
from shared.services.mailboxes import MailboxResult, mailbox_from_request
from shared.services.views import mailbox_view

bp = func.Blueprint()


def _view(result: MailboxResult) -> dict:
    doc = mailbox_view(result.mailbox, result.subscription)
    if result.outcome is not None:
        doc["subscription_outcome"] = result.outcome.as_dict()
    if result.warnings:
        doc["check_warnings"] = result.warnings
    return doc


def _checked(result: MailboxResult) -> func.HttpResponse:
    return json_response({"ok": True, "warnings": result.warnings, "mailbox": mailbox_view(result.mailbox)})


@manage(bp, "manage/mailboxes", ["GET", "POST"])
async def manage_mailboxes(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    if req.method == "GET":
        subs = {s.mailbox_id: s for s in await svc.subscriptions.list()}
        return json_response({"mailboxes": [mailbox_view(m, subs.get(m.id)) for m in await svc.registry.list()]})
    dry_run = bool_param(req, "validate_only")
    mailbox = mailbox_from_request(json_body(req), svc.settings.graph_clients, svc.clock.now())
    result = await svc.mailboxes.add(mailbox, dry_run=dry_run)
    return _checked(result) if dry_run else json_response(_view(result), 201)


@manage(bp, "manage/mailboxes/{id}", ["GET", "PATCH", "DELETE"])
async def manage_mailbox(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    ref = req.route_params.get("id", "")
    if req.method == "GET":
        return json_response(_view(await svc.mailboxes.get(ref)))
    if req.method == "PATCH":
        dry_run = bool_param(req, "validate_only")
        result = await svc.mailboxes.update(ref, json_body(req), dry_run=dry_run)
        return _checked(result) if dry_run else json_response(_view(result))
    outcome = await svc.mailboxes.delete(ref)
    return json_response({"deleted": ref, "subscription": outcome.as_dict()})


@manage(bp, "manage/options", ["GET"])
async def manage_options(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    return json_response(await svc.mailbox_checks.options())


@manage(bp, "manage/clients/{name}/folders", ["GET"])
async def manage_client_folders(req: func.HttpRequest) -> func.HttpResponse:
    svc = await services().ready()
    return json_response(await svc.mailbox_checks.folders(req.route_params.get("name", ""),
                                                          req.params.get("mailbox", "")))
