"""A live journey operated: pause and resume, stop, a changed file (versions) and `migrate`.

The conference follow-up calls each member, then waits up to a week for the call to be
completed before it gives the rep a reminder task. The tests pause it in that week, move both
clocks past it, and look at what the emulator received (nothing while paused) and at what
happened after the resume under each policy.
"""

from __future__ import annotations

import shutil
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from jobs.journeys import engine
from tests.e2e.conftest import Cli
from tests.e2e.journey_org import START, Org
from tests.paths import MAPPINGS

FOLLOW_UP = "conference-follow-up"


def _mappings(cli: Cli, tmp_path: Path) -> Path:
    """A copy of the mappings for this test, which it may edit."""
    copy = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, copy)
    cli.env["DVCONNECT_MAPPINGS_DIR"] = str(copy)
    return copy / "journeys" / f"{FOLLOW_UP}.yaml"


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.fixture
def org(cli: Cli, tmp_path: Path) -> Org:
    _mappings(cli, tmp_path)
    org = Org.synced(cli)
    org.run("journeys", "start", FOLLOW_UP)
    org.run("run", "journeys")
    assert org.rows("phonecall")  # every member called; now waiting for the call, up to 7 days
    return org


def _pause_for_the_week(org: Org) -> None:
    org.advance(days=2)
    assert org.run("journeys", "pause", FOLLOW_UP)["stdout"] == f"{FOLLOW_UP}: paused\n"
    org.at(START + timedelta(days=9))  # the week's time-out passed two days ago
    seq = org.last_seq()
    org.run("run", "sync")
    counts = org.run("run", "journeys", "--json")["runs"][0]["counts"][FOLLOW_UP]
    assert counts["state"] == "paused"
    assert org.writes_since(seq) == []
    assert org.rows("task") == []
    shown = org.run("journeys", "show", FOLLOW_UP, "--json")
    assert (shown["state"], shown["paused_at"]) == ("paused", "2027-01-06T08:00:00Z")
    assert f"{FOLLOW_UP}: paused (version 1), members" in org.run("status")["stdout"]


def test_after_a_pause_overdue_members_proceed_at_once(org: Org) -> None:
    members = len(org.members())
    _pause_for_the_week(org)
    said = org.run("journeys", "resume", FOLLOW_UP)["stdout"]
    assert said == f"{FOLLOW_UP}: live; {members} members due meanwhile proceed at the next run\n"
    org.run("run", "journeys")
    assert len(org.rows("task")) == members  # no call was completed: every rep is reminded


def test_after_a_pause_the_shift_policy_pushes_the_timers_back(
    cli: Cli, org: Org, tmp_path: Path
) -> None:
    path = Path(cli.env["DVCONNECT_MAPPINGS_DIR"]) / "journeys" / f"{FOLLOW_UP}.yaml"
    _edit(path, "entry: dynamic\n", "entry: dynamic\non_resume: shift\n")
    members = len(org.members())
    _pause_for_the_week(org)
    said = org.run("journeys", "resume", FOLLOW_UP)["stdout"]
    assert said == f"{FOLLOW_UP}: live; {members} members' timers pushed back by 7.0 days\n"
    org.run("run", "journeys")
    assert org.rows("task") == []  # the week restarts where the pause stopped it: 5 days left
    org.at(START + timedelta(days=14) - timedelta(minutes=1))
    org.run("run", "journeys")
    assert org.rows("task") == []
    org.at(START + timedelta(days=14))
    org.run("run", "journeys")
    assert len(org.rows("task")) == members


def test_a_stopped_journey_stays_stopped_and_writes_nothing(org: Org) -> None:
    members = len(org.members())
    said = org.run("journeys", "stop", FOLLOW_UP)["stdout"]
    assert said == f"{FOLLOW_UP}: stopped; {members} members stopped\n"
    result = org.cli.run("journeys", "resume", FOLLOW_UP)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"dvconnect: journey '{FOLLOW_UP}' is stopped: cannot resume it; "
        "a stopped journey stays stopped"
    )
    org.at(START + timedelta(days=9))
    seq = org.last_seq()
    org.run("run", "journeys")
    assert org.writes_since(seq) == []
    assert org.run("journeys", "show", FOLLOW_UP, "--json")["members"] == {"stopped": members}


