"""The migration tests' stores: a SQLite file, or a fresh database on the session's PostgreSQL."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from tests.postgres_server import PostgresServer

_names = itertools.count()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database for a store."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite3'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"migrations_{next(_names)}")
