"""The outbox over a scripted Dataverse: what it sends, in which waves, and what it records.

Written for `make mutate`: the outbox had no unit test, so none of its mutants was judged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from connector import tables as dvc
from connector.batch import MAX_OPERATIONS, Operation, PartOutcome, PartResponse
from connector.clock import Clock
from connector.errors import (
    BadRequestError,
    DataverseError,
    ThrottledError,
    UnauthorizedError,
    UnreachableError,
)
from connector.mapping import load_mapping
from connector.outbox import (
    ACTION_TRIES,
    DUPLICATE_KEY,
    Guard,
    Intent,
    Outbox,
    Outcome,
    in_flight,
    pending_by_job,
    record,
    record_level,
)
from connector.store import Store
from tests.paths import MAPPINGS

NOW = datetime(2024, 3, 2, 12, 0, tzinfo=UTC)
STAMP = "2024-03-02T12:00:00Z"


class ScriptedDataverse:
    """Answers bulk and $batch requests as scripted, and records what was sent."""

    def __init__(self, bulk_tables: Sequence[str] = ()) -> None:
        self.bulk_tables = set(bulk_tables)
        self.requests_sent = 0
        self.bulk_calls: list[tuple[str, str, str, list[dict[str, Any]], dict[str, str]]] = []
        self.batches: list[tuple[list[Operation], bool]] = []
        self.bulk_error: DataverseError | None = None
        self.errors: dict[str, DataverseError] = {}  # by a substring of the operation's URL/body
        self.found: set[str] = set()  # guarded values whose guard finds a row
        self.reads: list[tuple[str, list[str], str]] = []  # guard reads: set, select, filter
        self.lost: Exception | None = None  # raised by the next batch of actions

    def supports(self, table: str, message: str) -> bool:
        return table in self.bulk_tables and message in ("CreateMultiple", "UpdateMultiple")

    def bulk(
        self,
        table: str,
        entity_set: str,
        message: str,
        targets: list[dict[str, Any]],
        *,
        headers: dict[str, str],
    ) -> None:
        self.requests_sent += 1
        self.bulk_calls.append((table, entity_set, message, targets, headers))
        if self.bulk_error is not None:
            raise self.bulk_error

    def rows(self, entity_set: str, select: list[str], filter: str) -> Iterator[dict[str, Any]]:
        self.requests_sent += 1
        self.reads.append((entity_set, select, filter))
        error = next(
            (e for part, e in self.errors.items() if part in f"{entity_set}?{filter}"), None
        )
        if error is not None:
            raise error
        yield from ({select[0]: value} for value in sorted(self.found) if f"'{value}'" in filter)

    def batch(self, operations: list[Operation], *, safe: bool) -> list[PartOutcome]:
        self.requests_sent += 1
        self.batches.append((list(operations), safe))
        if self.lost is not None and any(
            op.method == "POST" and "/" in op.url for op in operations
        ):
            raise self.lost
        outcomes = []
        for op in operations:
            text = op.url + json.dumps(op.body, sort_keys=True)
            error = next((e for part, e in self.errors.items() if part in text), None)
            if error is not None:
                outcomes.append(PartOutcome((), error))
            elif op.method == "GET":
                rows = [{"id": 1}] if any(f in op.url for f in self.found) else []
                body = json.dumps({"value": rows}).encode()
                outcomes.append(PartOutcome((PartResponse(200, {}, body, None),), None))
            else:
                outcomes.append(PartOutcome((PartResponse(204, {}, b"", None),), None))
        return outcomes


@pytest.fixture
def store(database_url: str) -> Store:
    store = Store(database_url, load_mapping(MAPPINGS), Clock(NOW))
    store.prepare()
    return store


def rid(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


def create(n: int, *, job: str = "j", table: str = "contact", **more: Any) -> Intent:
    entity_set = "contacts" if table == "contact" else table + "s"
    body = more.pop("body", {"lastname": f"n{n}"})
    return Intent(f"c{n}", job, "create", table, entity_set, table + "id", rid(n), body, **more)


def change(n: int, **more: Any) -> Intent:
    body = more.pop("body", {"jobtitle": f"t{n}"})
    return Intent(f"u{n}", "j", "update", "contact", "contacts", "contactid", rid(n), body, **more)


def sent_guard(n: int) -> Guard:
    """The guard of e-mail `n`'s send: it is sent once it is no longer a draft."""
    return Guard("emails", "activityid", "activityid", rid(n), "statuscode ne 1")


