"""Journeys entered by triggers, through the real CLI against the emulator.

Three live journeys: `toolkit-welcome` admits every lead created on a Toolkit topic (its goal:
the lead qualified), then writes a task and retitles the lead; `retitled` admits a lead whose
job title changed; `email-changed` admits a contact whose e-mail changed and makes it a lead
on a Toolkit topic. What a user does in the org (leads created, a title and an e-mail changed,
a lead qualified) admits members after `run sync` and `run journeys`; what the journeys
themselves write (the new lead, the titles) admits nobody.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Cli
from tests.e2e.journey_org import START, Org
from tests.paths import MAPPINGS

SCHEDULE = """schedule:
  start: 2027-01-04T08:00
  end: 2027-06-30T18:00
  timezone: Europe/Zurich
"""
JOURNEYS = {
    "toolkit-welcome": """
name: toolkit-welcome
trigger:
  lead: {created: true, filter: "startswith(subject,'Toolkit')"}
goal: {lead: "statecode eq 1"}
"""
    + SCHEDULE
    + """
steps:
  - id: welcome
    task: {subject: "Welcome {{ lead.fullname }}"}
  - id: mark
    update: {table: lead, values: {jobtitle: Welcomed}}
  - id: later
    wait: 30d
  - id: done
    end: true
""",
    "retitled": """
name: retitled
trigger:
  lead: {changed: jobtitle}
"""
    + SCHEDULE
    + """
steps:
  - id: note
    task: {subject: "New title: {{ lead.jobtitle }}"}
  - id: done
    end: true
""",
    "email-changed": """
name: email-changed
trigger:
  contact: {changed: emailaddress1}
"""
    + SCHEDULE
    + """
steps:
  - id: trial
    create_lead: {subject: Toolkit trial}
  - id: later
    wait: 30d
  - id: done
    end: true
""",
}
L1, L2, L3, L4 = (f"7e1a0000-0000-4000-8000-00000000000{n}" for n in range(1, 5))


@pytest.fixture
def org(cli: Cli, tmp_path: Path) -> Org:
    mappings = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, mappings)
    shutil.rmtree(mappings / "journeys")
    (mappings / "journeys").mkdir()
    for name, text in JOURNEYS.items():
        (mappings / "journeys" / f"{name}.yaml").write_text(text, encoding="utf-8")
    cli.env["DVCONNECT_MAPPINGS_DIR"] = str(mappings)
    cli.emulator.reset()
    org = Org(cli)
    org.at(START)
    org.run("run", "all")  # the first, full read: no row is a change
    for name in JOURNEYS:
        org.run("journeys", "start", name)
    return org


def members(org: Org, journey: str) -> dict[str | None, tuple[str, str]]:
    """A journey's members by their lead: (contact, status)."""
    with org.cli.store().engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT leadid, contactid, status FROM dvc_journey_members WHERE journey = ?",
            (journey,),
        ).all()
    assert len({row[0] for row in rows}) == len(rows)  # one member per lead
    return {lead: (contact, status) for lead, contact, status in rows}


def step(org: Org) -> dict[str, Any]:
    """An hour later: a sync, then the journeys; the journeys' counts."""
    org.advance(hours=1)
    org.run("run", "sync")
    document = org.run("run", "journeys", "--json")
    counts: dict[str, Any] = document["runs"][0]["counts"]
    return counts


