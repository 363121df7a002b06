"""Journeys under faults and kills: the org ends with exactly the records of a clean run.

The scenario is the product launch over three phases — the launch e-mails (day 0), the openers'
newsletter and calls (day 1), the others' brochure (day 6) — with opens recorded for the same
members each time, plus the conference follow-up's calls. A clean run gives the reference: every
e-mail, phone call and task with its id, subject, status, regarding record, owner and parties.

Each kill case runs the scenario (both journeys live) with one kill per phase: the emulator holds
one of the journeys run's writes (before executing it, or after committing it), the test kills
the CLI with SIGKILL there — so the kill lands at that point of the work, which the test checks —
releases it, and runs the journeys again. Twenty such points are drawn from a seed, as places
among the POSTs the clean run made in that phase. Each fault case runs the
scenario with the fault aimed at the writes, and checks that it fired. Either way: no record
twice, none missing, no e-mail sent twice (Dataverse refuses to send a mail that is not a draft,
and no member may have failed).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import pytest

from tests.e2e.conftest import Cli
from tests.e2e.journey_org import START, Org

PHASES = (("launch", 0), ("openers", 1), ("timeouts", 5))  # name, days after the previous
KINDS = ("hold", "commit-hold")
_reference: dict[str, Any] = {}

# Every N-th write fails (a guard read and its send alternate: N = 2 would fail every send).
FAULTS_ON_WRITES = {
    "429 bursts": "429:method=POST:every=2:retry-after=0",
    "503s": "503:method=POST:every=3:retry-after=0",
    "504s": "504:method=POST:every=3:retry-after=0",
    "dropped connections": "drop:method=POST:every=3",
    "commit then drop": "commit-drop:method=POST:every=2",
    "everything at once": "429:method=POST:every=5:retry-after=0,503:method=POST:every=7:"
    "retry-after=0,drop:method=POST:every=9,commit-drop:method=POST:every=3",
}


@dataclass(frozen=True)
class KillPoint:
    """Where a phase's journeys run is killed: at its `kind` of the write `place` of the way
    through the POSTs the clean run made in that phase (counted by the reference run)."""

    kind: str
    place: float

    def spec(self, writes: int) -> str:
        return f"{self.kind}:method=POST:at={1 + int(self.place * writes)}"

    def __str__(self) -> str:
        return f"{self.kind}@{self.place:.2f}"


def kill_plans(seed: int, count: int) -> list[list[tuple[str, KillPoint]]]:
    """Scenarios of one kill point per phase, `count` points in all, drawn from `seed`."""
    rng = random.Random(seed)
    plans = []
    while sum(len(p) for p in plans) < count:
        plan = [(phase, KillPoint(rng.choice(KINDS), rng.random())) for phase, _ in PHASES]
        plans.append(plan[: count - sum(len(p) for p in plans)])
    return plans


KILLS = kill_plans(seed=2027, count=20)


def org_state(org: Org) -> dict[str, Any]:
    """Every activity in the org: what it is, about whom, and its parties."""
    parties: dict[str, list[tuple[Any, ...]]] = {}
    for party in org.rows("activityparty"):
        parties.setdefault(party["_activityid_value"], []).append(
            (party["participationtypemask"], party["_partyid_value"])
        )
    state = {}
    for table in ("email", "phonecall", "task"):
        for row in org.rows(table):
            state[row["activityid"]] = (
                table, row["subject"], row["statecode"], row["statuscode"],
                row["_regardingobjectid_value"], row["_ownerid_value"], row.get("scheduledend"),
                sorted(parties.get(row["activityid"], [])),
            )  # fmt: skip
    return state


def prepare(org: Org) -> None:
    org.cli.emulator.reset(leads=3000, contacts=1500)
    org.at(START)
    org.run("run", "sync")
    org.run("run", "segments")
    org.run("journeys", "start", "product-launch")
    org.run("journeys", "start", "conference-follow-up")


def open_half(org: Org) -> None:
    """Record an open on the launch e-mail of the same half of the members each time."""
    launch = sorted(
        (e for e in org.rows("email") if "meet the new Contoso toolkit" in e["subject"]),
        key=lambda e: e["_regardingobjectid_value"],
    )
    for email in launch[: len(launch) // 2]:
        org.cli.emulator.admin("POST", f"/emails/{email['activityid']}/engagement", {"opens": 1})


def scenario(
    org: Org, kills: dict[str, KillPoint] | None = None, fault: str | None = None
) -> dict[str, int]:
    """The three phases; a kill point per phase in `kills`, or `fault` over the journeys runs
    (every rule of which must fire in the scenario). Returns the POSTs of each phase's run."""
    if fault is not None:
        org.cli.emulator.admin("PUT", "/faults", {"spec": fault, "seed": 3})
    writes = {}
    for phase, days in PHASES:
        org.advance(days=days)
        if phase == "openers":
            open_half(org)
        if phase != "launch":
            org.run("run", "sync")
        point = (kills or {}).get(phase)
        if point is not None:
            kill_at(org, point.spec(_reference["writes"][phase]))
        seq = org.last_seq()
        org.run("run", "journeys")
        writes[phase] = sum(1 for r in org.writes_since(seq) if r["method"] == "POST")
    if fault is not None:
        fired = {
            r["rule"]: r["injected"] for r in org.cli.emulator.admin("GET", "/faults")["rules"]
        }
        org.cli.emulator.admin("DELETE", "/faults")
        assert all(fired.values()), f"a fault never fired on a write: {fired}"
    failed = org.run("journeys", "show", "product-launch", "--json")["members"].get("failed", 0)
    assert failed == 0
    return writes


