"""Owners, users, teams, business units and queues (§21): owner binds and reads, the Assign
cascade, AddToQueue."""

from __future__ import annotations

from typing import Any

import pytest

from tests.emulator.conftest import Api, created_id, error

ANNOTATIONS = 'odata.include-annotations="*"'
LOOKUP = "Microsoft.Dynamics.CRM.lookuplogicalname"
NAVIGATION = "Microsoft.Dynamics.CRM.associatednavigationproperty"


def team(web: Api, name: str) -> str:
    return next(i for i, t in web.rows("team").items() if t["name"] == name)


def first(web: Api, table: str, **where: Any) -> str:
    return next(i for i, r in web.rows(table).items() if all(r[k] == v for k, v in where.items()))


def test_the_org_has_a_root_business_unit_and_its_teams(web: Api) -> None:
    units = web.get("businessunits?$select=name,_parentbusinessunitid_value").json()["value"]
    assert [(u["name"], u["_parentbusinessunitid_value"]) for u in units] == [("Contoso", None)]
    root = units[0]["businessunitid"]
    assert web.get("WhoAmI").json()["BusinessUnitId"] == root
    teams = web.get(
        "teams?$select=name,teamtype,isdefault,_businessunitid_value&$orderby=name", ANNOTATIONS
    ).json()["value"]
    assert [(t["name"], t["teamtype"], t["isdefault"]) for t in teams] == [
        ("Contoso", 0, True),
        ("Deal Room", 1, False),
        ("Inside Sales", 0, False),
    ]
    assert {t["_businessunitid_value"] for t in teams} == {root}
    assert teams[1]["teamtype@OData.Community.Display.V1.FormattedValue"] == "Access"
    default = web.get("teams?$select=name&$filter=isdefault eq true").json()["value"]
    assert [t["name"] for t in default] == ["Contoso"]


def test_users_carry_licence_integration_and_mailbox_approval(web: Api) -> None:
    users = web.get(
        "systemusers?$select=fullname,isdisabled,accessmode,islicensed,isintegrationuser,"
        "emailrouteraccessapproval,applicationid"
    ).json()["value"]
    assert sum(u["isdisabled"] for u in users) == 2
    humans = [u for u in users if u["applicationid"] is None]
    assert [u["accessmode"] for u in humans].count(4) == 1
    assert {u["emailrouteraccessapproval"] for u in users} == {0, 1, 2, 3}
    owners = web.get(
        "systemusers?$select=systemuserid&$filter=isdisabled eq false and accessmode eq 0 "
        "and applicationid eq null and islicensed eq true"
    ).json()["value"]
    assert len(owners) == 14
    created = web.post(
        "systemusers",
        {
            "firstname": "New",
            "lastname": "User",
            "internalemailaddress": "new.user@contoso.example",
            "domainname": "new.user@contoso.example",
            "emailrouteraccessapproval": 1,
        },
    )
    assert web.rows("systemuser")[created_id(created)]["emailrouteraccessapproval"] == 0


def test_a_team_owned_lead_reads_its_owner_type_through_annotations(web: Api) -> None:
    owner_team = team(web, "Inside Sales")
    lead_id = first(web, "lead", _ownerid_value=owner_team)
    body = web.get(
        f"leads({lead_id})?$select=_ownerid_value,_owninguser_value,_owningteam_value",
        ANNOTATIONS,
    ).json()
    assert body["_ownerid_value"] == owner_team
    assert body[f"_ownerid_value@{LOOKUP}"] == "team"
    assert body[f"_ownerid_value@{NAVIGATION}"] == "ownerid"
    assert body["_ownerid_value@OData.Community.Display.V1.FormattedValue"] == "Inside Sales"
    assert (body["_owninguser_value"], body["_owningteam_value"]) == (None, owner_team)
    only_lookup = web.get(
        f"leads({lead_id})?$select=_ownerid_value",
        f'odata.include-annotations="{LOOKUP}"',
    ).json()
    assert set(only_lookup) == {
        "@odata.context",
        "@odata.etag",
        f"_ownerid_value@{LOOKUP}",
        "_ownerid_value",
        "leadid",
    }
    user_lead = first(web, "lead", _owningteam_value=None)
    user_body = web.get(f"leads({user_lead})?$select=_ownerid_value", ANNOTATIONS).json()
    assert user_body[f"_ownerid_value@{LOOKUP}"] == "systemuser"
    team_view = web.get(f"leads({lead_id})?$expand=owningteam($select=name)&$select=fullname")
    assert team_view.json()["owningteam"]["name"] == "Inside Sales"
    assert web.get(f"leads({lead_id})/ownerid?$select=name").json()["name"] == "Inside Sales"
    owned = web.get(f"teams({owner_team})/owner_leads?$select=fullname&$count=true").json()
    assert owned["@odata.count"] == sum(
        1 for lead in web.rows("lead").values() if lead["_ownerid_value"] == owner_team
    )


