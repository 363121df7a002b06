"""Three journey write paths under kill -9 and faults: round-robin spill, trigger admissions and
`journeys retry`. Each ends with exactly the records of a clean run with the same setup.

The kills land at seeded points of a run's work, in two ways. At a write (as in
`test_journeys_resilience`): the emulator holds one of the run's POSTs, before executing it
(`hold`) or after committing it (`commit-hold`); the test kills the CLI with SIGKILL there,
releases the hold and runs again. Inside a store transaction: the CLI runs in a subprocess whose
`Store.transaction` sends itself SIGKILL in the N-th transaction, after its statements and
before its commit — a kill between two of the run's commits (an admission chunk, a chunk of
members decided, a sync page with its captured changes) that no HTTP request marks. The points
are drawn from a seed, as places among the POSTs or transactions the clean run made there.

* **spill** — a journey whose owners are a round robin, capped per owner and day with
  `spill: round_robin` and `entries_per_day`, members decided two at a time; four days of runs.
* **triggers** — leads created and retitled in the org admit members of two trigger journeys
  after `run sync` and `run journeys`; the journeys' own writes come back with the next sync and
  admit nobody. Two kills land in a sync's incremental read: in a page's transaction as it
  captures the page's changes, and in the one after such a page committed.
* **retry** — a member's e-mail is refused (its lead deleted in the org after the sync: 404);
  the lead comes back, `journeys retry` puts the member back, and the next run sends under a
  `commit-drop` fault or is killed at a held write.

Each time: no record twice, none missing, the same ids, owners, subjects and regarding records
as the clean run, one member per lead, and no member failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection

from connector.store import Store
from tests.e2e.conftest import ROOT, Cli
from tests.e2e.journey_org import QUEUE, START, Org
from tests.paths import MAPPINGS
from tests.resilience.test_journeys_resilience import KillPoint, org_state

# A `dvconnect` whose N-th store transaction (KILL_IN_TRANSACTION) kills the process with
# SIGKILL after its statements, before its commit.
KILLING_CLI = """
import os, signal, sys
from contextlib import contextmanager
from connector.store import Store
from jobs.cli import main

limit, count, original = int(os.environ["KILL_IN_TRANSACTION"]), 0, Store.transaction

@contextmanager
def transaction(self):
    global count
    count += 1
    with original(self) as conn:
        yield conn
        if count == limit:
            os.kill(os.getpid(), signal.SIGKILL)

Store.transaction = transaction
sys.exit(main(sys.argv[1:]))
"""
SCHEDULE = """schedule: {start: 2027-01-04T08:00, end: 2027-06-30T18:00, timezone: Europe/Zurich}
business_hours: {days: [mon, tue, wed, thu, fri], from: "09:00", to: "17:00"}
"""


@dataclass(frozen=True)
class Kill:
    """A kill point, `place` of the way through the clean run's work of its kind: `hold` or
    `commit-hold` at one of its POSTs; or in one of its store transactions that admitted members
    by trigger (`admission`), decided members' records (`decision`) or captured a sync page's
    changes (`capture`) — or in the transaction after one (`after admission`, …): the kill
    lands after that one's commit."""

    kind: str
    place: float

    def __str__(self) -> str:
        return f"{self.kind}@{self.place:.2f}"


GROWS = {  # a kind of transaction: the table it adds rows to
    "admission": "dvc_change_uses",
    "decision": "dvc_journey_records",
    "capture": "dvc_changes",
}


def draw(seed: int, phases: list[str], count: int, kinds: tuple[str, ...]) -> list[dict[str, Kill]]:
    """Kill plans of `count` points in all, each plan one point in each of some phases."""
    rng = random.Random(seed)
    plans: list[dict[str, Kill]] = []
    while sum(len(p) for p in plans) < count:
        chosen = sorted(rng.sample(phases, 2), key=phases.index)
        plan = {phase: Kill(rng.choice(kinds), rng.random()) for phase in chosen}
        plans.append(dict(list(plan.items())[: count - sum(len(p) for p in plans)]))
    return plans


def plan_id(plan: dict[str, Kill]) -> str:
    return " + ".join(f"{phase}:{kill}" for phase, kill in plan.items())