def test_start_refuses_a_journey_that_does_not_validate(cli: Cli, tmp_path: Path) -> None:
    path = _mappings(cli, tmp_path)
    _edit(path, "{{ contact.fullname }} from", "{{ contact.fulname }} from")
    result = cli.run("journeys", "start", FOLLOW_UP)
    assert result.returncode == 2
    assert "fulname" in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"dvconnect: journey '{FOLLOW_UP}' is not valid: not started"
    )


def test_members_in_flight_finish_on_their_version_and_new_entrants_take_the_new_one(
    cli: Cli, org: Org
) -> None:
    path = Path(cli.env["DVCONNECT_MAPPINGS_DIR"]) / "journeys" / f"{FOLLOW_UP}.yaml"
    first = set(org.members())
    _edit(path, 'fullname }} is still open"', 'fullname }} is still open, version 2"')
    # a new decision maker met at the conference: a lead for an existing decision-maker contact
    contact = next(c for c in org.rows("contact")
                   if c["accountrolecode"] == 1 and c["contactid"] not in first
                   and not c["donotemail"])  # fmt: skip
    org.cli.emulator.admin("POST", "/tables/lead", {"rows": [{
        "leadid": str(uuid.uuid4()), "subject": "Contoso Ltd Conference", "lastname": "Newcomer",
        "statecode": 0, "statuscode": 1, "_parentcontactid_value": contact["contactid"],
        "_ownerid_value": org.rows("systemuser")[0]["systemuserid"], "owneridtype": "systemuser",
    }]})  # fmt: skip
    org.advance(days=1)
    org.run("run", "all")
    assert contact["contactid"] in org.members()
    org.at(START + timedelta(days=9))
    org.run("run", "sync")
    org.run("run", "journeys")
    tasks = {t["_regardingobjectid_value"]: t["subject"] for t in org.rows("task")}
    with org.cli.store().engine.connect() as conn:
        versions = dict(conn.exec_driver_sql(
            "SELECT contactid, version FROM dvc_journey_members WHERE journey = ?", (FOLLOW_UP,)
        ).all())  # fmt: skip
    assert versions == {**dict.fromkeys(first, 1), contact["contactid"]: 2}
    leads = {lead["leadid"]: lead["_parentcontactid_value"] for lead in org.rows("lead")}
    for regarding, subject in tasks.items():
        if leads[regarding] in first:
            assert subject.endswith("is still open")
        else:
            assert subject.endswith("is still open, version 2")
    assert len(tasks) == len(first) + 1


def _renamed(path: Path, migrate: str) -> None:
    """Version 2: the if-step and the reminder renamed, the reminder reworded."""
    _edit(path, "- id: call-completed", "- id: call-checked")
    _edit(path, "else: reminder", "else: nudge")
    _edit(path, "- id: reminder", "- id: nudge")
    _edit(path, 'fullname }} is still open"', 'fullname }} is still open (v2)"')
    _edit(path, "entry: dynamic\n", f"entry: dynamic\nmigrate: {migrate}\n")


def _placed(org: Org) -> dict[str, tuple[int, str]]:
    with org.cli.store().engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT contactid, version, step FROM dvc_journey_members WHERE journey = ?",
            (FOLLOW_UP,),
        ).all()
    return {contact: (version, step) for contact, version, step in rows}