def kill_at(org: Org, spec: str) -> None:
    org.cli.emulator.admin("PUT", "/faults", {"spec": spec})
    process = org.cli.popen("run", "journeys", DVCONNECT_NOW=org.now.strftime("%Y-%m-%dT%H:%M:%SZ"))
    org.cli.wait_until_held(process)
    process.kill()
    process.wait()
    store = org.cli.store()
    with store.engine.connect() as conn:
        pending = conn.exec_driver_sql(
            "SELECT count(*) FROM dvc_outbox WHERE job = 'journeys' AND status = 'pending'"
        ).scalar_one()
    assert pending > 0, f"{spec}: the kill did not land mid-work"
    org.cli.emulator.admin("DELETE", "/faults")  # releases the held write


def reference(org: Org) -> dict[str, Any]:
    if "state" not in _reference:
        prepare(org)
        _reference["writes"] = scenario(org)
        _reference["state"] = org_state(org)
        org.cli.database.unlink()
    return _reference["state"]


@pytest.fixture
def org(cli: Cli) -> Org:
    return Org(cli)


@pytest.mark.parametrize("plan", KILLS, ids=[" + ".join(str(k) for _, k in p) for p in KILLS])
def test_kill_9_at_seeded_points_of_journey_runs_then_rerun_ends_as_a_clean_run(
    org: Org, plan: list[tuple[str, KillPoint]]
) -> None:
    clean = reference(org)
    assert clean
    prepare(org)
    scenario(org, kills=dict(plan))
    assert org_state(org) == clean


@pytest.mark.parametrize("spec", FAULTS_ON_WRITES.values(), ids=FAULTS_ON_WRITES.keys())
def test_faults_on_journey_writes_change_nothing_in_the_outcome(org: Org, spec: str) -> None:
    clean = reference(org)
    prepare(org)
    scenario(org, fault=spec)
    assert org_state(org) == clean


def test_an_access_token_revoked_mid_journey_is_renewed(org: Org) -> None:
    clean = reference(org)
    prepare(org)
    org.cli.emulator.admin("POST", "/tokens/revoke")
    scenario(org)
    assert org_state(org) == clean
