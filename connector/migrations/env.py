"""Alembic's environment for the `dvc_` tables: `connector.tables.METADATA` is the target.

dvconnect runs its migrations itself (`dvconnect db upgrade`, `connector.schema`) and hands Alembic
the connection in `config.attributes["connection"]`, inside a transaction of its own. To draft a
revision with Alembic's command line, name a store at the head with `-x url=`:

    .venv/bin/alembic -c connector/migrations/alembic.ini -x url=sqlite:///var/dvconnect.sqlite3 \\
        revision --autogenerate -m "what changed"

Only the `dvc_` tables are compared: the mapped tables follow `tables.yaml`, not revisions.
SQLite alters tables in batch mode (copy and move), which Alembic renders when `render_as_batch`.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from connector import tables
from connector.schema import VERSION_TABLE, include_name


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=tables.METADATA,
        version_table=VERSION_TABLE,
        include_name=include_name,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    if context.is_offline_mode():
        raise SystemExit("dvconnect's migrations run against a store: leave --sql out")
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("name the store: alembic ... -x url=sqlite:///var/dvconnect.sqlite3")
    from connector.store import migration_engine

    engine = migration_engine(url)
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


_main()
