"""Authentication: the one MSAL confidential client, used as a requests auth hook.

`DataverseAuth` obtains app-only tokens (client credentials, with a secret or a certificate) for
the environment's `/.default` scope and puts them in `Authorization: Bearer …`. MSAL serves them
from its in-memory cache and renews them about five minutes before expiry, so asking per request
is cheap; `renew()` drops the cached token after Dataverse answered 401.

Failures map onto the error tree: the identity provider refusing (`AuthError`), not answering
(`UnreachableError`), a wrong authority or a bad certificate file (`ConfigError`). No secret,
password or token ever goes into an exception or a log line.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msal
import requests
from msal.exceptions import MsalServiceError
from pydantic import SecretStr
from requests.auth import AuthBase

from connector.errors import AuthError, ConfigError, UnreachableError
from connector.settings import ENV_PREFIX, Connection

CERTIFICATE_PATH_VARIABLE = f"{ENV_PREFIX}CLIENT_CERTIFICATE_PATH"
THUMBPRINT_VARIABLE = f"{ENV_PREFIX}CLIENT_CERTIFICATE_THUMBPRINT"
_SHA1_THUMBPRINT = re.compile(r"[0-9A-Fa-f]{40}")


class DataverseAuth(AuthBase):
    """Bearer tokens for one Dataverse environment, from one long-lived MSAL application.

    The MSAL application is built on first use: its constructor already calls the authority
    (tenant discovery), and building a Context should not need the network.
    """

    def __init__(self, connection: Connection) -> None:
        self._client_id = connection.client_id
        self._authority = connection.authority
        self._authority_host = urlsplit(connection.authority).hostname or connection.authority
        self._scopes = [connection.scope]
        self._credential = _client_credential(connection)
        self._verify: bool | str = str(connection.ca_bundle) if connection.ca_bundle else True
        self._app: Any = None  # msal.ConfidentialClientApplication once built
        self._app_lock = threading.Lock()

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        return request

    def token(self) -> str:
        """A valid access token: MSAL's cached one, or a new one from the token endpoint."""
        app = self._application()
        with self._authority_errors():
            try:
                result = app.acquire_token_for_client(scopes=self._scopes)
            except ValueError:  # the token endpoint answered something that is not JSON
                raise AuthError(
                    "invalid_response", f"{self._authority_host} did not answer with a token"
                ) from None
        if "access_token" not in result:
            raise AuthError(
                str(result.get("error") or "no_token"),
                str(result.get("error_description") or ""),
                str(result.get("correlation_id") or ""),
            )
        return str(result["access_token"])

    def renew(self) -> None:
        """Forget the cached token, so that the next request gets a genuinely new one."""
        self._application().remove_tokens_for_client()

    def _application(self) -> Any:
        with self._app_lock:
            if self._app is None:
                with self._authority_errors():
                    try:
                        self._app = msal.ConfidentialClientApplication(
                            self._client_id,
                            authority=self._authority,
                            client_credential=self._credential,
                            instance_discovery=False,
                            verify=self._verify,
                        )
                    except ValueError as exc:  # tenant discovery refused: wrong tenant or URL
                        raise ConfigError(
                            f"{ENV_PREFIX}AUTHORITY / {ENV_PREFIX}TENANT_ID: {exc}"
                        ) from None
            return self._app

    @contextmanager
    def _authority_errors(self) -> Iterator[None]:
        """Turn failures of MSAL's own HTTP calls into UnreachableError naming the authority."""
        try:
            yield
        except requests.RequestException as exc:
            raise UnreachableError(
                f"identity provider {self._authority_host} unreachable: {exc}"
            ) from None
        except MsalServiceError as exc:  # the authority answered 5xx
            raise UnreachableError(
                f"identity provider {self._authority_host} failed: {exc}"
            ) from None


def _client_credential(connection: Connection) -> str | dict[str, str]:
    """MSAL's client credential: the certificate when a path is set, otherwise the secret."""
    if connection.certificate_path is not None:
        return _certificate_credential(
            connection.certificate_path,
            connection.certificate_thumbprint,
            connection.certificate_password,
        )
    if connection.client_secret is None:
        raise ConfigError(f"{ENV_PREFIX}CLIENT_SECRET is not set")
    return connection.client_secret.get_secret_value()


def _certificate_credential(
    path: Path, thumbprint: str | None, password: SecretStr | None
) -> dict[str, str]:
    """The certificate credential read from a PEM file holding the private key and certificate.

    The key is loaded once here so that a bad file is a ConfigError now, not an obscure failure
    at the first token request. Messages name the file, never its content or the password.
    """
    if not thumbprint or not _SHA1_THUMBPRINT.fullmatch(thumbprint):
        raise ConfigError(
            f"{THUMBPRINT_VARIABLE} must be the certificate's SHA-1 thumbprint (40 hex digits)"
        )
    from cryptography.exceptions import UnsupportedAlgorithm  # only a certificate needs it
    from cryptography.hazmat.primitives import serialization

    passphrase = password.get_secret_value() if password is not None else ""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{CERTIFICATE_PATH_VARIABLE}: cannot read {path}: {exc.strerror}"
        ) from None
    try:
        serialization.load_pem_private_key(pem, passphrase.encode() if passphrase else None)
        private_key = pem.decode("ascii")
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(
            f"{CERTIFICATE_PATH_VARIABLE}: {path} holds no usable private key "
            f"(expected PEM with the key and the certificate; an encrypted key needs "
            f"{ENV_PREFIX}CLIENT_CERTIFICATE_PASSWORD)"
        ) from None
    credential = {"private_key": private_key, "thumbprint": thumbprint}
    if passphrase:
        credential["passphrase"] = passphrase
    public_certificate = _certificates_pem(pem)
    if public_certificate:  # sent as x5c, for subject name / issuer (SNI) authentication
        credential["public_certificate"] = public_certificate
    return credential


def _certificates_pem(pem: bytes) -> str:
    """The certificates of a PEM file, re-encoded without anything else; "" when there are none."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        return ""
    return "".join(cert.public_bytes(serialization.Encoding.PEM).decode() for cert in certificates)
