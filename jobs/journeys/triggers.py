"""Admission by trigger: which changes the sync recorded admit whom into a journey.

A journey with `trigger:` is entered on the changes recorded in `dvc_changes` — by the sync
(`connector.changes`): a lead or contact created, a watched column changed (to a value); by the
scoring job: a lead became sales-ready in a model — that match
its trigger and were seen while it was live and inside its window. Each change is decided once
per journey, in the transaction that admits its member (`dvc_change_uses`), so a crash never
admits twice nor loses one:

* `entered` — on `lead`, the lead's parent contact enters with that lead as the member's own
  (goal and exit conditions on `lead` look at it, so qualifying it ends only this instance); on
  `contact`, the contact enters with its most recent open lead, if any;
* `filtered` — the record, as the store holds it now, does not meet the trigger's `filter`;
* `gone` — the record is no longer in the store;
* `in` — the lead (on `contact`: the contact) has an active member in the journey already, or
  another change of this run admitted it;
* `again` / `too-soon` — it was in the journey before and `re_entry` is `never`, or its
  `after` has not passed since it left;
* `excluded` — the contact is in one of `audience.exclude`.

A lead without a parent contact (an orphan, or one whose contact the store does not hold yet)
is not decided: its change waits, and admits once `link-orphans` has linked it and a sync has
read the link back. Entry and re-entry are counted per lead on `lead` (a contact may be in a
journey several times, once per lead), per contact on `contact`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Select,
    and_,
    case,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
    true,
)

from connector import tables as dvc
from connector.changes import encode
from connector.clock import stamp
from connector.mapping.journeys import Journey, TableTrigger
from connector.store import Store

ACTIVE = "active"
READY = "ready"  # a dvc_changes kind: a lead became sales-ready in the model `column_name` names


@dataclass(frozen=True)
class Decision:
    """What a journey does with one change: `outcome` (see the module docstring), and for
    `entered` who enters, with which lead and entry number."""

    change_id: int
    outcome: str  # entered, filtered, gone, in, again, too-soon, excluded, or waiting
    contactid: str | None = None
    leadid: str | None = None
    entry: int = 0
    record_id: str = ""


def changes_since(journey: Journey, state: dict[str, Any]) -> str:
    """From when a journey (its `dvc_journeys` row) is entered on changes: its start, or its
    window's opening if later."""
    return max(state["started_at"] or "", stamp(journey.schedule.starts))


def pending(journey: Journey, table: str, part: TableTrigger, since: str) -> Select[Any]:
    """The changes of `table` matching `part`, seen since `since`, this journey has not
    decided yet, in the order they were seen (page on `change_id`)."""
    c = dvc.changes.c
    query = select(c.change_id, c.record_id).where(*_pending(journey, table, part, since))
    return query.order_by(c.change_id)


def _pending(journey: Journey, table: str, part: TableTrigger, since: str) -> list[Any]:
    c, u = dvc.changes.c, dvc.change_uses.c
    kind = "created" if part.created else "changed" if part.changed else READY
    conditions = [
        c.table_name == table,
        c.kind == kind,
        c.at >= since,
        c.at < stamp(journey.schedule.ends),  # after it, the journey admits nobody
        ~exists().where(u.journey == journey.name, u.change_id == c.change_id),
    ]
    if part.changed is not None:
        conditions.append(c.column_name == part.changed)
    if part.sales_ready is not None:
        conditions.append(c.column_name == part.sales_ready)
    if part.has_to:
        value = encode(part.to)
        # never NULL (a change to empty against a value): `prune` negates these conditions
        conditions.append(
            c.new_value.is_(None)
            if value is None
            else and_(c.new_value.is_not(None), c.new_value == value)
        )
    return conditions


def prune(conn: Connection, holding: Iterable[tuple[Journey, dict[str, Any]]], before: str) -> int:
    """Delete the changes seen before `before` that no journey will decide, with what journeys
    decided about them; returns how many. `holding`: every journey that may still decide one —
    live or paused, with its `dvc_journeys` row. Kept: the changes one of them has not decided
    yet and would (its trigger matches, seen in its window since it started), waiting ones
    included; the others — decided by every such journey, matching none, seen outside its
    window or before it started, or only wanted by drafts and stopped journeys — go, since
    neither a run nor a later start would read them (a journey started later is entered on
    changes seen after its start). A journey's trigger or window edited later no longer
    reaches the changes pruned before."""
    c, u = dvc.changes, dvc.change_uses
    keep = [
        and_(*_pending(journey, table, part, changes_since(journey, state)))
        for journey, state in holding
        if journey.trigger is not None
        for table, part in journey.trigger.tables()
    ]
    old = c.c.at < before
    pruned = int(conn.execute(delete(c).where(old, ~or_(*keep) if keep else true())).rowcount)
    if pruned:
        conn.execute(delete(u).where(~exists().where(c.c.change_id == u.c.change_id)))
    return pruned


