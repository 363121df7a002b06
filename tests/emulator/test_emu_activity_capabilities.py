"""Activity tables for journeys (§19, §23): completing and cancelling, appointments (U47), party
changes in deltas (U57), change tracking (U55), bulk messages and the sdkmessagefilters probe
(U56), parameter aliases."""

from __future__ import annotations

from typing import Any

import pytest

from tests.emulator.conftest import Api, created_id, error

PROBE = (
    "sdkmessagefilters?$select=sdkmessagefilterid&$filter=sdkmessageid/name eq @message "
    "and primaryobjecttypecode eq @table&@message='{message}'&@table='{table}'"
)


def first(web: Api, table: str, **where: Any) -> str:
    return next(i for i, r in web.rows(table).items() if all(r[k] == v for k, v in where.items()))


@pytest.mark.parametrize(
    ("table", "complete", "cancel", "reopen"),
    [
        ("tasks", (1, 5), (2, 6), (0, 2)),
        ("appointments", (1, 3), (2, 4), (0, 1)),
        ("phonecalls", (1, 2), (2, 3), (0, 1)),
        ("emails", (1, 2), (2, 5), (0, 1)),
    ],
)
def test_activities_complete_cancel_and_reopen_with_the_documented_pairs(
    web: Api,
    table: str,
    complete: tuple[int, int],
    cancel: tuple[int, int],
    reopen: tuple[int, int],
) -> None:
    activity_id = created_id(web.post(table, {"subject": "Journey step"}))
    url = f"{table}({activity_id})"
    assert web.patch(url, {"actualdurationminutes": 15}).status_code == 204
    for state, status in (complete, reopen, cancel, reopen):
        response = web.patch(url, {"statecode": state, "statuscode": status})
        assert response.status_code == 204, response.text
        row = web.rows(table.removesuffix("s"))[activity_id]
        assert (row["statecode"], row["statuscode"]) == (state, status)
    assert web.rows(table.removesuffix("s"))[activity_id]["actualdurationminutes"] == 15


def test_a_completed_phone_call_can_also_be_received(web: Api) -> None:
    call_id = created_id(web.post("phonecalls", {"subject": "Inbound", "directioncode": False}))
    assert web.patch(f"phonecalls({call_id})", {"statecode": 1, "statuscode": 4}).ok
    assert web.rows("phonecall")[call_id]["statuscode"] == 4


def test_an_appointment_with_start_and_end_is_created_busy(web: Api) -> None:
    user_id = first(web, "systemuser", isdisabled=False, accessmode=0)
    contact_id = first(web, "contact", statecode=0)
    body = {
        "subject": "Product demo",
        "location": "Teams",
        "scheduledstart": "2024-06-20T13:00:00Z",
        "scheduledend": "2024-06-20T13:30:00Z",
        "regardingobjectid_contact_appointment@odata.bind": f"/contacts({contact_id})",
        "appointment_activity_parties": [
            {
                "partyid_systemuser@odata.bind": f"/systemusers({user_id})",
                "participationtypemask": 7,
            },
            {"partyid_contact@odata.bind": f"/contacts({contact_id})", "participationtypemask": 5},
            {"addressused": "guest@example.com", "participationtypemask": 6},
        ],
    }
    response = web.post("appointments", body, headers={"Prefer": "return=representation"})
    assert response.status_code == 201, response.text
    assert (response.json()["statecode"], response.json()["statuscode"]) == (3, 5)
    unscheduled = created_id(web.post("appointments", {"subject": "Some time"}))
    assert (web.rows("appointment")[unscheduled]["statecode"]) == 0
    tentative = created_id(web.post("appointments", {**body, "statuscode": 2}))
    row = web.rows("appointment")[tentative]
    assert (row["statecode"], row["statuscode"]) == (0, 2)
    web.config(appointment_scheduled_on_create=False)
    free = created_id(web.post("appointments", body))
    row = web.rows("appointment")[free]
    assert (row["statecode"], row["statuscode"]) == (0, 1)


@pytest.mark.parametrize(
    ("party", "mask", "message"),
    [
        (
            "contact",
            7,
            "A contact cannot take the participation type 7 on an activity of type 'appointment'.",
        ),
        (
            "address",
            7,
            "An activity party with only an addressused (unresolved) is not allowed here.",
        ),
        (
            "contact",
            2,
            "The participation type 2 is not valid for an activity of type 'appointment'.",
        ),
    ],
)
def test_appointment_parties_must_fit_their_role(
    web: Api, party: str, mask: int, message: str
) -> None:
    contact_id = first(web, "contact", statecode=0)
    item: dict[str, Any] = (
        {"partyid_contact@odata.bind": f"/contacts({contact_id})"}
        if party == "contact"
        else {"addressused": "x@example.com"}
    )
    response = web.post(
        "appointments",
        {
            "subject": "Roles",
            "appointment_activity_parties": [{**item, "participationtypemask": mask}],
        },
    )
    assert error(response) == (400, "0x80040203", message)


