"""The plan against the real journey: the same records, record for record.

`journeys plan` runs the journey forward on a simulated clock and lists every record it would
create. The test then runs the real journey against the emulator at the plan's instants, with
the events the plan assumed made to happen in the emulator (the launch e-mail opened, the call
completed) for exactly the members for whom the plan assumed them, and compares what the
emulator received with what the plan listed: table, id, subject, owner, regarding and due.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from connector.mapping import load_mapping
from jobs.journeys.machine import Member
from jobs.journeys.plan import holds
from tests.e2e.conftest import Cli
from tests.e2e.journey_org import Org
from tests.paths import MAPPINGS


@pytest.fixture
def org(cli: Cli) -> Org:
    return Org.synced(cli)


def _stamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _arrived(org: Org, journey: str, step: str, at: str) -> list[tuple[int, str, int]]:
    """(member id, contact, entry) of the members who came to `step` in the run at `at`."""
    with org.cli.store().engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT member_id, contactid, entry FROM dvc_journey_members"
            " WHERE journey = ? AND step = ? AND arrived_at = ? AND status = 'active'",
            (journey, step, at),
        ).all()
    return [(row[0], row[1], row[2]) for row in rows]


def _record_of(org: Org, member_id: int, step: str) -> str:
    with org.cli.store().engine.connect() as conn:
        found = conn.exec_driver_sql(
            "SELECT record_id FROM dvc_journey_records WHERE member_id = ? AND step = ?",
            (member_id, step),
        ).scalar_one()
    return str(found)


def _received(org: Org, record: dict[str, Any]) -> dict[str, Any]:
    """The planned record's fields as the emulator holds the record with its id."""
    row = next(r for r in org.rows(record["table"]) if r["activityid"] == record["id"])
    regarding = row["_regardingobjectid_value"]
    kind = "lead" if any(lead["leadid"] == regarding for lead in org.rows("lead")) else "contact"
    due = row.get("scheduledend")
    return {
        "table": record["table"],
        "id": row["activityid"],
        "subject": row["subject"],
        "owner": row["_ownerid_value"] if record["table"] != "email" else record["owner"],
        "regarding": f"{kind} {regarding}",
        "due": due,
    }


def _planned(record: dict[str, Any]) -> dict[str, Any]:
    due = record.get("due")
    return {
        "table": record["table"],
        "id": record["id"],
        "subject": record["subject"],
        "owner": record["owner"],
        "regarding": record["regarding"],
        "due": _stamp(due).strftime("%Y-%m-%dT%H:%M:%SZ") if due else None,
    }


def _replay(org: Org, name: str, step: str, percent: int, records: Path) -> dict[str, Any]:
    """The plan with `step` assumed for `percent`% of its members, then the real journey at the
    plan's instants with those members' events made real; returns the plan."""
    seq = org.last_seq()
    plan = org.run("journeys", "plan", name, "--assume", f"{step}={percent}%",
                   "--records", str(records), "--json")  # fmt: skip
    assert org.writes_since(seq) == []  # the plan writes nothing
    assert plan["runs"][0] == org.now.strftime("%Y-%m-%dT%H:%M:%SZ")
    mappings = Path(org.cli.environment()["DVCONNECT_MAPPINGS_DIR"])
    journey = load_mapping(mappings).journeys[name]
    condition = journey.step(step)
    watched = condition.conditions()[0]
    table = "email" if watched.email is not None else "phonecall"
    origin = watched.email or watched.phonecall  # the activity the condition reads
    assert origin is not None
    held = 0
    org.run("journeys", "start", name)
    for instant in plan["runs"]:
        org.at(_stamp(instant))
        org.run("run", "sync")
        org.run("run", "journeys")
        for member_id, contact, entry in _arrived(org, name, step, instant):
            member = Member(f"{contact}/{entry}", step, _stamp(instant), _stamp(instant))
            if not holds(journey, member, condition, percent):
                continue
            held += 1
            record = _record_of(org, member_id, origin.step)
            if table == "email":
                org.cli.emulator.admin("POST", f"/emails/{record}/engagement", {"opens": 1})
            else:
                org.cli.emulator.admin("PATCH", f"/tables/{table}/{record}",
                                       {"statecode": 1, "statuscode": 2})  # fmt: skip
    assert 0 < held < len(org.members())
    return plan


def _same_records(org: Org, name: str, plan: dict[str, Any], records: Path) -> None:
    """The emulator holds exactly the planned records, field for field; the funnel agrees."""
    planned = [json.loads(line) for line in records.read_text().splitlines()]
    assert len(planned) == plan["records"] == sum(d["records"] for d in plan["days"].values())
    received = sorted((_received(org, r) for r in planned), key=lambda r: r["id"])
    assert received == sorted((_planned(r) for r in planned), key=lambda r: r["id"])
    created = {
        (table, row["activityid"])
        for table in ("email", "phonecall", "task", "appointment")
        for row in org.rows(table)
    }
    assert created == {(r["table"], r["id"]) for r in planned}
    shown = org.run("journeys", "show", name, "--json")
    ended = {k: v for k, v in plan["funnel"].items() if k not in ("active", "entered")}
    assert {k: v for k, v in shown["members"].items() if k != "active"} == ended
    assert plan["funnel"]["entered"] == sum(shown["members"].values())
    assert plan["funnel"]["active"] == {k: v for k, v in shown["active"].items() if v}


@pytest.mark.parametrize(
    ("name", "step", "percent"),
    [("product-launch", "opened", 50), ("conference-follow-up", "call-completed", 50)],
)
def test_the_real_journey_creates_exactly_what_the_plan_listed(
    org: Org, tmp_path: Path, name: str, step: str, percent: int
) -> None:
    records = tmp_path / "planned.jsonl"
    plan = _replay(org, name, step, percent, records)
    assert plan["records"] >= 8
    _same_records(org, name, plan, records)


def test_the_plan_shows_caps_spilling_to_other_owners_and_days_as_the_real_run_does(
    cli: Cli, org: Org, tmp_path: Path
) -> None:
    copy = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, copy)
    cli.env["DVCONNECT_MAPPINGS_DIR"] = str(copy)
    users = sorted(u["systemuserid"] for u in org.rows("systemuser") if not u["isdisabled"])[:3]
    path = copy / "journeys" / "conference-follow-up.yaml"
    text = path.read_text()
    text = text.replace("owner: lead_owner\n", f"owner: {{round_robin: [{', '.join(users)}]}}\n")
    text = text.replace(
        "  per_owner_per_day: 40\n",
        "  per_owner_per_day: 2\n  spill: round_robin\n  entries_per_day: 8\n",
    )
    path.write_text(text)
    members = len(org.members())
    assert members > 8
    records = tmp_path / "planned.jsonl"
    plan = _replay(org, "conference-follow-up", "call-completed", 50, records)
    first = plan["days"]["2027-01-04"]
    assert first["entries_deferred"] == members - 8
    assert first["by_table"] == {"phonecall": 6}  # three owners, two calls each
    assert sum(first["reassigned_to"].values()) > 0
    assert sum(first["spill"].values()) == 2
    assert all(n <= 2 for day in plan["days"].values() for n in day["by_owner"].values()
               if day["by_table"].get("phonecall") == day["records"])  # fmt: skip
    _same_records(org, "conference-follow-up", plan, records)
