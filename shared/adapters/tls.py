"""Outbound TLS trust: the default trust store plus OUTBOUND_CA_BUNDLE (Lime's `path_to_verify_cert`).

The bundle ADDS certificates (an on-premise CRM's private or self-signed CA); public services
(Entra, Graph, TRAML) keep working with the default store. Clients that take an SSLContext (httpx:
Lime CRM, TRAML, msgraph-sdk) get `ssl_context()`; azure-identity takes only a file path and would
trust nothing but that file, so it gets `combined_bundle()`, a file holding the default store and
the bundle.

A server whose certificate is not trusted fails with `CertificateUntrusted` (reason `tls_untrusted`),
a TransientError (the setting can be fixed while the mail waits for its retries and the sweep) whose
message names the service, the server and OUTBOUND_CA_BUNDLE. Settings.from_env reports a missing, unreadable or
non-PEM bundle at startup.
"""
from __future__ import annotations

import hashlib
import os
import ssl
import tempfile
import threading
from functools import lru_cache
from urllib.parse import urlsplit

from ..config import ConfigError, ca_bundle_problem
from ..domain.errors import Unavailable

_lock = threading.Lock()


class CertificateUntrusted(Unavailable):
    """The server's TLS certificate failed verification (not retried inside the call)."""

    kind = "bad_gateway"


@lru_cache(maxsize=8)
def ssl_context(ca_bundle: str) -> ssl.SSLContext:
    """The system store and certifi's, plus the PEM bundle (when given)."""
    context = ssl.create_default_context()
    try:
        import certifi
        context.load_verify_locations(cafile=certifi.where())
    except (ImportError, OSError, ssl.SSLError):
        pass
    if ca_bundle:
        problem = ca_bundle_problem(ca_bundle)
        if problem:
            raise ConfigError(problem)
        context.load_verify_locations(cafile=ca_bundle)
    return context


def verify_for(ca_bundle: str) -> ssl.SSLContext | bool:
    """httpx's `verify=`: True (httpx's default store) without a bundle, else the combined context."""
    return ssl_context(ca_bundle) if ca_bundle else True


def combined_bundle(ca_bundle: str) -> str:
    """A PEM file with the default stores and the bundle, for clients that take only a path
    (azure-identity's `connection_verify`). Written once per worker to the temp directory."""
    problem = ca_bundle_problem(ca_bundle)
    if problem:
        raise ConfigError(problem)
    parts: list[bytes] = []
    system = ssl.get_default_verify_paths().cafile
    sources = [system] if system else []
    try:
        import certifi
        sources.append(certifi.where())
    except ImportError:
        pass
    for path in sources + [ca_bundle]:
        try:
            with open(path, "rb") as f:
                parts.append(f.read().strip() + b"\n")
        except OSError:
            continue
    data = b"".join(parts)
    target = os.path.join(tempfile.gettempdir(), f"inbox-outbound-ca-{hashlib.sha256(data).hexdigest()[:16]}.pem")
    with _lock:
        if not os.path.exists(target):
            fd, tmp = tempfile.mkstemp(prefix="inbox-outbound-ca-", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
    return target


def certificate_problem(exc: BaseException | None) -> str:
    """Why certificate verification failed, if that is what `exc` (or what caused it) is; else ''."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ssl.SSLCertVerificationError):
            return exc.verify_message or "certificate verify failed"
        text = str(exc)
        if "CERTIFICATE_VERIFY_FAILED" in text:
            detail = text.split("certificate verify failed:", 1)[-1].split("(_ssl.c", 1)[0].strip(" :")
            return detail or "certificate verify failed"
        exc = exc.__cause__ or exc.__context__
    return ""


def untrusted(service: str, url: str, detail: str, ca_bundle: str = "") -> CertificateUntrusted:
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}" if parts.netloc else url
    hint = (f"OUTBOUND_CA_BUNDLE ({ca_bundle}) does not hold the CA that signed it" if ca_bundle else
            "if it uses a private or self-signed CA (or a proxy inspects TLS), ship that CA's certificate (PEM) "
            "with the app and set OUTBOUND_CA_BUNDLE to the file's path")
    return CertificateUntrusted(f"{service} at {origin}: the server's TLS certificate is not trusted "
                                f"({detail}); {hint}", "tls_untrusted", service=service,
                                host=parts.hostname or origin, fix=hint, detail={"verify": detail})
