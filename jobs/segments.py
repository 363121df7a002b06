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
One run at a time evaluates the store's segments (the `segments` lease): another is not run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
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

from connector import tables as dvc
from connector.errors import DvconnectError
from connector.mapping import CHANNEL_OPT_OUTS, Segment
from connector.store import Store
from jobs.context import Context

log = logging.getLogger("dvconnect.segments")

JOB = "segments"
ACTIVE = 0


@dataclass(frozen=True)
class Evaluation:
    """What one evaluation of a segment found."""

    size: int
    entered: int
    exited: int
    seconds: float


def members_query(store: Store, segment: Segment, now: datetime) -> Select[Any]:
    """(contactid, lead_ids) of every member, by contact id."""
    contact = store.tables["contact"]
    conditions: list[Any] = [contact.c.statecode == ACTIVE]
    contact_filter, lead_filter = segment.condition("contact"), segment.condition("lead")
    if contact_filter is not None:
        conditions.append(contact_filter.condition(contact, now))
    if segment.channel != "any":
        opted_out = contact.c[CHANNEL_OPT_OUTS[segment.channel]]
        conditions.append(or_(opted_out.is_(None), not_(opted_out)))
    if segment.exclude is not None:
        excluded = dvc.segment_members
        conditions.append(
            ~exists().where(
                excluded.c.segment == segment.exclude, excluded.c.contactid == contact.c.contactid
            )
        )
    if lead_filter is None:
        query = select(contact.c.contactid, literal(None).label("lead_ids")).where(*conditions)
    else:
        lead = store.tables["lead"]
        parent = lead.c._parentcontactid_value
        leads = (
            select(
                parent.label("contactid"),
                func.aggregate_strings(lead.c.leadid, ",").label("lead_ids"),
            )
            .where(parent.is_not(None), lead_filter.condition(lead, now))
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


def evaluate(store: Store, segment: Segment, now: datetime) -> Evaluation:
    """Evaluate one segment and save its membership and changes, in one transaction."""
    started = time.monotonic()
    at = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    members, scratch, events = dvc.segment_members, dvc.segment_scratch, dvc.segment_events
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
            dvc.segment_evaluations.insert().values(
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


def in_order(segments: dict[str, Segment]) -> list[Segment]:
    """Every segment after the one it excludes (the mapping has refused cycles)."""
    ordered: list[Segment] = []
    placed: set[str] = set()

    def place(segment: Segment) -> None:
        if segment.name in placed:
            return
        if segment.exclude is not None:
            place(segments[segment.exclude])
        placed.add(segment.name)
        ordered.append(segment)

    for segment in segments.values():
        place(segment)
    return ordered


def run_segments(ctx: Context) -> dict[str, Any]:
    """Evaluate every valid segment; report the invalid ones and those the database refused.

    A segment whose evaluation fails — the database refuses its SQL, its relative dates fall
    outside the calendar on this run's clock — is reported and keeps its last membership.
    """
    now = ctx.clock.now()
    results: dict[str, Any] = {}
    with ctx.store.lease(JOB):  # two evaluations of a segment at once would both record changes
        for segment in in_order(ctx.mapping.segments):
            if ctx.stop.is_set():
                results["interrupted"] = True
                break
            with ctx.store.transaction() as conn:  # however long the evaluations take
                ctx.store.renew_lease(conn, JOB)
            try:
                evaluation = evaluate(ctx.store, segment, now)
            except (SQLAlchemyError, DvconnectError, RecursionError) as exc:
                reason = _reason(exc)
                log.error("segment %s not evaluated: %s", segment.name, reason)
                results[segment.name] = {"failed": 1, "error": f"{segment.path}: {reason}"}
                continue
            log.info("segment %s: %s", segment.name, evaluation,
                     extra={"segment": segment.name, **evaluation.__dict__})  # fmt: skip
            results[segment.name] = {"failed": 0, "error": None, **evaluation.__dict__}
    for file, error in ctx.mapping.segment_errors.items():
        results[file] = {"failed": 1, "error": str(error)}
    return results


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "the conditions are nested too deeply to evaluate"
    if isinstance(exc, SQLAlchemyError):
        return (str(getattr(exc, "orig", None) or exc).splitlines() or ["database error"])[0]
    return str(exc)


def plan_segments(ctx: Context) -> list[dict[str, Any]]:
    """What `run segments` would evaluate: each segment's current size, nothing saved."""
    now = ctx.clock.now()
    steps: list[dict[str, Any]] = []
    if not ctx.store.exists:
        return [{"segment": name, "would have": "members once the store is synced"}
                for name in ctx.mapping.segments]  # fmt: skip
    with ctx.store.engine.connect() as conn:
        for segment in in_order(ctx.mapping.segments):
            try:
                size = conn.execute(
                    select(func.count()).select_from(
                        members_query(ctx.store, segment, now).subquery()
                    )
                ).scalar_one()
            except (SQLAlchemyError, DvconnectError, RecursionError) as exc:
                conn.rollback()
                steps.append({"segment": segment.name, "not evaluated": _reason(exc)})
                continue
            steps.append({"segment": segment.name, "would have": f"{size} members"})
    steps.extend({"segment": f, "invalid": str(e)} for f, e in ctx.mapping.segment_errors.items())
    return steps


def preview_segment(ctx: Context, segment: Segment, sample: int) -> dict[str, Any]:
    """Size, the first `sample` members (with name and email) and the SQL; nothing saved."""
    now = ctx.clock.now()
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
    evaluations = dvc.segment_evaluations
    if not ctx.store.exists:
        return []
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


MEMBER_COLUMNS = ("contactid", "fullname", "emailaddress1", "since", "lead_ids")


def segment_members(ctx: Context, name: str) -> Iterator[dict[str, Any]]:
    """The saved members of a segment (as of its last evaluation), by contact id."""
    if not ctx.store.exists:
        return
    members = dvc.segment_members
    contact = ctx.store.tables["contact"]
    shown = [contact.c[c] if c in contact.c else literal(None).label(c)
             for c in ("fullname", "emailaddress1")]  # fmt: skip
    query = (
        select(members.c.contactid, *shown, members.c.since, members.c.lead_ids)
        .select_from(members.outerjoin(contact, contact.c.contactid == members.c.contactid))
        .where(members.c.segment == name)
        .order_by(members.c.contactid)
    )
    yield from ctx.store.stream(query)