def decide(
    conn: Connection, store: Store, journey: Journey, table: str, part: TableTrigger,
    changes: Sequence[Any], now: datetime,
) -> list[Decision]:  # fmt: skip
    """Decide a chunk of pending changes (`change_id`, `record_id`), in their order."""
    records = _records(conn, store, table, part, {row[1] for row in changes}, now)
    contacts = {r["contactid"] for r in records.values() if r["contactid"]}
    excluded = _excluded(conn, journey, contacts)
    keys = {r["key"] for r in records.values() if r["key"]}
    history = _history(conn, journey, "leadid" if table == "lead" else "contactid", keys)
    entries = _last_entries(conn, journey, contacts)
    cutoff = _cutoff(journey, now)
    decided: list[Decision] = []
    admitted: set[str] = set()
    for change_id, record_id in changes:
        record = records.get(record_id)
        if record is None:
            decided.append(Decision(change_id, "gone", record_id=record_id))
            continue
        contact, lead, key = record["contactid"], record["leadid"], record["key"]
        if not record["matches"]:
            outcome = "filtered"
        elif contact is None:
            outcome = "waiting"
        elif contact in excluded:
            outcome = "excluded"
        elif key in admitted or history.get(key, {}).get("active"):
            outcome = "in"
        elif key in history and cutoff is None:
            outcome = "again"
        elif key in history and (history[key]["left"] or "") > (cutoff or ""):
            outcome = "too-soon"
        else:
            entries[contact] = entries.get(contact, 0) + 1
            admitted.add(key)
            decided.append(Decision(change_id, "entered", contact, lead, entries[contact],
                                    record_id))  # fmt: skip
            continue
        decided.append(Decision(change_id, outcome, contact, lead, record_id=record_id))
    return decided


def _records(
    conn: Connection, store: Store, table: str, part: TableTrigger, ids: set[str], now: datetime
) -> dict[str, dict[str, Any]]:
    """The changed records as the store holds them: their contact (one the store holds), their
    lead, the key entry is counted by, and whether the trigger's filter holds."""
    stored, contact = store.tables[table], store.tables["contact"]
    matches = (
        case((part.compiled.condition(stored, now), 1), else_=0)
        if part.compiled is not None
        else literal(1)
    )
    if table == "lead":
        key = stored.c.leadid
        query = select(
            key.label("record"), contact.c.contactid, key.label("lead"), matches
        ).outerjoin(contact, contact.c.contactid == stored.c._parentcontactid_value)
    else:
        key = stored.c.contactid
        query = select(
            key.label("record"), key.label("contact"), _best_lead(store, stored), matches
        )
    rows = conn.execute(query.where(key.in_(sorted(ids)))).all()
    return {
        record: {"contactid": contactid, "leadid": leadid, "matches": bool(matched),
                 "key": leadid if table == "lead" else contactid}
        for record, contactid, leadid, matched in rows
    }  # fmt: skip


def _best_lead(store: Store, contact: Any) -> Any:
    """A contact's most recent open lead (else its most recent lead), as a scalar subquery."""
    if "lead" not in store.tables:
        return literal(None)
    lead = store.tables["lead"]
    closed_last = case((lead.c.statecode == 0, 0), else_=1)
    return (
        select(lead.c.leadid)
        .where(lead.c._parentcontactid_value == contact.c.contactid)
        .order_by(closed_last, lead.c.createdon.desc(), lead.c.leadid.desc())
        .limit(1)
        .scalar_subquery()
    )


def _excluded(conn: Connection, journey: Journey, contacts: set[str]) -> set[str]:
    if not journey.excluded or not contacts:
        return set()
    s = dvc.segment_members.c
    query = select(s.contactid).where(
        s.segment.in_(journey.excluded), s.contactid.in_(sorted(contacts))
    )
    return set(conn.execute(query).scalars())


def _history(
    conn: Connection, journey: Journey, column: str, keys: set[str]
) -> dict[str, dict[str, Any]]:
    """Per lead (or contact), whether it has an active member and when its last one left."""
    if not keys:
        return {}
    m = dvc.journey_members.c
    key = m[column]
    active = func.max(case((m.status == ACTIVE, 1), else_=0))
    query = (
        select(key, active, func.max(m.left_at))
        .where(m.journey == journey.name, key.in_(sorted(keys)))
        .group_by(key)
    )
    return {row[0]: {"active": bool(row[1]), "left": row[2]} for row in conn.execute(query)}


def _last_entries(conn: Connection, journey: Journey, contacts: set[str]) -> dict[str, int]:
    """Each contact's last entry number in the journey (a new member takes the next)."""
    if not contacts:
        return {}
    m = dvc.journey_members.c
    query = (
        select(m.contactid, func.max(m.entry))
        .where(m.journey == journey.name, m.contactid.in_(sorted(contacts)))
        .group_by(m.contactid)
    )
    return {contact: int(last) for contact, last in conn.execute(query)}


def _cutoff(journey: Journey, now: datetime) -> str | None:
    """Who left before this instant may enter again; None: nobody (`re_entry: never`)."""
    if journey.re_entry == "never":
        return None
    wait = journey.re_entry.after
    return stamp(now - (wait.calendar if wait.calendar is not None else wait.longest()))
