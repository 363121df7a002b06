"""The store: tables from the mapping, upserts, deletes, the full-read sweep and sync state."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, select

from connector import tables as dvc
from connector.errors import ConfigError, NotRunError
from connector.mapping import TableMapping, load_mapping
from connector.store import Store, SyncState
from tests.paths import MAPPINGS

SHIPPED = MAPPINGS
A = "00000000-0000-0000-0000-00000000000a"
B = "00000000-0000-0000-0000-00000000000b"


@pytest.fixture
def store(database_url: str) -> Store:
    s = Store(database_url, load_mapping(SHIPPED))
    s.prepare()
    return s


def _rows(store: Store) -> list[tuple[object, ...]]:
    with store.engine.connect() as conn:
        result = conn.exec_driver_sql(
            "SELECT leadid, subject, statecode, donotphone, dvc_generation FROM lead ORDER BY leadid"
        )
        return [tuple(row) for row in result]


def _columns(store: Store, table: str) -> list[str]:
    return [c["name"] for c in inspect(store.engine).get_columns(table)]


def test_tables_are_named_and_columned_by_logical_names(store: Store) -> None:
    tables = set(inspect(store.engine).get_table_names())
    columns = _columns(store, "lead")
    assert {"lead", "contact", "dvc_sync_state", "dvc_runs"} <= tables
    assert columns[:2] == ["leadid", "firstname"]
    assert "_parentcontactid_value" in columns
    assert columns[-1] == "dvc_generation"


def test_upsert_inserts_then_updates_and_ignores_unmapped_fields(store: Store) -> None:
    with store.transaction() as conn:
        store.upsert_rows(
            conn,
            "lead",
            [
                {
                    "@odata.etag": 'W/"1"',
                    "leadid": A,
                    "subject": "O'Brien & Zoë",
                    "statecode": 0,
                    "donotphone": False,
                },
                {"leadid": B, "subject": "second"},
            ],
            generation=1,
        )
    with store.transaction() as conn:
        store.upsert_rows(
            conn,
            "lead",
            [{"leadid": A, "subject": "changed", "statecode": 1, "donotphone": True}],
            generation=2,
        )
    assert _rows(store) == [(A, "changed", 1, True, 2), (B, "second", None, None, 1)]


def test_a_table_of_the_fewest_columns_and_rows_lacking_columns_are_stored(
    database_url: str,
) -> None:
    base = load_mapping(SHIPPED)
    team = TableMapping(name="team", entity_set="teams", primary_key="teamid",
                        columns={"teamid": "guid", "modifiedon": "datetime"})  # fmt: skip
    store = Store(database_url, replace(base, tables={**base.tables, "team": team}))
    store.prepare()
    with store.transaction() as conn:
        store.upsert_rows(conn, "team", [{"@odata.etag": 'W/"1"', "teamid": A}], generation=1)
        store.upsert_rows(  # no lookup annotation, no e-mail, no owner: nulls, not an error
            conn, "lead", [{"leadid": B, "subject": "s", "_ownerid_value": None}], generation=1
        )
    with store.engine.connect() as conn:
        assert [tuple(r) for r in conn.exec_driver_sql("SELECT * FROM team")] == [(A, None, 1)]
        lead = conn.exec_driver_sql(
            "SELECT leadid, subject, owneridtype, dvc_key_emailaddress1, dvc_generation FROM lead"
        ).one()
    assert tuple(lead) == (B, "s", None, None, 1)


def test_delete_and_sweep_remove_rows(store: Store) -> None:
    with store.transaction() as conn:
        store.upsert_rows(conn, "lead", [{"leadid": A}, {"leadid": B}], generation=1)
        assert store.delete_rows(conn, "lead", [A, "00000000-0000-0000-0000-000000000999"]) == 1
    with store.transaction() as conn:
        store.upsert_rows(conn, "lead", [{"leadid": A}], generation=2)
        assert store.sweep(conn, "lead", 2) == 1
    assert [r[0] for r in _rows(store)] == [A]


def test_state_round_trips_and_rolls_back_with_its_page(store: Store) -> None:
    state = SyncState(
        "lead", phase="full", mode="delta", next_link="https://x/leads?$skiptoken=2", generation=3
    )
    with store.transaction() as conn:
        store.save_state(conn, state)
    assert store.load_state("lead") == state
    with pytest.raises(RuntimeError), store.transaction() as conn:
        store.upsert_rows(conn, "lead", [{"leadid": A}], generation=3)
        store.save_state(conn, replace(state, next_link="https://x/leads?$skiptoken=3"))
        raise RuntimeError("crash before commit")
    assert store.load_state("lead") == state
    assert _rows(store) == []


def test_reset_forgets_cursors_and_starts_a_new_generation(store: Store) -> None:
    with store.transaction() as conn:
        store.save_state(
            conn, SyncState("lead", mode="delta", delta_link="https://x/d", generation=4)
        )
    store.reset_state("lead")
    state = store.load_state("lead")
    assert (state.phase, state.delta_link, state.next_link, state.generation) == (
        "full",
        None,
        None,
        5,
    )
    with pytest.raises(
        ConfigError,
        match="unknown table 'leads': the mapping has contact, email, lead, phonecall, queue, systemuser, task",
    ):
        store.reset_state("leads")


def test_a_column_added_to_the_mapping_is_added_and_forces_a_full_read(
    tmp_path: Path, store: Store
) -> None:
    with store.transaction() as conn:
        store.save_state(
            conn, SyncState("lead", mode="delta", delta_link="https://x/d", generation=1)
        )
    base = load_mapping(SHIPPED)
    lead = base.tables["lead"]
    grown = lead.model_copy(update={"columns": {**lead.columns, "description": "string"}})
    mapping = replace(base, tables={**base.tables, "lead": grown})
    again = Store(str(store.engine.url), mapping)
    again.prepare()
    assert again.load_state("lead").phase == "full"
    assert again.load_state("contact").phase == "idle"
    assert "description" in _columns(again, "lead")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "mysql://u@h/db",
            "DVCONNECT_DATABASE_URL: unsupported database 'mysql' (sqlite or postgresql)",
        ),
        ("not a url", "DVCONNECT_DATABASE_URL: not a database URL"),
    ],
)
def test_bad_database_urls_are_configuration_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Store(url, load_mapping(SHIPPED))
    assert str(caught.value) == message


def test_table_mapping_select_follows_mapping_order_without_lookup_types() -> None:
    table = TableMapping(
        name="lead",
        entity_set="leads",
        primary_key="leadid",
        columns={"leadid": "guid", "_ownerid_value": "guid", "owneridtype": "lookuptype",
                 "modifiedon": "datetime"},
    )  # fmt: skip
    assert table.select == ["leadid", "_ownerid_value", "modifiedon"]
    assert table.lookup_types == {"owneridtype": "_ownerid_value"}


def _hold(store: Store, host: str, pid: int, expires_at: str) -> None:
    with store.transaction() as conn:
        conn.execute(
            dvc.leases.insert().values(name="sync lead", host=host, pid=pid, expires_at=expires_at)
        )


def test_a_held_lease_refuses_a_second_holder(store: Store) -> None:
    with store.lease("sync lead"):
        with (
            pytest.raises(NotRunError, match=r"^sync lead is already running \(pid \d+ on "),
            store.lease("sync lead"),
        ):
            pass
        with store.transaction() as conn:
            store.renew_lease(conn, "sync lead")
    with store.lease("sync lead"):  # released at the end of the block
        pass


def test_a_cron_tick_is_claimed_once_per_job_and_old_claims_are_pruned(store: Store) -> None:
    tick = datetime(2026, 12, 7, 14, 5, tzinfo=UTC)
    assert store.claim_tick("sync", tick) is None
    assert store.claim_tick("sync", tick) == f"pid {os.getpid()} on {socket.gethostname()}"
    assert store.claim_tick("segments", tick) is None  # another job's tick
    assert store.claim_tick("sync", tick + timedelta(minutes=1)) is None
    assert store.claim_tick("sync", tick + timedelta(days=1, minutes=1)) is None
    claims = dvc.tick_claims.c
    with store.engine.connect() as conn:
        kept = conn.execute(select(claims.job, claims.tick).order_by(claims.tick, claims.job))
        assert [tuple(row) for row in kept] == [
            ("segments", "2026-12-07T14:05:00Z"),  # only the job claiming prunes its own
            ("sync", "2026-12-07T14:06:00Z"),  # a day before the newest: kept
            ("sync", "2026-12-08T14:06:00Z"),
        ]


def test_a_lease_whose_holder_is_gone_or_expired_is_taken_over(store: Store) -> None:
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    _hold(
        store, socket.gethostname(), int(finished.stdout), "2999-01-01T00:00:00Z"
    )  # killed holder
    with store.lease("sync lead"):
        pass
    _hold(store, "another-host", 1, "2000-01-01T00:00:00Z")  # expired, on another machine
    with store.lease("sync lead"):
        pass


def test_a_live_holder_on_another_host_keeps_its_lease(store: Store) -> None:
    if store.coordinated:  # its holder is another Store: an instance of its own, its own session
        other = Store(store.url, store.mapping)
        with other.lease("sync lead"):
            with store.transaction() as conn:
                conn.execute(dvc.leases.update().values(host="another-host", pid=1))
            with (
                pytest.raises(NotRunError, match=r"pid 1 on another-host"),
                store.lease("sync lead"),
            ):
                pass
        return
    _hold(store, "another-host", 1, "2999-01-01T00:00:00Z")
    with pytest.raises(NotRunError, match=r"pid 1 on another-host"), store.lease("sync lead"):
        pass


def test_renewing_a_lease_taken_over_aborts_the_page(store: Store) -> None:
    with store.lease("sync lead"):
        with store.transaction() as conn:
            conn.execute(dvc.leases.update().values(host="another-host"))
        with (
            pytest.raises(NotRunError, match="the lease was taken over"),
            store.transaction() as conn,
        ):
            store.upsert_rows(conn, "lead", [{"leadid": A}], generation=1)
            store.renew_lease(conn, "sync lead")
    assert _rows(store) == []
