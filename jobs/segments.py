"""`segments`: evaluate every segment against the store, save membership and what changed.

A segment's members are active contacts that match its `contact` condition and, when it has a
`lead` condition, have at least one matching lead (the parent contact of the lead); contacts
that opted out of the segment's channel (`donotemail`, `donotphone`) and members of its
exclusion segment are left out, and `limit` keeps the first contacts by id. Conditions are
compiled to SQL once (`connector.filters`), so an evaluation costs no API call.

Each segment is evaluated in one transaction: the result goes to a scratch table, is compared
with the saved membership (who entered, who exited, with the time), and replaces it; the
evaluation's size and changes are kept for `segments history`. A segment that fails — invalid
in its file, or refused by the database — is reported and keeps its last good membership; the
others are evaluated all the same. Excluded segments are evaluated before those excluding them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Select,
    delete,
    exists,
    func,
    literal,
    not_,
    or_,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from connector.mapping import CHANNEL_OPT_OUTS, SegmentMapping
from connector.store import Store
from jobs.context import Context

log = logging.getLogger("dvconnect.segments")

ACTIVE = 0


@dataclass(frozen=True)
class Evaluation:
    """What one evaluation of a segment found."""

    size: int
    entered: int
    exited: int
    seconds: float


def members_query(store: Store, segment: SegmentMapping, now: datetime) -> Select[Any]:
    """(contactid, lead_ids) of every member, by contact id."""
    contact = store.tables["contact"]
    conditions: list[Any] = [contact.c.statecode == ACTIVE]
    if segment.contact is not None:
        conditions.append(segment.contact.condition(contact, now))
    if segment.channel != "any":
        opted_out = contact.c[CHANNEL_OPT_OUTS[segment.channel]]
        conditions.append(or_(opted_out.is_(None), not_(opted_out)))
    if segment.exclude is not None:
        excluded = store.segment_members
        conditions.append(
            ~exists().where(
                excluded.c.segment == segment.exclude, excluded.c.contactid == contact.c.contactid
            )
        )
    if segment.lead is None:
        query = select(contact.c.contactid, literal(None).label("lead_ids")).where(*conditions)
    else:
        lead = store.tables["lead"]
        parent = lead.c._parentcontactid_value
        leads = (
            select(
                parent.label("contactid"),
                func.aggregate_strings(lead.c.leadid, ",").label("lead_ids"),
            )
            .where(parent.is_not(None), segment.lead.condition(lead, now))
            .group_by(parent)
            .subquery()
        )
        query = (
            select(contact.c.contactid, leads.c.lead_ids)
            .select_from(contact.join(leads, leads.c.contactid == contact.c.contactid))
            .where(*conditions)
        )
    query = query.order_by(contact.c.contactid)
    return query.limit(segment.limit) if segment.limit is not None else query


def evaluate(store: Store, segment: SegmentMapping, now: datetime) -> Evaluation:
    """Evaluate one segment and save its membership and changes, in one transaction."""
    started = time.monotonic()
    at = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    members, scratch, events = store.segment_members, store.segment_scratch, store.segment_events
    mine = members.c.segment == segment.name
    with store.transaction() as conn:
        conn.execute(delete(scratch).where(scratch.c.segment == segment.name))
        result = members_query(store, segment, now).subquery()
        conn.execute(
            scratch.insert().from_select(
                ["segment", "contactid", "lead_ids"],
                select(literal(segment.name), result.c.contactid, result.c.lead_ids),
            )
        )
        new = scratch.c.segment == segment.name
        in_new = exists().where(new, scratch.c.contactid == members.c.contactid)
        in_old = exists().where(mine, members.c.contactid == scratch.c.contactid)
        exited = _record(
            conn,
            events,
            segment.name,
            "exited",
            at,
            select(members.c.contactid).where(mine, ~in_new),
        )
        entered = _record(
            conn,
            events,
            segment.name,
            "entered",
            at,
            select(scratch.c.contactid).where(new, ~in_old),
        )
        conn.execute(delete(members).where(mine, ~in_new))
        conn.execute(
            update(members)
            .where(mine)
            .values(
                lead_ids=select(scratch.c.lead_ids)
                .where(new, scratch.c.contactid == members.c.contactid)
                .scalar_subquery()
            )
        )
        conn.execute(
            members.insert().from_select(
                ["segment", "contactid", "lead_ids", "since"],
                select(
                    literal(segment.name), scratch.c.contactid, scratch.c.lead_ids, literal(at)
                ).where(new, ~in_old),
            )
        )
        size = int(conn.execute(select(func.count()).where(new)).scalar_one())
        conn.execute(delete(scratch).where(new))
        seconds = round(time.monotonic() - started, 3)
        conn.execute(
            store.segment_evaluations.insert().values(
                segment=segment.name, evaluated_at=at, size=size, entered=entered, exited=exited,
                seconds=seconds,
            )
        )  # fmt: skip
    return Evaluation(size, entered, exited, seconds)


def _record(
    conn: Connection, events: Any, segment: str, event: str, at: str, who: Select[Any]
) -> int:
    """Record `event` for every contact `who` selects; returns how many."""
    rows = who.subquery()
    conn.execute(
        events.insert().from_select(
            ["segment", "contactid", "event", "at"],
            select(literal(segment), rows.c.contactid, literal(event), literal(at)),
        )
    )
    # counted, not read from rowcount: drivers do not all report it for INSERT … SELECT
    return int(conn.execute(select(func.count()).select_from(rows)).scalar_one())


def in_order(segments: dict[str, SegmentMapping]) -> list[SegmentMapping]:
    """Every segment after the one it excludes (the mapping has refused cycles)."""
    ordered: list[SegmentMapping] = []
    placed: set[str] = set()

    def place(segment: SegmentMapping) -> None:
        if segment.name in placed:
            return
        if segment.exclude is not None:
            place(segments[segment.exclude])
        placed.add(segment.name)
        ordered.append(segment)

    for segment in segments.values():
        place(segment)
    return ordered


def run_segments(ctx: Context, now: datetime | None = None) -> dict[str, Any]:
    """Evaluate every valid segment; report the invalid ones and those the database refused."""
    now = now or datetime.now(UTC)
    results: dict[str, Any] = {}
    for segment in in_order(ctx.mapping.segments):
        if ctx.stop.is_set():
            results["interrupted"] = True
            break
        try:
            evaluation = evaluate(ctx.store, segment, now)
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", exc)).splitlines()[0]
            log.error("segment %s not evaluated: %s", segment.name, reason)
            results[segment.name] = {"failed": 1, "error": reason}
            continue
        log.info("segment %s: %s", segment.name, evaluation)
        results[segment.name] = {"failed": 0, "error": None, **evaluation.__dict__}
    for file, error in ctx.mapping.segment_errors.items():
        results[file] = {"failed": 1, "error": str(error)}
    return results


def plan_segments(ctx: Context) -> list[dict[str, Any]]:
    """What `run segments` would evaluate: each segment's current size, nothing saved."""
    now = datetime.now(UTC)
    steps: list[dict[str, Any]] = []
    with ctx.store.engine.connect() as conn:
        for segment in in_order(ctx.mapping.segments):
            size = conn.execute(
                select(func.count()).select_from(members_query(ctx.store, segment, now).subquery())
            ).scalar_one()
            steps.append({"segment": segment.name, "would have": f"{size} members"})
    steps.extend({"segment": f, "invalid": str(e)} for f, e in ctx.mapping.segment_errors.items())
    return steps


