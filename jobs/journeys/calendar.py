"""Business hours and delays in a journey's time zone.

A journey's business hours are days of the week, an opening and a closing time, and holidays,
all in the journey's zone (daylight saving time included). `add` moves a moment by a delay:
calendar time as is, business days as whole business days later at the same time of day (or
at the opening if that day has none left). `place` moves a moment into business hours: itself
if open, otherwise the next opening. Pure functions of their arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from connector.mapping.journeys import WEEKDAYS, BusinessHours, Delay

_MAX_DAYS = 400  # no business day for this long: the hours are empty (guarded by validation)


@dataclass(frozen=True)
class Calendar:
    """Business hours in one zone."""

    hours: BusinessHours
    zone: ZoneInfo

    def local(self, moment: datetime) -> datetime:
        return moment.astimezone(self.zone)

    def is_business_day(self, day: date) -> bool:
        return WEEKDAYS[day.weekday()] in self.hours.days and day not in self.hours.holidays

    def is_open(self, moment: datetime) -> bool:
        local = self.local(moment)
        start, end = self.hours.from_, self.hours.to
        return self.is_business_day(local.date()) and start <= local.time() < end

    def opening(self, day: date) -> datetime:
        return self._at(day, self.hours.from_)

    def _at(self, day: date, when: time) -> datetime:
        return datetime.combine(day, when, self.zone).astimezone(UTC)

    def next_business_day(self, day: date) -> date:
        for offset in range(1, _MAX_DAYS):
            candidate = day + timedelta(days=offset)
            if self.is_business_day(candidate):
                return candidate
        raise ValueError("no business day in the next 400 days")

    def place(self, moment: datetime) -> datetime:
        """`moment` when it is inside business hours, otherwise the next opening."""
        if self.is_open(moment):
            return moment
        local = self.local(moment)
        day = local.date()
        if self.is_business_day(day) and local.time() < self.hours.from_:
            return self.opening(day)
        return self.opening(self.next_business_day(day))

    def next_day_opening(self, moment: datetime) -> datetime:
        """The opening of the business day after `moment`'s day (a capped action's new time)."""
        return self.opening(self.next_business_day(self.local(moment).date()))

    def add(self, moment: datetime, delay: Delay) -> datetime:
        """`moment` moved by `delay`."""
        if delay.calendar is not None:
            return moment + delay.calendar
        local = self.local(self.place(moment))
        day = local.date()
        for _ in range(delay.business_days or 0):
            day = self.next_business_day(day)
        return self._at(day, local.time().replace(tzinfo=None))

    def day(self, moment: datetime) -> date:
        """The local date of `moment` (caps count per local day)."""
        return self.local(moment).date()