@dataclass
class Work:
    """What a command did in the clean run: its POSTs, and its store transactions (their
    number, and for each table of `GROWS` those that added rows to it)."""

    posts: int
    transactions: int
    grew: dict[str, list[int]]


@contextmanager
def counting_transactions() -> Iterator[tuple[list[int], dict[str, list[int]]]]:
    """Count the store transactions begun in this process (the in-process CLI's runs), and
    note which add rows to the tables of `GROWS`."""
    counted = [0]
    grew: dict[str, list[int]] = {table: [] for table in GROWS.values()}
    original = Store.transaction

    def sizes(conn: Connection) -> dict[str, int]:
        return {t: conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar_one() for t in grew}

    @contextmanager
    def transaction(self: Store) -> Iterator[Connection]:
        counted[0] += 1
        number = counted[0]
        with original(self) as conn:
            before = sizes(conn)
            yield conn
            after = sizes(conn)
        for table in grew:
            if after[table] > before[table]:
                grew[table].append(number)

    Store.transaction = transaction  # type: ignore[method-assign]
    try:
        yield counted, grew
    finally:
        Store.transaction = original  # type: ignore[method-assign]


def measured(org: Org, *args: str) -> Work:
    """Run `dvconnect ARGS` at the org's instant; the POSTs and transactions it made."""
    seq = org.last_seq()
    with counting_transactions() as (counted, grew):
        org.run(*args)
    posts = sum(1 for r in org.writes_since(seq) if r["method"] == "POST")
    return Work(posts, counted[0], grew)


def now_env(org: Org) -> dict[str, str]:
    return {"DVCONNECT_NOW": org.now.strftime("%Y-%m-%dT%H:%M:%SZ")}


