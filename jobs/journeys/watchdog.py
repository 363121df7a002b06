"""The journeys watchdog: what is stuck in a journey, found by a few aggregate queries.

Every `journeys` run looks at each live journey before moving its members, and `journeys show`
looks at it on demand. It reports, at an instant `now` with a grace period
(`DVCONNECT_JOURNEY_GRACE`, one hour by default):

* **overdue** members: active, and due more than the grace before `now` (per step);
* the journey's **lag**: how late its oldest due active member is (zero when none is due);
* **failed** members: how many, and the latest ones with their error (step, status, code,
  message, request id);
* **stale writes**: the journey's intents in the outbox still pending more than the grace after
  they were recorded (Dataverse unreachable, throttled for long, an action left unconfirmed).

Each figure is one aggregate query over the indexed columns, whatever the number of members:
memory does not grow with the journey. The report names members by id and contacts by id only;
the warning a run logs carries the journey's name and counts, never personal data.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, Integer, and_, case, cast, func, select

from connector import tables as dvc
from connector.clock import parse_stamp, stamp
from jobs.journeys.actions import JOB

log = logging.getLogger("dvconnect.journeys")

FAILURES_SHOWN = 20  # the latest failed members a report lists (the count is complete)


@dataclass
class Watch:
    """What the watchdog found in one journey at one instant."""

    grace_seconds: float
    overdue: int = 0
    overdue_by_step: dict[str, int] = field(default_factory=dict)
    lag_seconds: float = 0.0
    oldest_due: str | None = None
    failed: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    stale_writes: int = 0
    oldest_write: str | None = None

    @property
    def alarming(self) -> bool:
        return bool(self.overdue or self.failed or self.stale_writes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def intent_member(key: ColumnElement[str], dialect: str) -> ColumnElement[Any]:
    """The member id in a journey intent's key (`journeys/<member>/<step>/<part>`), in SQL.

    PostgreSQL refuses to cast text that is not a number, so the cast is guarded by the key's
    prefix; SQLite's cast never fails.
    """
    prefix = f"{JOB}/"
    if dialect == "postgresql":
        part = func.split_part(key, "/", 2)
        return case((key.startswith(prefix), cast(part, Integer)), else_=None)
    rest = func.substr(key, len(prefix) + 1)
    return cast(func.substr(rest, 1, func.instr(rest, "/") - 1), Integer)


def watch(conn: Connection, journey: str, now: datetime, grace: timedelta, dialect: str) -> Watch:
    """The watchdog's report on `journey` at `now`; see the module docstring."""
    m, o = dvc.journey_members.c, dvc.outbox.c
    at, cutoff = stamp(now), stamp(now - grace)
    report = Watch(grace_seconds=grace.total_seconds())
    active = and_(m.journey == journey, m.status == "active")

    late = conn.execute(
        select(m.step, func.count()).where(active, m.due_at < cutoff).group_by(m.step)
    ).all()
    report.overdue_by_step = {step: int(n) for step, n in sorted(late, key=lambda r: str(r[0]))}
    report.overdue = sum(report.overdue_by_step.values())

    oldest = conn.execute(select(func.min(m.due_at)).where(active, m.due_at <= at)).scalar()
    if oldest is not None:
        report.oldest_due = oldest
        report.lag_seconds = (now - parse_stamp(oldest)).total_seconds()

    failed = and_(m.journey == journey, m.status == "failed")
    report.failed = int(conn.execute(select(func.count()).where(failed)).scalar_one())
    latest = conn.execute(
        select(m.member_id, m.contactid, m.left_at, m.error)
        .where(failed)
        .order_by(m.member_id.desc())
        .limit(FAILURES_SHOWN)
    ).all()
    report.failures = [
        {"member": member, "contact": contact, "at": left_at, **json.loads(error or "{}")}
        for member, contact, left_at, error in latest
    ]

    member = intent_member(o.key, dialect)
    stale = conn.execute(
        select(func.count(), func.min(o.created_at))
        .select_from(dvc.outbox.join(dvc.journey_members, m.member_id == member))
        .where(o.job == JOB, o.status == "pending", o.created_at < cutoff, m.journey == journey)
    ).one()
    report.stale_writes, report.oldest_write = int(stale[0]), stale[1]
    return report


def warn(journey: str, report: Watch) -> None:
    """One warning line when something is stuck: the journey's name and counts only."""
    if not report.alarming:
        return
    steps = ", ".join(f"{n} at {step}" for step, n in report.overdue_by_step.items())
    log.warning(
        "journey %s: %d members overdue by more than %s%s (lag %s), %d failed, "
        "%d writes pending longer than that",
        journey, report.overdue, span(report.grace_seconds), f" ({steps})" if steps else "",
        span(report.lag_seconds), report.failed, report.stale_writes,
    )  # fmt: skip


def describe(report: dict[str, Any]) -> list[str]:
    """A report (as in a run's counts or `journeys show --json`) as lines for people; none when
    nothing is stuck."""
    lines = []
    grace = span(report["grace_seconds"])
    if report["overdue"]:
        steps = ", ".join(f"{n:,} at {step}" for step, n in report["overdue_by_step"].items())
        lines.append(f"overdue by more than {grace}: {report['overdue']:,} members ({steps})")
    if report["lag_seconds"] > 0:
        lines.append(f"lag: {span(report['lag_seconds'])} (oldest due {report['oldest_due']})")
    if report["failed"]:
        lines.append(f"failed: {report['failed']:,} members (`dvconnect journeys retry` or `skip`)")
    if report["stale_writes"]:
        lines.append(f"writes pending longer than {grace}: {report['stale_writes']:,} "
                     f"(oldest recorded {report['oldest_write']})")  # fmt: skip
    return lines


def span(seconds: float) -> str:
    """A duration for people: seconds, minutes, hours or days."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
