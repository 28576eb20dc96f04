"""Wiring only: one FunctionApp, one blueprint per trigger family. No I/O, no settings read here.

Importing this module must stay cheap (it does not import msgraph-sdk): production imports every
blueprint at cold start, and the webhook must answer Graph within its budget.
"""
import azure.functions as func

from functions import (autoreply, graph_webhook, mail_processor, mailboxes, maintenance, manage, manage_fallback,
                       manage_messages, subscriptions)

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
# manage_fallback (the manage API's catch-all 404) last: see its module doc on route order.
for blueprint in (graph_webhook.bp, mail_processor.bp, manage.bp, autoreply.bp, mailboxes.bp, subscriptions.bp,
                  maintenance.bp, manage_messages.bp, manage_fallback.bp):
    app.register_functions(blueprint)
