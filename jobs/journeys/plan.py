"""`dvconnect journeys plan NAME`: the journey run forward on a simulated clock; nothing written.

The plan is the live engine, not a model of it: `JourneyRun` runs again and again inside one
store transaction that is rolled back at the end, each run at an instant of a simulated clock,
on today's data (no sync in between, so no condition changes unless assumed). The instants are
those the `journeys` job's cron (`schedule.yaml`) would run at, skipping the ones at which
nothing can happen: the first is now, the next the first cron instant at or after the earliest
of — a member's step falling due, the run after members arrived at an if-step whose condition is
assumed, the journey's start.

`--assume STEP=P%` makes an if-step's condition hold for P% of its members, drawn by the same
hash as splits (journey, member entry, step), from the first run after the member arrives; the
others wait for the time-out. A journey that is a draft or paused is planned as if live.

The result counts every record the runs would create per day (in the journey's zone), step and
owner; the spill of caps (members held to the next day, per owner); the funnel at the end; the
first records in full; and the instants of the runs, so a rehearsal or a test can replay them.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import IO, Any

from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import func, insert, select, update

from connector import tables as dvc
from connector.clock import parse_stamp, stamp
from connector.errors import ConfigError
from connector.mapping.journeys import Journey, Step
from jobs.context import Context
from jobs.journeys.engine import JourneyRun, Sink
from jobs.journeys.inspect import journey_named
from jobs.journeys.lifecycle import journey_state
from jobs.journeys.machine import Member, bucket

ASSUMPTION = re.compile(r"^(?P<step>[^=]+)=(?P<percent>-?\d+(?:\.\d+)?)%?$")
SHOWN = 20  # records listed in full
DEFAULT_CRON = "*/15 * * * *"


def parse_assumptions(journey: Journey, texts: list[str]) -> dict[str, int]:
    """`STEP=P%` texts as {if-step id: percentage}; ConfigError naming what is wrong."""
    assumed: dict[str, int] = {}
    steps = {step.id: step for step in journey.steps}
    for text in texts:
        match = ASSUMPTION.match(text.strip())
        if match is None:
            raise ConfigError(f"--assume {text!r}: expected STEP=PERCENT%, e.g. opened=30%")
        step_id, percent = match["step"].strip(), float(match["percent"])
        if step_id not in steps:
            known = ", ".join(s.id for s in journey.steps if s.kind == "if") or "none"
            raise ConfigError(f"--assume {text!r}: {journey.name} has no step {step_id!r} "
                              f"(its if-steps: {known})")  # fmt: skip
        if steps[step_id].kind != "if":
            raise ConfigError(f"--assume {text!r}: step {step_id!r} is a "
                              f"{steps[step_id].kind} step; only an if-step's condition "
                              "can be assumed")  # fmt: skip
        if not 0 <= percent <= 100 or percent != int(percent):
            raise ConfigError(f"--assume {text!r}: the rate must be a whole percentage "
                              "from 0% to 100%")  # fmt: skip
        assumed[step_id] = int(percent)
    return assumed


def holds(journey: Journey, member: Member, step: Step, percent: int) -> bool:
    """Whether an assumed condition holds for this member's entry (the split's hash)."""
    return bucket(journey, member, step) < percent


@dataclass
class Planned:
    """What the simulated runs did, as `Simulation` for the engine and as the plan's result."""

    journey: Journey
    assume: dict[str, int]
    previous: str | None = None
    created: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    spill: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    reassigned: Counter[tuple[str, str]] = field(default_factory=Counter)  # (day, to owner)
    deferred: dict[str, int] = field(default_factory=dict)  # day: members kept out
    first: list[dict[str, Any]] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    day: str = ""
    out: IO[str] | None = None  # every record, one JSON document per line

    def holds(self, journey: Journey, member: Member, step: Step) -> bool:
        return holds(journey, member, step, self.assume[step.id])

    def observe(self, kind: str, detail: dict[str, Any]) -> None:
        owner = detail.get("owner") or "-"
        if kind == "write":
            self.created[(self.day, detail["step"], str(detail.get("table")), owner)] += 1
            item = {"run": self.runs[-1], **detail}
            if len(self.first) < SHOWN:
                self.first.append(item)
            if self.out is not None:
                self.out.write(json.dumps(item, sort_keys=True, default=str) + "\n")
        elif kind == "capped":
            self.spill[(self.day, detail["step"], owner)] += 1
        elif kind == "reassigned":
            self.reassigned[(self.day, detail["to"])] += 1
        elif kind == "deferred":
            self.deferred[self.day] = detail["members"]  # still waiting at the day's last run


