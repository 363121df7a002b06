"""Scoring under faults and kills: the org ends with exactly the Ratings and hand-offs of a clean run.

The scenario scores the 3,000-lead seed with a model of its own (`MODEL`): the sample's rules plus
20 points for a web lead, sales-ready from 20, at most 10 hand-offs per owner and day. Monday's
first run rates about 2,000 leads (`UpdateMultiple`) and hands about 160 leads to their owners;
the others crossing wait for their owner's cap. On Tuesday some contacts refuse e-mail and some
become decision makers: Ratings change, and the waiting hand-offs are made. A clean run gives the
reference: every lead's Rating, every task with its id, subject, description, due date, regarding
lead and owner.

Each kill case runs the scenario with one kill point per day, where `dvconnect run scoring` (a
process of its own) is killed with SIGKILL, then run again to its end:

* `settle` / `hand-off` — a place among the rating intents (or the hand-off intents) the clean run
  recorded that day. Those steps send nothing, so no request can be held there: the test adds a
  trigger to the store that stalls the process's transaction when it records that intent (the
  chunks before it are committed, its own is not), waits until the process holds the store's
  write lock for seconds, and kills it;
* `hold` / `commit-hold` — a place among the write requests the clean run sent that day: the
  emulator holds that request of the drain (before executing it, or after committing it).

Each fault case runs the scenario with the fault aimed at the writes and checks that it fired.
Either way: every scored lead's Rating is its grade in the store, each hand-off task exists
exactly once (by its id, and by its lead), no scoring intent is left pending or failed, and the
org equals the clean run's.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Cli
from tests.e2e.journey_org import START, Org
from tests.paths import MAPPINGS

MODEL = "crossings"
RATINGS = {"hot": 1, "warm": 2, "cold": 3}
DAYS = (("monday", 0), ("tuesday", 1))  # name, days after the previous
KINDS = ("settle", "hand-off", "hold", "commit-hold")
STALLED_FOR = 2.0  # seconds the write lock stays taken: no clean transaction here lasts that long
_reference: dict[str, Any] = {}

MODEL_TEXT = f"""name: {MODEL}
leads: "statecode eq 0"
rules:
  - id: web-lead
    reason: came from the web
    points: 20
    lead: "leadsourcecode eq 8"
  - id: decision-maker
    reason: is a decision maker
    points: 15
    contact: "accountrolecode eq 1"
  - id: conference-lead
    reason: met us at the Contoso Ltd Conference
    points: 10
    lead: "subject eq 'Contoso Ltd Conference'"
  - id: no-email
    reason: does not accept e-mail
    points: -20
    contact: "donotemail eq true"
grades: {{warm: 20, hot: 40}}
sales_ready: 20
hand_off:
  activity: task
  subject: "Sales-ready: {{{{ lead.fullname or lead.subject }}}}"
  due: {{business_days: 1}}
  timezone: Europe/Zurich
  business_hours: {{days: [mon, tue, wed, thu, fri], from: "09:00", to: "17:00"}}
  per_owner_per_day: 10
"""

FAULTS_ON_WRITES = {
    "429 bursts": "429:method=POST:every=2:retry-after=0",
    "503s": "503:method=POST:every=2:retry-after=0",
    "dropped connections": "drop:method=POST:every=2",
    "commit then drop": "commit-drop:method=POST:every=2",
    "everything at once": "429:method=POST:at=1:retry-after=0,503:method=POST:at=2:"
    "retry-after=0,drop:method=POST:at=3,commit-drop:method=POST:at=4;6",
}


@dataclass(frozen=True)
class KillPoint:
    """Where a day's scoring run is killed: at its `kind` (see the module docstring), `place` of
    the way through the intents or write requests the clean run made that day."""

    kind: str
    place: float

    def __str__(self) -> str:
        return f"{self.kind}@{self.place:.2f}"

    def nth(self, count: int) -> int:
        return 1 + int(self.place * count)


def kill_plans(seed: int, count: int) -> list[list[tuple[str, KillPoint]]]:
    """Scenarios of one kill point per day, `count` points in all, drawn from `seed`; the kinds
    taken in turn so that each is drawn as often as the others."""
    rng = random.Random(seed)
    points = [KillPoint(KINDS[n % len(KINDS)], rng.random()) for n in range(count)]
    rng.shuffle(points)
    return [
        [(day, point) for (day, _), point in zip(DAYS, points[start:], strict=False)]
        for start in range(0, count, len(DAYS))
    ]


KILLS = kill_plans(seed=1414, count=12)


def _mappings(tmp: Path) -> Path:
    copy = tmp / "mappings"
    shutil.copytree(MAPPINGS, copy)
    for model in (copy / "scoring").glob("*.yaml"):
        model.unlink()
    (copy / "scoring" / f"{MODEL}.yaml").write_text(MODEL_TEXT)
    return copy


def _query(org: Org, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(org.cli.database) as db:
        return db.execute(sql, args).fetchall()


def org_state(org: Org) -> dict[str, Any]:
    """Every lead's Rating, and every task: what it says, about whom, for whom, when due."""
    keys = ("subject", "description", "scheduledend", "_regardingobjectid_value",
            "_ownerid_value", "statecode")  # fmt: skip
    tasks = {task["activityid"]: tuple(task.get(k) for k in keys) for task in org.rows("task")}
    ratings = {lead["leadid"]: lead.get("leadqualitycode") for lead in org.rows("lead")}
    return {"tasks": tasks, "ratings": ratings}


