"""Failures of the outside world, told apart in ONE place.

`raise_storage` maps Azure Storage SDK exceptions to the domain's transient/permanent split.

`unreachable(service, url, exc)` turns a failure to reach Entra, Graph, Lime CRM or TRAML (httpx,
aiohttp through azure-core, azure-identity; connection refused, timeouts, DNS, TLS, proxies) into
an `Unavailable` whose `reason` names what failed and whose message names the host and the likely
fix:

  authority_unreachable, graph_unreachable, lime_unreachable, traml_unreachable
      the host refused or did not answer: a firewall, a wrong URL setting, the service down;
  dns_failed       the host name does not resolve (a typo in the URL setting, or the DNS);
  proxy_failed     the proxy in HTTPS_PROXY refused or failed (or NO_PROXY misses the host);
  tls_untrusted    the server's certificate is not trusted (OUTBOUND_CA_BUNDLE).

Messages never carry a secret: only the scheme and host of a URL, never its path or query.
"""
from __future__ import annotations

import socket
import urllib.request
from typing import NoReturn
from urllib.parse import urlsplit

from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

from ..domain.errors import PermanentError, Unavailable
from . import tls

# service key -> (name in sentences, reason when it cannot be reached, the setting holding its URL)
SERVICES: dict[str, tuple[str, str, str]] = {
    "entra": ("Entra ID", "authority_unreachable", "GRAPH_AUTHORITY_HOST"),
    "graph": ("Microsoft Graph", "graph_unreachable", "GRAPH_BASE_URL"),
    "lime": ("Lime CRM", "lime_unreachable", "LIME_CRM_URL"),
    "traml": ("TRAML", "traml_unreachable", "TRAML_BASE_URL"),
}
_DNS_TEXT = ("name or service not known", "nodename nor servname", "getaddrinfo failed",
             "temporary failure in name resolution", "no address associated with hostname",
             "name does not resolve", "could not resolve", "errno -2]", "errno -3]", "errno -5]")

# What a Storage call raises when it failed: an answer (HttpResponseError and its subclasses) or
# none at all (connection refused, reset, timed out). `except STORAGE_ERRORS: raise_storage(...)`
# turns both into the domain's errors, so an unreachable account is transient, not a crash.
STORAGE_ERRORS = (HttpResponseError, ServiceRequestError, ServiceResponseError)


def raise_storage(exc: Exception, what: str) -> NoReturn:
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        raise Unavailable(f"storage unreachable during {what}: {type(exc).__name__}; check AzureWebJobsStorage "
                          "and that the storage account is reachable", "storage_unavailable",
                          service="Storage", fix="check AzureWebJobsStorage") from exc
    if isinstance(exc, HttpResponseError):
        status = exc.status_code or 0
        if status >= 500 or status in (408, 429):
            raise Unavailable(f"storage {status} during {what}", "storage_unavailable", service="Storage") from exc
        raise PermanentError(f"storage {status} during {what}: {exc.reason}") from exc
    raise exc


def _chain(exc: BaseException | None) -> list[BaseException]:
    """`exc` and what caused it: __cause__, __context__, and the inner exceptions azure-core and
    aiohttp keep (`inner_exception`, `os_error`)."""
    out: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or any(e is seen for seen in out) or len(out) > 20:
            continue
        out.append(e)
        todo.extend([e.__cause__, e.__context__, getattr(e, "inner_exception", None), getattr(e, "os_error", None)])
    return [e for e in out if isinstance(e, BaseException)]


def proxy_for(url: str) -> str:
    """The proxy (from HTTPS_PROXY / HTTP_PROXY / ALL_PROXY, honouring NO_PROXY) that a request to
    `url` goes through, or ''."""
    parts = urlsplit(url or "")
    if not parts.hostname:
        return ""
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme or "https") or proxies.get("all") or ""
    if not proxy:
        return ""
    try:
        if urllib.request.proxy_bypass_environment(parts.hostname, proxies):
            return ""
    except (AttributeError, TypeError, ValueError):  # a malformed NO_PROXY: the proxy is used
        pass
    return proxy


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url or "")
    host = parts.hostname or ""
    origin = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}" if parts.netloc else (url or "")
    return origin, host


def kind_of(exc: BaseException, url: str = "") -> str:
    """'tls', 'proxy', 'dns', 'timeout' or 'connect' for a failure to reach a server."""
    chain = _chain(exc)
    if tls.certificate_problem(exc):
        return "tls"
    names = " ".join(type(e).__name__ for e in chain)
    if "Proxy" in names:
        return "proxy"
    text = " ".join(str(e) for e in chain).lower()
    if any(isinstance(e, socket.gaierror) for e in chain) or "DNSError" in names \
            or any(t in text for t in _DNS_TEXT):
        return "dns"
    if url and proxy_for(url):  # a connection failure with a proxy in the way is the proxy's
        return "proxy"
    if "Timeout" in names or "timed out" in text or any(isinstance(e, TimeoutError) for e in chain):
        return "timeout"
    return "connect"


# Reasons of `unreachable` that only a setting cures (OUTBOUND_CA_BUNDLE, HTTPS_PROXY / NO_PROXY): the
# HTTP adapters raise these at once instead of retrying in place.
NEEDS_A_SETTING = ("tls_untrusted", "proxy_failed")


def unreachable(service: str, url: str, exc: BaseException, ca_bundle: str = "", what: str = "") -> Unavailable:
    """The named failure to reach `service` ('entra', 'graph', 'lime', 'traml') at `url`."""
    name, reason, setting = SERVICES[service]
    origin, host = _origin(url)
    where = f" during {what}" if what else ""
    kind = kind_of(exc, url)
    if kind == "tls":
        return tls.untrusted(name, url, tls.certificate_problem(exc), ca_bundle)
    if kind == "proxy":
        proxy_origin, proxy_host = _origin(proxy_for(url))
        return Unavailable(
            f"{name} at {origin} could not be reached through the proxy {proxy_origin or '(from the environment)'}"
            f"{where} ({type(exc).__name__}): check HTTPS_PROXY, and NO_PROXY if {host} must be reached directly",
            "proxy_failed", service=name, host=proxy_host or host, kind="bad_gateway",
            fix="check HTTPS_PROXY / NO_PROXY", detail={"target": host, "setting": setting})
    if kind == "dns":
        return Unavailable(
            f"{name}: the host name {host} does not resolve{where}: check {setting} for a typo, and that this "
            "network's DNS resolves it", "dns_failed", service=name, host=host,
            fix=f"check {setting} and the DNS", detail={"setting": setting})
    how = "did not answer in time" if kind == "timeout" else "refused the connection or could not be reached"
    return Unavailable(
        f"{name} at {origin} {how}{where} ({type(exc).__name__}): check {setting}, and that outbound HTTPS to "
        f"{host} is allowed (firewall, NSG, proxy: HTTPS_PROXY / NO_PROXY)", reason, service=name, host=host,
        fix=f"check {setting} and outbound access to {host}", detail={"setting": setting, "failure": kind})