def plan(
    ctx: Context, name: str, days: int | None, assume: list[str], out: IO[str] | None = None
) -> dict[str, Any]:
    """The plan of journey `name` from now over `days` (default: to its end); with `out`, every
    planned record is written there as a line of JSON."""
    journey = journey_named(ctx, name)
    planned = Planned(journey, parse_assumptions(journey, assume), out=out)
    if days is not None and days < 1:
        raise ConfigError(f"--days {days}: at least one day")
    if not ctx.store.exists:
        raise ConfigError("the store is empty: run `dvconnect run sync` first")
    start = ctx.clock.now()
    end = journey.schedule.ends if days is None else start + timedelta(days=days)
    cron = CronTrigger.from_crontab(
        ctx.mapping.schedule.jobs.get("journeys", DEFAULT_CRON),
        timezone=ctx.mapping.schedule.timezone,
    )
    m = dvc.journey_members
    sink = Sink(ctx, dry=True)
    counts: Counter[str] = Counter()
    with sink.session():
        with sink.write() as conn:
            _live(conn, name)
        moment: datetime | None = start
        while moment is not None and moment < end and not ctx.stop.is_set():
            planned.runs.append(stamp(moment))
            planned.day = moment.astimezone(journey.schedule.zone).date().isoformat()
            done = JourneyRun(ctx, journey, sink, moment, planned).run()
            for key in ("entered", "converted", "exited", "completed", "stopped", "failed"):
                counts[key] += getattr(done, key)
            planned.previous = stamp(moment)
            with sink.read() as conn:
                next_due = conn.execute(
                    select(func.min(m.c.due_at)).where(m.c.journey == name, m.c.status == "active")
                ).scalar()
            arrivals = bool(done.moved or done.entered) and bool(planned.assume)
            moment = _next_run(cron, journey, moment, next_due, arrivals, bool(done.deferred))
        with sink.read() as conn:
            active: dict[str, int] = dict(conn.execute(
                select(m.c.step, func.count())
                .where(m.c.journey == name, m.c.status == "active").group_by(m.c.step)
            ).all())  # fmt: skip
    return _result(planned, start, end, counts, active)


def _live(conn: Any, name: str) -> None:
    """Inside the plan's transaction (rolled back), the journey is live whatever its state."""
    state = journey_state(conn, name)
    if state is None:
        conn.execute(insert(dvc.journeys).values(journey=name, state="live", version=0))
    elif state["state"] != "live":
        conn.execute(update(dvc.journeys).where(dvc.journeys.c.journey == name)
                     .values(state="live"))  # fmt: skip


def _next_run(cron: CronTrigger, journey: Journey, moment: datetime, next_due: str | None,
              arrivals: bool, deferred: bool) -> datetime | None:  # fmt: skip
    """The next instant at which the journeys job would run and something can happen."""
    wanted = []
    if deferred:  # members kept out by the daily entry limit enter from the next day
        local = moment.astimezone(journey.schedule.zone).date() + timedelta(days=1)
        wanted.append(datetime.combine(local, time(0), tzinfo=journey.schedule.zone))
    if next_due is not None:
        wanted.append(max(parse_stamp(next_due), moment + timedelta(seconds=1)))
    if arrivals:  # an assumed condition holds from the run after the arrival
        wanted.append(moment + timedelta(seconds=1))
    if moment < journey.schedule.starts:
        wanted.append(journey.schedule.starts)
    if not wanted:
        return None
    fire = cron.get_next_fire_time(None, min(wanted))
    return fire.astimezone(moment.tzinfo) if fire is not None else None


def _result(planned: Planned, start: datetime, end: datetime, counts: Counter[str],
            active: dict[str, int]) -> dict[str, Any]:  # fmt: skip
    days: dict[str, dict[str, Any]] = {}
    for (day, step, table, owner), n in sorted(planned.created.items()):
        entry = _day(days, day)
        entry["records"] += n
        entry["by_step"][step] += n
        entry["by_owner"][owner] += n
        entry["by_table"][table] += n
    for (day, _step, owner), n in sorted(planned.spill.items()):
        _day(days, day)["spill"][owner] += n
    for (day, owner), n in sorted(planned.reassigned.items()):
        _day(days, day)["reassigned_to"][owner] += n
    for day, n in sorted(planned.deferred.items()):
        _day(days, day)["entries_deferred"] += n
    return {
        "journey": planned.journey.name,
        "from": stamp(start),
        "to": stamp(end),
        "assumed": {step: f"{percent}%" for step, percent in planned.assume.items()},
        "runs": planned.runs,
        "records": sum(planned.created.values()),
        "days": {day: {key: dict(value) if isinstance(value, Counter) else value
                       for key, value in entry.items()} for day, entry in sorted(days.items())},
        "funnel": {**{k: v for k, v in counts.items() if v}, "active": active},
        "first": planned.first,
    }  # fmt: skip


def _day(days: dict[str, dict[str, Any]], day: str) -> dict[str, Any]:
    """The plan's entry for `day`, made on first use."""
    return days.setdefault(day, {
        "records": 0, "by_step": Counter(), "by_owner": Counter(), "by_table": Counter(),
        "spill": Counter(), "reassigned_to": Counter(), "entries_deferred": 0,
    })  # fmt: skip
