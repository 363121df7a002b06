"""The identity side with the real MSAL client: secrets, certificates, errors, expiry, revocation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msal
import pytest
import requests

from emulator.process import EmulatorProcess
from tests.certificates import self_signed
from tests.emulator.conftest import Api


def msal_app(
    emulator: EmulatorProcess, credential: object, client_id: str | None = None
) -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(
        client_id or emulator.client_id,
        authority=emulator.authority,
        client_credential=credential,
        instance_discovery=False,
    )


@pytest.fixture
def ca_env(fresh_emulator: EmulatorProcess, monkeypatch: pytest.MonkeyPatch) -> EmulatorProcess:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", fresh_emulator.ca_bundle)
    return fresh_emulator


def call(emulator: EmulatorProcess, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.get(
        f"{emulator.api_url}/WhoAmI", headers=headers, verify=emulator.ca_bundle, timeout=30
    )


def test_msal_gets_a_token_with_the_secret_and_caches_it(ca_env: EmulatorProcess) -> None:
    app = msal_app(ca_env, ca_env.client_secret)
    scopes = [f"{ca_env.base_url}/.default"]
    result = app.acquire_token_for_client(scopes=scopes)
    assert result["token_type"] == "Bearer"
    assert result["expires_in"] == 3599
    assert result["token_source"] == "identity_provider"
    assert call(ca_env, result["access_token"]).status_code == 200
    assert app.acquire_token_for_client(scopes=scopes)["token_source"] == "cache"


def test_the_token_endpoint_answers_the_documented_shape(fresh_emulator: EmulatorProcess) -> None:
    response = requests.post(
        fresh_emulator.token_url,
        data={
            "grant_type": "client_credentials",
            "client_id": fresh_emulator.client_id,
            "client_secret": fresh_emulator.client_secret,
            "scope": f"{fresh_emulator.base_url}/.default",
        },
        verify=fresh_emulator.ca_bundle,
        timeout=30,
    )
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["token_type", "expires_in", "ext_expires_in", "access_token"]
    assert body["ext_expires_in"] == body["expires_in"] == 3599
    assert body["access_token"].startswith("eyJ")


def test_a_wrong_secret_is_invalid_client(ca_env: EmulatorProcess) -> None:
    result = msal_app(ca_env, "not-the-secret").acquire_token_for_client(
        scopes=[f"{ca_env.base_url}/.default"]
    )
    assert result["error"] == "invalid_client"
    assert result["error_description"] == "AADSTS7000215: Invalid client secret provided."
    assert result["error_codes"] == [7000215]
    raw = requests.post(
        ca_env.token_url,
        data={
            "grant_type": "client_credentials",
            "client_id": ca_env.client_id,
            "client_secret": "nope",
            "scope": f"{ca_env.base_url}/.default",
        },
        headers={"client-request-id": "c0ffee00-0000-0000-0000-000000000001"},
        timeout=30,
    )
    assert raw.status_code == 401
    assert list(raw.json()) == [
        "error",
        "error_description",
        "error_codes",
        "timestamp",
        "trace_id",
        "correlation_id",
    ]
    assert raw.json()["correlation_id"] == "c0ffee00-0000-0000-0000-000000000001"


def test_an_unknown_client_or_scope_is_refused(ca_env: EmulatorProcess) -> None:
    unknown = msal_app(ca_env, ca_env.client_secret, "someone-else").acquire_token_for_client(
        scopes=[f"{ca_env.base_url}/.default"]
    )
    assert unknown["error"] == "unauthorized_client"
    assert unknown["error_description"].startswith(
        "AADSTS700016: Application with identifier 'someone-else' was not found"
    )
    app = msal_app(ca_env, ca_env.client_secret)
    wrong_resource = app.acquire_token_for_client(scopes=["https://other.example/.default"])
    assert wrong_resource["error"] == "invalid_resource"
    no_default = app.acquire_token_for_client(scopes=[f"{ca_env.base_url}/user.read"])
    assert no_default["error"] == "invalid_scope"


def test_api_calls_without_a_valid_token_get_an_empty_401_with_a_challenge(
    fresh_emulator: EmulatorProcess,
) -> None:
    for token in (None, "forged"):
        response = call(fresh_emulator, token)
        assert response.status_code == 401
        assert response.content == b""
        assert response.headers["WWW-Authenticate"] == (
            f"Bearer authorization_uri={fresh_emulator.authority}/oauth2/authorize, "
            f"resource_id={fresh_emulator.base_url}/"
        )
    entries = fresh_emulator.requests_after(0)
    assert [e["status"] for e in entries] == [401, 401]


def test_tokens_expire_by_the_emulator_clock(web: Api) -> None:
    web.admin("PATCH", "/config", {"token_lifetime": 60})
    token = web.emulator.token()
    assert call(web.emulator, token).status_code == 200
    web.admin("POST", "/clock", {"advance_seconds": 61})
    assert call(web.emulator, token).status_code == 401


def test_revoking_makes_every_issued_token_fail(web: Api) -> None:
    token = web.emulator.token()
    assert web.admin("POST", "/tokens/revoke")["revoked"] >= 1
    assert call(web.emulator, token).status_code == 401
    assert call(web.emulator, web.emulator.token()).status_code == 200


def _certificate(directory: Path, name: str) -> tuple[str, str, str]:
    """A self-signed certificate saved as `<name>.pem`: (key PEM, certificate PEM, thumbprint)."""
    client = self_signed(name)
    cert_pem = client.certificate_pem().decode()
    (directory / f"{name}.pem").write_text(cert_pem)
    return client.key_pem().decode(), cert_pem, client.thumbprint


@dataclass(frozen=True)
class Registered:
    emulator: EmulatorProcess
    key_pem: str
    cert_pem: str
    thumbprint: str


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registered]:
    """An emulator that accepts assertions signed with one certificate (and the secret)."""
    directory = tmp_path_factory.mktemp("certs")
    key_pem, cert_pem, thumbprint = _certificate(directory, "client")
    with EmulatorProcess(leads=5, contacts=5, client_certificate=directory / "client.pem") as emu:
        yield Registered(emu, key_pem, cert_pem, thumbprint)


def test_msal_signs_in_with_the_certificate_both_ways_it_can(
    registered: Registered, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = registered.emulator
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", emulator.ca_bundle)
    scopes = [f"{emulator.base_url}/.default"]
    rs256 = {"private_key": registered.key_pem, "thumbprint": registered.thumbprint}
    result = msal_app(emulator, rs256).acquire_token_for_client(scopes=scopes)
    assert "access_token" in result, result
    assert call(emulator, result["access_token"]).status_code == 200
    ps256 = {"private_key": registered.key_pem, "public_certificate": registered.cert_pem}
    assert "access_token" in msal_app(emulator, ps256).acquire_token_for_client(scopes=scopes)
    secret = msal_app(emulator, emulator.client_secret).acquire_token_for_client(scopes=scopes)
    assert "access_token" in secret


def test_an_assertion_from_another_key_is_refused(
    registered: Registered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = registered.emulator
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", emulator.ca_bundle)
    other_key, other_cert, _ = _certificate(tmp_path, "other")
    scopes = [f"{emulator.base_url}/.default"]
    for credential in (
        {"private_key": other_key, "thumbprint": registered.thumbprint},
        {"private_key": other_key, "public_certificate": other_cert},
    ):
        refused = msal_app(emulator, credential).acquire_token_for_client(scopes=scopes)
        assert refused["error"] == "invalid_client"
        assert refused["error_codes"] == [700027]
