"""The outbox: the one way dvconnect writes into Dataverse, exactly once.

A job records each write as an `Intent` — a deterministic record id, what to write, what it must
wait for — in the same transaction as the state it follows from (a link chosen, a journey
member's step). `Outbox.drain` then sends what is pending, in waves, a bounded chunk at a time
(memory does not grow with the number of intents):

* **create**: `CreateMultiple` on tables whose bulk messages the org supports (the §10.3 probe),
  otherwise one `POST` per record in a `$batch`; the id is in the body, so a create that
  already happened (a lost response, a re-run after a crash) answers "duplicate key" and counts
  as done — a record is never created twice;
* **update**: `UpdateMultiple`, otherwise `PATCH` with `If-Match: *` (a deleted record is never
  re-created);
* **action** (`SendEmail`, `ExecuteWorkflow`, …, bound to the record): first the intent's guard,
  a read that shows whether an earlier attempt already did it (only a draft e-mail is sent), then
  one `$batch` operation per record. Actions are not repeated blindly: when the answer is lost
  (a dropped connection, a gateway error), the intent stays pending and its guard decides at the
  next try — up to `ACTION_TRIES` in one drain, then at the next run; an action without a guard
  is tried once per run (at least once, possibly twice when an answer is lost).

An intent waits for the intent named in its `after` to be done, and fails when that one fails.
A bulk request refused because of a record is redone record by record, so every intent gets its
own outcome: done (with a tick that orders it against sync reads, see `connector.tables`) or
failed with status, code, message and request id. Failures of the service itself (throttling
beyond the retries, an outage, authentication) are raised: the intents stay pending for the
next run.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from sqlalchemy import Connection, Select, and_, case, exists, func, or_, select, true, update

from connector import tables as dvc
from connector.batch import MAX_OPERATIONS, Operation, PartOutcome
from connector.dataverse import Dataverse
from connector.errors import DataverseError, ThrottledError, UnavailableError, UnreachableError
from connector.odata import entity_path
from connector.store import Store

log = logging.getLogger("dvconnect.outbox")

Kind = Literal["create", "update", "action"]
DUPLICATE_KEY = "0x80040237"  # the record's id exists already: an earlier create went through
GUARD_READ = 250  # values per guard read: its URL stays far below Dataverse's 32 KB
ACTION_TRIES = 5  # sends of a guarded action whose answer is lost, in one drain, guard first
RECORD_READ = 500  # keys per lookup of intents already recorded (below SQLite's 999 variables)
_BOUND = "Microsoft.Dynamics.CRM."


@dataclass(frozen=True)
class Guard:
    """A read done before an action: the action was already done when `entity_set` has a row
    whose `column` is `value` and that meets `condition` (an OData filter).

    Guards that differ only by value are read together, `GUARD_READ` values per request, with
    `Microsoft.Dynamics.CRM.In`: one request (and one service-protection operation) for
    hundreds of actions. `read_as` is how the column comes back in rows (`_x_value` for a
    lookup).
    """

    entity_set: str
    column: str
    read_as: str
    value: str
    condition: str


@dataclass(frozen=True)
class Intent:
    """One write to make: `record_id` is deterministic, `key` names the intent for good."""

    key: str
    job: str
    kind: Kind
    table: str  # logical name
    entity_set: str
    primary_key: str
    record_id: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    action: str | None = None  # for kind "action": the bound action's name
    after: str | None = None  # the key of the intent that must be done first
    guard: Guard | None = None


@dataclass(frozen=True)
class Outcome:
    """What happened to an intent that failed."""

    key: str
    record_id: str
    after: str | None
    status: int
    code: str
    message: str
    request_id: str


@dataclass
class DrainResult:
    """What one drain did: intents done (by kind) and failed (with their errors), and those
    left pending."""

    done: Counter[str] = field(default_factory=Counter)
    failed: list[Outcome] = field(default_factory=list)
    pending: int = 0
    requests: int = 0


def record_level(exc: DataverseError) -> bool:
    """A refusal caused by some record of a request (not auth, throttling or an outage)."""
    return exc.exit_code == 1 and not isinstance(exc, ThrottledError)


def record(
    conn: Connection, intents: Iterable[Intent], *, now: str, run_id: int | None,
    renew_seen: dict[str, int | None] | None = None,
) -> list[str]:  # fmt: skip
    """Record intents in the caller's transaction; returns the keys new or renewed.

    An intent whose key exists is left as it is — it is pending, or was sent — unless
    `renew_seen` gives its table's `seen_tick`: then one that failed, or that a sync read after
    it was done, becomes pending again with the new content (the caller found it needed again
    in a store that already holds its effect, so the effect was undone since).
    """
    o = dvc.outbox.c
    fresh: dict[str, dict[str, Any]] = {}
    for intent in intents:
        fresh.setdefault(intent.key, {
            "key": intent.key, "job": intent.job, "kind": intent.kind,
            "table_name": intent.table, "entity_set": intent.entity_set,
            "primary_key": intent.primary_key, "record_id": intent.record_id,
            "action": intent.action, "body": json.dumps(intent.body, sort_keys=True),
            "headers": json.dumps(intent.headers, sort_keys=True), "after": intent.after,
            "guard": json.dumps(asdict(intent.guard)) if intent.guard else None,
            "status": "pending", "attempts": 0, "error": None, "created_at": now,
            "done_at": None, "done_tick": None, "run_id": run_id,
        })  # fmt: skip
    existing = {}
    keys = list(fresh)
    for start in range(0, len(keys), RECORD_READ):
        chunk = keys[start : start + RECORD_READ]
        query = select(o.key, o.status, o.done_tick, o.table_name).where(o.key.in_(chunk))
        existing.update({row.key: row for row in conn.execute(query)})
    new = [values for key, values in fresh.items() if key not in existing]
    if new:
        conn.execute(dvc.outbox.insert(), new)
    renewed = []
    for key, row in existing.items():
        if renew_seen is None or row.table_name not in renew_seen:
            continue
        seen = renew_seen[row.table_name]
        settled = row.status == "done" and seen is not None and row.done_tick <= seen
        if row.status == "failed" or settled:
            values = {k: v for k, v in fresh[key].items() if k != "key"}
            conn.execute(dvc.outbox.update().where(o.key == key).values(**values))
            renewed.append(key)
    return [key for key in keys if key not in existing or key in renewed]


def in_flight(job: str, table: str, seen_tick: int | None) -> Select[Any]:
    """Record ids `job` is writing on `table` that a sync has not read back yet: intents
    pending, or done after the table's last completed read began."""
    o = dvc.outbox.c
    unseen = true() if seen_tick is None else o.done_tick > seen_tick
    sent = and_(o.status == "done", unseen)
    return select(o.record_id).where(
        o.job == job, o.table_name == table, or_(o.status == "pending", sent)
    )


