"""Microsoft Graph through msgraph-sdk and azure-identity: mail and subscription operations.

msgraph-sdk is imported lazily (it takes ~1 s and ~550 modules), so importing function_app never
pays for it; the webhook does not need Graph at all.

Choices worth knowing:
- Every request carries `Prefer: IdType="ImmutableId"`: ids survive moves.
- Reads go through the SDK's request builders and middleware (auth, headers, telemetry) but come
  back as raw JSON bytes (`send_primitive_async(..., "bytes")`), parsed into our own mail model:
  the SDK's model parsing costs ~4x the CPU and we need a dict anyway.
- Kiota's RetryHandler is switched off: it would sleep up to 180 s inside an invocation.  Instead
  `_call` retries a short Retry-After (<= SHORT_RETRY_AFTER s) itself, and raises TransientError
  with the wait for a long one, so the processor re-enqueues the job with that delay.
- Transient: 5xx, 408, 423, 425 and 429, and no answer at all. Permanent (GraphRefused, and
  GraphAccessDenied for 401/403): the answers that retrying cannot change, other 4xx and 501, 505,
  506, 508, 510, 511; they are shown as what they are, never as "unavailable, try again".
- One asyncio.Semaphore per (client, mailbox) caps concurrent requests at
  GRAPH_MAILBOX_CONCURRENCY (Graph allows 4 per app and mailbox across all instances); a 429
  pauses the whole mailbox for its Retry-After, not just the request that got it, and then paces
  it (graph_pacing.py): its requests leave one by one at Graph's sustained rate instead of all at
  once when the pause ends.
"""
from __future__ import annotations

import asyncio
import io
import json
import logging
import random
import re
import time
from datetime import datetime, timezone
from http import HTTPStatus
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar
from urllib.parse import urlparse

from . import tls
from .errors import NEEDS_A_SETTING, unreachable
from .graph_pacing import MailboxPacer
from .. import telemetry
from ..config import GraphClientConfig, Settings
from ..domain.errors import ContentTooLarge, MailNotFound, PermanentError, TransientError, Unavailable
from ..domain.mail import ATTACHMENT_SELECT, MESSAGE_SELECT, MESSAGE_SIZE_EXPAND, InboundMail, parse_graph_time
from ..domain.model import STORE_ORIGINAL_EML, InboxItem, Mailbox, SubscriptionInfo

log = logging.getLogger("inbox.graph")
T = TypeVar("T")

IMMUTABLE_ID = 'IdType="ImmutableId"'
_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
SHORT_RETRY_AFTER = 5.0
MAX_SHORT_RETRIES = 3


class CredentialError(TransientError):
    """The Graph client could not get a token (bad or expired secret, unknown app...)."""

    code: str = ""  # Entra's AADSTS number, when known


class GraphAccessDenied(PermanentError):
    """Graph answered 403: a missing permission or an application access policy."""


