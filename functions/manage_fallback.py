"""The manage API's catch-all: an unknown route under /api/manage answers JSON 404 `unknown_route`,
a known route called with a method it does not take answers JSON 405 with `Allow` (the host itself
would answer an empty 404 for both).

Route order: the Functions host tries routes in the order of their functions' names (it does not
rank literal segments above parameters: azure-functions-host#9876), so this function's name must
sort after every other manage function's; tests/infra/test_function_registration.py checks it and
the dev host orders routes the same way. Registered last in function_app.py as well.
"""
from __future__ import annotations

import azure.functions as func

from functions.http_util import ROUTES, error, manage_route, route_methods

bp = func.Blueprint()
CATCH_ALL = "manage/{*rest}"


@bp.route(route=CATCH_ALL, methods=None, auth_level=func.AuthLevel.FUNCTION)
@manage_route
async def manage_unknown_route(req: func.HttpRequest) -> func.HttpResponse:
    rest = req.route_params.get("rest", "") or ""
    path = f"manage/{rest}".rstrip("/")
    allowed = route_methods(path)
    if allowed:
        return error(405, f"{req.method} is not allowed on /api/{path}; it takes {', '.join(allowed)}",
                     "method_not_allowed", detail={"allowed": list(allowed)}, headers={"Allow": ", ".join(allowed)})
    known = sorted(f"{', '.join(m)} /api/{r}" for r, m in ROUTES.items())
    return error(404, f"No route /api/{path} in the manage API; the README's Operations section lists them",
                 "unknown_route", detail={"routes": known})
