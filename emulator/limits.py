"""Service protection limits (§12): a sliding window per caller, answered with 429.

Three measures, each evaluated over the last `window_seconds` of the emulator clock for one
caller (the application user, or the user named by `CallerObjectId` / `MSCRMCallerID`):
requests received, combined execution time, and requests in flight. A request that would exceed
one is refused with 429 and the §12.1 code and server text (with the configured numbers), plus
`Retry-After` for the two window measures. Every inner request of a `$batch` counts (`charge`).
The defaults are the real limits scaled down by five, so tests and demos can meet them; the
`x-ms-ratelimit-*` headers report what is left.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from emulator.clock import Clock
from emulator.wire import Response, json_response

DISABLED_HEADERS = (
    ("x-ms-ratelimit-burst-remaining-xrm-requests", "7999"),
    ("x-ms-ratelimit-time-remaining-xrm-requests", "1,200.00"),
)
_KEYS = {
    "requests": "requests",
    "window": "window_seconds",
    "execution-ms": "execution_ms",
    "concurrency": "concurrency",
}


@dataclass(frozen=True)
class Limits:
    """The configured limits; `enabled=False` switches service protection off."""

    enabled: bool = True
    requests: int = 1200
    window_seconds: int = 60
    execution_ms: int = 240_000
    concurrency: int = 10

    def as_json(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "requests": self.requests,
            "window_seconds": self.window_seconds,
            "execution_ms": self.execution_ms,
            "concurrency": self.concurrency,
        }

    def updated(self, changes: object) -> Limits:
        """A copy with `changes` (a JSON object) applied; ValueError names the bad key."""
        if not isinstance(changes, dict):
            raise ValueError("service_protection must be an object")
        limits = self
        for key, value in changes.items():
            if key == "enabled":
                if not isinstance(value, bool):
                    raise ValueError("service_protection.enabled must be a boolean")
                limits = replace(limits, enabled=value)
            elif key in _KEYS.values():
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ValueError(f"service_protection.{key} must be a positive integer")
                limits = replace(limits, **{key: value})  # type: ignore[arg-type]
            else:
                raise ValueError(f"unknown service_protection key {key!r}")
        return limits

    @classmethod
    def parse(cls, spec: str) -> Limits:
        """`--service-protection`: `off`, or `requests=N,window=S,execution-ms=MS,concurrency=N`."""
        if spec.strip() == "off":
            return cls(enabled=False)
        changes: dict[str, Any] = {}
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            key, equals, value = part.partition("=")
            if not equals or key not in _KEYS:
                raise ValueError(
                    f"{part!r}: expected off or requests=N,window=S,execution-ms=MS,concurrency=N"
                )
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{part!r}: the value must be a positive integer")
            changes[_KEYS[key]] = int(value)
        return cls().updated(changes)


REAL = Limits(requests=6000, window_seconds=300, execution_ms=1_200_000, concurrency=52)


def requests_message(limits: Limits) -> str:
    return (
        f"Number of requests exceeded the limit of {limits.requests} over time window of "
        f"{limits.window_seconds} seconds."
    )


def execution_message(limits: Limits) -> str:
    return (
        f"Combined execution time of incoming requests exceeded limit of {limits.execution_ms:,} "
        f"milliseconds over time window of {limits.window_seconds} seconds. Decrease number of "
        "concurrent requests or reduce the duration of requests and try again later."
    )


def concurrency_message(limits: Limits) -> str:
    return f"Number of concurrent requests exceeded the limit of {limits.concurrency}."


CODES = {"requests": "0x80072322", "time": "0x80072321", "concurrency": "0x80072326"}


@dataclass(frozen=True)
class Throttled:
    """A refusal: which measure (`requests`, `time`, `concurrency`), its text, Retry-After."""

    measure: str
    message: str
    retry_after: int | None = None

    def response(self) -> Response:
        retry = (("Retry-After", str(self.retry_after)),) if self.retry_after is not None else ()
        body = {"error": {"code": CODES[self.measure], "message": self.message}}
        return json_response(429, body, *retry)


def throttled(measure: str, limits: Limits, retry_after: int | None = None) -> Throttled:
    """The refusal for `measure` with the texts of `limits` (also used by fault injection)."""
    messages = {
        "requests": requests_message,
        "time": execution_message,
        "concurrency": concurrency_message,
    }
    return Throttled(measure, messages[measure](limits), retry_after)


@dataclass
class _Caller:
    """One caller's window: (time, weight) of requests, (time, ms) of executions, in flight."""

    requests: deque[tuple[float, int]] = field(default_factory=deque)
    executions: deque[tuple[float, float]] = field(default_factory=deque)
    count: int = 0
    spent_ms: float = 0.0
    in_flight: int = 0

    def prune(self, now: float, window: int) -> None:
        horizon = now - window
        while self.requests and self.requests[0][0] <= horizon:
            self.count -= self.requests.popleft()[1]
        while self.executions and self.executions[0][0] <= horizon:
            self.spent_ms -= self.executions.popleft()[1]


