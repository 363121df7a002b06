"""The one clock every time-dependent decision reads.

Real UTC time, or a fixed instant when `DVCONNECT_NOW` is set (for tests and rehearsals only):
then every command of the process sees that instant — sync state stamps, leases, relative dates
of segments, journey due times — so a rehearsal can move time without waiting for it.
Durations are measured with `time.monotonic`, never with this clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

WIRE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def stamp(moment: datetime) -> str:
    """An aware datetime as dvconnect stores time: ISO-8601 UTC, whole seconds, `Z`."""
    return moment.astimezone(UTC).strftime(WIRE_FORMAT)


def parse_stamp(text: str) -> datetime:
    """A stored or wire timestamp (`Z` or an offset) as an aware UTC datetime."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class Clock:
    """`now()` is real time, or `fixed` when set."""

    fixed: datetime | None = None

    def now(self) -> datetime:
        return self.fixed if self.fixed is not None else datetime.now(UTC)

    def stamp(self, seconds_later: float = 0) -> str:
        """Now (plus `seconds_later`) as dvconnect stores time."""
        return stamp(self.now() + timedelta(seconds=seconds_later))
