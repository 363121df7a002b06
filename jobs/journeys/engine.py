"""The `journeys` job: admit members, decide their steps set-wise, write through the outbox.

For each live journey, in one run at the run's clock:

1. members who reached the journey's `goal` leave as converted, those who meet its `exit` as
   exited (one query per condition, for every member at once);
2. segment members enter by the entry rules (`once`, `dynamic` with `re_entry`, `repeating`),
   inside the schedule's window, each at the first step of the current version; with a
   `trigger`, so do the leads and contacts of the changes the sync saw (`triggers`), each
   change decided once, in the transaction of its admission;
3. step by step, the members due there (and, at an `if`, those whose condition now holds —
   one query per step) go through the state machine, `CHUNK` at a time; an action's writes
   become outbox intents committed in the same transaction as the member's new step and its
   history, so a crash never loses a member nor writes twice; immediate steps follow each other
   in the same run, wave after wave, until nobody moves;
4. the outbox drains: bulk messages where the table supports them, `$batch` otherwise; a write
   Dataverse refuses fails its member (step, status, code, request id), never the others.

Before a journey's run, its watchdog (`jobs.journeys.watchdog`) reports members overdue, failed
members, writes pending too long and the journey's lag, in the run's counts and a warning.

On PostgreSQL several instances run the job together and share its work (`run_journeys`):
admission and goal/exit by one instance per journey, the members due at a step claimed a chunk
at a time with `FOR UPDATE SKIP LOCKED`, one outbox drain at a time.

Members keep the version they entered with: a changed journey file is a new version for new
entrants. A draft journey never writes; `journeys start` makes it live, `journeys stop` ends it.

The dry run drives the same code inside one transaction that is rolled back: it lists every
record the run would write, with its deterministic id, and sends nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from datetime import time as dtime
from typing import Any, Protocol

from sqlalchemy import (
    Connection,
    Select,
    and_,
    bindparam,
    case,
    exists,
    func,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from connector import tables as dvc
from connector.clock import parse_stamp, stamp
from connector.errors import DvconnectError, MappingError
from connector.mapping.journeys import Journey, RoundRobin, Step, load_journey
from connector.outbox import Intent, Outbox, Outcome, record
from connector.store import lock_key
from jobs.context import Context
from jobs.journeys import triggers
from jobs.journeys.actions import (
    JOB,
    ActionProblem,
    Owner,
    Target,
    act,
    owner_for,
)
from jobs.journeys.calendar import Calendar
from jobs.journeys.conditions import condition_sql
from jobs.journeys.lifecycle import journey_state
from jobs.journeys.machine import Member, Move, decide, due
from jobs.journeys.templates import TemplateProblem
from jobs.journeys.watchdog import warn, watch

log = logging.getLogger("dvconnect.journeys")

CHUNK = 1000  # members per transaction
PRUNED_CHANGES = "pruned_changes"  # in the job's counts: recorded changes no journey will decide
# Decided changes are kept this long with their decisions (`dvc_change_uses`: why a record did
# or did not enter) for who wants to ask, then pruned.
KEEP_DECIDED = timedelta(days=7)
MAX_WAVES = 200  # immediate steps in a row a run follows (validation refuses loops without waits)
CAPPED = ("phonecall", "task", "appointment")  # what per_owner_per_day counts: a rep's work
ACTIVE = "active"


class Simulation(Protocol):
    """What the plan gives a run on its simulated clock: the if-steps whose conditions it
    assumes, the instant of its previous run, and an eye on what the run writes."""

    assume: dict[str, int]  # if-step id: the percentage of members for whom it holds
    previous: str | None  # the previous simulated run's instant

    def holds(self, journey: Journey, member: Member, step: Step) -> bool: ...

    def observe(self, kind: str, detail: dict[str, Any]) -> None: ...


@dataclass
class JourneyCounts:
    """What one run did with one journey."""

    state: str = "live"
    entered: int = 0
    triggered: int = 0  # of those entered: by a trigger
    waiting: int = 0  # triggering changes of leads without a contact yet (see triggers)
    moved: int = 0
    acted: int = 0
    capped: int = 0
    deferred: int = 0  # members kept out today by caps.entries_per_day
    converted: int = 0
    exited: int = 0
    completed: int = 0
    stopped: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: list[dict[str, Any]] = field(default_factory=list)
    writes: list[dict[str, Any]] = field(default_factory=list)  # the dry run's listing
    watchdog: dict[str, Any] = field(default_factory=dict)  # what was stuck as the run began


class Sink:
    """Where the engine reads and writes: the store (a transaction per chunk), or for a dry run
    one transaction that is never committed."""

    def __init__(self, ctx: Context, dry: bool) -> None:
        self.ctx = ctx
        self.dry = dry
        self._conn: Connection | None = None

    @contextmanager
    def session(self) -> Iterator[Sink]:
        if not self.dry:
            yield self
            return
        with self.ctx.store.rolled_back() as conn:
            self._conn = conn
            try:
                yield self
            finally:
                self._conn = None

    @contextmanager
    def write(self) -> Iterator[Connection]:
        if self._conn is not None:
            yield self._conn
            return
        with self.ctx.store.transaction() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        if self._conn is not None:
            yield self._conn
            return
        with self.ctx.store.engine.connect() as conn:
            yield conn


def versions(ctx: Context, conn: Connection, journey: Journey) -> tuple[int, dict[int, Journey]]:
    """The version new entrants take (a new one when the file changed) and every version's
    definition, parsed from its stored text."""
    v = dvc.journey_versions.c
    rows = conn.execute(
        select(v.version, v.text).where(v.journey == journey.name).order_by(v.version)
    ).all()
    definitions: dict[int, Journey] = {}
    for number, text in rows:
        if text == journey.text:
            definitions[number] = journey
            continue
        try:
            definitions[number] = load_journey(journey.path, ctx.mapping.tables, text)
        except MappingError as exc:
            log.error("%s version %d no longer loads: %s", journey.name, number, exc)
    current = next((n for n, text in reversed(rows) if text == journey.text), None)
    if current is None:
        current = (rows[-1][0] if rows else 0) + 1
        conn.execute(
            dvc.journey_versions.insert().values(
                journey=journey.name, version=current, text=journey.text,
                created_at=ctx.clock.stamp(),
            )
        )  # fmt: skip
        conn.execute(
            update(dvc.journeys)
            .where(dvc.journeys.c.journey == journey.name)
            .values(version=current)
        )
        definitions[current] = journey
    return current, definitions


def insert_members(conn: Connection, journey: str, rows: list[dict[str, Any]]) -> list[int]:
    """Insert entering members; their ids in the order of `rows`. One statement for all, then
    one read of the ids by (contact, entry): an INSERT … RETURNING in parameter order would be
    executed row by row."""
    m = dvc.journey_members
    conn.execute(m.insert(), rows)
    found = conn.execute(
        select(m.c.contactid, m.c.entry, m.c.member_id).where(
            m.c.journey == journey, m.c.contactid.in_({row["contactid"] for row in rows})
        )
    ).all()
    ids = {(contact, entry): member_id for contact, entry, member_id in found}
    return [ids[(row["contactid"], row["entry"])] for row in rows]


Event = tuple[int, str | None, str, str | None, dict[str, Any] | None]  # member, step, event, to


def write_history(conn: Connection, journey: str, at: str, events: list[Event]) -> None:
    """Members' events at `at`, with the values that decided them (`detail`)."""
    if not events:
        return
    conn.execute(
        dvc.journey_history.insert(),
        [
            {"member_id": member_id, "journey": journey, "at": at, "step": step, "event": event,
             "to_step": to,
             "detail": json.dumps(detail, sort_keys=True, default=str) if detail else None}
            for member_id, step, event, to, detail in events
        ],
    )  # fmt: skip


