"""Runs a job by name and records the run in `dvc_runs`: counts, requests, 429s, outcome, error.

The CLI's `run` and the scheduler both come through here, so every run is recorded the same
way. `all` runs every job in the contract's order, with a second sync after the jobs that
write to Dataverse, so that what they wrote is in the store before segments are evaluated. A
run whose job reports `failed` records is `partial`: it ran to the end, and the CLI exits 1. A
run that fails for any reason is recorded as failed with a one-line reason (a database error by
its first line, never its parameters).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, is_dataclass
from importlib import import_module
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from connector.errors import DvconnectError, NotRunError
from connector.store import store_error
from jobs.context import LOG_FIELDS, Context

log = logging.getLogger("dvconnect.jobs")


@dataclass(frozen=True)
class Job:
    """A job: the module that does it, its functions there for what it does and what it would
    do (the dry run), and how its outcome reads. The module is imported when the job is run or
    planned, so a command loads only the jobs it runs. A `shared` job's work is split between
    the processes running it at once (its lease is shared): every `schedule` instance runs each
    of its ticks, where one instance runs a tick of any other job."""

    module: str
    run_function: str
    plan_function: str
    summary: Callable[[dict[str, Any]], list[str]]
    shared: bool = False

    def run(self, ctx: Context) -> dict[str, Any]:
        """Run the job; its counts as plain data (what `dvc_runs` and `--json` hold)."""
        return _plain(getattr(import_module(self.module), self.run_function)(ctx))

    def plan(self, ctx: Context) -> list[dict[str, Any]]:
        plan: list[dict[str, Any]] = getattr(import_module(self.module), self.plan_function)(ctx)
        return plan


def _plain(counts: Any) -> dict[str, Any]:
    """A job's counts as dicts: a dataclass of counts, or a dict of them (one per table)."""
    if is_dataclass(counts) and not isinstance(counts, type):
        return asdict(counts)
    return {k: asdict(v) if is_dataclass(v) and not isinstance(v, type) else v
            for k, v in counts.items()}  # fmt: skip


def _sync_summary(counts: dict[str, Any]) -> list[str]:
    return [
        f"{name}: {'full' if c.get('full') else 'incremental'}, {c['read']} read, "
        f"{c['upserted']} upserted, {c['deleted']} deleted"
        for name, c in counts.items()
    ]


def _link_summary(c: dict[str, Any]) -> list[str]:
    lines = [
        f"{c['orphans']} orphan leads: {c['linked']} linked ({c['matched']} to existing contacts), "
        f"{c['created']} contacts created, {c['skipped']} skipped, {c['failed']} failed",
    ]
    if c["several_matches"]:
        lines.append(
            f"{len(c['several_matches'])} leads matched several contacts (most recent used)"
        )
    if c["truncated"] or c["invalid_emails"]:
        lines.append(
            f"{c['truncated']} values truncated, {c['invalid_emails']} invalid emails left out"
        )
    lines += [f"skipped lead {s['lead_id']}: {s['reason']}" for s in c["skips"]]
    lines += [_failure_line("lead", f) for f in c["failures"]]
    return lines


def _promote_summary(c: dict[str, Any]) -> list[str]:
    if not c["enabled"]:
        return ["disabled (mappings/orphans.yaml promote_contacts.enabled)"]
    lines = [f"{c['promoted']} contacts promoted, {c['failed']} failed"]
    return lines + [_failure_line("contact", f) for f in c["failures"]]


def _segments_summary(counts: dict[str, Any]) -> list[str]:
    return [
        f"{name}: not evaluated: {c['error']}"
        if c["error"]
        else f"{name}: {c['size']} members, {c['entered']} entered, {c['exited']} exited "
        f"({c['seconds']:.2f}s)"
        for name, c in counts.items()
        if isinstance(c, dict)
    ]


