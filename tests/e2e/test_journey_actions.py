"""The journey actions beyond e-mail and phone call, through the real CLI against the emulator.

One journey takes each decision maker through an appointment, a new lead (an open one with the
same topic serves instead), an update of the contact, the custom action `new_RouteLead`, the
on-demand workflow "Lead nurture follow-up" and the qualification of the member's lead. One
member's lead is deleted in Dynamics after the sync: that member fails at its first write (the
appointment about the lead), with Dataverse's code; its later writes, which wait on that one,
are never sent; the others go on. A second run writes nothing.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Cli
from tests.e2e.journey_org import ZURICH, Org
from tests.paths import MAPPINGS

NURTURE = "3100674c-d9ad-5246-a3be-416fe8218c00"  # Lead nurture follow-up (on demand, lead)
TOPIC = "Contoso toolkit"
REQUIRED, ORGANIZER = 5, 7  # activity party participation types
JOURNEY = f"""
name: every-action
audience:
  segment: contoso-decision-makers
schedule:
  start: 2027-01-04T08:00
  end: 2027-06-30T18:00
  timezone: Europe/Zurich
steps:
  - id: demo
    appointment:
      subject: "Toolkit demo with {{{{ contact.fullname }}}}"
      location: Zurich
      start: {{business_days: 2}}
      minutes: 45
  - id: interest
    create_lead:
      subject: "{TOPIC}"
      values:
        description: "From the journey {{{{ journey.name }}}}"
  - id: mark
    update:
      table: contact
      values:
        description: "In the toolkit journey"
  - id: route
    run_workflow:
      action: new_RouteLead
      parameters:
        Reason: "Journey {{{{ journey.name }}}}"
  - id: nurture
    run_workflow:
      workflow: {NURTURE}
  - id: qualify
    qualify_lead:
      create_opportunity: false
  - id: done
    end: true
