"""`jobs.scoring.decide`, by table: a lead's new state from its kept one and its new score."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from connector.mapping import load_mapping
from jobs.scoring import Decided, Kept, decide
from tests.paths import MAPPINGS

NOW = datetime(2027, 3, 1, 10, 0, tzinfo=UTC)
AT = "2027-03-01T10:00:00Z"
EARLIER = "2027-02-20T10:00:00Z"  # 9 days ago: inside the 30-day quiet period
LONG_AGO = "2027-01-01T10:00:00Z"  # two months ago: outside it
MODEL = load_mapping(MAPPINGS).models["contoso-interest"]  # warm 20, hot 40, ready 40


def kept(score: float, ready: str | None = None, due: str | None = None,
         handed: str | None = None) -> Kept:  # fmt: skip
    return Kept(score, MODEL.grades.of(score), ready, due, handed)


@pytest.mark.parametrize(
    ("before", "score", "after"),
    [
        (None, 0.0, Decided(0.0, "cold", None, None, crossed=False)),
        (None, 25.0, Decided(25.0, "warm", None, None, crossed=False)),
        (None, 40.0, Decided(40.0, "hot", AT, AT, crossed=True)),  # first seen already ready
        (kept(30), 39.5, Decided(39.5, "warm", None, None, crossed=False)),
        (kept(30), 40.0, Decided(40.0, "hot", AT, AT, crossed=True)),  # crosses: one hand-off
        (
            kept(45, EARLIER, None, EARLIER),
            60.0,  # still ready: nothing new owed
            Decided(60.0, "hot", EARLIER, None, crossed=False),
        ),
        (
            kept(45, EARLIER, AT),
            50.0,  # still owed (capped yesterday): still owed
            Decided(50.0, "hot", EARLIER, AT, crossed=False),
        ),
        (
            kept(45, EARLIER, AT),
            10.0,  # falls below before its hand-off: nothing owed
            Decided(10.0, "cold", None, None, crossed=False),
        ),
        (
            kept(20, None, None, EARLIER),
            45.0,  # crosses again inside the quiet period
            Decided(45.0, "hot", AT, None, crossed=True),
        ),
        (
            kept(20, None, None, LONG_AGO),
            45.0,  # crosses again after it: a new hand-off
            Decided(45.0, "hot", AT, AT, crossed=True),
        ),
        (kept(-5), -25.0, Decided(-25.0, "cold", None, None, crossed=False)),
    ],
)
def test_decide(before: Kept | None, score: float, after: Decided) -> None:
    assert decide(MODEL, before, score, NOW) == after


def test_the_quiet_period_ends_exactly_after_its_length() -> None:
    handed = (NOW - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert decide(MODEL, kept(0, None, None, handed), 40.0, NOW).handoff_due == AT