def assert_consistent(org: Org) -> None:
    """What holds after any run to its end, whatever happened before it."""
    grades = dict(_query(org, "SELECT leadid, grade FROM dvc_scores WHERE model = ?", MODEL))
    leads = {lead["leadid"]: lead for lead in org.rows("lead")}
    wrong = {lead: grade for lead, grade in grades.items()
             if leads[lead].get("leadqualitycode") != RATINGS[grade]}  # fmt: skip
    assert not wrong, f"{len(wrong)} leads' Rating is not their grade, e.g. {next(iter(wrong))}"
    handed = _query(org, "SELECT record_id, leadid FROM dvc_handoffs WHERE model = ?", MODEL)
    assert len(handed) == len({lead for _, lead in handed}), "a crossing handed off twice"
    tasks = {task["activityid"]: task for task in org.rows("task")}
    per_lead = Counter(task["_regardingobjectid_value"] for task in tasks.values())
    for record_id, lead in handed:
        assert record_id in tasks, f"the hand-off of lead {lead} is missing (task {record_id})"
        assert tasks[record_id]["_regardingobjectid_value"] == lead
        assert per_lead[lead] == 1, f"lead {lead} has {per_lead[lead]} tasks"
    assert set(tasks) == {record_id for record_id, _ in handed}
    left = _query(org, "SELECT status, count(*) FROM dvc_outbox WHERE job = 'scoring' "
                       "AND status != 'done' GROUP BY status")  # fmt: skip
    assert left == []


def prepare(org: Org) -> None:
    org.cli.emulator.reset(leads=3000, contacts=1500)
    org.at(START)
    org.run("run", "sync")


def change_contacts(org: Org) -> None:
    """Tuesday: contacts of 60 open leads refuse e-mail, of 60 others become decision makers."""
    contacts = sorted({lead["_parentcontactid_value"] for lead in org.rows("lead")
                       if lead["statecode"] == 0 and lead["_parentcontactid_value"]})  # fmt: skip
    for contact in contacts[:60]:
        org.cli.emulator.admin("PATCH", f"/tables/contact/{contact}", {"donotemail": True})
    for contact in contacts[60:120]:
        org.cli.emulator.admin("PATCH", f"/tables/contact/{contact}", {"accountrolecode": 1})


def scenario(
    org: Org, kills: dict[str, KillPoint] | None = None, fault: str | None = None
) -> dict[str, dict[str, int]]:
    """Both days; a kill point per day in `kills`, or `fault` over the scoring runs (every
    rule of which must fire). Returns what each day's run did: intents and write requests."""
    if fault is not None:
        org.cli.emulator.admin("PUT", "/faults", {"spec": fault, "seed": 3})
    done = {}
    for day, days in DAYS:
        org.advance(days=days)
        if day == "tuesday":
            change_contacts(org)
            org.run("run", "sync")
        point = (kills or {}).get(day)
        if point is not None:
            kill_at(org, point, _reference["done"][day])
        seq = org.last_seq()
        counts = org.run("run", "scoring", "--json")["runs"][0]["counts"][MODEL]
        writes = sum(1 for r in org.writes_since(seq) if r["method"] == "POST")
        done[day] = {"rated": counts["rated"], "handed_off": counts["handed_off"],
                     "writes": writes}  # fmt: skip
        assert_consistent(org)
    if fault is not None:
        fired = {
            r["rule"]: r["injected"] for r in org.cli.emulator.admin("GET", "/faults")["rules"]
        }
        org.cli.emulator.admin("DELETE", "/faults")
        assert all(fired.values()), f"a fault never fired on a write: {fired}"
    return done


