"""The bad-input corpus: malformed settings, mappings and stores get their exact error and exit
code, and nothing is written (no store is created, Dataverse is not called).

The CLI runs in this process (`jobs.cli.main`) with the environment and working folder of the
case: the same code as the console script, without a Python start-up per case.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.inputs.conftest import Cli

HERE = Path(__file__).parent


def _cases(name: str) -> list[Any]:
    cases = yaml.safe_load((HERE / name).read_text())
    return [pytest.param(case, id=case["name"]) for case in cases]


def _write(path: Path, case: dict[str, Any]) -> None:
    """Change one file as a case says: delete it, make it a folder, or write new content."""
    if case.get("delete"):
        path.unlink()
    elif case.get("directory"):
        if path.exists():
            path.unlink()
        path.mkdir()
    elif "whole" in case:
        path.write_text(case["whole"])
    elif "latin1" in case:
        path.write_bytes(case["latin1"].encode("latin-1"))
    else:
        old, new = case["replace"]
        text = path.read_text()
        assert old in text, f"corpus case out of date: {old!r} not in {path.name}"
        path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("case", _cases("settings.yaml"))
def test_malformed_settings(workdir: Path, dvconnect: Cli, case: dict[str, Any]) -> None:
    if "dotenv" in case:
        (workdir / ".env").write_bytes(case["dotenv"].encode("latin-1"))
    code, _, err = dvconnect("run", "sync", **case["env"])
    assert code == case.get("exit", 2), err
    assert err.strip().splitlines()[-1] == f"dvconnect: {case['error']}"
    assert not (workdir / "store.sqlite3").exists()


@pytest.mark.parametrize("case", _cases("mappings.yaml"))
def test_malformed_mappings(workdir: Path, dvconnect: Cli, case: dict[str, Any]) -> None:
    _write(workdir / "mappings" / case["file"], case)
    for args in (["check", "--offline"], ["run", "sync"]):
        code, _, err = dvconnect(*args)
        assert code == 2, err
        reported = Path("mappings") / case.get("reported_in", case["file"])
        assert err.strip() == f"dvconnect: {reported}: {case['error']}"
    assert not (workdir / "store.sqlite3").exists()


@pytest.mark.parametrize("case", _cases("segments.yaml"))
def test_malformed_segments(workdir: Path, dvconnect: Cli, case: dict[str, Any]) -> None:
    target = workdir / "mappings" / "segments" / "bad.yaml"
    if "text" in case:
        target.write_text(case["text"])
    else:
        _write(target, case)
    code, _, err = dvconnect("check", "--offline")
    assert code == 2, err
    reported = Path("mappings") / "segments" / case.get("file", "bad.yaml")
    assert f"error: {reported}: {case['error']}" in err.splitlines()
    assert not (workdir / "store.sqlite3").exists()


@pytest.mark.parametrize("case", _cases("journeys.yaml"))
def test_malformed_journeys(workdir: Path, dvconnect: Cli, case: dict[str, Any]) -> None:
    path = workdir / "mappings" / "journeys" / "conference-follow-up.yaml"
    _write(path, case)
    code, _, err = dvconnect("check", "--offline")
    assert code == 2, err
    reported = Path("mappings") / "journeys" / "conference-follow-up.yaml"
    assert f"error: {reported}: {case['error']}" in err.splitlines()
    code, _, err = dvconnect("journeys", "validate", "conference-follow-up")
    assert code == 2, err
    assert not (workdir / "store.sqlite3").exists()


@pytest.mark.parametrize("case", _cases("commands.yaml"))
def test_bad_command_lines(workdir: Path, dvconnect: Cli, case: dict[str, Any]) -> None:
    code, out, err = dvconnect(*case["args"])
    assert code == 2, err
    assert err.strip().splitlines()[-1] == f"dvconnect: {case['error']}"
    assert out == ""
    assert not (workdir / "store.sqlite3").exists()


@pytest.mark.parametrize("case", _cases("scoring.yaml"))
def test_malformed_scoring_models(workdir: Path, dvconnect: Cli, case: dict[str, Any]) -> None:
    target = workdir / "mappings" / "scoring" / case.get("file", "contoso-interest.yaml")
    _write(target, case)
    code, _, err = dvconnect("check", "--offline")
    assert code == 2, err
    reported = Path("mappings") / "scoring" / target.name
    assert f"error: {reported}: {case['error']}" in err.splitlines()
    assert not (workdir / "store.sqlite3").exists()