def in_filter(*numbers: int) -> str:
    values = ",".join(f"'{rid(n)}'" for n in numbers)
    return (f"Microsoft.Dynamics.CRM.In(PropertyName='activityid',PropertyValues=[{values}]) "
            "and (statuscode ne 1)")  # fmt: skip


def act(n: int, guard: Guard | None = None, action: str = "SendEmail", **more: Any) -> Intent:
    return Intent(
        f"a{n}", "j", "action", "email", "emails", "activityid", rid(n), {"IssueSend": True},
        action=action, guard=guard, **more,
    )  # fmt: skip


def add(store: Store, *intents: Intent, run_id: int | None = None) -> list[str]:
    with store.transaction() as conn:
        return record(conn, intents, now="2024-03-01T00:00:00Z", run_id=run_id)


def rows(store: Store) -> dict[str, dict[str, Any]]:
    with store.engine.connect() as conn:
        found = conn.execute(select(dvc.outbox)).mappings().all()
    return {row["key"]: dict(row) for row in found}


def status(store: Store) -> dict[str, str]:
    return {key: row["status"] for key, row in rows(store).items()}


def test_a_recorded_intent_keeps_every_field_as_json_and_starts_pending(store: Store) -> None:
    keys = add(store, act(1, sent_guard(1), after="c9", headers={"MSCRM.x": "1"}), run_id=7)
    assert keys == ["a1"]
    row = rows(store)["a1"]
    assert {k: row[k] for k in row if k != "intent_id"} == {
        "key": "a1", "job": "j", "kind": "action", "table_name": "email", "entity_set": "emails",
        "primary_key": "activityid", "record_id": rid(1), "action": "SendEmail",
        "body": '{"IssueSend": true}', "headers": '{"MSCRM.x": "1"}', "after": "c9",
        "guard": json.dumps({"entity_set": "emails", "column": "activityid",
                             "read_as": "activityid", "value": rid(1),
                             "condition": "statuscode ne 1"}),
        "status": "pending", "attempts": 0, "error": None, "created_at": "2024-03-01T00:00:00Z",
        "done_at": None, "done_tick": None, "run_id": 7,
    }  # fmt: skip


def test_an_intent_without_guard_stores_no_guard(store: Store) -> None:
    add(store, create(1))
    assert rows(store)["c1"]["guard"] is None


def test_an_intent_recorded_again_is_left_as_it_is_without_renewal(store: Store) -> None:
    add(store, create(1))
    assert add(store, create(1, body={"lastname": "other"})) == []
    assert json.loads(rows(store)["c1"]["body"]) == {"lastname": "n1"}


def _settle(store: Store, key: str, status: str, tick: int | None) -> None:
    with store.transaction() as conn:
        conn.execute(
            dvc.outbox.update().where(dvc.outbox.c.key == key).values(status=status, done_tick=tick)
        )


def _renew(store: Store, intent: Intent, seen: dict[str, int | None]) -> list[str]:
    with store.transaction() as conn:
        return record(conn, [intent], now="2024-03-05T00:00:00Z", run_id=2, renew_seen=seen)


def test_renewal_makes_a_failed_intent_pending_again_with_the_new_content(store: Store) -> None:
    add(store, create(1))
    _settle(store, "c1", "failed", None)
    assert _renew(store, create(1, body={"lastname": "new"}), {"contact": None}) == ["c1"]
    row = rows(store)["c1"]
    assert (row["status"], json.loads(row["body"]), row["created_at"], row["run_id"]) == (
        "pending", {"lastname": "new"}, "2024-03-05T00:00:00Z", 2,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("done_tick", "seen", "renewed"),
    [(5, 5, True), (4, 5, True), (6, 5, False), (5, None, False)],
)
def test_renewal_makes_a_done_intent_pending_only_once_a_sync_read_after_it(
    store: Store, done_tick: int, seen: int | None, renewed: bool
) -> None:
    add(store, create(1))
    _settle(store, "c1", "done", done_tick)
    assert _renew(store, create(1), {"contact": seen}) == (["c1"] if renewed else [])
    assert status(store)["c1"] == ("pending" if renewed else "done")


