"""TRAML (Lime Marketing transactional mail) over its REST API, with httpx (async).

Base URL `https://app.bwz.se/bedrock/<account>/api`, header `apikey` (facts §3.1).  A template is
found by its name with `GET mailtemplate/name/{name}` (the endpoint Lime Inbox itself uses; the
public facts did not show it, see facts §3.2); its id is cached for `template_ttl` seconds. Only
when that answers 404 is the whole list read (`GET mailtemplate`): a name that differs only in
case still matches one template, and the error names the templates there are.  `POST transactionmail/sendtemplate`
takes the documented fields only, with TRAML's casing (`ExcludeTotaloptouts` has a lower-case o);
merge codes go on the wire as `HtmlContentTagModels` / `TextContentTagModels` lists of
`{Name, Value}` (HTML-escaped in the HTML list: a customer's subject must not inject markup).

Errors (implementing shared/services/autoreply.py's `TransactionalMail` port):
* 4xx -> `MailRejected` carrying TRAML's `Message` and `ErrorDetails` (the mail was not queued).
* 429 and 5xx, and failures to connect -> retried here with backoff while the wait is short
  (Retry-After honoured up to `max_wait`), then `TransientError` with the Retry-After.
  TRAML answered, so it did not queue the mail.
* No answer to a send (read/write timeout, connection dropped mid-request) and 504 Gateway
  Timeout -> `DeliveryUnknown`: TRAML may have queued it, and a send is never repeated blindly.

The API key is sent only as the `apikey` header and never appears in logs, errors or reprs.
`OUTBOUND_CA_BUNDLE` (Settings.ca_bundle) is honoured for TLS verification.
"""
from __future__ import annotations

import asyncio
import html
import logging
import random
import time
from typing import Any, Awaitable, Callable
from urllib.parse import quote, urlsplit

import httpx

from . import tls
from .errors import NEEDS_A_SETTING, unreachable
from .http_util import parse_retry_after
from .. import telemetry
from ..config import Settings
from ..domain.errors import PermanentError, TransientError, Unavailable
from ..services.autoreply import DeliveryUnknown, MailRejected, TemplateMail, TemplateNotFound, redact

log = logging.getLogger("inbox.traml")

USER_AGENT = "inbox-functions/1 (+traml)"
TRAML_CONNECTIONS = 8  # kept alive; see LIME_CONNECTIONS in crm_lime/transport.py
# 504: the gateway in front of TRAML gave up waiting; the backend may still have queued the mail.
AMBIGUOUS_STATUSES = (504,)


_retry_after = parse_retry_after


def _error_parts(response: httpx.Response) -> tuple[str, list[dict[str, str]]]:
    """TRAML's {"Message": ..., "ErrorDetails": [{"Context", "Message"}]} (or the text of a proxy page)."""
    try:
        doc = response.json()
    except ValueError:
        text = " ".join(response.text.split())[:300]
        return text or response.reason_phrase, []
    if not isinstance(doc, dict):
        return str(doc)[:300], []
    message = str(doc.get("Message") or doc.get("message") or response.reason_phrase)[:1000]
    details = []
    for item in doc.get("ErrorDetails") or []:
        if isinstance(item, dict):
            details.append({"Context": str(item.get("Context", ""))[:200],
                            "Message": str(item.get("Message", ""))[:500]})
    return message, details[:20]


def wire_body(mail: TemplateMail) -> dict[str, Any]:
    """The `transactionmail/sendtemplate` body, documented fields only, TRAML's casing."""
    body: dict[str, Any] = {
        "TemplateId": int(mail.template_id),
        "RecipientEmail": mail.recipient_email,
        "FromEmail": mail.from_email,
        "Subject": mail.subject,
        "ExcludeTotaloptouts": bool(mail.exclude_totaloptouts),
        "ExcludePreviousBounce": bool(mail.exclude_previous_bounce),
        "TrackOpenings": False,
        "TrackLinkClicks": False,
    }
    if mail.recipient_name:
        body["RecipientName"] = mail.recipient_name
    if mail.from_name:
        body["FromName"] = mail.from_name
    if mail.external_id:
        body["ExternalId"] = mail.external_id
    if mail.merge_codes:
        body["HtmlContentTagModels"] = [{"Name": k, "Value": html.escape(v, quote=True)} for k, v in mail.merge_codes]
        body["TextContentTagModels"] = [{"Name": k, "Value": v} for k, v in mail.merge_codes]
    if mail.headers:
        body["Headers"] = {k: v for k, v in mail.headers}
    return body


