"""The version of the store's `dvc_` tables: Alembic revisions in `connector/migrations/`.

`connector.tables` declares the `dvc_` tables as the newest revision (the head) leaves them; each
change to them comes with a revision. The store records its revision in `dvc_alembic_version`
(the `dvc_` prefix keeps every table of dvconnect's own under one name) and, in `dvc_meta`, the
release that last created or upgraded it. A store is in one of five states:

* `empty` — no `dvc_` table yet: the first run creates them at the head and stamps it (the
  recipe Alembic recommends for new databases: `create_all`, then stamp — done here without
  loading Alembic, which only moves stores between revisions), so a first `dvconnect run all`
  stays one command;
* `current` — at the head: every command uses it;
* `unversioned` — made by release 0.1.0, before migrations (its `dvc_` tables, no version);
* `behind` — at an older revision;
* `ahead` — at a revision this release does not know: made by a newer release.

Commands refuse the last three with a `StoreError` (exit 3) naming what to do; only
`dvconnect db upgrade` (`migrate(..., upgrade=True)`) moves a store forward: an unversioned store
is adopted (the release 0.1.0 tables and columns it may lack added, then stamped with the
baseline) and every revision after its own is run, all in one transaction that also holds the
store's migration lock, so two processes starting on one new store do not both create it.

The mapped tables (`lead`, `contact`, …) are not Alembic's: they follow `tables.yaml`
(`connector.store`), and autogenerate ignores them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import (
    Column,
    Connection,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    delete,
    inspect,
    select,
    text,
)

from connector import tables as dvc
from connector.errors import StoreError

if TYPE_CHECKING:  # Alembic is imported only to move a store between revisions
    from alembic.config import Config
    from alembic.script import ScriptDirectory

VERSION_TABLE = "dvc_alembic_version"
HEAD = "0002"  # the newest revision, the one `connector.tables` describes (tests: Alembic's head)
BASELINE = "0001"  # release 0.1.0's dvc_ tables, as they were before migrations
BASELINE_RELEASE = "0.1.0"
RELEASE_KEY = "schema_release"  # dvc_meta: the release that last created or upgraded the schema
MIGRATIONS = Path(__file__).with_name("migrations")
_LOCK = 0x64766373636865  # PostgreSQL advisory lock id of schema changes ("dvcsche")

# Alembic says at INFO which dialect and plugins it found and each revision it runs: `db upgrade`
# prints what it did itself.
logging.getLogger("alembic").setLevel(logging.WARNING)

State = Literal["empty", "current", "unversioned", "behind", "ahead"]

# Alembic's version table, declared as Alembic makes it (a test compares the two): a new store
# is created and stamped at the head without loading Alembic, which only moves stores on.
_VERSION = Table(
    VERSION_TABLE,
    MetaData(),
    Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name=f"{VERSION_TABLE}_pkc"),
)


def release() -> str:
    """This dvconnect's version, as installed."""
    try:
        return version("dvconnect")
    except PackageNotFoundError:  # run from a tree that was never installed
        return "unknown"


def include_name(name: str | None, type_: str, _parent: Any) -> bool:
    """What Alembic compares and migrates: the `dvc_` tables, never the mapped ones."""
    return type_ != "table" or (name or "").startswith("dvc_")


def config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the migrations shipped in this package."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@cache
def script() -> ScriptDirectory:
    """The revisions (read once per process, by the commands that move a store between them)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(config())


@dataclass(frozen=True)
class SchemaState:
    """Where a store's `dvc_` tables stand against this release's revisions."""

    state: State
    revision: str | None  # what the store records (None: empty or unversioned)
    head: str
    release: str | None  # the release that last created or upgraded it, as the store records

    def refusal(self, shown_url: str) -> StoreError | None:
        """Why a command other than `db upgrade` cannot use the store, or None."""
        store = f"the store {shown_url}"
        if self.state == "unversioned":
            return StoreError(
                f"{store} was made by dvconnect {BASELINE_RELEASE}, before schema versions: "
                "run `dvconnect db upgrade` (it keeps every row)"
            )
        if self.state == "behind":
            made_by = f"dvconnect {self.release}" if self.release else "an older release"
            return StoreError(
                f"{store} is at schema revision {self.revision} ({made_by}), this release needs "
                f"{self.head}: run `dvconnect db upgrade` (it keeps every row)"
            )
        if self.state == "ahead":
            made_by = f"dvconnect {self.release}" if self.release else "a newer release"
            return StoreError(
                f"{store} was made by a newer release of dvconnect ({made_by}, schema revision "
                f"{self.revision}) than this one ({release()}, newest revision {self.head}): "
                "upgrade dvconnect to use it; nothing was changed"
            )
        return None

    def describe(self) -> str:
        """One line for `dvconnect db current`."""
        made = f" (schema written by dvconnect {self.release})" if self.release else ""
        return {
            "empty": f"no dvconnect tables yet: the first run creates them at revision {self.head}",
            "current": f"at revision {self.revision}, the newest this release knows{made}",
            "unversioned": f"made by dvconnect {BASELINE_RELEASE}, before schema versions: "
            "run `dvconnect db upgrade`",
            "behind": f"at revision {self.revision}{made}; this release needs {self.head}: "
            "run `dvconnect db upgrade`",
            "ahead": f"at revision {self.revision}{made}, newer than this release's "
            f"{self.head}: upgrade dvconnect",
        }[self.state]


def read_state(conn: Connection) -> SchemaState:
    """The store's state; reads only."""
    names = set(inspect(conn).get_table_names())
    ours = any(n.startswith("dvc_") and n != VERSION_TABLE for n in names)
    revision: str | None = None
    if VERSION_TABLE in names:
        heads = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars()
        revision = ",".join(sorted(heads)) or None
    made_by = None
    if dvc.meta.name in names:
        made_by = conn.execute(
            select(dvc.meta.c.value).where(dvc.meta.c.key == RELEASE_KEY)
        ).scalar()
    state: State
    if revision is None:
        state = "unversioned" if ours else "empty"
    elif revision == HEAD:
        state = "current"
    elif _known(revision):
        state = "behind"
    else:
        state = "ahead"
    return SchemaState(state, revision, HEAD, made_by)


