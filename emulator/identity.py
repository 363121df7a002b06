"""The identity side (§2): OpenID discovery, the client-credentials token endpoint, bearer checks.

Enough of Entra ID for the real MSAL confidential-client flow: `/{tenant}/v2.0/.well-known/
openid-configuration` and `/{tenant}/oauth2/v2.0/token`, any tenant accepted. A client proves
itself with the configured secret or with a client assertion signed by the configured certificate
(RS256 with `x5t`, or PS256 with `x5t#S256`, as MSAL sends them). Scope must be `<base>/.default`.
Access tokens are JWT-shaped, remembered with their expiry on the emulator clock, and can be
revoked all at once. Failures use the AADSTS error shape (U3); API calls without a valid token get
401 with an empty body and the `WWW-Authenticate` challenge of U4. The secret is never logged.
"""

from __future__ import annotations

import base64
import hmac
import logging
import secrets
import threading
import uuid
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from emulator.context import Context
from emulator.wire import PLAIN_JSON_TYPE, Request, Response, json_response

logger = logging.getLogger("emulator.identity")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_NO_CACHE = (("Cache-Control", "no-store, no-cache"), ("Pragma", "no-cache"))


def _thumbprint(certificate: x509.Certificate, algorithm: hashes.HashAlgorithm) -> str:
    return base64.urlsafe_b64encode(certificate.fingerprint(algorithm)).decode().rstrip("=")


