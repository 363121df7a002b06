"""The local store: SQLAlchemy Core over SQLite (default) or PostgreSQL (by URL).

One table per synced Dataverse table, named by its logical name, one column per mapped attribute
under its logical name, so the data can be queried with plain SQL. Datetimes are kept as the
Web API writes them (ISO-8601 UTC text, `2024-06-12T14:13:17Z`), which sorts and compares
correctly on both databases. Each data table has one extra column, `dvc_generation`: the full
sync that last saw the row, used to remove rows deleted while change tracking could not say so.

The connector's own tables start with `dvc_`: `dvc_sync_state` (one cursor per table, saved in
the same transaction as the page it follows), `dvc_runs` (one record per job run),
`dvc_leases` (who is running what: two syncs on one store would undo each other's work), and
for segments `dvc_segment_members` (current members and their matching leads),
`dvc_segment_events` (who entered or exited, when) and `dvc_segment_evaluations` (size and
changes of every evaluation).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    Text,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, OperationalError
from sqlalchemy.types import TypeEngine

from connector.errors import ConfigError, SyncError
from connector.mapping import ColumnType, Mapping, TableMapping

GENERATION_COLUMN = "dvc_generation"
LEASE_SECONDS = 600  # renewed with every page; a holder silent this long is taken over
_DELETE_CHUNK = 500

_TYPES: dict[ColumnType, TypeEngine[Any]] = {
    "guid": String(36),
    "string": Text(),
    "integer": Integer(),
    "bigint": BigInteger(),
    "number": Float(),
    "boolean": Boolean(),
    "datetime": String(20),
    "date": String(10),
}


def utc_now() -> str:
    """The current time as the store writes it: ISO-8601 UTC with `Z`."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class SyncState:
    """Where the sync of one table stands; saved with the page it follows.

    `phase` is `full` while a full read is under way (its rows carry `generation`), `incremental`
    while a delta or watermark read is under way, `idle` between runs. `next_link` is the page
    to read next when a run stopped mid-way; `mode` is how the table is followed once the full
    read is done: `delta` (change tracking, `delta_link`) or `watermark` (`modifiedon`).
    """

    table_name: str
    phase: str = "idle"
    mode: str | None = None
    next_link: str | None = None
    delta_link: str | None = None
    watermark: str | None = None
    generation: int = 0
    last_full_sync_at: str | None = None
    last_sync_at: str | None = None

    def start_full(self) -> SyncState:
        """A new full read: a new generation, every cursor forgotten."""
        return SyncState(
            table_name=self.table_name,
            phase="full",
            generation=self.generation + 1,
            last_full_sync_at=self.last_full_sync_at,
            last_sync_at=self.last_sync_at,
        )


@dataclass(frozen=True)
class RunRecord:
    """One job run as `status` and `report` show it."""

    run_id: int
    job: str
    started_at: str
    finished_at: str | None
    outcome: str
    counts: dict[str, Any]
    requests: int
    error: str | None