def kill_at(org: Org, point: KillPoint, clean: dict[str, int]) -> None:
    """Start `run scoring`, kill it with SIGKILL at `point`, check where it landed."""
    if point.kind in ("hold", "commit-hold"):
        spec = f"{point.kind}:method=POST:at={point.nth(clean['writes'])}"
        org.cli.emulator.admin("PUT", "/faults", {"spec": spec})
    else:
        ((last,),) = _query(org, "SELECT coalesce(max(intent_id), 0) FROM dvc_outbox")
        nth = point.nth(clean["rated"] if point.kind == "settle" else clean["handed_off"])
        target = last + nth + (clean["rated"] if point.kind == "hand-off" else 0)
        _query(org, f"CREATE TRIGGER test_stall AFTER INSERT ON dvc_outbox WHEN NEW.intent_id "
                    f"= {target} BEGIN SELECT count(*) FROM lead a, lead b, lead c, lead d; END")  # fmt: skip
    seq = org.last_seq()
    process = org.cli.popen("run", "scoring", DVCONNECT_NOW=org.now.strftime("%Y-%m-%dT%H:%M:%SZ"))
    if point.kind in ("hold", "commit-hold"):
        org.cli.wait_until_held(process)
    else:
        wait_until_stalled(org.cli, process)
    process.kill()
    process.wait()
    pending = _query(org, "SELECT count(*) FROM dvc_outbox WHERE job = 'scoring' "
                          "AND status = 'pending'")[0][0]  # fmt: skip
    if point.kind in ("hold", "commit-hold"):
        assert pending > 0, f"{point}: the kill did not land mid-drain"
        org.cli.emulator.admin("DELETE", "/faults")  # releases the held write
    else:
        _query(org, "DROP TRIGGER test_stall")
        assert org.writes_since(seq) == [], f"{point}: the kill landed after the drain began"
        assert pending < clean["rated"] + clean["handed_off"]


def wait_until_stalled(cli: Cli, process: Any) -> None:
    """Wait until `process` holds the store's write lock for `STALLED_FOR` seconds: it is
    inside the stalled transaction. Fail when it ends first."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "the process ended before the intent it was stalled at"
        db = sqlite3.connect(cli.database, timeout=STALLED_FOR, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            return
        finally:
            db.close()
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the stall")


def reference(org: Org) -> dict[str, Any]:
    if "state" not in _reference:
        prepare(org)
        _reference["done"] = scenario(org)
        _reference["state"] = org_state(org)
        org.cli.database.unlink()
    return _reference["state"]  # type: ignore[no-any-return]


@pytest.fixture
def org(cli: Cli, tmp_path: Path) -> Org:
    cli.env["DVCONNECT_MAPPINGS_DIR"] = str(_mappings(tmp_path))
    return Org(cli)


def test_the_scenario_rates_thousands_and_hands_off_hundreds_over_two_days(org: Org) -> None:
    clean = reference(org)
    done = _reference["done"]
    assert done["monday"]["rated"] > 1500
    assert done["monday"]["handed_off"] >= 100
    assert done["tuesday"]["rated"] > 0
    assert done["tuesday"]["handed_off"] > 0
    assert len(clean["tasks"]) == done["monday"]["handed_off"] + done["tuesday"]["handed_off"]


@pytest.mark.parametrize("plan", KILLS, ids=[" + ".join(str(k) for _, k in p) for p in KILLS])
def test_kill_9_at_seeded_points_of_scoring_runs_then_rerun_ends_as_a_clean_run(
    org: Org, plan: list[tuple[str, KillPoint]]
) -> None:
    clean = reference(org)
    prepare(org)
    scenario(org, kills=dict(plan))
    assert org_state(org) == clean


@pytest.mark.parametrize("spec", FAULTS_ON_WRITES.values(), ids=FAULTS_ON_WRITES.keys())
def test_faults_on_scoring_writes_change_nothing_in_the_outcome(org: Org, spec: str) -> None:
    clean = reference(org)
    prepare(org)
    scenario(org, fault=spec)
    assert org_state(org) == clean
