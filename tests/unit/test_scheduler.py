"""The schedule's clock: DST changes and clock jumps neither repeat nor skip a cron tick."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from unittest.mock import MagicMock
from zoneinfo import ZoneInfo

import pytest
from apscheduler.job import Job
from apscheduler.schedulers.base import BaseScheduler

from jobs.runner import ALL
from jobs.scheduler import JOB_DEFAULTS, CronOnce, now_order

ZURICH = ZoneInfo("Europe/Zurich")


def fires(cron: str, start: datetime, end: datetime) -> list[str]:
    """The fire times of `cron` from `start` to `end`, as the scheduler asks for them (each
    time from the one before), in UTC."""
    trigger = CronOnce.from_crontab(cron, timezone=ZURICH)
    times, previous, now = [], None, start
    while True:
        fire = trigger.get_next_fire_time(previous, now)
        if fire is None or fire.astimezone(UTC) > end.astimezone(UTC):
            return times
        times.append(fire.astimezone(UTC).strftime("%m-%d %H:%M"))
        previous = now = fire


def test_a_daily_time_in_the_repeated_hour_runs_once_when_the_clocks_go_back() -> None:
    # 27 Oct 2024: 03:00 CEST becomes 02:00 CET, so 02:30 comes twice
    start = datetime(2024, 10, 26, 12, tzinfo=ZURICH)
    assert fires("30 2 * * *", start, start + timedelta(days=3)) == [
        "10-27 00:30",  # 02:30 CEST, the first time
        "10-28 01:30",
        "10-29 01:30",
    ]


def test_a_daily_time_in_the_skipped_hour_runs_once_when_the_clocks_go_forward() -> None:
    # 31 Mar 2024: 02:00 CET becomes 03:00 CEST, so 02:30 never comes: it runs at 03:30
    start = datetime(2024, 3, 30, 12, tzinfo=ZURICH)
    assert fires("30 2 * * *", start, start + timedelta(days=3)) == [
        "03-31 01:30",
        "04-01 00:30",
        "04-02 00:30",
    ]


def test_a_job_of_every_hour_follows_the_hours_as_they_pass() -> None:
    start = datetime(2024, 10, 27, 1, 50, tzinfo=ZURICH)
    utc = fires("*/15 * * * *", start, start.astimezone(UTC) + timedelta(hours=3))
    assert len(utc) == len(set(utc)) == 12  # every quarter of three real hours, none twice
    assert utc[:6] == ["10-27 00:00", "10-27 00:15", "10-27 00:30", "10-27 00:45",
                       "10-27 01:00", "10-27 01:15"]  # fmt: skip
    spring = datetime(2024, 3, 31, 1, 50, tzinfo=ZURICH)
    assert fires("0 * * * *", spring, spring.astimezone(UTC) + timedelta(hours=3)) == [
        "03-31 01:00", "03-31 02:00", "03-31 03:00"
    ]  # fmt: skip


def test_started_during_the_repeated_hour_it_still_runs_that_day() -> None:
    trigger = CronOnce.from_crontab("30 2 * * *", timezone=ZURICH)
    second_two_ten = datetime(2024, 10, 27, 2, 10, fold=1, tzinfo=ZURICH)
    fire = trigger.get_next_fire_time(None, second_two_ten)
    assert fire.astimezone(UTC) == datetime(2024, 10, 27, 1, 30, tzinfo=UTC)


def _job(cron: str, next_run: datetime) -> Job:
    scheduler = MagicMock(spec=BaseScheduler, timezone=UTC)
    trigger = CronOnce.from_crontab(cron, timezone=UTC)
    return Job(scheduler, id="sync", func=print, trigger=trigger, executor="default", args=(),
               kwargs={}, name="sync", next_run_time=next_run, **JOB_DEFAULTS)  # fmt: skip


@pytest.mark.parametrize("jump", [timedelta(minutes=40), timedelta(hours=30)])
def test_a_clock_jumping_forward_runs_the_missed_ticks_once(jump: timedelta) -> None:
    due = datetime(2027, 1, 4, 8, 15, tzinfo=UTC)
    job = _job("*/15 * * * *", due)
    run_times = job._get_run_times(due + jump)  # what the scheduler finds when it wakes
    assert len(run_times) > 1  # several ticks were missed; coalesced, they run once:
    assert job.coalesce
    assert job.misfire_grace_time is None  # however late: never dropped as missed


def test_a_clock_set_back_never_repeats_a_tick() -> None:
    ran = datetime(2027, 1, 4, 8, 15, tzinfo=UTC)
    trigger = CronOnce.from_crontab("*/15 * * * *", timezone=UTC)
    following = trigger.get_next_fire_time(ran, ran)  # computed when the tick ran
    job = _job("*/15 * * * *", following)
    assert job._get_run_times(ran - timedelta(hours=1)) == []  # an hour back: nothing is due
    assert job._get_run_times(following) == [following]  # the next tick, once, when it comes


@pytest.mark.parametrize(
    ("scheduled", "order"),
    [
        (ALL, list(ALL)),  # the write jobs between the two syncs: the second reads their writes
        (["sync"], ["sync"]),  # nothing between them: one sync
        (["segments", "sync", "journeys"], ["sync", "segments", "journeys"]),
        (["sync", "promote-contacts", "scoring"], ["sync", "promote-contacts", "sync", "scoring"]),
    ],
)
def test_now_runs_the_scheduled_jobs_in_the_order_of_run_all_a_sync_twice_only_around_a_write(
    scheduled: list[str], order: list[str]
) -> None:
    assert now_order(scheduled) == order
