"""Stores that cannot be used get one line naming the store and the problem, the documented exit
code, and nothing written; read-only commands never create or change anything in a store."""

from __future__ import annotations

import hashlib
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from tests.inputs.conftest import Cli


def _digest(path: Path) -> str:
    """The bytes of a file that is not a database; the whole content (as SQL) of one that is."""
    data = path.read_bytes()
    if not data.startswith(b"SQLite format 3"):
        return hashlib.sha256(data).hexdigest()
    with sqlite3.connect(path) as database:
        return hashlib.sha256("\n".join(database.iterdump()).encode()).hexdigest()


def test_a_corrupt_store_is_named_with_exit_3_and_left_as_it_is(
    workdir: Path, dvconnect: Cli
) -> None:
    store = workdir / "store.sqlite3"
    store.write_bytes(b"this is not a database, just bytes" * 200)
    before = _digest(store)
    for args in (["status"], ["run", "sync"], ["segments", "list"]):
        code, _, err = dvconnect(*args)
        assert (code, err.strip()) == (
            3,
            "dvconnect: the store sqlite:///store.sqlite3 cannot be used: file is not a database "
            "(the file is not a SQLite database)",
        )
    assert _digest(store) == before


def test_a_read_only_store_is_named_with_exit_3(workdir: Path, dvconnect: Cli) -> None:
    code, _, _ = dvconnect("run", "sync", DVCONNECT_DATAVERSE_URL="https://127.0.0.1:9")
    assert code == 3  # unreachable org; the store was prepared first
    url = "sqlite:///file:store.sqlite3?mode=ro&uri=true"
    code, _, err = dvconnect("run", "sync", DVCONNECT_DATABASE_URL=url)
    assert code == 3
    assert err.strip() == (
        f"dvconnect: the store {url} cannot be used: attempt to write a readonly database "
        "(the file or its folder is read-only)"
    )


def test_a_locked_store_is_named_with_exit_3(workdir: Path, dvconnect: Cli) -> None:
    dvconnect("run", "sync", DVCONNECT_DATAVERSE_URL="https://127.0.0.1:9")
    holder = sqlite3.connect(workdir / "store.sqlite3", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        url = "sqlite:///store.sqlite3?timeout=0.2"
        code, _, err = dvconnect("run", "sync", DVCONNECT_DATABASE_URL=url)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert code == 3
    assert err.strip() == (
        f"dvconnect: the store {url} cannot be used: database is locked "
        "(another process holds a write lock; try again)"
    )


def test_a_store_whose_tables_are_not_ours_is_refused_with_exit_2(
    workdir: Path, dvconnect: Cli
) -> None:
    engine = create_engine(f"sqlite:///{workdir / 'store.sqlite3'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE lead (id INTEGER PRIMARY KEY, name TEXT)"))
    before = _digest(workdir / "store.sqlite3")
    code, _, err = dvconnect("run", "sync")
    assert code == 2
    assert err.strip() == (
        "dvconnect: DVCONNECT_DATABASE_URL: the store sqlite:///store.sqlite3 has a table 'lead' "
        "that dvconnect did not make (it has no dvc_generation column); use a database of "
        "dvconnect's own"
    )
    assert _digest(workdir / "store.sqlite3") == before


def test_read_only_commands_on_a_fresh_store_show_their_plan_and_create_nothing(
    workdir: Path, dvconnect: Cli
) -> None:
    code, out, err = dvconnect("status")
    assert code == 0, err
    assert out.splitlines()[0] == "the store is empty: nothing synced yet (sqlite:///store.sqlite3)"
    code, _, err = dvconnect("check", "--offline")
    assert code == 0, err
    code, out, err = dvconnect("run", "all", "--dry-run")
    assert code == 0, err
    assert "sync: table lead, read full read, then remove local rows Dataverse no longer has" in out
    assert (
        "link-orphans: would not run now link-orphans works from the store, and lead has not "
        "been synced in full yet: run `dvconnect run sync` first"
    ) in out
    code, _, _ = dvconnect("segments", "list")
    assert code == 0
    assert not (workdir / "store.sqlite3").exists()


