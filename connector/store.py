"""The local store: SQLAlchemy Core over SQLite (default) or PostgreSQL (by URL).

One table per synced Dataverse table, named by its logical name, one column per mapped attribute
under its logical name, so the data can be queried with plain SQL. Datetimes are kept as the
Web API writes them (ISO-8601 UTC text, `2024-06-12T14:13:17Z`), which sorts and compares
correctly on both databases. Each data table has one extra column, `dvc_generation` (the full
read that last saw the row, used to remove rows deleted while change tracking could not say so),
and a `dvc_key_<column>` for each column link-orphans matches people on (`connector.keys`).

Only the sync writes the data tables; jobs record what they wrote to Dataverse in `dvc_outbox`,
and a later sync reads it back. dvconnect's own tables are declared in `connector.tables`.

Opening a store changes nothing: `status`, `check` and dry runs read it (a missing SQLite file
is an empty store, never created); `check_schema()` refuses a store whose `dvc_` tables are not
at this release's revision (`connector.schema`). `prepare()`, called by runs, creates the `dvc_`
tables of a brand-new store at the newest revision, creates the mapped tables, adds the columns
the mapping gained (such tables then resync in full) and computes missing match keys. Only
`migrate_store(url, upgrade=True)` (`dvconnect db upgrade`) changes the `dvc_` tables of a store
that has them.
Leases (`lease`) keep two runs of a job apart: `dvc_leases` rows on SQLite, PostgreSQL session
advisory locks (released when the holder's session ends, on whatever host) on PostgreSQL, where
several instances may share a store. Database errors never print row values
(`hide_parameters`); `store_error` turns them into one line naming the store, its password
masked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from functools import partial
from importlib import import_module
from itertools import repeat
from operator import itemgetter, methodcaller
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
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    SAWarning,
    SQLAlchemyError,
)
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeEngine

from connector import schema
from connector import tables as dvc
from connector.clock import Clock, stamp
from connector.errors import ConfigError, NotRunError, StoreError
from connector.keys import Accents, match_key
from connector.mapping import ColumnType, Mapping, TableMapping

GENERATION_COLUMN = "dvc_generation"
KEY_PREFIX = "dvc_key_"
CONNECT_TIMEOUT = 10  # seconds: PostgreSQL unreachable at start
WAL_TRIES = 50  # tries of the switch to WAL mode, 0.1 s apart
LEASE_SECONDS = 600  # SQLite: renewed with every page; a holder silent this long is taken over
_KEEPALIVES = (  # PostgreSQL probes a lock's idle connection: a vanished host's locks go
    ("tcp_keepalives_idle", 30),
    ("tcp_keepalives_interval", 10),
    ("tcp_keepalives_count", 6),
)
_LOCK_POLL = 0.2  # seconds between tries of a lock waited for
_DELETE_CHUNK = 500
_KEY_CHUNK = 5000
_INT64 = (-(2**63), 2**63 - 1)
_PASSWORD = re.compile(r"^([^:/]+://[^:/@]*:)[^@]*@")

_TYPES: dict[ColumnType, TypeEngine[Any]] = {
    "guid": String(36),
    "string": Text(),
    "integer": Integer(),
    "bigint": BigInteger(),
    "number": Float(),
    "boolean": Boolean(),
    "datetime": String(20),
    "date": String(10),
    "lookuptype": String(64),
}


def key_column(column: str) -> str:
    """The store column holding the match key of `column`."""
    return f"{KEY_PREFIX}{column}"


@dataclass(frozen=True)
class SyncState:
    """Where the sync of one table stands; saved with the page it follows.

    `phase` is `full` while a full read is under way (its rows carry `generation`), `incremental`
    while a delta or watermark read is under way, `idle` between runs. `next_link` is the page
    to read next when a run stopped mid-way; `mode` is how the table is followed once the full
    read is done: `delta` (change tracking, `delta_link`) or `watermark` (`modifiedon`).
    `read_tick` is when the read under way began; `seen_tick` when the last completed one began
    (a write confirmed before that tick is in the store).
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
    read_tick: int | None = None
    seen_tick: int | None = None

    def start_full(self) -> SyncState:
        """A new full read: a new generation, every cursor forgotten."""
        return SyncState(
            table_name=self.table_name,
            phase="full",
            generation=self.generation + 1,
            last_full_sync_at=self.last_full_sync_at,
            last_sync_at=self.last_sync_at,
            seen_tick=self.seen_tick,
        )