def test_renewal_leaves_pending_intents_and_other_tables_alone(store: Store) -> None:
    add(store, create(1), create(2))
    _settle(store, "c2", "failed", None)
    assert _renew(store, create(1, body={"lastname": "x"}), {"contact": 9}) == []
    assert _renew(store, create(2), {"lead": 9}) == []
    assert status(store) == {"c1": "pending", "c2": "failed"}
    assert json.loads(rows(store)["c1"]["body"]) == {"lastname": "n1"}


def test_in_flight_lists_pending_and_unread_done_intents_of_one_job_and_table(
    store: Store,
) -> None:
    add(store, create(1), create(2), create(3), create(4), create(5, job="other"))
    add(store, create(6, table="lead"))
    _settle(store, "c2", "done", 3)
    _settle(store, "c3", "done", 4)
    _settle(store, "c4", "failed", None)
    with store.engine.connect() as conn:
        seen_3 = set(conn.execute(in_flight("j", "contact", 3)).scalars())
        never_seen = set(conn.execute(in_flight("j", "contact", None)).scalars())
    assert seen_3 == {rid(1), rid(3)}
    assert never_seen == {rid(1), rid(2), rid(3)}


def test_a_record_level_refusal_is_one_that_exits_one_and_is_not_throttling() -> None:
    assert record_level(BadRequestError(400, "0x1", "bad"))
    assert not record_level(ThrottledError(429, "0x2", "slow down"))
    assert not record_level(UnauthorizedError(401, "", "no"))


def test_creates_go_in_one_bulk_request_with_their_ids_and_are_marked_done_with_a_tick(
    store: Store,
) -> None:
    add(store, create(1), create(2, headers={}))
    dataverse = ScriptedDataverse(bulk_tables=["contact"])
    result = Outbox(store, dataverse).drain("j")  # type: ignore[arg-type]
    assert dataverse.bulk_calls == [
        ("contact", "contacts", "CreateMultiple",
         [{"lastname": "n1", "contactid": rid(1)}, {"lastname": "n2", "contactid": rid(2)}], {}),
    ]  # fmt: skip
    assert dataverse.batches == []
    assert (dict(result.done), result.failed, result.pending, result.requests) == (
        {"create": 2}, [], 0, 1,
    )  # fmt: skip
    done = rows(store)
    assert [(r["status"], r["attempts"], r["done_at"]) for r in done.values()] == [
        ("done", 1, STAMP), ("done", 1, STAMP)
    ]  # fmt: skip
    assert done["c1"]["done_tick"] == done["c2"]["done_tick"] is not None


def test_updates_use_update_multiple_when_the_table_supports_it(store: Store) -> None:
    add(store, change(1))
    dataverse = ScriptedDataverse(bulk_tables=["contact"])
    Outbox(store, dataverse).drain("j")  # type: ignore[arg-type]
    assert [call[2] for call in dataverse.bulk_calls] == ["UpdateMultiple"]


def test_without_bulk_creates_post_with_the_id_and_updates_patch_with_if_match(
    store: Store,
) -> None:
    add(store, change(2, headers={"MSCRM.SuppressDuplicateDetection": "false"}), create(1))
    dataverse = ScriptedDataverse(bulk_tables=["contact"])
    result = Outbox(store, dataverse, bulk=False).drain("j")  # type: ignore[arg-type]
    assert dataverse.bulk_calls == []
    assert dataverse.batches == [
        ([Operation("POST", "contacts", {"lastname": "n1", "contactid": rid(1)})], True),
        ([Operation("PATCH", f"contacts({rid(2)})", {"jobtitle": "t2"},
                    headers=(("MSCRM.SuppressDuplicateDetection", "false"),
                             ("If-Match", "*")))], True),
    ]  # fmt: skip
    assert dict(result.done) == {"create": 1, "update": 1}
    assert result.requests == 2


