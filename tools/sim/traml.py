"""TRAML (Lime Marketing transactional mail) simulator for local development, tests and benchmarks.

Serves the endpoints of ../shared/facts/lime-crm-and-traml.md §3 under ``/bedrock/<account>/api``:

* ``GET ping/version`` -> ``{"Version": ...}``
* ``GET mailtemplate`` -> ``[{Id, HtmlLayoutId, TextLayoutId, CreatedByUserId, Name, Description,
  CreationDate, ModifiedDate}]``; ``GET mailtemplate/name/{name}`` -> the one template of that name
  (the lowest id when several share it; 404 with TRAML's error body when none: the name is matched
  exactly); ``GET mailtemplate/{id}/variables``
* ``GET SendingDomain`` -> ``[{Domain, IsDomainVerified}]``
* ``POST transactionmail/sendtemplate`` -> ``TransactionMailModel``

Every request needs the ``apikey`` header (401 otherwise).  ``sendtemplate`` accepts ONLY the
documented fields, with their exact casing (stricter than the real .NET binder, on purpose: a
misspelt field such as ``ExcludeTotalOptouts`` would otherwise be silently dropped), and answers
validation problems in TRAML's shape: ``{"Message": ..., "ErrorDetails": [{"Context", "Message"}]}``
with 400.  Checks: required fields, types, the server-side e-mail regex, the template exists,
tag models are ``{Name, Value}`` strings, headers are a string map that names no reserved header
(ASSUMPTION: which headers TRAML refuses is not documented; `reject_headers` adds more, e.g.
``In-Reply-To``), and, once sending domains are registered, that FromEmail's domain is verified.

What was "sent" is kept in ``sim.sent`` (rendered subject, HTML and text with merge codes replaced)
and served at ``GET /_sim/traml/sent``.  Faults (5xx, 429 with Retry-After, dropped connections)
come from the shared fault facility (``sim.faults.add(503, path_regex="sendtemplate", count=2)`` or
``POST /_sim/faults``); ``sim.answer_late(seconds)`` queues the next send and then answers late,
which a client with a shorter timeout sees as "no answer" (the uncertain case).

Start it with ``TramlSim().start()`` or ``python -m tools.sim.traml --port 0`` (prints its URLs).
"""

from __future__ import annotations

import argparse
import base64
import copy
import itertools
import json
import os
import re
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any

from .httpbase import HttpError, Request, Response, SimServer, json_response

__all__ = ["TramlSim", "DEMO_ACCOUNT", "DEMO_API_KEY", "EMAIL_RE", "SEND_FIELDS"]

DEMO_ACCOUNT = "demo"
DEMO_API_KEY = "sim-traml-key"

# Lime's server-side regex, mirrored in Lime's own client (facts §3.3).
EMAIL_RE = re.compile(r"^([a-zA-Z0-9_\-\.'\+\!\#\$\%\&\?\=\^\{\}\|\~\*]+)@((\[ipv4\])|"
                      r"(([a-zA-Z0-9-_]+\.)*([a-zA-Z0-9-]+)\.[a-zA-Z0-9]{2,15}))$")

# The documented request fields of send/sendtemplate and their JSON types (facts §3.3).
BASE_FIELDS: dict[str, tuple[type, ...]] = {
    "RecipientEmail": (str,), "RecipientName": (str,), "FromEmail": (str,), "FromName": (str,),
    "SenderEmail": (str,), "SenderName": (str,), "ReplyTo": (str,), "Subject": (str,),
    "ScheduledSendDate": (str,), "ExternalId": (str,), "Attachments": (list,),
    "TrackOpenings": (bool,), "TrackLinkClicks": (bool,), "LinkBaseUrl": (str,),
    "ExcludePublicationOptouts": (bool,), "ExcludeTotaloptouts": (bool,), "ExcludePreviousBounce": (bool,),
    "HtmlContentTagModels": (list,), "TextContentTagModels": (list,), "Headers": (dict,),
    "IncludeEmailDataInWebhookPayload": (bool,),
}
SEND_FIELDS: dict[str, tuple[type, ...]] = {**BASE_FIELDS, "TemplateId": (int,)}
EMAIL_FIELDS = ("RecipientEmail", "FromEmail", "SenderEmail", "ReplyTo")
# ASSUMPTION: headers a transactional mail service sets itself and will not take from a caller.
RESERVED_HEADERS = frozenset(h.lower() for h in (
    "From", "To", "Cc", "Bcc", "Subject", "Date", "Message-ID", "Sender", "Reply-To", "Return-Path",
    "Content-Type", "Content-Transfer-Encoding", "MIME-Version", "DKIM-Signature", "Received"))
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 field name: printable ASCII except ':'


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class _Invalid(Exception):
    def __init__(self, details: list[dict[str, str]], message: str = "The request is invalid.") -> None:
        super().__init__(message)
        self.details = details
        self.message = message


