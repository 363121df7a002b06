"""`dvconnect schedule`: the long-running service that runs each job on its cron.

APScheduler 3.x, one instance of a job at a time, missed runs coalesced into one and run however
late (a tick missed while the host slept or its clock jumped forward runs once when noticed; a
clock set back never repeats a tick, whose next time was computed when it ran). Cron times are
wall times of the schedule's time zone (`CronOnce`): when the clocks go forward, a time in the
skipped hour runs once just after; when they go back, a fixed time in the repeated hour runs
once, while a job of every hour (`*` as hour) runs in both. `--now` also
runs every scheduled job once at start, one after the other in the order of `run all` (a job
that works from the store must not start before the sync has filled it; the sync reads back
what the write jobs wrote before segments are evaluated — when one of them is scheduled: with
none between them, the two syncs are one, see `now_order`). SIGTERM or SIGINT asks
running jobs to stop after their current page (state saved) and then exits. With
`DVCONNECT_METRICS_PORT` set, `/metrics` and `/healthz` are served meanwhile (`jobs.service`).

Several instances: on PostgreSQL any number of `schedule` processes, on any hosts, may share a
store: each tick fires on each of them, and the first to claim it (`Store.claim_tick`: the job
and the cron minute, in `dvc_tick_claims`) runs it while the others skip it, recording nothing —
however soon it finished — except for `journeys`, whose work they share (`Job.shared`, see
`jobs.journeys.engine`). The job's lease (an advisory lock the database releases when its
holder's session ends) still keeps one run at a time: a run of the previous tick, a `--now` run
or a `dvconnect run` refuse the tick's (recorded as not run, `already running`). A host that
dies mid-job loses its lock with its connection, and the next tick runs the job elsewhere. A
SQLite store has one `schedule`: a second one refuses to start (exit 4), by a lock on a file next
to the database that the operating system releases when the first process ends.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from itertools import groupby
from pathlib import Path
from types import FrameType
from typing import IO
from zoneinfo import ZoneInfo

from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger

from connector.errors import ConfigError, NotRunError
from jobs.context import Context
from jobs.runner import ALL, JOBS, failure_reason, run_job
from jobs.service import Service

log = logging.getLogger("dvconnect.scheduler")
# One run of a job at a time; a missed tick (the host asleep, the clock jumped forward) runs
# once, however late.
JOB_DEFAULTS = {"coalesce": True, "max_instances": 1, "misfire_grace_time": None}


class CronOnce(CronTrigger):  # type: ignore[misc]  # APScheduler 3 is untyped
    """A cron trigger that fires a fixed wall time once when the clocks go back.

    APScheduler's CronTrigger fires `30 2 * * *` twice on the night the clocks go back (02:30
    comes twice); this one skips the second, unless the hour field is `*` (a job of every hour
    follows the hours as they pass) or it did not fire at the first (started in between).
    When the clocks go forward, a time in the skipped hour fires once, an hour later in wall
    time, as APScheduler has it.
    """

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        fire: datetime | None = super().get_next_fire_time(previous_fire_time, now)
        every_hour = str(self.fields[self.FIELD_NAMES.index("hour")]) == "*"
        while fire is not None and not every_hour and previous_fire_time is not None:
            # compared in UTC: datetimes of one zone compare by wall time, blind to the fold
            first = fire.replace(fold=0).astimezone(UTC)
            if first == fire.astimezone(UTC) or previous_fire_time.astimezone(UTC) < first:
                break  # not a repeated wall time, or its first time was not fired
            after = (fire.astimezone(UTC) + timedelta(microseconds=1)).astimezone(fire.tzinfo)
            fire = super().get_next_fire_time(fire, after)
        return fire


def _run(ctx: Context, job: str) -> None:
    # A failed run is recorded in dvc_runs and logged by run_job (one line, the reason); the
    # service keeps its schedule, and nothing is left to the scheduler library's own log.
    with suppress(Exception):
        run_job(ctx, job)


def _on_tick(ctx: Context, job: str) -> None:
    """A cron tick of `job`: run it, unless another instance sharing the store claimed the
    tick first, or this one is stopping (a claim it would not use would lose the tick). The
    tick is named by the minute of the wall clock the scheduler follows (never
    `DVCONNECT_NOW`'s fixed instant) as the job starts: the cron's minute, unless the job
    starts a minute late (the host was asleep, the process stalled), then its own."""
    if ctx.stop.is_set():
        return
    if not JOBS[job].shared:
        tick = _this_minute()
        try:
            ctx.store.check_schema()  # a store a newer release upgraded gets no claim either
            holder = ctx.store.claim_tick(job, tick)
        except Exception as exc:
            log.error("%s not run: its tick could not be claimed: %s", job,
                      failure_reason(exc, ctx.settings.database_url))  # fmt: skip
            return
        if holder is not None:
            log.info("%s: this tick runs on %s", job, holder)
            return
    _run(ctx, job)


def _this_minute() -> datetime:
    return datetime.now(UTC).replace(second=0, microsecond=0)


def now_order(scheduled: Iterable[str]) -> list[str]:
    """The jobs `--now` runs, in the order of `run all`: the scheduled ones, a job once where
    `run all` would run it twice in a row (a second sync with no write job before it reads
    nothing new)."""
    wanted = set(scheduled)
    return [job for job, _ in groupby(job for job in ALL if job in wanted)]


def _run_in_order(ctx: Context, jobs: list[str]) -> None:
    for job in jobs:
        if ctx.stop.is_set():
            return
        _run(ctx, job)


def serve(ctx: Context, run_now: bool = False, service: Service | None = None) -> None:
    """Run the scheduler until SIGTERM/SIGINT; returns after running jobs have stopped.

    With `run_now`, every scheduled job also runs once at start, in order, then follows its cron.
    `service` (/metrics, /healthz) is served while the scheduler runs; the caller closes it.
    """
    schedule = ctx.mapping.schedule
    if not schedule.jobs:
        raise ConfigError(f"{ctx.mapping.directory / 'schedule.yaml'}: jobs: no job is scheduled")
    with _only_schedule(ctx):
        _serve(ctx, run_now, service)


@contextmanager
def _only_schedule(ctx: Context) -> Iterator[None]:
    """On SQLite, refuse a second `schedule` of the store: hold a lock on `<database>.schedule`
    while serving (released by the system however the process ends). PostgreSQL stores take
    any number (their jobs' leases coordinate them)."""
    database = ctx.store.engine.url.database
    if ctx.store.coordinated or database in (None, "", ":memory:"):
        yield
        return
    path = Path(f"{database}.schedule")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NotRunError(
                f"another `dvconnect schedule` already serves the store {database} "
                f"({_holder(file)}); a SQLite store takes one — stop it first, or use PostgreSQL "
                "(DVCONNECT_DATABASE_URL) to run several instances"
            ) from None
        file.seek(0)
        file.truncate()
        file.write(f"pid {os.getpid()}\n")
        file.flush()
        yield


def _holder(file: IO[str]) -> str:
    file.seek(0)
    return file.read().strip() or "starting"


def _serve(ctx: Context, run_now: bool, service: Service | None) -> None:
    schedule = ctx.mapping.schedule
    scheduler = BlockingScheduler(
        timezone=schedule.timezone,
        job_defaults=JOB_DEFAULTS,
    )
    for job, cron in schedule.jobs.items():
        trigger = CronOnce.from_crontab(cron, timezone=schedule.timezone)
        scheduler.add_job(_on_tick, trigger, args=(ctx, job), id=job, name=job)
        log.info("scheduled %s: %s (%s)", job, cron, schedule.timezone)
    if run_now:
        scheduler.add_job(
            _run_in_order,
            args=(ctx, now_order(schedule.jobs)),
            id="now",
            name="every scheduled job, once, in order",
            next_run_time=datetime.now(ZoneInfo(schedule.timezone)),
        )

    def shutdown(signum: int, _frame: FrameType | None) -> None:
        if ctx.stop.is_set():
            return  # a second signal while running jobs finish their page
        log.info(
            "%s received: finishing the current page, then stopping", signal.Signals(signum).name
        )
        ctx.stop.set()
        scheduler.shutdown(wait=True)  # waits for running jobs to save their state

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    if service is not None:
        service.start(ctx)
    scheduler.start()  # returns after shutdown()
    log.info("scheduler stopped")
