"""SQLite storage: one table per served table, a global version counter, tombstones, cascades.

Columns are named as the Web API names them (`_parentcontactid_value` for lookups) so the file can
be inspected with plain SQL. Every write runs in a `WriteTx` under one lock: it takes the next value
of a single global counter as the row's `versionnumber` (the etag), leaves a tombstone for each
deleted row, and applies the delete cascades of the schema (RemoveLink, Cascade). A write opened
inside another in the same thread is a savepoint of it, so a `$batch` change set or a bulk action
commits or rolls back as a whole. A change to a row of a table with a `parent` lookup (an activity
party) also bumps the version and `modifiedon` of the record it points at (U57). Columns added to
the schema since a data dir was made are added on open (the type column of a lookup that gained
targets is filled with its first target). Readers use one connection per thread in WAL mode and
never block writers. Text columns compare case-insensitively
(`COLLATE NOCASE` for sorting, `dv_fold()` for Unicode-aware filters).
"""

from __future__ import annotations

import itertools
import operator
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from emulator.schema import (
    INTEGER_TYPES,
    TEXT_TYPES,
    AttributeType,
    OnDelete,
    Schema,
    Table,
)

VERSION_START = 100_000
TOMBSTONES = "_tombstone"
META = "_meta"


class RestrictedDelete(Exception):
    """A delete blocked by a Restrict relationship; `table` is the referencing table."""

    def __init__(self, table: str) -> None:
        super().__init__(table)
        self.table = table


def fold(value: object) -> object:
    """Case-insensitive comparison key for filters (Dataverse collations ignore case)."""
    return value.casefold() if isinstance(value, str) else value


def _column_ddl(table: Table) -> list[tuple[str, str]]:
    """(column, definition) of every storage column."""
    columns = []
    for attribute in table.attributes:
        if attribute.type in TEXT_TYPES:
            kind = "TEXT COLLATE NOCASE"
        elif attribute.type in INTEGER_TYPES or attribute.type is AttributeType.BOOLEAN:
            kind = "INTEGER"
        else:
            kind = "TEXT"
        if attribute.name == table.primary_id:
            kind += " NOT NULL PRIMARY KEY"
        elif attribute.name == "versionnumber":
            kind += " NOT NULL"
        columns.append((attribute.read_name, f'"{attribute.read_name}" {kind}'))
        if attribute.type_column:
            columns.append((attribute.type_column, f'"{attribute.type_column}" TEXT'))
    return columns


def duplicate_fold(value: object) -> object:
    """The comparison key of duplicate detection (§7.10): without surrounding whitespace, case
    folded as Unicode (not ASCII only)."""
    return value.strip().casefold() if isinstance(value, str) else value


def duplicate_key(column: str) -> str:
    """SQL for the duplicate-detection key of `column` (`dv_dupkey`, registered on connections)."""
    return f'dv_dupkey("{column}")'


def table_indexes(table: Table) -> dict[str, str]:
    """Secondary indexes: versions (deltas), modifiedon (watermarks), lookups that cascade,
    duplicate-detection keys."""
    name, key = table.name, table.primary_id
    indexes = {
        f"{name}_version": f'CREATE UNIQUE INDEX "{name}_version" ON "{name}" (versionnumber)',
        f"{name}_modifiedon": f'CREATE INDEX "{name}_modifiedon" ON "{name}" (modifiedon, "{key}")',
    }
    for column in table.duplicate_keys:
        index = f"{name}_{column}_dupkey"
        indexes[index] = f'CREATE INDEX "{index}" ON "{name}" ({duplicate_key(column)})'
    for attribute in table.attributes:
        if any(t.on_delete is not OnDelete.RESTRICT for t in attribute.targets):
            index = f"{name}_{attribute.name}"
            indexes[index] = f'CREATE INDEX "{index}" ON "{name}" ("{attribute.read_name}")'
    return indexes


def schema_ddl(schema: Schema) -> str:
    statements = [
        f"CREATE TABLE IF NOT EXISTS {META} (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID",
        f"CREATE TABLE IF NOT EXISTS {TOMBSTONES} (tablename TEXT NOT NULL, id TEXT NOT NULL, "
        "versionnumber INTEGER NOT NULL, deletedon TEXT NOT NULL, PRIMARY KEY (tablename, id)) "
        "WITHOUT ROWID",
        f"CREATE INDEX IF NOT EXISTS {TOMBSTONES}_version "
        f"ON {TOMBSTONES} (tablename, versionnumber)",
    ]
    for table in schema.tables:
        columns = ", ".join(ddl for _, ddl in _column_ddl(table))
        statements.append(f'CREATE TABLE IF NOT EXISTS "{table.name}" ({columns}) WITHOUT ROWID')
        statements += [
            sql.replace("CREATE UNIQUE INDEX", "CREATE UNIQUE INDEX IF NOT EXISTS").replace(
                "CREATE INDEX", "CREATE INDEX IF NOT EXISTS"
            )
            for sql in table_indexes(table).values()
        ]
    return ";\n".join(statements) + ";"