class Store:
    """The one SQLAlchemy engine, the data tables built from the mapping and the dvc_ tables."""

    def __init__(self, url: str, mapping: Mapping) -> None:
        self.engine = _create_engine(url)
        self.mapping = mapping
        self.metadata = MetaData()
        self.tables: dict[str, Table] = {
            name: _data_table(self.metadata, table) for name, table in mapping.tables.items()
        }
        self.sync_state = Table(
            "dvc_sync_state",
            self.metadata,
            Column("table_name", String(128), primary_key=True),
            Column("phase", String(16), nullable=False),
            Column("mode", String(16)),
            Column("next_link", Text()),
            Column("delta_link", Text()),
            Column("watermark", String(20)),
            Column("generation", Integer(), nullable=False),
            Column("last_full_sync_at", String(20)),
            Column("last_sync_at", String(20)),
        )
        self.runs = Table(
            "dvc_runs",
            self.metadata,
            Column("run_id", Integer(), primary_key=True, autoincrement=True),
            Column("job", String(64), nullable=False),
            Column("started_at", String(20), nullable=False),
            Column("finished_at", String(20)),
            Column("outcome", String(16), nullable=False),
            Column("counts", Text(), nullable=False),
            Column("requests", Integer(), nullable=False),
            Column("error", Text()),
        )
        self.leases = Table(
            "dvc_leases",
            self.metadata,
            Column("name", String(64), primary_key=True),
            Column("host", String(255), nullable=False),
            Column("pid", Integer(), nullable=False),
            Column("expires_at", String(20), nullable=False),
        )
        self.segment_members = Table(
            "dvc_segment_members",
            self.metadata,
            Column("segment", String(64), primary_key=True),
            Column("contactid", String(36), primary_key=True),
            Column("lead_ids", Text()),  # the matching leads, comma-separated
            Column("since", String(20), nullable=False),
        )
        self.segment_events = Table(
            "dvc_segment_events",
            self.metadata,
            Column("event_id", Integer(), primary_key=True, autoincrement=True),
            Column("segment", String(64), nullable=False, index=True),
            Column("contactid", String(36), nullable=False),
            Column("event", String(8), nullable=False),  # "entered" or "exited"
            Column("at", String(20), nullable=False),
        )
        self.segment_evaluations = Table(
            "dvc_segment_evaluations",
            self.metadata,
            Column("evaluation_id", Integer(), primary_key=True, autoincrement=True),
            Column("segment", String(64), nullable=False, index=True),
            Column("evaluated_at", String(20), nullable=False),
            Column("size", Integer(), nullable=False),
            Column("entered", Integer(), nullable=False),
            Column("exited", Integer(), nullable=False),
            Column("seconds", Float(), nullable=False),
        )
        self.segment_scratch = Table(  # one evaluation's result, before it is compared
            "dvc_segment_scratch",
            self.metadata,
            Column("segment", String(64), primary_key=True),
            Column("contactid", String(36), primary_key=True),
            Column("lead_ids", Text()),
        )
        self._upserts = {name: _upsert(self.engine, table) for name, table in self.tables.items()}

    # -- schema -------------------------------------------------------------------------------

    def create(self) -> None:
        """Create missing tables and add columns the mapping gained; such tables resync fully."""
        url = self.engine.url
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.engine.begin() as conn:
                self.metadata.create_all(conn)
                existing = inspect(conn)
                for name, table in self.tables.items():
                    present = {c["name"] for c in existing.get_columns(name)}
                    missing = [c for c in table.columns if c.name not in present]
                    for column in missing:
                        ddl = column.type.compile(dialect=self.engine.dialect)
                        conn.execute(text(f'ALTER TABLE "{name}" ADD COLUMN "{column.name}" {ddl}'))
                    if missing:
                        self.save_state(conn, self._load_state(conn, name).start_full())
        except OperationalError as exc:
            raise ConfigError(
                f"DVCONNECT_DATABASE_URL: cannot open the store: {exc.orig}"
            ) from None

    # -- sync ---------------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction: a page, its deletions and the state that follows it commit together."""
        with self.engine.begin() as conn:
            yield conn

    def load_state(self, table_name: str) -> SyncState:
        with self.engine.connect() as conn:
            return self._load_state(conn, table_name)

    def _load_state(self, conn: Connection, table_name: str) -> SyncState:
        row = (
            conn.execute(select(self.sync_state).where(self.sync_state.c.table_name == table_name))
            .mappings()
            .first()
        )
        return SyncState(**row) if row else SyncState(table_name=table_name)

    def save_state(self, conn: Connection, state: SyncState) -> None:
        values = asdict(state)
        updated = conn.execute(
            self.sync_state.update()
            .where(self.sync_state.c.table_name == state.table_name)
            .values(values)
        )
        if updated.rowcount == 0:
            conn.execute(self.sync_state.insert().values(values))

    def reset_state(self, table_name: str) -> None:
        """Forget every cursor of a table: its next sync is a full one (with the deletion sweep)."""
        if table_name not in self.tables:
            known = ", ".join(sorted(self.tables))
            raise ConfigError(f"unknown table {table_name!r}: the mapping has {known}")
        with self.engine.begin() as conn:
            self.save_state(conn, self._load_state(conn, table_name).start_full())

    def upsert_rows(
        self, conn: Connection, table_name: str, rows: Sequence[dict[str, Any]], generation: int
    ) -> int:
        """Insert or update rows (Web API JSON objects) by primary key; returns how many.

        The statement is compiled once per table and its rows go to the driver as positional
        tuples: per-row work stays in C, which is what keeps a full read fast.
        """
        if not rows:
            return 0
        upsert = self._upserts[table_name]
        try:
            params = [(*upsert.pick(row), generation) for row in rows]
        except KeyError:  # a row without some selected column: take it as null
            params = [(*(row.get(c) for c in upsert.columns), generation) for row in rows]
        conn.exec_driver_sql(upsert.sql, params)
        return len(params)

    def delete_rows(self, conn: Connection, table_name: str, ids: Sequence[str]) -> int:
        """Delete rows by primary key; returns how many existed."""
        table = self.tables[table_name]
        key = table.c[self.mapping.tables[table_name].primary_key]
        deleted = 0
        for start in range(0, len(ids), _DELETE_CHUNK):
            chunk = list(ids[start : start + _DELETE_CHUNK])
            deleted += conn.execute(delete(table).where(key.in_(chunk))).rowcount
        return deleted

    def sweep(self, conn: Connection, table_name: str, generation: int) -> int:
        """After a full read: delete rows that read did not see (deleted in Dataverse)."""
        table = self.tables[table_name]
        column = table.c[GENERATION_COLUMN]
        stale = (column < generation) | column.is_(None)
        return int(conn.execute(delete(table).where(stale)).rowcount)

    def set_column(
        self, conn: Connection, table_name: str, column: str, values: Sequence[tuple[str, Any]]
    ) -> None:
        """Set one column of rows given as (primary key, value) pairs, e.g. after a write-back."""
        if not values:
            return
        table = self.tables[table_name]
        key = table.c[self.mapping.tables[table_name].primary_key]
        statement = (
            table.update()
            .where(key == bindparam("dvc_key"))
            .values({column: bindparam("dvc_value")})
        )
        conn.execute(statement, [{"dvc_key": k, "dvc_value": v} for k, v in values])

    def stream(self, statement: Select[Any], batch: int = 1000) -> Iterator[dict[str, Any]]:
        """The rows of a query, fetched `batch` at a time: memory stays flat on any table size."""
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=batch).execute(statement)
            for row in result.mappings():
                yield dict(row)

    # -- leases -------------------------------------------------------------------------------

    @contextmanager
    def lease(self, name: str, seconds: int = LEASE_SECONDS) -> Iterator[None]:
        """Hold the lease `name` while the block runs; SyncError when another process holds it.

        A lease is taken over when it has expired, or when the process holding it on this host
        is gone (a kill -9 must not block the re-run). Holders renew it with `renew_lease` in
        each page's transaction; a renewal that finds the lease taken over aborts that page.
        """
        mine = {"name": name, "host": socket.gethostname(), "pid": os.getpid()}
        with self.engine.begin() as conn:
            held = conn.execute(select(self.leases).where(self.leases.c.name == name)).first()
            if held is not None and not _stale(held.host, held.pid, held.expires_at):
                raise SyncError(
                    f"{name} is already running (pid {held.pid} on {held.host}, lease until "
                    f"{held.expires_at}); try again when it has finished"
                )
            conn.execute(delete(self.leases).where(self.leases.c.name == name))
            try:
                conn.execute(self.leases.insert().values(**mine, expires_at=_in_seconds(seconds)))
            except IntegrityError:
                raise SyncError(f"{name} is already running (it started just now)") from None
        try:
            yield
        finally:
            with self.engine.begin() as conn:
                conn.execute(delete(self.leases).where(*self._lease_is_mine(name)))

    def renew_lease(self, conn: Connection, name: str, seconds: int = LEASE_SECONDS) -> None:
        """Extend our lease inside a page's transaction; SyncError (and rollback) if it was lost."""
        renewed = conn.execute(
            self.leases.update()
            .where(*self._lease_is_mine(name))
            .values(expires_at=_in_seconds(seconds))
        )
        if renewed.rowcount == 0:
            raise SyncError(f"{name}: the lease was taken over by another process; stopping")

    def _lease_is_mine(self, name: str) -> tuple[Any, ...]:
        c = self.leases.c
        return (c.name == name, c.host == socket.gethostname(), c.pid == os.getpid())

    # -- runs and status ----------------------------------------------------------------------

    def start_run(self, job: str) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(
                self.runs.insert().values(
                    job=job, started_at=utc_now(), outcome="running", counts="{}", requests=0
                )
            )
            return int(result.inserted_primary_key[0])  # type: ignore[index]

    def finish_run(
        self, run_id: int, outcome: str, counts: dict[str, Any], requests: int, error: str | None
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                self.runs.update()
                .where(self.runs.c.run_id == run_id)
                .values(
                    finished_at=utc_now(),
                    outcome=outcome,
                    counts=json.dumps(counts, sort_keys=True),
                    requests=requests,
                    error=error,
                )
            )

    def recent_runs(self, limit: int = 10) -> list[RunRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(self.runs).order_by(self.runs.c.run_id.desc()).limit(limit)
            ).mappings()
            return [RunRecord(**{**row, "counts": json.loads(row["counts"])}) for row in rows]

    def row_count(self, table_name: str) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(select(func.count()).select_from(self.tables[table_name])).scalar_one()
            )


