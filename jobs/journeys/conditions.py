"""A journey's conditions as SQL over its members, so they are evaluated set-wise.

Each part of a condition becomes an `EXISTS` correlated to a row of `dvc_journey_members`:
its contact (`contact`), its lead (`lead`), the activity a step of the journey created for
this entry (`email`, `phonecall`, `task`, `appointment`, found through `dvc_journey_records`),
membership of a segment (`in_segment`, `not_in_segment`). All parts must hold; `any` and `all`
combine. One query then decides a step for every member waiting there, however many.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, not_, or_, select, true

from connector import tables as dvc
from connector.mapping.journeys import ACTIVITIES, Condition
from connector.store import Store

Members = Any  # dvc_journey_members, or an alias of it


def condition_sql(
    store: Store, members: Members, condition: Condition, now: datetime
) -> ColumnElement[bool]:
    """The condition as SQL over one row of `members`, relative dates resolved at `now`."""
    parts: list[ColumnElement[bool]] = []
    contact_filter = condition.compiled("contact")
    if contact_filter is not None:
        contact = store.tables["contact"]
        parts.append(
            exists().where(
                contact.c.contactid == members.c.contactid,
                contact_filter.condition(contact, now),
            )
        )
    lead_filter = condition.compiled("lead")
    if lead_filter is not None:
        lead = store.tables["lead"]
        parts.append(
            exists().where(lead.c.leadid == members.c.leadid, lead_filter.condition(lead, now))
        )
    for kind in ACTIVITIES:
        part = getattr(condition, kind)
        if part is None:
            continue
        activity, records = store.tables[kind], dvc.journey_records
        key = activity.c[store.mapping.tables[kind].primary_key]
        parts.append(
            exists().where(
                records.c.member_id == members.c.member_id,
                records.c.step == part.step,
                key == records.c.record_id,
                part.compiled.condition(activity, now),
            )
        )
    segment = dvc.segment_members
    if condition.in_segment is not None:
        parts.append(_in(segment, condition.in_segment, members))
    if condition.not_in_segment is not None:
        parts.append(not_(_in(segment, condition.not_in_segment, members)))
    if condition.any:
        parts.append(or_(*(condition_sql(store, members, c, now) for c in condition.any)))
    if condition.all:
        parts.append(and_(*(condition_sql(store, members, c, now) for c in condition.all)))
    return and_(true(), *parts)


def _in(segment: Any, name: str, members: Members) -> ColumnElement[bool]:
    return exists(
        select(segment.c.contactid).where(
            segment.c.segment == name, segment.c.contactid == members.c.contactid
        )
    )
