"""Shared fixtures about the Dataverse emulator (used by tests/emulator and tests/e2e).

* `emulator` (session): one emulator process, 300 leads / 150 contacts, seed 42.
* `fresh_emulator` (function): the same process, reset to its seed data first (tombstones,
  request log, faults, clock and configuration cleared; tokens stay valid).
* `api` (function): a `requests.Session` for the Web API of `fresh_emulator`, with a bearer token
  and the CA bundle set.
* `postgres` (session): one PostgreSQL server started by the tests themselves, for the unit
  tests' stores and the migration tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import requests

from emulator.process import EmulatorProcess
from tests.postgres_server import PostgresServer, available

SEED_LEADS = 300
SEED_CONTACTS = 150


@pytest.fixture(scope="session")
def emulator() -> Iterator[EmulatorProcess]:
    process = EmulatorProcess(seed=42, leads=SEED_LEADS, contacts=SEED_CONTACTS)
    with process:
        yield process


@pytest.fixture
def fresh_emulator(emulator: EmulatorProcess) -> EmulatorProcess:
    emulator.reset()
    return emulator


@pytest.fixture
def api(fresh_emulator: EmulatorProcess) -> Iterator[requests.Session]:
    session = requests.Session()
    session.verify = fresh_emulator.ca_bundle
    session.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would win over verify
    session.headers.update(
        {
            "Authorization": f"Bearer {fresh_emulator.token()}",
            "Accept": "application/json",
            "OData-MaxVersion": "4.0",
            "OData-Version": "4.0",
        }
    )
    with session:
        yield session


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session, started by the tests themselves."""
    if not available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries are missing (.ci/run installs them)")
        pytest.skip("PostgreSQL server binaries are not installed")
    server = PostgresServer().start()
    yield server
    server.stop()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--large",
        action="store_true",
        help="resilience suite on a large org (20,000 leads) instead of the small default",
    )