def preview_segment(ctx: Context, segment: SegmentMapping, sample: int) -> dict[str, Any]:
    """Size, the first `sample` members (with name and email) and the SQL; nothing saved."""
    now = datetime.now(UTC)
    started = time.monotonic()
    query = members_query(ctx.store, segment, now)
    found = query.subquery()
    contact = ctx.store.tables["contact"]
    shown = [c for c in ("fullname", "emailaddress1") if c in contact.c]
    with ctx.store.engine.connect() as conn:
        size = int(conn.execute(select(func.count()).select_from(found)).scalar_one())
        rows = conn.execute(
            select(found.c.contactid, *(contact.c[c] for c in shown), found.c.lead_ids)
            .select_from(found.join(contact, contact.c.contactid == found.c.contactid))
            .order_by(found.c.contactid)
            .limit(sample)
        ).mappings()
        members = [
            {**{k: v for k, v in row.items() if k != "lead_ids"},
             "leads": len(row["lead_ids"].split(",")) if row["lead_ids"] else 0}
            for row in rows
        ]  # fmt: skip
    sql = str(query.compile(ctx.store.engine, compile_kwargs={"literal_binds": True}))
    seconds = round(time.monotonic() - started, 3)
    return {
        "segment": segment.name,
        "size": size,
        "sample": members,
        "sql": sql,
        "seconds": seconds,
    }


def segment_history(ctx: Context, name: str, limit: int) -> list[dict[str, Any]]:
    """The latest `limit` evaluations of a segment, latest first."""
    evaluations = ctx.store.segment_evaluations
    with ctx.store.engine.connect() as conn:
        rows = conn.execute(
            select(evaluations)
            .where(evaluations.c.segment == name)
            .order_by(evaluations.c.evaluation_id.desc())
            .limit(limit)
        ).mappings()
        return [{k: v for k, v in row.items() if k != "segment"} for row in rows]


def last_evaluation(ctx: Context, name: str) -> dict[str, Any] | None:
    """The latest evaluation of a segment, or None before the first."""
    history = segment_history(ctx, name, limit=1)
    return history[0] if history else None