def _in_seconds(seconds: int) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stale(host: str, pid: int, expires_at: str) -> bool:
    """An expired lease, or one whose holder on this host no longer runs."""
    if expires_at < utc_now():
        return True
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def _data_table(metadata: MetaData, mapping: TableMapping) -> Table:
    columns = [
        Column(name, _TYPES[kind], primary_key=name == mapping.primary_key)
        for name, kind in mapping.columns.items()
    ]
    columns.append(Column(GENERATION_COLUMN, Integer()))
    return Table(mapping.name, metadata, *columns)


@dataclass(frozen=True)
class _Upsert:
    """`INSERT … ON CONFLICT (pk) DO UPDATE` compiled for the engine, with its column order."""

    sql: str
    columns: tuple[str, ...]  # the mapped columns, in parameter order; the generation follows
    pick: Callable[[dict[str, Any]], tuple[Any, ...]]


def _upsert(engine: Engine, table: Table) -> _Upsert:
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table)
    keys = [c.name for c in table.primary_key.columns]
    updates = {c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys}
    compiled = statement.on_conflict_do_update(index_elements=keys, set_=updates).compile(
        dialect=engine.dialect
    )
    order = tuple(compiled.positiontup or ())
    assert order[-1:] == (GENERATION_COLUMN,), "the engine must use a positional paramstyle"
    columns = order[:-1]
    return _Upsert(sql=str(compiled), columns=columns, pick=itemgetter(*columns))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _create_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError("DVCONNECT_DATABASE_URL: not a database URL") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"DVCONNECT_DATABASE_URL: unsupported database {backend!r} (sqlite or postgresql)"
        )
    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    try:
        # Positional parameters on both databases: upserts hand the driver plain tuples.
        engine = create_engine(parsed, paramstyle="format" if backend == "postgresql" else None)
    except NoSuchModuleError as exc:
        raise ConfigError(f"DVCONNECT_DATABASE_URL: driver not installed ({exc})") from None
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"DVCONNECT_DATABASE_URL: driver not installed ({exc.name}); "
            "install dvconnect[postgres] for PostgreSQL"
        ) from None
    if backend == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine
