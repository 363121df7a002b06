"""No command ever shows the client secret or the certificate password: not in stdout, stderr,
logs (at DEBUG), JSON reports or the store. The certificate flow itself runs for real here."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from emulator.process import EmulatorProcess
from tests.certificates import self_signed
from tests.e2e.conftest import Cli

SECRET = "Kn0wn-Cl1ent-S3cret-do-not-print"
PASSWORD = "Kn0wn-Cert-Passw0rd-do-not-print"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(key+certificate PEM, encrypted with PASSWORD; public certificate PEM; SHA-1 thumbprint)."""
    folder = tmp_path_factory.mktemp("cert")
    client = self_signed()
    combined, public = folder / "client.pem", folder / "client-cert.pem"
    combined.write_bytes(client.key_pem(PASSWORD) + client.certificate_pem())
    public.write_bytes(client.certificate_pem())
    return combined, public, client.thumbprint


@pytest.fixture(scope="module")
def secret_emulator(certificate: tuple[Path, Path, str]) -> Iterator[EmulatorProcess]:
    with EmulatorProcess(
        leads=120, contacts=60, client_secret=SECRET, client_certificate=certificate[1]
    ) as emulator:
        yield emulator


@pytest.fixture
def cli(secret_emulator: EmulatorProcess, tmp_path: Path) -> Cli:
    secret_emulator.reset()
    return Cli(secret_emulator, tmp_path, env={"DVCONNECT_LOG_LEVEL": "DEBUG"})


def assert_nothing_shows(cli: Cli, outputs: list[str]) -> None:
    everything = "\n".join(outputs)
    for secret in (SECRET, PASSWORD):
        assert secret not in everything
        if cli.database.exists():
            assert secret.encode() not in cli.database.read_bytes()


def test_no_command_shows_the_client_secret(cli: Cli) -> None:
    outputs = []
    for args in (
        ["check"],
        ["check", "--offline"],
        ["run", "sync"],
        ["run", "all", "--json"],
        ["run", "sync", "--dry-run", "--json"],
        ["run", "all", "--dry-run"],
        ["run", "link-orphans", "--json"],
        ["run", "promote-contacts"],
        ["run", "segments"],
        ["segments", "list"],
        ["segments", "preview", "contoso-decision-makers", "--sql"],
        ["segments", "history", "contoso-decision-makers"],
        ["status"],
        ["status", "--json"],
        ["state", "reset", "lead"],
    ):
        result = cli.run(*args)
        assert result.returncode == 0, (args, result.stderr)
        outputs += [result.stdout, result.stderr]
    failed = cli.run("run", "sync", DVCONNECT_CLIENT_SECRET=SECRET + "-wrong")
    assert failed.returncode == 3
    outputs += [failed.stdout, failed.stderr]
    scheduler = cli.popen("schedule", "--now")
    cli.wait_for(
        lambda: (
            bool(cli.store().recent_runs(1)) and cli.store().recent_runs(1)[0].outcome != "running"
        )
    )
    scheduler.send_signal(signal.SIGTERM)
    outputs += list(scheduler.communicate(timeout=30))
    assert "dvconnect.http: GET leads 200" in "".join(outputs)  # the request log was captured
    assert_nothing_shows(cli, outputs)


def test_a_certificate_credential_syncs_and_its_password_never_shows(
    cli: Cli, certificate: tuple[Path, Path, str]
) -> None:
    combined, _, thumbprint = certificate
    cert_env = {
        "DVCONNECT_CLIENT_SECRET": "",
        "DVCONNECT_CLIENT_CERTIFICATE_PATH": str(combined),
        "DVCONNECT_CLIENT_CERTIFICATE_THUMBPRINT": thumbprint,
        "DVCONNECT_CLIENT_CERTIFICATE_PASSWORD": PASSWORD,
    }
    result = cli.run("run", "sync", "--json", **cert_env)
    assert result.returncode == 0, result.stderr
    cli.assert_store_matches_org()
    wrong = cli.run(
        "run", "sync", **{**cert_env, "DVCONNECT_CLIENT_CERTIFICATE_PASSWORD": PASSWORD[::-1]}
    )
    assert wrong.returncode == 2
    assert "DVCONNECT_CLIENT_CERTIFICATE_PATH" in wrong.stderr
    assert_nothing_shows(cli, [result.stdout, result.stderr, wrong.stdout, wrong.stderr])