class TramlClient:
    def __init__(self, base_url: str, api_key: str, *, ca_bundle: str = "", timeout: float = 20.0,
                 attempts: int = 3, max_wait: float = 5.0, backoff: float = 0.5, template_ttl: float = 600.0,
                 sleep: Callable[[float], Awaitable[None]] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._base = base_url.rstrip("/")
        self.__key = api_key
        self._ca_bundle = ca_bundle
        self._verify: Any = tls.verify_for(ca_bundle)
        self._timeout = timeout
        self._attempts = max(1, attempts)
        self._max_wait = max_wait
        self._backoff = backoff
        self._ttl = template_ttl
        self._sleep = sleep or asyncio.sleep
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._templates: dict[str, tuple[int, float]] = {}  # name -> (id, when it was looked up)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> "TramlClient":
        return cls(settings.traml_base_url, settings.traml_api_key, ca_bundle=settings.ca_bundle, **kwargs)

    def __repr__(self) -> str:  # never the key
        return f"TramlClient(base_url={self._base!r})"

    # plumbing ---------------------------------------------------------------------------------
    def _http(self) -> httpx.AsyncClient:
        if not self._base:
            raise PermanentError("TRAML_BASE_URL is not set: autoreplies cannot be sent")
        if not self.__key:
            raise PermanentError("TRAML_API_KEY is not set: autoreplies cannot be sent")
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self._base + "/", verify=self._verify, transport=self._transport,
                timeout=httpx.Timeout(self._timeout, connect=min(self._timeout, 10.0)), follow_redirects=False,
                headers={"apikey": self.__key, "Accept": "application/json", "User-Agent": USER_AGENT},
                limits=httpx.Limits(max_connections=TRAML_CONNECTIONS, max_keepalive_connections=TRAML_CONNECTIONS))
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _request(self, method: str, path: str, *, json: Any = None, once: bool = False,
                       allow_404: bool = False) -> Any:
        """One call with the retry policy. `once` (a send): a request that may have reached TRAML
        without an answer is DeliveryUnknown, never retried. `allow_404`: None for a 404."""
        client = self._http()
        what = f"TRAML {method} {path}"
        for attempt in range(1, self._attempts + 1):
            try:
                request = telemetry.timed(client.request, "traml", telemetry.operation_name(method, path))
                response = await request(method, path, json=json)
            except (httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:
                raise PermanentError(f"{what}: cannot be sent ({type(exc).__name__}); check TRAML_BASE_URL") from None
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError) as exc:
                error: TransientError = unreachable("traml", self._base, exc, self._ca_bundle, what)
                if error.reason in NEEDS_A_SETTING:
                    raise error from None  # never reached TRAML; retrying cannot help until a setting is fixed
                # Never reached TRAML: safe to retry even a send.
            except httpx.TransportError as exc:  # read/write timeouts, dropped connections
                if once:
                    raise DeliveryUnknown(f"{what}: no answer ({type(exc).__name__})") from None
                error = TransientError(f"{what}: no answer ({type(exc).__name__})")
            else:
                status = response.status_code
                if 200 <= status < 300:
                    try:
                        return response.json() if response.content else None
                    except ValueError:
                        if once:
                            return {}  # queued; the body is not ours to understand
                        raise TransientError(f"{what}: answer is not JSON") from None
                if status == 404 and allow_404:
                    return None
                if status in AMBIGUOUS_STATUSES and once:
                    raise DeliveryUnknown(f"{what}: {status} from the gateway; the mail may be queued")
                message, details = _error_parts(response)
                if status == 429 or status >= 500:
                    error = Unavailable(f"{what}: {status} {message[:200]}", "traml_unavailable", service="TRAML",
                                        host=urlsplit(self._base).hostname or "", detail={"status": status},
                                        retry_after=_retry_after(response.headers.get("Retry-After")))
                elif status in (401, 403):
                    raise MailRejected(status, f"TRAML refused the API key or its rights: {message}", details)
                else:
                    raise MailRejected(status, message, details)
            wait = error.retry_after if error.retry_after is not None else \
                self._backoff * (2 ** (attempt - 1)) * (0.5 + random.random())
            if attempt >= self._attempts or wait > self._max_wait:
                raise error
            log.info("traml.retry method=%s path=%s attempt=%s wait=%.2fs error=%s", method, path, attempt, wait,
                     redact(error))
            await self._sleep(wait)
        raise AssertionError("unreachable")

    # port -------------------------------------------------------------------------------------
    async def ping(self) -> str:
        doc = await self._request("GET", "ping/version")
        return str((doc or {}).get("Version", "")) if isinstance(doc, dict) else str(doc)

    async def list_templates(self) -> list[dict[str, Any]]:
        doc = await self._request("GET", "mailtemplate")
        if not isinstance(doc, list):
            raise PermanentError("TRAML GET mailtemplate did not answer a list")
        return [t for t in doc if isinstance(t, dict)]

    async def template_id(self, name: str, *, fresh: bool = False) -> int:
        """The id of the template named `name`: cached, else `GET mailtemplate/name/{name}` (one
        small request), else the list (a miss: case-insensitive match, or TemplateNotFound naming
        the templates there are). `fresh` asks TRAML even when the id is cached: an admin saving a
        mailbox or reading the status must hear about a template deleted since it was cached."""
        wanted = name.strip()
        if not wanted:
            raise TemplateNotFound("no TRAML template name is configured for the mailbox")
        hit = self._templates.get(wanted)
        if hit is not None and not fresh and time.monotonic() - hit[1] < self._ttl:
            return hit[0]
        found = await self._request("GET", f"mailtemplate/name/{quote(wanted, safe='')}", allow_404=True)
        if isinstance(found, dict) and str(found.get("Id", "")).lstrip("-").isdigit() \
                and str(found.get("Name", "")).strip() == wanted:
            self._templates[wanted] = (int(found["Id"]), time.monotonic())
            return int(found["Id"])
        templates = {str(t.get("Name", "")).strip(): int(t["Id"]) for t in await self.list_templates()
                     if str(t.get("Id", "")).lstrip("-").isdigit()}
        if wanted in templates:
            self._templates[wanted] = (templates[wanted], time.monotonic())
            return templates[wanted]
        folded = [tid for n, tid in templates.items() if n.casefold() == wanted.casefold()]
        if len(folded) == 1:
            self._templates[wanted] = (folded[0], time.monotonic())
            return folded[0]
        known = sorted(templates)
        shown = ", ".join(repr(n) for n in known[:15]) + (", ..." if len(known) > 15 else "")
        raise TemplateNotFound(f"TRAML has no mail template named {wanted!r} "
                               f"(templates: {shown or 'none'})")

    def forget_template(self, name: str) -> None:
        self._templates.pop(name.strip(), None)

    async def send_template(self, mail: TemplateMail) -> dict[str, Any]:
        doc = await self._request("POST", "transactionmail/sendtemplate", json=wire_body(mail), once=True)
        return doc if isinstance(doc, dict) else {}
