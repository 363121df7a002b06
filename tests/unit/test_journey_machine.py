"""The journey state machine and its calendar, tested by tables of cases (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from connector.mapping import load_mapping
from connector.mapping.journeys import Delay, Journey, load_journey
from jobs.journeys.calendar import Calendar
from jobs.journeys.machine import Member, bucket, decide, due
from tests.paths import MAPPINGS

TABLES = load_mapping(MAPPINGS).tables
ZURICH_MONDAY_9 = datetime(2027, 1, 4, 8, 0, tzinfo=UTC)  # 09:00 in Zurich (UTC+1)


def journey(tmp_path: Path, **overrides: Any) -> Journey:
    """A small journey over every flow step kind, with `overrides` at its top level."""
    definition: dict[str, Any] = {
        "name": "flow",
        "audience": {"segment": "contoso-decision-makers"},
        "schedule": {"start": "2027-01-04T09:00", "end": "2027-03-31T18:00",
                     "timezone": "Europe/Zurich"},
        "business_hours": {"holidays": ["2027-01-06"]},
        "steps": [
            {"id": "pause", "wait": "2d"},
            {"id": "opened", "if": {"condition": {"contact": "donotemail eq false"},
                                    "timeout": {"business_days": 3}},
             "then": "route", "else": "later"},
            {"id": "route", "branch": [{"when": {"contact": "accountrolecode eq 1"}, "then": "ab"},
                                       {"when": {"contact": "accountrolecode eq 2"}, "then": "call"}],
             "default": "later"},
            {"id": "ab", "split": [{"percent": 30, "then": "call"}, {"percent": 70, "then": "later"}]},
            {"id": "call", "phonecall": {"subject": "Call"}},
            {"id": "later", "wait_until": "2027-02-01T10:00"},
            {"id": "task", "task": {"subject": "Task"}},
        ],
    }  # fmt: skip
    definition.update(overrides)
    path = tmp_path / "flow.yaml"
    path.write_text(yaml.safe_dump(definition))
    return load_journey(path, TABLES)


def member(step: str, arrived: datetime, due_at: datetime, key: str = "c/1") -> Member:
    return Member(key, step, arrived, due_at)


CASES = [
    # step, now (hours after arrival), due (hours after arrival), facts, expected event, to, finish
    ("pause", 1, 48, (), "waiting", None, None),
    ("pause", 48, 48, (), "waited", "opened", None),
    ("opened", 1, 72, (True,), "condition true", "route", None),
    ("opened", 1, 72, (False,), "waiting", None, None),
    ("opened", 72, 72, (False,), "timeout", "later", None),
    ("opened", 72, 72, (True,), "condition true", "route", None),  # true wins over the timeout
    ("route", 0, 0, (True, True), "branch", "ab", None),  # the first true case wins
    ("route", 0, 0, (False, True), "branch", "call", None),
    ("route", 0, 0, (False, False), "branch", "later", None),  # default
    ("call", 0, 0, (), "acted", "later", None),  # an action, then the step below
    ("task", 0, 0, (), "acted", None, "completed"),  # the last step: done after acting
]


@pytest.mark.parametrize(("step", "now", "due_in", "facts", "event", "to", "finish"), CASES)
def test_each_step_kind_moves_a_member_as_its_rules_say(
    tmp_path: Path, step: str, now: int, due_in: int, facts: tuple[bool, ...],
    event: str, to: str | None, finish: str | None,
) -> None:  # fmt: skip
    flow = journey(tmp_path)
    arrived = ZURICH_MONDAY_9
    move = decide(
        flow,
        member(step, arrived, arrived + timedelta(hours=due_in)),
        arrived + timedelta(hours=now),
        facts,
    )
    assert (move.event, move.to, move.finish) == (event, to, finish)
    assert (move.action is not None) == (event == "acted")


def test_after_the_end_under_hard_stop_members_stop_and_under_finish_they_go_on(
    tmp_path: Path,
) -> None:
    after_end = datetime(2027, 4, 1, tzinfo=UTC)
    waiting = member("pause", after_end - timedelta(days=3), after_end - timedelta(days=1))
    assert decide(journey(tmp_path), waiting, after_end).finish == "stopped"
    finishing = journey(tmp_path, schedule={
        "start": "2027-01-04T09:00", "end": "2027-03-31T18:00", "timezone": "Europe/Zurich",
        "end_policy": "finish"})  # fmt: skip
    assert decide(finishing, waiting, after_end).to == "opened"


def test_a_split_draws_the_same_bucket_every_time_and_keeps_its_proportions(
    tmp_path: Path,
) -> None:
    flow = journey(tmp_path)
    split = flow.step("ab")
    keys = [f"{i:08d}-contact/1" for i in range(4000)]
    first = [decide(flow, member("ab", ZURICH_MONDAY_9, ZURICH_MONDAY_9, k), ZURICH_MONDAY_9).to
             for k in keys]  # fmt: skip
    again = [decide(flow, member("ab", ZURICH_MONDAY_9, ZURICH_MONDAY_9, k), ZURICH_MONDAY_9).to
             for k in keys]  # fmt: skip
    assert first == again
    share = first.count("call") / len(first)
    assert 0.27 < share < 0.33
    # another entry of the same contact draws again
    entries = {bucket(flow, member("ab", ZURICH_MONDAY_9, ZURICH_MONDAY_9, f"c/{n}"), split)
               for n in range(1, 30)}  # fmt: skip
    assert len(entries) > 10


@pytest.mark.parametrize(
    ("step", "arrived", "expected"),
    [
        # 2 calendar days later, whatever the day
        (
            "pause",
            datetime(2027, 1, 8, 15, 0, tzinfo=UTC),
            datetime(2027, 1, 10, 15, 0, tzinfo=UTC),
        ),
        # 3 business days: Monday 4th 10:00 local -> Friday 8th (the 6th is a holiday)
        ("opened", datetime(2027, 1, 4, 9, 0, tzinfo=UTC), datetime(2027, 1, 8, 9, 0, tzinfo=UTC)),
        # from Friday evening: counted from Monday's opening
        (
            "opened",
            datetime(2027, 1, 8, 18, 0, tzinfo=UTC),
            datetime(2027, 1, 14, 8, 0, tzinfo=UTC),
        ),
        # wait_until in the journey's zone: 10:00 Zurich is 09:00 UTC
        ("later", datetime(2027, 1, 20, tzinfo=UTC), datetime(2027, 2, 1, 9, 0, tzinfo=UTC)),
        # a wait_until already past proceeds at once
        ("later", datetime(2027, 2, 5, tzinfo=UTC), datetime(2027, 2, 5, tzinfo=UTC)),
        ("call", datetime(2027, 1, 5, tzinfo=UTC), datetime(2027, 1, 5, tzinfo=UTC)),
    ],
)
def test_due_times_follow_calendar_business_days_and_the_journeys_zone(
    tmp_path: Path, step: str, arrived: datetime, expected: datetime
) -> None:
    flow = journey(tmp_path)
    calendar = Calendar(flow.business_hours, flow.schedule.zone)
    assert due(flow, calendar, step, arrived) == expected


@pytest.mark.parametrize(
    ("moment", "placed"),
    [
        (datetime(2027, 1, 4, 9, 30, tzinfo=UTC), datetime(2027, 1, 4, 9, 30, tzinfo=UTC)),  # open
        (datetime(2027, 1, 4, 6, 0, tzinfo=UTC), datetime(2027, 1, 4, 8, 0, tzinfo=UTC)),  # early
        (datetime(2027, 1, 4, 16, 30, tzinfo=UTC), datetime(2027, 1, 5, 8, 0, tzinfo=UTC)),  # late
        (
            datetime(2027, 1, 5, 17, 0, tzinfo=UTC),
            datetime(2027, 1, 7, 8, 0, tzinfo=UTC),
        ),  # holiday
        (datetime(2027, 1, 9, 12, 0, tzinfo=UTC), datetime(2027, 1, 11, 8, 0, tzinfo=UTC)),  # Sat
        # summer time: 09:00 in Zurich is 07:00 UTC
        (datetime(2027, 6, 7, 5, 0, tzinfo=UTC), datetime(2027, 6, 7, 7, 0, tzinfo=UTC)),
    ],
)
def test_place_moves_a_moment_into_business_hours(
    tmp_path: Path, moment: datetime, placed: datetime
) -> None:
    flow = journey(tmp_path)
    calendar = Calendar(flow.business_hours, flow.schedule.zone)
    assert calendar.place(moment) == placed
    assert calendar.is_open(calendar.place(moment))


def test_two_business_days_from_a_friday_afternoon_is_the_next_tuesday(tmp_path: Path) -> None:
    flow = journey(tmp_path)
    calendar = Calendar(flow.business_hours, flow.schedule.zone)
    friday = datetime(2027, 1, 15, 14, 0, tzinfo=UTC)  # 15:00 Zurich
    assert calendar.add(friday, Delay(business_days=2)) == datetime(2027, 1, 19, 14, 0, tzinfo=UTC)