class Identity:
    """Token issuing and checking for the one client the emulator was started with."""

    def __init__(
        self, ctx: Context, client_secret: str, certificate: x509.Certificate | None = None
    ) -> None:
        self._ctx = ctx
        self._secret = client_secret
        self._certificate = certificate
        self._signing_key = secrets.token_bytes(32)
        self._tokens: dict[str, datetime] = {}
        self._lock = threading.Lock()

    # -- discovery ----------------------------------------------------------------------------

    def openid_configuration(self, tenant: str) -> Response:
        base = f"{self._ctx.origin}/{tenant}"
        return json_response(
            200,
            {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post", "private_key_jwt", "client_secret_basic",
                ],
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": f"{base}/v2.0",
                "request_uri_parameter_supported": False,
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "tenant_region_scope": "EU",
                "cloud_instance_name": "microsoftonline.com",
            },
            content_type=PLAIN_JSON_TYPE,
        )  # fmt: skip

    def keys(self) -> Response:
        return json_response(200, {"keys": []}, content_type=PLAIN_JSON_TYPE)

    # -- token endpoint --------------------------------------------------------------------------

    def _error(
        self, request: Request, status: int, error: str, code: int, description: str
    ) -> Response:
        logger.info("token request refused: %s AADSTS%s", error, code)
        body = {
            "error": error,
            "error_description": f"AADSTS{code}: {description}",
            "error_codes": [code],
            "timestamp": self._ctx.clock.now().strftime("%Y-%m-%d %H:%M:%SZ"),
            "trace_id": str(uuid.uuid4()),
            "correlation_id": request.header("client-request-id") or str(uuid.uuid4()),
        }
        return json_response(status, body, *_NO_CACHE, content_type=PLAIN_JSON_TYPE)

    def token(self, tenant: str, request: Request) -> Response:
        if request.method != "POST":
            return self._error(request, 405, "invalid_request", 900561,
                               "The endpoint only accepts POST requests.")  # fmt: skip
        form = dict(parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))
        client_id, secret = form.get("client_id"), form.get("client_secret")
        basic = request.header("authorization") or ""
        if basic.lower().startswith("basic "):
            decoded = base64.b64decode(basic[6:].strip() + "==").decode("utf-8", "replace")
            client_id, _, secret = decoded.partition(":")
        grant_type = form.get("grant_type", "")
        if grant_type != "client_credentials":
            description = f"The app requested an unsupported grant type '{grant_type}'."
            return self._error(request, 400, "unsupported_grant_type", 70003, description)
        if not client_id:
            description = "The request body must contain the following parameter: 'client_id'."
            return self._error(request, 400, "invalid_request", 900144, description)
        if client_id != self._ctx.client_id:
            return self._error(
                request, 400, "unauthorized_client", 700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{tenant}'. This can happen if the application has not been installed by the "
                "administrator of the tenant or consented to by any user in the tenant. You may "
                "have sent your authentication request to the wrong tenant.",
            )  # fmt: skip
        failure = self._authenticate_client(request, form, secret)
        if failure is not None:
            return failure
        scopes = form.get("scope", "").split()
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            return self._error(
                request, 400, "invalid_scope", 1002012,
                f"The provided value for scope {' '.join(scopes)} is not valid. Client credential "
                "flows must have a scope value with /.default suffixed to the resource identifier "
                "(application ID URI).",
            )  # fmt: skip
        resource = scopes[0].removesuffix("/.default").rstrip("/")
        if resource != self._ctx.origin:
            return self._error(
                request, 400, "invalid_resource", 500011,
                f"The resource principal named {resource} was not found in the tenant named "
                f"{tenant}. This can happen if the application has not been installed by the "
                "administrator of the tenant or consented to by any user in the tenant.",
            )  # fmt: skip
        lifetime = self._ctx.config.token_lifetime
        logger.info("token issued to client %s for tenant %s", client_id, tenant)
        body = {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": self._mint(tenant, lifetime),
        }
        return json_response(200, body, *_NO_CACHE, content_type=PLAIN_JSON_TYPE)

    def _authenticate_client(
        self, request: Request, form: dict[str, str], secret: str | None
    ) -> Response | None:
        assertion = form.get("client_assertion")
        if assertion:
            if form.get("client_assertion_type") != ASSERTION_TYPE:
                return self._error(request, 400, "invalid_request", 50027,
                                   "Invalid client_assertion_type.")  # fmt: skip
            problem = self._check_assertion(assertion, f"{self._ctx.origin}{request.path}")
            if problem is None:
                return None
            return self._error(request, 401, "invalid_client", 700027, problem)
        if secret:
            if hmac.compare_digest(secret.encode(), self._secret.encode()):
                return None
            return self._error(request, 401, "invalid_client", 7000215,
                               "Invalid client secret provided.")  # fmt: skip
        return self._error(
            request, 401, "invalid_client", 7000218,
            "The request body must contain the following parameter: 'client_assertion' or "
            "'client_secret'.",
        )  # fmt: skip

    def _check_assertion(self, assertion: str, audience: str) -> str | None:
        """None when the assertion is valid, else what is wrong with it."""
        if self._certificate is None:
            return "Client assertion is not accepted: no certificate is registered on application."
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            return "Client assertion failed signature validation."
        certificate = self._certificate
        matches = (
            header.get("alg") == "RS256"
            and str(header.get("x5t", "")).rstrip("=") == _thumbprint(certificate, hashes.SHA1())  # noqa: S303 - x5t is defined as SHA-1
        ) or (
            header.get("alg") == "PS256"
            and str(header.get("x5t#S256", "")).rstrip("=")
            == _thumbprint(certificate, hashes.SHA256())
        )
        if not matches:
            return (
                "The certificate with identifier used to sign the client assertion is not "
                "registered on application."
            )
        try:
            claims: dict[str, Any] = jwt.decode(
                assertion,
                certificate.public_key(),  # type: ignore[arg-type]
                algorithms=[str(header["alg"])],
                audience=audience,
                leeway=300,
                options={"require": ["exp", "aud", "iss", "sub"]},
            )
        except jwt.PyJWTError:
            return "Client assertion failed signature validation."
        if claims.get("iss") != self._ctx.client_id or claims.get("sub") != self._ctx.client_id:
            return "Client assertion issuer and subject must be the client id."
        return None

    def _mint(self, tenant: str, lifetime: int) -> str:
        now = self._ctx.clock.now()
        expires = now + timedelta(seconds=lifetime)
        claims = {
            "aud": f"{self._ctx.origin}/",
            "iss": f"https://sts.windows.net/{tenant}/",
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int(expires.timestamp()),
            "appid": self._ctx.client_id,
            "oid": self._ctx.caller_id,
            "tid": tenant,
            "uti": secrets.token_urlsafe(16),
            "ver": "1.0",
        }
        token = jwt.encode(claims, self._signing_key, algorithm="HS256")
        with self._lock:
            if len(self._tokens) > 1000:
                self._tokens = {t: e for t, e in self._tokens.items() if e > now}
            self._tokens[token] = expires
        return token

    # -- API side ------------------------------------------------------------------------------

    def authorized(self, authorization: str | None) -> bool:
        """True when the header carries a token this emulator issued, not expired or revoked."""
        if not authorization or not authorization.startswith("Bearer "):
            return False
        expires = self._tokens.get(authorization[7:].strip())
        return expires is not None and self._ctx.clock.now() < expires

    def challenge(self) -> Response:
        """401 for the Web API (U4): empty body and a bearer challenge naming the authority."""
        value = (
            f"Bearer authorization_uri={self._ctx.origin}/{self._ctx.tenant_id}/oauth2/authorize, "
            f"resource_id={self._ctx.origin}/"
        )
        return Response(401, (("WWW-Authenticate", value),))

    def revoke(self) -> int:
        with self._lock:
            count = len(self._tokens)
            self._tokens = {}
        return count