@dataclass(frozen=True)
class RunRecord:
    """One job run as `status` and `report` show it (`abandoned`: its process is gone)."""

    run_id: int
    job: str
    started_at: str
    finished_at: str | None
    outcome: str
    counts: dict[str, Any]
    requests: int
    error: str | None
    host: str | None = None
    pid: int | None = None


@dataclass(frozen=True)
class Reject:
    """A synced row the store could not hold, by id; the reason names the column, never a value."""

    record_id: str
    reason: str


def masked(url: str) -> str:
    """A database URL for messages, as given, its password replaced by ***."""
    return _PASSWORD.sub(r"\1***@", url)


def store_error(exc: SQLAlchemyError, url: str) -> StoreError:
    """One line about a database failure: which store, and the database's own first line."""
    original = getattr(exc, "orig", None) or exc
    reason = (str(original).strip().splitlines() or [type(original).__name__])[0]
    hints = {
        "database is locked": "another process holds a write lock; try again",
        "readonly database": "the file or its folder is read-only",
        "file is not a database": "the file is not a SQLite database",
        "malformed": "the file is damaged; restore it or start a new store",
    }
    hint = next((h for needle, h in hints.items() if needle in reason), "")
    return StoreError(
        f"the store {masked(url)} cannot be used: {reason}" + (f" ({hint})" if hint else "")
    )