def test_owneridtype_is_not_a_web_api_property(web: Api) -> None:
    assert error(web.get("leads?$select=owneridtype")) == (
        400,
        "0x80060888",
        "Could not find a property named 'owneridtype' on type 'Microsoft.Dynamics.CRM.lead'.",
    )
    assert error(web.get("emails?$filter=owneridtype eq 'team'"))[:2] == (400, "0x80060888")


@pytest.mark.parametrize("name", ["Inside Sales", "Contoso"])
def test_records_can_be_assigned_to_owner_teams(web: Api, name: str) -> None:
    owner = team(web, name)
    contact_id = created_id(
        web.post("contacts", {"lastname": "Team", "ownerid@odata.bind": f"/teams({owner})"})
    )
    row = web.rows("contact")[contact_id]
    assert (row["_ownerid_value"], row["_owningteam_value"], row["_owninguser_value"]) == (
        owner,
        owner,
        None,
    )
    user = first(web, "systemuser", isdisabled=False, accessmode=0)
    back = web.patch(f"contacts({contact_id})", {"ownerid@odata.bind": f"/systemusers({user})"})
    assert back.status_code == 204
    row = web.rows("contact")[contact_id]
    assert (row["_ownerid_value"], row["_owningteam_value"], row["_owninguser_value"]) == (
        user,
        None,
        user,
    )


def test_access_teams_cannot_own_records(web: Api) -> None:
    access = team(web, "Deal Room")
    lead_id = first(web, "lead", statecode=0)
    before = web.rows("lead")[lead_id]
    for response in (
        web.patch(f"leads({lead_id})", {"ownerid@odata.bind": f"/teams({access})"}),
        web.post("tasks", {"subject": "x", "ownerid@odata.bind": f"/teams({access})"}),
        web.put(
            f"leads({lead_id})/ownerid/$ref",
            {"@odata.id": f"{web.emulator.api_url}/teams({access})"},
        ),
    ):
        assert error(response) == (400, "0x80040203", "Access teams cannot own records.")
    assert web.rows("lead")[lead_id] == before
    assert web.rows("task") == {}


def test_group_teams_may_own_records_and_owner_binds_name_users_or_teams_only(web: Api) -> None:
    unit = next(iter(web.rows("businessunit")))
    group = created_id(
        web.post(
            "teams",
            {
                "name": "AAD Sales",
                "teamtype": 2,
                "businessunitid@odata.bind": f"/businessunits({unit})",
            },
        )
    )
    assert web.post("tasks", {"subject": "g", "ownerid@odata.bind": f"/teams({group})"}).ok
    contact_id = first(web, "contact", statecode=0)
    wrong = web.post("tasks", {"subject": "x", "ownerid@odata.bind": f"/contacts({contact_id})"})
    assert error(wrong) == (
        400,
        "0x80048d19",
        "The entity set 'contacts' is not a valid target of 'ownerid@odata.bind'.",
    )
    missing = "00000000-0000-0000-0000-0000000000a7"
    assert error(
        web.post("tasks", {"subject": "x", "ownerid@odata.bind": f"/teams({missing})"})
    ) == (
        404,
        "0x80040217",
        f"team With Id = {missing} Does Not Exist",
    )


def test_a_disabled_user_can_be_given_records(web: Api) -> None:
    disabled = first(web, "systemuser", isdisabled=True)
    task_id = created_id(
        web.post("tasks", {"subject": "Leaver", "ownerid@odata.bind": f"/systemusers({disabled})"})
    )
    assert web.rows("task")[task_id]["_ownerid_value"] == disabled


def test_assigning_a_lead_reassigns_its_activities(web: Api) -> None:
    lead_id = first(web, "lead", statecode=0)
    other = created_id(web.post("tasks", {"subject": "Unrelated"}))
    task_id = created_id(
        web.post(
            "tasks",
            {
                "subject": "Follow up",
                "regardingobjectid_lead_task@odata.bind": f"/leads({lead_id})",
            },
        )
    )
    email_id = created_id(
        web.post(
            "emails",
            {"subject": "Hello", "regardingobjectid_lead_email@odata.bind": f"/leads({lead_id})"},
        )
    )
    assert web.patch(f"emails({email_id})", {"statecode": 1, "statuscode": 2}).status_code == 204
    owner = team(web, "Inside Sales")
    assert web.patch(f"leads({lead_id})", {"ownerid@odata.bind": f"/teams({owner})"}).ok
    assert web.rows("task")[task_id]["_ownerid_value"] == owner
    assert web.rows("email")[email_id]["_owningteam_value"] == owner
    assert web.rows("task")[other]["_ownerid_value"] != owner
    relationship = web.get(
        "EntityDefinitions(LogicalName='email')/ManyToOneRelationships"
        "?$filter=SchemaName eq 'Lead_Emails'"
    ).json()["value"][0]
    assert relationship["CascadeConfiguration"] == {"Assign": "Cascade", "Delete": "Cascade"}


