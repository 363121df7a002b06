"""Bulk actions (§10), duplicate detection (§7.10) and QualifyLead (§14)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.emulator import batch_wire as bw
from tests.emulator.conftest import Api, created_id, error

LEAD = "Microsoft.Dynamics.CRM.lead"
DUPLICATE = (
    500,
    "0x80040333",
    "A record was not created or updated because a duplicate of the current record already exists.",
)
DETECT = {"MSCRM.SuppressDuplicateDetection": "false"}


def bulk(web: Api, entity_set: str, name: str, targets: list[Any], **headers: str) -> Any:
    return web.post(
        f"{entity_set}/Microsoft.Dynamics.CRM.{name}", {"Targets": targets}, headers=headers
    )


def test_create_multiple_answers_the_ids_in_target_order(web: Api) -> None:
    chosen = str(uuid.uuid4())
    response = bulk(
        web,
        "leads",
        "CreateMultiple",
        [
            {"@odata.type": LEAD, "subject": "Lead 1", "lastname": "One"},
            {"@odata.type": f"#{LEAD}", "leadid": chosen, "subject": "Lead 2", "lastname": "Two"},
        ],
    )
    assert response.status_code == 200
    body = response.json()
    assert body["@odata.context"] == (
        f"{web.emulator.api_url}/$metadata#Microsoft.Dynamics.CRM.CreateMultipleResponse"
    )
    assert body["Ids"][1] == chosen
    rows = web.rows("lead")
    assert [rows[i]["lastname"] for i in body["Ids"]] == ["One", "Two"]


def test_update_and_upsert_multiple_answer_204(web: Api) -> None:
    first, second = list(web.rows("contact"))[:2]
    new = str(uuid.uuid4())
    updated = bulk(
        web,
        "contacts",
        "UpdateMultiple",
        [
            {"@odata.type": "Microsoft.Dynamics.CRM.contact", "contactid": first, "jobtitle": "A"},
            {"@odata.type": "Microsoft.Dynamics.CRM.contact", "contactid": second, "jobtitle": "B"},
        ],
    )
    assert (updated.status_code, updated.content) == (204, b"")
    upserted = bulk(
        web,
        "contacts",
        "UpsertMultiple",
        [
            {"@odata.type": "Microsoft.Dynamics.CRM.contact", "@odata.id": f"contacts({first})",
             "jobtitle": "C"},
            {"@odata.type": "Microsoft.Dynamics.CRM.contact", "contactid": new, "lastname": "New"},
        ],
    )  # fmt: skip
    assert upserted.status_code == 204
    rows = web.rows("contact")
    assert (rows[first]["jobtitle"], rows[second]["jobtitle"]) == ("C", "B")
    assert rows[new]["lastname"] == "New"


def test_bulk_actions_are_all_or_nothing(web: Api) -> None:
    before = web.admin("GET", "/status")["version"]
    targets = [
        {"@odata.type": LEAD, "lastname": "Fine"},
        {"@odata.type": LEAD, "lastname": "x" * 51},
    ]
    assert error(bulk(web, "leads", "CreateMultiple", targets)) == (
        400,
        "0x80044331",
        "A validation error occurred.  The length of the 'lastname' attribute of the 'lead' entity "
        "exceeded the maximum allowed length of '50'.",
    )
    missing = str(uuid.uuid4())
    lead_id = next(iter(web.rows("lead")))
    update = [
        {"@odata.type": LEAD, "leadid": lead_id, "jobtitle": "Changed"},
        {"@odata.type": LEAD, "leadid": missing, "jobtitle": "Changed"},
    ]
    assert error(bulk(web, "leads", "UpdateMultiple", update))[:2] == (404, "0x80040217")
    assert error(bulk(web, "leads", "UpdateMultiple", [{"@odata.type": LEAD, "jobtitle": "x"}]))[
        :2
    ] == (400, "0x80040203")
    untyped = bulk(web, "leads", "CreateMultiple", [{"lastname": "No type"}])
    assert error(untyped)[:2] == (400, "0x80048d19")
    other = bulk(
        web, "leads", "CreateMultiple", [{"@odata.type": "Microsoft.Dynamics.CRM.contact"}]
    )
    assert error(other)[:2] == (400, "0x80048d19")
    assert error(web.post("leads/Microsoft.Dynamics.CRM.CreateMultiple", {"Targets": 1}))[1] == (
        "0x80048d19"
    )
    assert web.admin("GET", "/status")["version"] == before


def test_activity_tables_refuse_bulk_actions_unless_switched_on(web: Api) -> None:
    target = {"@odata.type": "Microsoft.Dynamics.CRM.phonecall", "subject": "Call"}
    assert error(bulk(web, "phonecalls", "CreateMultiple", [target])) == (
        400,
        "0x80040315",
        "The 'CreateMultiple' method does not support entities of type 'phonecall'.",
    )
    web.config(bulk_on_activities=True)
    response = bulk(web, "phonecalls", "CreateMultiple", [target])
    assert response.status_code == 200
    assert list(web.rows("phonecall")) == response.json()["Ids"]


def test_bulk_actions_inside_a_batch_are_accepted(web: Api) -> None:
    boundary = "batch_bulk"
    payload = bw.body(
        boundary,
        bw.op(
            "POST",
            "/api/data/v9.2/leads/Microsoft.Dynamics.CRM.CreateMultiple",
            {"Targets": [{"@odata.type": LEAD, "lastname": "In batch"}]},
        ),
    )
    response = web.session.post(
        web.url("$batch"),
        data=payload,
        headers={"Content-Type": f"multipart/mixed; boundary={boundary}"},
        timeout=30,
    )
    (part,) = bw.parse(response)
    assert part.status == 200
    (new_id,) = part.json()["Ids"]
    assert web.rows("lead")[new_id]["lastname"] == "In batch"


def test_duplicate_detection_runs_only_when_asked(web: Api) -> None:
    contact = next(r for r in web.rows("contact").values() if r["emailaddress1"])
    email = contact["emailaddress1"].strip().upper()
    assert web.post("contacts", {"lastname": "Twin", "emailaddress1": email}).status_code == 204
    before = len(web.rows("contact"))
    assert (
        error(
            web.post(
                "contacts", {"lastname": "Twin", "emailaddress1": f" {email} "}, headers=DETECT
            )
        )
        == DUPLICATE
    )
    assert len(web.rows("contact")) == before
    other = next(
        i for i, r in web.rows("contact").items() if r["emailaddress1"] != contact["emailaddress1"]
    )
    assert error(web.patch(f"contacts({other})", {"emailaddress1": email}, headers=DETECT)) == (
        DUPLICATE
    )
    assert web.patch(f"contacts({other})", {"jobtitle": "Same"}, headers=DETECT).status_code == 204
    fresh = f"{uuid.uuid4().hex}@example.com"
    assert (
        web.post("leads", {"lastname": "A", "emailaddress1": fresh}, headers=DETECT).status_code
        == 204
    )
    assert error(web.post("leads", {"emailaddress1": fresh}, headers=DETECT)) == DUPLICATE
    assert (
        web.post(
            "contacts", {"lastname": "Cross", "emailaddress1": fresh}, headers=DETECT
        ).status_code
        == 204
    )
    web.config(duplicates_across_tables=True)
    assert error(web.post("contacts", {"emailaddress1": fresh}, headers=DETECT)) == DUPLICATE
    assert (
        web.post(
            "contacts", {"lastname": "Off"}, headers={"MSCRM.SuppressDuplicateDetection": "true"}
        ).status_code
        == 204
    )


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("andré.dupont@example.com", "ANDRÉ.DUPONT@example.com"),  # case beyond ASCII
        ("straße@example.com", "STRASSE@example.com"),  # full case folding
        ("bob@example.com", "bob@example.com\n"),  # a line end
        ("ana@example.com", "\u00a0ana@example.com\u2003"),  # Unicode spaces
    ],
)
def test_duplicate_detection_folds_case_and_space_as_unicode(
    web: Api, first: str, second: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    first, second = f"{tag}{first}", second.replace(second.strip(), f"{tag}{second.strip()}")
    assert web.post("contacts", {"lastname": "One", "emailaddress1": first}).status_code == 204
    refused = web.post("contacts", {"lastname": "Two", "emailaddress1": second}, headers=DETECT)
    assert error(refused) == DUPLICATE


def test_duplicate_detection_applies_to_bulk_actions(web: Api) -> None:
    fresh = f"{uuid.uuid4().hex}@example.com"
    targets = [
        {"@odata.type": LEAD, "lastname": "A", "emailaddress1": fresh},
        {"@odata.type": LEAD, "lastname": "B", "emailaddress1": fresh.upper()},
    ]
    before = len(web.rows("lead"))
    assert error(bulk(web, "leads", "CreateMultiple", targets, **DETECT)) == DUPLICATE
    assert len(web.rows("lead")) == before
    assert bulk(web, "leads", "CreateMultiple", targets).status_code == 200


def qualify(web: Api, lead_id: str, **parameters: Any) -> Any:
    body = {"CreateAccount": True, "CreateContact": True, "CreateOpportunity": True, "Status": 3}
    return web.post(
        f"leads({lead_id})/Microsoft.Dynamics.CRM.QualifyLead",
        {**body, **parameters},
        headers={"Prefer": "return=representation"},
    )


def open_lead(web: Api) -> str:
    return created_id(
        web.post(
            "leads",
            {
                "firstname": "Ada",
                "lastname": "Lovelace",
                "subject": "Analytical engine",
                "companyname": "Engines Ltd",
                "emailaddress1": f"{uuid.uuid4().hex}@example.com",
                "telephone1": "+1 555 0100",
            },
        )
    )


def test_qualify_lead_creates_what_is_asked_and_links_it(web: Api) -> None:
    lead_id = open_lead(web)
    response = qualify(web, lead_id)
    assert response.status_code == 200
    body = response.json()
    assert body["@odata.context"] == (
        f"{web.emulator.api_url}/$metadata#Collection(Microsoft.Dynamics.CRM.crmbaseentity)"
    )
    kinds = [item["@odata.type"] for item in body["value"]]
    assert kinds == [
        "#Microsoft.Dynamics.CRM.account",
        "#Microsoft.Dynamics.CRM.contact",
        "#Microsoft.Dynamics.CRM.opportunity",
    ]
    account_id, contact_id, opportunity_id = (
        body["value"][0]["accountid"],
        body["value"][1]["contactid"],
        body["value"][2]["opportunityid"],
    )
    lead = web.rows("lead")[lead_id]
    assert (lead["statecode"], lead["statuscode"]) == (1, 3)
    assert lead["_qualifyingopportunityid_value"] == opportunity_id
    assert lead["_parentcontactid_value"] is None  # U37
    contact = web.rows("contact")[contact_id]
    assert contact["fullname"] == "Ada Lovelace"
    assert contact["emailaddress1"] == lead["emailaddress1"]
    assert contact["_originatingleadid_value"] == lead_id
    assert contact["_parentcustomerid_value"] == account_id
    assert web.rows("account")[account_id]["name"] == "Engines Ltd"
    opportunity = web.rows("opportunity")[opportunity_id]
    assert opportunity["name"] == "Analytical engine"
    assert opportunity["_originatingleadid_value"] == lead_id
    assert opportunity["_customerid_value"] == account_id
    assert error(qualify(web, lead_id))[:2] == (400, "0x80040203")


def test_qualify_lead_only_creates_what_is_asked(web: Api) -> None:
    lead_id = open_lead(web)
    contact_id = next(iter(web.rows("contact")))
    customer = {"@odata.type": "Microsoft.Dynamics.CRM.contact", "contactid": contact_id}
    response = qualify(
        web, lead_id, CreateAccount=False, CreateContact=False, OpportunityCustomerId=customer
    )
    (item,) = response.json()["value"]
    opportunity = web.rows("opportunity")[item["opportunityid"]]
    assert opportunity["_customerid_value"] == contact_id
    web.config(qualify_links_lead=True)
    other = open_lead(web)
    created = qualify(web, other, CreateOpportunity=False).json()["value"]
    lead = web.rows("lead")[other]
    assert lead["_parentcontactid_value"] == created[1]["contactid"]
    assert lead["_parentaccountid_value"] == created[0]["accountid"]


def test_qualify_lead_refuses_bad_requests_and_changes_nothing(web: Api) -> None:
    lead_id = open_lead(web)
    before = web.admin("GET", "/status")["version"]
    assert error(qualify(web, lead_id, Status=4)) == (
        400,
        "0x80040203",
        "4 is not a valid status code for state code 1.",
    )
    assert error(qualify(web, lead_id, CreateContact=None))[:2] == (400, "0x80048d19")
    assert error(qualify(web, lead_id, Colour="blue"))[2] == (
        "The parameter 'Colour' in the request payload is not a valid parameter for the "
        "operation 'QualifyLead'."
    )
    missing = str(uuid.uuid4())
    assert error(qualify(web, missing))[:2] == (404, "0x80040217")
    assert web.admin("GET", "/status")["version"] == before
    twin = web.rows("lead")[lead_id]["emailaddress1"]
    web.post("contacts", {"lastname": "Twin", "emailaddress1": twin})
    before = web.admin("GET", "/status")["version"]
    duplicate = web.post(
        f"leads({lead_id})/Microsoft.Dynamics.CRM.QualifyLead",
        {"CreateAccount": True, "CreateContact": True, "CreateOpportunity": False},
        headers=DETECT,
    )
    assert error(duplicate) == DUPLICATE
    assert web.admin("GET", "/status")["version"] == before
    assert web.rows("lead")[lead_id]["statecode"] == 0
    assert web.get(f"leads({lead_id})/Microsoft.Dynamics.CRM.QualifyLead").status_code == 404
