"""What `/healthz` judges and what `/metrics` reads from the store, on each database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert

from connector import tables as dvc
from connector.settings import Settings
from jobs.context import Context, build_context
from jobs.service import StoreCollector, health
from tests.paths import MAPPINGS

NOW = datetime(2027, 1, 4, 9, 0, tzinfo=UTC)


def at(minutes_ago: float) -> str:
    return (NOW - timedelta(minutes=minutes_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def ctx(database_url: str) -> Context:
    settings = Settings(_env_file=None, database_url=database_url, mappings_dir=MAPPINGS, now=NOW,
                        health_failures=2, health_max_run=timedelta(hours=1))  # type: ignore[call-arg]  # fmt: skip
    return build_context(settings, prepare=True)


def add_run(ctx: Context, job: str, outcome: str, started: float, took: float | None = 1,
            counts: dict[str, Any] | None = None, error: str | None = None) -> None:  # fmt: skip
    finished = None if took is None else at(started - took)
    with ctx.store.engine.begin() as conn:
        conn.execute(insert(dvc.runs).values(
            job=job, started_at=at(started), finished_at=finished, outcome=outcome,
            counts=json.dumps(counts or {}), requests=3, error=error, host="elsewhere", pid=1,
        ))  # fmt: skip


def test_every_job_is_healthy_with_no_run_or_with_runs_that_ran(ctx: Context) -> None:
    assert health(ctx) == (True, "ok\n")
    add_run(ctx, "sync", "failed", 30, error="boom")
    add_run(ctx, "sync", "succeeded", 20)
    add_run(ctx, "sync", "partial", 10)
    assert health(ctx) == (True, "ok\n")


def test_a_job_whose_last_runs_all_failed_is_failing_and_recovers_with_a_run_that_ran(
    ctx: Context,
) -> None:
    add_run(ctx, "link-orphans", "failed", 40, error="the store is locked")
    add_run(ctx, "link-orphans", "not run", 35)  # another instance held it: says nothing
    add_run(ctx, "link-orphans", "failed", 30, error="Dataverse at org unreachable")
    ok, text = health(ctx)
    assert not ok
    assert text == (
        "unhealthy\nlink-orphans: failing: the last 2 runs failed; the latest, #3 started "
        "2027-01-04T08:30:00Z: Dataverse at org unreachable\n"
    )
    add_run(ctx, "link-orphans", "succeeded", 15)
    assert health(ctx) == (True, "ok\n")


def test_a_run_going_on_longer_than_the_maximum_is_stuck_until_a_later_run_finishes(
    ctx: Context,
) -> None:
    add_run(ctx, "journeys", "running", 59, took=None)
    assert health(ctx) == (True, "ok\n")
    add_run(ctx, "journeys", "running", 125, took=None)  # recorded later, started earlier
    ok, text = health(ctx)
    assert not ok
    assert text.splitlines()[1] == (
        "journeys: stuck: run #2 started 2027-01-04T06:55:00Z (pid 1 on elsewhere) is still "
        "going after 2h05m, longer than DVCONNECT_HEALTH_MAX_RUN"
    )
    add_run(ctx, "journeys", "succeeded", 5)
    assert health(ctx) == (True, "ok\n")


def scrape(ctx: Context) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in StoreCollector(ctx).collect()
        for s in family.samples
    }


def test_the_store_series_count_runs_durations_records_members_writes_and_grades(
    ctx: Context,
) -> None:
    lead = {"read": 300, "upserted": 290, "deleted": 10}
    add_run(ctx, "sync", "succeeded", 30, took=2, counts={"lead": lead})
    add_run(ctx, "sync", "succeeded", 15, took=5, counts={"lead": {**lead, "read": 4}})
    add_run(ctx, "sync", "failed", 5, took=1)
    with ctx.store.engine.begin() as conn:
        conn.execute(
            insert(dvc.sync_state).values(
                table_name="lead", phase="idle", mode="delta", generation=1, last_sync_at=at(10)
            )
        )
        members = [
            ("a", "launch-email", "active"),
            ("b", "launch-email", "active"),
            ("c", "call", "active"),
            ("d", None, "failed"),
            ("e", None, "converted"),
        ]
        conn.execute(
            insert(dvc.journey_members),
            [
                {
                    "journey": "launch",
                    "version": 1,
                    "contactid": c,
                    "entry": 1,
                    "step": step,
                    "status": status,
                    "arrived_at": at(1),
                    "due_at": at(0),
                    "entered_at": at(1),
                }
                for c, step, status in members
            ],
        )
        conn.execute(
            insert(dvc.scores),
            [
                {
                    "model": "interest",
                    "leadid": str(i),
                    "score": 1.0,
                    "grade": g,
                    "scored_at": at(1),
                }
                for i, g in enumerate(["hot", "cold", "cold"])
            ],
        )
        conn.execute(
            insert(dvc.outbox),
            [
                {
                    "key": f"k{i}",
                    "job": "journeys",
                    "kind": "create",
                    "table_name": "email",
                    "entity_set": "emails",
                    "primary_key": "activityid",
                    "record_id": str(i),
                    "body": "{}",
                    "headers": "{}",
                    "status": status,
                    "attempts": 1,
                    "created_at": at(1),
                }
                for i, status in enumerate(["done", "done", "failed", "pending"])
            ],
        )
        conn.execute(insert(dvc.segment_evaluations), [
            {"segment": "web", "evaluated_at": at(20), "size": 10, "entered": 10, "exited": 0,
             "seconds": 0.1},
            {"segment": "web", "evaluated_at": at(5), "size": 12, "entered": 3, "exited": 1,
             "seconds": 0.1},
        ])  # fmt: skip
    got = scrape(ctx)

    def value(name: str, **labels: str) -> float:
        return got[name, frozenset(labels.items())]

    assert value("dvconnect_store_up") == 1
    assert value("dvconnect_runs_total", job="sync", outcome="succeeded") == 2
    assert value("dvconnect_runs_total", job="sync", outcome="failed") == 1
    assert value("dvconnect_run_duration_seconds_count", job="sync") == 3
    assert value("dvconnect_run_duration_seconds_sum", job="sync") == pytest.approx(8 * 60)
    assert value("dvconnect_run_last_duration_seconds", job="sync") == pytest.approx(60)
    assert (
        value("dvconnect_run_last_success_timestamp_seconds", job="sync")
        == (NOW - timedelta(minutes=10)).timestamp()
    )
    assert value("dvconnect_run_requests_total", job="sync") == 9
    assert value("dvconnect_sync_records_total", table="lead", op="read") == 304
    assert value("dvconnect_sync_records_total", table="lead", op="deleted") == 20
    assert value("dvconnect_sync_records_total", table="contact", op="read") == 0
    assert value("dvconnect_sync_lag_seconds", table="lead") == 600
    assert value("dvconnect_journey_step_members", journey="launch", step="launch-email") == 2
    assert value("dvconnect_journey_step_members", journey="launch", step="call") == 1
    assert value("dvconnect_journey_members", journey="launch", status="active") == 3
    assert value("dvconnect_journey_members", journey="launch", status="failed") == 1
    assert value("dvconnect_scoring_leads", model="interest", grade="cold") == 2
    assert value("dvconnect_dataverse_writes_total", job="journeys", table="email",
                 kind="create", outcome="done") == 2  # fmt: skip
    assert value("dvconnect_dataverse_writes_total", job="journeys", table="email",
                 kind="create", outcome="failed") == 1  # fmt: skip
    assert value("dvconnect_outbox_depth", job="journeys") == 1
    assert value("dvconnect_outbox_depth", job="sync") == 0
    assert value("dvconnect_segment_members", segment="web") == 12
    assert value("dvconnect_segment_changes_total", segment="web", change="entered") == 13
    assert value("dvconnect_job_healthy", job="sync") == 1


def test_a_store_that_cannot_be_read_is_down_in_metrics_and_unhealthy(tmp_path: Any) -> None:
    settings = Settings(_env_file=None, database_url=f"sqlite:///{tmp_path}/missing/store.db",
                        mappings_dir=MAPPINGS)  # type: ignore[call-arg]  # fmt: skip
    ctx = build_context(settings)
    assert scrape(ctx) == {("dvconnect_store_up", frozenset()): 0}
    ok, text = health(ctx)
    assert not ok
    assert text.startswith("unhealthy\nstore: the store sqlite:///")