def test_status_does_not_add_a_column_the_mapping_gained(workdir: Path, dvconnect: Cli) -> None:
    dvconnect("run", "sync", DVCONNECT_DATAVERSE_URL="https://127.0.0.1:9")  # prepares the store
    tables = workdir / "mappings" / "tables.yaml"
    tables.write_text(
        tables.read_text().replace(
            "      subject: string", "      subject: string\n      description: string", 1
        )
    )
    before = _digest(workdir / "store.sqlite3")
    for args in (["status"], ["check", "--offline"], ["run", "sync", "--dry-run"]):
        code, _, err = dvconnect(*args)
        assert code == 0, err
    engine = create_engine(f"sqlite:///{workdir / 'store.sqlite3'}")
    assert "description" not in {c["name"] for c in inspect(engine).get_columns("lead")}
    assert _digest(workdir / "store.sqlite3") == before


def test_json_prints_a_json_error_document_on_a_fatal_error(workdir: Path, dvconnect: Cli) -> None:
    import json

    code, out, _ = dvconnect("run", "sync", "--json", DVCONNECT_PAGE_SIZE="0")
    assert code == 2
    assert json.loads(out) == {
        "error": {
            "message": "DVCONNECT_PAGE_SIZE: Input should be greater than or equal to 1",
            "exit_code": 2,
        }
    }


def test_a_second_process_of_the_same_job_exits_4(workdir: Path, dvconnect: Cli) -> None:
    from connector.mapping import load_mapping
    from connector.store import Store

    dvconnect("run", "sync", DVCONNECT_DATAVERSE_URL="https://127.0.0.1:9")
    store = Store(f"sqlite:///{workdir / 'store.sqlite3'}", load_mapping(workdir / "mappings"))
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with store.lease("sync lead"):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(30)
    try:
        code, _, err = dvconnect("run", "sync")
    finally:
        release.set()
        holder.join()
    assert code == 4
    assert err.strip().splitlines()[-1].startswith("dvconnect: sync lead is already running (pid ")


# Every command that opens a store checks its schema version (connector.schema).
OPENING = (["status"], ["run", "sync"], ["segments", "list"], ["journeys", "list"],
           ["check", "--offline"], ["state", "reset", "lead"])  # fmt: skip


def _prepared(workdir: Path, dvconnect: Cli) -> Path:
    """A store made by a run of this release (the org unreachable: the store is made first)."""
    code, _, _ = dvconnect("run", "sync", DVCONNECT_DATAVERSE_URL="https://127.0.0.1:9")
    assert code == 3
    return workdir / "store.sqlite3"


def test_a_store_made_by_a_newer_release_is_refused_naming_it_and_left_as_it_is(
    workdir: Path, dvconnect: Cli
) -> None:
    from connector.schema import HEAD, release

    store = _prepared(workdir, dvconnect)
    with sqlite3.connect(store) as database:
        database.execute("UPDATE dvc_alembic_version SET version_num = '0042'")
        database.execute("UPDATE dvc_meta SET value = '0.7.0' WHERE key = 'schema_release'")
    before = _digest(store)
    for args in [*OPENING, ["db", "upgrade"]]:
        code, _, err = dvconnect(*args)
        assert (code, err.strip()) == (
            3,
            "dvconnect: the store sqlite:///store.sqlite3 was made by a newer release of "
            "dvconnect (dvconnect 0.7.0, schema revision 0042) than this one "
            f"({release()}, newest revision {HEAD}): upgrade dvconnect to use it; nothing was "
            "changed",
        ), args
    code, out, _ = dvconnect("db", "current")
    assert (code, out.strip()) == (
        0,
        "sqlite:///store.sqlite3: at revision 0042 (schema written by dvconnect 0.7.0), newer "
        f"than this release's {HEAD}: upgrade dvconnect",
    )
    assert _digest(store) == before