class Store:
    """The emulator's database: per-thread read connections and serialized write transactions."""

    def __init__(self, path: Path, schema: Schema) -> None:
        self.path = path
        self.schema = schema
        self._local = threading.local()
        self._lock = threading.Lock()
        connection = self.connection()
        connection.execute("PRAGMA journal_mode=WAL")
        connection.executescript(schema_ddl(schema))
        self._add_missing_columns(connection)
        stored = self.meta("version")
        self._version = int(stored) if stored is not None else VERSION_START

    def _add_missing_columns(self, connection: sqlite3.Connection) -> None:
        """A data dir made by an older emulator gets the columns added since (as nulls); a lookup
        that became polymorphic had only its first target before, and its type column says so."""
        for table in self.schema.tables:
            existing = {row[1] for row in connection.execute(f'PRAGMA table_info("{table.name}")')}
            for column, ddl in _column_ddl(table):
                if column not in existing:
                    connection.execute(f'ALTER TABLE "{table.name}" ADD COLUMN {ddl}')
            for attribute in table.attributes:
                if attribute.type_column and attribute.type_column not in existing:
                    connection.execute(
                        f'UPDATE "{table.name}" SET "{attribute.type_column}" = ? '
                        f'WHERE "{attribute.read_name}" IS NOT NULL',
                        (attribute.targets[0].table,),
                    )

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, cached_statements=512
        )
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA temp_store=MEMORY")
        connection.execute("PRAGMA cache_size=-16384")
        connection.execute("PRAGMA mmap_size=1073741824")
        connection.execute("PRAGMA busy_timeout=10000")
        connection.create_function("dv_fold", 1, fold, deterministic=True)
        connection.create_function("dv_dupkey", 1, duplicate_fold, deterministic=True)
        return connection

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._connect()
            self._local.connection = connection
        return connection

    @property
    def version(self) -> int:
        """The highest committed version number."""
        return self._version

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.connection().execute(sql, params).fetchall()

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.connection().execute(sql, params).fetchone()
        return None if row is None else row[0]

    def meta(self, key: str) -> str | None:
        value: str | None = self.scalar(f"SELECT value FROM {META} WHERE key = ?", (key,))
        return value

    def record(self, table: Table, record_id: str) -> dict[str, Any] | None:
        return _record(self.connection(), table, record_id)

    def count(self, table: Table) -> int:
        return int(self.scalar(f'SELECT count(*) FROM "{table.name}"'))

    @contextmanager
    def write(self, now: str) -> Iterator[WriteTx]:
        """One atomic write transaction; `now` stamps modifiedon of rows changed by cascades.

        Called again in the same thread while a transaction is open (a `$batch` change set, a
        bulk action), it opens a savepoint of that transaction instead: a failure undoes the inner
        part only, and nothing is committed before the outermost block ends.
        """
        current: WriteTx | None = getattr(self._local, "tx", None)
        if current is not None:
            with current.savepoint():
                yield current
            return
        with self._lock:
            connection = self.connection()
            connection.execute("BEGIN IMMEDIATE")
            tx = WriteTx(self.schema, connection, now, self._version)
            self._local.tx = tx
            try:
                yield tx
                if tx.version != self._version:
                    tx.set_meta("version", str(tx.version))
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            finally:
                self._local.tx = None
            self._version = tx.version


def _record(connection: sqlite3.Connection, table: Table, record_id: str) -> dict[str, Any] | None:
    cursor = connection.execute(
        f'SELECT * FROM "{table.name}" WHERE "{table.primary_id}" = ?', (record_id,)
    )
    row = cursor.fetchone()
    if row is None:
        return None
    return {column[0]: value for column, value in zip(cursor.description, row, strict=True)}