def test_a_table_without_bulk_messages_is_sent_in_a_batch(store: Store) -> None:
    add(store, create(1))
    dataverse = ScriptedDataverse(bulk_tables=["lead"])
    Outbox(store, dataverse).drain("j")  # type: ignore[arg-type]
    assert (dataverse.bulk_calls, len(dataverse.batches)) == ([], 1)


def test_a_bulk_request_refused_for_a_record_is_redone_one_by_one(store: Store) -> None:
    add(store, create(1), create(2))
    dataverse = ScriptedDataverse(bulk_tables=["contact"])
    dataverse.bulk_error = BadRequestError(400, "0x1", "bad value")
    dataverse.errors["n2"] = BadRequestError(400, "0x1", "bad value", "req-2")
    result = Outbox(store, dataverse).drain("j")  # type: ignore[arg-type]
    assert [op.body for op in dataverse.batches[0][0]] == [
        {"lastname": "n1", "contactid": rid(1)}, {"lastname": "n2", "contactid": rid(2)}
    ]  # fmt: skip
    assert dict(result.done) == {"create": 1}
    assert [(f.key, f.status, f.code, f.message, f.request_id) for f in result.failed] == [
        ("c2", 400, "0x1", "bad value", "req-2")
    ]
    failed = rows(store)["c2"]
    assert (failed["status"], failed["attempts"], failed["done_at"], failed["done_tick"]) == (
        "failed", 1, STAMP, None,
    )  # fmt: skip
    assert json.loads(failed["error"]) == {
        "status": 400, "code": "0x1", "message": "bad value", "request_id": "req-2"
    }  # fmt: skip


@pytest.mark.parametrize(
    "error",
    [ThrottledError(429, "0x80072322", "slow down"), UnauthorizedError(401, "", "no")],
)
def test_a_bulk_request_refused_by_the_service_is_raised_and_the_intents_stay_pending(
    store: Store, error: DataverseError
) -> None:
    add(store, create(1))
    dataverse = ScriptedDataverse(bulk_tables=["contact"])
    dataverse.bulk_error = error
    with pytest.raises(type(error)):
        Outbox(store, dataverse).drain("j")  # type: ignore[arg-type]
    assert (status(store), dataverse.batches) == ({"c1": "pending"}, [])


def test_a_duplicate_key_means_an_earlier_create_went_through(store: Store) -> None:
    add(store, create(1), change(2))
    dataverse = ScriptedDataverse()
    dataverse.errors[rid(1)] = BadRequestError(412, DUPLICATE_KEY, "exists")
    dataverse.errors[rid(2)] = BadRequestError(412, DUPLICATE_KEY, "exists")
    result = Outbox(store, dataverse).drain("j")  # type: ignore[arg-type]
    assert status(store) == {"c1": "done", "u2": "failed"}
    assert dict(result.done) == {"create": 1}


def test_an_intent_waits_for_the_one_it_follows_and_fails_when_that_one_fails(
    store: Store,
) -> None:
    add(store, change(1, after="c1"), create(1), change(2, after="c2"), create(2))
    add(store, act(2, after="u2"))
    dataverse = ScriptedDataverse()
    dataverse.errors["n2"] = BadRequestError(400, "0x1", "bad")
    result = Outbox(store, dataverse).drain("j")  # type: ignore[arg-type]
    assert [[op.method for op in ops] for ops, _ in dataverse.batches] == [
        ["POST", "POST"], ["PATCH"]
    ]  # fmt: skip
    assert status(store) == {
        "u1": "done",
        "c1": "done",
        "u2": "failed",
        "c2": "failed",
        "a2": "failed",
    }
    assert [(f.key, f.after, f.status, f.message) for f in result.failed] == [
        ("c2", None, 400, "bad"),
        ("u2", "c2", 424, "not sent: c2 failed before it"),
        ("a2", "u2", 424, "not sent: u2 failed before it"),
    ]
    assert json.loads(rows(store)["a2"]["error"]) == {
        "status": 424, "code": "", "message": "not sent: u2 failed before it", "request_id": ""
    }  # fmt: skip


