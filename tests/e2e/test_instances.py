"""Several `dvconnect schedule` instances on one PostgreSQL store (a server the test starts):
each job runs on one at a time, a big journey's members are decided once each by whichever
instance claimed them, two instances deciding capped calls together never exceed an owner's
cap, and a killed instance's job runs on the other at its next tick. With
SQLite a second `schedule` refuses to start; an unreachable database stops it with exit 3.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from connector import tables as dvc
from connector.mapping import load_mapping
from connector.store import Store
from tests.e2e.conftest import Cli
from tests.e2e.journey_org import START, Org
from tests.paths import MAPPINGS
from tests.postgres_server import PostgresServer

_names = itertools.count()
STAMP = "%Y-%m-%dT%H:%M:%SZ"


def on_postgres(cli: Cli, postgres: PostgresServer, schedule: str) -> Store:
    """Point the CLI at a new PostgreSQL database, with `schedule` as its schedule.yaml's jobs."""
    url = postgres.create_database(f"instances_{os.getpid()}_{next(_names)}")
    mappings = cli.workdir / "mappings"
    shutil.copytree(MAPPINGS, mappings)
    (mappings / "schedule.yaml").write_text(f"timezone: UTC\njobs:\n{schedule}")
    cli.env.update({"DVCONNECT_DATABASE_URL": url, "DVCONNECT_MAPPINGS_DIR": str(mappings)})
    return Store(url, load_mapping(mappings))


def runs(store: Store, job: str) -> list[dict[str, Any]]:
    if not store.exists:
        return []
    r = dvc.runs.c
    with store.engine.connect() as conn:
        rows = conn.execute(select(dvc.runs).where(r.job == job).order_by(r.run_id)).mappings()
        return [dict(row) for row in rows]


