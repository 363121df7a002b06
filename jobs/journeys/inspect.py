"""What `journeys list`, `show` and `explain` print: journeys, their members, one member's path.

Read-only: these read `dvc_journeys`, `dvc_journey_members`, `dvc_journey_history`,
`dvc_journey_records` and (for the watchdog in `show`) `dvc_outbox`, never Dataverse, and
change nothing.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, select

from connector import tables as dvc
from connector.mapping import named
from connector.mapping.journeys import Journey
from jobs.context import Context
from jobs.journeys.watchdog import watch


def _state(ctx: Context, name: str) -> dict[str, Any]:
    if not ctx.store.exists:
        return {"state": "draft", "version": None}
    with ctx.store.engine.connect() as conn:
        row = conn.execute(select(dvc.journeys).where(dvc.journeys.c.journey == name)).mappings()
        found = row.first()
    return dict(found) if found else {"state": "draft", "version": None}


def journey_list(ctx: Context) -> list[dict[str, Any]]:
    """Every journey of the mappings: its state and its members by status."""
    listed = []
    for name, journey in ctx.mapping.journeys.items():
        state = _state(ctx, name)
        listed.append({
            "journey": name, "state": state["state"], "version": state.get("version"),
            "segment": journey.segment, "trigger": _trigger(journey),
            "members": _statuses(ctx, name),
        })  # fmt: skip
    for file, error in ctx.mapping.journey_errors.items():
        listed.append({"journey": file, "state": "invalid", "error": str(error)})
    return listed


def _trigger(journey: Journey) -> str | None:
    """A journey's trigger in words: `lead created`, `lead statecode changed to 1`."""
    if journey.trigger is None:
        return None
    parts = []
    for table, part in journey.trigger.tables():
        what = "created" if part.created else f"{part.changed} changed"
        if part.has_to:
            what += f" to {part.to!r}"
        parts.append(f"{table} {what}" + (f" where {part.filter}" if part.filter else ""))
    return "; ".join(parts)


def _statuses(ctx: Context, name: str) -> dict[str, int]:
    if not ctx.store.exists:
        return {}
    m = dvc.journey_members.c
    with ctx.store.engine.connect() as conn:
        rows = conn.execute(
            select(m.status, func.count()).where(m.journey == name).group_by(m.status)
        ).all()
    return {status: int(count) for status, count in rows}


def journey_show(ctx: Context, name: str) -> dict[str, Any]:
    """A journey's state, its active members per step, those who left, by how, and what the
    watchdog finds stuck now."""
    journey = journey_named(ctx, name)
    state = _state(ctx, name)
    per_step: dict[str, int] = {step.id: 0 for step in journey.steps}
    failures: list[dict[str, Any]] = []
    stuck: dict[str, Any] | None = None
    if ctx.store.exists:
        m = dvc.journey_members.c
        with ctx.store.engine.connect() as conn:
            rows = conn.execute(
                select(m.step, func.count())
                .where(m.journey == name, m.status == "active")
                .group_by(m.step)
            ).all()
            per_step.update({step: int(count) for step, count in rows})
            failed = conn.execute(
                select(m.member_id, m.contactid, m.error)
                .where(m.journey == name, m.status == "failed")
                .order_by(m.member_id)
                .limit(50)
            ).all()
            stuck = watch(conn, name, ctx.clock.now(), ctx.settings.journey_grace,
                          ctx.store.engine.dialect.name).as_dict()  # fmt: skip
        failures = [{"member": i, "contact": c, **json.loads(e or "{}")} for i, c, e in failed]
    return {
        "journey": name, "state": state["state"], "version": state.get("version"),
        "paused_at": state.get("paused_at"), "stopped_at": state.get("stopped_at"),
        "active": per_step, "members": _statuses(ctx, name), "failures": failures,
        "watchdog": stuck,
    }  # fmt: skip


def explain(ctx: Context, name: str, contact: str) -> list[dict[str, Any]]:
    """Each entry of a contact into a journey: every step it took, with what decided it."""
    journey_named(ctx, name)
    if not ctx.store.exists:
        return []
    m, h, r = dvc.journey_members.c, dvc.journey_history.c, dvc.journey_records.c
    contact = contact.strip().strip("{}").lower()
    entries = []
    with ctx.store.engine.connect() as conn:
        members = conn.execute(
            select(dvc.journey_members).where(m.journey == name, m.contactid == contact)
            .order_by(m.entry)
        ).mappings().all()  # fmt: skip
        for member in members:
            events = conn.execute(
                select(h.at, h.step, h.event, h.to_step, h.detail)
                .where(h.member_id == member["member_id"])
                .order_by(h.event_id)
            ).mappings().all()  # fmt: skip
            records = conn.execute(
                select(r.step, r.table_name, r.record_id).where(r.member_id == member["member_id"])
            ).mappings().all()  # fmt: skip
            entries.append({
                "entry": member["entry"], "version": member["version"],
                "lead": member["leadid"], "status": member["status"], "step": member["step"],
                "due_at": member["due_at"], "error": json.loads(member["error"] or "null"),
                "path": [{**e, "detail": json.loads(e["detail"] or "null")} for e in events],
                "records": [dict(row) for row in records],
            })  # fmt: skip
    return entries


def journey_named(ctx: Context, name: str) -> Journey:
    return named("journey", name, ctx.mapping.journeys, ctx.mapping.journey_errors)
