"""The `scoring` job: every lead-scoring model evaluated set-wise on the store, the changes
written back to the leads and the sales-ready leads handed to their owners.

For each model, at the run's clock:

1. **Contributions**, one pair of statements per rule: the (lead, record) pairs that meet the
   rule now are inserted with since when they count (an activity's `modifiedon`, else now), and
   those that no longer meet it deleted — so a contribution keeps its age, which decay reads;
2. **Scores**: one statement sums every scored lead's contributions (points times the decay weight
   of each, capped per rule) into `dvc_score_scratch`;
3. **Changes**: the leads whose score differs from the one kept are decided (`decide`, pure) a
   chunk at a time; in one transaction per chunk, the new score and grade, the history, and the
   write-back intents (the Rating from the grade, the score column) are committed together, so a
   crash or a kill never loses a change nor sends one twice;
4. **Hand-offs**: a lead crossing the sales-ready threshold is owed one hand-off (none when the
   last one is more recent than the quiet period): a task or phone call for its owner, due in
   business hours, with the reasons in its description; an owner over the day's cap gets it the
   next business day. The record id is derived from the crossing, so it is created once;
5. the outbox sends the intents: `UpdateMultiple` for the leads, creates for the hand-offs.

The preview and the dry run drive the same code inside one transaction that is rolled back.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    ColumnElement,
    Connection,
    Float,
    Numeric,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    tuple_,
    update,
)

from connector import tables as dvc
from connector.clock import parse_stamp, stamp
from connector.mapping import named
from connector.mapping.scoring import RATING, RATINGS, Model, Rule
from connector.outbox import Intent, Outbox, record
from jobs.context import Context
from jobs.journeys.calendar import Calendar
from jobs.journeys.templates import TemplateProblem, render
from jobs.journeys.triggers import READY

log = logging.getLogger("dvconnect.scoring")

JOB = "scoring"
CHUNK = 1000  # leads per transaction
SCORING_NAMESPACE = uuid.UUID("8d0c5f3e-4b1a-4e6f-9a27-5c3e1b7d9f04")
SHOWN = 20  # hand-offs listed in full by a dry run


@dataclass(frozen=True)
class Kept:
    """A lead's score as the store keeps it."""

    score: float
    grade: str
    ready_since: str | None
    handoff_due: str | None
    handed_off_at: str | None


@dataclass(frozen=True)
class Decided:
    """A lead's score after this run, and what it owes."""

    score: float
    grade: str
    ready_since: str | None
    handoff_due: str | None
    crossed: bool  # became sales-ready in this run


def decide(model: Model, kept: Kept | None, score: float, now: datetime) -> Decided:
    """The new state of a lead scored `score` at `now` (pure: tested by tables)."""
    grade = model.grades.of(score)
    if score < model.sales_ready:
        return Decided(score, grade, None, None, crossed=False)
    if kept is not None and kept.ready_since is not None:  # still ready: nothing new is owed
        return Decided(score, grade, kept.ready_since, kept.handoff_due, crossed=False)
    quiet = True
    if model.hand_off is not None and kept is not None and kept.handed_off_at is not None:
        quiet = parse_stamp(kept.handed_off_at) + _span(model.hand_off.quiet) <= now
    at = stamp(now)
    owed = at if model.hand_off is not None and quiet else None
    return Decided(score, grade, at, owed, crossed=True)


def _span(delay: Any) -> timedelta:
    assert delay.calendar is not None
    return timedelta(seconds=delay.calendar.total_seconds())


@dataclass
class ModelCounts:
    """What one run did with one model."""

    leads: int = 0  # scored
    changed: int = 0  # whose score changed
    grades: dict[str, int] = field(default_factory=dict)
    ready: int = 0
    crossed: int = 0
    rated: int = 0  # write-backs recorded
    handed_off: int = 0
    capped: int = 0
    left: int = 0  # no longer scored by the model
    seconds: float = 0.0
    handoffs: list[dict[str, Any]] = field(default_factory=list)  # the dry run's listing


# -- the job -----------------------------------------------------------------------------------


