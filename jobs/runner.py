"""Runs a job by name and records the run in `dvc_runs`: counts, requests, outcome, error.

The CLI's `run` and the scheduler both come through here, so every run is recorded the same
way. `all` runs every job in the contract's order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from connector.errors import DvconnectError
from jobs.context import Context
from jobs.sync import describe_plan, run_sync

log = logging.getLogger("dvconnect.jobs")

JOBS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "sync": lambda ctx: {name: asdict(counts) for name, counts in run_sync(ctx).items()},
}
PLANS: dict[str, Callable[[Context], Any]] = {"sync": describe_plan}
JOB_CHOICES = (*JOBS, "all")


@dataclass(frozen=True)
class JobResult:
    """The outcome of one job run, as `run --json` prints it."""

    job: str
    run_id: int
    outcome: str  # "succeeded", "interrupted" or "failed"
    counts: dict[str, Any]
    requests: int
    seconds: float
    error: str | None


def _interrupted(counts: dict[str, Any]) -> bool:
    return any(isinstance(c, dict) and c.get("interrupted") for c in counts.values())


def run_job(ctx: Context, job: str) -> JobResult:
    """Run one job now, record it, and return what it did; errors are recorded, then raised."""
    run_id = ctx.store.start_run(job)
    sent_before = ctx.dataverse.requests_sent if ctx.dataverse else 0
    started = time.monotonic()

    def requests() -> int:
        return (ctx.dataverse.requests_sent if ctx.dataverse else 0) - sent_before

    try:
        counts = JOBS[job](ctx)
    except Exception as exc:  # recorded whatever it is, then raised to the caller
        reason = str(exc) if isinstance(exc, DvconnectError) else f"{type(exc).__name__}: {exc}"
        ctx.store.finish_run(run_id, "failed", {}, requests(), reason)
        log.error("%s failed after %d requests: %s", job, requests(), reason)
        raise
    outcome = "interrupted" if _interrupted(counts) or ctx.stop.is_set() else "succeeded"
    ctx.store.finish_run(run_id, outcome, counts, requests(), None)
    seconds = time.monotonic() - started
    log.info("%s %s in %.1fs, %d requests: %s", job, outcome, seconds, requests(), counts)
    return JobResult(job, run_id, outcome, counts, requests(), round(seconds, 3), None)


def run_named(ctx: Context, job: str) -> list[JobResult]:
    """Run `job`, or every job in order for `all` (stopping early when asked to)."""
    names = list(JOBS) if job == "all" else [job]
    results = []
    for name in names:
        results.append(run_job(ctx, name))
        if ctx.stop.is_set():
            break
    return results


def plan_named(ctx: Context, job: str) -> dict[str, Any]:
    """What `job` (or `all`) would do, computed without sending anything."""
    names = list(PLANS) if job == "all" else [job]
    return {name: PLANS[name](ctx) for name in names}
