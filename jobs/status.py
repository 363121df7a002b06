"""What `dvconnect status` adds to the raw state: per job, per table, per segment, per journey.

Per job: its latest run (outcome, duration, requests, counts), its cron and next run, and the
health verdict `/healthz` gives (`jobs.health`). Per table: the sync lag and how the latest
sync read it, and why. Per segment: the change in size since the previous evaluation. Per
journey: active members at each step and the failed ones. Read-only, like `status` itself.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import func, select

from connector import tables as dvc
from connector.clock import parse_stamp
from jobs.context import Context
from jobs.health import job_problems
from jobs.runner import HTTP_COUNTS

READS = {
    "full": "full: the first read, a reset, or the mapping gained columns",
    "periodic-full": "full: full_read_every had passed (modifiedon cannot see deletions)",
    "delta": "incremental: change tracking (delta link)",
    "watermark": "incremental: rows modified since the watermark",
    "resume-full": "full: resumed a full read from its saved page",
    "resume-incremental": "incremental: resumed from its saved page",
}
RECENT_SYNCS = 20  # how many sync runs are searched for a table's latest read


def jobs_status(ctx: Context, job_names: list[str]) -> dict[str, dict[str, Any]]:
    """Each job's latest run, cron, next run and health (`problem`: None when healthy)."""
    schedule = ctx.mapping.schedule
    now = ctx.clock.now()
    jobs: dict[str, dict[str, Any]] = {}
    latest: dict[str, dict[str, Any]] = {}
    problems: dict[str, str] = {}
    if ctx.store.exists:
        r = dvc.runs.c
        newest = select(func.max(r.run_id)).group_by(r.job)
        with ctx.store.engine.connect() as conn:
            for row in conn.execute(select(dvc.runs).where(r.run_id.in_(newest))).mappings():
                latest[row["job"]] = _run(row)
            problems = {p.job: f"{p.kind}: {p.detail}" for p in job_problems(ctx, conn)}
    for job in job_names:
        cron = schedule.jobs.get(job)
        following: datetime | None = None
        if cron is not None:
            trigger = CronTrigger.from_crontab(cron, timezone=schedule.timezone)
            following = trigger.get_next_fire_time(None, now.astimezone(trigger.timezone))
        jobs[job] = {
            "last_run": latest.get(job),
            "cron": cron,
            "next_run": following.isoformat() if following else None,
            "problem": problems.get(job),
        }
    return jobs


def _run(row: Any) -> dict[str, Any]:
    seconds = None
    if row["finished_at"]:
        took = parse_stamp(row["finished_at"]) - parse_stamp(row["started_at"])
        seconds = took.total_seconds()
    return {
        "run_id": row["run_id"], "outcome": row["outcome"], "started_at": row["started_at"],
        "finished_at": row["finished_at"], "seconds": seconds, "requests": row["requests"],
        "counts": {k: v for k, v in json.loads(row["counts"]).items() if k != HTTP_COUNTS},
        "error": row["error"],
    }  # fmt: skip


def last_reads(ctx: Context) -> dict[str, dict[str, Any]]:
    """Per table, how its latest sync read it (`how`, in words) and when that run started."""
    if not ctx.store.exists:
        return {}
    r = dvc.runs.c
    with ctx.store.engine.connect() as conn:
        rows = conn.execute(
            select(r.run_id, r.started_at, r.counts)
            .where(r.job == "sync", r.finished_at.is_not(None))
            .order_by(r.run_id.desc())
            .limit(RECENT_SYNCS)
        ).all()
    reads: dict[str, dict[str, Any]] = {}
    for run_id, started_at, counts in rows:
        for table, c in json.loads(counts).items():
            if (
                table == HTTP_COUNTS
                or table in reads
                or not isinstance(c, dict)
                or not c.get("how")
            ):
                continue
            why = READS.get(c["how"], str(c["how"]))
            if c.get("resyncs"):
                why += "; then full: the change-tracking token had expired"
            reads[table] = {"run_id": run_id, "started_at": started_at, "how": c["how"],
                            "why": why, "full": bool(c.get("full"))}  # fmt: skip
    return reads


def lag_seconds(ctx: Context, last_sync_at: str | None) -> float | None:
    """Seconds since a table's latest completed sync (None: never synced)."""
    if last_sync_at is None:
        return None
    return max(0.0, (ctx.clock.now() - parse_stamp(last_sync_at)).total_seconds())


def previous_size(ctx: Context, segment: str) -> int | None:
    """The size at the evaluation before the latest (None: fewer than two)."""
    if not ctx.store.exists:
        return None
    e = dvc.segment_evaluations.c
    with ctx.store.engine.connect() as conn:
        sizes = conn.execute(
            select(e.size).where(e.segment == segment).order_by(e.evaluation_id.desc()).limit(2)
        ).all()
    return int(sizes[1][0]) if len(sizes) == 2 else None


def journey_steps(ctx: Context, journey: str) -> dict[str, int]:
    """Active members at each step of a journey (steps without any left out)."""
    if not ctx.store.exists:
        return {}
    m = dvc.journey_members.c
    with ctx.store.engine.connect() as conn:
        rows = conn.execute(
            select(m.step, func.count())
            .where(m.journey == journey, m.status == "active")
            .group_by(m.step)
            .order_by(m.step)
        ).all()
    return {str(step): int(n) for step, n in rows}
