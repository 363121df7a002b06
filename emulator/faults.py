"""Fault injection for Web API calls: throttling, gateway errors, slow and dropped connections.

A spec is comma-separated rules `KIND:key=value:key=value`:

* kinds: `429` (`retry-after=S`, default 1; `code=requests|time|concurrency`, the last without
  Retry-After), `503` and `504` (HTML body, optional `retry-after`), `drop` (close the connection
  without answering; the request is not executed), `slow` (`ms=N`, then answer normally),
  `commit-drop` (execute and commit, then close without answering), `hold` (keep the request
  waiting, not executed, until the admin endpoint releases it; then close without answering)
  and `commit-hold` (execute and commit, then wait likewise). The two holds let a test kill a
  client at a chosen point of its work and know the kill landed there;
* selectors (all given must hold; none = every matching request): `rate=P` (seeded RNG drawn in
  request order), `every=N`, `first=N`, `at=3;7;9` (1-based numbers among matching requests);
* filters: `method=GET`, `path=GLOB` (matched against the path after `/api/data/v9.2/`);
* cap: `times=N` injections at most.

Every rule counts the requests that pass its filters; the first rule that fires wins.
"""

from __future__ import annotations

import fnmatch
import random
import threading
from dataclasses import dataclass, field
from typing import Any

from emulator.limits import REAL, throttled
from emulator.wire import Response

THROTTLING = ("requests", "time", "concurrency")
GATEWAY_PAGES = {
    503: "<html><head><title>503 Service Unavailable</title></head><body><h1>Service Unavailable"
    "</h1><p>The service is temporarily unavailable. Please try again later.</p></body></html>",
    504: "<html><head><title>504 Gateway Time-out</title></head><body><h1>Gateway Time-out</h1>"
    "<p>The request exceeded the gateway timeout.</p></body></html>",
}
KINDS = ("429", "503", "504", "drop", "slow", "commit-drop", "hold", "commit-hold")
HOLD_LIMIT_SECONDS = 600.0  # a hold nobody releases ends anyway
_COMMON_KEYS = {"rate", "every", "first", "at", "method", "path", "times"}
_KIND_KEYS = {
    "429": {"retry-after", "code"},
    "503": {"retry-after"},
    "504": {"retry-after"},
    "drop": set(),
    "slow": {"ms"},
    "commit-drop": set(),
    "hold": set(),
    "commit-hold": set(),
}


class FaultSpecError(ValueError):
    """A bad `--faults` spec; the message names the rule and the key."""


@dataclass(frozen=True)
class FaultRule:
    text: str
    kind: str
    retry_after: int | None = None
    code: str = "requests"
    ms: int = 0
    rate: float | None = None
    every: int | None = None
    first: int | None = None
    at: frozenset[int] = frozenset()
    method: str | None = None
    path: str | None = None
    times: int | None = None

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and method != self.method:
            return False
        return self.path is None or fnmatch.fnmatchcase(path, self.path)


