"""The journey state machine: where one member goes next, and what it does there. Pure.

A member sits at one step with the time it arrived and the time the step is due. When the
engine looks at it — because it is due, or because the condition it waits on may have become
true — `decide` says what happens, given the facts the engine found (set-wise) for the step's
conditions:

* `wait` / `wait_until`: once due, on to the next step;
* `if`: the condition true → `then`; the timeout passed → `else`; otherwise it keeps waiting;
* `branch`: the first true case, else `default`; `split`: a bucket drawn from a hash of the
  journey, the member and its entry, so every run (and the plan) agrees;
* an action: do it, then on to the next step; `end`, or no next step: the member completes;
* under `end_policy: hard_stop`, nothing happens after the journey's end: members stop there.

`due` says when a member arriving at a step is next due. The engine, the dry run and the plan
all drive this one machine.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from connector.mapping.journeys import Journey, Step
from jobs.journeys.calendar import Calendar


@dataclass(frozen=True)
class Member:
    """What the machine needs of a member: its identity, its step, and that step's times."""

    key: str  # "<contactid>/<entry>": one entry of one contact, the same across runs
    step: str
    arrived_at: datetime
    due_at: datetime


@dataclass(frozen=True)
class Move:
    """What happens to a member now.

    `to` is the step it goes to (it arrives there now); with `to` None and `finish` None it
    stays where it is. `action` is the action step it performs first. `finish` ends its journey:
    `completed` (no step left) or `stopped` (the journey ended under hard_stop).
    """

    event: str
    to: str | None = None
    action: Step | None = None
    finish: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def stays(self) -> bool:
        return self.to is None and self.finish is None and self.action is None


def due(journey: Journey, calendar: Calendar, step_id: str, at: datetime) -> datetime:
    """When a member arriving at `step_id` at `at` is next due."""
    step = journey.step(step_id)
    match step.kind:
        case "wait":
            assert step.wait is not None
            return calendar.add(at, step.wait)
        case "wait_until":
            assert step.wait_until is not None
            return max(at, journey.schedule.moment(step.wait_until))
        case "if":
            assert step.if_ is not None
            return calendar.add(at, step.if_.timeout)
    return at


def bucket(journey: Journey, member: Member, step: Step) -> int:
    """A number 0-99 from the journey, the member's entry and the step: the same every time."""
    digest = hashlib.sha256(f"{journey.name}/{member.key}/{step.id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def decide(journey: Journey, member: Member, now: datetime, facts: tuple[bool, ...] = ()) -> Move:
    """What happens to `member` at `now`; `facts` are the step's conditions, in order."""
    if journey.schedule.end_policy == "hard_stop" and now >= journey.schedule.ends:
        return Move("journey ended", finish="stopped")
    step = journey.step(member.step)
    kind = step.kind
    if kind in ("wait", "wait_until"):
        if now < member.due_at:
            return Move("waiting")
        return _onward(journey, step, "waited")
    if kind == "if":
        if facts and facts[0]:
            return Move("condition true", to=step.then, detail={"condition": True})
        if now >= member.due_at:
            return Move("timeout", to=step.else_, detail={"condition": False, "timed_out": True})
        return Move("waiting")
    if kind == "branch":
        cases = step.branch or []
        for index, case in enumerate(cases):
            if index < len(facts) and facts[index]:
                return Move("branch", to=case.then, detail={"case": index})
        return Move("branch", to=step.default, detail={"case": "default"})
    if kind == "split":
        drawn = bucket(journey, member, step)
        threshold = 0
        for part in step.split or []:
            threshold += part.percent
            if drawn < threshold:
                return Move("split", to=part.then, detail={"bucket": drawn})
        raise AssertionError("split percentages add up to 100")  # checked when loaded
    if kind == "end":
        return Move("end", finish="completed")
    after = journey.following(step)
    if after is None:
        return Move("acted", action=step, finish="completed")
    return Move("acted", action=step, to=after)


def _onward(journey: Journey, step: Step, event: str) -> Move:
    after = journey.following(step)
    return Move(event, to=after) if after is not None else Move(event, finish="completed")
