"""What function_app registers: every function with its trigger, every manage route through
`manage()` (so its errors are JSON), and the manage catch-all where the Functions host reaches it
last: the host tries routes in the order of their functions' names (azure-functions-host#9876), so
the catch-all's name must sort after every other manage function's, or it would answer for them."""
from __future__ import annotations

import function_app
from functions.http_util import ROUTES
from functions.manage_fallback import CATCH_ALL

EXPECTED = {
    # name: (trigger, route or queue or schedule, methods)
    "graph_notifications": ("httpTrigger", "notifications", ("POST",)),
    "graph_lifecycle": ("httpTrigger", "lifecycle", ("POST",)),
    "process_message": ("queueTrigger", "inbox-messages", None),
    "message_failed": ("queueTrigger", "inbox-messages-poison", None),
    "send_autoreply": ("queueTrigger", "inbox-autoreplies", None),
    "autoreply_failed": ("queueTrigger", "inbox-autoreplies-poison", None),
    "handle_lifecycle": ("queueTrigger", "inbox-lifecycle", None),
    "lifecycle_failed": ("queueTrigger", "inbox-lifecycle-poison", None),
    "run_recovery": ("queueTrigger", "inbox-recovery", None),
    "recovery_failed": ("queueTrigger", "inbox-recovery-poison", None),
    "renew_subscriptions": ("timerTrigger", "%RENEW_SCHEDULE%", None),
    "sweep_inbox": ("timerTrigger", "%SWEEP_SCHEDULE%", None),
    "purge_retention": ("timerTrigger", "%PURGE_SCHEDULE%", None),
    "manage_status": ("httpTrigger", "manage/status", ("GET",)),
    "manage_dashboard": ("httpTrigger", "manage/dashboard", ("GET",)),
    "manage_options": ("httpTrigger", "manage/options", ("GET",)),
    "manage_clients": ("httpTrigger", "manage/clients", ("GET",)),
    "manage_client_validate": ("httpTrigger", "manage/clients/{name}/validate", ("POST",)),
    "manage_client_synclog": ("httpTrigger", "manage/clients/{name}/synclog", ("GET",)),
    "manage_client_folders": ("httpTrigger", "manage/clients/{name}/folders", ("GET",)),
    "manage_mailboxes": ("httpTrigger", "manage/mailboxes", ("GET", "POST")),
    "manage_mailbox": ("httpTrigger", "manage/mailboxes/{id}", ("GET", "PATCH", "DELETE")),
    "manage_subscriptions_sync": ("httpTrigger", "manage/subscriptions/sync", ("POST",)),
    "manage_messages": ("httpTrigger", "manage/messages", ("GET",)),
    "manage_message": ("httpTrigger", "manage/messages/{message_id}", ("GET",)),
    "manage_messages_recover": ("httpTrigger", "manage/messages/recover", ("POST",)),
    "manage_recoveries": ("httpTrigger", "manage/recovery", ("GET",)),
    "manage_recovery": ("httpTrigger", "manage/recovery/{task_id}", ("GET",)),
    "manage_autoreplies": ("httpTrigger", "manage/autoreplies", ("GET",)),
    "manage_autoreply_resend": ("httpTrigger", "manage/autoreplies/{ticket_id}/resend", ("POST",)),
    "manage_autoreply_dismiss": ("httpTrigger", "manage/autoreplies/{ticket_id}/dismiss", ("POST",)),
    "manage_tickets": ("httpTrigger", "manage/tickets", ("GET",)),
    "manage_ticket": ("httpTrigger", "manage/tickets/{number}", ("GET", "PATCH")),
    "manage_document": ("httpTrigger", "manage/documents/{doc_id}", ("GET",)),
    "manage_privacy_erase": ("httpTrigger", "manage/privacy/erase", ("POST",)),
    "manage_unknown_route": ("httpTrigger", CATCH_ALL, None),
}


def registered() -> dict[str, tuple[str, str, tuple[str, ...] | None]]:
    out = {}
    try:
        for fn in function_app.app.get_functions():
            trigger = next(b.get_dict_repr() for b in fn.get_bindings() if b.get_dict_repr()["type"].endswith("Trigger"))
            where = trigger.get("route") or trigger.get("queueName") or trigger.get("schedule")
            methods = trigger.get("methods")
            out[fn.get_function_name()] = (trigger["type"], where,
                                           tuple(str(getattr(m, "value", m)) for m in methods) if methods else None)
    finally:
        function_app.app.functions_bindings = {}  # get_functions() may be called again elsewhere
    return out


def test_every_function_is_registered_with_its_trigger():
    assert registered() == EXPECTED


def test_every_manage_route_goes_through_the_error_mapping():
    manage_routes = {v[1]: v[2] for v in EXPECTED.values() if v[0] == "httpTrigger" and v[1].startswith("manage/")}
    assert {r: tuple(m) for r, m in ROUTES.items()} == {r: m for r, m in manage_routes.items() if r != CATCH_ALL}


def test_the_catch_all_sorts_after_every_other_manage_function():
    names = [n for n, v in registered().items() if v[0] == "httpTrigger" and v[1].startswith("manage/")]
    host_order = sorted(names, key=lambda n: (n.lower(), n))
    assert host_order[-1] == "manage_unknown_route", host_order
