"""Authentication in the simulator: Entra's token endpoint (client secret, certificate assertion
verified against the registered certificate, federated assertion matched on iss/sub/aud, Entra's
error shapes), OpenID configuration and instance discovery, the App Service managed-identity
endpoint, the apps' registration API (secrets, permissions, access policies, token revocation),
the simulator's own JWTs, and the bearer-token check on every Graph call.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import time
import uuid
from typing import Any, Iterable
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from .helpers import _b64url, _b64url_decode, parse_datetime
from .model import (
    DEMO_TENANT, FEDERATED_AUDIENCE, GRAPH_APP_ID, GRAPH_RESOURCES, JWT_BEARER, _App, _Token,
)
from ..httpbase import HttpError, Request, Response, json_dumps, json_response


# --------------------------------------------------------------------------------------------
# helpers used by handlers


def _verify_jws(cert: x509.Certificate, alg: str, signing_input: bytes, signature: bytes) -> bool:
    key = cert.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            digest = {"RS256": hashes.SHA256(), "PS256": hashes.SHA256(),
                      "RS384": hashes.SHA384(), "RS512": hashes.SHA512()}.get(alg)
            if digest is None:
                return False
            pad = (padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
                   if alg.startswith("PS") else padding.PKCS1v15())
            key.verify(signature, signing_input, pad, digest)
            return True
        if isinstance(key, ec.EllipticCurvePublicKey) and alg == "ES256":
            from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
            half = len(signature) // 2
            der = encode_dss_signature(int.from_bytes(signature[:half], "big"),
                                       int.from_bytes(signature[half:], "big"))
            key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
            return True
    except InvalidSignature:
        return False
    return False


class _AuthMixin:
    """Apps, tokens, Entra endpoints and the managed-identity endpoint."""

    # ================================================================ registration API

    def add_app(self, tenant_id: str, client_id: str, secret: str | None = None,
                secret_expires_at: Any = None, certificate_pem: bytes | str | None = None,
                federated: dict[str, Any] | list[dict[str, Any]] | None = None,
                permissions: Iterable[str] = ("Mail.ReadWrite", "Mail.Read", "User.Read.All"),
                allowed_mailboxes: Iterable[str] | None = None,
                display_name: str | None = None) -> str:
        """Register an app (service principal) in a tenant; returns the client id.

        federated: ``{"issuer": ..., "subject": ..., "audiences": ["api://AzureADTokenExchange"]}``
        (one or a list). allowed_mailboxes: an Exchange application access policy (ids or
        addresses) limiting which mailboxes the app may touch; None means no policy.
        """
        certs = []
        if certificate_pem:
            pem = certificate_pem.encode() if isinstance(certificate_pem, str) else certificate_pem
            certs = list(x509.load_pem_x509_certificates(pem))
        feds = [federated] if isinstance(federated, dict) else list(federated or [])
        with self._lock:
            self._tenants.add(tenant_id.lower())
            app = _App(
                tenant_id=tenant_id.lower(), client_id=client_id.lower(), secrets=[],
                certificates=certs, federated=feds, permissions=set(permissions),
                allowed_mailboxes=None, sp_id=str(uuid.uuid4()),
                display_name=display_name or f"app {client_id}")
            self._apps[(app.tenant_id, app.client_id)] = app
            if secret is not None:
                self.add_secret(tenant_id, client_id, secret, secret_expires_at)
            if allowed_mailboxes is not None:
                self.set_access_policy(tenant_id, client_id, allowed_mailboxes)
        return client_id

    def add_domain(self, tenant_id: str, domain: str) -> None:
        """A verified domain of a tenant (contoso.onmicrosoft.com, contoso.com): Entra accepts it in
        place of the tenant id in token and OpenID-configuration requests, and answers with the
        tenant's GUID (the token's `tid`, the configuration's issuer and endpoints); Graph's
        notifications carry the GUID too."""
        with self._lock:
            self._tenants.add(tenant_id.lower())
            self._domains[domain.strip().lower()] = tenant_id.lower()

    def _tenant_of(self, segment: str) -> str:
        """The tenant GUID a path segment names: the GUID itself or one of its verified domains."""
        tenant = segment.strip().lower()
        return self._domains.get(tenant, tenant)

    def _app(self, tenant_id: str, client_id: str) -> _App:
        app = self._apps.get((tenant_id.lower(), client_id.lower()))
        if app is None:
            raise KeyError(f"no app {client_id} in tenant {tenant_id}")
        return app

    def add_secret(self, tenant_id: str, client_id: str, secret: str,
                   expires_at: Any = None) -> None:
        """Add a client secret; ``expires_at`` is compared with the sim clock (:meth:`now`)."""
        with self._lock:
            self._app(tenant_id, client_id).secrets.append(
                (secret, parse_datetime(expires_at) if expires_at is not None else None))

    def set_permissions(self, tenant_id: str, client_id: str, permissions: Iterable[str]) -> None:
        """Application permissions (roles) of the app; applies to tokens issued afterwards too."""
        with self._lock:
            self._app(tenant_id, client_id).permissions = set(permissions)

    def set_access_policy(self, tenant_id: str, client_id: str,
                          allowed_mailboxes: Iterable[str] | None) -> None:
        with self._lock:
            self._app(tenant_id, client_id).allowed_mailboxes = (
                None if allowed_mailboxes is None else {m.lower() for m in allowed_mailboxes})

    def revoke_tokens(self, client_id: str | None = None) -> int:
        """Invalidate issued access tokens (all, or one app's): Graph then answers 401."""
        with self._lock:
            n = 0
            for token in self._tokens.values():
                if client_id is None or token.app.client_id == client_id.lower():
                    token.revoked = True
                    n += 1
            return n

    def make_federated_assertion(self, issuer: str, subject: str,
                                 audience: str = FEDERATED_AUDIENCE, lifetime: int = 3600) -> str:
        """A JWT such as a managed identity would present for a federated credential."""
        now = int(time.time())
        return self._jwt({"iss": issuer, "sub": subject, "aud": audience, "iat": now,
                          "nbf": now, "exp": now + lifetime, "jti": str(uuid.uuid4())})

    # ================================================================ managed identity

    @property
    def identity_endpoint(self) -> str:
        """Value for ``IDENTITY_ENDPOINT`` (App Service / Functions managed identity protocol)."""
        return self.url + "/msi/token"

    def add_managed_identity(self, client_id: str | None = None, tenant_id: str = DEMO_TENANT,
                             principal_id: str | None = None) -> dict[str, Any]:
        """An identity of the hosting app (user-assigned with ``client_id``, else system-assigned).

        Returns the federated credential to put on an app registration (``add_app(federated=...)``):
        the identity's tokens for ``api://AzureADTokenExchange`` carry that issuer and subject."""
        ident = {"client_id": (client_id or str(uuid.uuid4())).lower(),
                 "principal_id": (principal_id or str(uuid.uuid4())).lower(),
                 "issuer": f"https://login.microsoftonline.com/{tenant_id.lower()}/v2.0"}
        with self._lock:
            self._identities[client_id.lower() if client_id else None] = ident
        return {"issuer": ident["issuer"], "subject": ident["principal_id"], "audiences": [FEDERATED_AUDIENCE]}

    def _h_identity_token(self, req: Request) -> Response:
        """``GET /msi/token?api-version=2019-08-01&resource=...[&client_id=...]``."""
        if not hmac.compare_digest((req.header("X-IDENTITY-HEADER") or "").encode(), self.identity_header.encode()):
            return json_response({"statusCode": 401, "message": "Unauthorized: missing or wrong X-IDENTITY-HEADER"},
                                 401)
        if req.arg("api-version") != "2019-08-01":
            return json_response({"statusCode": 400, "message": "api-version 2019-08-01 is required"}, 400)
        resource = (req.arg("resource") or "").strip()
        if not resource:
            return json_response({"statusCode": 400, "message": "resource is required"}, 400)
        client_id = (req.arg("client_id") or "").lower() or None
        with self._lock:
            ident = self._identities.get(client_id)
            if ident is None and client_id is None and len(self._identities) == 1:
                ident = next(iter(self._identities.values()))
            self.identity_requests += 1
        if ident is None:
            return json_response({"statusCode": 400, "message": "No managed identity found for the requested "
                                  "client id" if client_id else "No system-assigned managed identity"}, 400)
        audience = resource[:-len("/.default")] if resource.endswith("/.default") else resource
        lifetime = 3600
        token = self.make_federated_assertion(ident["issuer"], ident["principal_id"], audience, lifetime)
        return json_response({"access_token": token, "expires_on": str(int(time.time()) + lifetime),
                              "resource": resource, "token_type": "Bearer", "client_id": ident["client_id"]})

    def _entra_error(self, status: int, error: str, code: int, description: str) -> Response:
        trace, corr = str(uuid.uuid4()), str(uuid.uuid4())
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        return json_response({
            "error": error,
            "error_description": f"AADSTS{code}: {description} Trace ID: {trace} "
                                 f"Correlation ID: {corr} Timestamp: {stamp}",
            "error_codes": [code], "timestamp": stamp, "trace_id": trace,
            "correlation_id": corr,
            "error_uri": f"{self.https_url if self.tls else self.url}/error?code={code}",
        }, status)

    # ---------------------------------------------------------------- Entra

    def _h_oidc(self, req: Request) -> Response:
        tenant = self._tenant_of(req.params["tenant"])  # Entra answers a domain with the tenant's GUID
        if tenant.lower() not in self._tenants and tenant.lower() not in (
                "common", "organizations", "consumers"):
            return self._entra_error(400, "invalid_tenant", 90002,
                                     f"Tenant '{tenant}' not found. Check to make sure you have "
                                     "the correct tenant ID and are signing into the correct "
                                     "cloud.")
        base = f"{req.base_url}/{tenant}"
        issuer_tenant = tenant if tenant.lower() in self._tenants else "{tenantid}"
        return json_response({
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt",
                                                      "client_secret_basic"],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{req.base_url}/{issuer_tenant}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{self.url}/oidc/userinfo",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "tid", "oid"],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
        })

    def _h_instance_discovery(self, req: Request) -> Response:
        host = urlsplit(req.base_url).netloc
        return json_response({
            "tenant_discovery_endpoint":
                f"{req.base_url}/common/v2.0/.well-known/openid-configuration",
            "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host,
                          "aliases": [host]}]})

    def _h_token(self, req: Request) -> Response:
        tenant = self._tenant_of(req.params["tenant"])
        form = req.form()
        if tenant not in self._tenants:
            return self._entra_error(400, "invalid_request", 90002,
                                     f"Tenant '{tenant}' not found. Check to make sure you have "
                                     "the correct tenant ID and are signing into the correct "
                                     "cloud.")
        grant = form.get("grant_type", "")
        if grant != "client_credentials":
            return self._entra_error(400, "unsupported_grant_type", 70003,
                                     f"The app requested an unsupported grant type "
                                     f"'{grant}'.")
        client_id = (form.get("client_id") or "").lower()
        auth = req.header("Authorization") or ""
        basic_secret = None
        if auth.lower().startswith("basic "):
            try:
                user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
                client_id = client_id or user.lower()
                basic_secret = pw
            except ValueError:
                pass
        if not client_id:
            return self._entra_error(400, "invalid_request", 900144,
                                     "The request body must contain the following parameter: "
                                     "'client_id'.")
        scope = form.get("scope", "")
        with self._lock:
            app = self._apps.get((tenant, client_id))
        if app is None:
            return self._entra_error(
                400, "unauthorized_client", 700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{tenant}'. This can happen if the application has not been installed by the "
                "administrator of the tenant or consented to by any user in the tenant. You may "
                "have sent your authentication request to the wrong tenant.")
        scopes = scope.split()
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            return self._entra_error(
                400, "invalid_scope", 1002012,
                f"The provided value for scope {scope} is not valid. Client credential flows "
                "must have a scope value with /.default suffixed to the resource identifier "
                "(application ID URI).")
        resource = scopes[0][:-len("/.default")].rstrip("/")
        if resource.lower() not in GRAPH_RESOURCES and not resource.lower().startswith(
                (self.url.lower(), f"https://{self.host}:{self.port}")):
            return self._entra_error(
                400, "invalid_resource", 500011,
                f"The resource principal named {resource} was not found in the tenant named "
                f"{tenant}. This can happen if the application has not been installed by the "
                "administrator of the tenant or consented to by any user in the tenant.")
        secret = form.get("client_secret", basic_secret)
        assertion = form.get("client_assertion")
        if secret is not None:
            err = self._check_secret(app, secret)
        elif assertion is not None:
            if form.get("client_assertion_type") != JWT_BEARER:
                return self._entra_error(400, "invalid_request", 50027,
                                         "Invalid client_assertion_type.")
            err = self._check_assertion(app, assertion, req)
        else:
            err = self._entra_error(401, "invalid_client", 7000218,
                                    "The request body must contain the following parameter: "
                                    "'client_assertion' or 'client_secret'.")
        if err is not None:
            return err
        return json_response(self._issue_token(app), headers={"Cache-Control": "no-store"})

    def _check_secret(self, app: _App, secret: str) -> Response | None:
        now = self.now()
        expired = False
        for value, expires_at in app.secrets:
            if hmac.compare_digest(value.encode(), secret.encode()):
                if expires_at is not None and expires_at <= now:
                    expired = True
                    continue
                return None
        if expired:
            return self._entra_error(
                401, "invalid_client", 7000222,
                f"The provided client secret keys for app '{app.client_id}' are expired. Visit "
                "the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret"
                ", or consider using certificate credentials for added security: "
                "https://aka.ms/certCreds.")
        return self._entra_error(
            401, "invalid_client", 7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the "
            f"client secret value, not the client secret ID, for a secret added to app "
            f"'{app.client_id}'.")

    def _check_assertion(self, app: _App, assertion: str, req: Request) -> Response | None:
        parts = assertion.split(".")
        try:
            header = json.loads(_b64url_decode(parts[0]))
            claims = json.loads(_b64url_decode(parts[1]))
            signature = _b64url_decode(parts[2]) if len(parts) == 3 else b""
        except (ValueError, IndexError):
            return self._entra_error(401, "invalid_client", 50027,
                                     "JWT token is invalid or malformed.")
        if len(parts) != 3 or not isinstance(claims, dict) or not isinstance(header, dict):
            return self._entra_error(401, "invalid_client", 50027,
                                     "JWT token is invalid or malformed.")
        now = time.time()
        exp = claims.get("exp")
        if exp is not None and float(exp) < now - 300:
            return self._entra_error(401, "invalid_client", 700024,
                                     "Client assertion is not within its valid time range.")
        nbf = claims.get("nbf")
        if nbf is not None and float(nbf) > now + 300:
            return self._entra_error(401, "invalid_client", 700024,
                                     "Client assertion is not within its valid time range.")
        iss = str(claims.get("iss", ""))
        sub = str(claims.get("sub", ""))
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else list(aud or [])
        if iss.lower() == app.client_id and sub.lower() == app.client_id:
            # certificate credential: aud is the token endpoint, signature by a registered cert
            token_path = f"/{app.tenant_id}/oauth2/v2.0/token"
            if not any(urlsplit(str(a)).path.lower().rstrip("/") == token_path
                       or str(a).lower().rstrip("/").endswith(f"/{app.tenant_id}/v2.0")
                       for a in auds):
                return self._entra_error(401, "invalid_client", 700021,
                                         "Client assertion audience claim does not match Realm "
                                         "issuer.")
            signing_input = (parts[0] + "." + parts[1]).encode("ascii")
            thumb = header.get("x5t#S256") or header.get("x5t")
            for cert in app.certificates:
                tp1 = _b64url(cert.fingerprint(hashes.SHA1()))  # noqa: S303 - x5t is SHA-1
                tp256 = _b64url(cert.fingerprint(hashes.SHA256()))
                if thumb is not None and thumb.rstrip("=") not in (tp1, tp256):
                    continue
                if _verify_jws(cert, header.get("alg", ""), signing_input, signature):
                    return None
                return self._entra_error(401, "invalid_client", 700027,
                                         "Client assertion failed signature validation.")
            return self._entra_error(
                401, "invalid_client", 700027,
                "Client assertion contains an invalid signature. [Reason - The key was not "
                f"found., Thumbprint of key used by client: '{thumb}']")
        for fed in app.federated:
            audiences = [a.lower() for a in fed.get("audiences") or [FEDERATED_AUDIENCE]]
            if iss == fed.get("issuer") and sub == fed.get("subject") and any(
                    str(a).lower() in audiences for a in auds):
                return None
        return self._entra_error(
            400, "invalid_request", 70021,
            f"No matching federated identity record found for presented assertion. Assertion "
            f"Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: "
            f"'{','.join(map(str, auds))}'.")

    def _jwt(self, claims: dict[str, Any]) -> str:
        head = _b64url(json_dumps({"typ": "JWT", "alg": "HS256", "kid": "sim"}))
        body = _b64url(json_dumps(claims))
        sig = hmac.new(self._jwt_key, f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{_b64url(sig)}"

    def _issue_token(self, app: _App) -> dict[str, Any]:
        now = int(time.time())
        exp = now + self.token_lifetime
        value = self._jwt({
            "aud": "https://graph.microsoft.com",
            "iss": f"https://sts.windows.net/{app.tenant_id}/",
            "iat": now, "nbf": now, "exp": exp, "app_displayname": app.display_name,
            "appid": app.client_id, "appidacr": "1", "idtyp": "app", "oid": app.sp_id,
            "roles": sorted(app.permissions), "sub": app.sp_id, "tid": app.tenant_id,
            "ver": "1.0", "uti": _b64url(os.urandom(16))})
        with self._lock:
            if len(self._tokens) > 10000:  # forget long-expired tokens
                cutoff = time.time() - 3600
                self._tokens = {k: t for k, t in self._tokens.items() if t.expires_at > cutoff}
            self._tokens[value] = _Token(value, app, exp)
        return {"token_type": "Bearer", "expires_in": self.token_lifetime,
                "ext_expires_in": self.token_lifetime, "access_token": value}

    # ---------------------------------------------------------------- Graph plumbing

    def _auth(self, req: Request) -> _App:
        header = req.header("Authorization") or ""
        scheme, _, value = header.partition(" ")
        value = value.strip()
        www = {"WWW-Authenticate": 'Bearer realm="", authorization_uri="https://login.'
               'microsoftonline.com/common/oauth2/authorize", client_id="' + GRAPH_APP_ID + '"'}
        if scheme.lower() != "bearer" or not value:
            raise HttpError(401, "InvalidAuthenticationToken", "Access token is empty.",
                            headers=www)
        token = self._tokens.get(value)
        if token is None or token.revoked:
            msg = ("IDX14100: JWT is not well formed, there are no dots (.)."
                   if value.count(".") != 2 else "Access token validation failure.")
            raise HttpError(401, "InvalidAuthenticationToken", msg, headers=www)
        if token.expires_at <= time.time():
            raise HttpError(401, "InvalidAuthenticationToken",
                            "Lifetime validation failed, the token is expired.", headers=www)
        req.log["app"] = token.app.client_id
        return token.app
