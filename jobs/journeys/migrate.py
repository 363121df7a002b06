"""`dvconnect journeys migrate NAME [--dry-run]`: members in flight onto the current version.

Members finish on the version they entered with, unless the operator moves them. The journey
file's `migrate` map (an earlier version's step id: this version's step id) says where: a member
at a mapped step lands on its new step; a member at a step this version still has (same id) stays
at that step; any other member stays on its version and is reported. A landed member keeps the
time it arrived at its step, so a wait's or an if-step's clock keeps running (its due time is
recomputed by the new step), and its history gets a `migrated` event.

The preview (`--dry-run`) is the same migration inside a transaction that is rolled back: what it
prints is what the real one does. A map naming a step no earlier version has is refused before
anything moves; the migration holds the `journeys` job's lease, so it never moves a member that a
run is deciding.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, update

from connector import tables as dvc
from connector.clock import parse_stamp, stamp
from connector.errors import ConfigError
from connector.mapping.journeys import Journey
from jobs.context import Context
from jobs.journeys.actions import JOB
from jobs.journeys.calendar import Calendar
from jobs.journeys.engine import ACTIVE, CHUNK, Event, versions, write_history
from jobs.journeys.inspect import journey_named
from jobs.journeys.lifecycle import journey_state
from jobs.journeys.machine import due

SHOWN = 10  # contacts listed per move


def migrate(ctx: Context, name: str, dry: bool) -> dict[str, Any]:
    """Move journey `name`'s members on earlier versions per its `migrate` map; with `dry`,
    only say who would land where."""
    journey = journey_named(ctx, name)
    if not ctx.store.exists:
        raise ConfigError("the store is empty: run `dvconnect run sync` first")
    ctx.store.prepare()  # the store's dvc_ tables as this release has them
    with ctx.store.lease(JOB), _transaction(ctx, dry) as conn:
        state = journey_state(conn, name)
        if state is not None and state["state"] == "stopped":
            raise ConfigError(f"journey {name!r} is stopped: its members left; nothing to migrate")
        current, definitions = versions(ctx, conn, journey)
        m = dvc.journey_members
        in_flight = conn.execute(
            select(m.c.version, m.c.step, func.count())
            .where(m.c.journey == name, m.c.status == ACTIVE, m.c.version != current)
            .group_by(m.c.version, m.c.step).order_by(m.c.version, m.c.step)
        ).all()  # fmt: skip
        _check_map(journey, current, definitions)
        ids = {step.id for step in journey.steps}
        moves = []
        for version, step, count in in_flight:
            target = journey.migrate.get(step, step if step in ids else None)
            moved = [] if target is None else _move(ctx, conn, journey, current, version, step,
                                                     target)  # fmt: skip
            moves.append({"from_version": version, "from_step": step, "to_step": target,
                          "members": int(count), "contacts": moved[:SHOWN]})  # fmt: skip
    return {
        "journey": name,
        "version": current,
        "dry_run": dry,
        "moves": moves,
        "moved": sum(move["members"] for move in moves if move["to_step"]),
        "staying": sum(move["members"] for move in moves if not move["to_step"]),
    }


@contextmanager
def _transaction(ctx: Context, dry: bool) -> Iterator[Connection]:
    """One transaction for the whole migration: committed, or for a preview rolled back."""
    if not dry:
        with ctx.store.transaction() as conn:
            yield conn
        return
    with ctx.store.rolled_back() as conn:
        yield conn


def _check_map(journey: Journey, current: int, definitions: dict[int, Journey]) -> None:
    """Every step the map moves from must be a step of an earlier version."""
    earlier = {s.id for number, d in definitions.items() if number != current for s in d.steps}
    for old in journey.migrate:
        if old not in earlier:
            known = ", ".join(sorted(earlier)) or "none: there is no earlier version"
            expected = f"no step {old!r} in an earlier version (their steps: {known})"
            raise journey.error(("migrate", old), expected)


def _move(ctx: Context, conn: Connection, journey: Journey, current: int, version: int,
          step: str, target: str) -> list[str]:  # fmt: skip
    """Land the members at (`version`, `step`) on `target` of version `current`; returns the
    moved contacts' ids."""
    m = dvc.journey_members
    calendar = Calendar(journey.business_hours, journey.schedule.zone)
    now = ctx.clock.stamp()
    landed = (
        update(m)
        .where(m.c.member_id == bindparam("member"))
        .values(version=current, step=target, due_at=bindparam("due"))
    )
    query = select(m.c.member_id, m.c.contactid, m.c.arrived_at).where(
        m.c.journey == journey.name, m.c.status == ACTIVE, m.c.version == version,
        m.c.step == step,
    )  # fmt: skip
    contacts: list[str] = []
    after = 0
    while chunk := conn.execute(
        query.where(m.c.member_id > after).order_by(m.c.member_id).limit(CHUNK)
    ).all():
        after = chunk[-1][0]
        conn.execute(landed, [
            {"member": member_id,
             "due": stamp(due(journey, calendar, target, parse_stamp(arrived_at)))}
            for member_id, _, arrived_at in chunk
        ])  # fmt: skip
        detail: dict[str, Any] = {"from_version": version, "to_version": current}
        events: list[Event] = [
            (member_id, step, "migrated", target, detail) for member_id, _, _ in chunk
        ]
        write_history(conn, journey.name, now, events)
        if len(contacts) < SHOWN:
            contacts += [contact for _, contact, _ in chunk[: SHOWN - len(contacts)]]
    return contacts
