"""Settings: each missing or malformed variable is named, secrets never shown."""

from __future__ import annotations

import pytest

from connector.errors import ConfigError
from connector.settings import load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("DVCONNECT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


def _full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVCONNECT_DATAVERSE_URL", "https://org.crm4.dynamics.com/")
    monkeypatch.setenv("DVCONNECT_TENANT_ID", "contoso.onmicrosoft.com")
    monkeypatch.setenv("DVCONNECT_CLIENT_ID", "11111111-1111-1111-1111-111111111111")
    monkeypatch.setenv("DVCONNECT_CLIENT_SECRET", "s3cr3t-value")


def test_connection_derives_api_url_scope_and_default_authority(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _full(monkeypatch)
    connection = load_settings().connection()
    assert connection.api_url == "https://org.crm4.dynamics.com/api/data/v9.2/"
    assert connection.scope == "https://org.crm4.dynamics.com/.default"
    assert connection.authority == "https://login.microsoftonline.com/contoso.onmicrosoft.com"
    assert "s3cr3t-value" not in repr(load_settings())


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("DVCONNECT_DATAVERSE_URL", "DVCONNECT_DATAVERSE_URL is not set"),
        ("DVCONNECT_TENANT_ID", "DVCONNECT_TENANT_ID is not set"),
        ("DVCONNECT_CLIENT_ID", "DVCONNECT_CLIENT_ID is not set"),
        (
            "DVCONNECT_CLIENT_SECRET",
            "DVCONNECT_CLIENT_SECRET is not set (or set DVCONNECT_CLIENT_CERTIFICATE_PATH and DVCONNECT_CLIENT_CERTIFICATE_THUMBPRINT)",
        ),
    ],
)
def test_missing_connection_values_are_named(
    monkeypatch: pytest.MonkeyPatch, missing: str, message: str
) -> None:
    _full(monkeypatch)
    monkeypatch.delenv(missing)
    with pytest.raises(ConfigError) as caught:
        load_settings().connection()
    assert str(caught.value) == message
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "DVCONNECT_DATAVERSE_URL",
            "http://org.crm.dynamics.com",
            "DVCONNECT_DATAVERSE_URL: must be an https:// URL, e.g. https://org.crm.dynamics.com",
        ),
        (
            "DVCONNECT_DATAVERSE_URL",
            "https://org.crm.dynamics.com/api/data/v9.2",
            "DVCONNECT_DATAVERSE_URL: must be the environment root, without /api/data/v9.2",
        ),
        (
            "DVCONNECT_PAGE_SIZE",
            "9000",
            "DVCONNECT_PAGE_SIZE: Input should be less than or equal to 5000",
        ),
        (
            "DVCONNECT_PAGE_SIZE",
            "many",
            "DVCONNECT_PAGE_SIZE: Input should be a valid integer, unable to parse string as an integer",
        ),
        ("DVCONNECT_LOG_FORMAT", "xml", "DVCONNECT_LOG_FORMAT: Input should be 'text' or 'json'"),
    ],
)
def test_malformed_values_are_named(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == message


def test_certificate_needs_its_thumbprint_and_an_existing_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    _full(monkeypatch)
    monkeypatch.delenv("DVCONNECT_CLIENT_SECRET")
    monkeypatch.setenv("DVCONNECT_CLIENT_CERTIFICATE_PATH", "missing.pem")
    with pytest.raises(ConfigError, match="DVCONNECT_CLIENT_CERTIFICATE_THUMBPRINT is not set"):
        load_settings().connection()
    monkeypatch.setenv("DVCONNECT_CLIENT_CERTIFICATE_THUMBPRINT", "AB12")
    with pytest.raises(
        ConfigError, match=r"DVCONNECT_CLIENT_CERTIFICATE_PATH: no such file: missing\.pem"
    ):
        load_settings().connection()


def test_empty_values_in_a_copied_env_file_count_as_unset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    example = __import__("pathlib").Path(__file__).resolve().parents[2] / ".env.example"
    __import__("shutil").copy(example, ".env")
    settings = load_settings()
    assert settings.authority is None
    assert settings.client_secret is None
    with pytest.raises(ConfigError, match="DVCONNECT_CLIENT_SECRET is not set"):
        settings.connection()


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, 3600), ("90", 90), ("2.5", 2.5), ("01:30:00", 5400), ("PT2H", 7200), ("0", 0)],
)
def test_the_journey_grace_is_read_as_seconds_a_clock_time_or_an_iso_duration(
    monkeypatch: pytest.MonkeyPatch, value: str | None, seconds: float
) -> None:
    if value is not None:
        monkeypatch.setenv("DVCONNECT_JOURNEY_GRACE", value)
    assert load_settings().journey_grace.total_seconds() == seconds
