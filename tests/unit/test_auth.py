"""DataverseAuth: real MSAL against mocked Entra endpoints (tenant discovery and token endpoint)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs

import jwt
import pytest
import requests
import responses
from pydantic import SecretStr

from connector.auth import DataverseAuth
from connector.errors import AuthError, ConfigError, UnreachableError
from connector.http import ThrottleGate, Transport
from connector.settings import Connection
from tests.certificates import ClientCertificate, self_signed

ORG = "https://org.example.crm.dynamics.com"
API = f"{ORG}/api/data/v9.2/"
AUTHORITY = "https://login.microsoftonline.com/contoso-tenant"
DISCOVERY_URL = f"{AUTHORITY}/v2.0/.well-known/openid-configuration"
TOKEN_URL = f"{AUTHORITY}/oauth2/v2.0/token"
SECRET = "s3cr3t-value"
THUMBPRINT = "0123456789ABCDEF0123456789ABCDEF01234567"
PASSWORD = "pem-pass-phrase"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def connection(**overrides: object) -> Connection:
    values: dict[str, object] = {
        "dataverse_url": ORG,
        "tenant_id": "contoso-tenant",
        "client_id": "client-id",
        "client_secret": SecretStr(SECRET),
        "certificate_path": None,
        "certificate_thumbprint": None,
        "certificate_password": None,
        "authority": AUTHORITY,
        "timeout": 130.0,
        "max_attempts": 3,
    }
    values.update(overrides)
    return Connection(**values)  # type: ignore[arg-type]


def token_body(token: str) -> dict[str, object]:
    return {
        "token_type": "Bearer",
        "expires_in": 3599,
        "ext_expires_in": 3599,
        "access_token": token,
    }


def form(call: responses.Call) -> dict[str, str]:
    body = call.request.body
    text = body.decode() if isinstance(body, bytes) else str(body)
    return {key: values[0] for key, values in parse_qs(text).items()}


def token_requests(rsps: responses.RequestsMock) -> list[responses.Call]:
    return [call for call in rsps.calls if call.request.url == TOKEN_URL]


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


@pytest.fixture
def entra(rsps: responses.RequestsMock) -> responses.RequestsMock:
    """Tenant discovery, as MSAL fetches it with instance_discovery=False."""
    rsps.get(
        DISCOVERY_URL,
        json={
            "issuer": "https://login.microsoftonline.com/contoso-tenant/v2.0",
            "authorization_endpoint": f"{AUTHORITY}/oauth2/v2.0/authorize",
            "token_endpoint": TOKEN_URL,
        },
    )
    return rsps


def authorization_header(auth: DataverseAuth) -> str:
    """The Authorization header a request gets from the auth hook."""
    prepared = requests.Request("GET", f"{API}WhoAmI", auth=auth).prepare()
    return prepared.headers["Authorization"]


@pytest.fixture
def client_cert() -> ClientCertificate:
    return self_signed("dvconnect")


def test_the_token_goes_into_the_bearer_header(entra: responses.RequestsMock) -> None:
    token_endpoint = entra.post(TOKEN_URL, json=token_body("token-1"))

    header = authorization_header(DataverseAuth(connection()))

    assert header == "Bearer token-1"
    sent = form(token_endpoint.calls[0])
    assert sent["grant_type"] == "client_credentials"
    assert sent["client_id"] == "client-id"
    assert sent["client_secret"] == SECRET
    assert sent["scope"] == f"{ORG}/.default"


def test_the_token_is_cached_between_requests(entra: responses.RequestsMock) -> None:
    token_endpoint = entra.post(TOKEN_URL, json=token_body("token-1"))
    auth = DataverseAuth(connection())

    headers = {authorization_header(auth) for _ in range(3)}

    assert headers == {"Bearer token-1"}
    assert token_endpoint.call_count == 1


def test_renew_forces_a_new_token_request(entra: responses.RequestsMock) -> None:
    entra.post(TOKEN_URL, json=token_body("token-1"))
    entra.post(TOKEN_URL, json=token_body("token-2"))
    auth = DataverseAuth(connection())

    first = authorization_header(auth)
    auth.renew()
    second = authorization_header(auth)

    assert (first, second) == ("Bearer token-1", "Bearer token-2")
    assert len(token_requests(entra)) == 2


def test_a_401_from_dataverse_renews_the_real_token_once(entra: responses.RequestsMock) -> None:
    entra.post(TOKEN_URL, json=token_body("expired-token"))
    entra.post(TOKEN_URL, json=token_body("fresh-token"))
    entra.get(f"{API}WhoAmI", status=401, body="")
    entra.get(f"{API}WhoAmI", json={"UserId": "u"})
    transport = Transport(connection(), DataverseAuth(connection()), gate=ThrottleGate())

    response = transport.send("GET", "WhoAmI")

    assert response.json() == {"UserId": "u"}
    api_calls = [call for call in entra.calls if call.request.url == f"{API}WhoAmI"]
    assert [call.request.headers["Authorization"] for call in api_calls] == [
        "Bearer expired-token",
        "Bearer fresh-token",
    ]


def test_invalid_client_is_an_auth_error_without_the_secret(
    entra: responses.RequestsMock,
) -> None:
    entra.post(
        TOKEN_URL,
        status=401,
        json={
            "error": "invalid_client",
            "error_description": "AADSTS7000215: Invalid client secret provided.",
            "error_codes": [7000215],
            "correlation_id": "corr-1",
        },
    )

    with pytest.raises(AuthError) as caught:
        authorization_header(DataverseAuth(connection()))

    error = caught.value
    assert (error.error, error.correlation_id) == ("invalid_client", "corr-1")
    assert "AADSTS7000215" in str(error)
    assert SECRET not in str(error)
    assert error.exit_code == 3


def test_an_unreachable_authority_is_named(rsps: responses.RequestsMock) -> None:
    rsps.get(DISCOVERY_URL, body=requests.ConnectionError("connection refused"))

    with pytest.raises(UnreachableError) as caught:
        authorization_header(DataverseAuth(connection()))

    assert "login.microsoftonline.com" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_a_token_endpoint_failing_with_5xx_is_unreachable(entra: responses.RequestsMock) -> None:
    entra.post(TOKEN_URL, status=503, body="")

    with pytest.raises(UnreachableError) as caught:
        authorization_header(DataverseAuth(connection()))

    assert "login.microsoftonline.com" in str(caught.value)


def test_an_unknown_tenant_is_a_config_error(rsps: responses.RequestsMock) -> None:
    rsps.get(
        DISCOVERY_URL,
        status=400,
        json={"error": "invalid_tenant", "error_description": "AADSTS90002: Tenant not found."},
    )

    with pytest.raises(ConfigError) as caught:
        authorization_header(DataverseAuth(connection()))

    assert "DVCONNECT_TENANT_ID" in str(caught.value)
    assert caught.value.exit_code == 2


def test_a_certificate_signs_a_client_assertion_instead_of_a_secret(
    entra: responses.RequestsMock, tmp_path: Path, client_cert: ClientCertificate
) -> None:
    pem_file = tmp_path / "client.pem"
    pem_file.write_bytes(client_cert.key_pem() + client_cert.certificate_pem())
    token_endpoint = entra.post(TOKEN_URL, json=token_body("token-1"))
    auth = DataverseAuth(
        connection(client_secret=None, certificate_path=pem_file, certificate_thumbprint=THUMBPRINT)
    )

    assert authorization_header(auth) == "Bearer token-1"

    sent = form(token_endpoint.calls[0])
    assert "client_secret" not in sent
    assert "Authorization" not in token_endpoint.calls[0].request.headers
    assert sent["client_assertion_type"] == JWT_BEARER
    assertion = sent["client_assertion"]
    claims = jwt.decode(
        assertion, client_cert.key.public_key(), algorithms=["RS256"], audience=TOKEN_URL
    )
    assert claims["iss"] == claims["sub"] == "client-id"
    header = jwt.get_unverified_header(assertion)
    assert "x5t" in header
    assert "x5c" in header  # the public certificate travels along, for SNI


def test_an_encrypted_key_is_opened_with_the_certificate_password(
    entra: responses.RequestsMock, tmp_path: Path, client_cert: ClientCertificate
) -> None:
    pem_file = tmp_path / "client.pem"
    pem_file.write_bytes(client_cert.certificate_pem() + client_cert.key_pem(PASSWORD))
    token_endpoint = entra.post(TOKEN_URL, json=token_body("token-1"))
    auth = DataverseAuth(
        connection(
            client_secret=None,
            certificate_path=pem_file,
            certificate_thumbprint=THUMBPRINT,
            certificate_password=SecretStr(PASSWORD),
        )
    )

    assert authorization_header(auth) == "Bearer token-1"
    jwt.decode(
        form(token_endpoint.calls[0])["client_assertion"],
        client_cert.key.public_key(),
        algorithms=["RS256"],
        audience=TOKEN_URL,
    )


def test_a_wrong_certificate_password_is_a_config_error_without_the_password(
    tmp_path: Path, client_cert: ClientCertificate
) -> None:
    pem_file = tmp_path / "client.pem"
    pem_file.write_bytes(client_cert.key_pem(PASSWORD))

    with pytest.raises(ConfigError) as caught:
        DataverseAuth(
            connection(
                certificate_path=pem_file,
                certificate_thumbprint=THUMBPRINT,
                certificate_password=SecretStr("wrong-password"),
            )
        )

    assert "DVCONNECT_CLIENT_CERTIFICATE_PATH" in str(caught.value)
    assert "wrong-password" not in str(caught.value)
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(lambda key: b"not a pem file", id="text"),
        pytest.param(lambda key: b"\x30\x82\x0a\x01\xff\xfe", id="binary-pfx"),
        pytest.param(lambda cert: cert.certificate_pem(), id="certificate-without-key"),
    ],
)
def test_a_garbage_certificate_file_is_a_config_error(
    tmp_path: Path,
    client_cert: ClientCertificate,
    content: Callable[[ClientCertificate], bytes],
) -> None:
    pem_file = tmp_path / "client.pem"
    pem_file.write_bytes(content(client_cert))

    with pytest.raises(ConfigError) as caught:
        DataverseAuth(connection(certificate_path=pem_file, certificate_thumbprint=THUMBPRINT))

    assert "DVCONNECT_CLIENT_CERTIFICATE_PATH" in str(caught.value)
    assert str(pem_file) in str(caught.value)
    assert "BEGIN" not in str(caught.value)


def test_a_missing_certificate_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"

    with pytest.raises(ConfigError) as caught:
        DataverseAuth(connection(certificate_path=missing, certificate_thumbprint=THUMBPRINT))

    assert "DVCONNECT_CLIENT_CERTIFICATE_PATH" in str(caught.value)
    assert str(missing) in str(caught.value)


def test_a_malformed_thumbprint_is_a_config_error(
    tmp_path: Path, client_cert: ClientCertificate
) -> None:
    pem_file = tmp_path / "client.pem"
    pem_file.write_bytes(client_cert.key_pem())

    with pytest.raises(ConfigError) as caught:
        DataverseAuth(connection(certificate_path=pem_file, certificate_thumbprint="AB:CD:EF"))

    assert "DVCONNECT_CLIENT_CERTIFICATE_THUMBPRINT" in str(caught.value)


def test_no_token_or_secret_reaches_the_logs(
    entra: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    entra.post(TOKEN_URL, json=token_body("token-in-logs?"))
    entra.get(f"{API}WhoAmI", json={"UserId": "u"})
    caplog.set_level("DEBUG", logger="dvconnect")
    transport = Transport(connection(), DataverseAuth(connection()), gate=ThrottleGate())

    transport.send("GET", "WhoAmI")

    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "GET WhoAmI 200" in text
    assert "token-in-logs" not in text
    assert SECRET not in text