class Store:
    """The one SQLAlchemy engine, the data tables built from the mapping and the dvc_ tables."""

    def __init__(self, url: str, mapping: Mapping, clock: Clock | None = None) -> None:
        self.url = url
        self.engine = _create_engine(url)
        self._lock_engine: Engine | None = None  # advisory locks' connections (PostgreSQL)
        self.mapping = mapping
        self.clock = clock or Clock()
        self.metadata = MetaData()
        self.tables: dict[str, Table] = {
            name: _data_table(self.metadata, table, mapping.match_keys.get(name, ()))
            for name, table in mapping.tables.items()
        }
        self._upserts = {
            name: _upsert(self.engine, table, mapping.tables[name], mapping.accents)
            for name, table in self.tables.items()
        }

    # -- schema -------------------------------------------------------------------------------

    @property
    def exists(self) -> bool:
        """Whether the store holds dvconnect's tables (a missing SQLite file is never created)."""
        if _missing_file(self.engine):
            return False
        with self.engine.connect() as conn:
            return inspect(conn).has_table(dvc.sync_state.name)

    def check_schema(self) -> None:
        """Refuse (StoreError) a store whose `dvc_` tables are behind or ahead of this release;
        an empty store is fine. Reads only: every command that opens the store calls it."""
        if _missing_file(self.engine):
            return
        with self.engine.connect() as conn:
            refusal = schema.read_state(conn).refusal(masked(self.url))
        if refusal is not None:
            raise refusal

    def prepare(self) -> None:
        """Create the `dvc_` tables of a brand-new store at the newest revision (refuse a store
        behind or ahead of it), create missing mapped tables and columns (tables that gained
        columns resync in full), and compute match keys missing or made in another normal form.
        Runs call it; nothing else."""
        url = self.engine.url
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        with self.engine.connect() as conn:
            existing = inspect(conn)
            for name in self.tables:
                if existing.has_table(name):
                    present = {c["name"] for c in existing.get_columns(name)}
                    if GENERATION_COLUMN not in present:
                        raise ConfigError(
                            f"DVCONNECT_DATABASE_URL: the store {masked(self.url)} has a table "
                            f"{name!r} that dvconnect did not make (it has no {GENERATION_COLUMN} "
                            "column); use a database of dvconnect's own"
                        )
        engine = migration_engine(self.url)  # one transaction, DDL included, under the lock
        try:
            with engine.begin() as conn:
                schema.migrate(conn, masked(self.url), upgrade=False)
                self._prepare_mapped(conn)
        finally:
            engine.dispose()
        if self.engine.dialect.name == "sqlite":  # readers never block the writer
            _use_wal(self.engine)

    def _prepare_mapped(self, conn: Connection) -> None:
        """The mapped tables and their new columns (such tables then resync in full), the
        event counter, and the match keys."""
        self.metadata.create_all(conn)
        existing = inspect(conn)
        for table in self.tables.values():
            present = {c["name"] for c in existing.get_columns(table.name)}
            missing = [c for c in table.columns if c.name not in present]
            for column in missing:
                ddl = column.type.compile(dialect=conn.dialect)
                conn.execute(text(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {ddl}'))
            if [c for c in missing if not c.name.startswith("dvc_")]:
                self.save_state(conn, self._load_state(conn, table.name).start_full())
        if (
            conn.execute(select(dvc.ticks.c.value).where(dvc.ticks.c.name == "clock")).first()
            is None
        ):
            conn.execute(dvc.ticks.insert().values(name="clock", value=0))
        self._refresh_keys(conn)

    def _refresh_keys(self, conn: Connection) -> None:
        """(Re)compute `dvc_key_*` columns when the normal form or the matched columns changed."""
        spec = json.dumps({"accents": self.mapping.accents, "keys": self.mapping.match_keys},
                          sort_keys=True)  # fmt: skip
        stored = conn.execute(
            select(dvc.meta.c.value).where(dvc.meta.c.key == "match_keys")
        ).scalar()
        if stored == spec:
            return
        for name, columns in self.mapping.match_keys.items():
            table = self.tables[name]
            key = table.c[self.mapping.tables[name].primary_key]
            after: str | None = None
            while True:
                query = select(key, *(table.c[c] for c in columns)).order_by(key).limit(_KEY_CHUNK)
                if after is not None:
                    query = query.where(key > after)
                rows = conn.execute(query).all()
                if not rows:
                    break
                values = [
                    {"dvc_id": row[0], **{key_column(c): match_key(v, self.mapping.accents)
                                          for c, v in zip(columns, row[1:], strict=True)}}
                    for row in rows
                ]  # fmt: skip
                conn.execute(
                    table.update()
                    .where(key == bindparam("dvc_id"))
                    .values({key_column(c): bindparam(key_column(c)) for c in columns}),
                    values,
                )
                after = rows[-1][0]
        conn.execute(delete(dvc.meta).where(dvc.meta.c.key == "match_keys"))
        conn.execute(dvc.meta.insert().values(key="match_keys", value=spec))

    # -- sync ---------------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction: a page, its deletions and the state that follows it commit together."""
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def rolled_back(self) -> Iterator[Connection]:
        """One transaction that is never committed: what a dry run, a plan or a preview does
        is done for real inside it, then undone."""
        with self.engine.connect() as conn:
            transaction = conn.begin()
            try:
                yield conn
            finally:
                transaction.rollback()

    def next_tick(self, conn: Connection) -> int:
        """The next value of the store's event counter (committed with `conn`'s transaction)."""
        c = dvc.ticks.c
        conn.execute(dvc.ticks.update().where(c.name == "clock").values(value=c.value + 1))
        return int(conn.execute(select(c.value).where(c.name == "clock")).scalar_one())

    def load_state(self, table_name: str) -> SyncState:
        if not self.exists:
            return SyncState(table_name=table_name)
        with self.engine.connect() as conn:
            return self._load_state(conn, table_name)

    def _load_state(self, conn: Connection, table_name: str) -> SyncState:
        row = (
            conn.execute(select(dvc.sync_state).where(dvc.sync_state.c.table_name == table_name))
            .mappings()
            .first()
        )
        return SyncState(**row) if row else SyncState(table_name=table_name)

    def save_state(self, conn: Connection, state: SyncState) -> None:
        values = asdict(state)
        updated = conn.execute(
            dvc.sync_state.update()
            .where(dvc.sync_state.c.table_name == state.table_name)
            .values(values)
        )
        if updated.rowcount == 0:
            conn.execute(dvc.sync_state.insert().values(values))

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

        The statements are compiled once per table and the rows go to the driver as positional
        tuples, so per-row work stays in C: SQLite takes them in one `executemany`; PostgreSQL
        by `COPY` into a staging table, merged by one `INSERT … ON CONFLICT` (a row seen twice:
        the later copy). A row the database cannot hold makes the write fail (see `storable`).
        """
        if not rows:
            return 0
        upsert = self._upserts[table_name]
        params = upsert.params(rows, generation)
        if upsert.staged is None:
            conn.exec_driver_sql(upsert.sql, params)
        else:
            upsert.staged.write(conn, params)
        return len(params)

    def storable(
        self, table_name: str, rows: Sequence[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[Reject]]:
        """The rows the database can hold, and a reject for each other one (a NUL in text on
        PostgreSQL, invalid Unicode, a number past 64 bits) — named by id, never by value."""
        postgres = self.engine.dialect.name == "postgresql"
        mapping = self.mapping.tables[table_name]
        good: list[dict[str, Any]] = []
        rejected: list[Reject] = []
        for row in rows:
            reason = _unstorable(row, mapping, postgres)
            if reason is None:
                good.append(row)
            else:
                rejected.append(Reject(str(row.get(mapping.primary_key)), reason))
        return good, rejected

    def record_rejects(self, conn: Connection, table_name: str, rejected: Sequence[Reject]) -> None:
        """Remember rows not stored (and drop their older copies: the store never shows a row
        Dataverse has changed since as if it were current)."""
        self.delete_rows(conn, table_name, [r.record_id for r in rejected])
        self.forget_rejects(conn, table_name, [r.record_id for r in rejected])
        at = self.clock.stamp()
        for reject in rejected:
            conn.execute(
                dvc.sync_rejects.insert().values(
                    table_name=table_name, record_id=reject.record_id, reason=reject.reason, at=at
                )
            )

    def forget_rejects(self, conn: Connection, table_name: str, ids: Sequence[str]) -> None:
        """Rows stored after all (changed since, or deleted) are no longer rejected."""
        c = dvc.sync_rejects.c
        for start in range(0, len(ids), _DELETE_CHUNK):
            chunk = list(ids[start : start + _DELETE_CHUNK])
            conn.execute(delete(dvc.sync_rejects).where(c.table_name == table_name,
                                                        c.record_id.in_(chunk)))  # fmt: skip

    def rejects(self, table_name: str) -> list[Reject]:
        """The rows of a table the store could not hold, as last reported."""
        if not self.exists:
            return []
        c = dvc.sync_rejects.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(c.record_id, c.reason)
                .where(c.table_name == table_name)
                .order_by(c.record_id)
            ).all()
        return [Reject(row[0], row[1]) for row in rows]

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

    def stream(self, statement: Select[Any], batch: int = 1000) -> Iterator[dict[str, Any]]:
        """The rows of a query, fetched `batch` at a time: memory stays flat on any table size."""
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=batch).execute(statement)
            for row in result.mappings():
                yield dict(row)

    # -- leases -------------------------------------------------------------------------------

    @property
    def coordinated(self) -> bool:
        """Whether several processes, on several hosts, may share this store's work: PostgreSQL
        coordinates them with advisory locks and row locks. A SQLite store has one process at
        a time per job (its lease) and one `schedule`."""
        return self.engine.dialect.name == "postgresql"

    @contextmanager
    def lease(
        self, name: str, seconds: int = LEASE_SECONDS, *, shared: bool = False
    ) -> Iterator[None]:
        """Hold the lease `name` while the block runs; NotRunError when another process holds it.

        On SQLite the lease is a `dvc_leases` row, taken over when it has expired, or when the
        process holding it on this host is gone (a kill -9 must not block the re-run). On
        PostgreSQL it is a session advisory lock on a connection of its own (`lock`): the
        database releases it when the holder's session ends — a process killed, a host gone —
        so nothing expires by time, and a holder on another host is never taken for dead while
        its session lives; the row is kept beside it for `renew_lease` and the messages.
        Holders renew it with `renew_lease` in each page's transaction; a renewal that finds
        the lease taken over aborts that page. `shared` (PostgreSQL only; exclusive on SQLite):
        several processes hold it together, and an exclusive holder waits for none of them.
        """
        if self.coordinated:
            with self._advisory_lease(name, shared):
                yield
            return
        mine = {"name": name, "host": socket.gethostname(), "pid": os.getpid()}
        now = self.clock.stamp()
        with self.engine.begin() as conn:
            held = conn.execute(select(dvc.leases).where(dvc.leases.c.name == name)).first()
            if held is not None and not _stale(held.host, held.pid, held.expires_at, now):
                raise NotRunError(
                    f"{name} is already running (pid {held.pid} on {held.host}, lease until "
                    f"{held.expires_at}); try again when it has finished"
                )
            conn.execute(delete(dvc.leases).where(dvc.leases.c.name == name))
            try:
                conn.execute(
                    dvc.leases.insert().values(**mine, expires_at=self.clock.stamp(seconds))
                )
            except IntegrityError:
                raise NotRunError(f"{name} is already running (it started just now)") from None
        try:
            yield
        finally:
            with self.engine.begin() as conn:
                conn.execute(delete(dvc.leases).where(*_lease_is_mine(name)))

    @contextmanager
    def _advisory_lease(self, name: str, shared: bool) -> Iterator[None]:
        with self.lock(name, shared=shared) as lock:
            if not lock.held:
                raise NotRunError(self._held_by(name))
            if shared:  # no row: nobody renews a lease held by several
                yield
                return
            with self.engine.begin() as conn:  # a row left there is a dead session's: replaced
                conn.execute(delete(dvc.leases).where(dvc.leases.c.name == name))
                conn.execute(
                    dvc.leases.insert().values(
                        name=name, host=socket.gethostname(), pid=os.getpid(),
                        expires_at=self.clock.stamp(LEASE_SECONDS),
                    )
                )  # fmt: skip
            try:
                yield
            finally:
                # the store lost: the lock went with the session, the row means nothing
                with suppress(SQLAlchemyError), self.engine.begin() as conn:
                    conn.execute(delete(dvc.leases).where(*_lease_is_mine(name)))

    def _held_by(self, name: str) -> str:
        with self.engine.connect() as conn:
            held = conn.execute(select(dvc.leases).where(dvc.leases.c.name == name)).first()
        if held is None:
            return f"{name} is already running on another instance; try again when it has finished"
        return (
            f"{name} is already running (pid {held.pid} on {held.host}); try again when it has "
            "finished"
        )

    @contextmanager
    def lock(
        self, name: str, *, shared: bool = False, wait: Callable[[], bool] | None = None
    ) -> Iterator[Lock]:
        """A PostgreSQL session advisory lock named `name`, held while the block runs.

        It lives on a connection of its own, outside the pool, which the block's end releases
        and closes: the lock ends with that session, however the process ends. The server is
        asked to probe the connection (TCP keepalives) so that a host that vanished without
        closing it loses its locks within about a minute and a half. The block gets a `Lock`:
        whether it is held (never waited for, unless `wait` is given: then tried again until it
        is held or `wait()` says to stop) and whether its session still lives. On SQLite, where
        a job has one process at a time (its lease), every lock is held.
        """
        if not self.coordinated:
            yield Lock(True, None)
            return
        if self._lock_engine is None:
            self._lock_engine = create_engine(
                self.engine.url, poolclass=NullPool, hide_parameters=True
            )
        key = lock_key(name)
        verb = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
        with self._lock_engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            for setting, value in _KEEPALIVES:
                conn.execute(text(f"SET {setting} = {value}"))
            while True:
                held = bool(conn.execute(text(f"SELECT {verb}(:key)"), {"key": key}).scalar())
                if held or wait is None or wait():
                    break
                time.sleep(_LOCK_POLL)
            try:
                yield Lock(held, conn)
            finally:  # at once (a closed session lets go a moment later), unless it is gone
                with suppress(SQLAlchemyError):
                    conn.execute(text("SELECT pg_advisory_unlock_all()"))

    def renew_lease(self, conn: Connection, name: str, seconds: int = LEASE_SECONDS) -> None:
        """Extend our lease in a page's transaction; NotRunError (and rollback) if it was lost."""
        renewed = conn.execute(
            dvc.leases.update()
            .where(*_lease_is_mine(name))
            .values(expires_at=self.clock.stamp(seconds))
        )
        if renewed.rowcount == 0:
            raise NotRunError(f"{name}: the lease was taken over by another process; stopping")

    def claim_tick(self, job: str, tick: datetime) -> str | None:
        """Claim the cron tick `tick` of `job` for this process: None when it is ours to run, or
        who claimed it first ("pid N on HOST"). Every `schedule` instance sharing the store fires
        each tick; the claim lets one of them run it, even when it has finished before another's
        clock reaches the tick, and the others skip it. This job's claims a day older are pruned."""
        claims = dvc.tick_claims
        at = stamp(tick)
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    delete(claims).where(
                        claims.c.job == job, claims.c.tick < stamp(tick - timedelta(days=1))
                    )
                )
                conn.execute(
                    claims.insert().values(
                        job=job, tick=at, host=socket.gethostname(), pid=os.getpid()
                    )
                )
        except IntegrityError:
            with self.engine.connect() as conn:
                holder = conn.execute(
                    select(claims.c.pid, claims.c.host).where(
                        claims.c.job == job, claims.c.tick == at
                    )
                ).one()
            return f"pid {holder.pid} on {holder.host}"
        return None

    # -- runs and status ----------------------------------------------------------------------

    def start_run(self, job: str) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(
                dvc.runs.insert().values(
                    job=job, started_at=self.clock.stamp(), outcome="running", counts="{}",
                    requests=0, host=socket.gethostname(), pid=os.getpid(),
                )
            )  # fmt: skip
            return int(result.inserted_primary_key[0])  # type: ignore[index]

    def finish_run(
        self, run_id: int, outcome: str, counts: dict[str, Any], requests: int, error: str | None
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                dvc.runs.update()
                .where(dvc.runs.c.run_id == run_id)
                .values(
                    finished_at=self.clock.stamp(),
                    outcome=outcome,
                    counts=json.dumps(counts, sort_keys=True, default=str),
                    requests=requests,
                    error=error,
                )
            )

    def recent_runs(self, limit: int = 10) -> list[RunRecord]:
        if not self.exists:
            return []
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(dvc.runs).order_by(dvc.runs.c.run_id.desc()).limit(limit)
            ).mappings()
            records = []
            for row in rows:
                outcome = row["outcome"]
                if outcome == "running" and _gone(row["host"], row["pid"]):
                    outcome = "abandoned"
                records.append(
                    RunRecord(**{**row, "outcome": outcome, "counts": json.loads(row["counts"])})
                )
            return records

    def row_count(self, table_name: str) -> int:
        if not self.exists or not inspect(self.engine).has_table(table_name):
            return 0
        with self.engine.connect() as conn:
            return int(
                conn.execute(select(func.count()).select_from(self.tables[table_name])).scalar_one()
            )


