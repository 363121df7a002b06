"""A store made by the previous release upgrades with `dvconnect db upgrade`, every row kept, on
SQLite and PostgreSQL, and this release's jobs then run on it.

The previous release is the tree of `RELEASE_0_1_0`, the last commit before dvconnect had
migrations: its layout is release 0.1.0's (the CHANGELOG has no tagged release yet, so the commit
stands for the tag). The test takes that tree out of this repository's history (`git archive`),
runs its own `dvconnect` on it (`python -m jobs.cli` with that tree first on the path) against
the emulator, then this tree's.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, create_engine, select

from connector import schema
from connector.mapping import load_mapping
from connector.store import Store
from tests.e2e.conftest import Cli
from tests.paths import MAPPINGS, ROOT

RELEASE_0_1_0 = "d355ee6e9b5ab64d5d990b253241d89b5abedf49"
START = datetime(2027, 1, 4, 8, 0, tzinfo=UTC)  # the sample journeys' start: Monday in Zurich

Rows = dict[str, list[tuple[Any, ...]]]


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release's tree, out of this repository's history."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", RELEASE_0_1_0],  # noqa: S607 (git on PATH)
        capture_output=True, check=False,
    )  # fmt: skip
    if archive.returncode != 0:
        reason = archive.stderr.decode(errors="replace").strip()
        message = f"no git history holding {RELEASE_0_1_0[:7]} (a shallow clone?): {reason}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    tree = tmp_path_factory.mktemp("release-0.1.0")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tree, filter="data")
    assert not (tree / "connector" / "schema.py").exists(), "the release before migrations"
    return tree


@pytest.fixture
def cli(fresh_emulator: Any, tmp_path: Path, database_url: str) -> Cli:
    """This release's CLI against the emulator, on a store that is a SQLite file or a fresh
    PostgreSQL database."""
    return Cli(fresh_emulator, tmp_path, env={"DVCONNECT_DATABASE_URL": database_url})


def _url(cli: Cli) -> str:
    return cli.environment()["DVCONNECT_DATABASE_URL"]


def _at(cli: Cli, moment: datetime) -> dict[str, str]:
    """Both clocks at `moment`: the emulator's, and dvconnect's (returned as its setting)."""
    now = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    cli.emulator.admin("POST", "/clock", {"now": now})
    return {"DVCONNECT_NOW": now}


def _previous(cli: Cli, tree: Path, *commands: list[str], **env: str) -> None:
    """Run `dvconnect COMMAND` of the previous release for each command, in one process (a
    Python start-up each would double the test's time), on the same store and org."""
    environment = cli.environment(
        DVCONNECT_MAPPINGS_DIR=str(tree / "tests" / "mappings"), PYTHONPATH=str(tree), **env
    )
    done = subprocess.run(
        [sys.executable, "-c", _COMMANDS, json.dumps(commands)], cwd=tree, env=environment,
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith(f"{tree}/connector/store.py"), "not the previous release's"


_COMMANDS = """
import json, sys
import connector.store
from jobs.cli import main
print(connector.store.__file__)  # the previous release's
for args in json.loads(sys.argv[1]):
    if main(args) != 0:
        sys.exit(f"dvconnect {' '.join(args)} failed")
"""


def _everything(url: str) -> Rows:
    """Every row of every table of the store, as (column, value) pairs by column name, sorted."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            tables = MetaData()
            tables.reflect(conn)
            rows: Rows = {}
            for name, table in sorted(tables.tables.items()):
                columns = sorted(table.columns, key=lambda c: c.name)
                found = conn.execute(select(*columns))
                rows[name] = _sorted(tuple(zip(found.keys(), row, strict=True)) for row in found)
            return rows
    finally:
        engine.dispose()


def _sorted(rows: Iterable[tuple[tuple[str, Any], ...]]) -> list[tuple[tuple[str, Any], ...]]:
    return sorted(rows, key=repr)


def test_a_store_of_release_0_1_0_upgrades_with_every_row_kept_and_runs_this_release(
    cli: Cli, previous_release: Path
) -> None:
    cli.emulator.reset(leads=600, contacts=300)  # conference decision makers: journeys fill up
    day0 = _at(cli, START)
    _previous(cli, previous_release, ["journeys", "start", "product-launch"],
              ["journeys", "start", "conference-follow-up"], ["run", "all"], **day0)  # fmt: skip
    day3 = _at(cli, START + timedelta(days=3, hours=2))
    _previous(cli, previous_release, ["run", "all"], **day3)

    made = _everything(_url(cli))
    assert schema.VERSION_TABLE not in made, "made by the release before migrations"
    filled = {name for name, rows in made.items() if rows}
    assert {"lead", "contact", "dvc_sync_state", "dvc_runs", "dvc_outbox", "dvc_orphan_links",
            "dvc_segment_members", "dvc_segment_events", "dvc_journeys", "dvc_journey_members",
            "dvc_journey_history", "dvc_journey_records", "dvc_scores",
            "dvc_score_history"} <= filled, sorted(set(made) - filled)  # fmt: skip

    refused = cli.run("run", "all", **day3)
    assert refused.returncode == 3
    assert "run `dvconnect db upgrade`" in refused.stderr
    assert cli.run("status").returncode == 3
    assert _everything(_url(cli)) == made, "a refused command changed the store"

    upgraded = cli.run("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert "stamped with its revision 0001" in upgraded.stdout
    kept = _everything(_url(cli))
    version = kept.pop(schema.VERSION_TABLE)
    assert version == [(("version_num", schema.HEAD),)]
    assert (("key", schema.RELEASE_KEY), ("value", schema.release())) in kept["dvc_meta"]
    kept["dvc_meta"].remove((("key", schema.RELEASE_KEY), ("value", schema.release())))
    for name, rows in made.items():  # every row of every table, each value of the old columns
        old = {column for column, _ in rows[0]} if rows else set()
        assert _sorted(tuple(c for c in row if c[0] in old) for row in kept[name]) == rows, name
    current = cli.run("db", "current")
    assert "the newest this release knows" in current.stdout

    day4 = _at(cli, START + timedelta(days=4, hours=2))
    ran = cli.run("run", "all", **day4)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert cli.run("status").returncode == 0
    after = _everything(_url(cli))
    assert len(after["dvc_runs"]) > len(made["dvc_runs"])
    store = Store(_url(cli), load_mapping(MAPPINGS))
    for table in ("lead", "contact"):
        org = {row[store.mapping.tables[table].primary_key] for row in cli.emulator.rows(table)}
        key = store.tables[table].c[store.mapping.tables[table].primary_key]
        with store.engine.connect() as conn:
            assert set(conn.execute(select(key)).scalars()) == org, table
    store.engine.dispose()