@dataclass
class ChunkWrites:
    """What one chunk of members changes, written together when the chunk is decided."""

    members: dict[int, dict[str, Any]] = field(default_factory=dict)  # member id: new values
    intents: list[Intent] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)  # dvc_journey_records rows
    history: list[Event] = field(default_factory=list)

    def member(self, member_id: int, **values: Any) -> None:
        self.members.setdefault(member_id, {}).update(values)

    def flush(self, conn: Connection, journey: str, at: str, run_id: int | None,
              dry: bool) -> None:  # fmt: skip
        """Write the chunk's changes; a dry sink (rolled back, never drained, never explained)
        keeps the members' states and records, which later decisions read, and skips the
        outbox intents and the history, which only the sending and `explain` read."""
        m = dvc.journey_members
        by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for member_id, values in self.members.items():
            columns = tuple(sorted(values))
            by_columns.setdefault(columns, []).append(
                {"member": member_id, **{f"new_{c}": v for c, v in values.items()}}
            )
        for columns, params in by_columns.items():
            statement = (
                update(m)
                .where(m.c.member_id == bindparam("member"))
                .values({c: bindparam(f"new_{c}") for c in columns})
            )
            conn.execute(statement, params)
        if self.records:
            conn.execute(dvc.journey_records.insert(), self.records)
        if not dry:
            record(conn, self.intents, now=at, run_id=run_id)
            write_history(conn, journey, at, self.history)