class GraphRefused(PermanentError):
    """Graph answered with a status that retrying cannot change (501 Not Implemented, 400...)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
        self.detail = {"service": "Microsoft Graph", "status": status}  # the manage API's error detail


# 4xx that say "not now" rather than "never": retried like 5xx.
TRANSIENT_4XX = (408, 423, 425, 429)
# 5xx that say "never", whatever the wait: the server does not do this at all (RFC 9110 15.6).
PERMANENT_5XX = (501, 505, 506, 508, 510, 511)


def is_transient_status(status: int) -> bool:
    return status in TRANSIENT_4XX or (status >= 500 and status not in PERMANENT_5XX)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "unknown status"


class AttachmentTooLarge(ContentTooLarge):
    """An attachment's (or a whole mail's) content turned out larger than the limit its metadata
    promised to respect."""


def _retry_after(headers: Any) -> float | None:
    if not headers:
        return None
    for key, value in dict(headers).items():
        if key.lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except (TypeError, ValueError):
                return None
    return None


class GraphClients:
    """Builds one credential and one GraphServiceClient per configured Graph client, lazily."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._clients: dict[str, Any] = {}
        self._credentials: dict[str, Any] = {}

    @property
    def base_url(self) -> str:
        return self._settings.graph_base_url

    def config(self, name: str) -> GraphClientConfig:
        try:
            return self._settings.graph_clients[name]
        except KeyError:
            raise PermanentError(f"Graph client {name!r} is not configured in GRAPH_CLIENTS") from None

    def credential(self, name: str) -> Any:
        if name not in self._credentials:
            self._credentials[name] = self.build_credential(name)
        return self._credentials[name]

    def graph_scope(self) -> str:
        base = urlparse(self._settings.graph_base_url)
        if base.hostname in ("127.0.0.1", "localhost"):
            return "https://graph.microsoft.com/.default"
        return f"{base.scheme}://{base.netloc}/.default"

    def build_credential(self, name: str) -> Any:
        """A new credential with its own token cache (validation wants a real token request)."""
        cfg = self.config(name)
        s = self._settings
        kwargs: dict[str, Any] = {"authority": s.graph_authority_host}
        if not s.authority_is_microsoft:
            # MSAL would otherwise ask Microsoft's login host for instance metadata.
            kwargs["disable_instance_discovery"] = True
        if s.ca_bundle:
            # azure-identity trusts only the file it is given: the default store plus the bundle
            kwargs["connection_verify"] = tls.combined_bundle(s.ca_bundle)
        from azure.identity import aio as identity
        if cfg.credential == "secret":
            secret = s.secret(cfg.secret_setting)
            if not secret:
                raise PermanentError(f"Graph client {name!r} uses a client secret but {cfg.secret_setting} is not set")
            cred = identity.ClientSecretCredential(cfg.tenant_id, cfg.client_id, secret, **kwargs)
        elif cfg.credential == "certificate":
            pem = s.secret(cfg.certificate_setting)
            if not pem:
                raise PermanentError(f"Graph client {name!r} uses a certificate but {cfg.certificate_setting} "
                                     "is not set")
            data = Path(pem).read_bytes() if not pem.lstrip().startswith("-----") else pem.encode()
            cred = identity.CertificateCredential(cfg.tenant_id, cfg.client_id, certificate_data=data, **kwargs)
        elif cfg.credential == "managed_identity":
            # The Function App's managed identity is a federated credential on the app registration:
            # its token for api://AzureADTokenExchange is the client assertion. No secret anywhere.
            from azure.identity import ManagedIdentityCredential
            mi = ManagedIdentityCredential(client_id=cfg.managed_identity_client_id or None)

            def assertion() -> str:
                return mi.get_token("api://AzureADTokenExchange/.default").token
            cred = identity.ClientAssertionCredential(cfg.tenant_id, cfg.client_id, assertion, **kwargs)
        else:  # federated_file: a workload-identity token file (Kubernetes, tests)
            path = Path(cfg.federated_token_file)

            def assertion() -> str:
                try:
                    return path.read_text().strip()
                except OSError as exc:
                    raise PermanentError(f"federated token file for {name!r} unreadable: {exc.strerror}") from None
            cred = identity.ClientAssertionCredential(cfg.tenant_id, cfg.client_id, assertion, **kwargs)
        return cred

    def client(self, name: str) -> Any:
        if name in self._clients:
            return self._clients[name]
        from kiota_authentication_azure.azure_identity_authentication_provider import (
            AzureIdentityAuthenticationProvider,
        )
        from kiota_http.middleware.options import RetryHandlerOption
        from msgraph import GraphRequestAdapter, GraphServiceClient
        from msgraph_core import GraphClientFactory

        base = urlparse(self._settings.graph_base_url)
        scope = f"{base.scheme}://{base.netloc}/.default"
        if base.hostname in ("127.0.0.1", "localhost"):
            scope = "https://graph.microsoft.com/.default"
        # allowed_hosts must name the Graph host actually used, or kiota silently sends no token.
        auth = AzureIdentityAuthenticationProvider(self.credential(name), scopes=[scope],
                                                   allowed_hosts=[base.hostname or ""])
        own_client = None
        if self._settings.ca_bundle:  # kiota's default client, trusting OUTBOUND_CA_BUNDLE too
            import httpx
            own_client = httpx.AsyncClient(timeout=httpx.Timeout(100, connect=30), http2=True,
                                           verify=tls.ssl_context(self._settings.ca_bundle))
        http = GraphClientFactory.create_with_default_middleware(
            client=own_client,
            options={RetryHandlerOption.get_key(): RetryHandlerOption(delay=0, max_retries=0, should_retry=False)})
        adapter = GraphRequestAdapter(auth, client=http)
        adapter.base_url = self._settings.graph_base_url
        client = GraphServiceClient(request_adapter=adapter)
        self._clients[name] = client
        return client

    def unreachable(self, service: str, exc: BaseException, what: str = "") -> Unavailable:
        """The named failure to reach Entra ('entra': GRAPH_AUTHORITY_HOST) or Graph ('graph')."""
        s = self._settings
        url = s.graph_authority_host if service == "entra" else s.graph_base_url
        return unreachable(service, url, exc, s.ca_bundle, what)

    async def close(self) -> None:
        for cred in self._credentials.values():
            try:
                await cred.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        self._clients.clear()
        self._credentials.clear()