@dataclass(frozen=True)
class Lock:
    """An advisory lock tried by `Store.lock`: whether it is held, and its session."""

    held: bool
    _conn: Connection | None

    def alive(self) -> bool:
        """Whether the lock is still held: its session answers (always, on SQLite)."""
        if self._conn is None:
            return self.held
        try:
            self._conn.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return False
        return self.held


def lock_key(name: str) -> int:
    """The 64-bit key of the advisory lock `name` (per database: stores never collide)."""
    digest = hashlib.blake2b(f"dvconnect/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _lease_is_mine(name: str) -> tuple[Any, ...]:
    c = dvc.leases.c
    return (c.name == name, c.host == socket.gethostname(), c.pid == os.getpid())


def _gone(host: str | None, pid: int | None) -> bool:
    """Whether the process `pid` on this host has ended (unknown hosts: never said gone)."""
    if host != socket.gethostname() or pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def _stale(host: str, pid: int, expires_at: str, now: str) -> bool:
    """An expired lease, or one whose holder on this host no longer runs."""
    return expires_at < now or _gone(host, pid)


def _unstorable(row: dict[str, Any], mapping: TableMapping, postgres: bool) -> str | None:
    """Why the database cannot hold `row` (naming the column, never the value), or None."""
    for column in mapping.select:
        value = row.get(column)
        if isinstance(value, str):
            if postgres and "\x00" in value:
                return f"{column}: text holding a NUL character, which PostgreSQL cannot store"
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return f"{column}: text that is not valid Unicode (an unpaired surrogate)"
        elif isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
            return f"{column}: a number that does not fit in 64 bits"
    return None


def _data_table(metadata: MetaData, mapping: TableMapping, keys: Sequence[str]) -> Table:
    """The store table of a mapped table: the selected columns, then those derived from a row
    (lookup types, match keys), then the generation."""
    columns = [
        Column(name, _TYPES[mapping.columns[name]], primary_key=name == mapping.primary_key)
        for name in (*mapping.select, *mapping.lookup_types)
    ]
    columns += [Column(key_column(name), Text()) for name in keys]
    columns.append(Column(GENERATION_COLUMN, Integer()))
    return Table(mapping.name, metadata, *columns)


@dataclass(frozen=True)
class _Staged:
    """PostgreSQL's bulk write of a table's rows: `COPY` into a temporary table of the same
    columns, then one `INSERT … SELECT … ON CONFLICT (pk) DO UPDATE`. The staging table lives
    for one write, in its transaction: no session keeps one (a pooler may hand sessions on),
    and no other connection ever sees it."""

    create: str
    copy: str
    merge: str
    drop: str
    key: int  # the position of the primary key in a row's parameters

    def write(self, conn: Connection, params: list[tuple[Any, ...]]) -> None:
        if len({row[self.key] for row in params}) < len(params):
            params = list({row[self.key]: row for row in params}.values())  # the later copy
        driver = conn.connection.driver_connection
        assert driver is not None
        try:
            with driver.cursor() as cursor:
                cursor.execute(self.create)
                with cursor.copy(self.copy) as copy:
                    for row in params:
                        copy.write_row(row)
                cursor.execute(self.merge)
                cursor.execute(self.drop)
        except conn.dialect.loaded_dbapi.Error as exc:  # as SQLAlchemy raises its statements'
            raise DBAPIError.instance(
                self.copy, None, exc, conn.dialect.loaded_dbapi.Error, hide_parameters=True,
                dialect=conn.dialect,
            ) from exc  # fmt: skip


def _staged(engine: Engine, table: Table, order: tuple[str, ...]) -> _Staged:
    """The staging statements of `table`, its columns in `order` (the upsert's parameters)."""
    from sqlalchemy.dialects.postgresql import insert

    quote = engine.dialect.identifier_preparer.quote
    staging = Table(f"dvc_stage_{table.name}", MetaData(), *(Column(c.name) for c in table.c))
    stage = quote(staging.name)
    columns = ", ".join(quote(name) for name in order)
    keys = [c.name for c in table.primary_key.columns]
    assert len(keys) == 1, "a mapped table has one primary key column"
    statement = insert(table).from_select(list(order), select(*(staging.c[n] for n in order)))
    merge = statement.on_conflict_do_update(
        index_elements=keys,
        set_={n: statement.excluded[n] for n in order if n not in keys},
    ).compile(dialect=engine.dialect)
    return _Staged(
        create=f"CREATE TEMPORARY TABLE {stage} (LIKE {quote(table.name)})",
        copy=f"COPY {stage} ({columns}) FROM STDIN",
        merge=str(merge),
        drop=f"DROP TABLE {stage}",
        key=order.index(keys[0]),
    )


@dataclass(frozen=True)
class _Upsert:
    """`INSERT … ON CONFLICT (pk) DO UPDATE` compiled for the engine, and how a row fills it:
    the mapped columns in parameter order, the lookup types from their annotations, the match
    keys computed from their columns, then the generation. On PostgreSQL, rows are `staged`."""

    sql: str
    columns: tuple[str, ...]
    pick: Callable[[dict[str, Any]], tuple[Any, ...]]
    derived: tuple[Callable[[dict[str, Any]], Any], ...]
    staged: _Staged | None

    def params(self, rows: Sequence[dict[str, Any]], generation: int) -> list[tuple[Any, ...]]:
        """Each row's parameters: its mapped columns, then the derived ones and the generation,
        built a column at a time by C-level callables (`map`, `zip`, `tuple.__add__`)."""
        derived = [list(map(d, rows)) for d in self.derived]
        try:
            return list(map(tuple.__add__, map(self.pick, rows), zip(*derived, repeat(generation))))
        except KeyError:  # a row without some selected column: take it as null
            nulls = (tuple(map(row.get, self.columns)) for row in rows)
            return list(map(tuple.__add__, nulls, zip(*derived, repeat(generation))))


def _upsert(engine: Engine, table: Table, mapping: TableMapping, accents: Accents) -> _Upsert:
    dialect = import_module(f"sqlalchemy.dialects.{engine.dialect.name}")  # the engine's, loaded
    statement = dialect.insert(table)
    keys = [c.name for c in table.primary_key.columns]
    updates = {c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys}
    compiled = statement.on_conflict_do_update(index_elements=keys, set_=updates).compile(
        dialect=engine.dialect
    )
    order = tuple(compiled.positiontup or ())
    assert order[-1:] == (GENERATION_COLUMN,), "the engine must use a positional paramstyle"
    derived_names = [n for n in order[:-1] if n.startswith(KEY_PREFIX) or n in mapping.lookup_types]
    plain = tuple(n for n in order[:-1] if n not in derived_names)
    assert order[: len(plain)] == plain, "derived columns follow the mapped ones"
    derived: list[Callable[[dict[str, Any]], Any]] = []
    for name in derived_names:
        if name.startswith(KEY_PREFIX):
            derived.append(partial(_key_of, name.removeprefix(KEY_PREFIX), accents))
        else:
            annotation = f"{mapping.lookup_types[name]}@Microsoft.Dynamics.CRM.lookuplogicalname"
            derived.append(methodcaller("get", annotation))  # absent: None
    staged = _staged(engine, table, order) if engine.dialect.name == "postgresql" else None
    assert len(plain) > 1, "the key and modifiedon at least: `itemgetter` gives a tuple"
    return _Upsert(str(compiled), plain, itemgetter(*plain), tuple(derived), staged)


def _key_of(column: str, accents: Accents, row: dict[str, Any]) -> str | None:
    return match_key(row.get(column), accents)


def _use_wal(engine: Engine) -> None:
    """Put a SQLite store in WAL mode. The switch takes the file alone and, unlike statements,
    does not wait for a busy file: a first run beside another (its transaction still open)
    tries again for up to a few seconds."""
    for attempt in range(WAL_TRIES):
        try:
            with engine.connect() as conn:
                if conn.exec_driver_sql("PRAGMA journal_mode").scalar() != "wal":
                    conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            return
        except OperationalError:
            if attempt == WAL_TRIES - 1:
                raise
            time.sleep(0.1)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any, *, wait: bool) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    if wait:  # unless the URL says how long to wait for a lock (`?timeout=S`)
        cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def migrate_store(url: str, *, upgrade: bool) -> schema.Migrated:
    """Create the `dvc_` tables of a brand-new store at the newest revision, or (`upgrade`:
    `dvconnect db upgrade`) bring an older store there; one transaction, DDL included."""
    engine = migration_engine(url)
    try:
        if _missing_file(engine):
            Path(str(engine.url.database)).parent.mkdir(parents=True, exist_ok=True)
        with engine.begin() as conn:
            return schema.migrate(conn, masked(url), upgrade=upgrade)
    finally:
        engine.dispose()


