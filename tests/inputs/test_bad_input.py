"""The bad-input corpus: malformed settings and mappings get their exact error, exit 2, and
nothing is written (no store is created, Dataverse is not called)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import DVCONNECT, ROOT

HERE = Path(__file__).parent
VALID = {
    "DVCONNECT_DATAVERSE_URL": "https://contoso.crm.dynamics.com",
    "DVCONNECT_TENANT_ID": "00000000-0000-0000-0000-0000000000aa",
    "DVCONNECT_CLIENT_ID": "00000000-0000-0000-0000-0000000000bb",
    "DVCONNECT_CLIENT_SECRET": "valid-looking-secret",
    "DVCONNECT_DATABASE_URL": "sqlite:///store.sqlite3",
    "DVCONNECT_MAPPINGS_DIR": "mappings",
    "DVCONNECT_MAX_ATTEMPTS": "1",
}


def _cases(name: str) -> list[Any]:
    cases = yaml.safe_load((HERE / name).read_text())
    return [pytest.param(case, id=case["name"]) for case in cases]


def _dvconnect(workdir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DVCONNECT_")}
    return subprocess.run(
        [DVCONNECT, *args], cwd=workdir, env={**base, **VALID, **env},
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "mappings", tmp_path / "mappings")
    (tmp_path / "client.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nnot a key\n-----END CERTIFICATE-----\n"
    )
    return tmp_path


@pytest.mark.parametrize("case", _cases("settings.yaml"))
def test_malformed_settings(workdir: Path, case: dict[str, Any]) -> None:
    result = _dvconnect(workdir, case["env"], "run", "sync")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"dvconnect: {case['error']}"
    assert not (workdir / "store.sqlite3").exists()


@pytest.mark.parametrize("case", _cases("mappings.yaml"))
def test_malformed_mappings(workdir: Path, case: dict[str, Any]) -> None:
    path = workdir / "mappings" / case["file"]
    if case.get("delete"):
        path.unlink()
    elif "whole" in case:
        path.write_text(case["whole"])
    else:
        old, new = case["replace"]
        text = path.read_text()
        assert old in text, f"corpus case out of date: {old!r} not in {case['file']}"
        path.write_text(text.replace(old, new, 1))
    for args in (["check", "--offline"], ["run", "sync"]):
        result = _dvconnect(workdir, {}, *args)
        assert result.returncode == 2, result.stderr
        reported = Path("mappings") / case.get("reported_in", case["file"])
        assert result.stderr.strip() == f"dvconnect: {reported}: {case['error']}"
    assert not (workdir / "store.sqlite3").exists()


@pytest.mark.parametrize("case", _cases("segments.yaml"))
def test_malformed_segments(workdir: Path, case: dict[str, Any]) -> None:
    (workdir / "mappings" / "segments" / "bad.yaml").write_text(case["text"])
    result = _dvconnect(workdir, {}, "check", "--offline")
    assert result.returncode == 2, result.stderr
    reported = Path("mappings") / "segments" / case.get("file", "bad.yaml")
    assert f"error: {reported}: {case['error']}" in result.stderr.splitlines()
    assert not (workdir / "store.sqlite3").exists()