class JourneyRun:
    """One run of one journey at `now`."""

    def __init__(
        self, ctx: Context, journey: Journey, sink: Sink, now: datetime,
        simulation: Simulation | None = None,
    ) -> None:  # fmt: skip
        self.ctx = ctx
        # several instances share the members' decisions: each chunk is claimed, rows locked
        self.claims = ctx.store.coordinated and not sink.dry
        # members due at a step decided per transaction
        self.chunk = ctx.settings.journey_chunk or CHUNK
        self.journey = journey
        self.sink = sink
        self.now = now
        self.at = stamp(now)
        self.simulation = simulation
        self.counts = JourneyCounts()
        self.calendar = Calendar(journey.business_hours, journey.schedule.zone)
        self._caps: Counter[tuple[str, str]] = Counter()
        self._caps_loaded: set[tuple[str, str]] = set()
        self.halted = False  # paused or stopped while running: it ends at the next chunk
        self._creates_leads: dict[int, bool] = {}  # version: whether it has a create_lead step

    def run(self) -> JourneyCounts:
        with self._admission() as admitting:
            if not admitting:  # asked to stop while another instance admitted
                return self.counts
            with self.sink.write() as conn:
                current, definitions = versions(self.ctx, conn, self.journey)
                state = journey_state(conn, self.journey.name)
            assert state is not None
            self._admit(current, definitions[current], state)
            self._admit_triggered(current, definitions[current], state)
            for version, definition in definitions.items():  # entrants at the goal never start
                self._leave(version, definition)
        for wave in range(MAX_WAVES):
            moved = 0
            for version, definition in definitions.items():
                for step in definition.steps:
                    if self.ctx.stop.is_set() or self.halted:
                        return self.counts
                    moved += self._step(version, definition, step, arrived_now=wave > 0)
            if not moved:
                break
        return self.counts

    @contextmanager
    def _admission(self) -> Iterator[bool]:
        """Admission, goal and exit, one instance at a time (PostgreSQL): the journey's lock,
        waited for, so that every instance decides steps only after entrants were admitted
        and those at the goal or the exit taken out — the way one instance runs. After the
        first, the others find little left to do. Yields False when asked to stop meanwhile."""
        if not self.claims:
            yield True
            return
        with self.ctx.store.lock(f"{JOB}/{self.journey.name}", wait=self.ctx.stop.is_set) as lock:
            yield lock.held

    # -- leaving: goal and exit ---------------------------------------------------------------

    def _leave(self, version: int, definition: Journey) -> None:
        m = dvc.journey_members
        for status, condition in (("converted", definition.goal), ("exited", definition.exit)):
            if condition is None:
                continue
            mine = and_(m.c.journey == definition.name, m.c.version == version,
                        m.c.status == ACTIVE)  # fmt: skip
            query = select(m.c.member_id, m.c.step).where(
                mine, condition_sql(self.ctx.store, m, condition, self.now)
            )
            after = 0
            while True:
                with self.sink.write() as conn:
                    page = query.where(m.c.member_id > after).order_by(m.c.member_id).limit(CHUNK)
                    if self.claims:  # members another instance is deciding now: left to it
                        page = page.with_for_update(skip_locked=True, of=m)
                    chunk = conn.execute(page).all()
                    if not chunk:
                        break
                    after = chunk[-1][0]
                    conn.execute(
                        update(m).where(m.c.member_id.in_([row[0] for row in chunk]))
                        .values(status=status, left_at=self.at)
                    )  # fmt: skip
                    self._history(conn, [(row[0], row[1], status, None, None) for row in chunk])
                setattr(self.counts, status, getattr(self.counts, status) + len(chunk))

    # -- admission ----------------------------------------------------------------------------

    def _admit(self, version: int, journey: Journey, state: dict[str, Any]) -> None:
        window = journey.schedule
        if journey.segment is None or not (window.starts <= self.now < window.ends):
            return
        if journey.entry == "once" and state["admitted_at"] is not None:
            return
        if journey.entry == "repeating" and state["repeated_at"] is not None:
            assert journey.repeat is not None
            last = parse_stamp(state["repeated_at"])
            if self.now < self.calendar.add(last, journey.repeat.every):
                return
        first = journey.steps[0].id
        first_due = stamp(due(journey, self.calendar, first, self.now))
        room = self._room(journey)
        deferred = 0
        for chunk in self._candidates(journey):
            if room is not None:  # the day's entries are counted: the rest enter another day
                deferred += max(0, len(chunk) - room)
                chunk = chunk[:room]
                room -= len(chunk)
                if not chunk:
                    continue
            leads = self._leads(chunk)
            rows = [
                {"journey": journey.name, "version": version, "contactid": contact,
                 "entry": entry, "leadid": leads.get(contact), "step": first, "status": ACTIVE,
                 "arrived_at": self.at, "due_at": first_due, "entered_at": self.at}
                for contact, entry, _ in chunk
            ]  # fmt: skip
            with self.sink.write() as conn:
                ids = insert_members(conn, journey.name, rows)
                self._history(conn, [(i, None, "entered", first, None) for i in ids])
            self.counts.entered += len(rows)
        if deferred:
            self.counts.deferred += deferred
            if self.simulation is not None:
                self.simulation.observe("deferred", {"members": deferred})
            return  # `once` is not over until everyone at the start has entered
        stamp_column = "repeated_at" if journey.entry == "repeating" else "admitted_at"
        with self.sink.write() as conn:
            conn.execute(
                update(dvc.journeys)
                .where(dvc.journeys.c.journey == journey.name)
                .values({stamp_column: self.at})
            )

    def _room(self, journey: Journey) -> int | None:
        """How many more members may enter today (`caps.entries_per_day`); None: no limit."""
        limit = journey.caps.entries_per_day
        if limit is None:
            return None
        today = self.calendar.day(self.now)
        zone = journey.schedule.zone
        start = datetime.combine(today, dtime(0), tzinfo=zone)
        end = datetime.combine(today + timedelta(days=1), dtime(0), tzinfo=zone)
        m = dvc.journey_members.c
        with self.sink.read() as conn:
            entered = conn.execute(
                select(func.count()).where(m.journey == journey.name,
                                           m.entered_at >= stamp(start), m.entered_at < stamp(end))
            ).scalar_one()  # fmt: skip
        return max(0, limit - int(entered))

    def _admit_triggered(self, version: int, journey: Journey, state: dict[str, Any]) -> None:
        """Admit whom the changes matching the journey's trigger name, a chunk of changes per
        transaction: the members, their history and each change's decision together."""
        window = journey.schedule
        if journey.trigger is None or not (window.starts <= self.now < window.ends):
            return
        since = triggers.changes_since(journey, state)
        first = journey.steps[0].id
        first_due = stamp(due(journey, self.calendar, first, self.now))
        for table, part in journey.trigger.tables():
            query = triggers.pending(journey, table, part, since)
            after = 0
            while True:
                with self.sink.write() as conn:
                    changes = conn.execute(
                        query.where(dvc.changes.c.change_id > after).limit(CHUNK)
                    ).all()
                    if not changes:
                        break
                    after = changes[-1][0]
                    decided = triggers.decide(conn, self.ctx.store, journey, table, part,
                                              changes, self.now)  # fmt: skip
                    entering = [d for d in decided if d.outcome == "entered"]
                    room = self._room(journey)  # over the day's limit: decided another day
                    if room is not None and len(entering) > room:
                        later = {d.change_id for d in entering[room:]}
                        self.counts.deferred += len(later)
                        decided = [d for d in decided if d.change_id not in later]
                        entering = entering[:room]
                    members: dict[int, int] = {}
                    if entering:
                        ids = insert_members(conn, journey.name, [
                            {"journey": journey.name, "version": version,
                             "contactid": d.contactid, "entry": d.entry, "leadid": d.leadid,
                             "step": first, "status": ACTIVE, "arrived_at": self.at,
                             "due_at": first_due, "entered_at": self.at}
                            for d in entering
                        ])  # fmt: skip
                        members = dict(zip((d.change_id for d in entering), ids, strict=True))
                        self._history(conn, [
                            (members[d.change_id], None, "entered", first,
                             {"trigger": table, "change": d.change_id, "record": d.record_id})
                            for d in entering
                        ])  # fmt: skip
                    uses = [{"journey": journey.name, "change_id": d.change_id,
                             "outcome": d.outcome, "member_id": members.get(d.change_id),
                             "at": self.at} for d in decided if d.outcome != "waiting"]  # fmt: skip
                    if uses:
                        conn.execute(dvc.change_uses.insert(), uses)
                self.counts.entered += len(entering)
                self.counts.triggered += len(entering)
                self.counts.waiting += len(decided) - len(uses)

    def _candidates(self, journey: Journey) -> Iterator[list[tuple[str, int, str | None]]]:
        """(contact, entry number, lead ids) of every segment member entering now, in chunks
        (each read after the one before was admitted)."""
        s, m = dvc.segment_members, dvc.journey_members
        mine = and_(m.c.journey == journey.name, m.c.contactid == s.c.contactid)
        last_entry = select(func.max(m.c.entry)).where(mine).scalar_subquery()
        active = exists().where(mine, m.c.status == ACTIVE)
        query = select(s.c.contactid, last_entry.label("last"), s.c.lead_ids).where(
            s.c.segment == journey.segment, ~active
        )
        for excluded in journey.excluded:
            other = dvc.segment_members.alias()
            query = query.where(
                ~exists().where(other.c.segment == excluded, other.c.contactid == s.c.contactid)
            )
        if journey.entry != "repeating":
            if journey.re_entry == "never":
                query = query.where(last_entry.is_(None))
            else:
                wait = journey.re_entry.after
                assert wait.calendar is not None or wait.business_days is not None
                left = select(func.max(m.c.left_at)).where(mine).scalar_subquery()
                cutoff = stamp(self.now - wait.longest()) if wait.calendar is None else stamp(
                    self.now - wait.calendar)  # fmt: skip
                query = query.where(or_(last_entry.is_(None), left <= cutoff))
        after = ""
        while True:
            with self.sink.read() as conn:
                rows = conn.execute(
                    query.where(s.c.contactid > after).order_by(s.c.contactid).limit(CHUNK)
                ).all()
            if not rows:
                return
            after = rows[-1][0]
            yield [(contact, (last or 0) + 1, lead_ids) for contact, last, lead_ids in rows]

    def _leads(self, chunk: list[tuple[str, int, str | None]]) -> dict[str, str]:
        """Each entering contact's lead: its most recent open lead of the segment's leads."""
        ids = {i for _, _, lead_ids in chunk for i in (lead_ids or "").split(",") if i}
        if not ids or "lead" not in self.ctx.store.tables:
            return {}
        lead = self.ctx.store.tables["lead"]
        with self.sink.read() as conn:
            rows = conn.execute(
                select(lead.c.leadid, lead.c._parentcontactid_value, lead.c.statecode,
                       lead.c.createdon).where(lead.c.leadid.in_(sorted(ids)))
            ).all()  # fmt: skip
        best: dict[str, tuple[Any, ...]] = {}
        for leadid, contact, state, created in rows:
            rank = (state == 0, created or "", leadid)
            if contact not in best or rank > best[contact]:
                best[contact] = rank
        return {contact: rank[2] for contact, rank in best.items()}

    # -- steps --------------------------------------------------------------------------------

    def _step(self, version: int, journey: Journey, step: Step, arrived_now: bool) -> int:
        """Move every member due at `step` (and, at an `if`, those whose condition holds).

        With `arrived_now`, only those that came to the step in this run: the others were
        decided in the run's first wave, on the same clock and data, and stay where they are.
        """
        m = dvc.journey_members
        conditions = step.conditions()
        ready = m.c.due_at <= self.at
        if self.simulation is not None and step.id in self.simulation.assume:
            facts = []  # assumed: decided in Python, once, at the first run after arrival
            if self.simulation.previous is not None:
                ready = or_(ready, m.c.arrived_at == self.simulation.previous)
        else:
            facts = [
                case((condition_sql(self.ctx.store, m, c, self.now), 1), else_=0).label(f"f{i}")
                for i, c in enumerate(conditions)
            ]
            if step.kind == "if":
                ready = or_(ready, condition_sql(self.ctx.store, m, conditions[0], self.now))
        query = select(
            m.c.member_id, m.c.contactid, m.c.entry, m.c.leadid, m.c.arrived_at, m.c.due_at,
            m.c.last_intent, *facts,
        ).where(
            m.c.journey == journey.name, m.c.version == version, m.c.status == ACTIVE,
            m.c.step == step.id, m.c.arrived_at == self.at if arrived_now else true(), ready,
        )  # fmt: skip
        moved = 0
        after = 0
        while True:
            page = query.where(m.c.member_id > after).order_by(m.c.member_id).limit(self.chunk)
            if self.claims:
                claimed = self._claimed(version, journey, step, page)
                if claimed is None:
                    return moved
                moved += claimed[1]
                after = claimed[0]
                continue
            with self.sink.read() as conn:
                rows = list(conn.execute(page))
            if not rows:
                return moved
            after = rows[-1][0]
            moved += self._chunk(version, journey, step, rows)

    def _claimed(
        self, version: int, journey: Journey, step: Step, page: Select[Any]
    ) -> tuple[int, int] | None:
        """Claim a chunk and decide it, in one transaction (PostgreSQL, several instances):
        its members' rows are locked as they are read, and those another instance has locked
        are skipped (`FOR UPDATE SKIP LOCKED`) — that instance is deciding them. Returns the
        last member id read and how many moved; None when nobody is left."""
        m = dvc.journey_members
        with self.sink.write() as conn:
            rows = list(conn.execute(page.with_for_update(skip_locked=True, of=m)))
            if not rows:
                return None
            if step.kind in CAPPED and journey.caps.per_owner_per_day is not None:
                # the owners' counts of the day, read under a lock that the instances take in
                # turn: two instances never both see the last place left
                conn.execute(
                    select(func.pg_advisory_xact_lock(lock_key(f"{JOB}/{journey.name}/caps")))
                )
                self._caps.clear()
                self._caps_loaded.clear()
            targets = self._targets(version, journey, rows) if step.is_action else {}
            return rows[-1][0], self._decide(conn, journey, step, rows, targets)

    def _chunk(self, version: int, journey: Journey, step: Step, rows: list[Any]) -> int:
        """Decide the moves of one chunk of members at `step`, then write them in one
        transaction: a statement per kind of change, not per member."""
        targets = self._targets(version, journey, rows) if step.is_action else {}
        with self.sink.write() as conn:
            return self._decide(conn, journey, step, rows, targets)

    def _decide(
        self, conn: Connection, journey: Journey, step: Step, rows: list[Any],
        targets: dict[int, Target],
    ) -> int:  # fmt: skip
        """Decide the moves of a chunk and write them in `conn`'s transaction, re-reading
        the journey's state and the members' steps there (another run, a pause since)."""
        moved = 0
        # a pause, a stop or another run since the chunk was read: nothing is decided twice
        state = journey_state(conn, journey.name)
        if state is None or state["state"] != "live":
            self.halted = True
            return 0
        m = dvc.journey_members
        still = set(conn.execute(
            select(m.c.member_id).where(m.c.member_id.in_([row[0] for row in rows]),
                                        m.c.status == ACTIVE, m.c.step == step.id)
        ).scalars())  # fmt: skip
        writes = ChunkWrites()
        for row in rows:
            member_id, contact, entry = row[0], row[1], row[2]
            if member_id not in still:
                continue
            member = Member(f"{contact}/{entry}", step.id, parse_stamp(row[4]),
                            parse_stamp(row[5]))  # fmt: skip
            facts = tuple(bool(value) for value in row[7:])
            if self.simulation is not None and step.id in self.simulation.assume:
                facts = (self.simulation.holds(journey, member, step),)
            move = decide(journey, member, self.now, facts)
            if move.stays:
                continue
            if move.action is not None:
                summary = self._act(conn, targets[member_id], move, writes)
                if summary is None:
                    continue
                move = replace(move, detail=summary)
            self._apply(journey, member_id, step, move, writes)
            moved += 1
        writes.flush(conn, journey.name, self.at, self.ctx.run_id, self.sink.dry)
        return moved

    def _apply(self, journey: Journey, member_id: int, step: Step, move: Move,
               writes: ChunkWrites) -> None:  # fmt: skip
        if move.finish is not None:
            writes.member(member_id, status=move.finish, left_at=self.at)
            setattr(self.counts, move.finish, getattr(self.counts, move.finish) + 1)
        else:
            assert move.to is not None
            next_due = due(journey, self.calendar, move.to, self.now)
            writes.member(member_id, step=move.to, arrived_at=self.at, due_at=stamp(next_due))
            self.counts.moved += 1
        event = (
            move.finish if move.finish and move.event in ("end", "journey ended") else move.event
        )
        writes.history.append((member_id, step.id, event, move.to, move.detail or None))

    def _act(
        self, conn: Connection, target: Target, move: Move, writes: ChunkWrites
    ) -> dict[str, Any] | None:
        """Collect the writes of the member's action and return what they are; None when the
        member waits (capped) or failed."""
        step = move.action
        assert step is not None
        member_id = target.member_id
        try:
            if step.kind in CAPPED and self._capped(conn, target.owner):
                other = self._spill(conn, target)
                if other is not None:
                    target = other
            if step.kind in CAPPED and self._capped(conn, target.owner):
                next_day = self.calendar.next_day_opening(self.now)
                writes.member(member_id, due_at=stamp(next_day))
                writes.history.append((member_id, step.id, "capped", None,
                                       {"owner": target.owner.id if target.owner else None,
                                        "until": stamp(next_day)}))  # fmt: skip
                self.counts.capped += 1
                if self.simulation is not None:
                    owner = target.owner.id if target.owner else None
                    self.simulation.observe("capped", {"step": step.id, "owner": owner})
                return None
            done = act(target, step, self.now, self.calendar, self._open_leads(conn, target))
        except (ActionProblem, TemplateProblem) as problem:
            error = {"status": 0, "code": "", "message": str(problem), "request_id": ""}
            writes.member(member_id, status="failed", left_at=self.at,
                          error=json.dumps({"step": step.id, **error}))  # fmt: skip
            self.counts.failed += 1
            self.counts.failures.append({"member": member_id, "step": step.id, **error})
            writes.history.append((member_id, step.id, "failed", None, {"message": str(problem)}))
            return None
        intents = done.intents
        if intents:  # a member's writes go in its steps' order, and none after one refused
            intents = [replace(intents[0], after=intents[0].after or target.last_intent),
                       *intents[1:]]  # fmt: skip
            writes.member(member_id, last_intent=intents[-1].key)
            writes.intents.extend(intents)
        if done.record_id is not None:
            owner = target.owner.id if target.owner else None
            day = self.calendar.day(self.now).isoformat()
            writes.records.append({
                "member_id": member_id, "step": step.id, "table_name": done.table,
                "record_id": done.record_id, "journey": target.journey.name, "owner_id": owner,
                "day": day, "intent": intents[0].key if intents else None,
            })  # fmt: skip
            if step.kind in CAPPED and target.owner is not None:
                self._caps[(target.owner.id, day)] += 1
        self.counts.acted += 1
        if self.simulation is not None:
            self.simulation.observe("write", {"step": step.id, **done.summary})
        elif self.sink.dry:  # the dry run lists every write; a run's record only counts them
            self.counts.writes.append(done.summary)
        return done.summary

    def _capped(self, conn: Connection, owner: Owner | None) -> bool:
        """Whether `owner` has had the journey's cap of calls, tasks and appointments today."""
        limit = self.journey.caps.per_owner_per_day
        if limit is None or owner is None:
            return False
        key = (owner.id, self.calendar.day(self.now).isoformat())
        if key not in self._caps_loaded:
            r = dvc.journey_records.c
            made = conn.execute(
                select(func.count()).where(
                    r.journey == self.journey.name, r.owner_id == key[0], r.day == key[1],
                    r.table_name.in_(CAPPED),
                )
            ).scalar_one()  # fmt: skip
            self._caps[key] = int(made)
            self._caps_loaded.add(key)
        return self._caps[key] >= limit

    def _spill(self, conn: Connection, target: Target) -> Target | None:
        """With `spill: round_robin`, the member's work for the next owner of the list (after
        its own) who has room today; None when there is none."""
        rule = self.journey.owner
        if self.journey.caps.spill != "round_robin" or not isinstance(rule, RoundRobin):
            return None
        assert target.owner is not None
        users = rule.round_robin
        start = users.index(target.owner.id) if target.owner.id in users else -1
        for offset in range(1, len(users)):
            owner = Owner(users[(start + offset) % len(users)], "systemuser")
            if not self._capped(conn, owner):
                row = self._rows("systemuser", "systemuserid", {owner.id}).get(owner.id)
                row = row or dict.fromkeys(target.owner_row)
                if self.simulation is not None:
                    self.simulation.observe("reassigned", {"owner": target.owner.id,
                                                           "to": owner.id})  # fmt: skip
                return replace(
                    target, owner=owner, owner_row=row or dict.fromkeys(target.owner_row)
                )
        return None

    def _open_leads(self, conn: Connection, target: Target) -> list[dict[str, Any]]:
        """The contact's leads in the store (open and closed), for create_lead's matching."""
        creates = self._creates_leads.get(target.version)
        if creates is None:
            creates = any(s.kind == "create_lead" for s in target.journey.steps)
            self._creates_leads[target.version] = creates
        if not creates:
            return []
        lead = self.ctx.store.tables["lead"]
        rows = conn.execute(
            select(lead.c.leadid, lead.c.subject, lead.c.statecode).where(
                lead.c._parentcontactid_value == target.contactid
            )
        ).mappings()
        return [dict(row) for row in rows]

    def _targets(self, version: int, journey: Journey, rows: list[Any]) -> dict[int, Target]:
        """The members of a chunk as actions see them: their contact, lead and owner rows."""
        store = self.ctx.store
        contacts = self._rows("contact", "contactid", {row[1] for row in rows})
        leads = self._rows("lead", "leadid", {row[3] for row in rows if row[3]})
        owners: dict[int, Owner | None] = {}
        for row in rows:
            key = f"{row[1]}/{row[2]}"
            owners[row[0]] = owner_for(journey, key, contacts.get(row[1], {}),
                                       leads.get(row[3], {}) if row[3] else {})  # fmt: skip
        user_ids = {o.id for o in owners.values() if o and o.table == "systemuser"}
        users = self._rows("systemuser", "systemuserid", user_ids)
        users_table = store.mapping.tables.get("systemuser")
        blank = dict.fromkeys(users_table.columns) if users_table else {}
        targets = {}
        for row in rows:
            owner = owners[row[0]]
            targets[row[0]] = Target(
                journey, version, row[0], row[1], row[2], row[3],
                contacts.get(row[1], {}), leads.get(row[3], {}) if row[3] else {},
                owner, users.get(owner.id, blank) if owner else blank, row[6],
            )  # fmt: skip
        return targets

    def _rows(self, table: str, key: str, ids: set[str]) -> dict[str, dict[str, Any]]:
        if not ids or table not in self.ctx.store.tables:
            return {}
        stored = self.ctx.store.tables[table]
        columns = [stored.c[c] for c in self.ctx.mapping.tables[table].columns]
        with self.sink.read() as conn:
            rows = conn.execute(select(*columns).where(stored.c[key].in_(sorted(ids)))).mappings()
            return {row[key]: dict(row) for row in rows}

    def _history(self, conn: Connection, events: list[Event]) -> None:
        if not self.sink.dry:  # see ChunkWrites.flush
            write_history(conn, self.journey.name, self.at, events)