def test_changes_in_the_org_admit_members_and_the_journeys_own_writes_do_not(org: Org) -> None:
    contacts = sorted(
        (c for c in org.rows("contact") if c["statecode"] == 0 and c["emailaddress1"]),
        key=lambda c: c["contactid"],
    )
    c, d = contacts[0]["contactid"], contacts[1]["contactid"]
    lead = {"statecode": 0, "statuscode": 1, "lastname": "Trigger"}
    org.cli.emulator.admin("POST", "/tables/lead", {"rows": [
        {**lead, "leadid": L1, "subject": "Toolkit webinar", "_parentcontactid_value": c},
        {**lead, "leadid": L2, "subject": "Toolkit demo request", "_parentcontactid_value": c},
        {**lead, "leadid": L3, "subject": "Toolkit newsletter",  # an orphan
         "emailaddress1": "orphan.trigger@example.com"},
        {**lead, "leadid": L4, "subject": "Office chairs", "_parentcontactid_value": d},
    ]})  # fmt: skip
    org.cli.emulator.admin("PATCH", f"/tables/contact/{c}", {"emailaddress1": "new@example.com"})
    same = {"emailaddress1": contacts[1]["emailaddress1"]}  # a touch: modifiedon, no new value
    org.cli.emulator.admin("PATCH", f"/tables/contact/{d}", same)

    counts = step(org)
    assert members(org, "toolkit-welcome") == {L1: (c, "active"), L2: (c, "active")}
    assert (counts["toolkit-welcome"]["triggered"], counts["toolkit-welcome"]["waiting"]) == (2, 1)
    (trial_member,) = members(org, "email-changed").values()  # c, not the touched d
    assert trial_member == (c, "active")
    assert members(org, "retitled") == {}
    trial = [row for row in org.rows("lead") if row["subject"] == "Toolkit trial"]
    assert [row["_parentcontactid_value"] for row in trial] == [c]
    titled = {row["leadid"]: row["jobtitle"] for row in org.rows("lead")}
    assert (titled[L1], titled[L2]) == ("Welcomed", "Welcomed")

    # the journeys' own writes come back with the next sync: a new Toolkit lead, two titles
    counts = step(org)
    assert members(org, "toolkit-welcome") == {L1: (c, "active"), L2: (c, "active")}
    assert members(org, "retitled") == {}
    assert counts["toolkit-welcome"]["waiting"] == 1

    # a user qualifies L1 and retitles L4: only L1's member leaves; L4 enters `retitled`
    org.cli.emulator.admin("PATCH", f"/tables/lead/{L1}", {"statecode": 1, "statuscode": 3})
    org.cli.emulator.admin("PATCH", f"/tables/lead/{L4}", {"jobtitle": "Buyer"})
    counts = step(org)
    assert members(org, "toolkit-welcome") == {L1: (c, "converted"), L2: (c, "active")}
    assert list(members(org, "email-changed").values()) == [(c, "active")]
    assert members(org, "retitled") == {L4: (d, "completed")}

    # the orphan waits until link-orphans has given it a contact and a sync has read it back
    org.run("run", "link-orphans")
    step(org)
    linked = next(row for row in org.rows("lead") if row["leadid"] == L3)
    new_contact = linked["_parentcontactid_value"]
    assert new_contact is not None
    assert members(org, "toolkit-welcome")[L3] == (new_contact, "active")
    # L4 retitled again: it was in `retitled` before and re_entry is never; nothing else enters
    org.cli.emulator.admin("PATCH", f"/tables/lead/{L4}", {"jobtitle": "Head buyer"})
    counts = step(org)
    assert counts["toolkit-welcome"]["entered"] == counts["retitled"]["entered"] == 0
    assert members(org, "retitled") == {L4: (d, "completed")}
    assert len(members(org, "toolkit-welcome")) == 3
    with org.cli.store().engine.connect() as conn:
        outcomes = conn.exec_driver_sql(
            "SELECT journey, outcome, count(*) FROM dvc_change_uses GROUP BY journey, outcome"
        ).all()
    assert sorted(outcomes) == [
        ("email-changed", "entered", 1),
        ("retitled", "again", 1),
        ("retitled", "entered", 1),
        ("toolkit-welcome", "entered", 3),
        ("toolkit-welcome", "filtered", 1),  # Office chairs
    ]

    # a week on, the changes every live journey has decided are pruned, with their decisions
    with org.cli.store().engine.connect() as conn:
        recorded = conn.exec_driver_sql("SELECT count(*) FROM dvc_changes").scalar_one()
    org.advance(hours=7 * 24)
    counts = step(org)
    assert counts["pruned_changes"] == recorded > 0
    with org.cli.store().engine.connect() as conn:
        for table in ("dvc_changes", "dvc_change_uses"):
            assert conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one() == 0


def test_the_dry_run_admits_by_trigger_without_using_the_change(org: Org) -> None:
    contact = next(c for c in org.rows("contact") if c["statecode"] == 0)["contactid"]
    org.cli.emulator.admin("POST", "/tables/lead", {"rows": [{
        "leadid": L1, "subject": "Toolkit webinar", "lastname": "Dry",
        "_parentcontactid_value": contact,
    }]})  # fmt: skip
    org.advance(hours=1)
    org.run("run", "sync")
    plan = org.run("run", "journeys", "--dry-run", "--json")["plan"]["journeys"]
    assert [(p["journey"], p["table"]) for p in plan] == [("toolkit-welcome", "task"),
                                                           ("toolkit-welcome", "lead")]  # fmt: skip
    assert members(org, "toolkit-welcome") == {}
    org.run("run", "journeys")
    assert members(org, "toolkit-welcome") == {L1: (contact, "active")}