def stop(*processes: subprocess.Popen[str]) -> list[str]:
    """SIGTERM each process still running; their stderr."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    return [process.communicate(timeout=120)[1] for process in processes]


def test_one_instance_runs_a_job_at_a_time_and_a_killed_ones_job_runs_at_the_next_tick(
    cli: Cli, postgres: PostgresServer
) -> None:
    store = on_postgres(cli, postgres, '  sync: "* * * * *"\n')
    cli.emulator.admin("PUT", "/faults", {"spec": "hold:path=leads*:at=1"})
    first = cli.popen("schedule", "--now")
    second = None
    try:
        cli.wait_until_held(first)  # the first instance's sync is under way, its lease held

        second = cli.popen("schedule", "--now")

        def refused() -> bool:
            return any(run["pid"] == second.pid and run["outcome"] == "not run"
                       for run in runs(store, "sync"))  # fmt: skip

        cli.wait_for(refused)
        refusal = next(run for run in runs(store, "sync") if run["pid"] == second.pid)
        assert f"sync lead is already running (pid {first.pid} on " in refusal["error"]
        with store.engine.connect() as conn:  # the first still holds the lease, alone
            holders = conn.execute(select(dvc.leases.c.pid)).scalars().all()
        assert holders == [first.pid]
        assert not any(run["pid"] == second.pid and run["outcome"] == "succeeded"
                       for run in runs(store, "sync"))  # fmt: skip

        killed_at = time.time()
        first.kill()  # kill -9 mid-sync: its session, and its locks, end with it
        first.wait()
        cli.emulator.admin("DELETE", "/faults")

        def taken_over() -> bool:
            return any(run["pid"] == second.pid and run["outcome"] == "succeeded"
                       for run in runs(store, "sync"))  # fmt: skip

        cli.wait_for(taken_over, seconds=90)  # the second instance's next tick, within a minute
        assert time.time() - killed_at < 75
    finally:
        cli.emulator.admin("DELETE", "/faults")  # a held first instance could not stop
        errors = stop(first, *([second] if second else []))
    done = [run for run in runs(store, "sync") if run["outcome"] == "succeeded"]
    assert [run["pid"] for run in done] == [second.pid] * len(done)
    assert "Traceback" not in errors[-1]
    with store.engine.connect() as conn:
        leads = conn.execute(select(func.count()).select_from(store.tables["lead"])).scalar_one()
    assert leads == len(cli.emulator.rows("lead"))


def test_a_tick_both_instances_fire_runs_once_and_the_other_records_nothing(
    cli: Cli, postgres: PostgresServer
) -> None:
    store = on_postgres(cli, postgres, '  segments: "* * * * *"\n')
    if time.time() % 60 > 45:  # both must be up before the next minute: start after it
        time.sleep(61 - time.time() % 60)
    instances = [cli.popen("schedule") for _ in range(2)]
    try:
        # the next minute's run, to its end; the other instance's clock reaches the tick too
        cli.wait_for(lambda: any(r["outcome"] != "running" for r in runs(store, "segments")),
                     seconds=75)  # fmt: skip
        time.sleep(3)
    finally:
        errors = stop(*instances)
    (run,) = runs(store, "segments")
    assert run["outcome"] == "succeeded"
    winner = next(p for p in instances if p.pid == run["pid"])
    (other,) = (errors[i] for i, p in enumerate(instances) if p is not winner)
    assert f"segments: this tick runs on pid {winner.pid} on " in other
    with store.engine.connect() as conn:
        claims = conn.execute(select(dvc.tick_claims.c.job, dvc.tick_claims.c.pid)).all()
    assert [tuple(claim) for claim in claims] == [("segments", winner.pid)]


def test_two_instances_split_a_big_journey_and_decide_each_member_once(
    cli: Cli, postgres: PostgresServer
) -> None:
    store, org = journeys_org(cli, postgres)
    org.at(START)
    org.run("run", "all")
    org.run("journeys", "start", "product-launch")
    org.run("run", "journeys")  # day 0: everyone enters and gets the launch e-mail
    org.at(START + timedelta(days=7))  # nobody opened it: everyone is due for the brochure
    now = org.now.strftime(STAMP)

    instances = decide_together(cli, store, now)
    by_pid = {r["pid"]: r for r in runs(store, "journeys")}
    acted = [json.loads(by_pid[p.pid]["counts"])["product-launch"]["acted"] for p in instances]

    m, h = dvc.journey_members.c, dvc.journey_history.c
    with store.engine.connect() as conn:
        members = conn.execute(
            select(m.status, m.step, func.count())
            .where(m.journey == "product-launch").group_by(m.status, m.step)
        ).all()  # fmt: skip
        decided = conn.execute(
            select(h.member_id, func.count())
            .where(h.journey == "product-launch", h.step == "brochure")
            .group_by(h.member_id)
        ).all()  # fmt: skip
    # those whose lead was qualified left as converted; every other member got the brochure
    assert {status for status, _, _ in members} <= {"completed", "converted"}, members
    total = sum(count for status, _, count in members if status == "completed")
    assert total > 30  # in chunks of one: some thirty chunks to share
    assert len(decided) == total, members  # every member decided at the brochure …
    assert {count for _, count in decided} == {1}  # … once
    assert sum(acted) == total
    assert min(acted) > 0, f"one instance idled: {acted}"  # the work was shared
    brochures = [
        e for e in cli.emulator.rows("email") if e["subject"] == "The Contoso toolkit brochure"
    ]
    assert len(brochures) == total
    assert len({e["_regardingobjectid_value"] for e in brochures}) == total
    assert all(e["statecode"] == 1 for e in brochures)  # sent, each once


def journeys_org(cli: Cli, postgres: PostgresServer) -> tuple[Store, Org]:
    """A new PostgreSQL store whose `journeys` job never ticks during the test, and the
    3,000-lead org (the conference decision makers are in it)."""
    store = on_postgres(cli, postgres, '  journeys: "0 0 1 1 *"\n')
    cli.emulator.reset(leads=3000, contacts=1500)
    return store, Org(cli)


def capped_calls(owner: str) -> str:
    """A journey calling every member as it enters, by one owner, once a day."""
    return f"""name: capped-calls
audience: {{segment: contoso-decision-makers}}
entry: once
owner: {{round_robin: [{owner}]}}
caps: {{per_owner_per_day: 1}}
schedule: {{start: 2027-01-04T09:00, end: 2027-03-31T18:00, timezone: Europe/Zurich}}
steps:
  - id: call
    phonecall: {{subject: "Call {{{{ contact.fullname }}}}"}}
  - id: done
    end: true