def test_an_intent_after_one_of_another_job_waits_for_it_without_being_sent(
    store: Store,
) -> None:
    add(store, create(1, job="other"), change(1, after="c1"))
    dataverse = ScriptedDataverse()
    result = Outbox(store, dataverse).drain("j")  # type: ignore[arg-type]
    assert (dataverse.batches, result.pending, status(store)["u1"]) == ([], 1, "pending")


def test_a_wave_holds_one_kind_table_headers_and_action_up_to_the_chunk(store: Store) -> None:
    add(store, create(1), create(2), create(3), create(4, headers={"h": "1"}))
    add(store, create(5, table="lead"), act(6), act(7), act(8, action="Other"))
    dataverse = ScriptedDataverse()
    Outbox(store, dataverse, chunk=2).drain("j")  # type: ignore[arg-type]
    sent = [[op.url.split("/")[-1] for op in ops] for ops, _ in dataverse.batches]
    assert sent == [
        ["contacts", "contacts"], ["contacts"], ["contacts"], ["leads"],
        ["Microsoft.Dynamics.CRM.SendEmail", "Microsoft.Dynamics.CRM.SendEmail"],
        ["Microsoft.Dynamics.CRM.Other"],
    ]  # fmt: skip


def test_the_chunk_is_never_larger_than_a_batch_can_hold(store: Store) -> None:
    assert Outbox(store, ScriptedDataverse(), chunk=5000).chunk == MAX_OPERATIONS  # type: ignore[arg-type]
    assert Outbox(store, ScriptedDataverse(), chunk=10).chunk == 10  # type: ignore[arg-type]


def test_an_action_is_posted_bound_to_its_record_unless_its_guard_finds_it_done(
    store: Store,
) -> None:
    add(store, act(1, sent_guard(1)), act(2, sent_guard(2)), act(3))
    dataverse = ScriptedDataverse()
    dataverse.found.add(rid(1))
    result = Outbox(store, dataverse).drain("j")  # type: ignore[arg-type]
    assert dataverse.reads == [("emails", ["activityid"], in_filter(1, 2))]  # one read for both
    ((posts, post_safe),) = dataverse.batches
    assert posts == [
        Operation("POST", f"emails({rid(n)})/Microsoft.Dynamics.CRM.SendEmail", {"IssueSend": True})
        for n in (2, 3)
    ]
    assert post_safe is False
    assert dict(result.done) == {"action": 3}
    assert set(status(store).values()) == {"done"}


def test_a_refused_guard_read_fails_its_actions_without_sending_them(store: Store) -> None:
    add(store, act(1, sent_guard(1)))
    dataverse = ScriptedDataverse()
    dataverse.errors["emails?"] = BadRequestError(400, "0x1", "bad filter")
    result = Outbox(store, dataverse).drain("j")  # type: ignore[arg-type]
    assert (len(dataverse.reads), dataverse.batches, status(store)) == (1, [], {"a1": "failed"})
    assert [f.message for f in result.failed] == ["bad filter"]


def test_an_action_whose_answer_was_lost_is_tried_again_after_its_guard_then_left_pending(
    store: Store,
) -> None:
    add(store, act(1, sent_guard(1)), create(2))
    dataverse = ScriptedDataverse()
    dataverse.lost = UnreachableError("connection reset")
    result = Outbox(store, dataverse).drain("j")  # type: ignore[arg-type]
    sent = [[op.method for op in ops] for ops, _ in dataverse.batches]
    assert sent == [["POST"]] * (1 + ACTION_TRIES)  # the create, then each try of the action
    assert len(dataverse.reads) == ACTION_TRIES  # each try after its guard
    assert (status(store), rows(store)["a1"]["attempts"], result.pending) == (
        {"a1": "pending", "c2": "done"}, ACTION_TRIES, 1,
    )  # fmt: skip
    dataverse.lost = None
    dataverse.found.add(rid(1))  # one of the lost tries went through
    before = len(dataverse.batches)
    again = Outbox(store, dataverse).drain("j")  # type: ignore[arg-type]
    assert len(dataverse.batches) == before  # its guard finds it done: not sent again
    assert (dict(again.done), status(store)["a1"], rows(store)["a1"]["attempts"]) == (
        {"action": 1}, "done", ACTION_TRIES + 1,
    )  # fmt: skip