class GraphAdapter:
    """Implements MailGateway and SubscriptionGateway (shared/ports.py)."""

    def __init__(self, clients: GraphClients, concurrency: int = 4, custom_select: tuple[str, ...] = (),
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._clients = clients
        self._concurrency = concurrency
        self._custom_select = custom_select
        self._sleep = sleep
        self._limits: dict[tuple[str, str], asyncio.Semaphore] = {}
        self._paused_until: dict[tuple[str, str], float] = {}
        self._pacer = MailboxPacer()
        self._inbox_ids: dict[tuple[str, str], str] = {}
        self._inbox_flights: dict[tuple[str, str], asyncio.Task] = {}  # reads of the Inbox id under way
        self._tenant_ids: dict[str, str] = {}
        self.stats = {"requests": 0, "throttled": 0, "retries": 0}

    # plumbing --------------------------------------------------------------------------------
    def _cfg(self, query: Any = None, headers: dict[str, str] | None = None) -> Any:
        from kiota_abstractions.base_request_configuration import RequestConfiguration
        cfg = RequestConfiguration(query_parameters=query)
        cfg.headers.add("Prefer", IMMUTABLE_ID)
        for k, v in (headers or {}).items():
            cfg.headers.add(k, v)
        return cfg

    async def _call(self, client: str, mailbox: str, op: Callable[[], Awaitable[T]], what: str) -> T:
        """Run one Graph request under the mailbox's limiter, retrying short waits, mapping errors."""
        from kiota_abstractions.api_error import APIError
        import httpx
        from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

        key = (client, mailbox.lower())
        op = telemetry.timed(op, "graph", what)
        sem = self._limits.setdefault(key, asyncio.Semaphore(self._concurrency))
        attempt = 0
        while True:
            await self._wait_turn(key, what)
            wait: float | None = None
            async with sem:
                self.stats["requests"] += 1
                try:
                    return await op()
                except APIError as exc:
                    status = exc.response_status_code or 0
                    message = (exc.primary_message or "")[:300]
                    if status == 404:
                        raise MailNotFound(f"Graph 404 during {what}") from None
                    if is_transient_status(status):
                        wait = _retry_after(exc.response_headers)
                        if status == 429:
                            self.stats["throttled"] += 1
                            self._paused_until[key] = time.monotonic() + (wait or 1.0)
                            self._pacer.throttled(key, wait or 1.0)
                        transient = Unavailable(f"Graph {status} during {what}", "graph_unavailable",
                                                service="Microsoft Graph", retry_after=wait,
                                                host=urlparse(self._clients.base_url).hostname or "",
                                                detail={"status": status})
                    elif status in (401, 403):
                        raise GraphAccessDenied(f"Graph {status} during {what}: {message}") from None
                    else:  # 501 Not Implemented, 400 Bad Request...: the same answer however often asked
                        raise GraphRefused(f"Graph {status} ({_phrase(status)}) during {what}: {message}; "
                                           "retrying cannot change this answer", status) from None
                except ClientAuthenticationError as exc:
                    if "AADSTS" not in str(exc.message or exc) and _network_failure(exc):
                        raise self._clients.unreachable("entra", exc, what) from None
                    raise _credential_error(client, exc) from None
                except (httpx.TimeoutException, httpx.TransportError) as exc:
                    failure = self._clients.unreachable("graph", exc, what)
                    if failure.reason in NEEDS_A_SETTING:
                        raise failure from None  # retrying cannot help until a setting is fixed
                    transient = failure
                except ServiceRequestError as exc:  # the token request could not be sent: not retried here
                    raise self._clients.unreachable("entra", exc, what) from None
            # out of the semaphore while waiting
            attempt += 1
            delay = wait if wait is not None else min(4.0, 0.25 * 2 ** attempt) * (0.5 + random.random())
            if attempt > MAX_SHORT_RETRIES or delay > SHORT_RETRY_AFTER:
                raise transient
            self.stats["retries"] += 1
            await self._sleep(delay)

    async def _wait_turn(self, key: tuple[str, str], what: str) -> None:
        """Wait out the mailbox's 429 pause (a long one raises TransientError with its wait), then
        its pacing slot (graph_pacing.py: after a 429, requests leave one by one at Graph's rate)."""
        for _ in range(3):
            pause = self._paused_until.get(key, 0.0) - time.monotonic()
            if pause > 0:
                if pause > SHORT_RETRY_AFTER:
                    raise TransientError(f"Graph throttled mailbox during {what}", retry_after=pause)
                await self._sleep(pause)
            turn = self._pacer.reserve(key)
            if turn <= 0:
                return
            await self._sleep(turn)
            if self._paused_until.get(key, 0.0) <= time.monotonic():
                return  # else a 429 paused the mailbox while this request waited for its slot

    async def _get_json(self, client: str, mailbox: str, request_info: Any, what: str) -> dict[str, Any]:
        adapter = self._clients.client(client).request_adapter

        async def op() -> dict[str, Any]:
            raw = await adapter.send_primitive_async(request_info, "bytes", None)
            return json.loads(raw or b"{}")
        return await self._call(client, mailbox, op, what)

    def _user(self, mailbox: Mailbox) -> Any:
        return self._clients.client(mailbox.client).users.by_user_id(mailbox.graph_user)

    # MailGateway -----------------------------------------------------------------------------
    async def get_message(self, mailbox: Mailbox, message_id: str) -> InboundMail:
        from msgraph.generated.users.item.messages.item.message_item_request_builder import (
            MessageItemRequestBuilder,
        )
        select = list(MESSAGE_SELECT) + [s for s in self._custom_select if s not in MESSAGE_SELECT]
        expand = [f"attachments($select={','.join(ATTACHMENT_SELECT)})"]
        if mailbox.store_original == STORE_ORIGINAL_EML:
            expand.append(MESSAGE_SIZE_EXPAND)  # its size decides before `$value` whether it fits
        query = MessageItemRequestBuilder.MessageItemRequestBuilderGetQueryParameters(select=select, expand=expand)
        info = self._user(mailbox).messages.by_message_id(message_id).to_get_request_information(self._cfg(query))
        doc = await self._get_json(mailbox.client, mailbox.graph_user, info, "message get")
        return InboundMail.from_graph(mailbox.id, doc, self._custom_select)

    async def inbox_folder_id(self, mailbox: Mailbox) -> str:
        """The Inbox's folder id, read once per mailbox and worker: however many mails of the mailbox
        start at once (a backlog at start-up), one GET, which the others wait for (single flight).
        A failed read is not kept: the next caller asks again."""
        key = (mailbox.client, mailbox.id)
        known = self._inbox_ids.get(key)
        if known is not None:
            return known
        loop = asyncio.get_running_loop()
        flight = self._inbox_flights.get(key)
        if flight is None or flight.get_loop() is not loop:
            flight = loop.create_task(self._read_inbox_id(mailbox, key))
            self._inbox_flights[key] = flight
            flight.add_done_callback(lambda done: self._landed(key, done))
        # shield: a caller cancelled while it waits does not cancel the read the others wait for
        return await asyncio.shield(flight)

    def _landed(self, key: tuple[str, str], flight: asyncio.Task) -> None:
        if self._inbox_flights.get(key) is flight:
            del self._inbox_flights[key]
        if not flight.cancelled():
            flight.exception()  # retrieved here too: every waiter may have been cancelled

    async def _read_inbox_id(self, mailbox: Mailbox, key: tuple[str, str]) -> str:
        from msgraph.generated.users.item.mail_folders.item.mail_folder_item_request_builder import (
            MailFolderItemRequestBuilder,
        )
        query = MailFolderItemRequestBuilder.MailFolderItemRequestBuilderGetQueryParameters(select=["id"])
        info = self._user(mailbox).mail_folders.by_mail_folder_id("inbox").to_get_request_information(
            self._cfg(query))
        doc = await self._get_json(mailbox.client, mailbox.graph_user, info, "inbox folder get")
        self._inbox_ids[key] = str(doc.get("id", ""))
        return self._inbox_ids[key]

    async def get_attachment(self, mailbox: Mailbox, message_id: str, attachment_id: str) -> bytes:
        # msgraph-sdk 1.65 has no request builder for an attachment's $value: build the request
        # from the attachment item's, so auth, headers and middleware stay the SDK's.
        builder = self._user(mailbox).messages.by_message_id(message_id).attachments.by_attachment_id(attachment_id)
        info = builder.to_get_request_information(self._cfg())
        info.url = f"{info.url}/$value"
        info.headers.try_add("Accept", "application/octet-stream")
        adapter = self._clients.client(mailbox.client).request_adapter

        async def op() -> bytes:
            return await adapter.send_primitive_async(info, "bytes", None) or b""
        return await self._call(mailbox.client, mailbox.graph_user, op, "attachment get")

    async def list_attachments(self, mailbox: Mailbox, message_id: str) -> list[dict[str, Any]]:
        """Every attachment of the mail with its content (fileAttachment `contentBytes` and
        `contentId`; item attachments without content) in one call. Graph has no filter here
        (`$filter` on attachments is ignored), so the caller uses it only when the metadata says
        every attachment is small."""
        builder = self._user(mailbox).messages.by_message_id(message_id).attachments
        info = builder.to_get_request_information(self._cfg())
        out: list[dict[str, Any]] = []
        while True:
            doc = await self._get_json(mailbox.client, mailbox.graph_user, info, "attachment list")
            out.extend(doc.get("value") or ())
            next_link = doc.get("@odata.nextLink")
            if not next_link:
                return out
            info = builder.with_url(next_link).to_get_request_information(self._cfg())

    async def get_attachment_item(self, mailbox: Mailbox, message_id: str, attachment_id: str) -> dict[str, Any]:
        """One attachment as JSON: a fileAttachment's `contentBytes` (base64) and `contentId` (which
        `$select` cannot ask for in the metadata: it is not on the base attachment type)."""
        builder = self._user(mailbox).messages.by_message_id(message_id).attachments.by_attachment_id(attachment_id)
        info = builder.to_get_request_information(self._cfg())
        return await self._get_json(mailbox.client, mailbox.graph_user, info, "attachment get")

    async def stream_attachment(self, mailbox: Mailbox, message_id: str, attachment_id: str, sink: Any,
                                limit: int | None = None) -> int:
        """Stream an attachment's `$value` (a file's bytes, an attached message's MIME) into the
        binary file `sink`, chunk by chunk, never holding it in memory; returns the bytes written.
        Raises AttachmentTooLarge past `limit` (the metadata's size is only Graph's estimate)."""
        builder = self._user(mailbox).messages.by_message_id(message_id).attachments.by_attachment_id(attachment_id)
        return await self._stream_value(mailbox, builder, sink, limit, "attachment stream")

    async def stream_message(self, mailbox: Mailbox, message_id: str, sink: Any, limit: int | None = None) -> int:
        """Stream the mail's MIME (`GET /users/{id}/messages/{id}/$value`: every header, the body and
        every attachment, as Exchange renders it) into `sink`, as stream_attachment does; raises
        AttachmentTooLarge as soon as it passes `limit`, without reading the rest."""
        builder = self._user(mailbox).messages.by_message_id(message_id)
        return await self._stream_value(mailbox, builder, sink, limit, "message mime")

    async def _stream_value(self, mailbox: Mailbox, builder: Any, sink: Any, limit: int | None, what: str,
                            cut: bool = False) -> int:
        """The one streaming path for `$value`: the item builder's request (auth, headers and
        middleware stay the SDK's; msgraph-sdk 1.65 has no builder for `$value`) sent with
        `stream=True`, written to `sink` chunk by chunk. A retry starts `sink` over. Past `limit` it
        raises AttachmentTooLarge, or with `cut` keeps the first `limit` bytes, stops reading and
        returns more than `limit`."""
        from kiota_abstractions.api_error import APIError
        adapter = self._clients.client(mailbox.client).request_adapter
        noun = "the mail's MIME" if what == "message mime" else "attachment content"

        async def op() -> int:
            info = builder.to_get_request_information(self._cfg())
            adapter.set_base_url_for_request_information(info)
            info.url = f"{info.url}/$value"
            info.headers.try_add("Accept", "application/octet-stream")
            request = await adapter.convert_to_native_async(info)
            response = await adapter._http_client.send(request, stream=True)
            try:
                if response.status_code >= 400:
                    await response.aread()
                    raise APIError(message=response.text[:300], response_status_code=response.status_code,
                                   response_headers=dict(response.headers))
                sink.seek(0)
                sink.truncate()
                written = 0
                async for chunk in response.aiter_bytes():
                    written += len(chunk)
                    if limit is not None and written > limit:
                        if not cut:
                            raise AttachmentTooLarge(f"{noun} is over the {limit}-byte limit")
                        sink.write(chunk[: len(chunk) - (written - limit)])
                        return written
                    sink.write(chunk)
                return written
            finally:
                await response.aclose()
        return await self._call(mailbox.client, mailbox.graph_user, op, what)

    async def read_message_mime(self, mailbox: Mailbox, message_id: str, limit: int) -> tuple[bytes, bool]:
        """The first `limit` bytes of the mail's MIME (`$value`, which Graph answers for every message,
        a report's original included: learn.microsoft.com/graph/outlook-get-mime-message) and whether
        there was more: cut off there, the rest of a large mail is never downloaded. Read only for
        delivery reports, whose report and original's headers come first (shared/domain/reports.py)."""
        sink = io.BytesIO()
        builder = self._user(mailbox).messages.by_message_id(message_id)
        written = await self._stream_value(mailbox, builder, sink, limit, "report mime", cut=True)
        return sink.getvalue(), written > limit

    async def delete_message(self, mailbox: Mailbox, message_id: str) -> None:
        builder = self._user(mailbox).messages.by_message_id(message_id)

        async def op() -> None:
            await builder.delete(request_configuration=self._cfg())
        await self._call(mailbox.client, mailbox.graph_user, op, "message delete")

    async def move_message(self, mailbox: Mailbox, message_id: str, folder: str) -> None:
        from msgraph.generated.users.item.messages.item.move.move_post_request_body import MovePostRequestBody
        builder = self._user(mailbox).messages.by_message_id(message_id).move

        async def op() -> None:
            await builder.post(MovePostRequestBody(destination_id=folder), request_configuration=self._cfg())
        await self._call(mailbox.client, mailbox.graph_user, op, "message move")

    async def set_categories(self, mailbox: Mailbox, message_id: str, categories: list[str]) -> None:
        from msgraph.generated.models.message import Message
        builder = self._user(mailbox).messages.by_message_id(message_id)

        async def op() -> None:
            await builder.patch(Message(categories=categories), request_configuration=self._cfg())
        await self._call(mailbox.client, mailbox.graph_user, op, "message categorize")

    async def list_folder(self, mailbox: Mailbox, folder: str = "inbox", received_after: datetime | None = None,
                          received_before: datetime | None = None,
                          page_size: int = 100) -> AsyncIterator[InboxItem]:
        from msgraph.generated.users.item.mail_folders.item.messages.messages_request_builder import (
            MessagesRequestBuilder,
        )
        filters = []
        if received_after:
            filters.append(f"receivedDateTime ge {_iso(received_after)}")
        if received_before:
            filters.append(f"receivedDateTime lt {_iso(received_before)}")
        query = MessagesRequestBuilder.MessagesRequestBuilderGetQueryParameters(
            select=["id", "receivedDateTime", "from", "subject", "categories"], top=page_size,
            orderby=["receivedDateTime asc"], filter=" and ".join(filters) or None)
        builder = self._user(mailbox).mail_folders.by_mail_folder_id(folder).messages
        info = builder.to_get_request_information(self._cfg(query))
        while True:
            doc = await self._get_json(mailbox.client, mailbox.graph_user, info, "folder list")
            for m in doc.get("value") or ():
                sender = ((m.get("from") or {}).get("emailAddress") or {}).get("address", "")
                yield InboxItem(message_id=m["id"], received_at=parse_graph_time(m.get("receivedDateTime")),
                                sender=sender, subject=m.get("subject") or "",
                                categories=tuple(m.get("categories") or ()))
            next_link = doc.get("@odata.nextLink")
            if not next_link:
                return
            info = builder.with_url(next_link).to_get_request_information(self._cfg())

    # SubscriptionGateway ---------------------------------------------------------------------
    @staticmethod
    def _sub_info(sub: Any) -> SubscriptionInfo:
        exp = sub.expiration_date_time or datetime.now(timezone.utc)
        return SubscriptionInfo(id=sub.id or "", resource=sub.resource or "", expiration=exp,
                                client_state=sub.client_state or "", notification_url=sub.notification_url or "")

    async def create(self, client: str, resource: str, notification_url: str, lifecycle_url: str,
                     client_state: str, expiration: datetime) -> SubscriptionInfo:
        from msgraph.generated.models.subscription import Subscription
        body = Subscription(change_type="created", notification_url=notification_url,
                            lifecycle_notification_url=lifecycle_url or None, resource=resource,
                            expiration_date_time=expiration, client_state=client_state,
                            latest_supported_tls_version="v1_2")
        subs = self._clients.client(client).subscriptions

        async def op() -> Any:
            return await subs.post(body, request_configuration=self._cfg())
        return self._sub_info(await self._call(client, "_subscriptions", op, "subscription create"))

    async def renew(self, client: str, subscription_id: str, expiration: datetime) -> SubscriptionInfo:
        from msgraph.generated.models.subscription import Subscription
        builder = self._clients.client(client).subscriptions.by_subscription_id(subscription_id)

        async def op() -> Any:
            return await builder.patch(Subscription(expiration_date_time=expiration),
                                       request_configuration=self._cfg())
        return self._sub_info(await self._call(client, "_subscriptions", op, "subscription renew"))

    async def delete(self, client: str, subscription_id: str) -> None:
        builder = self._clients.client(client).subscriptions.by_subscription_id(subscription_id)

        async def op() -> None:
            await builder.delete(request_configuration=self._cfg())
        try:
            await self._call(client, "_subscriptions", op, "subscription delete")
        except MailNotFound:
            pass  # already gone

    async def get(self, client: str, subscription_id: str) -> SubscriptionInfo | None:
        builder = self._clients.client(client).subscriptions.by_subscription_id(subscription_id)

        async def op() -> Any:
            return await builder.get(request_configuration=self._cfg())
        try:
            return self._sub_info(await self._call(client, "_subscriptions", op, "subscription get"))
        except MailNotFound:
            return None

    async def list(self, client: str) -> list[SubscriptionInfo]:
        subs = self._clients.client(client).subscriptions
        out: list[SubscriptionInfo] = []
        builder: Any = subs
        for _ in range(1000):  # follow @odata.nextLink; a bound against a link that never ends
            async def op(b: Any = builder) -> Any:
                return await b.get(request_configuration=self._cfg())
            page = await self._call(client, "_subscriptions", op, "subscription list")
            if not page:
                break
            out.extend(self._sub_info(s) for s in (page.value or []))
            if not page.odata_next_link:
                break
            builder = subs.with_url(page.odata_next_link)
        return out

    async def reauthorize(self, client: str, subscription_id: str) -> None:
        """Answer a reauthorizationRequired lifecycle event (404 raises MailNotFound)."""
        builder = self._clients.client(client).subscriptions.by_subscription_id(subscription_id).reauthorize

        async def op() -> None:
            await builder.post(request_configuration=self._cfg())
        await self._call(client, "_subscriptions", op, "subscription reauthorize")

    # tenants ---------------------------------------------------------------------------------------
    async def tenant_id(self, client: str) -> str:
        """The client's tenant as its GUID. A tenant configured by a verified domain (contoso.onmicrosoft.com,
        which Entra accepts for tokens) is resolved once per worker from the `tid` of a token: Graph's
        notifications carry the GUID, so clientStates are signed and verified with it."""
        configured = self._clients.config(client).tenant_id.strip().lower()
        if _GUID.match(configured):
            return configured
        if client not in self._tenant_ids:
            from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
            try:
                token = await self._clients.credential(client).get_token(self._clients.graph_scope())
            except ServiceRequestError as exc:
                raise self._clients.unreachable("entra", exc, "token request") from None
            except ClientAuthenticationError as exc:
                if _network_failure(exc):
                    raise self._clients.unreachable("entra", exc, "token request") from None
                raise _credential_error(client, exc) from None
            tid = str(_jwt_claims(token.token).get("tid", "")).lower()
            if not _GUID.match(tid):
                raise PermanentError(f"the token of Graph client {client!r} names no tenant GUID (tid); configure "
                                     "tenant_id as the tenant's GUID")
            self._tenant_ids[client] = tid
            log.info("graph.tenant-resolved client=%s tenant=%s", client, tid)
        return self._tenant_ids[client]

    # validation (manage API) ------------------------------------------------------------------
    async def token_claims(self, client: str) -> dict[str, Any]:
        """Acquire a token with a fresh credential (no cache) and return its claims (roles...).

        Raises CredentialError whose `code` is Entra's AADSTS number ('' when there is none)."""
        from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
        cred = self._clients.build_credential(client)
        try:
            token = await cred.get_token(self._clients.graph_scope())
        except ServiceRequestError as exc:
            raise self._clients.unreachable("entra", exc, "token request") from None
        except ClientAuthenticationError as exc:
            text = str(getattr(exc, "message", None) or exc)
            if "AADSTS" not in text and _network_failure(exc):
                raise self._clients.unreachable("entra", exc, "token request") from None
            raise _credential_error(client, exc) from None
        except PermanentError as exc:  # e.g. the secret setting or the token file is missing
            error = CredentialError(str(exc))
            error.code = "config"
            raise error from None
        finally:
            try:
                await cred.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        return _jwt_claims(token.token)

    async def probe_mailbox(self, client: str, graph_user: str) -> str:
        """A harmless read (the Inbox folder's id) proving the client can reach the mailbox."""
        from msgraph.generated.users.item.mail_folders.item.mail_folder_item_request_builder import (
            MailFolderItemRequestBuilder,
        )
        query = MailFolderItemRequestBuilder.MailFolderItemRequestBuilderGetQueryParameters(select=["id"])
        info = self._clients.client(client).users.by_user_id(graph_user).mail_folders.by_mail_folder_id(
            "inbox").to_get_request_information(self._cfg(query))
        doc = await self._get_json(client, graph_user, info, "mailbox probe")
        return str(doc.get("id", ""))

    async def get_folder(self, client: str, graph_user: str, folder: str) -> dict[str, Any]:
        """One mail folder by id or well-known name ({id, displayName}); MailNotFound when the
        mailbox has none by that id or name."""
        from msgraph.generated.users.item.mail_folders.item.mail_folder_item_request_builder import (
            MailFolderItemRequestBuilder,
        )
        query = MailFolderItemRequestBuilder.MailFolderItemRequestBuilderGetQueryParameters(
            select=["id", "displayName", "parentFolderId"])
        info = self._clients.client(client).users.by_user_id(graph_user).mail_folders.by_mail_folder_id(
            folder).to_get_request_information(self._cfg(query))
        return await self._get_json(client, graph_user, info, "folder get")

    async def list_folders(self, client: str, graph_user: str, limit: int = 500) -> list[dict[str, Any]]:
        """The mailbox's mail folders, breadth first, with their paths from the top of the
        mailbox ('Inbox/Processed'): [{id, path, display_name}], at most `limit` of them."""
        from msgraph.generated.users.item.mail_folders.mail_folders_request_builder import (
            MailFoldersRequestBuilder,
        )
        user = self._clients.client(client).users.by_user_id(graph_user)
        query = MailFoldersRequestBuilder.MailFoldersRequestBuilderGetQueryParameters(
            select=["id", "displayName", "childFolderCount"], top=100)
        out: list[dict[str, Any]] = []
        todo: list[tuple[str, Any]] = [("", user.mail_folders)]
        while todo and len(out) < limit:
            prefix, builder = todo.pop(0)
            info = builder.to_get_request_information(self._cfg(query))
            while len(out) < limit:
                doc = await self._get_json(client, graph_user, info, "folder list")
                for f in doc.get("value") or ():
                    path = f"{prefix}/{f.get('displayName', '')}" if prefix else str(f.get("displayName", ""))
                    out.append({"id": f.get("id", ""), "path": path, "display_name": f.get("displayName", "")})
                    if f.get("childFolderCount"):
                        todo.append((path, user.mail_folders.by_mail_folder_id(f["id"]).child_folders))
                next_link = doc.get("@odata.nextLink")
                if not next_link:
                    break
                info = builder.with_url(next_link).to_get_request_information(self._cfg())
        return out[:limit]

    async def resolve_user(self, client: str, address: str) -> str | None:
        from msgraph.generated.users.item.user_item_request_builder import UserItemRequestBuilder
        query = UserItemRequestBuilder.UserItemRequestBuilderGetQueryParameters(select=["id"])
        info = self._clients.client(client).users.by_user_id(address).to_get_request_information(self._cfg(query))
        try:
            doc = await self._get_json(client, address, info, "user lookup")
        except GraphAccessDenied:
            return None
        return str(doc.get("id") or "") or None


def _credential_error(client: str, exc: BaseException) -> CredentialError:
    """A token request Entra refused, with its AADSTS code (an unknown tenant makes MSAL fail on the
    authority's configuration before any AADSTS code: 90002)."""
    text = str(getattr(exc, "message", None) or exc)
    match = re.search(r"AADSTS(\d+)", text)
    code = match.group(1) if match else ("90002" if "authority configuration" in text else "")
    error = CredentialError(f"Graph client {client!r} could not get a token: "
                            f"{'AADSTS' + code if code else 'token request failed'}"
                            f"{' (unknown tenant: check tenant_id in GRAPH_CLIENTS)' if code == '90002' else ''}")
    error.code = code
    return error


def _network_failure(exc: BaseException) -> bool:
    """A ClientAuthenticationError that only wraps a failure to reach the authority (some credential
    kinds wrap connection errors instead of raising ServiceRequestError)."""
    from azure.core.exceptions import ServiceRequestError
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and len(seen) < 10:
        seen.append(cur)
        if isinstance(cur, (ServiceRequestError, ConnectionError, TimeoutError, OSError)):
            return True
        cur = cur.__cause__ or cur.__context__ or getattr(cur, "inner_exception", None)
        if any(cur is s for s in seen):
            break
    return False


def _jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT access token, unverified (for reporting roles only; {} if opaque)."""
    import base64
    try:
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}


def _iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