"""


def decide_together(
    cli: Cli, store: Store, now: str, gate_table: str = "dvc_journey_members"
) -> list[subprocess.Popen[str]]:
    """Two `schedule --now` instances deciding the journeys' members a chunk of one at a time,
    together: both are held at their first look at `gate_table` until both wait (started one
    after the other, the first might be done before the second has started) — the test locks
    that table until both wait for it, or for what the first holds meanwhile. Returns them,
    both run."""
    gate = store.engine.connect()
    gate.exec_driver_sql(f"LOCK TABLE {gate_table} IN ACCESS EXCLUSIVE MODE")
    instances = [
        cli.popen("schedule", "--now", DVCONNECT_NOW=now, DVCONNECT_JOURNEY_CHUNK="1")
        for _ in range(2)
    ]
    try:

        def both_waiting() -> bool:
            with store.engine.connect() as conn:
                waiting = conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                ).scalar_one()
            return waiting == len(instances)

        cli.wait_for(both_waiting)
        gate.rollback()
        gate.close()

        def both_ran() -> bool:
            finished = {r["pid"] for r in runs(store, "journeys") if r["outcome"] != "running"}
            return finished >= {p.pid for p in instances}

        cli.wait_for(both_ran, seconds=240)
    finally:
        gate.close()  # whatever happened: never leave the instances waiting
        errors = stop(*instances)
    by_pid = {r["pid"]: r for r in runs(store, "journeys")}
    assert {by_pid[p.pid]["outcome"] for p in instances} == {"succeeded"}, errors
    return instances


def test_two_instances_deciding_capped_calls_together_never_exceed_an_owners_cap(
    cli: Cli, postgres: PostgresServer
) -> None:
    store, org = journeys_org(cli, postgres)
    owner = min(u["systemuserid"] for u in org.rows("systemuser") if not u["isdisabled"])
    (cli.workdir / "mappings" / "journeys" / "capped-calls.yaml").write_text(capped_calls(owner))
    org.at(START)
    org.run("run", "all")
    org.run("journeys", "start", "capped-calls")
    # One instance admits, then both decide the calls: both are held where the owner's calls of
    # the day are first counted — one at the table, the other at the caps lock the first holds
    # (without that lock, both would count none and call: two calls for a cap of one).
    decide_together(cli, store, org.now.strftime(STAMP), "dvc_journey_records")

    calls = [c for c in cli.emulator.rows("phonecall") if c["subject"].startswith("Call ")]
    assert [c["_ownerid_value"] for c in calls] == [owner]
    m, h = dvc.journey_members.c, dvc.journey_history.c
    with store.engine.connect() as conn:
        members = conn.execute(select(m.step, func.count()).where(m.journey == "capped-calls")
                               .group_by(m.step)).all()  # fmt: skip
        capped = conn.execute(
            select(func.count(func.distinct(h.member_id)))
            .where(h.journey == "capped-calls", h.event == "capped")
        ).scalar_one()  # fmt: skip
    assert dict(members) == {"done": 1, "call": capped}  # the others wait for another day
    assert capped > 10


def test_a_second_schedule_of_a_sqlite_store_refuses_to_start(cli: Cli, tmp_path: Path) -> None:
    mappings = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, mappings)
    (mappings / "schedule.yaml").write_text('timezone: UTC\njobs:\n  sync: "0 0 1 1 *"\n')
    first = cli.popen("schedule", DVCONNECT_MAPPINGS_DIR=str(mappings))
    try:
        lock = Path(f"{cli.database}.schedule")
        cli.wait_for(lambda: lock.exists() and f"pid {first.pid}" in lock.read_text())
        second = cli.run("schedule", DVCONNECT_MAPPINGS_DIR=str(mappings))
    finally:
        stop(first)
    assert second.returncode == 4
    assert (
        f"dvconnect: another `dvconnect schedule` already serves the store {cli.database} "
        f"(pid {first.pid}); a SQLite store takes one" in second.stderr
    )
    assert "use PostgreSQL" in second.stderr
    assert first.returncode == 0  # it went on serving until stopped


def test_an_unreachable_database_stops_schedule_with_exit_3_and_no_password(
    cli: Cli, tmp_path: Path
) -> None:
    url = f"postgresql://crm:s3cr3t-pw@/production?host={tmp_path / 'no-server'}"
    result = cli.run("schedule", DVCONNECT_DATABASE_URL=url)
    assert result.returncode == 3, result.stderr
    assert "the store postgresql://crm:***@/production" in result.stderr
    assert "s3cr3t-pw" not in result.stderr


def test_a_database_lost_mid_run_fails_the_run_cleanly_and_the_next_run_completes(
    cli: Cli, postgres: PostgresServer
) -> None:
    """The store's database goes away while a sync is reading (its sessions ended, new ones
    refused): the run stops with exit 3 and one line naming the store, password masked, no
    traceback; once the database is back, the next run completes and the store equals the org."""
    import psycopg

    store = on_postgres(cli, postgres, '  sync: "* * * * *"\n')
    database = store.engine.url.database
    cli.emulator.admin("PUT", "/faults", {"spec": "hold:path=contacts*:at=1"})
    run = cli.popen("run", "sync")
    cli.wait_until_held(run)  # leads are stored; contacts being read
    with psycopg.connect(host=str(postgres.socket_dir), user="postgres", dbname="postgres",
                         autocommit=True) as admin:  # fmt: skip
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = %s AND pid <> pg_backend_pid()", (database,))  # fmt: skip
        cli.emulator.admin("DELETE", "/faults")  # the held read goes on
        _, err = run.communicate(timeout=120)
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    assert run.returncode == 3, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("dvconnect: the store postgresql")
    store.engine.dispose()
    done = cli.run("run", "sync")
    assert done.returncode == 0, done.stderr[-2000:]
    for table in ("lead", "contact"):
        with store.engine.connect() as conn:
            stored = conn.execute(select(func.count()).select_from(store.tables[table])).scalar()
        assert stored == cli.emulator.admin("GET", f"/tables/{table}/count")["count"]
