"""Business-hours edges of the journey calendar: closing time, local dates, empty hours.

Written for `make mutate`: these edges survived the table-driven tests of the state machine.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from connector.mapping.journeys import BusinessHours
from jobs.journeys.calendar import Calendar

HOURS = BusinessHours.model_validate({"from": "09:00", "to": "17:00"})
PARIS = Calendar(HOURS, ZoneInfo("Europe/Paris"))


def test_the_closing_minute_is_closed_and_places_at_the_next_opening() -> None:
    closing = datetime(2024, 3, 1, 16, 0, tzinfo=UTC)  # Friday 17:00 in Paris
    assert not PARIS.is_open(closing)
    assert PARIS.place(closing) == datetime(2024, 3, 4, 8, 0, tzinfo=UTC)  # Monday 09:00


def test_the_day_and_the_next_day_opening_follow_the_local_date() -> None:
    late_friday = datetime(2024, 3, 1, 23, 30, tzinfo=UTC)  # Saturday 00:30 in Paris
    assert PARIS.day(late_friday) == date(2024, 3, 2)
    assert PARIS.next_day_opening(late_friday) == datetime(2024, 3, 4, 8, 0, tzinfo=UTC)
    thursday = datetime(2024, 2, 29, 10, 0, tzinfo=UTC)
    assert PARIS.next_day_opening(thursday) == datetime(2024, 3, 1, 8, 0, tzinfo=UTC)


def test_openings_are_in_utc_across_daylight_saving_time() -> None:
    assert PARIS.opening(date(2024, 3, 29)) == datetime(2024, 3, 29, 8, 0, tzinfo=UTC)
    assert PARIS.opening(date(2024, 4, 2)) == datetime(2024, 4, 2, 7, 0, tzinfo=UTC)


def test_hours_without_any_business_day_are_refused_by_name() -> None:
    start = date(2024, 1, 1)
    holidays = [start + timedelta(days=n) for n in range(1, 401)]
    every_day_off = BusinessHours.model_validate({"days": ["mon"], "holidays": holidays})
    calendar = Calendar(every_day_off, ZoneInfo("UTC"))
    with pytest.raises(ValueError, match=r"^no business day in the next 400 days$"):
        calendar.next_business_day(start)