def _scoring_summary(counts: dict[str, Any]) -> list[str]:
    lines = []
    for name, c in counts.items():
        if name == "failures":
            lines += [f"write {f['write']} refused: {f['code']} {f['message']}" for f in c]
            continue
        if not isinstance(c, dict):
            continue
        if c.get("error"):
            lines.append(f"{name}: not run: {c['error']}")
            continue
        grades = ", ".join(f"{c['grades'].get(g, 0):,} {g}" for g in ("hot", "warm", "cold"))
        lines.append(
            f"{name}: {c['leads']:,} leads ({grades}), {c['changed']:,} changed, "
            f"{c['ready']:,} sales-ready ({c['crossed']:,} new), {c['rated']:,} write-backs, "
            f"{c['handed_off']:,} hand-offs, {c['capped']:,} capped"
        )
    return lines


def _journeys_summary(counts: dict[str, Any]) -> list[str]:
    lines = []
    for name, c in counts.items():
        if not isinstance(c, dict):
            continue
        if c.get("error"):
            lines.append(f"{name}: not run: {c['error']}")
        elif c.get("state", "live") != "live":
            lines.append(f"{name}: {c['state']} (not run; `dvconnect journeys start {name}`)")
        else:
            lines.append(
                f"{name}: {c.get('entered', 0)} entered, {c.get('acted', 0)} actions, "
                f"{c.get('moved', 0)} moves, {c.get('completed', 0)} completed, "
                f"{c.get('converted', 0)} converted, {c.get('exited', 0)} exited, "
                f"{c.get('capped', 0)} capped, {c.get('failed', 0)} failed"
            )
        lines += [
            f"  failed member {f['member']} at {f['step']}: {f.get('code') or ''} {f['message']}"
            for f in c.get("failures", [])
        ]
        if c.get("watchdog"):
            from jobs.journeys.watchdog import describe

            lines += [f"  as the run began: {line}" for line in describe(c["watchdog"])]
    if counts.get("pruned_changes"):
        lines.append(f"{counts['pruned_changes']:,} recorded changes pruned: no live or paused "
                     "journey will decide them")  # fmt: skip
    return lines


def _failure_line(kind: str, failure: dict[str, Any]) -> str:
    return (
        f"failed {kind} {failure['record']}: {failure['status']} {failure['code']} "
        f"{failure['message']} (request id {failure['request_id'] or '?'})"
    )


JOBS: dict[str, Job] = {
    "sync": Job("jobs.sync", "run_sync", "describe_plan", _sync_summary),
    "link-orphans": Job("jobs.orphans", "run_link_orphans", "plan_link_orphans", _link_summary),
    "promote-contacts": Job(
        "jobs.orphans", "run_promote_contacts", "plan_promote_contacts", _promote_summary
    ),
    "segments": Job("jobs.segments", "run_segments", "plan_segments", _segments_summary),
    "journeys": Job(
        "jobs.journeys.engine", "run_journeys", "plan_journeys", _journeys_summary, shared=True
    ),
    "scoring": Job("jobs.scoring", "run_scoring", "plan_scoring", _scoring_summary),
}
JOB_CHOICES = (*JOBS, "all")
# `all`: the write jobs work from a fresh sync, and a second sync reads their writes back
# before segments are evaluated (only the sync writes the synced tables).
# In `dvc_runs.counts`, beside the job's own counts: the run's responses refused with 429.
HTTP_COUNTS = "_http"
ALL = ("sync", "link-orphans", "promote-contacts", "sync", "segments", "journeys", "scoring")


@dataclass(frozen=True)
class JobResult:
    """The outcome of one job run, as `run --json` prints it."""

    job: str
    run_id: int
    outcome: str  # "succeeded", "partial" (some records failed), "interrupted" or "failed"
    counts: dict[str, Any]
    requests: int
    seconds: float
    error: str | None