def test_a_stopped_drain_sends_nothing_more(store: Store) -> None:
    add(store, create(1), change(2))
    dataverse = ScriptedDataverse()
    calls = iter([False, True])
    result = Outbox(store, dataverse).drain("j", stop=lambda: next(calls))  # type: ignore[arg-type]
    assert (len(dataverse.batches), result.pending, dict(result.done)) == (1, 1, {"create": 1})


def test_a_drain_sends_only_its_own_job(store: Store) -> None:
    add(store, create(1), create(2, job="other"))
    dataverse = ScriptedDataverse()
    result = Outbox(store, dataverse).drain("j")  # type: ignore[arg-type]
    assert status(store) == {"c1": "done", "c2": "pending"}
    assert (result.pending, Outbox(store, dataverse).pending("other")) == (0, 1)  # type: ignore[arg-type]


def test_more_operations_than_a_batch_holds_go_in_several_batches(store: Store) -> None:
    count = MAX_OPERATIONS + 1
    add(store, *(act(n) for n in range(count)))
    dataverse = ScriptedDataverse()
    outbox = Outbox(store, dataverse)  # type: ignore[arg-type]
    outcomes = outbox._batch([Operation("GET", f"x{n}") for n in range(count)], safe=True)
    assert [len(ops) for ops, _ in dataverse.batches] == [MAX_OPERATIONS, 1]
    assert len(outcomes) == count


def test_pending_by_job_counts_what_each_job_has_not_sent(store: Store, tmp_path: Any) -> None:
    add(store, create(1), create(2), create(3, job="other"), create(4, job="done"))
    _settle(store, "c4", "done", 1)
    assert pending_by_job(store) == {"j": 2, "other": 1}
    missing = Store(f"sqlite:///{tmp_path / 'missing.sqlite3'}", store.mapping)
    assert pending_by_job(missing) == {}


def test_bodies_and_headers_are_stored_with_sorted_keys(store: Store) -> None:
    add(store, create(1, body={"b": 1, "a": 2}, headers={"y": "1", "x": "2"}))
    row = rows(store)["c1"]
    assert (row["body"], row["headers"]) == ('{"a": 2, "b": 1}', '{"x": "2", "y": "1"}')


def test_a_batch_answering_fewer_parts_than_it_was_sent_is_an_error(store: Store) -> None:
    class Short(ScriptedDataverse):
        def batch(self, operations: list[Operation], *, safe: bool) -> list[PartOutcome]:
            return super().batch(operations, safe=safe)[:-1]

    add(store, act(1, sent_guard(1)), act(2, sent_guard(2)))
    with pytest.raises(ValueError, match="zip"):
        Outbox(store, Short()).drain("j")  # type: ignore[arg-type]
    add(store, create(3))
    with pytest.raises(ValueError, match="zip"):
        Outbox(store, Short(), bulk=False).drain("j")  # type: ignore[arg-type]


def test_headers_go_with_single_creates_and_with_actions(store: Store) -> None:
    add(store, create(1, headers={"h": "1"}), act(2, headers={"h": "2"}))
    dataverse = ScriptedDataverse()
    Outbox(store, dataverse).drain("j")  # type: ignore[arg-type]
    assert [[op.headers for op in ops] for ops, _ in dataverse.batches] == [
        [(("h", "1"),)], [(("h", "2"),)]
    ]  # fmt: skip


def test_failures_carry_the_record_the_intent_it_followed_and_the_error(store: Store) -> None:
    add(store, create(1), change(1, after="c1"), create(2), change(2, after="c2"))
    dataverse = ScriptedDataverse()
    dataverse.errors["n1"] = BadRequestError(400, "0x1", "bad", "req-1")
    dataverse.errors["t2"] = BadRequestError(400, "0x2", "worse", "req-2")
    result = Outbox(store, dataverse).drain("j")  # type: ignore[arg-type]
    assert result.failed == [
        Outcome("c1", rid(1), None, 400, "0x1", "bad", "req-1"),
        Outcome("u1", rid(1), "c1", 424, "", "not sent: c1 failed before it", ""),
        Outcome("u2", rid(2), "c2", 400, "0x2", "worse", "req-2"),
    ]