"""


@pytest.fixture
def org(cli: Cli, tmp_path: Path) -> Org:
    mappings = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, mappings)
    shutil.rmtree(mappings / "journeys")
    (mappings / "journeys").mkdir()
    (mappings / "journeys" / "every-action.yaml").write_text(JOURNEY, encoding="utf-8")
    cli.env["DVCONNECT_MAPPINGS_DIR"] = str(mappings)
    return Org.synced(cli)


def member_leads(org: Org) -> dict[str, str]:
    """Contact → the conference lead each member's actions are about: its newest open one, or
    its newest when none is open."""
    leads = {lead["leadid"]: lead for lead in org.rows("lead")}
    return {
        contact: max(ids, key=lambda i: (leads[i]["statecode"] == 0, leads[i]["createdon"], i))
        for contact, ids in org.members().items()
    }


def by(rows: list[dict[str, Any]], column: str) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row[column], []).append(row)
    return grouped


def test_every_action_writes_its_record_once_and_a_refused_member_fails_alone(org: Org) -> None:
    members = member_leads(org)
    assert len(members) >= 4
    contacts = {c["contactid"]: c for c in org.rows("contact")}
    lead_rows = {lead["leadid"]: lead for lead in org.rows("lead")}
    users = {u["systemuserid"] for u in org.rows("systemuser")}
    # one member already has an open lead on the topic: it serves instead of a new one
    reuser, broken = sorted(members)[:2]
    existing = "0d7a8a58-4f1c-4c3e-9e55-000000000001"
    org.cli.emulator.admin("POST", "/tables/lead", {"rows": [{
        "leadid": existing, "subject": TOPIC, "lastname": "Existing", "statecode": 0,
        "statuscode": 1, "_parentcontactid_value": reuser,
    }]})  # fmt: skip
    org.run("run", "sync")
    # another's lead is deleted in Dynamics after the sync: its first write about the lead fails
    org.cli.emulator.admin("DELETE", f"/tables/lead/{members[broken]}")
    leads_before = {lead["leadid"] for lead in org.rows("lead")}

    org.run("journeys", "start", "every-action")
    document = org.run("run", "journeys", "--json", code=1)
    counts = document["runs"][0]["counts"]["every-action"]
    assert document["runs"][0]["outcome"] == "partial"
    (failure,) = counts["failures"]  # its later writes waited on the refused one: never sent
    assert (failure["step"], failure["status"], failure["code"]) == ("demo", 404, "0x80040217")
    assert members[broken] in failure["message"]
    assert (counts["completed"], counts["failed"]) == (len(members) - 1, 1)

    # appointments: one per member, regarding its lead, 45 minutes two business days ahead
    going = {contact: lead for contact, lead in members.items() if contact != broken}
    appointments = by(org.rows("appointment"), "_regardingobjectid_value")
    assert set(appointments) == set(going.values())
    for contact, lead in going.items():
        (appointment,) = appointments[lead]
        assert appointment["subject"] == f"Toolkit demo with {contacts[contact]['fullname']}"
        assert appointment["location"] == "Zurich"
        start = datetime.fromisoformat(appointment["scheduledstart"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(appointment["scheduledend"].replace("Z", "+00:00"))
        assert end - start == timedelta(minutes=45)
        assert start.astimezone(ZURICH).date() == datetime(2027, 1, 6).date()
        owner = lead_rows[lead]["_ownerid_value"]
        assert appointment["_ownerid_value"] == owner
        organizer = [(ORGANIZER, owner)] if owner in users else []
        assert org.parties(appointment["activityid"]) == [(REQUIRED, contact), *organizer]

    # new leads: one per member on the topic, the reuser's own serves instead
    new_leads = [lead for lead in org.rows("lead") if lead["leadid"] not in leads_before]
    made = by(new_leads, "_parentcontactid_value")
    assert set(made) == set(going) - {reuser}
    for contact, (lead,) in made.items():
        assert (lead["subject"], lead["description"]) == (TOPIC, "From the journey every-action")
        assert lead["_customerid_value"] == contact
        assert lead["emailaddress1"] == contacts[contact]["emailaddress1"]

    contacts_after = {c["contactid"]: c for c in org.rows("contact")}
    marked = {
        c for c, row in contacts_after.items() if row["description"] == "In the toolkit journey"
    }
    assert marked == set(going)

    # the custom action and the workflow ran once per member still going, on its lead
    invocations = org.cli.emulator.admin("GET", "/invocations")["invocations"]
    routed = [i for i in invocations if i["kind"] == "action"]
    assert sorted(i["entityid"] for i in routed) == sorted(going.values())
    assert {i["parameters"]["Reason"] for i in routed} == {"Journey every-action"}
    nurtured = [i for i in invocations if i["kind"] == "workflow"]
    assert sorted(i["entityid"] for i in nurtured) == sorted(going.values())
    assert {i["workflowid"] for i in nurtured} == {NURTURE}
    jobs = by(org.rows("asyncoperation"), "_regardingobjectid_value")
    assert {lead: len(made) for lead, made in jobs.items()} == dict.fromkeys(going.values(), 1)

    # qualified: each member's lead, no opportunity
    leads_after = {lead["leadid"]: lead for lead in org.rows("lead")}
    assert all(leads_after[lead]["statecode"] == 1 for lead in going.values())
    assert org.rows("opportunity") == []

    shown = org.run("journeys", "show", "every-action", "--json")
    assert shown["members"] == {"completed": len(going), "failed": 1}

    # a second run, and one a day later, write nothing more
    seq = org.last_seq()
    org.run("run", "journeys")
    org.advance(days=1)
    org.run("run", "sync")
    org.run("run", "journeys")
    assert org.writes_since(seq) == []
    assert len(org.cli.emulator.admin("GET", "/invocations")["invocations"]) == len(invocations)


def test_a_closed_lead_on_the_topic_is_not_reused_and_the_new_one_gets_its_own_id(
    org: Org, tmp_path: Path
) -> None:
    members = member_leads(org)
    contact = sorted(members)[0]
    closed = "0d7a8a58-4f1c-4c3e-9e55-000000000002"
    org.cli.emulator.admin("POST", "/tables/lead", {"rows": [{
        "leadid": closed, "subject": TOPIC, "lastname": "Closed", "statecode": 2,
        "statuscode": 4, "_parentcontactid_value": contact,
    }]})  # fmt: skip
    org.run("run", "sync")
    org.run("journeys", "start", "every-action")
    plan = org.run("run", "journeys", "--dry-run", "--json")["plan"]["journeys"]
    made = [s for s in plan if s["table"] == "lead" and s.get("regarding") == f"contact {contact}"]
    assert len(made) == 1
    assert made[0]["id"] != closed
    assert not made[0].get("reused")
