"""`journeys retry` and `journeys skip`: stuck members put back on their way, by the operator.

Neither writes to Dataverse: each changes the store, in one transaction (state and history
together), and the next `journeys` run acts.

* **retry** puts failed members back, active at the step where they failed and due now, their
  error cleared (history: `retried`). The failed step's intents in the outbox become pending
  again, unchanged: the same keys and the same deterministic record ids, so the re-send
  converges whatever happened before (a create already made answers "duplicate key", an action
  is read back by its guard first). A failed intent was always pending before it failed, so
  pending is the status it is restored to. What the member did after the failed step is undone
  in the store only — the intents of later steps, never sent because they waited on the failed
  one, are dropped, and so are the records noted for those steps — because the next run takes
  the member through those steps again (with fresh timers) and records them anew, under the
  same keys. A failed member whose contact entered the journey again since is left alone.
* **skip** moves one contact's member (its latest entry, active or failed) past its current
  step as the state machine would when the step is due: a wait ends, an `if` takes its `else`,
  a branch its default, a split its drawn bucket; an action step is passed without its writes
  (history: `skipped`). A failed member skips the step it failed at; that step's failed writes
  stay failed (they are not sent), later ones are dropped as for retry.

A stopped journey refuses both. Members are read and changed `CHUNK` at a time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, exists, select, update

from connector import tables as dvc
from connector.clock import parse_stamp, stamp
from connector.errors import ConfigError
from connector.mapping.journeys import Journey, load_journey
from jobs.context import Context
from jobs.journeys.actions import JOB
from jobs.journeys.calendar import Calendar
from jobs.journeys.engine import Event, write_history
from jobs.journeys.inspect import journey_named
from jobs.journeys.lifecycle import journey_state
from jobs.journeys.machine import Member, decide, due

CHUNK = 1000
UNDONE = ("failed", "retried", "skipped")  # events that are not steps taken


@dataclass(frozen=True)
class Cleanup:
    """What undoing a failed member's path from its failed step changed in the outbox."""

    repended: int
    dropped: int
    last_intent: str | None  # the member's latest write before the failed step
    had_intents: bool


@dataclass
class Retried:
    """What `retry` did: members put back, their intents pending again and dropped, and the
    failed members left alone because their contact entered the journey again since."""

    journey: str
    step: str | None
    retried: int = 0
    repended: int = 0
    dropped: int = 0
    superseded: int = 0


def retry(ctx: Context, name: str, step: str | None = None) -> Retried:
    """Put the journey's failed members (those failed at `step`) back; see the docstring."""
    journey = journey_named(ctx, name)
    if step is not None and step not in {s.id for s in journey.steps}:
        steps = ", ".join(s.id for s in journey.steps)
        raise ConfigError(f"journey {name!r} has no step {step!r}: its steps are {steps}")
    result = Retried(name, step)
    if not ctx.store.exists:
        return result
    ctx.store.prepare()
    m = dvc.journey_members
    later = dvc.journey_members.alias("later")
    now = ctx.clock.stamp()
    superseded = exists().where(
        later.c.journey == m.c.journey, later.c.contactid == m.c.contactid,
        later.c.entry > m.c.entry,
    )  # fmt: skip
    failed = select(m.c.member_id, m.c.step, m.c.error, superseded.label("superseded")).where(
        m.c.journey == name, m.c.status == "failed"
    )
    with ctx.store.transaction() as conn:
        _refuse_stopped(conn, name, "retry its members")
        after = 0
        while chunk := conn.execute(
            failed.where(m.c.member_id > after).order_by(m.c.member_id).limit(CHUNK)
        ).all():
            after = chunk[-1][0]
            events: list[Event] = []
            for member_id, current, error, is_superseded in chunk:
                failed_at = _failed_step(error, current)
                if step is not None and failed_at != step:
                    continue
                if is_superseded:
                    result.superseded += 1
                    continue
                undone = _undo(conn, member_id, failed_at, repend=True)
                values: dict[str, Any] = {"status": "active", "step": failed_at, "due_at": now,
                                          "left_at": None, "error": None}  # fmt: skip
                if undone.had_intents:
                    values["last_intent"] = undone.last_intent
                conn.execute(update(m).where(m.c.member_id == member_id).values(values))
                detail = {"error": _brief(error), "repended": undone.repended,
                          "dropped": undone.dropped}  # fmt: skip
                events.append((member_id, failed_at, "retried", failed_at, detail))
                result.retried += 1
                result.repended += undone.repended
                result.dropped += undone.dropped
            write_history(conn, name, now, events)
    return result


