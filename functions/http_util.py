"""Small helpers the HTTP triggers share: JSON responses and error mapping."""
from __future__ import annotations

import json
from typing import Any

import azure.functions as func


def json_response(doc: Any, status: int = 200) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(doc, default=str), status_code=status, mimetype="application/json")


def error(status: int, message: str, **extra: Any) -> func.HttpResponse:
    return json_response({"error": message, **extra}, status)


def json_body(req: func.HttpRequest, limit: int = 256_000) -> Any:
    body = req.get_body() or b""
    if len(body) > limit:
        raise ValueError(f"body larger than {limit} bytes")
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except ValueError:
        raise ValueError("body is not valid JSON") from None