def test_add_to_queue_creates_one_queue_item_per_record_and_queue(web: Api) -> None:
    queue_id = next(iter(web.rows("queue")))
    call_id = created_id(web.post("phonecalls", {"subject": "Call back"}))
    target = {"@odata.type": "Microsoft.Dynamics.CRM.phonecall", "activityid": call_id}
    url = f"queues({queue_id})/Microsoft.Dynamics.CRM.AddToQueue"
    response = web.post(url, {"Target": target})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["@odata.context"] == (
        f"{web.emulator.api_url}/$metadata#Microsoft.Dynamics.CRM.AddToQueueResponse"
    )
    item = web.rows("queueitem")[body["QueueItemId"]]
    assert (item["_queueid_value"], item["_objectid_value"], item["title"]) == (
        queue_id,
        call_id,
        "Call back",
    )
    assert web.post(url, {"Target": target}).json()["QueueItemId"] == body["QueueItemId"]
    assert len(web.rows("queueitem")) == 1
    listed = web.get(f"phonecalls({call_id})/PhoneCall_QueueItem?$select=title").json()["value"]
    assert [i["queueitemid"] for i in listed] == [body["QueueItemId"]]


def test_add_to_queue_moves_an_item_from_its_source_queue(web: Api) -> None:
    first_queue = next(iter(web.rows("queue")))
    second_queue = created_id(web.post("queues", {"name": "Escalations"}))
    task_id = created_id(web.post("tasks", {"subject": "Escalate"}))
    target = {"@odata.type": "Microsoft.Dynamics.CRM.task", "activityid": task_id}
    item = web.post(
        f"queues({first_queue})/Microsoft.Dynamics.CRM.AddToQueue", {"Target": target}
    ).json()["QueueItemId"]
    moved = web.post(
        f"queues({second_queue})/Microsoft.Dynamics.CRM.AddToQueue",
        {
            "Target": target,
            "SourceQueue": {"@odata.type": "Microsoft.Dynamics.CRM.queue", "queueid": first_queue},
            "QueueItemProperties": {"title": "Escalated", "queueid": first_queue},
        },
    ).json()["QueueItemId"]
    assert moved == item
    row = web.rows("queueitem")[item]
    assert (row["_queueid_value"], row["title"]) == (second_queue, "Escalated")


def test_add_to_queue_refuses_bad_targets_and_unknown_records(web: Api) -> None:
    queue_id = next(iter(web.rows("queue")))
    url = f"queues({queue_id})/Microsoft.Dynamics.CRM.AddToQueue"
    lead_id = first(web, "lead", statecode=0)
    not_queueable = web.post(
        url, {"Target": {"@odata.type": "Microsoft.Dynamics.CRM.lead", "leadid": lead_id}}
    )
    assert error(not_queueable) == (
        400,
        "0x80048d19",
        "The parameter 'Target' must be an entity reference with its '@odata.type', one of: "
        "Microsoft.Dynamics.CRM.email, Microsoft.Dynamics.CRM.phonecall, "
        "Microsoft.Dynamics.CRM.task, Microsoft.Dynamics.CRM.appointment.",
    )
    missing = "00000000-0000-0000-0000-0000000000d2"
    target = {"@odata.type": "Microsoft.Dynamics.CRM.phonecall", "activityid": missing}
    assert error(web.post(url, {"Target": target})) == (
        404,
        "0x80040217",
        f"phonecall With Id = {missing} Does Not Exist",
    )
    assert error(web.post(url, {})) == (
        400,
        "0x80048d19",
        "The parameter 'Target' of the operation 'AddToQueue' is required.",
    )
    assert error(web.post(url, {"Target": target, "Priority": 1}))[2] == (
        "The parameter 'Priority' in the request payload is not a valid parameter for the "
        "operation 'AddToQueue'."
    )
    other = f"queues({missing})/Microsoft.Dynamics.CRM.AddToQueue"
    call_id = created_id(web.post("phonecalls", {"subject": "x"}))
    target = {"@odata.type": "Microsoft.Dynamics.CRM.phonecall", "activityid": call_id}
    assert error(web.post(other, {"Target": target}))[:2] == (404, "0x80040217")
    assert web.rows("queueitem") == {}