def skip(ctx: Context, name: str, contact: str) -> dict[str, Any]:
    """Move `contact`'s member of the journey past its current step; see the docstring."""
    journey = journey_named(ctx, name)
    contact = contact.strip().strip("{}").lower()
    unknown = ConfigError(f"contact {contact} is not a member of journey {name!r}")
    if not ctx.store.exists:
        raise unknown
    ctx.store.prepare()
    m = dvc.journey_members
    now = ctx.clock.now()
    with ctx.store.transaction() as conn:
        _refuse_stopped(conn, name, "skip its members")
        member = conn.execute(
            select(dvc.journey_members).where(m.c.journey == name, m.c.contactid == contact)
            .order_by(m.c.entry.desc()).limit(1)
        ).mappings().first()  # fmt: skip
        if member is None:
            raise unknown
        if member["status"] not in ("active", "failed"):
            raise ConfigError(
                f"contact {contact}'s latest entry into journey {name!r} is {member['status']}: "
                "only an active or failed member can skip a step"
            )
        definition = _definition(ctx, conn, journey, member["version"])
        current = member["step"]
        values: dict[str, Any] = {}
        if member["status"] == "failed":
            current = _failed_step(member["error"], current)
            undone = _undo(conn, member["member_id"], current, repend=False)
            values = {"status": "active", "error": None, "left_at": None}
            if undone.had_intents:
                values["last_intent"] = undone.last_intent
        # the machine's move once the step is due, with no condition holding: a timeout
        key = f"{member['contactid']}/{member['entry']}"
        move = decide(definition, Member(key, current, parse_stamp(member["arrived_at"]), now), now)
        at = stamp(now)
        if move.finish is not None:
            values.update(status=move.finish, left_at=at, step=current)
        else:
            assert move.to is not None
            calendar = Calendar(definition.business_hours, definition.schedule.zone)
            values.update(step=move.to, arrived_at=at,
                          due_at=stamp(due(definition, calendar, move.to, now)))  # fmt: skip
        conn.execute(update(m).where(m.c.member_id == member["member_id"]).values(values))
        detail = {"was": member["status"], **({"finished": move.finish} if move.finish else {})}
        write_history(conn, name, at, [(member["member_id"], current, "skipped", move.to, detail)])
    status = values.get("status", member["status"])
    return {"journey": name, "contact": contact, "member": member["member_id"],
            "from": current, "to": move.to, "status": status}  # fmt: skip


def _refuse_stopped(conn: Connection, name: str, what: str) -> None:
    state = journey_state(conn, name)
    if state is not None and state["state"] == "stopped":
        raise ConfigError(f"journey {name!r} is stopped: cannot {what}; a stopped journey "
                          "stays stopped")  # fmt: skip


def _failed_step(error: str | None, step: str | None) -> str:
    """The step a failed member failed at: its error says, else the step it is at."""
    failed_at = json.loads(error or "{}").get("step") or step
    assert failed_at is not None, "a failed member has a step"
    return str(failed_at)


def _brief(error: str | None) -> dict[str, Any]:
    """The part of an error worth keeping in the history: no message (it may quote data)."""
    parsed = json.loads(error or "{}")
    return {k: parsed.get(k) for k in ("status", "code", "request_id")}


def _definition(ctx: Context, conn: Connection, journey: Journey, version: int) -> Journey:
    """The definition of `journey` a member of `version` follows."""
    v = dvc.journey_versions.c
    text = conn.execute(
        select(v.text).where(v.journey == journey.name, v.version == version)
    ).scalar()
    if text is None or text == journey.text:
        return journey
    return load_journey(journey.path, ctx.mapping.tables, text)


def _undo(conn: Connection, member_id: int, failed_at: str, *, repend: bool) -> Cleanup:
    """Undo in the store what a failed member did from `failed_at` on: its failed intents of
    later steps are dropped (never sent: they waited on the failed one), those of `failed_at`
    and before become pending again when `repend`, and the records noted from `failed_at` on are
    forgotten, so the next run can take those steps again."""
    o, h, r = dvc.outbox.c, dvc.journey_history.c, dvc.journey_records.c
    taken = conn.execute(
        select(h.event_id, h.step).where(h.member_id == member_id, h.event.not_in(UNDONE))
        .order_by(h.event_id)
    ).all()  # fmt: skip
    starts = [event_id for event_id, step in taken if step == failed_at]
    redone = {failed_at} | {step for event_id, step in taken if starts and event_id >= starts[-1]}
    prefix = f"{JOB}/{member_id}/"  # its keys, read by a range of the unique index
    intents = conn.execute(
        select(o.intent_id, o.key, o.after, o.status)
        .where(o.key >= prefix, o.key < prefix[:-1] + "0")  # "0" follows "/"
        .order_by(o.intent_id)
    ).all()
    repended = dropped = 0
    for intent_id, key, _, status in intents:
        if status != "failed":
            continue
        step = key.split("/")[2]
        if step in redone and step != failed_at:
            conn.execute(delete(dvc.outbox).where(o.intent_id == intent_id))
            dropped += 1
        elif repend:
            conn.execute(
                update(dvc.outbox).where(o.intent_id == intent_id)
                .values(status="pending", error=None, done_at=None)
            )  # fmt: skip
            repended += 1
    at_step = [after for _, key, after, _ in intents if key.split("/")[2] == failed_at]
    conn.execute(delete(dvc.journey_records).where(r.member_id == member_id, r.step.in_(redone)))
    return Cleanup(repended, dropped, at_step[0] if at_step else None, bool(at_step))