class TramlSim(SimServer):
    name = "traml"
    log_headers = ("content-type", "user-agent", "accept")  # never the apikey

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, account: str = DEMO_ACCOUNT,
                 api_key: str = DEMO_API_KEY, tls: bool = False, latency_ms: float = 0) -> None:
        super().__init__(host, port, tls=tls, latency_ms=latency_ms)
        self.account = account
        self.api_key = api_key
        self._lock = threading.Lock()
        self._ids = itertools.count(1001)
        self._tx = itertools.count(500001)
        self.templates: dict[int, dict[str, Any]] = {}
        self.sending_domains: dict[str, bool] = {}
        self.reject_headers: set[str] = set()
        self.sent: list[dict[str, Any]] = []
        self._late: list[float] = []
        base = f"/bedrock/{re.escape(account)}/api"
        self.base_path = f"/bedrock/{account}/api"
        self.route("GET", base + r"/ping/version", self._ping)
        self.route("GET", base + r"/mailtemplate/?", self._templates)
        self.route("GET", base + r"/mailtemplate/name/(?P<name>.+)", self._template_by_name)  # decoded path
        self.route("GET", base + r"/mailtemplate/(?P<id>-?\d+)/variables", self._variables)
        self.route("GET", base + r"/SendingDomain/?", self._domains, flags=re.IGNORECASE)
        self.route("POST", base + r"/transactionmail/sendtemplate", self._sendtemplate, flags=re.IGNORECASE)
        self.route("GET", r"/_sim/traml/sent", lambda r: json_response({"value": self.sent_mail()}))
        self.route("DELETE", r"/_sim/traml/sent", self._ctl_clear_sent)
        self.route("POST", r"/_sim/traml/templates", self._ctl_add_template)

    # ---- in-process control ------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        """What TRAML_BASE_URL should be set to."""
        return self.url + self.base_path

    def add_template(self, name: str, html: str = "", text: str = "", description: str = "") -> int:
        with self._lock:
            tid = next(self._ids)
            now = _now_iso()
            self.templates[tid] = {"Id": tid, "HtmlLayoutId": 1, "TextLayoutId": 2, "CreatedByUserId": 1,
                                   "Name": name, "Description": description, "CreationDate": now,
                                   "ModifiedDate": now, "_html": html, "_text": text}
            return tid

    def remove_template(self, name: str) -> None:
        with self._lock:
            for tid in [t for t, v in self.templates.items() if v["Name"] == name]:
                del self.templates[tid]

    def add_sending_domain(self, domain: str, verified: bool = True) -> None:
        """Once any domain is registered, FromEmail must belong to a verified one."""
        with self._lock:
            self.sending_domains[domain.lower()] = verified

    def answer_late(self, seconds: float, count: int = 1) -> None:
        """The next `count` sends are queued, then answered after `seconds`."""
        with self._lock:
            self._late.extend([seconds] * count)

    def sent_mail(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self.sent)

    def clear_sent(self) -> None:
        with self._lock:
            self.sent.clear()

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "api_url": self.api_url, "account": self.account}

    # ---- helpers -------------------------------------------------------------------------------
    def error_body(self, status: int, code: str, message: str) -> Any:
        return {"Message": message, "ErrorDetails": []}

    def _auth(self, req: Request) -> None:
        if (req.header("apikey") or "") != self.api_key:
            raise HttpError(401, "Unauthorized", "Authorization has been denied for this request.")

    # ---- handlers -------------------------------------------------------------------------------
    def _ping(self, req: Request) -> Response:
        self._auth(req)
        return json_response({"Version": "sim-1.0"})

    def _templates(self, req: Request) -> Response:
        self._auth(req)
        with self._lock:
            items = [{k: v for k, v in t.items() if not k.startswith("_")} for t in self.templates.values()]
        return json_response(items)

    def _template_by_name(self, req: Request) -> Response:
        self._auth(req)
        name = req.params["name"]
        with self._lock:
            found = [t for tid, t in sorted(self.templates.items()) if t["Name"] == name]
        if not found:
            raise HttpError(404, "NotFound", f"Mail template '{name}' does not exist.")
        return json_response({k: v for k, v in found[0].items() if not k.startswith("_")})

    def _variables(self, req: Request) -> Response:
        self._auth(req)
        with self._lock:
            template = self.templates.get(int(req.params["id"]))
        if template is None:
            raise HttpError(404, "NotFound", f"Mail template {req.params['id']} does not exist.")
        found = sorted(set(re.findall(r"\$\$[\w.]+\$\$|\{\{\s*[\w.]+\s*\}\}", template["_html"] + template["_text"])))
        return json_response({"RecipientVariables": [],
                              "CustomVariables": [{"Property": v, "RawValue": v} for v in found]})

    def _domains(self, req: Request) -> Response:
        self._auth(req)
        with self._lock:
            items = [{"Domain": d, "IsDomainVerified": v} for d, v in self.sending_domains.items()]
        return json_response(items)

    def _ctl_clear_sent(self, req: Request) -> Response:
        self.clear_sent()
        return Response(204)

    def _ctl_add_template(self, req: Request) -> Response:
        body = req.json()
        tid = self.add_template(str(body.get("Name", "")), str(body.get("Html", "")), str(body.get("Text", "")))
        return json_response({"Id": tid}, 201)

    def _sendtemplate(self, req: Request) -> Response:
        self._auth(req)
        try:
            body = req.json()
        except HttpError:
            return json_response({"Message": "The request is invalid.",
                                  "ErrorDetails": [{"Context": "body", "Message": "is not valid JSON"}]}, 400)
        try:
            template = self._validate(body)
        except _Invalid as exc:
            return json_response({"Message": exc.message, "ErrorDetails": exc.details}, 400)
        record = self._render(body, template)
        with self._lock:
            self.sent.append(record)
            late = self._late.pop(0) if self._late else 0.0
        req.log["transaction_mail_id"] = record["TransactionMailId"]
        if late:
            time.sleep(late)
        return json_response(self._model(body, record))

    # ---- validation and rendering ------------------------------------------------------------
    def _validate(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise _Invalid([{"Context": "body", "Message": "must be a JSON object"}])
        details: list[dict[str, str]] = []
        folded = {k.lower(): k for k in SEND_FIELDS}
        for key, value in body.items():
            if key not in SEND_FIELDS:
                hint = f"; the field is spelt {folded[key.lower()]!r}" if key.lower() in folded else ""
                details.append({"Context": key, "Message": f"is not a known field{hint}"})
                continue
            types = SEND_FIELDS[key]
            if value is None:
                continue
            if isinstance(value, bool) and bool not in types or not isinstance(value, types):
                details.append({"Context": key, "Message": f"must be a {types[0].__name__}"})
        for key in ("RecipientEmail", "FromEmail", "TemplateId"):
            if body.get(key) in (None, ""):
                details.append({"Context": key, "Message": "is required"})
        for key in EMAIL_FIELDS:
            value = body.get(key)
            if isinstance(value, str) and value and not EMAIL_RE.match(value):
                details.append({"Context": key, "Message": f"'{value}' is not a valid email address"})
        for key in ("HtmlContentTagModels", "TextContentTagModels"):
            for i, item in enumerate(body.get(key) or [] if isinstance(body.get(key), list) else []):
                if not isinstance(item, dict) or set(item) - {"Name", "Value"} or \
                        not isinstance(item.get("Name"), str) or not item.get("Name") or \
                        not isinstance(item.get("Value", ""), (str, type(None))):
                    details.append({"Context": f"{key}[{i}]", "Message": "must be {Name: string, Value: string}"})
        headers = body.get("Headers")
        if isinstance(headers, dict):
            for name, value in headers.items():
                if not _HEADER_NAME.match(name) or not isinstance(value, str) or "\r" in value or "\n" in value:
                    details.append({"Context": f"Headers[{name}]", "Message": "is not a valid header"})
                elif name.lower() in RESERVED_HEADERS or name.lower() in {h.lower() for h in self.reject_headers}:
                    details.append({"Context": f"Headers[{name}]", "Message": f"Header '{name}' is not allowed"})
        for i, att in enumerate(body.get("Attachments") or [] if isinstance(body.get("Attachments"), list) else []):
            ok = isinstance(att, dict) and not set(att) - {"FileData", "FileNameWithExtension", "MimeType"} \
                and isinstance(att.get("FileNameWithExtension"), str) and isinstance(att.get("FileData"), str)
            if ok:
                try:
                    base64.b64decode(att["FileData"], validate=True)
                except ValueError:
                    ok = False
            if not ok:
                details.append({"Context": f"Attachments[{i}]",
                                "Message": "must be {FileData: base64, FileNameWithExtension, MimeType}"})
        if isinstance(body.get("ScheduledSendDate"), str) and body["ScheduledSendDate"]:
            try:
                datetime.fromisoformat(body["ScheduledSendDate"].replace("Z", "+00:00"))
            except ValueError:
                details.append({"Context": "ScheduledSendDate", "Message": "is not an ISO 8601 date"})
        if details:
            raise _Invalid(details)
        with self._lock:
            template = copy.deepcopy(self.templates.get(body["TemplateId"]))
            domains = dict(self.sending_domains)
        if template is None:
            raise _Invalid([{"Context": "TemplateId", "Message": f"Mail template {body['TemplateId']} does not exist"}])
        domain = body["FromEmail"].rpartition("@")[2].lower()
        if domains and not domains.get(domain):
            raise _Invalid([{"Context": "FromEmail",
                             "Message": f"The domain '{domain}' is not a verified sending domain"}])
        return template

    def _render(self, body: dict[str, Any], template: dict[str, Any]) -> dict[str, Any]:
        html, text = template["_html"], template["_text"]
        for item in body.get("HtmlContentTagModels") or []:
            html = html.replace(item["Name"], item.get("Value") or "")
        for item in body.get("TextContentTagModels") or []:
            text = text.replace(item["Name"], item.get("Value") or "")
        return {
            "TransactionMailId": next(self._tx), "TemplateId": body["TemplateId"], "TemplateName": template["Name"],
            "RecipientEmail": body["RecipientEmail"], "RecipientName": body.get("RecipientName"),
            "FromEmail": body["FromEmail"], "FromName": body.get("FromName"), "ReplyTo": body.get("ReplyTo"),
            "Subject": body.get("Subject") or template["Name"], "ExternalId": body.get("ExternalId"),
            "Headers": dict(body.get("Headers") or {}), "Html": html, "Text": text, "Body": copy.deepcopy(body),
            "CreationDate": _now_iso(),
        }

    @staticmethod
    def _model(body: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
        return {
            "TransactionMailId": record["TransactionMailId"], "RecipientName": body.get("RecipientName"),
            "RecipientEmail": body["RecipientEmail"], "SenderName": body.get("SenderName"),
            "SenderEmail": body.get("SenderEmail"), "FromName": body.get("FromName"), "FromEmail": body["FromEmail"],
            "ReplyTo": body.get("ReplyTo"), "Subject": record["Subject"],
            "TrackOpenings": bool(body.get("TrackOpenings")), "TrackLinkClicks": bool(body.get("TrackLinkClicks")),
            "LinkBaseUrl": body.get("LinkBaseUrl"), "ExternalId": body.get("ExternalId"),
            "ExcludeTotalOptouts": bool(body.get("ExcludeTotaloptouts")),
            "ExcludePublicationOptouts": bool(body.get("ExcludePublicationOptouts")),
            "ExcludePreviousBounce": bool(body.get("ExcludePreviousBounce")), "IsInternalMail": False,
            "CreationDate": record["CreationDate"],
            "IncludeEmailDataInWebhookPayload": bool(body.get("IncludeEmailDataInWebhookPayload")),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.sim.traml", description="TRAML (Lime Marketing) simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("TRAML_SIM_PORT", "0")))
    parser.add_argument("--account", default=os.environ.get("TRAML_SIM_ACCOUNT", DEMO_ACCOUNT))
    parser.add_argument("--api-key", default=os.environ.get("TRAML_SIM_API_KEY", DEMO_API_KEY))
    parser.add_argument("--template", action="append", default=[],
                        help="add a template by name (repeatable); default: one 'Helpdesk autoreply'")
    parser.add_argument("--tls", action="store_true", help="also answer HTTPS (test CA) on the same port")
    parser.add_argument("--latency-ms", type=float, default=0)
    args = parser.parse_args(argv)
    sim = TramlSim(args.host, args.port, account=args.account, api_key=args.api_key, tls=args.tls,
                   latency_ms=args.latency_ms)
    templates = {}
    for name in args.template or ["Helpdesk autoreply"]:
        templates[name] = sim.add_template(
            name, html="<p>Hello $$sendername$$,</p><p>We received your mail and opened ticket "
                       "<b>$$helpdesknumber$$</b>: $$title$$.</p><p>$$mailbox$$</p>",
            text="Hello $$sendername$$,\n\nWe opened ticket $$helpdesknumber$$: $$title$$.\n\n$$mailbox$$\n")
    sim.start()
    print(json.dumps({**sim.info(), "templates": templates}), flush=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