# -- the job ------------------------------------------------------------------------------------


def run_journeys(ctx: Context, dry: bool = False) -> dict[str, Any]:
    """Run every live journey once; a bad journey is reported and the others run.

    On SQLite one process runs the job at a time (its lease). On PostgreSQL several instances
    (`dvconnect schedule` on several hosts) run it together and share the work: the job's lease
    is shared (`journeys migrate`, which takes it alone, is refused while any of them runs);
    a journey's admission and its goal and exit are done by one instance at a time (the
    journey's lock, waited for: no instance decides steps before them); the members due at a
    step are claimed a chunk at a time with `FOR UPDATE SKIP LOCKED`, so each chunk is decided
    by one instance, its members' moves and outbox intents committed together; and the outbox is
    drained by one instance at a time (its lock; at the end of a run an instance waits for it,
    so that what it recorded is sent), since two drains would send the same intents.
    """
    results: dict[str, Any] = {}
    sink = Sink(ctx, dry)
    with ctx.store.lease(JOB, shared=True) if not dry else _nothing():
        outbox = None if dry else Outbox(ctx.store, ctx.online())
        if outbox is not None:  # what an earlier run left: unless another instance sends it now
            _drain(ctx, outbox, results, wait=False)
        with sink.session():
            for done, (name, journey) in enumerate(ctx.mapping.journeys.items()):
                if ctx.progress is not None:
                    ctx.progress("journeys", done, len(ctx.mapping.journeys))
                with sink.read() as conn:
                    state = journey_state(conn, name)
                if state is None or state["state"] != "live":
                    results[name] = {"state": state["state"] if state else "draft", "failed": 0}
                    continue
                started, now = time.perf_counter(), ctx.clock.now()
                try:
                    with sink.read() as conn:
                        stuck = watch(conn, name, now, ctx.settings.journey_grace,
                                      ctx.store.engine.dialect.name)  # fmt: skip
                    warn(name, stuck)
                    counts = JourneyRun(ctx, journey, sink, now).run()
                    counts.watchdog = stuck.as_dict()
                    counts.seconds = round(time.perf_counter() - started, 3)
                except (DvconnectError, SQLAlchemyError) as exc:
                    reason = str(exc).splitlines()[0]
                    log.error("journey %s not run: %s", name, reason)
                    results[name] = {"failed": 1, "error": reason}
                    continue
                results[name] = counts.__dict__
            if ctx.progress is not None:
                ctx.progress("journeys", len(ctx.mapping.journeys), len(ctx.mapping.journeys))
        if outbox is not None:
            _drain(ctx, outbox, results, wait=True)
        if not dry and not ctx.stop.is_set():
            _prune_changes(ctx, results)
    for file, error in ctx.mapping.journey_errors.items():
        results[file] = {"failed": 1, "error": str(error)}
    if ctx.stop.is_set():
        results["interrupted"] = True
    return results


