"""shared/adapters/errors.py over real sockets: the Lime and TRAML adapters (httpx) and the token
request (azure-identity over aiohttp) fail with the same named reasons for the same causes: a closed
port, a name that does not resolve, a proxy that refuses. No secret in any message."""
from __future__ import annotations

import pytest

from shared.adapters.crm_lime import LimeCrm
from shared.adapters.errors import proxy_for, unreachable
from shared.adapters.traml import TramlClient
from shared.domain.errors import Unavailable
from tests.support.azurite import free_port

KEY = "a-secret-api-key-123"


class NoSleep:
    async def __call__(self, seconds: float) -> None:
        return None


def closed(scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{free_port()}"


@pytest.mark.parametrize("base, reason, host", [
    (closed(), "traml_unreachable", "127.0.0.1"),
    ("http://traml.invalid/bedrock/demo/api", "dns_failed", "traml.invalid"),
])
async def test_traml(base, reason, host):
    client = TramlClient(base, KEY, sleep=NoSleep())
    try:
        with pytest.raises(Unavailable) as err:
            await client.list_templates()
    finally:
        await client.close()
    assert err.value.reason == reason and err.value.host == host and "TRAML_BASE_URL" in str(err.value)
    assert KEY not in str(err.value)


@pytest.mark.parametrize("base, reason, host", [
    (closed(), "lime_unreachable", "127.0.0.1"),
    ("http://lime.invalid/demo", "dns_failed", "lime.invalid"),
])
async def test_lime(base, reason, host):
    crm = LimeCrm(base, KEY, sleep=NoSleep())
    try:
        with pytest.raises(Unavailable) as err:
            await crm.check_schema()
    finally:
        await crm.close()
    assert err.value.reason == reason and err.value.host == host and "LIME_CRM_URL" in str(err.value)
    assert KEY not in str(err.value)


async def test_a_refusing_proxy_is_named_and_no_proxy_bypasses_it(monkeypatch):
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    proxy = closed()
    monkeypatch.setenv("HTTPS_PROXY", proxy)
    assert proxy_for("https://lime.customer.example/api") == proxy
    client = TramlClient("https://traml.example/bedrock/demo/api", KEY, sleep=NoSleep())
    try:
        with pytest.raises(Unavailable) as err:
            await client.list_templates()
    finally:
        await client.close()
    assert err.value.reason == "proxy_failed" and err.value.host == "127.0.0.1" and "NO_PROXY" in str(err.value)
    assert err.value.detail["target"] == "traml.example"
    monkeypatch.setenv("NO_PROXY", "lime.customer.example")
    assert proxy_for("https://lime.customer.example/api") == ""


async def test_the_token_request_through_azure_identity():
    from azure.core.exceptions import ServiceRequestError
    from azure.identity.aio import ClientSecretCredential
    for authority, reason in ((closed("https"), "authority_unreachable"), ("https://login.invalid", "dns_failed")):
        cred = ClientSecretCredential("00000000-0000-0000-0000-0000000000aa", "app", KEY, authority=authority,
                                      disable_instance_discovery=True)
        try:
            with pytest.raises(ServiceRequestError) as err:
                await cred.get_token("https://graph.microsoft.com/.default")
        finally:
            await cred.close()
        named = unreachable("entra", authority, err.value)
        assert named.reason == reason and "GRAPH_AUTHORITY_HOST" in str(named) and KEY not in str(named)