def test_a_migrate_map_moves_members_in_flight_as_previewed(cli: Cli, org: Org) -> None:
    path = Path(cli.env["DVCONNECT_MAPPINGS_DIR"]) / "journeys" / f"{FOLLOW_UP}.yaml"
    members = org.members()
    _renamed(path, "{call-completed: call-checked}")
    org.advance(days=1)
    preview = org.run("journeys", "migrate", FOLLOW_UP, "--dry-run", "--json")
    assert _placed(org) == dict.fromkeys(members, (1, "call-completed"))  # nobody moved
    assert preview["moves"] == [{
        "from_version": 1, "from_step": "call-completed", "to_step": "call-checked",
        "members": len(members), "contacts": sorted(members)[:10],
    }]  # fmt: skip
    text = org.run("journeys", "migrate", FOLLOW_UP, "--dry-run")["stdout"]
    assert text.startswith(f"{FOLLOW_UP}: would move {len(members)} members onto version 2; 0 ")
    done = org.run("journeys", "migrate", FOLLOW_UP, "--json")
    assert done["moves"] == preview["moves"]
    assert _placed(org) == dict.fromkeys(members, (2, "call-checked"))
    again = org.run("journeys", "migrate", FOLLOW_UP, "--json")
    assert (again["moved"], again["moves"]) == (0, [])
    org.at(START + timedelta(days=7))  # the week since the call is over: the new reminder
    org.run("run", "sync")
    org.run("run", "journeys")
    subjects = [task["subject"] for task in org.rows("task")]
    assert len(subjects) == len(members)
    assert all(subject.endswith("is still open (v2)") for subject in subjects)


def test_a_migrate_map_naming_a_missing_step_moves_nobody(cli: Cli, org: Org) -> None:
    path = Path(cli.env["DVCONNECT_MAPPINGS_DIR"]) / "journeys" / f"{FOLLOW_UP}.yaml"
    members = org.members()
    _renamed(path, "{call-complete: call-checked}")
    result = org.cli.run("journeys", "migrate", FOLLOW_UP)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"dvconnect: {path}: migrate.call-complete (line 9): no step 'call-complete' in an "
        "earlier version (their steps: call, call-completed, done, reminder)"
    )
    assert _placed(org) == dict.fromkeys(members, (1, "call-completed"))
    with org.cli.store().engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM dvc_journey_versions").scalar() == 1


def test_a_pause_during_a_run_takes_effect_at_the_next_chunk_never_mid_write(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`journeys pause` from another command while a run decides its second chunk of members:
    the chunk decided before it is written whole (members moved, e-mails created and sent), the
    run decides nothing after it, and the resume finishes the rest, each e-mail once."""
    org = Org.synced(cli)
    members = org.members()
    assert len(members) >= 4
    org.run("journeys", "start", "product-launch")
    monkeypatch.setattr(engine, "CHUNK", 2)
    decide = engine.JourneyRun._chunk
    paused: list[int] = []

    def pause_after_the_first_chunk(run: Any, *args: Any) -> int:
        moved = decide(run, *args)
        if not paused:  # what `journeys pause` does, from another process, between two chunks
            paused.append(moved)
            with org.cli.store().engine.begin() as conn:
                conn.exec_driver_sql("UPDATE dvc_journeys SET state = 'paused'")
        return int(moved)

    monkeypatch.setattr(engine.JourneyRun, "_chunk", pause_after_the_first_chunk)
    counts = org.run("run", "journeys", "--json")["runs"][0]["counts"]["product-launch"]
    with org.cli.store().engine.connect() as conn:
        steps = dict(conn.exec_driver_sql(
            "SELECT step, count(*) FROM dvc_journey_members WHERE journey = 'product-launch'"
            " AND status = 'active' GROUP BY step"
        ).all())  # fmt: skip
    assert paused == [2]
    assert counts["acted"] == 2
    assert steps["opened"] == 2  # the first chunk, whole
    assert sum(steps.values()) - 2 == steps["launch-email"]  # the others, untouched
    sent = [e for e in org.rows("email") if e["statuscode"] == 6]
    assert len(org.rows("email")) == len(sent) == 2
    monkeypatch.setattr(engine.JourneyRun, "_chunk", decide)
    org.run("journeys", "resume", "product-launch")
    org.run("run", "journeys")
    regarding = Counter(e["_regardingobjectid_value"] for e in org.rows("email"))
    assert len(regarding) == sum(steps.values())
    assert set(regarding.values()) == {1}