def _prune_changes(ctx: Context, results: dict[str, Any]) -> None:
    """Delete the recorded changes no journey will decide, seen over `KEEP_DECIDED` ago
    (`triggers.prune`), one instance at a time: another instance doing it now leaves it to
    that one."""
    try:
        with ctx.store.lock(f"{JOB}:prune") as lock:  # ':' is in no journey's name (their locks)
            pruned = _prune(ctx) if lock.held else None
    except SQLAlchemyError as exc:  # the run did its work: pruning waits for the next one
        log.warning("recorded changes not pruned: %s", str(exc).splitlines()[0])
        return
    if pruned is None:
        return
    if pruned:
        log.info("pruned %d recorded changes no journey will decide", pruned)
    results[PRUNED_CHANGES] = pruned


def _prune(ctx: Context) -> int | None:
    """`_prune_changes` in one transaction: how many, or None when a live or paused journey's
    file is missing or invalid."""
    j = dvc.journeys
    with ctx.store.transaction() as conn:
        rows = conn.execute(select(j).where(j.c.state.in_(("live", "paused")))).mappings()
        holding = [dict(row) for row in rows]
        unread = [row["journey"] for row in holding if row["journey"] not in ctx.mapping.journeys]
        if unread:  # what it triggers on is unknown: its changes must wait for it
            log.info("recorded changes not pruned: journey %s is live or paused but its file "
                     "is missing or invalid", unread[0])  # fmt: skip
            return None
        return triggers.prune(
            conn,
            [(ctx.mapping.journeys[row["journey"]], row) for row in holding],
            ctx.clock.stamp(-KEEP_DECIDED.total_seconds()),
        )


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _drain(ctx: Context, outbox: Outbox, results: dict[str, Any], wait: bool) -> None:
    """Send the job's pending intents, one instance at a time; a drain whose lock's session
    ends (the database lost it) stops before its next chunk."""
    stop = ctx.stop.is_set
    with ctx.store.lock(f"{JOB}/outbox", wait=stop if wait else None) as lock:
        if not lock.held:
            return
        _settle(ctx, outbox.drain(JOB, lambda: stop() or not lock.alive()).failed, results)


