"""Change capture in the sync: real value changes of watched columns, not touches, not the
first load, not dvconnect's own writes."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from connector import tables as dvc
from connector.changes import Watch, watches, written
from connector.clock import Clock
from connector.dataverse import Dataverse
from connector.mapping import load_mapping
from connector.settings import Settings
from connector.store import Store
from jobs.context import Context
from jobs.journeys import triggers
from jobs.journeys.engine import _prune_changes
from jobs.sync import sync_table
from tests.paths import MAPPINGS, ROOT
from tests.unit.test_sync import API, FULL, ScriptedTransport, lead

DELTA = API + "leads?$deltatoken=10"
JOURNEY = """\
name: {name}
trigger:
  lead: {trigger}
schedule: {{start: 2027-01-04T09:00, end: 2027-03-31T18:00}}
steps:
  - id: done
    end: true
"""


def lead_id(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


@pytest.fixture
def ctx(database_url: str, tmp_path: Path) -> Context:
    """A store whose journeys trigger on leads created and on subject and statecode changes."""
    mappings = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, mappings)
    triggers = {
        "on-create": "{created: true}",
        "on-subject": "{changed: subject}",
        "on-qualified": "{changed: statecode, to: 1}",
    }
    for name, trigger in triggers.items():
        text = JOURNEY.format(name=name, trigger=trigger)
        (mappings / "journeys" / f"{name}.yaml").write_text(text)
    mapping = load_mapping(mappings)
    assert not mapping.journey_errors
    store = Store(database_url, mapping)
    store.prepare()
    return Context(
        settings=Settings(),
        mapping=mapping,
        store=store,
        clock=Clock(),
        dataverse=Dataverse(ScriptedTransport(), page_size=100),
    )  # type: ignore[arg-type]


@pytest.fixture
def transport(ctx: Context) -> ScriptedTransport:
    return ctx.dataverse.transport  # type: ignore[no-any-return, attr-defined]


def changes(ctx: Context) -> list[tuple[str, str, str | None, str | None, str | None]]:
    c = dvc.changes.c
    with ctx.store.engine.connect() as conn:
        rows = conn.execute(
            select(c.record_id, c.kind, c.column_name, c.old_value, c.new_value).order_by(
                c.change_id
            )
        ).all()
    return [(r[0][-3:], r[1], r[2], r[3], r[4]) for r in rows]


def loaded(ctx: Context, transport: ScriptedTransport, *rows: dict[str, Any]) -> None:
    """The first full read of `rows`; the next read is the delta link."""
    transport.page(FULL, list(rows), delta_link=DELTA)
    counts = sync_table(ctx, ctx.mapping.tables["lead"])
    assert counts.full


def delta(ctx: Context, transport: ScriptedTransport, *rows: dict[str, Any]) -> int:
    transport.page(DELTA, list(rows), delta_link=DELTA)
    counts = sync_table(ctx, ctx.mapping.tables["lead"])
    assert not counts.full
    return counts.changes


def intent(ctx: Context, n: int, kind: str, body: dict[str, Any], **values: Any) -> None:
    """An outbox intent on lead `n` (done now, after every read so far, unless told)."""
    with ctx.store.transaction() as conn:
        tick = ctx.store.next_tick(conn)
        row = {"key": f"test/{n}/{kind}/{len(json.dumps(body))}", "job": "journeys",
               "kind": kind, "table_name": "lead", "entity_set": "leads",
               "primary_key": "leadid", "record_id": lead_id(n), "body": json.dumps(body),
               "headers": "{}", "status": "done", "attempts": 1, "created_at": "x",
               "done_tick": tick, **values}  # fmt: skip
        conn.execute(dvc.outbox.insert().values(**row))


def test_the_watch_is_what_the_triggers_name_and_nothing_for_other_tables(ctx: Context) -> None:
    assert watches(ctx.mapping.journeys.values()) == {
        "lead": Watch(created=True, columns=("statecode", "subject"))
    }


def test_a_first_full_read_records_no_change(ctx: Context, transport: ScriptedTransport) -> None:
    loaded(ctx, transport, lead(1), lead(2))
    assert changes(ctx) == []


def test_a_value_change_counts_and_a_modifiedon_touch_does_not(
    ctx: Context, transport: ScriptedTransport
) -> None:
    loaded(ctx, transport, lead(1), lead(2), lead(3))
    found = delta(
        ctx, transport,
        lead(1, modified="2024-02-01T00:00:00Z"),  # touched: no value changed
        lead(2, subject="changed"),
        {**lead(3), "statecode": 1},
        lead(4),  # new
    )  # fmt: skip
    assert changes(ctx) == [
        ("002", "changed", "subject", '"s"', '"changed"'),
        ("003", "changed", "statecode", None, "1"),
        ("004", "created", None, None, None),
    ]
    assert found == 3


def test_a_replayed_page_records_nothing_again(ctx: Context, transport: ScriptedTransport) -> None:
    loaded(ctx, transport, lead(1))
    delta(ctx, transport, lead(1, subject="changed"))
    delta(ctx, transport, lead(1, subject="changed"))  # the same rows again
    assert changes(ctx) == [("001", "changed", "subject", '"s"', '"changed"')]


def test_dvconnects_own_writes_are_no_change_but_other_columns_and_values_are(
    ctx: Context, transport: ScriptedTransport
) -> None:
    loaded(ctx, transport, lead(1), lead(2), lead(3))
    intent(ctx, 1, "update", {"subject": "by dvconnect"})
    intent(ctx, 2, "update", {"subject": "by dvconnect"})
    intent(ctx, 3, "action", {"Status": 3, "CreateOpportunity": True}, action="QualifyLead")
    intent(ctx, 5, "create", {"subject": "s", "parentcontactid@odata.bind": "/contacts(x)"})
    delta(
        ctx, transport,
        lead(1, subject="by dvconnect"),  # what the intent wrote
        {**lead(2, subject="by someone else")},  # the same column, another value
        {**lead(3, subject="renamed"), "statecode": 1},  # qualified by us, renamed by a user
        lead(5),  # created by us
        lead(6),  # created by a user
    )  # fmt: skip
    assert changes(ctx) == [
        ("002", "changed", "subject", '"s"', '"by someone else"'),
        ("003", "changed", "subject", '"s"', '"renamed"'),
        ("006", "created", None, None, None),
    ]


def test_a_write_a_completed_read_already_brought_back_is_no_longer_dvconnects(
    ctx: Context, transport: ScriptedTransport
) -> None:
    loaded(ctx, transport, lead(1))
    intent(ctx, 1, "update", {"subject": "by dvconnect"})
    delta(ctx, transport, lead(1, subject="by dvconnect"))  # read back: not a change
    delta(ctx, transport, lead(1, subject="s"))  # a user puts it back
    delta(ctx, transport, lead(1, subject="by dvconnect"))  # and sets it again
    assert changes(ctx) == [
        ("001", "changed", "subject", '"by dvconnect"', '"s"'),
        ("001", "changed", "subject", '"s"', '"by dvconnect"'),
    ]


def test_a_failed_intent_wrote_nothing(ctx: Context, transport: ScriptedTransport) -> None:
    loaded(ctx, transport, lead(1))
    intent(ctx, 1, "update", {"subject": "x"}, status="failed", done_tick=None)
    delta(ctx, transport, lead(1, subject="x"))
    assert changes(ctx) == [("001", "changed", "subject", '"s"', '"x"')]


@pytest.mark.parametrize(
    ("kind", "action", "body", "columns"),
    [
        ("create", None, {"subject": "a"}, {None, "subject"}),
        (
            "update",
            None,
            {"parentcontactid@odata.bind": "/contacts(AB12CD34-0000-0000-0000-000000000001)"},
            {"_parentcontactid_value"},
        ),
        ("action", "QualifyLead", {"Status": 3}, {"statecode", "statuscode"}),
        ("action", "new_Route", {"Priority": 1}, set()),  # unknown effects: nothing assumed
    ],
)
def test_what_an_intent_writes(
    kind: str, action: str | None, body: dict[str, Any], columns: set[Any]
) -> None:
    assert set(written(kind, action, body)) == columns


def test_a_bound_lookup_is_the_lookup_column_in_lower_case() -> None:
    body = {"parentcontactid@odata.bind": "/contacts(AB12CD34-0000-0000-0000-000000000001)"}
    assert written("update", None, body) == {
        "_parentcontactid_value": "ab12cd34-0000-0000-0000-000000000001"
    }


def test_the_sample_trigger_journey_loads_and_watches_new_leads_only() -> None:
    mapping = load_mapping(ROOT / "mappings")
    assert not mapping.journey_errors
    welcome = mapping.journeys["conference-lead-welcome"]
    assert welcome.segment is None
    assert watches([welcome]) == {"lead": Watch(created=True, columns=())}


def test_changes_no_live_or_paused_journey_will_decide_are_pruned_a_week_after(
    ctx: Context,
) -> None:
    journeys = [
        {"journey": "on-create", "version": 0, "state": "live", "started_at": "2027-01-05T00:00:00Z"},
        {"journey": "on-subject", "version": 0, "state": "paused", "started_at": "2027-01-04T09:00:00Z"},
        {"journey": "on-qualified", "version": 0, "state": "stopped", "started_at": "2027-01-04T09:00:00Z"},
    ]  # fmt: skip
    changes_ = [  # (change, kind, column, new value, seen at), and who decided it
        (1, "created", None, None, "2027-01-06T08:00:00Z", ["on-create"]),  # decided: goes
        (2, "created", None, None, "2027-01-06T08:00:00Z", []),  # waiting: kept
        (3, "changed", "subject", '"A"', "2027-01-06T08:00:00Z", ["on-create"]),  # paused: kept
        (4, "changed", "subject", '"B"', "2027-01-06T08:00:00Z", ["on-subject"]),  # decided: goes
        (5, "changed", "statecode", "1", "2027-01-06T08:00:00Z", []),  # a stopped journey's: goes
        (6, "created", None, None, "2027-01-04T10:00:00Z", []),  # before on-create started: goes
        (7, "created", None, None, "2027-01-19T08:00:00Z", ["on-create"]),  # decided this week
    ]
    with ctx.store.transaction() as conn:
        conn.execute(dvc.journeys.insert(), journeys)
        for change_id, kind, column, new, at, deciders in changes_:
            conn.execute(dvc.changes.insert().values(
                change_id=change_id, table_name="lead", record_id=lead_id(change_id), kind=kind,
                column_name=column, new_value=new, at=at,
            ))  # fmt: skip
            for journey in deciders:
                conn.execute(dvc.change_uses.insert().values(
                    journey=journey, change_id=change_id, outcome="filtered", at=at
                ))  # fmt: skip
    results: dict[str, Any] = {}
    now = Clock(datetime(2027, 1, 20, 12, tzinfo=UTC))
    _prune_changes(replace(ctx, clock=now), results)
    assert results == {"pruned_changes": 4}
    with ctx.store.engine.connect() as conn:
        kept = conn.execute(select(dvc.changes.c.change_id).order_by("change_id")).scalars().all()
        uses = conn.execute(select(dvc.change_uses.c.journey, dvc.change_uses.c.change_id)
                            .order_by("change_id")).all()  # fmt: skip
    assert kept == [2, 3, 7]
    assert [tuple(use) for use in uses] == [("on-create", 3), ("on-create", 7)]

    _prune_changes(replace(ctx, clock=now), results)  # nothing more to prune
    assert results == {"pruned_changes": 0}

    with ctx.store.transaction() as conn:  # on-qualified live again (`to: 1`)
        conn.execute(dvc.journeys.update().where(dvc.journeys.c.journey == "on-qualified")
                     .values(state="live"))  # fmt: skip
        conn.execute(dvc.changes.insert(), [
            {"change_id": 8, "table_name": "lead", "record_id": lead_id(8), "kind": "changed",
             "column_name": "statecode", "new_value": None, "at": "2027-01-06T08:00:00Z"},
            {"change_id": 9, "table_name": "lead", "record_id": lead_id(9), "kind": "changed",
             "column_name": "statecode", "new_value": "1", "at": "2027-01-06T08:00:00Z"},
            {"change_id": 10, "table_name": "lead", "record_id": lead_id(10), "kind": "created",
             "column_name": None, "new_value": None, "at": "2027-04-01T08:00:00Z"},  # after on-create's window: it admits nobody then
        ])  # fmt: skip
    _prune_changes(replace(ctx, clock=Clock(datetime(2027, 4, 20, tzinfo=UTC))), results := {})
    assert results == {"pruned_changes": 3}  # 8 (emptied, not to 1), 10, and 7, a week old
    with ctx.store.engine.connect() as conn:
        kept = conn.execute(select(dvc.changes.c.change_id).order_by("change_id")).scalars().all()
    assert kept == [2, 3, 9]

    with ctx.store.transaction() as conn:  # on-subject's file is gone: what it waits for stays
        conn.execute(dvc.journeys.update().values(state="live"))
    del ctx.mapping.journeys["on-subject"]
    _prune_changes(replace(ctx, clock=Clock(datetime(2027, 5, 1, tzinfo=UTC))), results := {})
    assert results == {}


def test_a_prune_the_database_refuses_leaves_the_run_as_it_was(
    ctx: Context, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def locked(*_: Any) -> int:
        raise OperationalError("DELETE FROM dvc_changes", {}, Exception("database is locked"))

    monkeypatch.setattr(triggers, "prune", locked)
    results: dict[str, Any] = {}
    _prune_changes(ctx, results)
    assert results == {}
    assert "recorded changes not pruned: (builtins.Exception) database is locked" in caplog.text