class Outbox:
    """Intents in `dvc_outbox`, and the sending of them through one Dataverse client."""

    def __init__(
        self, store: Store, dataverse: Dataverse, *, chunk: int = 1000, bulk: bool = True
    ) -> None:
        self.store = store
        self.dataverse = dataverse
        self.chunk = min(chunk, MAX_OPERATIONS)
        self.bulk = bulk

    # -- sending ------------------------------------------------------------------------------

    def drain(self, job: str, stop: Callable[[], bool] = lambda: False) -> DrainResult:
        """Send every pending intent of `job` that can be sent now; see the module docstring."""
        result = DrainResult()
        sent_before = self.dataverse.requests_sent
        tries: Counter[int] = Counter()  # actions whose answer was lost, by intent
        held: set[int] = set()  # left for the next drain: no guard, or tried enough
        while not stop():
            self._fail_dependents(job, result)
            wave = self._next_chunk(job, held)
            if not wave:
                break
            outcomes = self._send(wave)
            for row in wave:
                if row["intent_id"] in outcomes:
                    continue
                tries[row["intent_id"]] += 1  # its guard decides at the next try
                if not row["guard"] or tries[row["intent_id"]] >= ACTION_TRIES:
                    held.add(row["intent_id"])
            self._record(wave, outcomes, result)
        self._fail_dependents(job, result)
        result.pending = self.pending(job)
        result.requests = self.dataverse.requests_sent - sent_before
        return result

    def pending(self, job: str) -> int:
        o = dvc.outbox.c
        with self.store.engine.connect() as conn:
            query = select(func.count()).where(o.job == job, o.status == "pending")
            return int(conn.execute(query).scalar_one())

    def _fail_dependents(self, job: str, result: DrainResult) -> None:
        """Intents waiting for one that failed fail too (repeated: chains of them)."""
        o, before = dvc.outbox.c, dvc.outbox.alias("before")
        while True:
            with self.store.transaction() as conn:
                failed = conn.execute(
                    select(o.intent_id, o.key, o.record_id, o.after)
                    .join(before, before.c.key == o.after)
                    .where(o.job == job, o.status == "pending", before.c.status == "failed")
                ).all()
                for intent_id, key, record_id, after in failed:
                    message = f"not sent: {after} failed before it"
                    result.failed.append(Outcome(key, record_id, after, 424, "", message, ""))
                    error = {"status": 424, "code": "", "message": message, "request_id": ""}
                    conn.execute(
                        update(dvc.outbox)
                        .where(o.intent_id == intent_id)
                        .values(status="failed", error=json.dumps(error))
                    )
            if not failed:
                return

    def _next_chunk(self, job: str, skip: set[int]) -> list[dict[str, Any]]:
        """Up to `chunk` pending intents that can go now, all of one kind, table and action."""
        o, before = dvc.outbox.c, dvc.outbox.alias("before")
        ready = and_(
            o.job == job,
            o.status == "pending",
            or_(
                o.after.is_(None),
                exists().where(before.c.key == o.after, before.c.status == "done"),
            ),
        )
        if skip:
            ready = and_(ready, o.intent_id.not_in(sorted(skip)))
        with self.store.engine.connect() as conn:
            # creates first, then updates, then actions: what waits on a create goes in one wave
            order = case({"create": 0, "update": 1}, value=o.kind, else_=2)
            first = conn.execute(
                select(o.kind, o.table_name, o.action, o.headers)
                .where(ready)
                .order_by(order, o.intent_id)
                .limit(1)
            ).first()
            if first is None:
                return []
            same = and_(
                ready,
                o.kind == first.kind,
                o.table_name == first.table_name,
                o.headers == first.headers,
                o.action.is_(None) if first.action is None else o.action == first.action,
            )
            rows = conn.execute(
                select(dvc.outbox).where(same).order_by(o.intent_id).limit(self.chunk)
            ).mappings()  # fmt: skip
            return [dict(row) for row in rows]

    def _send(self, wave: list[dict[str, Any]]) -> dict[int, DataverseError | None]:
        """Send one chunk; returns the outcome of each intent confirmed done (None) or failed."""
        first = wave[0]
        headers = json.loads(first["headers"])
        if first["kind"] == "action":
            return self._actions(wave, headers)
        message = "CreateMultiple" if first["kind"] == "create" else "UpdateMultiple"
        if self.bulk and self.dataverse.supports(first["table_name"], message):
            targets = [{**json.loads(row["body"]), row["primary_key"]: row["record_id"]}
                       for row in wave]  # fmt: skip
            try:
                self.dataverse.bulk(
                    first["table_name"], first["entity_set"], message, targets, headers=headers
                )
            except DataverseError as exc:
                if not record_level(exc):
                    raise
                log.warning(
                    "%s of %d %s refused (%s): sending them one by one",
                    message, len(wave), first["table_name"], exc,
                )  # fmt: skip
            else:
                return {row["intent_id"]: None for row in wave}
        operations = [self._operation(row, headers) for row in wave]
        return self._one_by_one(wave, operations, safe=True)

    def _operation(self, row: dict[str, Any], headers: dict[str, str]) -> Operation:
        body = json.loads(row["body"])
        if row["kind"] == "create":
            return Operation(
                "POST", row["entity_set"], {**body, row["primary_key"]: row["record_id"]},
                headers=tuple(headers.items()),
            )  # fmt: skip
        return Operation(
            "PATCH", entity_path(row["entity_set"], row["record_id"]), body,
            headers=(*headers.items(), ("If-Match", "*")),
        )  # fmt: skip

    def _actions(
        self, wave: list[dict[str, Any]], headers: dict[str, str]
    ) -> dict[int, DataverseError | None]:
        results: dict[int, DataverseError | None] = {}
        guarded = [(row, Guard(**json.loads(row["guard"]))) for row in wave if row["guard"]]
        found = self._guards_read([guard for _, guard in guarded])
        for row, guard in guarded:
            read = (guard.entity_set, guard.column, guard.condition, guard.value)
            if read in found:  # done by an earlier attempt (None), or its guard was refused
                results[row["intent_id"]] = found[read]
        to_send = [row for row in wave if row["intent_id"] not in results]
        if not to_send:
            return results
        operations = [
            Operation(
                "POST",
                f"{entity_path(row['entity_set'], row['record_id'])}/{_BOUND}{row['action']}",
                json.loads(row["body"]),
                headers=tuple(headers.items()),
            )
            for row in to_send
        ]
        try:
            results.update(self._one_by_one(to_send, operations, safe=False))
        except (UnreachableError, UnavailableError) as exc:  # lost, or maybe done: never resent
            log.warning("%d %s actions unconfirmed (%s)", len(to_send), wave[0]["action"], exc)
        return results

    def _guards_read(
        self, guards: list[Guard]
    ) -> dict[tuple[str, str, str, str], DataverseError | None]:
        """Read the guards, one request per kind of guard and `GUARD_READ` values: those that
        find their row (None), and those whose read Dataverse refused (the error)."""
        found: dict[tuple[str, str, str, str], DataverseError | None] = {}
        kinds: dict[tuple[str, str, str, str], list[str]] = {}
        for guard in guards:
            kind = (guard.entity_set, guard.column, guard.read_as, guard.condition)
            kinds.setdefault(kind, []).append(guard.value)
        for (entity_set, column, read_as, condition), values in kinds.items():
            for start in range(0, len(values), GUARD_READ):
                chunk = sorted(set(values[start : start + GUARD_READ]))
                quoted = ",".join(f"'{value}'" for value in chunk)
                wanted = (
                    f"Microsoft.Dynamics.CRM.In(PropertyName='{column}',"
                    f"PropertyValues=[{quoted}]) and ({condition})"
                )
                try:
                    rows = list(self.dataverse.rows(entity_set, [read_as], wanted))
                except DataverseError as exc:
                    if not record_level(exc):
                        raise
                    found.update({(entity_set, column, condition, v): exc for v in chunk})
                    continue
                for row in rows:
                    found[(entity_set, column, condition, str(row.get(read_as)))] = None
        return found

    def _one_by_one(
        self, wave: list[dict[str, Any]], operations: list[Operation], *, safe: bool
    ) -> dict[int, DataverseError | None]:
        results: dict[int, DataverseError | None] = {}
        for row, outcome in zip(wave, self._batch(operations, safe=safe), strict=True):
            error = outcome.error
            if error is not None and row["kind"] == "create" and error.code == DUPLICATE_KEY:
                error = None  # created by an earlier attempt
            results[row["intent_id"]] = error
        return results

    def _batch(self, operations: Sequence[Operation], *, safe: bool) -> list[PartOutcome]:
        outcomes: list[PartOutcome] = []
        for start in range(0, len(operations), MAX_OPERATIONS):
            part = list(operations[start : start + MAX_OPERATIONS])
            outcomes += self.dataverse.batch(part, safe=safe)
        return outcomes

    def _record(
        self,
        wave: list[dict[str, Any]],
        outcomes: dict[int, DataverseError | None],
        result: DrainResult,
    ) -> None:
        """Mark each confirmed intent done or failed, in one transaction (with one tick)."""
        o = dvc.outbox.c
        with self.store.transaction() as conn:
            tick = self.store.next_tick(conn)
            now = self.store.clock.stamp()
            for row in wave:
                intent_id = row["intent_id"]
                attempts = row["attempts"] + 1
                if intent_id not in outcomes:
                    conn.execute(
                        update(dvc.outbox).where(o.intent_id == intent_id).values(attempts=attempts)
                    )
                    continue
                error = outcomes[intent_id]
                if error is None:
                    values: dict[str, Any] = {"status": "done", "done_at": now, "done_tick": tick}
                    result.done[row["kind"]] += 1
                else:
                    failure = Outcome(row["key"], row["record_id"], row["after"], error.status,
                                      error.code, error.message, error.request_id)  # fmt: skip
                    result.failed.append(failure)
                    values = {"status": "failed", "done_at": now, "error": json.dumps(
                        {"status": error.status, "code": error.code, "message": error.message,
                         "request_id": error.request_id})}  # fmt: skip
                conn.execute(
                    update(dvc.outbox)
                    .where(o.intent_id == intent_id)
                    .values(attempts=attempts, **values)
                )


def pending_by_job(store: Store) -> dict[str, int]:
    """How many intents each job has recorded and not yet sent (for `status`)."""
    if not store.exists:
        return {}
    o = dvc.outbox.c
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(o.job, func.count()).where(o.status == "pending").group_by(o.job)
        ).all()
    return {job: int(count) for job, count in rows}
