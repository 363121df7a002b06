"""A journey's life: draft → live ⇄ paused → stopped, as `journeys start|pause|resume|stop` say.

* A journey the store does not know is a **draft**: it never writes.
* **start** makes it live (the command validates it first); a stopped journey stays stopped.
* **pause** holds every member where it is: no run admits, decides or acts while paused (a run
  in progress sees it at its next step). Timers keep running, so on **resume** the members whose
  step fell due meanwhile proceed at once (`on_resume: proceed`, the default), or every timer
  still running when the pause began is pushed back by the pause's length (`on_resume: shift`).
* **stop** is final: active members leave as `stopped`.

Writes already recorded in the outbox before a pause or a stop are sent: they were decided
while the journey was live, and a write is never cut in half.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, update

from connector import tables as dvc
from connector.clock import parse_stamp, stamp
from connector.errors import ConfigError
from jobs.context import Context
from jobs.journeys.inspect import journey_named

ACTIVE = "active"
CHUNK = 1000
ACTIONS = {"start": "live", "pause": "paused", "resume": "live", "stop": "stopped"}
ALLOWED: dict[
    str, set[str | None]
] = {  # the states each command acts from (None: the store does not know it: a draft)
    "start": {None, "draft", "live"},
    "pause": {"live", "paused"},
    "resume": {"paused", "live"},
    "stop": {None, "draft", "live", "paused", "stopped"},
}


def journey_state(conn: Connection, name: str) -> dict[str, Any] | None:
    row = conn.execute(select(dvc.journeys).where(dvc.journeys.c.journey == name)).mappings()
    found = row.first()
    return dict(found) if found else None


def change_state(ctx: Context, name: str, command: str) -> str:
    """Carry out `command` (start, pause, resume, stop) on journey `name`; returns what was
    done, as a line for the operator."""
    journey = journey_named(ctx, name)
    j, m = dvc.journeys, dvc.journey_members
    now = ctx.clock.stamp()
    with ctx.store.transaction() as conn:
        current = journey_state(conn, name)
        state = current["state"] if current else None
        if state not in ALLOWED[command]:
            shown = state or "draft"
            raise ConfigError(f"journey {name!r} is {shown}: cannot {command} it"
                              + ("; a stopped journey stays stopped" if shown == "stopped"
                                 else ""))  # fmt: skip
        wanted = ACTIONS[command]
        if state == wanted:
            return f"{name}: already {wanted}"
        values: dict[str, Any] = {"state": wanted}
        if command == "start":
            values["started_at"] = now
        elif command == "pause":
            values["paused_at"] = now
        elif command == "stop":
            values["stopped_at"] = now
        if current is None:
            conn.execute(j.insert().values(journey=name, version=0, **values))
        else:
            conn.execute(update(j).where(j.c.journey == name).values(values))
        detail = ""
        if command == "resume" and current is not None:
            conn.execute(update(j).where(j.c.journey == name).values(paused_at=None))
            detail = _resume(conn, name, journey.on_resume, current["paused_at"], now)
        if command == "stop":
            stopped = conn.execute(
                update(m).where(m.c.journey == name, m.c.status == ACTIVE)
                .values(status="stopped", left_at=now)
            ).rowcount  # fmt: skip
            detail = f"; {stopped:,} members stopped"
        return f"{name}: {wanted}{detail}"


def _resume(conn: Connection, name: str, policy: str, paused_at: str | None, now: str) -> str:
    """Apply the resume policy; returns what it did to members' timers."""
    m = dvc.journey_members
    mine = (m.c.journey == name, m.c.status == ACTIVE)
    if policy == "proceed" or paused_at is None:
        overdue = conn.execute(select(func.count()).where(*mine, m.c.due_at <= now)).scalar_one()
        return f"; {overdue:,} members due meanwhile proceed at the next run"
    pause = parse_stamp(now) - parse_stamp(paused_at)
    shifted, after = 0, 0
    running = select(m.c.member_id, m.c.due_at).where(*mine, m.c.due_at > paused_at)
    moved = update(m).where(m.c.member_id == bindparam("member")).values(due_at=bindparam("due"))
    while chunk := conn.execute(
        running.where(m.c.member_id > after).order_by(m.c.member_id).limit(CHUNK)
    ).all():
        after = chunk[-1][0]
        conn.execute(moved, [{"member": member_id, "due": stamp(parse_stamp(due_at) + pause)}
                             for member_id, due_at in chunk])  # fmt: skip
        shifted += len(chunk)
    return f"; {shifted:,} members' timers pushed back by {_span(pause)}"


def _span(span: timedelta) -> str:
    hours = span.total_seconds() / 3600
    return f"{hours / 24:.1f} days" if hours >= 24 else f"{hours:.1f} hours"
