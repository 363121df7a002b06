"""The emulator clock: real UTC time plus an offset the admin endpoint can set or advance.

Everything time-dependent (createdon/modifiedon, token expiry, delta-token retention) reads this
clock, so tests can move time without sleeping. Wire format: ISO-8601 UTC with `Z`, no fraction.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

WIRE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class Clock:
    """Real time shifted by an adjustable offset; it keeps ticking after `set` or `advance`."""

    def __init__(self, start: datetime | None = None) -> None:
        self._lock = threading.Lock()
        self._initial = start
        self._offset = timedelta(0)
        self.reset()

    def now(self) -> datetime:
        return datetime.now(UTC) + self._offset

    def set(self, when: datetime) -> None:
        with self._lock:
            self._offset = when - datetime.now(UTC)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += timedelta(seconds=seconds)

    def reset(self) -> None:
        """Back to the start time given at launch (or to real time)."""
        if self._initial is None:
            with self._lock:
                self._offset = timedelta(0)
        else:
            self.set(self._initial)


def wire(when: datetime) -> str:
    return when.astimezone(UTC).strftime(WIRE_FORMAT)


def parse_wire(text: str) -> datetime:
    """Parse an ISO-8601 timestamp (`Z` or an offset); naive values are taken as UTC."""
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)
