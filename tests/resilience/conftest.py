"""The org the resilience suite runs against: the shared small emulator, or a large one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from emulator.process import EmulatorProcess
from tests.e2e.conftest import Cli


@pytest.fixture(scope="module")
def large_org(request: pytest.FixtureRequest) -> Iterator[EmulatorProcess | None]:
    if not request.config.getoption("--large"):
        yield None
        return
    with EmulatorProcess(leads=20_000, contacts=10_000) as emulator:
        yield emulator


@pytest.fixture
def org(large_org: EmulatorProcess | None, request: pytest.FixtureRequest) -> EmulatorProcess:
    """A freshly reset org: 300 leads by default, 20,000 with --large."""
    if large_org is None:
        emulator: EmulatorProcess = request.getfixturevalue("fresh_emulator")
        return emulator
    large_org.reset()
    return large_org


@pytest.fixture
def cli(org: EmulatorProcess, tmp_path: Path, request: pytest.FixtureRequest) -> Cli:
    page = "500" if request.config.getoption("--large") else "40"
    return Cli(org, tmp_path, env={"DVCONNECT_PAGE_SIZE": page, "DVCONNECT_MAX_ATTEMPTS": "12"})
