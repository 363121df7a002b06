"""Segment evaluation over the store: membership, entered/exited, exclusion, on both databases."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from connector import tables as dvc
from connector.clock import Clock
from connector.errors import NotRunError
from connector.mapping import load_mapping
from connector.settings import Settings
from connector.store import Store
from jobs.context import Context
from jobs.segments import evaluate, run_segments
from tests.paths import MAPPINGS
from tests.unit.test_orphans import contact, lead

SHIPPED = MAPPINGS
NOW = datetime(2024, 3, 15, 12, 0, tzinfo=UTC)
CONFERENCE = "Contoso Ltd Conference"


def mappings(tmp_path: Path, **segments: str) -> Path:
    directory = tmp_path / "mappings"
    shutil.copytree(SHIPPED, directory)
    for name, text in segments.items():
        (directory / "segments" / f"{name}.yaml").write_text(text)
    return directory


def person(number: int, role: int = 1, **values: Any) -> dict[str, Any]:
    return {
        **contact(number, f"p{number}@x.example", "2024-01-01T00:00:00Z"),
        "accountrolecode": role,
        "donotemail": False,
        "donotphone": False,
        **values,
    }


def interest(number: int, parent: int, subject: str = CONFERENCE, **values: Any) -> dict[str, Any]:
    return lead(
        number,
        f"l{number}@x.example",
        subject=subject,
        _parentcontactid_value=person(parent)["contactid"],
        **values,
    )


@pytest.fixture
def store(database_url: str, tmp_path: Path) -> Store:
    s = Store(database_url, load_mapping(mappings(tmp_path)))
    s.prepare()
    return s


def put(store: Store, leads: list[dict[str, Any]], contacts: list[dict[str, Any]]) -> None:
    with store.transaction() as conn:
        store.upsert_rows(conn, "lead", leads, 1)
        store.upsert_rows(conn, "contact", contacts, 1)


def members(store: Store, segment: str) -> dict[str, set[str]]:
    table = dvc.segment_members
    with store.engine.connect() as conn:
        rows = conn.execute(select(table).where(table.c.segment == segment)).mappings()
        return {
            r["contactid"][-2:]: {i[-2:] for i in (r["lead_ids"] or "").split(",") if i}
            for r in rows
        }


def events(store: Store, segment: str) -> list[tuple[str, str]]:
    table = dvc.segment_events
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(table.c.event, table.c.contactid)
            .where(table.c.segment == segment)
            .order_by(table.c.event_id)
        )
        return [(event, contact_id[-2:]) for event, contact_id in rows]


def test_the_conference_segment_keeps_decision_makers_with_a_conference_lead(store: Store) -> None:
    put(
        store,
        [
            interest(1, parent=1),
            interest(2, parent=1, subject="contoso ltd conference"),  # any case
            interest(3, parent=2),  # an employee
            interest(4, parent=3, subject="Webinar"),
            interest(5, parent=4, statecode=2),  # disqualified
            interest(6, parent=5),  # opted out of email
            interest(7, parent=6),  # inactive contact
        ],
        [
            person(1),
            person(2, role=2),
            person(3),
            person(4),
            person(5, donotemail=True),
            person(6, statecode=1),
        ],
    )
    segment = store.mapping.segments["contoso-decision-makers"]
    result = evaluate(store, segment, NOW)
    assert members(store, segment.name) == {"01": {"01", "02"}}
    assert (result.size, result.entered, result.exited) == (1, 1, 0)


def test_entered_and_exited_follow_changes_between_evaluations(store: Store) -> None:
    segment = store.mapping.segments["contoso-decision-makers"]
    put(store, [interest(1, parent=1), interest(2, parent=2)], [person(1), person(2)])
    evaluate(store, segment, NOW)
    put(store, [interest(3, parent=3)], [person(2, role=3), person(3)])
    second = evaluate(store, segment, NOW)
    third = evaluate(store, segment, NOW)

    assert members(store, segment.name) == {"01": {"01"}, "03": {"03"}}
    assert events(store, segment.name) == [
        ("entered", "01"),
        ("entered", "02"),
        ("exited", "02"),
        ("entered", "03"),
    ]
    assert (second.size, second.entered, second.exited) == (2, 1, 1)
    assert (third.entered, third.exited) == (0, 0)


def test_a_member_keeps_the_time_it_entered_and_its_leads_follow(store: Store) -> None:
    segment = store.mapping.segments["contoso-decision-makers"]
    put(store, [interest(1, parent=1)], [person(1)])
    evaluate(store, segment, NOW)
    put(store, [interest(2, parent=1)], [])
    evaluate(store, segment, NOW.replace(day=16))
    table = dvc.segment_members
    with store.engine.connect() as conn:
        since = conn.execute(select(table.c.since)).scalar_one()
    assert since == "2024-03-15T12:00:00Z"
    assert members(store, segment.name) == {"01": {"01", "02"}}


def test_relative_dates_follow_the_evaluation_clock_and_exclusion_applies(
    database_url: str, tmp_path: Path
) -> None:
    store = Store(database_url, load_mapping(mappings(tmp_path)))
    store.prepare()
    web = {"leadsourcecode": 8, "subject": "Web"}
    put(
        store,
        [
            interest(1, parent=1, createdon="2024-03-01T00:00:00Z", **web),
            interest(2, parent=2, createdon="2024-01-20T00:00:00Z", **web),  # too old
            interest(3, parent=3, createdon="2024-03-10T00:00:00Z", **web),
            interest(4, parent=3),  # a conference lead: excluded
        ],
        [person(1), person(2), person(3)],
    )
    run_segments(_context(store, NOW))
    assert set(members(store, "recent-web-leads")) == {"01"}
    later = datetime(2024, 4, 5, tzinfo=UTC)
    run_segments(_context(store, later))
    assert members(store, "recent-web-leads") == {}


def test_limit_keeps_the_first_contacts_by_id(database_url: str, tmp_path: Path) -> None:
    directory = mappings(tmp_path, top='name: top\ncontact: "accountrolecode eq 1"\nlimit: 2\n')
    store = Store(database_url, load_mapping(directory))
    store.prepare()
    put(store, [], [person(3), person(1), person(2)])
    evaluate(store, store.mapping.segments["top"], NOW)
    assert set(members(store, "top")) == {"01", "02"}


def test_a_failing_segment_keeps_its_last_membership_and_others_go_on(
    database_url: str, tmp_path: Path
) -> None:
    store = Store(database_url, load_mapping(mappings(tmp_path)))
    store.prepare()
    put(store, [interest(1, parent=1)], [person(1)])
    run_segments(_context(store, NOW))
    bad = tmp_path / "mappings" / "segments" / "contoso-decision-makers.yaml"
    bad.write_text(bad.read_text().replace("accountrolecode eq 1", "acountrolecode eq 1"))
    store.mapping = load_mapping(tmp_path / "mappings")
    counts = run_segments(_context(store, NOW))
    assert counts["contoso-decision-makers.yaml"]["failed"] == 1
    assert "unknown column 'acountrolecode'" in counts["contoso-decision-makers.yaml"]["error"]
    assert counts["recent-web-leads.yaml"]["failed"] == 1  # it excludes the bad one
    assert members(store, "contoso-decision-makers") == {"01": {"01"}}


def test_segments_are_evaluated_by_one_run_at_a_time(store: Store) -> None:
    put(store, [interest(1, parent=1)], [person(1)])
    with (
        store.lease("segments"),  # another run evaluates them
        pytest.raises(NotRunError, match=r"^segments is already running \(pid \d+ on "),
    ):
        run_segments(_context(store, NOW))
    assert members(store, "contoso-decision-makers") == {}
    run_segments(_context(store, NOW))
    assert members(store, "contoso-decision-makers") == {"01": {"01"}}


def _context(store: Store, now: datetime) -> Context:
    return Context(settings=Settings(), mapping=store.mapping, store=store, clock=Clock(now))


def test_the_shipped_segments_load() -> None:
    mapping = load_mapping(SHIPPED)
    assert set(mapping.segments) == {"contoso-decision-makers", "recent-web-leads"}
    assert mapping.segment_errors == {}
    assert mapping.segments["recent-web-leads"].exclude == "contoso-decision-makers"