def test_a_store_made_before_schema_versions_is_refused_until_db_upgrade_which_keeps_it(
    workdir: Path, dvconnect: Cli
) -> None:
    from connector.schema import HEAD, release

    store = _prepared(workdir, dvconnect)
    with sqlite3.connect(store) as database:  # what release 0.1.0 made: no version, no release
        database.execute("DROP TABLE dvc_alembic_version")
        database.execute("DROP TABLE dvc_tick_claims")  # revision 0002's
        database.execute("DELETE FROM dvc_meta WHERE key = 'schema_release'")
        database.execute("INSERT INTO dvc_segment_events (segment, contactid, event, at) "
                         "VALUES ('s', 'c', 'entered', '2027-01-04T08:00:00Z')")  # fmt: skip
    before = _digest(store)
    for args in OPENING:
        code, _, err = dvconnect(*args)
        assert (code, err.strip()) == (
            3,
            "dvconnect: the store sqlite:///store.sqlite3 was made by dvconnect 0.1.0, before "
            "schema versions: run `dvconnect db upgrade` (it keeps every row)",
        ), args
    assert _digest(store) == before
    code, out, err = dvconnect("db", "upgrade")
    assert (code, out.splitlines()[0]) == (
        0,
        "sqlite:///store.sqlite3: made by dvconnect 0.1.0 before schema versions; stamped with "
        "its revision 0001",  # the baseline; later revisions are listed as run after it
    ), err
    assert out.splitlines()[1:] == [
        "sqlite:///store.sqlite3: ran revisions 0002; now at revision 0002"
    ]
    code, out, _ = dvconnect("db", "current")
    assert out.strip() == (
        f"sqlite:///store.sqlite3: at revision {HEAD}, the newest this release knows (schema "
        f"written by dvconnect {release()})"
    )
    with sqlite3.connect(store) as database:
        assert database.execute("SELECT segment, event FROM dvc_segment_events").fetchall() == [
            ("s", "entered")
        ]
    code, _, err = dvconnect("status")
    assert code == 0, err


def test_db_current_on_a_fresh_store_says_what_the_first_run_does_and_creates_nothing(
    workdir: Path, dvconnect: Cli
) -> None:
    from connector.schema import HEAD

    code, out, _ = dvconnect("db", "current")
    assert (code, out.strip()) == (
        0,
        "sqlite:///store.sqlite3: no dvconnect tables yet: the first run creates them at "
        f"revision {HEAD}",
    )
    assert not (workdir / "store.sqlite3").exists()


def test_an_unreachable_database_exits_3_naming_it_with_the_password_masked(
    workdir: Path, dvconnect: Cli
) -> None:
    url = "postgresql://crm:s3cr3t-pw@127.0.0.1:9/production"
    for args in [*OPENING, ["db", "upgrade"], ["db", "current"]]:
        code, out, err = dvconnect(*args, DVCONNECT_DATABASE_URL=url)
        assert code == 3, args
        assert err.strip().startswith(
            "dvconnect: the store postgresql://crm:***@127.0.0.1:9/production cannot be used: "
            'connection failed: connection to server at "127.0.0.1", port 9 failed: '
        ), args
        assert "s3cr3t-pw" not in out + err


def test_a_database_that_never_answers_exits_3_after_the_connect_timeout(
    workdir: Path, dvconnect: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connector import store

    monkeypatch.setattr(store, "CONNECT_TIMEOUT", 1)  # 10 s in earnest
    with socket.socket() as silent:  # accepts connections (the kernel does) and never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        url = f"postgresql://crm:s3cr3t-pw@127.0.0.1:{port}/production"
        started = time.monotonic()
        code, out, err = dvconnect("status", DVCONNECT_DATABASE_URL=url)
    assert time.monotonic() - started < 10
    assert code == 3
    assert err.strip().startswith(
        f"dvconnect: the store postgresql://crm:***@127.0.0.1:{port}/production cannot be used: "
    )
    assert "timeout" in err
    assert "s3cr3t-pw" not in out + err
