"""Stuck journey members through the real CLI against the emulator: the watchdog, retry, skip.

The org is the 3,000-lead seed, the clocks moved together as in `test_journeys`. A member is
made overdue by moving the clocks past its due time without a run; a write fails because the
lead it is about was deleted in Dynamics after the sync, then comes back; records are found in
the emulator by the id the store noted for the member's step.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from connector.clock import parse_stamp
from tests.e2e.conftest import Cli
from tests.e2e.journey_org import TO, Org

JOURNEY = "product-launch"
STEPS = "launch-email, opened, newsletter, call, brochure, done"


@pytest.fixture
def org(cli: Cli) -> Org:
    org = Org.synced(cli)
    org.run("journeys", "start", JOURNEY)
    return org


def store_members(org: Org, status: str | None = None) -> dict[str, dict[str, Any]]:
    """The journey's members by contact (one entry each here), as the store holds them; with
    `status`, only those (at the goal already, some are converted as they enter)."""
    with org.cli.store().engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT * FROM dvc_journey_members WHERE journey = ?", (JOURNEY,)
        ).mappings()
        found = {row["contactid"]: dict(row) for row in rows}
    return {c: m for c, m in found.items() if status is None or m["status"] == status}


def store_query(org: Org, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with org.cli.store().engine.connect() as conn:
        return [tuple(row) for row in conn.exec_driver_sql(sql, params).all()]


def emails_to(org: Org, contact: str) -> list[dict[str, Any]]:
    mine = {p["_activityid_value"] for p in org.rows("activityparty")
            if (p["participationtypemask"], p["_partyid_value"]) == (TO, contact)}  # fmt: skip
    return sorted((e for e in org.rows("email") if e["activityid"] in mine),
                  key=lambda e: e["createdon"])  # fmt: skip


def journeys_counts(org: Org, code: int = 0) -> dict[str, Any]:
    document = org.run("run", "journeys", "--json", code=code)
    counts: dict[str, Any] = document["runs"][0]["counts"][JOURNEY]
    return counts


def test_a_member_left_past_its_due_time_is_reported_overdue_with_the_journeys_lag(
    org: Org,
) -> None:
    org.run("run", "journeys")
    waiting = store_members(org, "active")
    assert waiting
    assert {m["step"] for m in waiting.values()} == {"opened"}  # until opened, or 5 days
    quiet = journeys_counts(org)["watchdog"]
    assert (quiet["overdue"], quiet["failed"], quiet["stale_writes"]) == (0, 0, 0)

    # the clocks move 8 days on and no run happens: every member is 3 days past its timeout
    org.advance(days=8)
    shown = org.run("journeys", "show", JOURNEY, "--json")["watchdog"]
    oldest = min(m["due_at"] for m in waiting.values())
    assert shown["overdue"] == len(waiting)
    assert shown["overdue_by_step"] == {"opened": len(waiting)}
    assert shown["oldest_due"] == oldest
    assert shown["lag_seconds"] == (org.now - parse_stamp(oldest)).total_seconds()
    assert shown["lag_seconds"] >= timedelta(days=3).total_seconds()
    assert shown["grace_seconds"] == 3600
    text = org.run("journeys", "show", JOURNEY)["stdout"]
    assert f"overdue by more than 1.0 h: {len(waiting)} members ({len(waiting)} at opened)" in text

    # the next run reports them as it begins, logs a warning without personal data, moves them
    result = org.cli.run("run", "journeys", "--json",
                         DVCONNECT_NOW=org.now.strftime("%Y-%m-%dT%H:%M:%SZ"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads(result.stdout)["runs"][0]["counts"][JOURNEY]
    assert counts["watchdog"]["overdue"] == len(waiting)
    assert counts["moved"] >= len(waiting)
    warning = [line for line in result.stderr.splitlines() if " WARNING " in line]
    assert len(warning) == 1
    assert f"journey {JOURNEY}: {len(waiting)} members overdue by more than 1.0 h" in warning[0]
    contacts = {c["contactid"]: c for c in org.rows("contact")}
    for contact in waiting:
        for value in (contacts[contact]["fullname"], contacts[contact]["emailaddress1"]):
            assert not value or value not in result.stderr
    after = org.run("journeys", "show", JOURNEY, "--json")["watchdog"]
    assert (after["overdue"], after["lag_seconds"]) == (0, 0)

    # a longer grace sees nobody overdue
    org.advance(days=8)
    org.cli.env["DVCONNECT_JOURNEY_GRACE"] = "P30D"
    assert org.run("journeys", "show", JOURNEY, "--json")["watchdog"]["overdue"] == 0


def test_a_refused_write_fails_its_member_then_retry_sends_it_once_and_moves_it_on(
    org: Org,
) -> None:
    leads = {lead["leadid"]: lead for lead in org.rows("lead")}
    members = org.members()
    # one member's lead is deleted in Dynamics after the sync: its launch e-mail is refused
    broken = min(c for c, ids in members.items() if any(leads[i]["statecode"] == 0 for i in ids))
    victim_lead = max(members[broken],
                      key=lambda i: (leads[i]["statecode"] == 0, leads[i]["createdon"], i))  # fmt: skip
    org.cli.emulator.admin("DELETE", f"/tables/lead/{victim_lead}")

    counts = journeys_counts(org, code=1)
    (failure,) = counts["failures"]
    assert (failure["step"], failure["status"], failure["code"]) == (
        "launch-email", 404, "0x80040217")  # fmt: skip
    failed = store_members(org)[broken]
    assert failed["status"] == "failed"
    assert failed["leadid"] == victim_lead

    shown = org.run("journeys", "show", JOURNEY, "--json")
    assert shown["watchdog"]["failed"] == 1
    (reported,) = shown["watchdog"]["failures"]
    assert reported["member"] == failed["member_id"]
    assert reported["contact"] == broken
    assert (reported["step"], reported["status"], reported["code"]) == (
        "launch-email", 404, "0x80040217")  # fmt: skip
    assert reported["request_id"]
    assert victim_lead in reported["message"]
    text = org.run("journeys", "show", JOURNEY)["stdout"]
    assert "failed: 1 members (`dvconnect journeys retry` or `skip`)" in text

    # the lead comes back; retry puts the member back at its failed step, due now
    org.cli.emulator.admin("POST", "/tables/lead", {"rows": [{
        k: v for k, v in leads[victim_lead].items() if not k.startswith("@")}]})  # fmt: skip
    none = org.run("journeys", "retry", JOURNEY, "--step", "brochure")["stdout"]
    assert none == f"{JOURNEY}: nothing to retry (no failed member at step brochure)\n"
    org.advance(hours=2)
    retried = org.run("journeys", "retry", JOURNEY, "--step", "launch-email", "--json")
    assert (retried["retried"], retried["repended"], retried["dropped"]) == (1, 2, 0)
    back = store_members(org)[broken]
    assert (back["status"], back["step"], back["error"]) == ("active", "launch-email", None)
    assert back["due_at"] == org.now.strftime("%Y-%m-%dT%H:%M:%SZ")
    events = store_query(org, "SELECT event, step FROM dvc_journey_history WHERE member_id = ? "
                         "ORDER BY event_id", back["member_id"])  # fmt: skip
    assert events[-2:] == [("failed", "launch-email"), ("retried", "launch-email")]
    nothing = org.run("journeys", "retry", JOURNEY)["stdout"]
    assert nothing == f"{JOURNEY}: nothing to retry (no failed member)\n"

    # the next run sends the same e-mail (same id) once, though the answer to its create is
    # lost (the create is committed, then the connection drops), and the member moves on
    org.cli.emulator.admin("PUT", "/faults", {"spec": "commit-drop:path=$batch:first=1"})
    counts = journeys_counts(org)
    (rule,) = org.cli.emulator.admin("GET", "/faults")["rules"]
    org.cli.emulator.admin("DELETE", "/faults")
    assert rule["injected"] == 1
    assert counts["failed"] == 0
    moved = store_members(org)[broken]
    assert (moved["status"], moved["step"]) == ("active", "opened")
    ((record_id,),) = store_query(
        org, "SELECT record_id FROM dvc_journey_records WHERE member_id = ? AND step = ?",
        back["member_id"], "launch-email",
    )  # fmt: skip
    (email,) = emails_to(org, broken)
    assert email["activityid"] == record_id
    assert [e["activityid"] for e in org.rows("email")].count(record_id) == 1
    assert (email["statecode"], email["statuscode"]) == (1, 6)  # sent
    assert email["_regardingobjectid_value"] == victim_lead
    assert all(len(emails_to(org, contact)) == 1 for contact in store_members(org, "active"))
    assert org.run("journeys", "show", JOURNEY, "--json")["watchdog"]["failed"] == 0


def test_skip_moves_a_member_past_its_wait_and_the_next_run_acts_for_it_alone(org: Org) -> None:
    org.run("run", "journeys")
    members = store_members(org, "active")
    chosen = sorted(members)[0]
    done = org.run("journeys", "skip", JOURNEY, chosen.upper(), "--json")
    assert (done["contact"], done["from"], done["to"]) == (chosen, "opened", "brochure")
    skipped = store_members(org)[chosen]
    assert (skipped["status"], skipped["step"]) == ("active", "brochure")
    events = store_query(org, "SELECT event, step, to_step FROM dvc_journey_history "
                         "WHERE member_id = ? ORDER BY event_id", skipped["member_id"])  # fmt: skip
    assert events[-1] == ("skipped", "opened", "brochure")
    assert len(emails_to(org, chosen)) == 1  # skip itself writes nothing

    org.advance(hours=1)
    org.run("run", "journeys")
    subjects = [e["subject"] for e in emails_to(org, chosen)]
    assert subjects[1:] == ["The Contoso toolkit brochure"]
    assert all(len(emails_to(org, c)) == 1 for c in members if c != chosen)
    assert store_members(org)[chosen]["status"] == "completed"


def test_retry_and_skip_name_what_they_do_not_know_and_refuse_a_stopped_journey(
    org: Org,
) -> None:
    def fails(*args: str) -> str:
        result = org.cli.run(*args, DVCONNECT_NOW=org.now.strftime("%Y-%m-%dT%H:%M:%SZ"))
        assert result.returncode == 2, result.stderr
        return result.stderr.strip().splitlines()[-1]

    org.run("run", "journeys")
    nobody = "00000000-0000-0000-0000-00000000abcd"
    assert fails("journeys", "retry", "product-lunch") == (
        "dvconnect: unknown journey 'product-lunch': the mappings define "
        "conference-follow-up, product-launch")  # fmt: skip
    assert fails("journeys", "retry", JOURNEY, "--step", "brochur") == (
        f"dvconnect: journey '{JOURNEY}' has no step 'brochur': its steps are {STEPS}"
    )
    assert fails("journeys", "skip", JOURNEY, nobody) == (
        f"dvconnect: contact {nobody} is not a member of journey '{JOURNEY}'"
    )
    before = store_members(org, "active")
    member = sorted(before)[0]
    assert fails("journeys", "skip", "conference-follow-up", member) == (
        f"dvconnect: contact {member} is not a member of journey 'conference-follow-up'"
    )
    org.run("journeys", "stop", JOURNEY)
    assert fails("journeys", "retry", JOURNEY) == (
        f"dvconnect: journey '{JOURNEY}' is stopped: cannot retry its members; "
        "a stopped journey stays stopped")  # fmt: skip
    assert fails("journeys", "skip", JOURNEY, member) == (
        f"dvconnect: journey '{JOURNEY}' is stopped: cannot skip its members; "
        "a stopped journey stays stopped")  # fmt: skip
    assert store_members(org, "active") == {}
    assert store_query(org, "SELECT count(*) FROM dvc_journey_history WHERE event IN "
                       "('retried', 'skipped')") == [(0,)]  # fmt: skip
