"""Whether the scheduled jobs are healthy: what `/healthz` answers and `status` shows.

Read from `dvc_runs`, so every instance sharing a store gives the same answer. A job is
unhealthy when its last `DVCONNECT_HEALTH_FAILURES` finished runs all failed (`failing`), or
when a run of it has gone on longer than `DVCONNECT_HEALTH_MAX_RUN` with no later run finished
(`stuck`: hung, or its host died). Runs that did not start because another process held the
job (`not run`) and runs stopped by a signal (`interrupted`) say nothing either way; a run
whose records partly failed ran to its end and counts as healthy here (its failures are in
its counts). Only the jobs of `schedule.yaml` are judged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, select

from connector import tables as dvc
from connector.clock import parse_stamp
from jobs.context import Context

NEUTRAL = ("not run", "interrupted")


@dataclass(frozen=True)
class Problem:
    """Why one job is unhealthy: `failing` or `stuck`, and in words (no record values)."""

    job: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.job}: {self.kind}: {self.detail}"


def job_problems(ctx: Context, conn: Connection) -> list[Problem]:
    """The problems of every scheduled job, in the schedule's order (none: healthy)."""
    found = []
    for job in ctx.mapping.schedule.jobs:
        problem = _judge(
            conn, job, ctx.settings.health_failures, ctx.settings.health_max_run, ctx.clock.now()
        )
        if problem is not None:
            found.append(problem)
    return found


def _judge(
    conn: Connection, job: str, failures: int, max_run: timedelta, now: datetime
) -> Problem | None:
    r = dvc.runs.c
    rows = conn.execute(
        select(r.run_id, r.outcome, r.started_at, r.error, r.host, r.pid)
        .where(r.job == job, r.outcome.not_in(NEUTRAL))
        .order_by(r.run_id.desc())
        .limit(failures + 50)  # runs still going, newest first, then the finished ones
    ).all()
    finished = [row for row in rows if row.outcome != "running"]
    for row in rows:
        if row.outcome != "running":
            break
        age = now - parse_stamp(row.started_at)
        if age > max_run:
            return Problem(
                job,
                "stuck",
                f"run #{row.run_id} started {row.started_at} (pid {row.pid} on {row.host}) is "
                f"still going after {_span(age)}, longer than DVCONNECT_HEALTH_MAX_RUN",
            )
    latest = finished[:failures]
    if len(latest) == failures and all(row.outcome == "failed" for row in latest):
        return Problem(
            job,
            "failing",
            f"the last {failures} runs failed; the latest, #{latest[0].run_id} started "
            f"{latest[0].started_at}: {latest[0].error or 'no reason recorded'}",
        )
    return None


def _span(age: timedelta) -> str:
    minutes = int(age.total_seconds() // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"