def run_scoring(ctx: Context, dry: bool = False) -> dict[str, Any]:
    """Score with every model; a bad model is reported and the others run."""
    results: dict[str, Any] = {}
    outbox = None if dry else Outbox(ctx.store, ctx.online())
    with ctx.store.lease(JOB) if not dry else _nothing():
        if outbox is not None:
            _drained(outbox.drain(JOB, ctx.stop.is_set), results)
        with _session(ctx, dry) as session:
            for name, model in ctx.mapping.models.items():
                if ctx.stop.is_set():
                    results["interrupted"] = True
                    break
                results[name] = Scoring(ctx, model, session, ctx.clock.now()).run().__dict__
        if outbox is not None:
            _drained(outbox.drain(JOB, ctx.stop.is_set), results)
    for file, error in ctx.mapping.model_errors.items():
        results[file] = {"failed": 1, "error": str(error)}
    return results


def plan_scoring(ctx: Context) -> list[dict[str, Any]]:
    """What `run scoring` would do now: the same run inside a transaction rolled back."""
    if not ctx.store.exists:
        return [{"scoring": "the store is empty: nothing to score yet"}]
    return [{"model": name, **counts} if isinstance(counts, dict) else {"model": name}
            for name, counts in run_scoring(ctx, dry=True).items()]  # fmt: skip