def _settle(ctx: Context, failures: list[Outcome], results: dict[str, Any]) -> None:
    """Members whose write Dataverse refused fail, with the step and the error."""
    if not failures:
        return
    m = dvc.journey_members
    with ctx.store.transaction() as conn:
        for failure in failures:
            parts = failure.key.split("/")  # journeys/<member>/<step>/<part>
            member_id, step = int(parts[1]), parts[2]
            error = {"step": step, "status": failure.status, "code": failure.code,
                     "message": failure.message, "request_id": failure.request_id}  # fmt: skip
            before = conn.execute(  # the first refusal fails the member; what waited on it not
                select(m.c.journey, m.c.status).where(m.c.member_id == member_id)
            ).first()
            if before is None or before.status == "failed":
                continue
            journey = before.journey
            conn.execute(
                update(m).where(m.c.member_id == member_id)
                .values(status="failed", left_at=ctx.clock.stamp(), error=json.dumps(error))
            )  # fmt: skip
            write_history(conn, journey, ctx.clock.stamp(),
                          [(member_id, step, "failed", None, error)])  # fmt: skip
            entry = results.setdefault(journey, {})
            if isinstance(entry, dict):
                if entry.get(before.status):  # it ended its path in this run: it failed instead
                    entry[before.status] -= 1
                entry["failed"] = entry.get("failed", 0) + 1
                entry.setdefault("failures", []).append({"member": member_id, **error})
            log.warning("journey %s member %d failed at %s: %s %s", journey, member_id, step,
                        failure.code, failure.message)  # fmt: skip


def plan_journeys(ctx: Context) -> list[dict[str, Any]]:
    """What `run journeys` would write now: the same run inside a transaction rolled back."""
    if not ctx.store.exists:
        return [{"journeys": "the store is empty: nothing would enter yet"}]
    results = run_journeys(ctx, dry=True)
    steps: list[dict[str, Any]] = []
    for name, counts in results.items():
        if not isinstance(counts, dict):
            continue
        if counts.get("error"):
            steps.append({"journey": name, "not run": counts["error"]})
        for write in counts.get("writes", []):
            steps.append({"journey": name, **write})
    return steps
