"""The journeys watchdog's queries, and what retry and skip change in the store, on both databases.

Members, history, records and outbox intents are written straight into the store as a run
would have left them; nothing talks to Dataverse.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from connector import tables as dvc
from connector.clock import Clock, stamp
from connector.errors import ConfigError
from connector.mapping import load_mapping
from connector.settings import Settings
from connector.store import Store
from jobs.context import Context
from jobs.journeys.rescue import retry, skip
from jobs.journeys.watchdog import describe, watch
from tests.paths import MAPPINGS

NOW = datetime(2027, 1, 20, 10, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
JOURNEY = "product-launch"
CONTACT = "00000000-0000-0000-0000-0000000000{:02d}"
SEND_ERROR = {"status": 400, "code": "0x80040203", "message": "refused", "request_id": "r-1"}


@pytest.fixture
def store(database_url: str) -> Store:
    s = Store(database_url, load_mapping(MAPPINGS))
    s.prepare()
    with s.transaction() as conn:
        conn.execute(dvc.journeys.insert().values(journey=JOURNEY, state="live", version=1))
    return s


def ctx(store: Store) -> Context:
    return Context(settings=Settings(), mapping=store.mapping, store=store, clock=Clock(NOW))


def ago(delta: timedelta) -> str:
    return stamp(NOW - delta)


def member(store: Store, number: int, step: str, due: str, status: str = "active",
           journey: str = JOURNEY, entry: int = 1, **values: Any) -> int:  # fmt: skip
    with store.transaction() as conn:
        inserted = conn.execute(
            dvc.journey_members.insert().values(
                journey=journey, version=1, contactid=CONTACT.format(number), entry=entry,
                step=step, status=status, arrived_at=ago(timedelta(days=9)), due_at=due,
                entered_at=ago(timedelta(days=9)), **values,
            )
        )  # fmt: skip
        return int(inserted.inserted_primary_key[0])


def intent(store: Store, key: str, status: str, created: str, after: str | None = None,
           job: str = "journeys") -> None:  # fmt: skip
    with store.transaction() as conn:
        conn.execute(dvc.outbox.insert().values(
            key=key, job=job, kind="create", table_name="email", entity_set="emails",
            primary_key="activityid", record_id="0" * 8 + key[-28:].rjust(28, "0"), body="{}",
            headers="{}", after=after, status=status, attempts=1, created_at=created,
            error=json.dumps(SEND_ERROR) if status == "failed" else None,
        ))  # fmt: skip


def test_the_watchdog_counts_overdue_failed_and_stale_writes_of_its_journey_only(
    store: Store,
) -> None:
    member(store, 1, "opened", ago(3 * HOUR))  # overdue
    member(store, 2, "opened", ago(2 * HOUR))  # overdue
    member(store, 3, "call", ago(5 * HOUR))  # overdue, the oldest due
    member(store, 4, "opened", ago(HOUR / 2))  # due, within the grace
    member(store, 5, "opened", stamp(NOW + HOUR))  # not due yet
    member(store, 6, "opened", ago(9 * HOUR), status="completed")
    member(store, 7, "opened", ago(9 * HOUR), journey="conference-follow-up")
    failed = member(store, 8, "opened", ago(9 * HOUR), status="failed", left_at=ago(HOUR),
                    error=json.dumps({"step": "launch-email", **SEND_ERROR}))  # fmt: skip
    intent(store, f"journeys/{failed}/launch-email/create", "pending", ago(2 * HOUR))  # stale
    intent(store, f"journeys/{failed}/launch-email/send", "pending", ago(3 * HOUR))  # stale
    intent(store, f"journeys/{failed}/opened/x", "pending", ago(HOUR / 2))  # within the grace
    intent(store, f"journeys/{failed}/call/create", "done", ago(5 * HOUR))
    other = member(store, 9, "call", stamp(NOW), journey="conference-follow-up")
    intent(store, f"journeys/{other}/call/create", "pending", ago(5 * HOUR))  # not this journey
    intent(store, "orphans/lead/abc", "pending", ago(5 * HOUR), job="link-orphans")

    with store.engine.connect() as conn:
        report = watch(conn, JOURNEY, NOW, HOUR, store.engine.dialect.name)
    assert (report.overdue, report.overdue_by_step) == (3, {"call": 1, "opened": 2})
    assert (report.oldest_due, report.lag_seconds) == (ago(5 * HOUR), 5 * 3600)
    assert report.failed == 1
    assert report.failures == [{"member": failed, "contact": CONTACT.format(8), "at": ago(HOUR),
                                "step": "launch-email", **SEND_ERROR}]  # fmt: skip
    assert (report.stale_writes, report.oldest_write) == (2, ago(3 * HOUR))
    assert describe(report.as_dict()) == [
        "overdue by more than 1.0 h: 3 members (1 at call, 2 at opened)",
        f"lag: 5.0 h (oldest due {ago(5 * HOUR)})",
        "failed: 1 members (`dvconnect journeys retry` or `skip`)",
        f"writes pending longer than 1.0 h: 2 (oldest recorded {ago(3 * HOUR)})",
    ]
    with store.engine.connect() as conn:  # a day's grace: nobody overdue, the same lag
        lenient = watch(conn, JOURNEY, NOW, 24 * HOUR, store.engine.dialect.name)
    assert (lenient.overdue, lenient.stale_writes, lenient.lag_seconds) == (0, 0, 5 * 3600)


def test_an_empty_journey_alarms_nobody(store: Store) -> None:
    with store.engine.connect() as conn:
        report = watch(conn, JOURNEY, NOW, HOUR, store.engine.dialect.name)
    assert not report.alarming
    assert describe(report.as_dict()) == []


def failed_after_a_refused_send(store: Store) -> int:
    """A member whose launch e-mail's send was refused after it had moved on to `opened` and
    then `newsletter`, whose write waited on the send and was never sent."""
    m = member(store, 1, "newsletter", ago(HOUR), status="failed", left_at=ago(HOUR),
               error=json.dumps({"step": "launch-email", **SEND_ERROR}),
               last_intent="x")  # fmt: skip
    base = f"journeys/{m}"
    intent(store, f"journeys/{m}/earlier/create", "done", ago(2 * HOUR))
    intent(store, f"{base}/launch-email/create", "done", ago(HOUR), after=f"{base}/earlier/create")
    intent(
        store, f"{base}/launch-email/send", "failed", ago(HOUR), after=f"{base}/launch-email/create"
    )
    intent(
        store, f"{base}/newsletter/create", "failed", ago(HOUR), after=f"{base}/launch-email/send"
    )
    with store.transaction() as conn:
        conn.execute(dvc.journey_history.insert(), [
            {"member_id": m, "journey": JOURNEY, "at": ago(HOUR), "step": step, "event": event,
             "to_step": to}
            for step, event, to in [(None, "entered", "launch-email"),
                                    ("launch-email", "acted", "opened"),
                                    ("opened", "condition true", "newsletter"),
                                    ("newsletter", "acted", "call"),
                                    ("launch-email", "failed", None)]
        ])  # fmt: skip
        conn.execute(dvc.journey_records.insert(), [
            {"member_id": m, "step": step, "table_name": "email", "record_id": f"r-{step}",
             "journey": JOURNEY, "intent": f"{base}/{step}/create"}
            for step in ("earlier", "launch-email", "newsletter")
        ])  # fmt: skip
    return m


def outbox(store: Store) -> dict[str, tuple[str, str | None]]:
    o = dvc.outbox.c
    with store.engine.connect() as conn:
        return {k: (s, e) for k, s, e in conn.execute(select(o.key, o.status, o.error))}


def row(store: Store, member_id: int) -> dict[str, Any]:
    m = dvc.journey_members.c
    with store.engine.connect() as conn:
        found = conn.execute(select(dvc.journey_members).where(m.member_id == member_id))
        return dict(found.mappings().one())


def history(store: Store, member_id: int) -> list[tuple[Any, ...]]:
    h = dvc.journey_history.c
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            select(h.step, h.event, h.to_step).where(h.member_id == member_id).order_by(h.event_id)
        )]  # fmt: skip


def test_retry_repends_the_failed_steps_writes_drops_later_ones_and_rewinds_the_member(
    store: Store,
) -> None:
    m = failed_after_a_refused_send(store)
    base = f"journeys/{m}"
    assert retry(ctx(store), JOURNEY, "newsletter").retried == 0  # it failed at launch-email
    done = retry(ctx(store), JOURNEY)
    assert (done.retried, done.repended, done.dropped, done.superseded) == (1, 1, 1, 0)
    assert outbox(store) == {
        f"{base}/earlier/create": ("done", None),
        f"{base}/launch-email/create": ("done", None),
        f"{base}/launch-email/send": ("pending", None),  # the same intent, sent again
    }
    back = row(store, m)
    assert (back["status"], back["step"], back["due_at"], back["left_at"], back["error"]) == (
        "active", "launch-email", stamp(NOW), None, None)  # fmt: skip
    assert back["last_intent"] == f"{base}/earlier/create"  # what the step's writes wait on
    r = dvc.journey_records.c
    with store.engine.connect() as conn:
        kept = set(conn.execute(select(r.step).where(r.member_id == m)).scalars())
    assert kept == {"earlier"}  # the next run notes the steps it takes again
    assert history(store, m)[-1] == ("launch-email", "retried", "launch-email")
    assert retry(ctx(store), JOURNEY).retried == 0  # nothing failed any more


def test_retry_leaves_a_failed_entry_alone_when_its_contact_entered_again(store: Store) -> None:
    failed = member(store, 1, "opened", ago(HOUR), status="failed",
                    error=json.dumps({"step": "launch-email", **SEND_ERROR}))  # fmt: skip
    member(store, 1, "launch-email", ago(HOUR), entry=2)
    done = retry(ctx(store), JOURNEY)
    assert (done.retried, done.superseded) == (0, 1)
    assert row(store, failed)["status"] == "failed"


def test_skip_takes_an_if_steps_timeout_branch_and_a_failed_member_skips_its_failed_step(
    store: Store,
) -> None:
    waiting = member(store, 2, "opened", stamp(NOW + 4 * 24 * HOUR))
    moved = skip(ctx(store), JOURNEY, CONTACT.format(2))
    assert (moved["from"], moved["to"], moved["status"]) == ("opened", "brochure", "active")
    after = row(store, waiting)
    assert (after["step"], after["arrived_at"], after["due_at"]) == (
        "brochure", stamp(NOW), stamp(NOW))  # fmt: skip
    assert history(store, waiting)[-1] == ("opened", "skipped", "brochure")

    m = failed_after_a_refused_send(store)
    base = f"journeys/{m}"
    moved = skip(ctx(store), JOURNEY, CONTACT.format(1))
    assert (moved["from"], moved["to"]) == ("launch-email", "opened")
    assert outbox(store)[f"{base}/launch-email/send"][0] == "failed"  # skipped: never sent
    assert f"{base}/newsletter/create" not in outbox(store)
    after = row(store, m)
    assert (after["status"], after["step"], after["error"]) == ("active", "opened", None)
    assert after["last_intent"] == f"{base}/earlier/create"

    finished = member(store, 3, "brochure", ago(HOUR), status="completed")
    with pytest.raises(ConfigError, match="latest entry into journey 'product-launch' is comp"):
        skip(ctx(store), JOURNEY, CONTACT.format(3))
    assert row(store, finished)["status"] == "completed"