def _integer(rule: str, key: str, value: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise FaultSpecError(f"fault rule {rule!r}: key {key!r} must be an integer >= {minimum}")
    return number


def _rule(text: str) -> FaultRule:
    kind, *pairs = text.split(":")
    if kind not in KINDS:
        raise FaultSpecError(
            f"fault rule {text!r}: unknown kind {kind!r} (expected one of {', '.join(KINDS)})"
        )
    values: dict[str, Any] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not value:
            raise FaultSpecError(f"fault rule {text!r}: key {key!r} needs a value (key=value)")
        if key not in _COMMON_KEYS | _KIND_KEYS[kind]:
            raise FaultSpecError(f"fault rule {text!r}: unknown key {key!r} for kind {kind}")
        if key in ("every", "first", "times", "ms"):
            values[key] = _integer(text, key, value, 1 if key != "ms" else 0)
        elif key == "retry-after":
            values["retry_after"] = _integer(text, key, value, 0)
        elif key == "rate":
            try:
                rate = float(value)
            except ValueError:
                rate = -1.0
            if not 0.0 <= rate <= 1.0:
                raise FaultSpecError(
                    f"fault rule {text!r}: key 'rate' must be a number from 0 to 1"
                )
            values["rate"] = rate
        elif key == "at":
            values["at"] = frozenset(_integer(text, key, part, 1) for part in value.split(";"))
        elif key == "code":
            if value not in THROTTLING:
                raise FaultSpecError(
                    f"fault rule {text!r}: key 'code' must be one of {', '.join(THROTTLING)}"
                )
            values["code"] = value
        elif key == "method":
            values["method"] = value.upper()
        else:
            values["path"] = value
    if kind == "429" and "retry_after" not in values and values.get("code") != "concurrency":
        values["retry_after"] = 1
    return FaultRule(text=text, kind=kind, **values)


def parse_spec(spec: str) -> tuple[FaultRule, ...]:
    return tuple(_rule(part.strip()) for part in spec.split(",") if part.strip())


@dataclass
class _Counters:
    matched: int = 0
    injected: int = 0


@dataclass(frozen=True)
class Fault:
    """A decision to inject `rule` into the current request."""

    rule: FaultRule

    @property
    def kind(self) -> str:
        return self.rule.kind

    def response(self) -> Response:
        """The answer for the status-code kinds (429, 503, 504)."""
        rule = self.rule
        retry = (("Retry-After", str(rule.retry_after)),) if rule.retry_after is not None else ()
        if rule.kind == "429":
            return throttled(rule.code, REAL, rule.retry_after).response()
        status = int(rule.kind)
        page = GATEWAY_PAGES[status].encode()
        return Response(status, (("Content-Type", "text/html; charset=utf-8"), *retry), page)


@dataclass
class FaultPlan:
    """The active rules with their counters and the seeded random stream."""

    rules: tuple[FaultRule, ...] = ()
    seed: int = 0
    _counters: list[_Counters] = field(default_factory=list)
    _random: random.Random = field(default_factory=random.Random)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _released: threading.Event = field(default_factory=threading.Event)
    _holding: int = 0
    _held: int = 0

    def __post_init__(self) -> None:
        self._counters = [_Counters() for _ in self.rules]
        self._random = random.Random(self.seed)

    def decide(self, method: str, path: str) -> Fault | None:
        if not self.rules:
            return None
        chosen: Fault | None = None
        with self._lock:
            for rule, counters in zip(self.rules, self._counters, strict=True):
                if not rule.matches(method, path):
                    continue
                counters.matched += 1
                fires = self._fires(rule, counters)
                if fires and chosen is None:
                    counters.injected += 1
                    chosen = Fault(rule)
        return chosen

    def _fires(self, rule: FaultRule, counters: _Counters) -> bool:
        number = counters.matched
        draw = self._random.random() if rule.rate is not None else None
        if rule.times is not None and counters.injected >= rule.times:
            return False
        if draw is not None and rule.rate is not None and draw >= rule.rate:
            return False
        if rule.every is not None and number % rule.every:
            return False
        if rule.first is not None and number > rule.first:
            return False
        return not (rule.at and number not in rule.at)

    def hold(self) -> None:
        """Keep the calling request waiting until `release` (or the hold limit)."""
        with self._lock:
            self._holding += 1
            self._held += 1
        try:
            self._released.wait(HOLD_LIMIT_SECONDS)
        finally:
            with self._lock:
                self._holding -= 1

    def release(self) -> None:
        """Let every held request go on (it ends by closing its connection)."""
        self._released.set()

    def describe(self) -> dict[str, Any]:
        with self._lock:
            rules = [
                {
                    "rule": rule.text,
                    "kind": rule.kind,
                    "matched": counters.matched,
                    "injected": counters.injected,
                }
                for rule, counters in zip(self.rules, self._counters, strict=True)
            ]
            holding, held = self._holding, self._held
        return {
            "spec": ",".join(rule.text for rule in self.rules),
            "seed": self.seed,
            "rules": rules,
            "holding": holding,  # requests waiting now
            "held": held,  # requests held so far
        }