def _known(revision: str) -> bool:
    from alembic.script.revision import RevisionError
    from alembic.util.exc import CommandError

    try:
        return all(script().get_revision(r) is not None for r in revision.split(","))
    except (CommandError, RevisionError):  # not one of ours
        return False


@dataclass(frozen=True)
class Migrated:
    """What `migrate` did: the state it found, and the revisions it ran or stamped."""

    before: SchemaState
    after: SchemaState
    created: bool = False  # a brand-new store: every table made at the head
    adopted: list[str] = field(default_factory=list)  # baseline tables or columns added
    ran: list[str] = field(default_factory=list)  # revisions run, oldest first


def migrate(conn: Connection, shown_url: str, *, upgrade: bool) -> Migrated:
    """Bring the store to the head, in `conn`'s transaction (which must allow DDL to roll back).

    A brand-new store is created at the head and stamped. With `upgrade` (`db upgrade`), an
    unversioned or older store is moved to the head; without it (a run preparing the store)
    those are refused. A store ahead of this release is always refused, and left as it is.
    """
    _lock(conn)
    before = read_state(conn)
    if before.state == "current":
        return Migrated(before, before)
    refusal = before.refusal(shown_url)
    if before.state == "ahead" or (refusal is not None and not upgrade):
        assert refusal is not None
        raise refusal
    created = before.state == "empty"
    adopted: list[str] = []
    if created:
        dvc.METADATA.create_all(conn)
        _VERSION.create(conn)
        conn.execute(_VERSION.insert().values(version_num=HEAD))
        ran: list[str] = []
    else:
        from alembic import command

        if before.state == "unversioned":
            adopted = adopt(conn)
        ran = _revisions_after(before.revision or BASELINE)
        command.upgrade(config(conn), "head")
    conn.execute(delete(dvc.meta).where(dvc.meta.c.key == RELEASE_KEY))
    conn.execute(dvc.meta.insert().values(key=RELEASE_KEY, value=release()))
    return Migrated(before, read_state(conn), created, adopted, ran)


def adopt(conn: Connection) -> list[str]:
    """Stamp an unversioned store (release 0.1.0) with the baseline, after adding the baseline's
    tables, columns and indexes it lacks (made by an earlier build, whose next start-up would
    have added them). Returns what was added; never drops or changes what is there."""
    baseline: MetaData = script().get_revision(BASELINE).module.SCHEMA
    existing = inspect(conn)
    present = set(existing.get_table_names())
    added: list[str] = []
    for table in baseline.sorted_tables:
        if table.name not in present:
            table.create(conn)
            added.append(table.name)
            continue
        columns = {c["name"] for c in existing.get_columns(table.name)}
        for column in table.columns:
            if column.name not in columns:
                ddl = column.type.compile(dialect=conn.dialect)
                conn.execute(text(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {ddl}'))
                added.append(f"{table.name}.{column.name}")
        indexes = {i["name"] for i in existing.get_indexes(table.name)}
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            if index.name not in indexes:
                index.create(conn)
                added.append(str(index.name))
    from alembic.runtime.migration import MigrationContext

    MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).stamp(
        script(), BASELINE
    )
    return added


def _revisions_after(revision: str) -> list[str]:
    """The revisions from `revision` (excluded) to the head, oldest first."""
    steps = script().iterate_revisions(HEAD, revision)
    return [s.revision for s in reversed(list(steps))]


def _lock(conn: Connection) -> None:
    """Serialise schema changes: PostgreSQL by an advisory lock held to the end of the
    transaction; SQLite by the write lock its migration transactions take (BEGIN IMMEDIATE)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK})
