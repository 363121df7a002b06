"""Activities: phonecall, task, appointment, their polymorphic regarding and activity parties."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.emulator.conftest import Api, created_id, error


def some(web: Api, table: str, **where: Any) -> str:
    return next(i for i, r in web.rows(table).items() if all(r[k] == v for k, v in where.items()))


def phonecall_body(web: Api, lead_id: str, user_id: str) -> dict[str, Any]:
    return {
        "subject": "Follow-up call",
        "description": "Discussed pricing",
        "phonenumber": "+1 555 0100",
        "directioncode": True,
        "scheduledstart": "2024-06-12T14:00:00Z",
        "scheduledend": "2024-06-12T14:15:00Z",
        "actualdurationminutes": 12,
        "regardingobjectid_lead_phonecall@odata.bind": f"/leads({lead_id})",
        "phonecall_activity_parties": [
            {
                "partyid_systemuser@odata.bind": f"/systemusers({user_id})",
                "participationtypemask": 1,
            },
            {"partyid_lead@odata.bind": f"/leads({lead_id})", "participationtypemask": 2},
        ],
    }


@pytest.fixture
def lead_id(web: Api) -> str:
    return some(web, "lead", statecode=0)


@pytest.fixture
def user_id(web: Api) -> str:
    return str(web.get("WhoAmI").json()["UserId"])


def test_a_phone_call_with_parties_is_created_and_read_back_with_expand(
    web: Api, lead_id: str, user_id: str
) -> None:
    call_id = created_id(web.post("phonecalls", phonecall_body(web, lead_id, user_id)))
    row = web.rows("phonecall")[call_id]
    assert row["_regardingobjectid_value"] == lead_id
    assert row["activitytypecode"] == "phonecall"
    assert (row["statecode"], row["statuscode"]) == (0, 1)
    assert row["directioncode"] is True
    assert row["prioritycode"] == 1
    parties = [p for p in web.rows("activityparty").values() if p["_activityid_value"] == call_id]
    assert sorted((p["participationtypemask"], p["_partyid_value"]) for p in parties) == [
        (1, user_id),
        (2, lead_id),
    ]
    response = web.get(
        f"phonecalls({call_id})?$select=subject,_regardingobjectid_value"
        "&$expand=phonecall_activity_parties($select=participationtypemask,_partyid_value,addressused)",
        'odata.include-annotations="*"',
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["@odata.context"].endswith(
        "$metadata#phonecalls(subject,_regardingobjectid_value,"
        "phonecall_activity_parties(participationtypemask,_partyid_value,addressused))/$entity"
    )
    assert body["activityid"] == call_id
    assert body["_regardingobjectid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "lead"
    assert (
        body["_regardingobjectid_value@Microsoft.Dynamics.CRM.associatednavigationproperty"]
        == "regardingobjectid_lead_phonecall"
    )
    expanded = sorted(body["phonecall_activity_parties"], key=lambda p: p["participationtypemask"])
    assert [p["_partyid_value"] for p in expanded] == [user_id, lead_id]
    assert expanded[1]["_partyid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "lead"
    assert expanded[0]["addressused"] is None
    assert set(expanded[0]) >= {"@odata.etag", "activitypartyid"}


def test_regarding_reads_back_through_each_typed_navigation(web: Api) -> None:
    account_id = next(iter(web.rows("account")))
    contact_id = next(iter(web.rows("contact")))
    task_id = created_id(
        web.post(
            "tasks",
            {
                "subject": "Send the offer",
                "percentcomplete": 10,
                "regardingobjectid_account_task@odata.bind": f"accounts({account_id})",
            },
        )
    )
    appointment_id = created_id(
        web.post(
            "appointments",
            {
                "subject": "Demo",
                "location": "Lisbon",
                "scheduledstart": "2024-06-12T10:00:00Z",
                "scheduledend": "2024-06-12T11:00:00Z",
                "regardingobjectid_contact_appointment@odata.bind": f"/contacts({contact_id})",
                "appointment_activity_parties": [
                    {
                        "partyid_contact@odata.bind": f"/contacts({contact_id})",
                        "participationtypemask": 5,
                    },
                    {"addressused": "guest@example.com", "participationtypemask": 6},
                ],
            },
        )
    )
    task = web.get(f"tasks({task_id})?$expand=regardingobjectid_account_task($select=name)").json()
    assert task["regardingobjectid_account_task"]["accountid"] == account_id
    assert (task["statecode"], task["statuscode"]) == (0, 2)
    appointment = web.get(
        f"appointments({appointment_id})?$select=subject"
        "&$expand=regardingobjectid_contact_appointment($select=fullname),"
        "regardingobjectid_lead_appointment($select=fullname)"
    ).json()
    assert appointment["regardingobjectid_contact_appointment"]["contactid"] == contact_id
    assert appointment["regardingobjectid_lead_appointment"] is None
    related = web.get(f"accounts({account_id})/Account_Tasks?$select=subject").json()
    assert related["@odata.context"].endswith("$metadata#tasks(subject)")
    assert [t["activityid"] for t in related["value"]] == [task_id]
    unresolved = [
        p for p in web.rows("activityparty").values() if p["_activityid_value"] == appointment_id
    ]
    assert {p["addressused"] for p in unresolved} == {None, "guest@example.com"}


def test_columns_have_their_types_options_and_max_lengths(web: Api, lead_id: str) -> None:
    assert error(web.post("phonecalls", {"subject": "x" * 201})) == (
        400,
        "0x80044331",
        "A validation error occurred.  The length of the 'subject' attribute of the 'phonecall' "
        "entity exceeded the maximum allowed length of '200'.",
    )
    assert error(web.post("appointments", {"subject": "Demo", "location": "y" * 201}))[1] == (
        "0x80044331"
    )
    assert error(web.post("tasks", {"percentcomplete": 101}))[:2] == (400, "0x80044331")
    assert error(web.post("tasks", {"prioritycode": 7}))[:2] == (400, "0x80044331")
    assert error(web.post("phonecalls", {"directioncode": "out"}))[:2] == (400, "0x80048d19")
    assert error(web.post("phonecalls", {"phonecallid": str(uuid.uuid4())})) == (
        400,
        "0x80048d19",
        "Invalid property 'phonecallid' was found in entity 'Microsoft.Dynamics.CRM.phonecall'",
    )
    assert error(web.post("phonecalls", {"regardingobjectid@odata.bind": f"/leads({lead_id})"}))[
        2
    ].startswith("An undeclared property 'regardingobjectid' which only has property annotations")
    assert error(
        web.post(
            "phonecalls", {"Regardingobjectid_lead_phonecall@odata.bind": f"/leads({lead_id})"}
        )
    )[:2] == (400, "0x80048d19")
    missing = str(uuid.uuid4())
    assert error(
        web.post(
            "phonecalls", {"regardingobjectid_lead_phonecall@odata.bind": f"/leads({missing})"}
        )
    ) == (404, "0x80040217", f"lead With Id = {missing} Does Not Exist")
    assert error(
        web.post(
            "phonecalls",
            {"phonecall_activity_parties": [{"partyid_lead@odata.bind": f"/leads({lead_id})"}]},
        )
    ) == (
        400,
        "0x80040203",
        "The 'participationtypemask' attribute of the 'activityparty' entity is required.",
    )
    assert web.rows("phonecall") == {}
    assert web.rows("activityparty") == {}


def test_patching_the_parties_replaces_them_and_put_is_refused(
    web: Api, lead_id: str, user_id: str
) -> None:
    call_id = created_id(web.post("phonecalls", phonecall_body(web, lead_id, user_id)))
    contact_id = next(iter(web.rows("contact")))
    patched = web.patch(
        f"phonecalls({call_id})",
        {"phonecall_activity_parties": [
            {"partyid_contact@odata.bind": f"/contacts({contact_id})", "participationtypemask": 2}
        ]},
    )  # fmt: skip
    assert patched.status_code == 204
    parties = [p for p in web.rows("activityparty").values() if p["_activityid_value"] == call_id]
    assert [(p["participationtypemask"], p["_partyid_value"]) for p in parties] == [(2, contact_id)]
    refused = web.put(f"phonecalls({call_id})/phonecall_activity_parties", {"value": []})
    assert error(refused)[:2] == (400, "0x80060888")
    assert error(web.post("activityparties", {"participationtypemask": 1}))[:2] == (
        400,
        "0x80040315",
    )
    web.config(replace_parties_on_patch=False)
    web.patch(
        f"phonecalls({call_id})",
        {
            "phonecall_activity_parties": [
                {"addressused": "+1 555 0199", "participationtypemask": 2}
            ]
        },
    )
    parties = [p for p in web.rows("activityparty").values() if p["_activityid_value"] == call_id]
    assert len(parties) == 2


def test_unresolved_parties_can_be_switched_off(web: Api) -> None:
    body = {"subject": "x", "phonecall_activity_parties": [
        {"addressused": "+1 555 0100", "participationtypemask": 2}
    ]}  # fmt: skip
    assert web.post("phonecalls", body).status_code == 204
    web.config(unresolved_parties=False)
    assert error(web.post("phonecalls", body))[:2] == (400, "0x80040203")


def test_deleting_a_lead_cascades_to_its_phone_calls_and_their_parties(
    web: Api, lead_id: str, user_id: str
) -> None:
    call_id = created_id(web.post("phonecalls", phonecall_body(web, lead_id, user_id)))
    assert web.delete(f"leads({lead_id})").status_code == 204
    assert call_id not in web.rows("phonecall")
    assert web.rows("activityparty") == {}
    deleted = {d["id"] for d in web.admin("GET", "/tables/phonecall/deleted")["deleted"]}
    assert call_id in deleted


def test_deleting_a_party_record_unlinks_the_party(web: Api, user_id: str) -> None:
    contact_id = some(web, "contact", _parentcustomerid_value=None)
    call_id = created_id(
        web.post(
            "phonecalls",
            {"subject": "x", "phonecall_activity_parties": [
                {"partyid_contact@odata.bind": f"/contacts({contact_id})", "participationtypemask": 2}
            ]},
        )
    )  # fmt: skip
    assert web.delete(f"contacts({contact_id})").status_code == 204
    (party,) = web.rows("activityparty").values()
    assert party["_activityid_value"] == call_id
    assert party["_partyid_value"] is None


@pytest.mark.parametrize(
    ("table", "state", "status", "bad_status"),
    [
        ("phonecalls", 1, 2, 3),
        ("phonecalls", 1, 4, 1),
        ("phonecalls", 2, 3, 2),
        ("tasks", 1, 5, 6),
        ("tasks", 2, 6, 5),
        ("appointments", 3, 5, 3),
        ("appointments", 1, 3, 1),
        ("appointments", 2, 4, 5),
    ],
)
def test_activities_take_their_valid_state_and_status_pairs(
    web: Api, table: str, state: int, status: int, bad_status: int
) -> None:
    activity_id = created_id(web.post(table, {"subject": "State"}))
    assert error(
        web.patch(f"{table}({activity_id})", {"statecode": state, "statuscode": bad_status})
    ) == (
        400,
        "0x80040203",
        f"{bad_status} is not a valid status code for state code {state}.",
    )
    ok = web.patch(f"{table}({activity_id})", {"statecode": state, "statuscode": status})
    assert ok.status_code == 204
    row = web.rows(table.removesuffix("s"))[activity_id]
    assert (row["statecode"], row["statuscode"]) == (state, status)


def test_a_closed_activity_is_read_only_until_reopened(web: Api) -> None:
    call_id = created_id(web.post("phonecalls", {"subject": "Call"}))
    assert web.patch(f"phonecalls({call_id})", {"statecode": 1, "statuscode": 2}).status_code == 204
    version = web.rows("phonecall")[call_id]["versionnumber"]
    assert error(web.patch(f"phonecalls({call_id})", {"subject": "Changed"})) == (
        400,
        "0x80043b09",
        "The object cannot be updated because it is read-only.",
    )
    assert web.rows("phonecall")[call_id]["versionnumber"] == version
    assert web.patch(f"phonecalls({call_id})", {"statecode": 0}).status_code == 204
    assert web.rows("phonecall")[call_id]["statuscode"] == 1
    assert web.patch(f"phonecalls({call_id})", {"subject": "Changed"}).status_code == 204
    web.patch(f"phonecalls({call_id})", {"statecode": 2})
    web.config(closed_activities_read_only=False)
    assert web.patch(f"phonecalls({call_id})", {"subject": "Again"}).status_code == 204


def test_state_on_create_is_refused_unless_switched_on(web: Api) -> None:
    body = {"subject": "Made", "statecode": 1, "statuscode": 2}
    assert error(web.post("phonecalls", body))[:2] == (400, "0x80040203")
    web.config(allow_state_on_create=True)
    call_id = created_id(web.post("phonecalls", body))
    assert web.rows("phonecall")[call_id]["statecode"] == 1
    assert error(web.post("phonecalls", {"subject": "x", "statecode": 1, "statuscode": 1}))[1] == (
        "0x80040203"
    )


def test_accounts_contacts_and_opportunities_have_their_state_pairs(web: Api) -> None:
    contact_id = next(iter(web.rows("contact")))
    assert error(web.patch(f"contacts({contact_id})", {"statecode": 1, "statuscode": 1}))[1] == (
        "0x80040203"
    )
    assert web.patch(f"contacts({contact_id})", {"statecode": 1}).status_code == 204
    assert web.rows("contact")[contact_id]["statuscode"] == 2
    opportunity_id = created_id(web.post("opportunities", {"name": "Big deal"}))
    assert (
        web.patch(f"opportunities({opportunity_id})", {"statecode": 2, "statuscode": 5}).status_code
        == 204
    )