class WriteTx:
    """The operations of one write transaction; every changed row gets a new version number."""

    def __init__(
        self, schema: Schema, connection: sqlite3.Connection, now: str, version: int
    ) -> None:
        self.schema = schema
        self.now = now
        self.version = version
        self._connection = connection
        self._depth = 0

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested part of this transaction, undone alone when it raises."""
        self._depth += 1
        name = f"part{self._depth}"
        version = self.version
        self._connection.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self._connection.execute(f"ROLLBACK TO {name}")
            self._connection.execute(f"RELEASE {name}")
            self.version = version
            raise
        else:
            self._connection.execute(f"RELEASE {name}")
        finally:
            self._depth -= 1

    def _next_version(self) -> int:
        self.version += 1
        return self.version

    def record(self, table: Table, record_id: str) -> dict[str, Any] | None:
        return _record(self._connection, table, record_id)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._connection.execute(sql, params).fetchall()

    def ids(self, table: Table, where: str = "", params: Sequence[Any] = ()) -> list[str]:
        sql = f'SELECT "{table.primary_id}" FROM "{table.name}" {where} ORDER BY 1'
        return [row[0] for row in self._connection.execute(sql, params)]

    def insert(self, table: Table, values: dict[str, Any]) -> int:
        """Insert one row (the caller checked the key is free); returns its version."""
        version = self._next_version()
        row = {**values, "versionnumber": version}
        columns = ", ".join(f'"{column}"' for column in row)
        marks = ", ".join("?" * len(row))
        self._connection.execute(
            f'INSERT INTO "{table.name}" ({columns}) VALUES ({marks})', tuple(row.values())
        )
        self._connection.execute(
            f"DELETE FROM {TOMBSTONES} WHERE tablename = ? AND id = ?",
            (table.name, values[table.primary_id]),
        )
        self._touch_parent(table, values[table.primary_id])
        return version

    def update(self, table: Table, record_id: str, values: dict[str, Any]) -> int:
        """Update one existing row (a write always bumps the version, changed or not)."""
        version = self._next_version()
        row = {**values, "versionnumber": version}
        assignments = ", ".join(f'"{column}" = ?' for column in row)
        self._connection.execute(
            f'UPDATE "{table.name}" SET {assignments} WHERE "{table.primary_id}" = ?',
            (*row.values(), record_id),
        )
        self._touch_parent(table, record_id)
        return version

    def _touch_parent(
        self, table: Table, record_id: str, skip: Sequence[tuple[str, str]] = ()
    ) -> None:
        """U57: a changed child row (an activity party) bumps the record its `parent` names."""
        if table.parent is None:
            return
        attribute = table.by_name[table.parent]
        type_column = f'"{attribute.type_column}"' if attribute.type_column else "NULL"
        found = self._connection.execute(
            f'SELECT "{attribute.read_name}", {type_column} FROM "{table.name}" '
            f'WHERE "{table.primary_id}" = ?',
            (record_id,),
        ).fetchone()
        if found is None or found[0] is None:
            return
        parent = self.schema.by_name.get(found[1] or attribute.targets[0].table)
        if parent is None or (parent.name, found[0]) in skip:
            return
        if self.record(parent, found[0]) is not None:
            self.update(parent, found[0], {"modifiedon": self.now})

    def delete(self, table: Table, record_id: str) -> list[tuple[str, str]]:
        """Delete a row and apply the cascades; returns every (table, id) deleted."""
        deleted: list[tuple[str, str]] = []
        self._delete(table, record_id, deleted)
        return deleted

    def _delete(self, table: Table, record_id: str, deleted: list[tuple[str, str]]) -> None:
        if (table.name, record_id) in deleted:
            return
        deleted.append((table.name, record_id))
        for reference in self.schema.references_to(table.name):
            attribute = reference.attribute
            where = f'WHERE "{attribute.read_name}" = ?'
            params: tuple[str, ...] = (record_id,)
            if attribute.type_column:
                where += f' AND "{attribute.type_column}" = ?'
                params += (table.name,)
            referencing = [
                i for i in self.ids(reference.table, where, params)
                if (reference.table.name, i) not in deleted
            ]  # fmt: skip
            if not referencing:
                continue
            if reference.target.on_delete is OnDelete.RESTRICT:
                raise RestrictedDelete(reference.table.name)
            for other in referencing:
                if reference.target.on_delete is OnDelete.CASCADE:
                    self._delete(reference.table, other, deleted)
                else:
                    cleared = {attribute.read_name: None, "modifiedon": self.now}
                    if attribute.type_column:
                        cleared[attribute.type_column] = None
                    self.update(reference.table, other, cleared)
        self._touch_parent(table, record_id, deleted)
        self._connection.execute(
            f'DELETE FROM "{table.name}" WHERE "{table.primary_id}" = ?', (record_id,)
        )
        self._connection.execute(
            f"INSERT OR REPLACE INTO {TOMBSTONES} VALUES (?, ?, ?, ?)",
            (table.name, record_id, self._next_version(), self.now),
        )

    def bulk_insert(
        self, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> int:
        """Load many new rows fast (seeding): indexes are rebuilt once after streaming the rows.

        Each row gets the next version; rows should come in primary-key order. Returns the count.
        """
        indexes = table_indexes(table)
        for index in indexes:
            self._connection.execute(f'DROP INDEX IF EXISTS "{index}"')
        names = ", ".join(f'"{column}"' for column in (*columns, "versionnumber"))
        marks = ", ".join("?" * (len(columns) + 1))
        start = self.version
        counter = itertools.count(start + 1)
        versioned = map(operator.add, map(tuple, rows), zip(counter))
        self._connection.executemany(
            f'INSERT INTO "{table.name}" ({names}) VALUES ({marks})', versioned
        )
        self.version = next(counter) - 1
        for sql in indexes.values():
            self._connection.execute(sql)
        return self.version - start

    def clear(self) -> None:
        """Remove every row, tombstone and alternate key (the version counter keeps growing)."""
        for table in self.schema.tables:
            self._connection.execute(f'DELETE FROM "{table.name}"')
        self._connection.execute(f"DELETE FROM {TOMBSTONES}")
        self._connection.execute(f"DELETE FROM {META} WHERE key = 'entitykeys'")

    def set_meta(self, key: str, value: str) -> None:
        self._connection.execute(f"INSERT OR REPLACE INTO {META} VALUES (?, ?)", (key, value))
