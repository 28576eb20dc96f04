"""Tests of the Graph simulator (tools/sim): real HTTP, driven by the real msgraph-sdk and
azure-identity where the production code uses them, plus plain httpx for raw protocol details.

Owns: proof that the simulator speaks the Graph / Entra protocols the app relies on (tokens and
their errors, message GET with $select/$expand/Prefer, paging, PATCH/DELETE/move, subscriptions
with the validation handshake, notifications, lifecycle events, clock, throttling, faults) and
that mime2graph turns real-world MIME shapes into Graph message JSON.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.server
import json
import threading
import time
import uuid
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tools.sim.graph import GraphSim
from tools.sim.mime2graph import mime_to_graph_message
from tools.sim.tls import make_client_certificate

TENANT = "11111111-1111-1111-1111-1111111111aa"
CLIENT = "11111111-1111-1111-1111-1111111111bb"
SECRET = "s3cret~value+/="
GRAPH_SCOPE = "https://graph.microsoft.com/.default"


# ------------------------------------------------------------------------------- fixtures


class Webhook:
    """A tiny stdlib webhook: echoes validation tokens (decoded) and records notifications."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.validations: list[dict[str, Any]] = []
        self.cv = threading.Condition()
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                if "validationToken" in query:
                    token = query["validationToken"][0]
                    with hook.cv:
                        hook.validations.append({"path": parts.path, "token": token,
                                                 "raw_query": parts.query,
                                                 "content_type": self.headers["Content-Type"]})
                    if parts.path.startswith("/fail"):
                        return self._send(500, b"nope", "text/plain")
                    if parts.path.startswith("/json"):
                        return self._send(200, json.dumps(token).encode(), "application/json")
                    return self._send(200, token.encode("utf-8"), "text/plain; charset=utf-8")
                with hook.cv:
                    hook.received.append({"path": parts.path, "query": query,
                                          "json": json.loads(body),
                                          "content_type": self.headers["Content-Type"]})
                    hook.cv.notify_all()
                status = 500 if parts.path.startswith("/flaky") and len(
                    [r for r in hook.received if r["path"].startswith("/flaky")]) < 3 else 202
                self._send(status, b"", "text/plain")

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def wait(self, n: int, path_prefix: str = "/", timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                got = [r for r in self.received if r["path"].startswith(path_prefix)]
                if len(got) >= n:
                    return got
                left = deadline - time.monotonic()
                assert left > 0, f"only {len(got)} notifications on {path_prefix}"
                self.cv.wait(left)


@pytest.fixture(scope="module")
def sim() -> GraphSim:
    graph = GraphSim(notification_retry_delays=(0.05, 0.05, 0.05)).start()
    graph.add_app(TENANT, CLIENT, secret=SECRET)
    try:
        yield graph
    finally:
        graph.stop()


@pytest.fixture(scope="module")
def webhook() -> Webhook:
    hook = Webhook()
    yield hook
    hook.server.shutdown()


@pytest.fixture
def mailbox(sim: GraphSim) -> tuple[str, str]:
    address = f"support-{uuid.uuid4().hex[:8]}@Contoso.example"
    return address, sim.add_mailbox(address, "Support", tenant_id=TENANT)


def _client(sim: GraphSim, secret: str = SECRET):
    from azure.identity.aio import ClientSecretCredential
    from msgraph import GraphServiceClient

    cred = ClientSecretCredential(TENANT, CLIENT, secret, authority=sim.authority_host,
                                  connection_verify=sim.ca_path,
                                  disable_instance_discovery=True)
    client = GraphServiceClient(credentials=cred, scopes=[GRAPH_SCOPE])
    client.request_adapter.base_url = sim.graph_url
    return client, cred


def _token(sim: GraphSim) -> str:
    resp = httpx.post(f"{sim.https_url}/{TENANT}/oauth2/v2.0/token", verify=sim.ca_path, data={
        "grant_type": "client_credentials", "client_id": CLIENT, "client_secret": SECRET,
        "scope": GRAPH_SCOPE})
    assert resp.status_code == 200, resp.text
    return resp.json()["access_token"]


def _cfg(select=None, expand=None, immutable=True, builder=None, **kw):
    from kiota_abstractions.base_request_configuration import RequestConfiguration
    from msgraph.generated.users.item.messages.item.message_item_request_builder import (
        MessageItemRequestBuilder)
    cls = builder or MessageItemRequestBuilder.MessageItemRequestBuilderGetQueryParameters
    cfg = RequestConfiguration(query_parameters=cls(select=select, expand=expand, **kw))
    if immutable:
        cfg.headers.add("Prefer", 'IdType="ImmutableId"')
    return cfg


def _prefer_cfg():
    from kiota_abstractions.base_request_configuration import RequestConfiguration
    cfg = RequestConfiguration()
    cfg.headers.add("Prefer", 'IdType="ImmutableId"')
    return cfg


def _mime_with_attachments() -> bytes:
    msg = EmailMessage()
    msg["From"] = "=?utf-8?q?Bj=C3=B6rn_K=C3=A4ll?= <bjorn@example.org>"
    msg["To"] = "Support <support@contoso.example>"
    msg["Cc"] = "a@example.org, B <b@example.org>"
    msg["Subject"] = "=?utf-8?b?UHJpbnRlciBicm9rZW4g4oCUIGjDpGxw?="
    msg["Message-ID"] = "<abc.123@example.org>"
    msg["Date"] = "Tue, 05 Mar 2024 10:20:30 +0100"
    msg.set_content("plain version")
    msg.add_alternative('<html><body><p>HTML <img src="cid:logo@x"></p></body></html>',
                        subtype="html")
    msg.get_payload()[1].add_related(b"\x89PNG-logo", maintype="image", subtype="png",
                                     cid="<logo@x>", filename="logo.png",
                                     disposition="inline")
    msg.add_attachment(b"%PDF-1.4 data", maintype="application", subtype="pdf",
                       filename="räkning 2024.pdf")  # non-ASCII: RFC 2231 filename*
    return b"X-Custom: folded\r\n value\r\n" + msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


# ------------------------------------------------------------------------------- Entra


def test_tokens_via_azure_identity_and_entra_errors(sim: GraphSim) -> None:
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import (CertificateCredential, ClientAssertionCredential,
                                ClientSecretCredential)

    common = dict(authority=sim.authority_host, connection_verify=sim.ca_path,
                  disable_instance_discovery=True)
    token = ClientSecretCredential(TENANT, CLIENT, SECRET, **common).get_token(GRAPH_SCOPE)
    assert token.token and token.expires_on > time.time() + 3000

    with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
        ClientSecretCredential(TENANT, CLIENT, "wrong", **common).get_token(GRAPH_SCOPE)
    unknown = str(uuid.uuid4())
    with pytest.raises(ClientAuthenticationError, match="AADSTS700016"):
        ClientSecretCredential(TENANT, unknown, SECRET, **common).get_token(GRAPH_SCOPE)

    expiring = str(uuid.uuid4())
    sim.add_app(TENANT, expiring, secret="old", secret_expires_at="2000-01-01T00:00:00Z")
    resp = httpx.post(f"{sim.https_url}/{TENANT}/oauth2/v2.0/token", verify=sim.ca_path, data={
        "grant_type": "client_credentials", "client_id": expiring, "client_secret": "old",
        "scope": GRAPH_SCOPE})
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_client"
    assert resp.json()["error_description"].startswith("AADSTS7000222")

    # certificate credential: the assertion's signature is checked against the registered cert
    cert_pem, key_pem = make_client_certificate()
    cert_app = str(uuid.uuid4())
    sim.add_app(TENANT, cert_app, certificate_pem=cert_pem)
    cred = CertificateCredential(TENANT, cert_app, certificate_data=key_pem + cert_pem, **common)
    assert cred.get_token(GRAPH_SCOPE).token
    other_cert, other_key = make_client_certificate()
    with pytest.raises(ClientAuthenticationError, match="AADSTS700027"):
        CertificateCredential(TENANT, cert_app, certificate_data=other_key + other_cert,
                              **common).get_token(GRAPH_SCOPE)

    # federated credential (managed identity -> app): iss/sub/aud must match the record
    fed_app = str(uuid.uuid4())
    sim.add_app(TENANT, fed_app, federated={"issuer": "https://mi.example/issuer",
                                            "subject": "mi-object-id"})
    good = ClientAssertionCredential(TENANT, fed_app, lambda: sim.make_federated_assertion(
        "https://mi.example/issuer", "mi-object-id"), **common)
    assert good.get_token(GRAPH_SCOPE).token
    with pytest.raises(ClientAuthenticationError, match="AADSTS70021"):
        ClientAssertionCredential(TENANT, fed_app, lambda: sim.make_federated_assertion(
            "https://mi.example/issuer", "someone-else"), **common).get_token(GRAPH_SCOPE)


def test_a_verified_domain_stands_for_the_tenant_and_everything_answers_with_the_guid(sim: GraphSim) -> None:
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import ClientSecretCredential

    common = dict(authority=sim.authority_host, connection_verify=sim.ca_path, disable_instance_discovery=True)
    domain = f"t{uuid.uuid4().hex[:8]}.onmicrosoft.com"
    with pytest.raises(ClientAuthenticationError, match="authority configuration"):  # not (yet) a domain of it
        ClientSecretCredential(domain, CLIENT, SECRET, **common).get_token(GRAPH_SCOPE)
    sim.add_domain(TENANT, domain)
    token = ClientSecretCredential(domain, CLIENT, SECRET, **common).get_token(GRAPH_SCOPE).token
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["tid"] == TENANT.lower()
    config = httpx.get(f"{sim.https_url}/{domain}/v2.0/.well-known/openid-configuration", verify=sim.ca_path).json()
    assert config["issuer"].endswith(f"/{TENANT.lower()}/v2.0") and f"/{TENANT.lower()}/oauth2" in \
        config["token_endpoint"]


def test_graph_rejects_missing_or_bad_token(sim: GraphSim, mailbox) -> None:
    address, _ = mailbox
    resp = httpx.get(f"{sim.graph_url}/users/{address}/messages")
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "InvalidAuthenticationToken"
    resp = httpx.get(f"{sim.graph_url}/users/{address}/messages",
                     headers={"Authorization": "Bearer a.b.c"})
    assert resp.status_code == 401


# ------------------------------------------------------------------------------- messages


def test_message_value_is_the_mime_as_delivered_and_the_size_comes_as_an_extended_property(
        sim: GraphSim, mailbox) -> None:
    """`$value` of a mail delivered as MIME is those bytes exactly (chunked when large); one
    delivered as JSON is rendered with its headers, addresses, date and attachments. The store's
    size (PidTagMessageSize, `Integer 0x0E08`) is expanded on request, below the MIME's size."""
    import email
    from email import policy as email_policy
    address, user_id = mailbox
    auth = {"Authorization": f"Bearer {_token(sim)}"}
    base = f"{sim.graph_url}/users/{user_id}/messages"
    big = bytes(range(256)) * 4096  # 1 MiB: streamed in chunks
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "anna@acme.example", address, "Evidence"
    msg["Message-ID"] = "<ev.1@acme.example>"
    msg.set_content("See the file.")
    msg.add_attachment(big, maintype="application", subtype="octet-stream", filename="big.bin")
    raw = (b"Received: from mail.acme.example by mx.contoso.example; Tue, 05 Mar 2024 10:20:31 +0100\r\n"
           b"DKIM-Signature: v=1; a=rsa-sha256; d=acme.example; s=s1; bh=abc=; b=def=\r\n"
           + msg.as_bytes(policy=msg.policy.clone(linesep="\r\n")))
    mid = sim.deliver(address, raw, notify=False)
    got = httpx.get(f"{base}/{mid}/$value", headers=auth)
    assert got.status_code == 200 and got.content == raw and got.headers["content-type"].startswith("text/plain")

    size_expand = "singleValueExtendedProperties($filter=id eq 'Integer 0x0E08')"
    doc = httpx.get(f"{base}/{mid}", headers=auth, params={
        "$select": "subject", "$expand": f"attachments($select=id,size),{size_expand}"}).json()
    [prop] = doc["singleValueExtendedProperties"]
    assert prop["id"] == "Integer 0xe08" and len(big) < int(prop["value"]) < len(raw)
    assert [a["size"] for a in doc["attachments"]] == [len(big)]
    plain = httpx.get(f"{base}/{mid}", headers=auth, params={"$select": "subject"}).json()
    assert "singleValueExtendedProperties" not in plain
    other = httpx.get(f"{base}/{mid}", headers=auth, params={
        "$expand": "singleValueExtendedProperties($filter=id eq 'String 0x0037')"}).json()
    assert "singleValueExtendedProperties" not in other  # a property the item does not have
    bad = httpx.get(f"{base}/{mid}", headers=auth, params={"$expand": "singleValueExtendedProperties"})
    assert bad.status_code == 400

    json_mid = sim.deliver(address, {"subject": "From JSON", "from": "bo@acme.example", "toRecipients": [address],
                                     "ccRecipients": ["cc@acme.example"], "internetMessageId": "<j.1@acme.example>",
                                     "body": "<p>Hi</p>", "attachments": [
                                         {"name": "a.pdf", "contentType": "application/pdf", "content": b"%PDF-1"}]},
                           notify=False)
    built = email.message_from_bytes(httpx.get(f"{base}/{json_mid}/$value", headers=auth).content,
                                     policy=email_policy.default)
    assert built["Subject"] == "From JSON" and built["Message-ID"] == "<j.1@acme.example>"
    assert built["Cc"] == "cc@acme.example" and built["Date"] and built["From"] == "bo@acme.example"
    assert [(p.get_filename(), p.get_content()) for p in built.iter_attachments()] == [("a.pdf", b"%PDF-1")]


async def test_get_message_select_expand_immutable(sim: GraphSim, mailbox) -> None:
    from kiota_abstractions.api_error import APIError

    address, user_id = mailbox
    msg_id = sim.deliver(address, _mime_with_attachments())
    client, cred = _client(sim)
    try:
        item = client.users.by_user_id(address.upper()).messages.by_message_id(msg_id)
        msg = await item.get(request_configuration=_cfg(
            select=["subject", "from", "body", "internetMessageId", "hasAttachments"],
            expand=["attachments"]))
        assert msg.id == msg_id  # ImmutableId honoured
        assert msg.subject == "Printer broken — hälp"
        assert msg.from_.email_address.address == "bjorn@example.org"
        assert msg.from_.email_address.name == "Björn Käll"
        assert msg.internet_message_id == "<abc.123@example.org>"
        assert msg.body.content_type.value == "html" and "cid:logo@x" in msg.body.content
        assert msg.internet_message_headers is None  # not selected -> not returned
        assert msg.received_date_time is None  # not selected
        assert msg.has_attachments is True
        by_name = {a.name: a for a in msg.attachments}
        assert set(by_name) == {"logo.png", "räkning 2024.pdf"}
        assert by_name["logo.png"].is_inline and by_name["logo.png"].content_id == "logo@x"
        assert by_name["räkning 2024.pdf"].content_bytes == b"%PDF-1.4 data"
        assert by_name["räkning 2024.pdf"].odata_type == "#microsoft.graph.fileAttachment"

        with_headers = await item.get(request_configuration=_cfg(
            select=["internetMessageHeaders"]))
        names = {h.name: h.value for h in with_headers.internet_message_headers}
        assert names["X-Custom"] == "folded value"

        # without the ImmutableId header the REST id comes back (different, changes on move)
        plain = await item.get(request_configuration=_cfg(select=["subject"], immutable=False))
        assert plain.id != msg_id

        # text body on request, the MIME ($value) and an attachment's $value
        cfg = _cfg(select=["body"])
        cfg.headers.add("Prefer", 'outlook.body-content-type="text"')
        text = await item.get(request_configuration=cfg)
        assert text.body.content_type.value == "text" and "<p>" not in text.body.content
        pdf = by_name["räkning 2024.pdf"]
        mime = await item.content.get()
        assert b"abc.123@example.org" in mime
        raw = httpx.get(f"{sim.graph_url}/users/{user_id}/messages/{msg_id}/attachments/"
                        f"{pdf.id}/$value", headers={"Authorization": f"Bearer {_token(sim)}"})
        assert raw.content == b"%PDF-1.4 data" and raw.headers["content-type"] == "application/pdf"

        with pytest.raises(APIError) as err:
            await client.users.by_user_id(address).messages.by_message_id("AAMkNOPE=").get()
        assert err.value.response_status_code == 404
        assert err.value.error.code == "ErrorItemNotFound"
        user = await client.users.by_user_id(address).get()
        assert user.id == user_id and user.mail == address
    finally:
        await cred.close()


async def test_list_inbox_paging_filter_and_order(sim: GraphSim, mailbox) -> None:
    from msgraph.generated.users.item.mail_folders.item.messages.messages_request_builder \
        import MessagesRequestBuilder

    address, _ = mailbox
    base = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    ids = [sim.deliver(address, {"subject": f"m{i}", "from": "x@example.org", "body": "hi"},
                       notify=False, received_at=base + dt.timedelta(minutes=i))
           for i in range(25)]
    client, cred = _client(sim)
    try:
        inbox = client.users.by_user_id(address).mail_folders.by_mail_folder_id("Inbox")
        qp = MessagesRequestBuilder.MessagesRequestBuilderGetQueryParameters
        page = await inbox.messages.get(request_configuration=_cfg(
            builder=qp, select=["subject", "receivedDateTime"], top=10))
        seen = [m.id for m in page.value]
        while page.odata_next_link:
            page = await inbox.messages.with_url(page.odata_next_link).get(
                request_configuration=_cfg(builder=qp))
            seen += [m.id for m in page.value]
        assert seen == list(reversed(ids))  # default order: newest first, no gaps or repeats

        since = (base + dt.timedelta(minutes=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
        page = await inbox.messages.get(request_configuration=_cfg(
            builder=qp, select=["subject"], filter=f"receivedDateTime ge {since}",
            orderby=["receivedDateTime asc"], top=3))
        assert [m.subject for m in page.value] == ["m20", "m21", "m22"]
        page = await inbox.messages.with_url(page.odata_next_link).get(
            request_configuration=_cfg(builder=qp))
        assert [m.subject for m in page.value] == ["m23", "m24"]
        assert page.odata_next_link is None
    finally:
        await cred.close()


async def test_patch_move_delete(sim: GraphSim, mailbox) -> None:
    from kiota_abstractions.api_error import APIError
    from msgraph.generated.models.message import Message
    from msgraph.generated.users.item.messages.item.move.move_post_request_body import (
        MovePostRequestBody)

    address, user_id = mailbox
    processed = sim.add_folder(address, "Processed")
    first = sim.deliver(address, {"subject": "one", "body": "x"}, notify=False)
    second = sim.deliver(address, {"subject": "two", "body": "x"}, notify=False)
    client, cred = _client(sim)
    try:
        messages = client.users.by_user_id(user_id).messages
        patched = await messages.by_message_id(first).patch(
            Message(categories=["Processed"], is_read=True), request_configuration=_cfg())
        assert patched.categories == ["Processed"] and patched.is_read
        assert sim.get_message(address, first)["categories"] == ["Processed"]

        moved = await messages.by_message_id(first).move.post(
            MovePostRequestBody(destination_id=processed), request_configuration=_cfg())
        assert moved.id == first and moved.parent_folder_id == processed
        assert [m["id"] for m in sim.messages(address, "Inbox")] == [second]
        assert [m["id"] for m in sim.messages(address, processed)] == [first]

        await messages.by_message_id(second).delete(request_configuration=_cfg())
        assert sim.messages(address, "Inbox") == []
        assert [m["id"] for m in sim.recoverable_items(address)] == [second]
        with pytest.raises(APIError) as err:
            await messages.by_message_id(second).get(request_configuration=_cfg())
        assert err.value.response_status_code == 404
    finally:
        await cred.close()

    # raw protocol: property names are read case-insensitively; REST id changes on move
    token = _token(sim)
    third = sim.deliver(address, {"subject": "three"}, notify=False)
    rest_id = sim.get_message(address, third)["restId"]
    resp = httpx.post(f"{sim.graph_url}/users/{address}/messages/{rest_id}/move",
                      json={"destinationId": "archive"},
                      headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 201 and resp.json()["id"] != rest_id
    resp = httpx.get(f"{sim.graph_url}/users/{address}/messages/{rest_id}",
                     headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 404


def test_permissions_and_access_policy(sim: GraphSim, mailbox) -> None:
    address, _ = mailbox
    reader, limited = str(uuid.uuid4()), str(uuid.uuid4())
    sim.add_app(TENANT, reader, secret="r", permissions={"Mail.Read"})
    sim.add_app(TENANT, limited, secret="l", allowed_mailboxes=["someone-else@contoso.example"])
    msg_id = sim.deliver(address, {"subject": "x"}, notify=False)

    def token(client_id: str, secret: str) -> dict[str, str]:
        resp = httpx.post(f"{sim.https_url}/{TENANT}/oauth2/v2.0/token", verify=sim.ca_path,
                          data={"grant_type": "client_credentials", "client_id": client_id,
                                "client_secret": secret, "scope": GRAPH_SCOPE})
        return {"Authorization": "Bearer " + resp.json()["access_token"]}

    url = f"{sim.graph_url}/users/{address}/messages/{msg_id}"
    assert httpx.get(url, headers=token(reader, "r")).status_code == 200
    resp = httpx.patch(url, json={"isRead": True}, headers=token(reader, "r"))
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "ErrorAccessDenied"
    resp = httpx.get(url, headers=token(limited, "l"))
    assert resp.status_code == 403 and "AccessPolicy" in resp.json()["error"]["message"]


# ------------------------------------------------------------------------------- subscriptions


async def test_subscription_handshake_notifications_lifecycle_and_expiry(
        sim: GraphSim, webhook: Webhook, mailbox) -> None:
    from kiota_abstractions.api_error import APIError
    from msgraph.generated.models.subscription import Subscription

    address, user_id = mailbox
    client, cred = _client(sim)
    cfg = _prefer_cfg()
    try:
        expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)
        sub = await client.subscriptions.post(Subscription(
            change_type="created", notification_url=f"{webhook.url}/ok/notifications?code=k1",
            lifecycle_notification_url=f"{webhook.url}/ok/lifecycle?code=k1",
            resource=f"users/{address}/mailFolders('Inbox')/messages",
            expiration_date_time=expires, client_state="v1.secret-state",
            latest_supported_tls_version="v1_2"), request_configuration=cfg)
        assert sub.id and sub.client_state == "v1.secret-state"
        assert abs((sub.expiration_date_time - expires).total_seconds()) < 1
        validations = webhook.validations[-2:]
        assert {v["path"] for v in validations} == {"/ok/notifications", "/ok/lifecycle"}
        token = validations[0]["token"]
        assert " " in token and "+" in token and "/" in token and "=" in token
        assert "%2B" in validations[0]["raw_query"] and "code=k1" in validations[0]["raw_query"]
        assert validations[0]["content_type"] == "text/plain; charset=utf-8"

        # same resource + changeType for the same app -> 409
        with pytest.raises(APIError) as err:
            await client.subscriptions.post(Subscription(
                change_type="created", notification_url=f"{webhook.url}/ok/notifications",
                resource=f"users/{user_id}/mailFolders/inbox/messages",
                expiration_date_time=expires), request_configuration=cfg)
        assert err.value.response_status_code == 409

        # a webhook that fails the handshake (500, or echoing JSON) -> 400, nothing created
        for bad in ("fail", "json"):
            with pytest.raises(APIError) as err:
                await client.subscriptions.post(Subscription(
                    change_type="updated", notification_url=f"{webhook.url}/{bad}/x",
                    resource=f"users/{user_id}/mailFolders('Inbox')/messages",
                    expiration_date_time=expires), request_configuration=cfg)
            assert err.value.response_status_code == 400
        too_far = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=10081)
        with pytest.raises(APIError):
            await client.subscriptions.by_subscription_id(sub.id).patch(
                Subscription(expiration_date_time=too_far))

        # deliver -> a real change notification, with the subscription's clientState
        msg_id = sim.deliver(address, {"subject": "hello", "from": "c@example.org"})
        got = webhook.wait(1, "/ok/notifications")[-1]
        assert got["query"]["code"] == ["k1"]
        assert got["content_type"].startswith("application/json")
        (item,) = got["json"]["value"]
        assert item["subscriptionId"] == sub.id and item["changeType"] == "created"
        assert item["clientState"] == "v1.secret-state" and item["tenantId"] == TENANT
        assert item["resourceData"]["id"] == msg_id
        assert item["resource"] == f"Users/{user_id}/Messages/{msg_id}"
        assert item["resourceData"]["@odata.type"] == "#Microsoft.Graph.Message"

        # a batch from deliver_many, and a folder outside the subscription stays silent
        sim.deliver(address, {"subject": "junk"}, folder="junkemail")
        sim.deliver_many(address, [{"subject": f"b{i}"} for i in range(3)])
        batch = webhook.wait(2, "/ok/notifications")[-1]
        assert len(batch["json"]["value"]) == 3

        # delivered silently, notified later (a test's plans are set up in between)
        quiet = sim.deliver_many(address, [{"subject": f"q{i}"} for i in range(2)], notify=False)
        time.sleep(0.2)
        assert len(webhook.wait(2, "/ok/notifications")) == 2
        (record,) = sim.notify_created(address, quiet)
        assert not record.dropped and record.kind == "change"
        later_batch = webhook.wait(3, "/ok/notifications")[-1]
        assert [i["resourceData"]["id"] for i in later_batch["json"]["value"]] == quiet
        with pytest.raises(KeyError):
            sim.notify_created(address, ["no-such-message"])

        # renew via PATCH
        later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=6)
        renewed = await client.subscriptions.by_subscription_id(sub.id).patch(
            Subscription(expiration_date_time=later))
        assert abs((renewed.expiration_date_time - later).total_seconds()) < 1
        await client.subscriptions.by_subscription_id(sub.id).reauthorize.post()

        # lifecycle notification
        sim.fire_lifecycle(sub.id, "reauthorizationRequired")
        life = webhook.wait(1, "/ok/lifecycle")[-1]["json"]["value"][0]
        assert life["lifecycleEvent"] == "reauthorizationRequired"
        assert life["subscriptionId"] == sub.id and life["clientState"] == "v1.secret-state"

        # the clock moves past expiry: the subscription is gone and notifies nothing
        sim.advance_clock(7 * 24 * 3600)
        with pytest.raises(APIError) as err:
            await client.subscriptions.by_subscription_id(sub.id).get()
        assert err.value.response_status_code == 404
        before = len(webhook.received)
        sim.deliver(address, {"subject": "after expiry"})
        time.sleep(0.2)
        assert len(webhook.received) == before
    finally:
        sim.advance_clock(-7 * 24 * 3600)
        await cred.close()


async def test_notification_retries_and_drops(sim: GraphSim, webhook: Webhook, mailbox) -> None:
    address, user_id = mailbox
    token = _token(sim)
    resp = httpx.post(f"{sim.graph_url}/subscriptions", headers={
        "Authorization": f"Bearer {token}", "Prefer": 'IdType="ImmutableId"'}, json={
        "changeType": "created", "notificationUrl": f"{webhook.url}/flaky",
        "resource": f"Users/{user_id}/MailFolders('inbox')/Messages",
        "expirationDateTime": (dt.datetime.now(dt.timezone.utc)
                               + dt.timedelta(minutes=5)).isoformat(), "clientState": "cs"})
    assert resp.status_code == 201, resp.text
    # under 45 minutes -> 45 minutes
    exp = dt.datetime.fromisoformat(resp.json()["expirationDateTime"].replace("Z", "+00:00"))
    assert exp > dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=44)
    sim.deliver(address, {"subject": "retry me"})
    (record,) = _flaky_record(sim)
    assert [a["status"] for a in record.attempts] == [500, 500, 202]
    sim.drop_notifications = True
    try:
        sim.deliver(address, {"subject": "dropped"})
        assert sim.notification_log("change")[-1].dropped
    finally:
        sim.drop_notifications = False


def _flaky_record(sim: GraphSim):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [r for r in sim.notification_log("change")
                 if r.url.endswith("/flaky") and r.delivered]
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError([r.to_dict() for r in sim.notification_log("change")])


# ------------------------------------------------------------------------------- limits, faults


def test_throttling_concurrency_and_rate(sim: GraphSim, mailbox) -> None:
    address, _ = mailbox
    msg_id = sim.deliver(address, {"subject": "t"}, notify=False)
    headers = {"Authorization": f"Bearer {_token(sim)}"}
    url = f"{sim.graph_url}/users/{address}/messages/{msg_id}"
    sim.throttle(concurrency=4, rate_per_s=None)
    sim.faults.add(None, path_regex=msg_id, delay_ms=3000, count=4)  # hold 4 requests open
    try:
        results: list[httpx.Response] = []
        threads = [threading.Thread(target=lambda: results.append(httpx.get(url, headers=headers, timeout=30)))
                   for _ in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while sim.throttle_stats()["in_flight"] < 4:  # all four hold their slot (not a guess at timing)
            assert time.monotonic() < deadline, "the four held requests never reached the simulator"
            time.sleep(0.01)
        fifth = httpx.get(url, headers=headers)
        for t in threads:
            t.join()
        assert fifth.status_code == 429 and fifth.headers["Retry-After"] == "1"
        assert fifth.json()["error"]["code"] == "ApplicationThrottled"
        assert [r.status_code for r in results] == [200] * 4

        sim.throttle(concurrency=None, rate_per_s=2, burst=3)
        codes = [httpx.get(url, headers=headers).status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and 429 in codes[3:]
        assert sim.throttle_stats()["throttled"] >= 2
    finally:
        sim.throttle(None)
        sim.faults.clear()


async def test_fault_injection_http_and_sdk_retry(sim: GraphSim, mailbox) -> None:
    address, _ = mailbox
    msg_id = sim.deliver(address, {"subject": "f"}, notify=False)
    headers = {"Authorization": f"Bearer {_token(sim)}"}
    url = f"{sim.graph_url}/users/{address}/messages/{msg_id}"
    resp = httpx.post(f"{sim.url}/_sim/faults", json={
        "method": "GET", "path_regex": "/messages/", "status": 503, "count": 2,
        "retry_after": 1})
    assert resp.status_code == 201
    codes = [httpx.get(url, headers=headers).status_code for _ in range(3)]
    assert codes == [503, 503, 200]
    faults = sim.requests.entries(path_regex=msg_id, status=503)
    assert len(faults) == 2 and faults[0]["fault"] is not None

    # the SDK's retry handler honours Retry-After and gets through
    sim.faults.add(503, method="GET", path_regex=msg_id, count=1, retry_after=1)
    client, cred = _client(sim)
    try:
        msg = await client.users.by_user_id(address).messages.by_message_id(msg_id).get(
            request_configuration=_cfg(select=["subject"]))
        assert msg.subject == "f"
    finally:
        await cred.close()
    statuses = [e["status"] for e in sim.requests.entries(path_regex=msg_id)][-2:]
    assert statuses == [503, 200]
    assert httpx.delete(f"{sim.url}/_sim/faults").status_code == 204

    log = httpx.get(f"{sim.url}/_sim/requests", params={"path": msg_id}).json()
    assert log["count"] >= 5 and log["value"][-1]["headers"]["prefer"] == 'IdType="ImmutableId"'
    assert log["value"][-1]["immutable"] is True


def test_control_endpoints(sim: GraphSim, webhook: Webhook) -> None:
    resp = httpx.post(f"{sim.url}/_sim/mailboxes", json={
        "address": f"ctl-{uuid.uuid4().hex[:6]}@contoso.example", "tenant_id": TENANT})
    assert resp.status_code == 201
    address = resp.json()["address"]
    mime = _mime_with_attachments()
    resp = httpx.post(f"{sim.url}/_sim/deliver", json={
        "mailbox": address, "mime_base64": base64.b64encode(mime).decode()})
    assert resp.status_code == 201
    listed = httpx.get(f"{sim.url}/_sim/messages", params={"mailbox": address}).json()["value"]
    assert [m["id"] for m in listed] == [resp.json()["id"]]
    before = dt.datetime.fromisoformat(
        httpx.get(f"{sim.url}/_sim/clock").json()["now"].replace("Z", "+00:00"))
    after = httpx.post(f"{sim.url}/_sim/clock", json={"advance_seconds": 3600}).json()
    assert dt.datetime.fromisoformat(after["now"].replace("Z", "+00:00")) - before \
        >= dt.timedelta(minutes=59)
    sim.advance_clock(-3600)


# ------------------------------------------------------------------------------- mime2graph


def test_mime2graph_outlook_shape() -> None:
    data = mime_to_graph_message(_mime_with_attachments())
    assert data["subject"] == "Printer broken — hälp"
    assert data["from"] == {"emailAddress": {"name": "Björn Käll",
                                             "address": "bjorn@example.org"}}
    assert [r["emailAddress"]["address"] for r in data["ccRecipients"]] == [
        "a@example.org", "b@example.org"]
    assert data["internetMessageId"] == "<abc.123@example.org>"
    assert data["sentDateTime"] == "2024-03-05T09:20:30Z"
    assert data["body"]["contentType"] == "html"
    atts = {a["name"]: a for a in data["attachments"]}
    assert atts["logo.png"]["isInline"] and atts["logo.png"]["contentId"] == "logo@x"
    pdf = atts["räkning 2024.pdf"]
    assert not pdf["isInline"] and base64.b64decode(pdf["contentBytes"]) == b"%PDF-1.4 data"
    assert pdf["size"] == len(b"%PDF-1.4 data") and pdf["contentType"] == "application/pdf"
    assert data["hasAttachments"] is True
    headers = {h["name"]: h["value"] for h in data["internetMessageHeaders"]}
    assert headers["Subject"] == "Printer broken — hälp"
    assert headers["X-Custom"] == "folded value"


def test_mime2graph_plain_no_message_id_inline_only_calendar_and_forward() -> None:
    raw = (b"From: no-reply@example.org\r\nTo: support@contoso.example\r\n"
           b"Subject: =?iso-8859-1?q?F=F6rfr=E5gan?=\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=iso-8859-1\r\n"
           b"Content-Transfer-Encoding: quoted-printable\r\n\r\nHej p=E5 dig\r\n")
    data = mime_to_graph_message(raw)
    assert data["subject"] == "Förfrågan" and data["internetMessageId"] is None
    assert data["body"]["contentType"] == "text"
    assert data["body"]["content"].strip() == "Hej på dig"
    assert data["attachments"] == [] and data["hasAttachments"] is False

    # inline-only images: attachments listed, hasAttachments false (as Outlook shows it)
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.org", "b@example.org", "pic"
    msg["Message-ID"] = make_msgid()
    msg.set_content('<p><img src="cid:img1"></p>', subtype="html")
    msg.add_related(b"GIF89a", maintype="image", subtype="gif", cid="<img1>")
    data = mime_to_graph_message(msg.as_bytes())
    assert data["hasAttachments"] is False and data["attachments"][0]["isInline"]

    # an invitation (text/calendar alternative) and a forwarded message as itemAttachment
    invite = EmailMessage()
    invite["From"], invite["To"], invite["Subject"] = "a@example.org", "b@example.org", "Meet"
    invite.set_content("join us")
    invite.add_alternative("BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n",
                           subtype="calendar", params={"method": "REQUEST"})
    inner = EmailMessage()
    inner["Subject"] = "Original"
    inner.set_content("old text")
    invite.add_attachment(inner)
    data = mime_to_graph_message(invite.as_bytes())
    assert data["@odata.type"] == "#microsoft.graph.eventMessage"
    assert data["meetingMessageType"] == "meetingRequest"
    (item,) = data["attachments"]
    assert item["@odata.type"] == "#microsoft.graph.itemAttachment" and item["name"] == "Original"