def _flag(counts: dict[str, Any], name: str) -> bool:
    """Whether the job's counts (flat, or one dict per table) raise `name`."""
    nested = (c for c in counts.values() if isinstance(c, dict))
    return bool(counts.get(name)) or any(c.get(name) for c in nested)


def failure_reason(exc: BaseException, database_url: str) -> str:
    """One line saying why a run failed, without row values or secrets."""
    if isinstance(exc, DvconnectError):
        return str(exc)
    if isinstance(exc, SQLAlchemyError):
        return str(store_error(exc, database_url))
    return f"{type(exc).__name__}: {exc}"


def run_job(ctx: Context, job: str) -> JobResult:
    """Run one job now, record it, and return what it did; errors are recorded, then raised.

    A store upgraded by a newer release since the process started is refused before anything
    is written (a `schedule` left running through an upgrade elsewhere stops writing)."""
    ctx.store.check_schema()
    run_id = ctx.store.start_run(job)
    ctx.run_id = run_id
    fields = LOG_FIELDS.set({"job": job, "run_id": run_id})
    sent_before = ctx.dataverse.requests_sent if ctx.dataverse else 0
    throttled_before = ctx.dataverse.throttled if ctx.dataverse else 0
    started = time.monotonic()

    def requests() -> int:
        return (ctx.dataverse.requests_sent if ctx.dataverse else 0) - sent_before

    def recorded(counts: dict[str, Any]) -> dict[str, Any]:
        """The counts as `dvc_runs` keeps them: with the run's 429s (what the report charts)."""
        throttled = (ctx.dataverse.throttled if ctx.dataverse else 0) - throttled_before
        return {**counts, HTTP_COUNTS: {"throttled": throttled}}

    try:
        counts = JOBS[job].run(ctx)
    except Exception as exc:  # recorded whatever it is, then raised to the caller
        reason = failure_reason(exc, ctx.settings.database_url)
        outcome = "not run" if getattr(exc, "exit_code", None) == 4 else "failed"
        with suppress(SQLAlchemyError):  # the store itself failed: the raise says why
            ctx.store.finish_run(run_id, outcome, recorded({}), requests(), reason)
        log.error("%s %s after %d requests: %s", job, outcome, requests(), reason,
                  extra={"outcome": outcome, "requests": requests(), "error": reason})  # fmt: skip
        raise
    finally:
        ctx.run_id = None
        LOG_FIELDS.reset(fields)
    outcome = "succeeded"
    if _flag(counts, "failed"):
        outcome = "partial"
    if _flag(counts, "interrupted") or ctx.stop.is_set():
        outcome = "interrupted"
    ctx.store.finish_run(run_id, outcome, recorded(counts), requests(), None)
    seconds = time.monotonic() - started
    log.info(
        "%s %s in %.1fs, %d requests: %s", job, outcome, seconds, requests(), counts,
        extra={"job": job, "run_id": run_id, "outcome": outcome, "seconds": round(seconds, 3),
               "requests": requests(), "counts": counts},
    )  # fmt: skip
    return JobResult(job, run_id, outcome, counts, requests(), round(seconds, 3), None)


def run_named(ctx: Context, job: str) -> list[JobResult]:
    """Run `job`, or every job in order for `all` (stopping early when asked to)."""
    names = list(ALL) if job == "all" else [job]
    results = []
    for name in names:
        results.append(run_job(ctx, name))
        if ctx.stop.is_set():
            break
    return results


def plan_named(ctx: Context, job: str) -> dict[str, Any]:
    """What `job` (or `all`) would do, computed without sending anything.

    A job that could not run now (it needs a synced store, say) says why instead of a plan.
    """
    names = list(JOBS) if job == "all" else [job]  # a dry run's read-back sync would read nothing
    plans: dict[str, Any] = {}
    for name in names:
        try:
            plans[name] = JOBS[name].plan(ctx)
        except NotRunError as exc:
            plans[name] = [{"would not run now": str(exc)}]
    return plans