class ServiceProtection:
    """The sliding windows of every caller; thread-safe, O(1) amortized per request."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._callers: dict[str, _Caller] = {}
        self._lock = threading.Lock()

    def _retry_after(self, since: float, now: float, window: int) -> int:
        return max(1, math.ceil(since + window - now))

    def enter(self, caller: str, limits: Limits) -> Throttled | None:
        """Admit one request (counted, in flight until `leave`) or refuse it."""
        now = self._clock.now().timestamp()
        with self._lock:
            state = self._callers.setdefault(caller, _Caller())
            state.prune(now, limits.window_seconds)
            if state.in_flight >= limits.concurrency:
                return throttled("concurrency", limits)
            if state.count + 1 > limits.requests:
                wait = self._retry_after(state.requests[0][0], now, limits.window_seconds)
                return throttled("requests", limits, wait)
            if state.spent_ms >= limits.execution_ms:
                wait = self._retry_after(state.executions[0][0], now, limits.window_seconds)
                return throttled("time", limits, wait)
            state.requests.append((now, 1))
            state.count += 1
            state.in_flight += 1
        return None

    def charge(self, caller: str, limits: Limits, extra: int) -> Throttled | None:
        """Count `extra` more requests for an admitted one (the inner requests of a `$batch`)."""
        if extra <= 0:
            return None
        now = self._clock.now().timestamp()
        with self._lock:
            state = self._callers.setdefault(caller, _Caller())
            state.prune(now, limits.window_seconds)
            if state.count + extra > limits.requests:
                oldest = state.requests[0][0] if state.requests else now
                return throttled(
                    "requests", limits, self._retry_after(oldest, now, limits.window_seconds)
                )
            state.requests.append((now, extra))
            state.count += extra
        return None

    def leave(self, caller: str, elapsed_ms: float) -> None:
        now = self._clock.now().timestamp()
        with self._lock:
            state = self._callers.setdefault(caller, _Caller())
            state.in_flight = max(0, state.in_flight - 1)
            state.executions.append((now, elapsed_ms))
            state.spent_ms += elapsed_ms

    def headers(self, caller: str, limits: Limits) -> tuple[tuple[str, str], ...]:
        """`x-ms-ratelimit-*`: requests and execution seconds left in the window."""
        with self._lock:
            state = self._callers.get(caller) or _Caller()
            requests_left = max(0, limits.requests - state.count)
            seconds_left = max(0.0, limits.execution_ms - state.spent_ms) / 1000
        return (
            ("x-ms-ratelimit-burst-remaining-xrm-requests", str(requests_left)),
            ("x-ms-ratelimit-time-remaining-xrm-requests", f"{seconds_left:,.2f}"),
        )

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {
                caller: {
                    "requests": state.count,
                    "execution_ms": round(state.spent_ms, 1),
                    "in_flight": state.in_flight,
                }
                for caller, state in self._callers.items()
            }

    def reset(self) -> None:
        with self._lock:
            self._callers = {}
