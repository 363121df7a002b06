"""The report's figures, from `dvc_` rows as runs leave them, on both databases.

Runs, segment evaluations, journey history, records, outbox intents, scores and hand-offs are
written straight into the store; nothing talks to Dataverse.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from connector import tables as dvc
from connector.clock import Clock
from connector.errors import ConfigError
from connector.mapping import load_mapping
from connector.settings import Settings
from connector.store import Store
from jobs import report
from jobs.context import Context
from jobs.report import html_report, parse_since, report_document, text_lines
from tests.paths import MAPPINGS

NOW = datetime(2027, 1, 8, 12, 0, tzinfo=UTC)
JOURNEY = "product-launch"
MODEL = "contoso-interest"
O1, O2, O3 = (f"00000000-0000-0000-0000-00000000000{n}" for n in (1, 2, 3))
SECRET_NAME, SECRET_EMAIL = "Zoë Secretperson", "zoe.secretperson@example.org"


def sync(read: int, upserted: int, deleted: int) -> dict[str, int]:
    return {"read": read, "upserted": upserted, "deleted": deleted, "pages": 1}


RUNS: list[tuple[str, str, str, dict[str, Any], int]] = [
    ("sync", "2027-01-04T08:00:00Z", "succeeded",
     {"lead": sync(100, 100, 0), "contact": sync(40, 40, 0), "_http": {"throttled": 2}}, 10),
    ("journeys", "2027-01-04T08:10:00Z", "succeeded", {JOURNEY: {}, "_http": {"throttled": 0}}, 5),
    ("sync", "2027-01-05T14:00:00Z", "succeeded",
     {"lead": sync(10, 8, 2), "contact": sync(0, 0, 0), "_http": {"throttled": 1}}, 4),
    ("sync", "2027-01-06T08:00:00Z", "failed", {"_http": {"throttled": 3}}, 3),
    ("sync", "2027-01-08T08:00:00Z", "succeeded", {"lead": sync(5, 5, 0)}, 2),  # before _http
]  # fmt: skip
EVALUATIONS = [  # segment, at, size, entered, exited
    ("contoso-decision-makers", "2027-01-04T08:05:00Z", 10, 10, 0),
    ("contoso-decision-makers", "2027-01-04T18:05:00Z", 12, 3, 1),
    ("contoso-decision-makers", "2027-01-05T08:05:00Z", 11, 0, 1),
]
HISTORY = [  # member, step, event, to_step
    (1, None, "entered", "launch-email"), (2, None, "entered", "launch-email"),
    (3, None, "entered", "launch-email"), (4, None, "entered", "launch-email"),
    (1, "launch-email", "acted", "opened"), (2, "launch-email", "acted", "opened"),
    (3, "launch-email", "acted", "opened"), (4, "launch-email", "converted", None),
    (1, "opened", "condition true", "newsletter"), (2, "opened", "condition true", "newsletter"),
    (3, "opened", "timeout", "brochure"), (1, "newsletter", "capped", None),
    (2, "newsletter", "acted", "call"), (3, "brochure", "failed", None),
    (3, "brochure", "retried", "brochure"), (3, "brochure", "failed", None),
]  # fmt: skip
RECORDS = [  # member, step, table, owner, day, outbox status
    (1, "launch-email", "email", O1, "2027-01-04", "done"),
    (2, "launch-email", "email", O1, "2027-01-04", "done"),
    (3, "launch-email", "email", O2, "2027-01-04", "done"),
    (2, "newsletter", "email", O1, "2027-01-05", "done"),
    (2, "call", "phonecall", O3, "2027-01-05", "done"),
    (3, "brochure", "email", None, "2027-01-05", "done"),
    (4, "launch-email", "email", None, "2027-01-05", "done"),
    (1, "newsletter", "email", O2, "2027-01-05", "pending"),  # not created (yet)
]
SCORES = [("l1", 0.0, "cold"), ("l2", 3.0, "cold"), ("l3", 12.0, "warm"), ("l4", 47.0, "hot")]


@pytest.fixture
def ctx(database_url: str) -> Context:
    store = Store(database_url, load_mapping(MAPPINGS))
    store.prepare()
    with store.transaction() as conn:
        for job, at, outcome, counts, requests in RUNS:
            conn.execute(dvc.runs.insert().values(
                job=job, started_at=at, finished_at=at, outcome=outcome,
                counts=json.dumps(counts), requests=requests,
            ))  # fmt: skip
        for segment, at, size, entered, exited in EVALUATIONS:
            conn.execute(dvc.segment_evaluations.insert().values(
                segment=segment, evaluated_at=at, size=size, entered=entered, exited=exited,
                seconds=0.1,
            ))  # fmt: skip
        for number, (member, step, event, to_step) in enumerate(HISTORY):
            conn.execute(dvc.journey_history.insert().values(
                member_id=member, journey=JOURNEY, at=f"2027-01-0{4 + number % 2}T09:00:00Z",
                step=step, event=event, to_step=to_step,
            ))  # fmt: skip
        for number, (member, step, table, owner, day, status) in enumerate(RECORDS):
            key = f"intent-{number}"
            conn.execute(dvc.journey_records.insert().values(
                member_id=member, step=step, table_name=table, record_id=f"r{number}",
                journey=JOURNEY, owner_id=owner, day=day, intent=key,
            ))  # fmt: skip
            conn.execute(dvc.outbox.insert().values(
                key=key, job="journeys", kind="create", table_name=table, entity_set="emails",
                primary_key="activityid", record_id=f"r{number}", body="{}", headers="{}",
                status=status, attempts=1, created_at=f"{day}T09:00:00Z",
            ))  # fmt: skip
        for lead, score, grade in SCORES:
            conn.execute(dvc.scores.insert().values(
                model=MODEL, leadid=lead, score=score, grade=grade, scored_at="2027-01-05T09:00:00Z",
            ))  # fmt: skip
        for lead in ("l3", "l4"):
            conn.execute(dvc.handoffs.insert().values(
                model=MODEL, leadid=lead, ready_since="2027-01-05T09:00:00Z",
                at="2027-01-05T09:00:00Z", table_name="task", record_id=f"t-{lead}",
                owner_id=O1, day="2027-01-05", score=40, reasons="[]",
            ))  # fmt: skip
        conn.execute(store.tables["contact"].insert().values(
            contactid=O3, fullname=SECRET_NAME, emailaddress1=SECRET_EMAIL,
        ))  # fmt: skip
    return Context(settings=Settings(), mapping=store.mapping, store=store, clock=Clock(NOW))


def test_sync_volume_is_summed_per_day_and_table_and_lag_is_hours_since_the_previous_sync(
    ctx: Context,
) -> None:
    document = report_document(ctx)

    assert document["bucket"] == "day"
    lead = [v for v in document["sync"]["volume"] if v["table"] == "lead"]
    assert [(v["bucket"], v["runs"], v["read"], v["upserted"], v["deleted"]) for v in lead] == [
        ("2027-01-04", 1, 100, 100, 0), ("2027-01-05", 1, 10, 8, 2), ("2027-01-08", 1, 5, 5, 0)
    ]  # fmt: skip
    lag = {(v["table"], v["bucket"]): v["hours"] for v in document["sync"]["lag"]}
    assert lag == {
        ("lead", "2027-01-05"): 30.0, ("lead", "2027-01-08"): 66.0,
        ("contact", "2027-01-05"): 30.0,
    }  # fmt: skip
    assert document["sync"]["tables"]["lead"] == {"last_sync_at": None, "hours_since": None}


def test_requests_and_429s_are_summed_per_day_and_job_from_the_runs(ctx: Context) -> None:
    document = report_document(ctx)

    shown = [(r["bucket"], r["job"], r["runs"], r["requests"], r["throttled"])
             for r in document["requests"]]  # fmt: skip
    assert shown == [
        ("2027-01-04", "journeys", 1, 5, 0), ("2027-01-04", "sync", 1, 10, 2),
        ("2027-01-05", "sync", 1, 4, 1), ("2027-01-06", "sync", 1, 3, 3),
        ("2027-01-08", "sync", 1, 2, 0),
    ]  # fmt: skip


def test_segment_sizes_are_the_last_of_each_day_with_the_day_s_entered_and_exited(
    ctx: Context,
) -> None:
    assert report_document(ctx)["segments"] == [
        {"segment": "contoso-decision-makers", "bucket": "2027-01-04", "size": 12,
         "entered": 13, "exited": 1},
        {"segment": "contoso-decision-makers", "bucket": "2027-01-05", "size": 11,
         "entered": 0, "exited": 1},
    ]  # fmt: skip


def test_a_journey_s_funnel_counts_members_and_its_branches_count_moves(ctx: Context) -> None:
    journey = report_document(ctx)["journeys"][JOURNEY]

    assert [(s["stage"], s["members"]) for s in journey["funnel"]] == [
        ("entered", 4), ("launch-email", 4), ("opened", 3), ("newsletter", 2), ("call", 1),
        ("brochure", 1), ("done", 0), ("goal reached", 1), ("exited", 0), ("failed", 1),
    ]  # fmt: skip
    assert {(link["source"], link["target"], link["ending"]): link["moves"]
            for link in journey["links"]} == {
        ("entered", "launch-email", False): 4, ("launch-email", "opened", False): 3,
        ("launch-email", "goal reached", True): 1, ("opened", "newsletter", False): 2,
        ("opened", "brochure", False): 1, ("newsletter", "call", False): 1,
        ("brochure", "failed", True): 2,  # failed twice (retried in between): two moves
    }  # fmt: skip


def test_activities_count_the_records_created_per_owner_and_day_the_rest_as_others(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report, "TOP_OWNERS", 2)

    shown = [(a["day"], a["owner"], a["table"], a["records"])
             for a in report_document(ctx)["activities"]]  # fmt: skip

    assert shown == [
        ("2027-01-04", O1, "email", 2), ("2027-01-04", "other owners", "email", 1),
        ("2027-01-05", O1, "email", 1), ("2027-01-05", "no owner", "email", 2),
        ("2027-01-05", "other owners", "phonecall", 1),
    ]  # fmt: skip


def test_scores_fall_in_round_buckets_by_grade_and_hand_offs_count_per_day(ctx: Context) -> None:
    document = report_document(ctx)

    scored = document["scores"][MODEL]
    assert scored["width"] == 5
    assert [(b["from"], b["to"], b["grade"], b["leads"]) for b in scored["buckets"]] == [
        (0, 5, "cold", 2), (10, 15, "warm", 1), (45, 50, "hot", 1)
    ]  # fmt: skip
    assert document["handoffs"] == [
        {"day": "2027-01-05", "model": MODEL, "table": "task", "handoffs": 2}
    ]


def test_since_keeps_later_records_and_a_short_span_is_shown_per_hour(ctx: Context) -> None:
    document = report_document(ctx, since="2027-01-05T00:00:00Z")

    assert document["bucket"] == "hour"
    assert [(r["bucket"], r["requests"]) for r in document["requests"]] == [
        ("2027-01-05T14", 4), ("2027-01-06T08", 3), ("2027-01-08T08", 2)
    ]  # fmt: skip
    lag = {(v["table"], v["bucket"]): v["hours"] for v in document["sync"]["lag"]}
    assert lag[("lead", "2027-01-05T14")] == 30.0  # its previous sync is before --since
    assert [s["bucket"] for s in document["segments"]] == ["2027-01-05T08"]
    assert document["journeys"][JOURNEY]["funnel"][0] == {"stage": "entered", "members": 2}
    assert {a["day"] for a in document["activities"]} == {"2027-01-05"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2027-01-05", "2027-01-05T00:00:00Z"), ("2027-01-05T10:30+01:00", "2027-01-05T09:30:00Z"),
     ("2d", "2027-01-06T12:00:00Z"), ("12h", "2027-01-08T00:00:00Z"), (None, None)],
)  # fmt: skip
def test_since_reads_dates_times_and_durations_before_now(
    text: str | None, expected: str | None
) -> None:
    assert parse_since(text, NOW) == expected


def test_since_that_is_neither_names_what_it_expects() -> None:
    with pytest.raises(ConfigError, match=r"--since 'last week': expected an ISO-8601 date"):
        parse_since("last week", NOW)


def test_the_html_is_self_contained_has_every_chart_and_no_personal_data(ctx: Context) -> None:
    page = html_report(report_document(ctx))

    assert re.findall(r"<script[^>]*\bsrc=", page) == []
    assert "<link" not in page
    charts = re.findall(r'data-chart="([^"]+)"', page)
    assert charts == [
        "Sync volume per day", "Sync lag", "Segment contoso-decision-makers",
        "Journey product-launch: funnel", "Journey product-launch: branches",
        "Activities created by journeys, per owner and day",
        "API requests per job and day, and 429s", f"Lead scores, {MODEL}",
        "Hand-offs to owners per day",
    ]  # fmt: skip
    assert re.findall(r'data-empty="([^"]+)"', page) == ["Journey conference-follow-up"]
    assert SECRET_NAME not in page
    assert SECRET_EMAIL not in page
    assert "Secretperson" not in page


def test_the_terminal_tables_show_the_same_numbers(ctx: Context) -> None:
    lines = text_lines(report_document(ctx))

    assert "  2027-01-05  lead     30.00" in lines
    assert "  2027-01-06  sync         1         3     3" in lines
    assert "  brochure      failed            2" in lines
    assert not any(SECRET_NAME in line or SECRET_EMAIL in line for line in lines)


def test_an_empty_store_gives_an_empty_report(tmp_path: Any) -> None:
    store = Store(f"sqlite:///{tmp_path / 'none.sqlite3'}", load_mapping(MAPPINGS))
    empty = Context(settings=Settings(), mapping=store.mapping, store=store, clock=Clock(NOW))

    document = report_document(empty)

    assert document["sync"]["volume"] == []
    assert document["journeys"] == {}
    assert "sync volume: nothing recorded" in text_lines(document)
    assert 'data-empty="Sync volume"' in html_report(document)