def preview(ctx: Context, name: str) -> dict[str, Any]:
    """A model's distribution of scores and grades now, without saving anything."""
    model = model_named(ctx, name)
    with _session(ctx, dry=True) as session:
        counts = Scoring(ctx, model, session, ctx.clock.now()).run()
        with session.connect() as conn:
            s = dvc.score_scratch.c
            scores = [row[0] for row in conn.execute(
                select(s.score).where(s.model == name).order_by(s.score)
            )]  # fmt: skip
    buckets: Counter[int] = Counter(int(score // 10) * 10 for score in scores)
    return {
        "model": name,
        "leads": len(scores),
        "grades": counts.grades,
        "sales_ready": counts.ready,
        "would_hand_off": counts.handed_off,
        "scores": {f"{low} to {low + 9}": n for low, n in sorted(buckets.items())},
        "median": scores[len(scores) // 2] if scores else None,
    }


def model_named(ctx: Context, name: str) -> Model:
    return named("scoring model", name, ctx.mapping.models, ctx.mapping.model_errors)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _drained(done: Any, results: dict[str, Any]) -> None:
    """Writes Dataverse refused: counted and logged by lead (no personal data)."""
    for failure in done.failed:
        log.warning("scoring write %s refused: %s %s (request id %s)", failure.key,
                    failure.code, failure.message, failure.request_id)  # fmt: skip
        results.setdefault("failures", []).append({"write": failure.key, "code": failure.code,
                                                   "message": failure.message})  # fmt: skip


class Session:
    """Where scoring reads and writes: the store, a transaction per step or chunk, each renewing
    the job's lease (a run that lost it stops there); or, for a dry run or a preview, one
    transaction that is never committed."""

    def __init__(self, ctx: Context, conn: Connection | None) -> None:
        self.ctx = ctx
        self.dry = conn is not None
        self._conn = conn

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        if self._conn is not None:
            yield self._conn
            return
        with self.ctx.store.transaction() as conn:
            self.ctx.store.renew_lease(conn, JOB)  # a long first run keeps its lease
            yield conn


@contextmanager
def _session(ctx: Context, dry: bool) -> Iterator[Session]:
    if not dry:
        yield Session(ctx, None)
        return
    with ctx.store.rolled_back() as conn:
        yield Session(ctx, conn)


class Scoring:
    """One run of one model at `now`."""

    def __init__(self, ctx: Context, model: Model, session: Session, now: datetime) -> None:
        self.ctx = ctx
        self.model = model
        self.session = session
        self.now = now
        self.at = stamp(now)
        self.counts = ModelCounts()
        self.lead = ctx.store.tables["lead"]
        hand_off = model.hand_off
        self.calendar = (Calendar(hand_off.business_hours, ZoneInfo(hand_off.timezone))
                         if hand_off is not None else None)  # fmt: skip
        self._entered_by_crossing = any(
            journey.trigger is not None and journey.trigger.lead is not None
            and journey.trigger.lead.sales_ready == model.name
            for journey in ctx.mapping.journeys.values()
        )  # fmt: skip
        self._caps: Counter[tuple[str, str]] = Counter()
        self._caps_loaded: set[tuple[str, str]] = set()

    def run(self) -> ModelCounts:
        started = time.perf_counter()
        with self.session.connect() as conn:
            for rule in self.model.rules:
                self._refresh(conn, rule)
            c = dvc.score_contributions.c
            conn.execute(delete(dvc.score_contributions).where(
                c.model == self.model.name, c.rule.not_in([r.id for r in self.model.rules])
            ))  # fmt: skip
            self._evaluate(conn)
        self._settle()
        self._leave()
        self._hand_off()
        with self.session.connect() as conn:
            s = dvc.scores.c
            graded = conn.execute(
                select(s.grade, func.count()).where(s.model == self.model.name).group_by(s.grade)
            ).all()
            self.counts.grades = {grade: int(n) for grade, n in graded}
            self.counts.leads = sum(self.counts.grades.values())
            self.counts.ready = int(conn.execute(select(func.count()).where(
                s.model == self.model.name, s.ready_since.is_not(None)
            )).scalar_one())  # fmt: skip
        self.counts.seconds = round(time.perf_counter() - started, 3)
        return self.counts

    # -- contributions and scores (set-wise) ----------------------------------------------------

    def _matches(self, rule: Rule) -> Any:
        """(leadid, record_id, at) of every scored lead and record that meets `rule` now."""
        lead, store, now = self.lead, self.ctx.store, self.now
        scored = self.model.scored.condition(lead, now)
        first_seen = literal(self.at)
        source = rule.source
        if source == "lead":
            return select(lead.c.leadid, literal(""), first_seen).where(
                scored, rule.compiled.condition(lead, now)
            )
        if source == "contact":
            contact = store.tables["contact"]
            return (
                select(lead.c.leadid, literal(""), first_seen)
                .join(contact, contact.c.contactid == lead.c._parentcontactid_value)
                .where(scored, rule.compiled.condition(contact, now))
            )
        if source == "in_segment":
            s = dvc.segment_members
            return select(lead.c.leadid, literal(""), first_seen).join(
                s, and_(s.c.contactid == lead.c._parentcontactid_value,
                        s.c.segment == rule.in_segment)
            ).where(scored)  # fmt: skip
        activity_rule = rule.activity
        assert activity_rule is not None
        activity = store.tables[source]
        key = activity.c[store.mapping.tables[source].primary_key]
        query = select(lead.c.leadid).join(
            activity, activity.c._regardingobjectid_value == lead.c.leadid
        ).where(scored, activity_rule.compiled.condition(activity, now))  # fmt: skip
        if activity_rule.journey is not None:
            r = dvc.journey_records
            query = query.join(r, and_(r.c.record_id == key, r.c.journey == activity_rule.journey))
        if rule.per == "lead":
            return query.add_columns(literal(""), first_seen).distinct()
        when = (func.coalesce(activity.c.modifiedon, first_seen)
                if "modifiedon" in activity.c else first_seen)  # fmt: skip
        return query.add_columns(key, when)

    def _refresh(self, conn: Connection, rule: Rule) -> None:
        c = dvc.score_contributions
        matches = self._matches(rule).subquery()
        pair = tuple_(matches.c[0], matches.c[1])
        mine = and_(c.c.model == self.model.name, c.c.rule == rule.id)
        conn.execute(delete(c).where(
            mine, tuple_(c.c.leadid, c.c.record_id).not_in(select(matches.c[0], matches.c[1]))
        ))  # fmt: skip
        conn.execute(insert(c).from_select(
            ["model", "leadid", "rule", "record_id", "at"],
            select(literal(self.model.name), matches.c[0], literal(rule.id), matches.c[1],
                   matches.c[2]).where(pair.not_in(select(c.c.leadid, c.c.record_id).where(mine))),
        ))  # fmt: skip

    def _weight(self) -> ColumnElement[Any]:
        """What a contribution counts for with its age: activities (events) decay; a lead's,
        a contact's or a segment's condition counts whole while it holds."""
        decay = self.model.decay
        c = dvc.score_contributions.c
        at = c.at
        events = [rule.id for rule in self.model.rules if rule.activity is not None]
        if decay is None or not events:
            return literal(1.0)
        whens: list[tuple[ColumnElement[bool], Any]] = [(c.rule.not_in(events), 1.0)]
        if decay.expire is not None:
            whens.append((at < stamp(self.now - _span(decay.expire)), 0.0))
        if decay.after is not None:
            whens.append((at < stamp(self.now - _span(decay.after)), decay.weight))
        return case(*whens, else_=1.0)

    def _evaluate(self, conn: Connection) -> None:
        """Every scored lead's score now into `dvc_score_scratch`."""
        c = dvc.score_contributions.c
        rules = {rule.id: rule for rule in self.model.rules}
        points = case({rid: float(r.points) for rid, r in rules.items()}, value=c.rule)
        per_rule = (
            select(c.leadid, c.rule, (points * func.sum(self._weight())).label("raw"))
            .where(c.model == self.model.name)
            .group_by(c.leadid, c.rule)
            .subquery()
        )
        capped_whens: list[tuple[ColumnElement[bool], Any]] = []
        for rid, rule in rules.items():
            if rule.cap is not None:
                capped_whens.append((and_(per_rule.c.rule == rid, per_rule.c.raw > rule.cap),
                                     float(rule.cap)))  # fmt: skip
                capped_whens.append((and_(per_rule.c.rule == rid, per_rule.c.raw < -rule.cap),
                                     float(-rule.cap)))  # fmt: skip
        capped = case(*capped_whens, else_=per_rule.c.raw) if capped_whens else per_rule.c.raw
        total = (
            select(per_rule.c.leadid, func.sum(capped).label("score"))
            .group_by(per_rule.c.leadid)
            .subquery()
        )
        lead = self.lead
        score = cast(func.round(cast(func.coalesce(total.c.score, 0.0), Numeric), 2), Float)
        scratch = dvc.score_scratch
        conn.execute(delete(scratch).where(scratch.c.model == self.model.name))
        conn.execute(insert(scratch).from_select(
            ["model", "leadid", "score"],
            select(literal(self.model.name), lead.c.leadid, score)
            .select_from(lead.outerjoin(total, total.c.leadid == lead.c.leadid))
            .where(self.model.scored.condition(lead, self.now)),
        ))  # fmt: skip

    # -- changes (a chunk per transaction) ------------------------------------------------------

    def _settle(self) -> None:
        """Decide every lead whose score changed; write state, history and intents together.

        A lead scored for the first time that owes nothing — below the sales-ready threshold,
        its Rating already its grade's, no score column — is kept set-wise first: with no intent
        to go with it, its state may commit on its own. The others are decided a chunk at a time.
        """
        self._keep_plain_new_leads()
        s, k, lead = dvc.score_scratch, dvc.scores, self.lead
        rating = lead.c[RATING] if RATING in lead.c else null()
        query = (
            select(s.c.leadid, s.c.score, k.c.score, k.c.grade, k.c.ready_since,
                   k.c.handoff_due, k.c.handed_off_at, rating)
            .select_from(s.outerjoin(k, and_(k.c.model == s.c.model, k.c.leadid == s.c.leadid))
                         .join(lead, lead.c.leadid == s.c.leadid))
            .where(s.c.model == self.model.name, or_(k.c.leadid.is_(None), k.c.score != s.c.score))
        )  # fmt: skip
        after = ""
        while True:
            with self.session.connect() as conn:
                rows = conn.execute(
                    query.where(s.c.leadid > after).order_by(s.c.leadid).limit(CHUNK)
                ).all()
                if not rows:
                    return
                after = rows[-1][0]
                self._chunk(conn, rows)

    def _keep_plain_new_leads(self) -> None:
        s, k, lead, model = dvc.score_scratch, dvc.scores, self.lead, self.model
        if model.write.score is not None:
            return  # every new lead owes its score column
        grade = case((s.c.score >= model.grades.hot, "hot"),
                     (s.c.score >= model.grades.warm, "warm"), else_="cold")  # fmt: skip
        owes_nothing = s.c.score < model.sales_ready
        if model.write.rating:
            if RATING not in lead.c:
                return
            code = case(*((grade == name, value) for name, value in RATINGS.items()))
            owes_nothing = and_(owes_nothing, lead.c[RATING].is_not_distinct_from(code))
        plain = (
            select(literal(model.name), s.c.leadid, s.c.score, grade)
            .select_from(s.join(lead, lead.c.leadid == s.c.leadid)
                         .outerjoin(k, and_(k.c.model == s.c.model, k.c.leadid == s.c.leadid)))
            .where(s.c.model == model.name, k.c.leadid.is_(None), owes_nothing)
        )  # fmt: skip
        with self.session.connect() as conn:
            self.counts.changed += int(
                conn.execute(select(func.count()).select_from(plain.subquery())).scalar_one()
            )  # (an INSERT … SELECT's row count is -1 on PostgreSQL)
            history = plain.where(s.c.score != 0).add_columns(literal(self.at))
            conn.execute(
                insert(dvc.score_history).from_select(
                    ["model", "leadid", "score", "grade", "at"], history
                )
            )
            conn.execute(insert(k).from_select(
                ["model", "leadid", "score", "grade", "scored_at"],
                plain.add_columns(literal(self.at)),
            ))  # fmt: skip

    def _chunk(self, conn: Connection, rows: Sequence[Any]) -> None:
        k = dvc.scores
        inserts, updates, history, intents, crossings = [], [], [], [], []
        for leadid, score, old_score, old_grade, ready_since, due, handed, rating in rows:
            kept = None if old_score is None else Kept(old_score, old_grade, ready_since, due,
                                                       handed)  # fmt: skip
            new = decide(self.model, kept, score, self.now)
            values = {"score": new.score, "grade": new.grade, "scored_at": self.at,
                      "ready_since": new.ready_since, "handoff_due": new.handoff_due}  # fmt: skip
            if kept is None:
                inserts.append({"model": self.model.name, "leadid": leadid, **values,
                                "handed_off_at": None})  # fmt: skip
            else:
                updates.append({"lead": leadid, **{f"new_{n}": v for n, v in values.items()}})
            if kept is not None or score != 0:
                history.append({"model": self.model.name, "leadid": leadid, "at": self.at,
                                "score": new.score, "grade": new.grade})  # fmt: skip
            self.counts.changed += 1
            self.counts.crossed += new.crossed
            if new.crossed and self._entered_by_crossing:  # journeys entered on it
                crossings.append({"table_name": "lead", "record_id": leadid, "kind": READY,
                                  "column_name": self.model.name, "run_id": self.ctx.run_id,
                                  "at": self.at})  # fmt: skip
            body = self._write_back(kept, new, rating)
            if body:
                intents.append(Intent(
                    f"{JOB}/{self.model.name}/{leadid}/{self.at}", JOB, "update", "lead",
                    "leads", "leadid", leadid, body,
                ))  # fmt: skip
        if inserts:
            conn.execute(insert(k), inserts)
        if updates:
            columns = ("score", "grade", "scored_at", "ready_since", "handoff_due")
            conn.execute(
                update(k).where(k.c.model == self.model.name, k.c.leadid == bindparam("lead"))
                .values({n: bindparam(f"new_{n}") for n in columns}),
                updates,
            )  # fmt: skip
        if history:
            conn.execute(insert(dvc.score_history), history)
        if crossings:
            conn.execute(insert(dvc.changes), crossings)
        if intents and not self.session.dry:
            record(conn, intents, now=self.at, run_id=self.ctx.run_id)
        self.counts.rated += len(intents)

    def _write_back(self, kept: Kept | None, new: Decided, rating: int | None) -> dict[str, Any]:
        """What to write to the lead: only what changed."""
        body: dict[str, Any] = {}
        write = self.model.write
        code = RATINGS[new.grade]
        if write.rating and (kept.grade != new.grade if kept else rating != code):
            body[RATING] = code
        if write.score is not None and (kept is None or round(kept.score) != round(new.score)):
            body[write.score] = round(new.score)
        return body

    def _leave(self) -> None:
        """Leads the model no longer scores lose their score (their Rating stays as written)."""
        k, s = dvc.scores, dvc.score_scratch
        with self.session.connect() as conn:
            gone = conn.execute(delete(k).where(
                k.c.model == self.model.name,
                k.c.leadid.not_in(select(s.c.leadid).where(s.c.model == self.model.name)),
            )).rowcount  # fmt: skip
        self.counts.left = int(gone or 0)

    # -- hand-offs ------------------------------------------------------------------------------

    def _hand_off(self) -> None:
        if self.model.hand_off is None or self.calendar is None:
            return
        next_day = stamp(self.calendar.next_day_opening(self.now))  # for owners over their cap
        k, lead = dvc.scores, self.lead
        columns = [lead.c[c] for c in self.ctx.mapping.tables["lead"].columns]
        query = (
            select(k.c.leadid, k.c.score, k.c.grade, k.c.ready_since, *columns)
            .join(lead, lead.c.leadid == k.c.leadid)
            .where(k.c.model == self.model.name, k.c.handoff_due <= self.at,
                   k.c.ready_since.is_not(None))
        )  # fmt: skip
        after = ""
        while True:
            with self.session.connect() as conn:
                rows = conn.execute(
                    query.where(k.c.leadid > after).order_by(k.c.leadid).limit(CHUNK)
                ).mappings().all()  # fmt: skip
                if not rows:
                    return
                after = rows[-1]["leadid"]
                reasons = self._reasons(conn, [row["leadid"] for row in rows])
                intents, waiting = [], []
                for row in rows:
                    intent = self._one_hand_off(conn, dict(row), reasons.get(row["leadid"], []))
                    if intent is None:
                        waiting.append({"lead": row["leadid"]})
                    else:
                        intents.append(intent)
                if waiting:  # their owner's cap is reached: the next business day
                    conn.execute(update(k).where(
                        k.c.model == self.model.name, k.c.leadid == bindparam("lead")
                    ).values(handoff_due=next_day), waiting)  # fmt: skip
                if intents and not self.session.dry:
                    record(conn, intents, now=self.at, run_id=self.ctx.run_id)

    def _one_hand_off(self, conn: Connection, row: dict[str, Any],
                      reasons: list[str]) -> Intent | None:  # fmt: skip
        """The hand-off of one lead, or None when its owner's cap for the day is reached."""
        hand_off, calendar = self.model.hand_off, self.calendar
        assert hand_off is not None
        assert calendar is not None
        owner, owner_type = row.get("_ownerid_value"), row.get("owneridtype") or "systemuser"
        day = calendar.day(self.now).isoformat()
        if owner and self._capped(conn, owner, day):
            self.counts.capped += 1
            return None
        table = hand_off.activity
        crossing = f"{self.model.name}/{row['leadid']}/{row['ready_since']}"
        record_id = str(uuid.uuid5(SCORING_NAMESPACE, crossing))
        due = calendar.place(calendar.add(self.now, hand_off.due))
        values = {"lead": row, "contact": {}, "owner": {}}
        try:
            subject = render(hand_off.subject, values)
        except TemplateProblem as problem:
            subject = f"Sales-ready lead ({problem})"
        said = "; ".join(reasons) or "no contribution recorded"
        description = (f"Score {row['score']:g} ({row['grade']}) in the {self.model.name} "
                       f"model, sales-ready from {self.model.sales_ready}: {said}.")  # fmt: skip
        body: dict[str, Any] = {
            "activityid": record_id,
            "subject": subject[:200],
            "description": description,
            "scheduledend": stamp(due),
            f"regardingobjectid_lead_{table}@odata.bind": f"/leads({row['leadid']})",
        }
        if owner:
            entity_set = "teams" if owner_type == "team" else "systemusers"
            body["ownerid@odata.bind"] = f"/{entity_set}({owner})"
        if table == "phonecall":
            body["directioncode"] = True
        conn.execute(insert(dvc.handoffs).values(
            model=self.model.name, leadid=row["leadid"], ready_since=row["ready_since"],
            at=self.at, table_name=table, record_id=record_id, owner_id=owner, day=day,
            score=row["score"], reasons=json.dumps(reasons),
        ))  # fmt: skip
        k = dvc.scores
        mine = and_(k.c.model == self.model.name, k.c.leadid == row["leadid"])
        conn.execute(update(k).where(mine).values(handoff_due=None, handed_off_at=self.at))
        if owner:
            self._caps[(owner, day)] += 1
        self.counts.handed_off += 1
        if self.session.dry and len(self.counts.handoffs) < SHOWN:
            self.counts.handoffs.append({
                "lead": row["leadid"], "table": table, "id": record_id, "owner": owner,
                "subject": body["subject"], "due": body["scheduledend"], "reasons": reasons,
            })  # fmt: skip
        return Intent(f"{JOB}/{crossing}/handoff", JOB, "create", table, f"{table}s",
                      "activityid", record_id, body)  # fmt: skip

    def _capped(self, conn: Connection, owner: str, day: str) -> bool:
        limit = self.model.hand_off.per_owner_per_day if self.model.hand_off else None
        if limit is None:
            return False
        key = (owner, day)
        if key not in self._caps_loaded:
            h = dvc.handoffs.c
            made = conn.execute(select(func.count()).where(
                h.model == self.model.name, h.owner_id == owner, h.day == day
            )).scalar_one()  # fmt: skip
            self._caps[key] = int(made)
            self._caps_loaded.add(key)
        return self._caps[key] >= limit

    def _reasons(self, conn: Connection, leads: list[str]) -> dict[str, list[str]]:
        """Each lead's reasons, from its contributions that count now: the rule's words, with
        how many times for a rule counted per record."""
        c = dvc.score_contributions.c
        weight = self._weight()
        rows = conn.execute(
            select(c.leadid, c.rule, func.count())
            .where(c.model == self.model.name, c.leadid.in_(leads), weight > 0)
            .group_by(c.leadid, c.rule)
        ).all()
        rules = {rule.id: (position, rule) for position, rule in enumerate(self.model.rules)}
        found: dict[str, list[tuple[int, str]]] = {}
        for leadid, rule_id, n in rows:
            if rule_id not in rules:
                continue
            position, rule = rules[rule_id]
            times = "" if n == 1 or rule.per == "lead" else " twice" if n == 2 else f" {n} times"
            sign = "" if rule.points > 0 else " (counts against)"
            found.setdefault(leadid, []).append((position, f"{rule.reason}{times}{sign}"))
        return {lead: [text for _, text in sorted(items)] for lead, items in found.items()}


# -- what `dvconnect scoring show|top` print (read-only) --------------------------------------


def lead_scores(ctx: Context, leadid: str) -> list[dict[str, Any]]:
    """A lead's score in every model: grade, sales-ready, hand-offs and each contribution."""
    leadid = leadid.strip().strip("{}").lower()
    if not ctx.store.exists:
        return []
    k, c, h = dvc.scores.c, dvc.score_contributions.c, dvc.handoffs.c
    shown = []
    with ctx.store.engine.connect() as conn:
        for row in conn.execute(select(dvc.scores).where(k.leadid == leadid)).mappings():
            model = ctx.mapping.models.get(row["model"])
            rules = {r.id: r for r in model.rules} if model else {}
            contributions = [
                {"rule": rule, "record": record or None, "since": at,
                 "points": rules[rule].points if rule in rules else None,
                 "reason": rules[rule].reason if rule in rules else None}
                for rule, record, at in conn.execute(
                    select(c.rule, c.record_id, c.at)
                    .where(c.model == row["model"], c.leadid == leadid).order_by(c.rule, c.at)
                )
            ]  # fmt: skip
            handed = [dict(r) for r in conn.execute(
                select(h.at, h.table_name, h.record_id, h.owner_id, h.score, h.reasons)
                .where(h.model == row["model"], h.leadid == leadid).order_by(h.at)
            ).mappings()]  # fmt: skip
            for item in handed:
                item["reasons"] = json.loads(item["reasons"])
            shown.append({**dict(row), "contributions": contributions, "hand_offs": handed})
    return shown


def top(ctx: Context, name: str, grade: str | None, limit: int) -> list[dict[str, Any]]:
    """A model's best-scored leads (of one grade), with their topic and owner."""
    model_named(ctx, name)
    if not ctx.store.exists:
        return []
    k, lead = dvc.scores.c, ctx.store.tables["lead"]
    query = (
        select(k.leadid, k.score, k.grade, k.ready_since, lead.c.subject, lead.c._ownerid_value)
        .join(lead, lead.c.leadid == k.leadid)
        .where(k.model == name)
        .order_by(k.score.desc(), k.leadid)
        .limit(limit)
    )
    if grade is not None:
        query = query.where(k.grade == grade)
    with ctx.store.engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


def scoring_status(ctx: Context, days: int = 7) -> dict[str, Any]:
    """Per model: leads by grade, sales-ready, and hand-offs per day over the last `days`."""
    if not ctx.store.exists or not ctx.mapping.models:
        return {}
    k, h = dvc.scores.c, dvc.handoffs.c
    since = stamp(ctx.clock.now() - timedelta(days=days))
    status = {}
    with ctx.store.engine.connect() as conn:
        for name in ctx.mapping.models:
            grades: dict[str, int] = dict(conn.execute(
                select(k.grade, func.count()).where(k.model == name).group_by(k.grade)
            ).all())  # fmt: skip
            ready = conn.execute(
                select(func.count()).where(k.model == name, k.ready_since.is_not(None))
            ).scalar_one()
            per_day: dict[str, int] = dict(conn.execute(
                select(h.day, func.count()).where(h.model == name, h.at >= since)
                .group_by(h.day).order_by(h.day)
            ).all())  # fmt: skip
            status[name] = {
                "grades": {g: int(n) for g, n in grades.items()},
                "sales_ready": int(ready),
                "hand_offs_per_day": {d: int(n) for d, n in per_day.items()},
            }
    return status
