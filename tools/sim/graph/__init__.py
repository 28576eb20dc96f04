"""Microsoft Graph + Entra ID simulator for local development, tests and benchmarks.

Owns the HTTP APIs the production code (msgraph-sdk + azure-identity, unchanged) talks to:

* Entra token endpoint (serve it over HTTPS; MSAL refuses http authorities):
  ``GET /{tenant}/v2.0/.well-known/openid-configuration``, ``POST /{tenant}/oauth2/v2.0/token``
  (client_credentials with client_secret, certificate client_assertion verified against the
  registered certificate, or a federated assertion matched on iss/sub/aud), Entra error shapes; a
  tenant's verified domains (:meth:`GraphSim.add_domain`) stand for its GUID there, as in Entra, and
  tokens, the configuration and notifications carry the GUID.
* Graph ``/v1.0``: users, mail folders, messages ($select, $expand=attachments, $filter on
  receivedDateTime, $orderby, paging with @odata.nextLink), attachments and their ``$value``,
  PATCH / DELETE / move / permanentDelete, subscriptions with the real validation handshake,
  change and lifecycle notifications POSTed to the webhook, Outlook throttling per app and
  mailbox, Exchange application access policies, ``Prefer`` headers (ImmutableId, text bodies,
  odata.maxpagesize).
* The App Service managed-identity endpoint (``GET /msi/token``, for ``IDENTITY_ENDPOINT`` and
  ``IDENTITY_HEADER``): :meth:`GraphSim.add_managed_identity` returns the federated credential to put
  on an app, whose tokens for ``api://AzureADTokenExchange`` the token endpoint then accepts.
* A movable clock (subscriptions expire by it; tokens use real time), delivery of mail (Graph
  JSON or raw MIME via :mod:`tools.sim.mime2graph`) and notification chaos (drop, duplicate,
  delay, reorder), all controllable in-process and over ``/_sim/...`` (no auth).

Start it with ``GraphSim().start()`` or ``python -m tools.sim.graph --port 0 --demo``.

Files: server.py (GraphSim: construction, clock, routes, the Graph request pipeline), one GraphSim
mixin per resource: auth.py (Entra token endpoint, OIDC, instance discovery, managed identity, JWTs,
app registration), mailboxes.py (mailboxes, folders, delivery, inspection), messages.py (messages
and attachments, MIME rendering), subscriptions.py, notifications.py (delivery, lifecycle, chaos),
throttling.py (Outlook throttling, Graph's error body), control.py (the ``/_sim`` API); and
model.py (state and constants), helpers.py, query.py (OData $filter, paging), cli.py.
"""

from __future__ import annotations

# the names the single module graph.py had, importable from here as before (__all__ unchanged)
from .cli import main  # noqa: F401
from .helpers import html_to_text, parse_datetime, text_to_html  # noqa: F401
from .model import DEMO_CLIENT_ID, DEMO_MAILBOX, DEMO_SECRET, DEMO_TENANT
from .notifications import NotificationRecord  # noqa: F401
from .server import GraphSim

__all__ = ["GraphSim", "DEMO_TENANT", "DEMO_CLIENT_ID", "DEMO_SECRET", "DEMO_MAILBOX"]
