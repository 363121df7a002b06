"""Settings: the only reader of the environment (`DVCONNECT_*` variables and the `.env` file).

Commands that do not talk to Dataverse (`check --offline`, `emulator`) load settings without the
connection values; `Settings.connection()` demands them and names the first missing variable.
Secrets are `SecretStr`: their value is read only where a credential is built. The standard
`REQUESTS_CA_BUNDLE` (no prefix) is read here too, from the environment or the `.env` file.
A `.env` file that is not UTF-8 is a configuration error like any bad value.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, TypeAdapter, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from connector.clock import Clock
from connector.errors import ConfigError

ENV_PREFIX = "DVCONNECT_"
API_PATH = "/api/data/v9.2/"
MAX_PAGE_SIZE = 5000
GRACE_FORMS = "must be a duration in seconds, HH:MM:SS or ISO-8601, e.g. 3600, 01:00:00 or PT1H"


class Settings(BaseSettings):
    """Every setting, with its default; `.env.example` documents each one."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
    )

    dataverse_url: str | None = None
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_certificate_path: Path | None = None
    client_certificate_thumbprint: str | None = None
    client_certificate_password: SecretStr | None = None
    authority: str | None = None
    database_url: str = "sqlite:///var/dvconnect.sqlite3"
    mappings_dir: Path = Path("mappings")
    page_size: int = Field(default=MAX_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    http_timeout: float = Field(default=130.0, gt=0)
    max_attempts: int = Field(default=8, ge=1, le=50)
    retry_backoff: float = Field(default=1.0, gt=0, le=60)  # the first backoff wait, seconds
    journey_grace: timedelta = timedelta(hours=1)  # how late a due member may be before it is
    # reported as overdue (seconds, `HH:MM:SS` or ISO-8601 `PT1H`)
    metrics_port: int | None = Field(default=None, ge=1, le=65535)  # /metrics, /healthz; None: off
    metrics_host: str = "127.0.0.1"  # the address they listen on (0.0.0.0: every interface)
    health_failures: int = Field(default=3, ge=1)  # this many failed runs in a row: unhealthy
    health_max_run: timedelta = timedelta(hours=2)  # a run still going after this long is stuck
    # journey members decided per transaction: the unit instances on PostgreSQL claim
    journey_chunk: int | None = Field(default=None, ge=1, le=10_000)  # None: 1000
    now: datetime | None = None  # for tests and rehearsals only: every command's clock
    requests_ca_bundle: Path | None = Field(
        default=None, validation_alias=AliasChoices("REQUESTS_CA_BUNDLE")
    )

    @field_validator("now")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("must give its offset, e.g. 2027-01-04T09:00:00Z or +01:00")
        return value.astimezone(UTC).replace(microsecond=0)

    @field_validator("journey_grace", "health_max_run", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        """Seconds, `HH:MM:SS` or ISO-8601 (pydantic alone reads no plain number from text)."""
        if not isinstance(value, str):
            return value
        try:
            return float(value)
        except ValueError:
            pass
        try:
            return TypeAdapter(timedelta).validate_python(value)
        except ValidationError:
            raise ValueError(GRACE_FORMS) from None

    @field_validator("journey_grace", "health_max_run")
    @classmethod
    def _grace(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError(f"must not be negative: {GRACE_FORMS.removeprefix('must be ')}")
        return value

    @field_validator("requests_ca_bundle")
    @classmethod
    def _bundle(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @property
    def clock(self) -> Clock:
        """The one clock of this process (fixed at `now` when set)."""
        return Clock(self.now)

    @field_validator("dataverse_url", "authority")
    @classmethod
    def _https_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme != "https" or not parts.netloc:
            raise ValueError("must be an https:// URL, e.g. https://org.crm.dynamics.com")
        return value.strip().rstrip("/")

    @field_validator("dataverse_url")
    @classmethod
    def _org_root(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).path not in ("", "/"):
            raise ValueError("must be the environment root, without /api/data/v9.2")
        return value

    def connection(self) -> Connection:
        """The values needed to reach Dataverse; ConfigError names the first missing one."""
        for name in ("dataverse_url", "tenant_id", "client_id"):
            if not getattr(self, name):
                raise ConfigError(f"{ENV_PREFIX}{name.upper()} is not set")
        if self.client_secret is None and self.client_certificate_path is None:
            raise ConfigError(
                f"{ENV_PREFIX}CLIENT_SECRET is not set "
                f"(or set {ENV_PREFIX}CLIENT_CERTIFICATE_PATH and "
                f"{ENV_PREFIX}CLIENT_CERTIFICATE_THUMBPRINT)"
            )
        if self.client_certificate_path is not None:
            if not self.client_certificate_thumbprint:
                raise ConfigError(
                    f"{ENV_PREFIX}CLIENT_CERTIFICATE_THUMBPRINT is not set "
                    f"(needed with {ENV_PREFIX}CLIENT_CERTIFICATE_PATH)"
                )
            if not self.client_certificate_path.is_file():
                raise ConfigError(
                    f"{ENV_PREFIX}CLIENT_CERTIFICATE_PATH: no such file: "
                    f"{self.client_certificate_path}"
                )
        assert self.dataverse_url
        assert self.tenant_id
        assert self.client_id
        return Connection(
            dataverse_url=self.dataverse_url,
            tenant_id=self.tenant_id,
            client_id=self.client_id,
            client_secret=self.client_secret,
            certificate_path=self.client_certificate_path,
            certificate_thumbprint=self.client_certificate_thumbprint,
            certificate_password=self.client_certificate_password,
            authority=self.authority or f"https://login.microsoftonline.com/{self.tenant_id}",
            timeout=self.http_timeout,
            max_attempts=self.max_attempts,
            retry_backoff=self.retry_backoff,
            ca_bundle=self.requests_ca_bundle,
        )


@dataclass(frozen=True)
class Connection:
    """What it takes to reach one Dataverse environment."""

    dataverse_url: str
    tenant_id: str
    client_id: str
    client_secret: SecretStr | None
    certificate_path: Path | None
    certificate_thumbprint: str | None
    certificate_password: SecretStr | None
    authority: str
    timeout: float
    max_attempts: int
    retry_backoff: float = 1.0  # the first wait of the exponential backoff, in seconds
    ca_bundle: Path | None = None  # REQUESTS_CA_BUNDLE; None: requests' own default

    @property
    def api_url(self) -> str:
        """The Web API root, e.g. https://org.crm.dynamics.com/api/data/v9.2/."""
        return self.dataverse_url + API_PATH

    @property
    def scope(self) -> str:
        """The OAuth scope: the environment URL plus /.default (never the API path)."""
        return self.dataverse_url + "/.default"


def load_settings() -> Settings:
    """Read the settings; a malformed value raises ConfigError naming its variable."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        name = "REQUESTS_CA_BUNDLE" if field == "REQUESTS_CA_BUNDLE" else ENV_PREFIX + field.upper()
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{name}: {message}") from None
    except UnicodeDecodeError:
        raise ConfigError(".env: not UTF-8 text (save the file as UTF-8)") from None
