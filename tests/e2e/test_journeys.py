"""Journeys through the real CLI against the emulator, the two clocks moved together.

The org is the 3,000-lead seed (the shared 300-lead one holds no conference decision maker).
Time moves by setting the emulator's clock and `DVCONNECT_NOW` to the same instant: nothing
sleeps for a wait. Records are found in the emulator by what they are (regarding, parties,
subject), not by the ids the code under test computes.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.e2e.conftest import Cli
from tests.e2e.journey_org import QUEUE, SENDER, START, TO, ZURICH, Org


@pytest.fixture
def org(cli: Cli) -> Org:
    cli.emulator.reset(leads=3000, contacts=1500)
    org = Org(cli)
    org.at(START)
    document = org.run("run", "all", "--json")
    journeys = next(r for r in document["runs"] if r["job"] == "journeys")
    assert journeys["counts"]["product-launch"]["state"] == "draft"  # drafts never write
    return org


def emails_to(org: Org, contact: str) -> list[dict[str, Any]]:
    sent = []
    for email in org.rows("email"):
        if (TO, contact) in org.parties(email["activityid"]):
            sent.append(email)
    return sorted(sent, key=lambda e: e["createdon"])


def test_the_product_launch_runs_through_both_branches_and_writes_each_record_once(
    org: Org,
) -> None:
    leads = {lead["leadid"]: lead for lead in org.rows("lead")}
    segment = org.members()
    # those whose only conference lead is qualified are at the goal already: they never start
    converted = {c for c, ids in segment.items() if all(leads[i]["statecode"] == 1 for i in ids)}
    members = {c: ids for c, ids in segment.items() if c not in converted}
    assert len(members) >= 4
    assert converted
    users = {u["systemuserid"] for u in org.rows("systemuser")}
    assert "live" in org.run("journeys", "start", "product-launch")["stdout"]

    # day 0: the launch e-mail, from the Sales Inbox queue, to each member, about its lead
    org.run("run", "journeys")
    assert all(emails_to(org, contact) == [] for contact in converted)
    launch = {contact: emails_to(org, contact) for contact in members}
    assert all(len(sent) == 1 for sent in launch.values())
    for contact, (email,) in launch.items():
        assert (email["statecode"], email["statuscode"]) == (1, 6)  # sent: Pending Send
        assert email["isemailfollowed"] is True  # followed: opens and clicks get recorded
        assert email["_regardingobjectid_value"] in members[contact]
        assert org.parties(email["activityid"]) == [
            (SENDER, QUEUE),
            (TO, contact),
        ]
        assert "meet the new Contoso toolkit" in email["subject"]

    # some open it; a day later the openers get the newsletter and a call from their rep
    openers = sorted(members)[: len(members) // 2]
    for contact in openers:
        org.cli.emulator.admin("POST", f"/emails/{launch[contact][0]['activityid']}/engagement",
                               {"opens": 1})  # fmt: skip
    org.advance(days=1)
    org.run("run", "sync")
    org.run("run", "journeys")
    calls = {c["_regardingobjectid_value"]: c for c in org.rows("phonecall")}
    for contact in members:
        sent = emails_to(org, contact)
        if contact in openers:
            assert [e["subject"] for e in sent][1] == "Your invitation to the Contoso newsletter"
            lead = launch[contact][0]["_regardingobjectid_value"]
            call = calls[lead]
            owner = leads[lead]["_ownerid_value"]
            assert call["_ownerid_value"] == owner
            expected_from = [(SENDER, owner)] if owner in users else []
            assert org.parties(call["activityid"]) == [*expected_from, (TO, contact)]
            due = datetime.fromisoformat(call["scheduledend"].replace("Z", "+00:00"))
            local = due.astimezone(ZURICH)
            assert local.weekday() < 5  # inside business hours
            assert 9 <= local.hour < 17
            assert (
                local.date() == datetime(2027, 1, 8).date()
            )  # Tue + 2 business days; the 6th is off
        else:
            assert len(sent) == 1  # still waiting for an open
    assert len(calls) == len(openers)

    # five days later the others time out: the brochure
    org.advance(days=5)
    org.run("run", "sync")
    org.run("run", "journeys")
    for contact in members:
        subjects = [e["subject"] for e in emails_to(org, contact)]
        assert len(subjects) == 2
        if contact not in openers:
            assert subjects[1] == "The Contoso toolkit brochure"
    shown = org.run("journeys", "show", "product-launch", "--json")
    assert shown["members"] == {"completed": len(members), "converted": len(converted)}

    # a second run at the same time writes nothing
    seq = org.last_seq()
    org.run("run", "journeys")
    assert org.writes_since(seq) == []
    assert Counter(e["statuscode"] for e in org.rows("email")) == {6: 2 * len(members)}


def test_the_dry_run_lists_exactly_what_the_real_run_then_creates(org: Org) -> None:
    org.run("journeys", "start", "product-launch")
    org.run("journeys", "start", "conference-follow-up")
    seq = org.last_seq()
    plan = org.run("run", "journeys", "--dry-run", "--json")["plan"]["journeys"]
    assert org.writes_since(seq) == []
    listed = {(step["table"], step["id"]) for step in plan}
    assert len(listed) >= 8
    before = {(t, r["activityid"]) for t in ("email", "phonecall") for r in org.rows(t)}
    org.run("run", "journeys")
    after = {(t, r["activityid"]) for t in ("email", "phonecall") for r in org.rows(t)}
    assert after - before == listed
    for step in plan:
        assert set(step) >= {"journey", "table", "id", "owner", "regarding", "subject", "due"}


def test_the_conference_follow_up_calls_then_reminds_only_where_the_call_is_still_open(
    org: Org,
) -> None:
    members = org.members()
    org.run("journeys", "start", "conference-follow-up")
    org.run("run", "journeys")
    calls = org.rows("phonecall")
    assert len(calls) == len(members)
    for call in calls:
        due = datetime.fromisoformat(call["scheduledend"].replace("Z", "+00:00"))
        assert due.astimezone(ZURICH).date() == datetime(2027, 1, 6).date()  # 2 business days
    done = sorted(call["activityid"] for call in calls)[: len(calls) // 2]
    for call_id in done:
        org.cli.emulator.admin("PATCH", f"/tables/phonecall/{call_id}",
                               {"statecode": 1, "statuscode": 2})  # fmt: skip
    org.advance(days=8)
    org.run("run", "sync")
    org.run("run", "journeys")
    tasks = org.rows("task")
    open_calls = {c["_regardingobjectid_value"] for c in calls if c["activityid"] not in done}
    assert {t["_regardingobjectid_value"] for t in tasks} == open_calls
    assert all(t["prioritycode"] == 2 and "is still open" in t["subject"] for t in tasks)


def test_nothing_is_written_after_the_end_under_hard_stop(org: Org) -> None:
    org.run("journeys", "start", "product-launch")
    org.run("run", "journeys")
    org.at(datetime(2027, 4, 1, 8, 0, tzinfo=UTC))
    org.run("run", "sync")
    seq = org.last_seq()
    document = org.run("run", "journeys", "--json")
    assert org.writes_since(seq) == []
    counts = document["runs"][0]["counts"]["product-launch"]
    shown = org.run("journeys", "show", "product-launch", "--json")["members"]
    assert counts["stopped"] == shown["stopped"] == len(org.members()) - shown.get("converted", 0)
