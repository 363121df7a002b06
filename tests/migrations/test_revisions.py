"""The revisions in connector/migrations agree with connector/tables.py, and a brand-new store is
made at the newest one: what a first run creates is what an upgraded store ends as."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, func, inspect, select, text

from connector import schema, tables
from connector.clock import Clock
from connector.errors import StoreError
from connector.mapping import load_mapping
from connector.settings import Settings
from connector.store import Store, migration_engine, schema_state
from jobs.context import Context
from jobs.runner import run_named
from tests.paths import MAPPINGS
from tests.postgres_server import PostgresServer


def _differences(url: str) -> list[object]:
    """What Alembic's autogenerate would change to make the store's dvc_ tables those of
    connector/tables.py (types included)."""
    engine = create_engine(url)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "include_name": schema.include_name,
                "compare_type": True,
                "version_table": schema.VERSION_TABLE,
            },
        )
        return list(compare_metadata(context, tables.METADATA))


def test_the_revisions_run_from_nothing_make_exactly_the_tables_connector_tables_declares(
    database_url: str,
) -> None:
    engine = migration_engine(database_url)
    with engine.begin() as conn:
        command.upgrade(schema.config(conn), "head")
    engine.dispose()
    assert _differences(database_url) == [], (
        "connector/tables.py changed without a revision: draft one with "
        "`alembic -c connector/migrations/alembic.ini -x url=... revision --autogenerate`"
    )
    assert schema_state(database_url).state == "current"


def test_a_brand_new_store_is_made_at_the_newest_revision_by_its_first_run(
    database_url: str,
) -> None:
    assert schema_state(database_url).state == "empty"
    Store(database_url, load_mapping(MAPPINGS)).prepare()
    state = schema_state(database_url)
    assert (state.state, state.revision, state.release) == (
        "current", schema.HEAD, schema.release()
    )  # fmt: skip
    assert _differences(database_url) == []


def test_the_head_a_first_run_stamps_is_alembics_head() -> None:
    assert schema.script().get_heads() == [schema.HEAD]


def test_a_first_run_makes_alembics_version_table_as_alembic_makes_it(
    database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A new store is stamped without loading Alembic: its version table must be Alembic's own,
    which `db upgrade` and Alembic's command line then read and move on."""
    Store(database_url, load_mapping(MAPPINGS)).prepare()
    by_alembic = f"sqlite:///{tmp_path / 'by-alembic.sqlite3'}"
    if database_url.startswith("postgresql"):
        server: PostgresServer = request.getfixturevalue("postgres")
        by_alembic = server.create_database(f"by_alembic_{uuid.uuid4().hex}")
    engine = create_engine(by_alembic)
    with engine.begin() as conn:
        MigrationContext.configure(conn, opts={"version_table": schema.VERSION_TABLE}).stamp(
            schema.script(), schema.HEAD
        )
    engine.dispose()
    assert _version_table(database_url) == _version_table(by_alembic)
    engine = create_engine(database_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": schema.VERSION_TABLE})
        assert context.get_current_heads() == (schema.HEAD,)
    engine.dispose()


def _version_table(url: str) -> tuple[object, ...]:
    engine = create_engine(url)
    with engine.connect() as conn:
        found = inspect(conn)
        columns = [
            (c["name"], str(c["type"]), c["nullable"])
            for c in found.get_columns(schema.VERSION_TABLE)
        ]
        key = found.get_pk_constraint(schema.VERSION_TABLE)
        rows = conn.execute(text(f"SELECT version_num FROM {schema.VERSION_TABLE}")).all()
    engine.dispose()
    return columns, key["name"], key["constrained_columns"], rows


def test_two_first_runs_at_once_make_the_store_once(database_url: str) -> None:
    mapping = load_mapping(MAPPINGS)
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def first_run() -> None:
        store = Store(database_url, mapping)
        start.wait()
        try:
            store.prepare()
        except BaseException as exc:  # reported below, with the other thread's
            errors.append(exc)

    runs = [threading.Thread(target=first_run) for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert errors == []
    assert schema_state(database_url).state == "current"


def test_a_store_behind_names_the_revision_it_needs_and_the_command_that_moves_it() -> None:
    state = schema.SchemaState("behind", "0001", "0002", "0.1.0")
    refusal = state.refusal("sqlite:///store.sqlite3")
    assert refusal is not None
    assert refusal.exit_code == 3
    assert str(refusal) == (
        "the store sqlite:///store.sqlite3 is at schema revision 0001 (dvconnect 0.1.0), this "
        "release needs 0002: run `dvconnect db upgrade` (it keeps every row)"
    )


def test_the_migrations_ship_with_the_package() -> None:
    shipped = {p.name for p in schema.MIGRATIONS.iterdir()}
    assert {"env.py", "script.py.mako", "versions"} <= shipped
    assert Path(schema.script().get_revision(schema.BASELINE).path).parent.name == "versions"


def test_a_process_started_before_a_newer_release_upgraded_the_store_runs_no_job_on_it(
    database_url: str,
) -> None:
    store = Store(database_url, load_mapping(MAPPINGS))
    store.prepare()
    ctx = Context(settings=Settings(), mapping=store.mapping, store=store, clock=Clock())
    with store.engine.begin() as conn:  # another host ran `db upgrade` of a newer release
        conn.execute(text(f"UPDATE {schema.VERSION_TABLE} SET version_num = '0042'"))
    with pytest.raises(StoreError, match="was made by a newer release of dvconnect"):
        run_named(ctx, "segments")
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(tables.runs)).scalar() == 0