def kill_in_transaction(org: Org, number: int, *args: str) -> None:
    """Run `dvconnect ARGS` in a subprocess that kills itself in its `number`-th transaction."""
    env = org.cli.environment(KILL_IN_TRANSACTION=str(number), **now_env(org))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    process = subprocess.run(
        [sys.executable, "-c", KILLING_CLI, *args], cwd=org.cli.workdir, env=env,
        capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert process.returncode == -signal.SIGKILL, (
        f"transaction {number} of {args}: the kill did not land ({process.returncode}): "
        f"{process.stderr[-2000:]}"
    )


def kill_at_write(org: Org, spec: str, *args: str) -> None:
    """Run `dvconnect ARGS` until the emulator holds the write `spec` names, kill it there with
    SIGKILL, check that writes were left to send, and release the hold."""
    org.cli.emulator.admin("PUT", "/faults", {"spec": spec})
    process = org.cli.popen(*args, **now_env(org))
    org.cli.wait_until_held(process)
    process.kill()
    process.wait()
    assert pending_writes(org) > 0, f"{spec}: the kill did not land mid-work"
    org.cli.emulator.admin("DELETE", "/faults")  # releases the held write


def pending_writes(org: Org) -> int:
    with org.cli.store().engine.connect() as conn:
        found = conn.exec_driver_sql(
            "SELECT count(*) FROM dvc_outbox WHERE job = 'journeys' AND status = 'pending'"
        ).scalar_one()
    return int(found)


def kill(org: Org, point: Kill, work: Work, *args: str) -> None:
    """Kill `dvconnect ARGS` at `point` of the work the clean run measured there."""
    if point.kind in ("hold", "commit-hold"):
        kill_at_write(org, KillPoint(point.kind, point.place).spec(work.posts), *args)
    else:
        kind = point.kind.removeprefix("after ")
        numbers = work.grew[GROWS[kind]]
        assert numbers, f"the clean run made no {kind} to kill {args} at"
        number = numbers[int(point.place * len(numbers))]
        kill_in_transaction(org, number + (kind != point.kind), *args)


def store_rows(org: Org, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with org.cli.store().engine.connect() as conn:
        return [tuple(row) for row in conn.exec_driver_sql(sql, params).all()]


def failed_members(org: Org) -> list[tuple[Any, ...]]:
    return store_rows(org, "SELECT journey, member_id, error FROM dvc_journey_members "
                           "WHERE status = 'failed'")  # fmt: skip


def use_journeys(cli: Cli, tmp_path: Path, journeys: dict[str, str],
                 segments: dict[str, str] | None = None) -> None:  # fmt: skip
    """A copy of the sample mappings with only `journeys` (and `segments` added)."""
    mappings = tmp_path / "mappings"
    shutil.rmtree(mappings, ignore_errors=True)
    shutil.copytree(MAPPINGS, mappings)
    shutil.rmtree(mappings / "journeys")
    (mappings / "journeys").mkdir()
    for name, text in journeys.items():
        (mappings / "journeys" / f"{name}.yaml").write_text(text, encoding="utf-8")
    for name, text in (segments or {}).items():
        (mappings / "segments" / f"{name}.yaml").write_text(text, encoding="utf-8")
    cli.env["DVCONNECT_MAPPINGS_DIR"] = str(mappings)


@pytest.fixture
def org(cli: Cli) -> Org:
    return Org(cli)


# -- round-robin spill --------------------------------------------------------------------------

SPILL_SEGMENT = """name: webinar-leads
lead: "subject eq 'Webinar: Data Platform 101' and statecode eq 0"
"""
SPILL_DAYS = ["mon", "tue", "wed", "thu"]
SPILL_KILLS = draw(
    seed=7, phases=SPILL_DAYS, count=4, kinds=("hold", "commit-hold", "decision", "after decision")
)
_spill: dict[str, Any] = {}


def spill_journey(users: list[str]) -> str:
    return (
        f"""name: webinar-calls
audience: {{segment: webinar-leads}}
entry: dynamic
re_entry: never
owner: {{round_robin: [{", ".join(users)}]}}
caps: {{per_owner_per_day: 3, spill: round_robin, entries_per_day: 7}}
"""
        + SCHEDULE
        + """steps:
  - id: call
    phonecall: {subject: "Call {{ contact.fullname }} about the webinar", due: {business_days: 2}}
  - id: prepare
    task: {subject: "Prepare the demo for {{ contact.fullname }}", due: {business_days: 1}}
  - id: done
    end: true
"""
    )


def spill_setup(org: Org, tmp_path: Path) -> list[str]:
    org.cli.emulator.reset()
    users = sorted(u["systemuserid"] for u in org.rows("systemuser") if not u["isdisabled"])[:3]
    use_journeys(org.cli, tmp_path, {"webinar-calls": spill_journey(users)},
                 {"webinar-leads": SPILL_SEGMENT})  # fmt: skip
    org.cli.env["DVCONNECT_JOURNEY_CHUNK"] = "2"  # members decided two at a time
    org.at(START)
    org.run("run", "all")
    org.run("journeys", "start", "webinar-calls")
    return users


def own_owner(users: list[str], member: str) -> str:
    """The member's owner by the round robin (before any spill): its key's hash picks one."""
    digest = hashlib.sha256(f"webinar-calls/{member}/owner".encode()).digest()
    return users[int.from_bytes(digest[:8], "big") % len(users)]


def spill_scenario(org: Org, kills: dict[str, Kill] | None = None) -> dict[str, Work]:
    work = {}
    for day, name in enumerate(SPILL_DAYS):
        org.at(START + timedelta(days=day, hours=1))
        point = (kills or {}).get(name)
        if point is not None:
            kill(org, point, _spill["work"][name], "run", "journeys")
        work[name] = measured(org, "run", "journeys")
    assert failed_members(org) == []
    return work


def spill_reference(org: Org, tmp_path: Path) -> dict[str, Any]:
    if "state" not in _spill:
        users = spill_setup(org, tmp_path)
        _spill["work"] = spill_scenario(org)
        _spill["state"] = org_state(org)
        _spill["owners"] = store_rows(
            org, "SELECT owner_id, day, count(*) FROM dvc_journey_records GROUP BY owner_id, day"
        )
        written = store_rows(
            org,
            "SELECT m.contactid, m.entry, r.owner_id FROM "
            "dvc_journey_records r JOIN dvc_journey_members m USING (member_id)",
        )
        _spill["reassigned"] = sum(
            1
            for contact, entry, owner in written
            if owner != own_owner(users, f"{contact}/{entry}")
        )
        _spill["capped"] = store_rows(
            org, "SELECT count(*) FROM dvc_journey_history WHERE event = 'capped'"
        )[0][0]
        _spill["entry days"] = store_rows(
            org, "SELECT count(DISTINCT entered_at) FROM dvc_journey_members"
        )[0][0]
        org.cli.database.unlink()
    state: dict[str, Any] = _spill["state"]
    return state


def test_the_clean_spill_run_caps_owners_and_spills_to_the_others(org: Org, tmp_path: Path) -> None:
    """The reference is worth comparing with: owners are capped, work is spilled, entries
    are deferred, and every member is written for."""
    clean = spill_reference(org, tmp_path)
    assert all(count <= 3 for _, _, count in _spill["owners"])
    assert len({owner for owner, _, _ in _spill["owners"]}) == 3
    assert sum(count for _, _, count in _spill["owners"]) == len(clean)
    assert _spill["reassigned"] > 0
    assert _spill["capped"] > 0
    assert _spill["entry days"] == len(SPILL_DAYS)  # entries_per_day deferred the others
    assert all(work.grew["dvc_journey_records"] for work in _spill["work"].values())
    assert {table for table, *_ in clean.values()} == {"phonecall", "task"}


@pytest.mark.parametrize("plan", SPILL_KILLS, ids=[plan_id(p) for p in SPILL_KILLS])
def test_kill_9_during_round_robin_spill_then_rerun_ends_as_a_clean_run(
    org: Org, tmp_path: Path, plan: dict[str, Kill]
) -> None:
    clean = spill_reference(org, tmp_path)
    spill_setup(org, tmp_path)
    spill_scenario(org, kills=plan)
    assert org_state(org) == clean


# -- trigger admissions -------------------------------------------------------------------------

TRIGGER_JOURNEYS = {
    "toolkit-welcome": """name: toolkit-welcome
trigger:
  lead: {created: true, filter: "startswith(subject,'Toolkit')"}
"""
    + SCHEDULE
    + """steps:
  - id: welcome
    task: {subject: "Welcome {{ lead.fullname }}"}
  - id: mark
    update: {table: lead, values: {jobtitle: Welcomed}}
  - id: later
    wait: 30d
  - id: done
    end: true
""",
    "retitled": """name: retitled
trigger:
  lead: {changed: jobtitle}
"""
    + SCHEDULE
    + """steps:
  - id: note
    phonecall: {subject: "Ask {{ lead.fullname }} about the new role: {{ lead.jobtitle }}"}
  - id: later
    wait: 30d
  - id: done
    end: true
""",
}
TRIGGER_PHASES = ["first", "second"]
TRIGGER_KILLS = draw(
    seed=11,
    phases=TRIGGER_PHASES,
    count=4,
    kinds=("hold", "commit-hold", "admission", "after admission", "decision"),
)
SYNC_KILLS = [Kill("capture", random.Random(13).random()),
              Kill("after capture", random.Random(17).random())]  # fmt: skip
_triggers: dict[str, Any] = {}


def trigger_setup(org: Org, tmp_path: Path) -> None:
    use_journeys(org.cli, tmp_path, TRIGGER_JOURNEYS)
    org.cli.env["DVCONNECT_JOURNEY_CHUNK"] = "3"
    org.cli.env["DVCONNECT_PAGE_SIZE"] = "6"  # the changes span pages
    org.cli.emulator.reset()
    org.at(START)
    org.run("run", "all")  # the first, full read: no row is a change
    for name in TRIGGER_JOURNEYS:
        org.run("journeys", "start", name)


def change_the_org(org: Org, phase: str) -> None:
    """Leads created on Toolkit topics, and job titles changed, in the org: the same each time."""
    contacts = sorted(c["contactid"] for c in org.rows("contact") if c["statecode"] == 0)
    start = 0 if phase == "first" else 8
    rows = [
        {"leadid": f"7e1a0000-0000-4000-8000-{n:012d}", "statecode": 0, "statuscode": 1,
         "lastname": f"Trigger {n}", "subject": f"Toolkit {'webinar' if n % 2 else 'demo'}",
         "_parentcontactid_value": contacts[n % 5]}
        for n in range(start, start + 8)
    ]  # fmt: skip
    org.cli.emulator.admin("POST", "/tables/lead", {"rows": rows})
    leads = sorted(
        (lead["leadid"] for lead in org.rows("lead")
         if lead["statecode"] == 0 and lead["_parentcontactid_value"]
         and not lead["leadid"].startswith("7e1a0000")),
    )  # fmt: skip
    for lead in leads[start : start + 5]:
        org.cli.emulator.admin("PATCH", f"/tables/lead/{lead}", {"jobtitle": f"Head of {phase}"})


def trigger_scenario(org: Org, kills: dict[str, Kill] | None = None,
                     sync_kill: Kill | None = None) -> dict[str, Work]:  # fmt: skip
    work = {}
    for phase in TRIGGER_PHASES:
        org.advance(hours=1)
        change_the_org(org, phase)
        if sync_kill is not None and phase == "first":
            kill(org, sync_kill, _triggers["work"]["sync"], "run", "sync")
            assert org.cli.store().load_state("lead").next_link is not None, "not mid-read"
        work["sync" if phase == "first" else "sync 2"] = measured(org, "run", "sync")
        point = (kills or {}).get(phase)
        if point is not None:
            kill(org, point, _triggers["work"][phase], "run", "journeys")
        work[phase] = measured(org, "run", "journeys")
        org.advance(hours=1)
        org.run("run", "sync")  # the journeys' own writes come back: they admit nobody
        org.run("run", "journeys")
    assert failed_members(org) == []
    return work


def trigger_members(org: Org) -> list[tuple[Any, ...]]:
    """Every member: journey, lead, contact, status, entry."""
    return sorted(store_rows(org, "SELECT journey, leadid, contactid, status, entry "
                                  "FROM dvc_journey_members"))  # fmt: skip


def trigger_reference(org: Org, tmp_path: Path) -> dict[str, Any]:
    if "state" not in _triggers:
        trigger_setup(org, tmp_path)
        _triggers["work"] = trigger_scenario(org)
        _triggers["state"] = org_state(org)
        _triggers["members"] = trigger_members(org)
        _triggers["titles"] = {r["leadid"]: r["jobtitle"] for r in org.rows("lead")}
        org.cli.database.unlink()
    state: dict[str, Any] = _triggers["state"]
    return state


def assert_trigger_outcome(org: Org, clean: dict[str, Any]) -> None:
    members = trigger_members(org)
    per_lead = [(journey, lead) for journey, lead, *_ in members]
    assert len(per_lead) == len(set(per_lead)), "a lead is in a journey twice"
    assert members == _triggers["members"]
    assert org_state(org) == clean
    assert {r["leadid"]: r["jobtitle"] for r in org.rows("lead")} == _triggers["titles"]


def test_the_clean_trigger_run_admits_every_lead_once(org: Org, tmp_path: Path) -> None:
    clean = trigger_reference(org, tmp_path)
    journeys = [journey for journey, *_ in _triggers["members"]]
    assert (journeys.count("toolkit-welcome"), journeys.count("retitled")) == (16, 10)
    assert len(clean) == 26
    assert sum(work.posts for work in _triggers["work"].values()) >= 4


@pytest.mark.parametrize("plan", TRIGGER_KILLS, ids=[plan_id(p) for p in TRIGGER_KILLS])
def test_kill_9_during_trigger_admissions_then_rerun_ends_as_a_clean_run(
    org: Org, tmp_path: Path, plan: dict[str, Kill]
) -> None:
    clean = trigger_reference(org, tmp_path)
    trigger_setup(org, tmp_path)
    trigger_scenario(org, kills=plan)
    assert_trigger_outcome(org, clean)


@pytest.mark.parametrize("point", SYNC_KILLS, ids=[str(k) for k in SYNC_KILLS])
def test_kill_9_in_a_sync_page_capturing_changes_then_rerun_ends_as_a_clean_run(
    org: Org, tmp_path: Path, point: Kill
) -> None:
    clean = trigger_reference(org, tmp_path)
    trigger_setup(org, tmp_path)
    trigger_scenario(org, sync_kill=point)
    assert_trigger_outcome(org, clean)


# -- journeys retry -----------------------------------------------------------------------------

RETRY_SEGMENT = SPILL_SEGMENT
RETRY_JOURNEY = (
    """name: webinar-mail
audience: {segment: webinar-leads}
entry: once
owner: lead_owner
"""
    + SCHEDULE
    + f"""steps:
  - id: invite
    email:
      from: {{queue: {QUEUE}}}
      subject: "{{{{ contact.firstname or 'Hello' }}}}, the webinar's recording"
      body: "<p>Here it is.</p>"
  - id: follow-up
    task: {{subject: "Follow up {{{{ contact.fullname }}}}"}}
  - id: done
    end: true
"""
)
RETRY_NEXT_RUNS = {
    "commit-drop": "commit-drop:method=POST:times=3",
    "kill at a held create": "hold:method=POST:at=1",
    "kill after the create committed": "commit-hold:method=POST:at=1",
    "kill after the send committed": "commit-hold:method=POST:at=2",
}


def retry_setup(org: Org, tmp_path: Path) -> None:
    use_journeys(org.cli, tmp_path, {"webinar-mail": RETRY_JOURNEY},
                 {"webinar-leads": RETRY_SEGMENT})  # fmt: skip
    org.cli.emulator.reset()
    org.at(START)
    org.run("run", "all")
    org.run("journeys", "start", "webinar-mail")


def records(org: Org) -> dict[str, tuple[Any, ...]]:
    """Every activity: table, subject, owner, regarding, state (due dates follow the runs)."""
    return {
        row["activityid"]: (table, row["subject"], row["_ownerid_value"],
                            row["_regardingobjectid_value"], row["statecode"], row["statuscode"])
        for table in ("email", "phonecall", "task") for row in org.rows(table)
    }  # fmt: skip


@pytest.mark.parametrize("next_run", RETRY_NEXT_RUNS.values(), ids=RETRY_NEXT_RUNS.keys())
def test_a_retried_member_is_written_once_under_the_same_id_despite_faults_and_kills(
    org: Org, tmp_path: Path, next_run: str
) -> None:
    retry_setup(org, tmp_path)
    org.run("run", "journeys")
    org.advance(hours=2)
    org.run("run", "journeys")
    clean = records(org)  # every member, the victim included, written once
    org.cli.database.unlink()

    retry_setup(org, tmp_path)
    members = org.members("webinar-leads")
    leads = {lead["leadid"]: lead for lead in org.rows("lead")}
    victim, (victim_lead,) = min((c, ids) for c, ids in members.items() if len(ids) == 1)
    org.cli.emulator.admin("DELETE", f"/tables/lead/{victim_lead}")  # refused: 404
    result = org.cli.run("run", "journeys", **now_env(org))
    assert result.returncode == 1, result.stderr[-2000:]
    ((_, member_id, error),) = failed_members(org)
    assert json.loads(error)["status"] == 404
    ((intended,),) = store_rows(org, "SELECT record_id FROM dvc_outbox WHERE key = ?",
                                f"journeys/{member_id}/invite/create")  # fmt: skip

    org.cli.emulator.admin("POST", "/tables/lead", {"rows": [{
        k: v for k, v in leads[victim_lead].items() if not k.startswith("@")}]})  # fmt: skip
    org.advance(hours=2)
    retried = org.run("journeys", "retry", "webinar-mail", "--json")
    assert retried["retried"] == 1
    if next_run.startswith("commit-drop"):
        org.cli.emulator.admin("PUT", "/faults", {"spec": next_run})
        org.run("run", "journeys")
        (rule,) = org.cli.emulator.admin("GET", "/faults")["rules"]
        org.cli.emulator.admin("DELETE", "/faults")
        assert rule["injected"] >= 2  # the create's answer and the send's were lost
    else:
        kill_at_write(org, next_run, "run", "journeys")
        org.run("run", "journeys")
    assert failed_members(org) == []

    ((noted,),) = store_rows(org, "SELECT record_id FROM dvc_journey_records "
                                  "WHERE member_id = ? AND step = 'invite'", member_id)  # fmt: skip
    assert noted == intended
    mine = [r for r in org.rows("email") if r["activityid"] == intended]
    assert len(mine) == 1
    assert (mine[0]["statecode"], mine[0]["statuscode"]) == (1, 6)  # sent, once
    assert mine[0]["_regardingobjectid_value"] == victim_lead
    assert records(org) == clean
    assert victim in members