def test_dependents_of_a_failure_in_another_job_are_left_to_that_job(store: Store) -> None:
    add(store, create(1), create(2, job="other"), change(2, after="c2"))
    with store.transaction() as conn:
        conn.execute(
            dvc.outbox.update().where(dvc.outbox.c.key == "c2").values(status="failed")
        )  # fmt: skip
    other = Intent("o3", "other", "update", "contact", "contacts", "contactid", rid(3), {},
                   after="c2")  # fmt: skip
    add(store, other)
    Outbox(store, ScriptedDataverse()).drain("j")  # type: ignore[arg-type]
    assert status(store) == {"c1": "done", "c2": "failed", "u2": "failed", "o3": "pending"}


def test_an_intent_waits_for_its_own_predecessor_not_for_any_done_intent(store: Store) -> None:
    add(store, create(1, job="other"), create(2), change(1, after="c1"))
    dataverse = ScriptedDataverse()
    Outbox(store, dataverse).drain("j")  # type: ignore[arg-type]
    assert status(store) == {"c1": "pending", "c2": "done", "u1": "pending"}
    assert [[op.method for op in ops] for ops, _ in dataverse.batches] == [["POST"]]


def test_updates_go_before_actions_whatever_the_order_they_were_recorded_in(
    store: Store,
) -> None:
    add(store, act(1), change(2))
    dataverse = ScriptedDataverse()
    Outbox(store, dataverse).drain("j")  # type: ignore[arg-type]
    assert [[op.method for op in ops] for ops, _ in dataverse.batches] == [["PATCH"], ["POST"]]


def test_actions_of_different_names_go_in_different_waves(store: Store) -> None:
    add(store, act(1), act(2, action="Other"), act(3))
    dataverse = ScriptedDataverse()
    Outbox(store, dataverse, chunk=3).drain("j")  # type: ignore[arg-type]
    assert [[op.url.rsplit(".", 1)[-1] for op in ops] for ops, _ in dataverse.batches] == [
        ["SendEmail", "SendEmail"], ["Other"]
    ]  # fmt: skip


def test_a_lost_action_does_not_stop_the_failure_of_another_from_being_recorded(
    store: Store,
) -> None:
    add(store, act(1), act(2, sent_guard(2)))
    dataverse = ScriptedDataverse()
    dataverse.errors["emails?"] = BadRequestError(400, "0x1", "bad filter")
    dataverse.lost = UnreachableError("connection reset")
    result = Outbox(store, dataverse).drain("j")  # type: ignore[arg-type]
    assert status(store) == {"a1": "pending", "a2": "failed"}
    assert result.requests == 2  # the guard read once, the unguarded action once: held after


def test_lost_actions_of_several_waves_all_wait_for_the_next_drain(store: Store) -> None:
    add(store, act(1), act(2, action="Other"))
    dataverse = ScriptedDataverse()
    dataverse.lost = UnreachableError("connection reset")
    stop = lambda: len(dataverse.batches) > 4  # noqa: E731 - a runaway drain ends the test
    result = Outbox(store, dataverse).drain("j", stop)  # type: ignore[arg-type]
    assert (len(dataverse.batches), result.pending) == (2, 2)


def test_a_drain_stopped_after_a_failure_still_fails_what_waited_for_it(store: Store) -> None:
    add(store, create(1), change(1, after="c1"))
    dataverse = ScriptedDataverse()
    dataverse.errors["n1"] = BadRequestError(400, "0x1", "bad")
    result = Outbox(store, dataverse).drain("j", stop=lambda: bool(dataverse.batches))  # type: ignore[arg-type]
    assert status(store) == {"c1": "failed", "u1": "failed"}
    assert [f.key for f in result.failed] == ["c1", "u1"]


def test_the_requests_counted_are_those_of_this_drain_only(store: Store) -> None:
    add(store, create(1))
    dataverse = ScriptedDataverse()
    dataverse.requests_sent = 5
    assert Outbox(store, dataverse).drain("j").requests == 1  # type: ignore[arg-type]
