"""The bad-input corpus' fixtures: the CLI in this process, in a folder of its own."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from jobs.cli import main
from tests.paths import MAPPINGS

VALID = {
    "DVCONNECT_DATAVERSE_URL": "https://contoso.crm.dynamics.com",
    "DVCONNECT_TENANT_ID": "00000000-0000-0000-0000-0000000000aa",
    "DVCONNECT_CLIENT_ID": "00000000-0000-0000-0000-0000000000bb",
    "DVCONNECT_CLIENT_SECRET": "valid-looking-secret",
    "DVCONNECT_DATABASE_URL": "sqlite:///store.sqlite3",
    "DVCONNECT_MAPPINGS_DIR": "mappings",
    "DVCONNECT_MAX_ATTEMPTS": "1",
}
Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copytree(MAPPINGS, tmp_path / "mappings")
    (tmp_path / "client.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nnot a key\n-----END CERTIFICATE-----\n"
    )
    return tmp_path


@pytest.fixture
def dvconnect(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Cli:
    """`dvconnect ARGS` in `workdir` with the valid settings plus `env`: (code, stdout, stderr)."""

    def run(*args: str, **env: str) -> tuple[int, str, str]:
        monkeypatch.chdir(workdir)
        for name in [*VALID, "DVCONNECT_NOW", "REQUESTS_CA_BUNDLE"]:
            monkeypatch.delenv(name, raising=False)
        for name, value in {**VALID, **env}.items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run
