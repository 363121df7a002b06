"""`dvconnect schedule`: the long-running service that runs each job on its cron.

APScheduler 3.x, one instance of a job at a time, missed runs coalesced into one. `--now` also
runs every scheduled job once at start, one after the other in the order of `run all` (a job
that works from the store must not start before the sync has filled it; the sync reads back
what the write jobs wrote before segments are evaluated). SIGTERM or SIGINT asks
running jobs to stop after their current page (state saved) and then exits. With
`DVCONNECT_METRICS_PORT` set, `/metrics` and `/healthz` are served meanwhile (`jobs.service`).
"""

from __future__ import annotations

import logging
import signal
from contextlib import suppress
from datetime import datetime
from types import FrameType
from zoneinfo import ZoneInfo

from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger

from connector.errors import ConfigError
from jobs.context import Context
from jobs.runner import ALL, run_job
from jobs.service import Service

log = logging.getLogger("dvconnect.scheduler")


def _run(ctx: Context, job: str) -> None:
    # A failed run is recorded in dvc_runs and logged by run_job (one line, the reason); the
    # service keeps its schedule, and nothing is left to the scheduler library's own log.
    with suppress(Exception):
        run_job(ctx, job)


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
    scheduler = BlockingScheduler(
        timezone=schedule.timezone,
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600},
    )
    for job, cron in schedule.jobs.items():
        trigger = CronTrigger.from_crontab(cron, timezone=schedule.timezone)
        scheduler.add_job(_run, trigger, args=(ctx, job), id=job, name=job)
        log.info("scheduled %s: %s (%s)", job, cron, schedule.timezone)
    if run_now:
        in_order = [job for job in ALL if job in schedule.jobs]
        scheduler.add_job(
            _run_in_order,
            args=(ctx, in_order),
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