def schema_state(url: str) -> schema.SchemaState:
    """Where the store's `dvc_` tables stand (`dvconnect db current`); creates nothing."""
    engine = _create_engine(url)
    try:
        if _missing_file(engine):
            return schema.SchemaState("empty", None, schema.HEAD, None)
        with engine.connect() as conn:
            return schema.read_state(conn)
    finally:
        engine.dispose()


def migration_engine(url: str) -> Engine:
    """An engine for schema changes: on SQLite, every transaction begins with BEGIN IMMEDIATE
    and holds its DDL too (pysqlite would commit each CREATE or ALTER on its own), so a
    migration that fails leaves nothing behind and two first runs do not race."""
    engine = _create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _driver_transactions_off)
        event.listen(engine, "begin", _begin_immediate)
    return engine


def _driver_transactions_off(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event says BEGIN instead


def _begin_immediate(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _missing_file(engine: Engine) -> bool:
    """Whether the store is a SQLite file that does not exist (yet)."""
    database = engine.url.database
    file = engine.dialect.name == "sqlite" and database not in (None, "", ":memory:")
    return file and not Path(str(database)).exists()


def _connect_args(url: URL) -> dict[str, Any]:
    """A PostgreSQL server that does not answer fails the command in seconds, not when the
    kernel gives up on the connection (minutes), unless the URL says `?connect_timeout=S`."""
    if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
        return {"connect_timeout": CONNECT_TIMEOUT}
    return {}


def _create_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError("DVCONNECT_DATABASE_URL: not a database URL") from None
    except ValueError:
        raise ConfigError("DVCONNECT_DATABASE_URL: the port is not a number") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"DVCONNECT_DATABASE_URL: unsupported database {backend!r} (sqlite or postgresql)"
        )
    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    try:
        with warnings.catch_warnings():  # an option the driver ignores is a mistake to report
            warnings.simplefilter("error", SAWarning)
            # Positional parameters on both databases: upserts hand the driver plain tuples.
            engine = create_engine(
                parsed,
                paramstyle="format" if backend == "postgresql" else None,
                # a server restarted or a connection dropped since: the next run gets a new one
                pool_pre_ping=backend == "postgresql",
                hide_parameters=True,  # errors never print row values
                connect_args=_connect_args(parsed),
            )
    except NoSuchModuleError as exc:
        raise ConfigError(f"DVCONNECT_DATABASE_URL: driver not installed ({exc})") from None
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"DVCONNECT_DATABASE_URL: driver not installed ({exc.name}); "
            "install dvconnect[postgres] for PostgreSQL"
        ) from None
    except SAWarning as exc:
        reason = str(exc).split(";")[0].split(" (Background")[0]
        raise ConfigError(f"DVCONNECT_DATABASE_URL: {reason}") from None
    except (ArgumentError, ValueError, TypeError) as exc:
        raise ConfigError(f"DVCONNECT_DATABASE_URL: {str(exc).splitlines()[0]}") from None
    if backend == "sqlite":
        event.listen(
            engine, "connect", partial(_sqlite_pragmas, wait="timeout" not in parsed.query)
        )
    return engine
