"""E-mail activities (§18): the table, its parties and sender, SendEmail, tracking tokens, the
transport and engagement hooks, and interactionforemail."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from emulator.process import EmulatorError
from tests.emulator import batch_wire as bw
from tests.emulator.conftest import Api, created_id, error

ANNOTATIONS = 'odata.include-annotations="*"'


def first(web: Api, table: str, **where: Any) -> str:
    return next(i for i, r in web.rows(table).items() if all(r[k] == v for k, v in where.items()))


@pytest.fixture
def user_id(web: Api) -> str:
    return first(web, "systemuser", isdisabled=False, accessmode=0)


@pytest.fixture
def contact_id(web: Api) -> str:
    return first(web, "contact", statecode=0)


def mail(user_id: str, contact_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "subject": "Your Contoso trial",
        "description": "<p>Hello Ada,</p>",
        "regardingobjectid_contact_email@odata.bind": f"/contacts({contact_id})",
        "email_activity_parties": [
            {
                "partyid_systemuser@odata.bind": f"/systemusers({user_id})",
                "participationtypemask": 1,
            },
            {"partyid_contact@odata.bind": f"/contacts({contact_id})", "participationtypemask": 2},
        ],
        **extra,
    }


@pytest.fixture
def email_id(web: Api, user_id: str, contact_id: str) -> str:
    return created_id(web.post("emails", mail(user_id, contact_id)))


def send(web: Api, email_id: str, body: Any) -> requests.Response:
    return web.post(f"emails({email_id})/Microsoft.Dynamics.CRM.SendEmail", body)


def test_an_email_is_created_as_a_draft_with_its_defaults_and_resolved_sender(
    web: Api, user_id: str, contact_id: str
) -> None:
    response = web.post(
        "emails",
        mail(user_id, contact_id),
        headers={"Prefer": f"return=representation,{ANNOTATIONS}"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["@odata.context"].endswith("$metadata#emails/$entity")
    assert (body["statecode"], body["statuscode"]) == (0, 1)
    assert body["statuscode@OData.Community.Display.V1.FormattedValue"] == "Draft"
    assert body["activitytypecode"] == "email"
    assert body["directioncode"] is True
    assert (body["prioritycode"], body["deliveryprioritycode"]) == (1, 1)
    assert [body[c] for c in ("opencount", "linksclickedcount", "attachmentopencount")] == [0, 0, 0]
    assert (body["replycount"], body["lastopenedtime"], body["senton"]) == (0, None, None)
    assert body["_emailsender_value"] == user_id
    assert body["_emailsender_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "systemuser"
    assert body["_regardingobjectid_value"] == contact_id
    assert (
        body["_regardingobjectid_value@Microsoft.Dynamics.CRM.associatednavigationproperty"]
        == "regardingobjectid_contact_email"
    )
    parties = web.get(
        f"emails({body['activityid']})?$expand=email_activity_parties("
        "$select=participationtypemask,_partyid_value,addressused)"
    ).json()["email_activity_parties"]
    assert sorted((p["participationtypemask"], p["_partyid_value"]) for p in parties) == [
        (1, user_id),
        (2, contact_id),
    ]


def test_email_columns_have_their_lengths_and_read_only_columns_are_ignored(
    web: Api, user_id: str, contact_id: str
) -> None:
    long = web.post("emails", {"subject": "x" * 801})
    assert error(long) == (
        400,
        "0x80044331",
        "A validation error occurred.  The length of the 'subject' attribute of the 'email' "
        "entity exceeded the maximum allowed length of '800'.",
    )
    email_id = created_id(
        web.post(
            "emails",
            mail(
                user_id,
                contact_id,
                subject="x" * 800,
                description="<p>" + "y" * 100_000 + "</p>",
                delayedemailsendtime="2030-01-01T09:00:00Z",
                trackingtoken="CRM:0001234",
                followemailuserpreference=True,
                readreceiptrequested=True,
                senton="2020-01-01T00:00:00Z",
                replycount=7,
                isemailfollowed=True,
                **{"emailsender_contact@odata.bind": f"/contacts({contact_id})"},
            ),
        )
    )
    row = web.rows("email")[email_id]
    assert row["delayedemailsendtime"] == "2030-01-01T09:00:00Z"
    assert (row["trackingtoken"], row["followemailuserpreference"]) == ("CRM:0001234", True)
    assert (row["senton"], row["replycount"], row["isemailfollowed"]) == (None, 0, False)
    assert row["_emailsender_value"] == user_id


def test_regarding_binds_take_the_email_names_and_refuse_the_inherited_ones(
    web: Api, user_id: str
) -> None:
    lead_id = first(web, "lead", statecode=0)
    account_id = next(iter(web.rows("account")))
    for table, target in (("lead", lead_id), ("account", account_id)):
        email_id = created_id(
            web.post(
                "emails",
                {
                    "subject": "Regarding",
                    f"regardingobjectid_{table}_email@odata.bind": f"/{table}s({target})",
                },
            )
        )
        assert web.rows("email")[email_id]["_regardingobjectid_value"] == target
        collection = web.get(f"{table}s({target})/{table.capitalize()}_Emails?$select=subject")
        assert [e["activityid"] for e in collection.json()["value"]] == [email_id]
    inherited = web.post(
        "emails", {"subject": "x", "regardingobjectid_lead@odata.bind": f"/leads({lead_id})"}
    )
    assert error(inherited) == (
        400,
        "0x80048d19",
        "The navigation property 'regardingobjectid_lead' is inherited from "
        "'Microsoft.Dynamics.CRM.activitypointer' and cannot be bound on "
        "'Microsoft.Dynamics.CRM.email': use 'regardingobjectid_lead_email'.",
    )


@pytest.mark.parametrize(
    ("party", "mask", "message"),
    [
        (
            {"partyid_contact@odata.bind": "/contacts({contact})"},
            1,
            "A contact cannot take the participation type 1 on an activity of type 'email'.",
        ),
        (
            {"addressused": "someone@example.com"},
            1,
            "An activity party with only an addressused (unresolved) is not allowed here.",
        ),
        (
            {"partyid_contact@odata.bind": "/contacts({contact})"},
            5,
            "The participation type 5 is not valid for an activity of type 'email'.",
        ),
    ],
)
def test_email_parties_must_fit_their_role(
    web: Api, contact_id: str, party: dict[str, str], mask: int, message: str
) -> None:
    bound = {k: v.format(contact=contact_id) for k, v in party.items()}
    response = web.post(
        "emails",
        {"subject": "Roles", "email_activity_parties": [{**bound, "participationtypemask": mask}]},
    )
    assert error(response) == (400, "0x80040203", message)
    assert web.rows("email") == {}


def test_queues_leads_and_bare_addresses_can_take_their_roles(web: Api) -> None:
    queue_id = next(iter(web.rows("queue")))
    lead_id = first(web, "lead", statecode=0)
    email_id = created_id(
        web.post(
            "emails",
            {
                "subject": "From the queue",
                "email_activity_parties": [
                    {
                        "partyid_queue@odata.bind": f"/queues({queue_id})",
                        "participationtypemask": 1,
                    },
                    {"partyid_lead@odata.bind": f"/leads({lead_id})", "participationtypemask": 2},
                    {"addressused": "cc@example.com", "participationtypemask": 3},
                    {
                        "partyid_queue@odata.bind": f"/queues({queue_id})",
                        "participationtypemask": 4,
                    },
                ],
            },
        )
    )
    row = web.rows("email")[email_id]
    assert row["_emailsender_value"] == queue_id
    parties = web.get(
        f"emails({email_id})/email_activity_parties?$select=participationtypemask,_partyid_value",
        ANNOTATIONS,
    ).json()["value"]
    kinds = {
        p["participationtypemask"]: p.get("_partyid_value@Microsoft.Dynamics.CRM.lookuplogicalname")
        for p in parties
    }
    assert kinds == {1: "queue", 2: "lead", 3: None, 4: "queue"}
    two_senders = web.patch(
        f"emails({email_id})",
        {
            "email_activity_parties": [
                {"partyid_queue@odata.bind": f"/queues({queue_id})", "participationtypemask": 1},
                {"partyid_queue@odata.bind": f"/queues({queue_id})", "participationtypemask": 1},
            ]
        },
    )
    assert error(two_senders) == (
        400,
        "0x80040203",
        "An e-mail has one sender: only one party can be its From.",
    )


def test_put_on_email_activity_parties_replaces_them_and_bumps_the_email(
    web: Api, email_id: str, user_id: str
) -> None:
    before = web.rows("email")[email_id]["versionnumber"]
    response = web.put(
        f"emails({email_id})/email_activity_parties",
        {
            "value": [
                {
                    "partyid_systemuser@odata.bind": f"/systemusers({user_id})",
                    "participationtypemask": 1,
                },
                {"addressused": "ada@example.com", "participationtypemask": 2},
            ]
        },
    )
    assert response.status_code == 204, response.text
    parties = [p for p in web.rows("activityparty").values() if p["_activityid_value"] == email_id]
    assert sorted((p["participationtypemask"], p["addressused"]) for p in parties) == [
        (1, None),
        (2, "ada@example.com"),
    ]
    assert web.rows("email")[email_id]["versionnumber"] > before
    assert error(web.put(f"emails({email_id})/email_activity_parties", {"rows": []}))[:2] == (
        400,
        "0x80048d19",
    )


def test_send_email_with_issue_send_false_records_it_as_sent(web: Api, email_id: str) -> None:
    response = send(web, email_id, {"IssueSend": False})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "@odata.context": f"{web.emulator.api_url}/$metadata#Microsoft.Dynamics.CRM.SendEmailResponse",
        "Subject": "Your Contoso trial",
    }
    row = web.rows("email")[email_id]
    assert (row["statecode"], row["statuscode"]) == (1, 3)
    assert row["senton"] == row["modifiedon"]


def test_send_email_with_issue_send_true_queues_it_until_the_transport_decides(
    web: Api, email_id: str
) -> None:
    assert send(web, email_id, {"IssueSend": True, "TrackingToken": "CRM:0000042"}).ok
    row = web.rows("email")[email_id]
    assert (row["statecode"], row["statuscode"], row["senton"]) == (1, 6, None)
    assert row["trackingtoken"] == "CRM:0000042"
    moved = web.admin("POST", f"/emails/{email_id}/transport", {"outcome": "sending"})
    assert (moved["row"]["statecode"], moved["row"]["statuscode"]) == (1, 7)
    sent = web.admin("POST", f"/emails/{email_id}/transport", {"outcome": "sent"})["row"]
    assert (sent["statecode"], sent["statuscode"]) == (1, 3)
    assert sent["senton"] is not None
    assert sent["versionnumber"] > moved["row"]["versionnumber"]


def test_the_transport_can_fail_a_queued_mail_which_opens_it_again(web: Api, email_id: str) -> None:
    send(web, email_id, {"IssueSend": True})
    failed = web.admin("POST", f"/emails/{email_id}/transport", {"outcome": "failed"})["row"]
    assert (failed["statecode"], failed["statuscode"]) == (0, 8)
    assert web.patch(f"emails({email_id})", {"subject": "Fixed"}).status_code == 204
    with pytest.raises(EmulatorError, match="409"):
        web.admin("POST", f"/emails/{email_id}/transport", {"outcome": "sent"})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"email_activity_parties": []},
            "The e-mail must have a sender.",
        ),
        (
            {"email_activity_parties": "sender only"},
            "The e-mail must have at least one recipient before it can be sent.",
        ),
        ({"directioncode": False}, "An incoming e-mail cannot be sent."),
    ],
)
def test_send_email_refuses_a_mail_without_sender_recipient_or_outgoing_direction(
    web: Api, email_id: str, user_id: str, change: dict[str, Any], message: str
) -> None:
    if change.get("email_activity_parties") == "sender only":
        change = {
            "email_activity_parties": [
                {
                    "partyid_systemuser@odata.bind": f"/systemusers({user_id})",
                    "participationtypemask": 1,
                }
            ]
        }
    assert web.patch(f"emails({email_id})", change).status_code == 204
    assert error(send(web, email_id, {"IssueSend": False})) == (400, "0x80040203", message)
    row = web.rows("email")[email_id]
    assert (row["statecode"], row["statuscode"]) == (0, 1)


def test_send_email_refuses_a_mail_that_is_not_a_draft(web: Api, email_id: str) -> None:
    assert send(web, email_id, {"IssueSend": False}).ok
    assert error(send(web, email_id, {"IssueSend": False})) == (
        400,
        "0x80040203",
        "Only an e-mail in Draft status can be sent: this one has status code 3.",
    )


def test_send_email_checks_its_parameters_and_the_record(web: Api, email_id: str) -> None:
    assert error(send(web, email_id, {})) == (
        400,
        "0x80048d19",
        "The parameter 'IssueSend' of the operation 'SendEmail' is required and must be of type "
        "'Edm.Boolean'.",
    )
    assert error(send(web, email_id, {"IssueSend": "yes"}))[2] == (
        "The parameter 'IssueSend' of the operation 'SendEmail' must be of type 'Edm.Boolean'."
    )
    assert error(send(web, email_id, {"IssueSend": True, "Regarding": 1}))[2] == (
        "The parameter 'Regarding' in the request payload is not a valid parameter for the "
        "operation 'SendEmail'."
    )
    assert error(send(web, email_id, {"IssueSend": True, "TrackingToken": "x" * 51}))[:2] == (
        400,
        "0x80044331",
    )
    missing = "00000000-0000-0000-0000-0000000000e1"
    assert error(send(web, missing, {"IssueSend": True})) == (
        404,
        "0x80040217",
        f"email With Id = {missing} Does Not Exist",
    )
    assert web.get(f"emails({email_id})/Microsoft.Dynamics.CRM.SendEmail").status_code == 404
    assert web.rows("email")[email_id]["statuscode"] == 1


def test_send_email_can_require_an_approved_sender(web: Api, contact_id: str) -> None:
    pending = first(web, "systemuser", emailrouteraccessapproval=2)
    email_id = created_id(web.post("emails", mail(pending, contact_id)))
    assert send(web, email_id, {"IssueSend": True}).ok
    web.config(send_email_requires_approval=True)
    again = created_id(web.post("emails", mail(pending, contact_id)))
    assert error(send(web, again, {"IssueSend": True})) == (
        400,
        "0x80040203",
        f"The e-mail address of the sender (systemuser {pending}) is not approved: e-mail from "
        "unapproved users and queues is not processed.",
    )
    approved = first(web, "systemuser", emailrouteraccessapproval=1, isdisabled=False)
    third = created_id(web.post("emails", mail(approved, contact_id)))
    assert send(web, third, {"IssueSend": True}).ok


def test_sent_and_canceled_emails_are_read_only(web: Api, email_id: str, user_id: str) -> None:
    send(web, email_id, {"IssueSend": False})
    assert error(web.patch(f"emails({email_id})", {"subject": "Changed"})) == (
        400,
        "0x80043b09",
        "The object cannot be updated because it is read-only.",
    )
    other = created_id(web.post("emails", {"subject": "Cancel me"}))
    assert web.patch(f"emails({other})", {"statecode": 2, "statuscode": 5}).status_code == 204
    assert error(web.patch(f"emails({other})", {"subject": "x"}))[1] == "0x80043b09"
    assert error(web.patch(f"emails({other})", {"statecode": 1, "statuscode": 8})) == (
        400,
        "0x80040203",
        "8 is not a valid status code for state code 1.",
    )


def test_tracking_tokens_are_crm_and_seven_digits_and_never_repeat(web: Api) -> None:
    first_token = web.post("GetTrackingTokenEmail", {"Subject": "Your Contoso trial"})
    assert first_token.status_code == 200
    body = first_token.json()
    assert body["@odata.context"] == (
        f"{web.emulator.api_url}/$metadata#Microsoft.Dynamics.CRM.GetTrackingTokenEmailResponse"
    )
    second = web.post("GetTrackingTokenEmail").json()["TrackingToken"]
    for token in (body["TrackingToken"], second):
        assert token.startswith("CRM:")
        assert len(token) == 11
        assert token[4:].isdigit()
    assert second != body["TrackingToken"]
    assert web.get("GetTrackingTokenEmail").status_code == 404
    assert error(web.post("GetTrackingTokenEmail", {"Topic": "x"}))[:2] == (400, "0x80048d19")


def test_send_email_and_tracking_tokens_work_inside_a_batch(web: Api, email_id: str) -> None:
    boundary = "batch_mail"
    payload = bw.body(
        boundary,
        bw.op("POST", "/api/data/v9.2/GetTrackingTokenEmail", {"Subject": "x"}),
        bw.changeset(
            "changeset_mail",
            bw.op(
                "POST",
                f"/api/data/v9.2/emails({email_id})/Microsoft.Dynamics.CRM.SendEmail",
                {"IssueSend": False},
                content_id="1",
            ),
        ),
    )
    response = web.session.post(
        web.url("$batch"),
        data=payload,
        headers={"Content-Type": f"multipart/mixed; boundary={boundary}"},
        timeout=30,
    )
    token, changes = bw.parse(response)
    assert token.status == 200
    assert token.json()["TrackingToken"].startswith("CRM:")
    assert changes.changeset[0].status == 200
    assert changes.changeset[0].json()["Subject"] == "Your Contoso trial"
    assert web.rows("email")[email_id]["statuscode"] == 3


def test_engagement_hook_counts_opens_clicks_attachment_views_and_replies(
    web: Api, email_id: str, contact_id: str
) -> None:
    send(web, email_id, {"IssueSend": False})
    before = web.rows("email")[email_id]["versionnumber"]
    result = web.admin(
        "POST",
        f"/emails/{email_id}/engagement",
        {"opens": 2, "clicks": 1, "attachment_opens": 1, "replies": 1, "interactions": True},
    )
    row = result["row"]
    assert (row["opencount"], row["linksclickedcount"], row["attachmentopencount"]) == (2, 1, 1)
    assert row["replycount"] == 1
    assert row["lastopenedtime"] == row["modifiedon"]
    assert row["versionnumber"] > before
    assert len(result["interactions"]) == 5
    address = web.rows("contact")[contact_id]["emailaddress1"]
    interactions = web.get(
        f"interactionforemails?$filter=emailactivityid eq {email_id}"
        "&$select=interactiontype,emailaddress,emailinteractiontime&$orderby=interactiontype"
    ).json()["value"]
    assert [i["interactiontype"] for i in interactions] == [0, 0, 1, 2, 3]
    assert {i["emailaddress"] for i in interactions} == {address}
    again = web.admin("POST", f"/emails/{email_id}/engagement", {"clicks": 2})["row"]
    assert (again["opencount"], again["linksclickedcount"]) == (2, 3)
    assert again["lastopenedtime"] == row["lastopenedtime"]
    assert len(web.rows("interactionforemail")) == 5


def test_interactionforemail_serves_retrieve_multiple_and_delete_only(
    web: Api, email_id: str
) -> None:
    created = web.admin(
        "POST", f"/emails/{email_id}/engagement", {"opens": 1, "interactions": True}
    )["interactions"]
    (interaction,) = created
    listed = web.get("interactionforemails?$select=name,interactiontype", ANNOTATIONS).json()
    assert listed["value"][0]["interactiontype@OData.Community.Display.V1.FormattedValue"] == (
        "EmailOpen"
    )
    for response, method in (
        (web.get(f"interactionforemails({interaction})"), "Retrieve"),
        (web.post("interactionforemails", {"name": "x"}), "Create"),
        (web.patch(f"interactionforemails({interaction})", {"name": "x"}), "Update"),
    ):
        assert error(response) == (
            400,
            "0x80040315",
            f"The '{method}' method does not support entities of type 'interactionforemail'.",
        )
    assert web.delete(f"interactionforemails({interaction})").status_code == 204
    assert web.rows("interactionforemail") == {}


def test_hooks_refuse_unknown_mails_and_bad_bodies(web: Api, email_id: str) -> None:
    missing = "00000000-0000-0000-0000-0000000000e9"
    with pytest.raises(EmulatorError, match="404"):
        web.admin("POST", f"/emails/{missing}/engagement", {"opens": 1})
    with pytest.raises(EmulatorError, match="400"):
        web.admin("POST", f"/emails/{email_id}/engagement", {"views": 1})
    with pytest.raises(EmulatorError, match="400"):
        web.admin("POST", f"/emails/{email_id}/transport", {"outcome": "bounced"})
    with pytest.raises(EmulatorError, match="409"):
        web.admin("POST", f"/emails/{email_id}/transport", {"outcome": "sent"})