def test_a_party_change_bumps_its_activity_for_deltas(web: Api) -> None:
    web.config(change_tracking={"email": True})
    contact_id = created_id(web.post("contacts", {"lastname": "Recipient"}))
    email_id = created_id(
        web.post(
            "emails",
            {
                "subject": "Parties",
                "email_activity_parties": [
                    {
                        "partyid_contact@odata.bind": f"/contacts({contact_id})",
                        "participationtypemask": 2,
                    }
                ],
            },
        )
    )
    (party,) = [p for p in web.rows("activityparty").values() if p["_activityid_value"] == email_id]
    email = web.rows("email")[email_id]
    assert email["versionnumber"] > party["versionnumber"]
    start = web.get("emails?$select=subject", "odata.track-changes").json()["@odata.deltaLink"]
    web.advance(5)
    assert web.delete(f"contacts({contact_id})").status_code == 204
    changed = web.rows("email")[email_id]
    assert changed["versionnumber"] > email["versionnumber"]
    assert changed["modifiedon"] > email["modifiedon"]
    delta = web.get(start, "odata.track-changes").json()["value"]
    assert [row["activityid"] for row in delta] == [email_id]


def test_change_tracking_is_on_for_tasks_calls_and_appointments_and_off_for_email(
    web: Api,
) -> None:
    definitions = web.get(
        "EntityDefinitions?$select=LogicalName,ChangeTrackingEnabled&$filter=IsActivity eq true"
    ).json()["value"]
    assert {d["LogicalName"]: d["ChangeTrackingEnabled"] for d in definitions} == {
        "phonecall": True,
        "task": True,
        "appointment": True,
        "email": False,
    }
    created_id(web.post("emails", {"subject": "Untracked"}))
    ignored = web.get("emails?$select=subject", "odata.track-changes")
    assert "Preference-Applied" not in ignored.headers
    assert "@odata.deltaLink" not in ignored.json()
    tracked = web.get("tasks?$select=subject", "odata.track-changes")
    assert "@odata.deltaLink" in tracked.json()
    web.config(change_tracking={"email": True})
    assert "@odata.deltaLink" in web.get("emails?$select=subject", "odata.track-changes").json()
    assert web.admin("GET", "/config")["change_tracking"]["interactionforemail"] is False


@pytest.mark.parametrize("table", ["emails", "tasks", "phonecalls", "appointments"])
def test_bulk_actions_on_activity_tables_are_refused_by_default(web: Api, table: str) -> None:
    name = table.removesuffix("s")
    response = web.post(
        f"{table}/Microsoft.Dynamics.CRM.CreateMultiple",
        {"Targets": [{"@odata.type": f"Microsoft.Dynamics.CRM.{name}", "subject": "x"}]},
    )
    assert error(response) == (
        400,
        "0x80040315",
        f"The 'CreateMultiple' method does not support entities of type '{name}'.",
    )


@pytest.mark.parametrize("table", ["lead", "contact", "account"])
def test_the_bulk_probe_finds_one_filter_for_lead_contact_and_account(web: Api, table: str) -> None:
    for message in ("CreateMultiple", "UpdateMultiple", "UpsertMultiple"):
        response = web.get(PROBE.format(message=message, table=table))
        assert response.status_code == 200, response.text
        assert len(response.json()["value"]) == 1


@pytest.mark.parametrize("table", ["email", "task", "phonecall", "appointment", "team"])
def test_the_bulk_probe_finds_nothing_for_activity_and_other_tables(web: Api, table: str) -> None:
    assert web.get(PROBE.format(message="CreateMultiple", table=table)).json()["value"] == []


def test_the_bulk_probe_follows_the_activity_switch(web: Api) -> None:
    web.config(bulk_on_activities=True)
    found = web.get(PROBE.format(message="CreateMultiple", table="phonecall")).json()["value"]
    assert len(found) == 1
    response = web.post(
        "phonecalls/Microsoft.Dynamics.CRM.CreateMultiple",
        {"Targets": [{"@odata.type": "Microsoft.Dynamics.CRM.phonecall", "subject": "x"}]},
    )
    assert response.status_code == 200
    web.config(bulk_on_activities=False)
    assert web.get(PROBE.format(message="CreateMultiple", table="phonecall")).json()["value"] == []
    deleted = web.admin("GET", "/tables/sdkmessagefilter/deleted")["deleted"]
    assert len(deleted) == 3 * 4


def test_message_filters_expand_their_message(web: Api) -> None:
    body = web.get(
        "sdkmessagefilters?$select=primaryobjecttypecode&$expand=sdkmessageid($select=name)"
        "&$filter=primaryobjecttypecode eq 'email'"
    ).json()
    assert [(f["primaryobjecttypecode"], f["sdkmessageid"]["name"]) for f in body["value"]] == [
        ("email", "SendEmail")
    ]
    assert error(web.post("sdkmessages", {"name": "x"}))[:2] == (400, "0x80040315")


def test_parameter_aliases_are_written_into_the_filter(web: Api) -> None:
    lead_id = first(web, "lead", statecode=0)
    subject = web.rows("lead")[lead_id]["subject"]
    quoted = subject.replace("'", "''")
    aliased = web.get(
        "leads?$select=leadid&$filter=leadid eq @id and subject eq @subject"
        f"&@id={lead_id}&@subject='{quoted}'"
    ).json()["value"]
    assert [row["leadid"] for row in aliased] == [lead_id]
    literal = web.get("leads?$select=leadid&$filter=subject eq '@id'&@id=1").json()["value"]
    assert literal == []
    unset = web.get("leads?$select=leadid&$filter=jobtitle eq @missing&@other=1")
    assert len(unset.json()["value"]) == sum(
        1 for lead in web.rows("lead").values() if lead["jobtitle"] is None
    )


def test_an_alias_without_any_value_is_null(web: Api) -> None:
    response = web.get("sdkmessagefilters?$select=name&$filter=sdkmessageid/name eq @message")
    assert response.status_code == 200
    assert response.json()["value"] == []
