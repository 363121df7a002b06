"""`$batch`: multipart framing, change sets, Content-ID references, errors and limits (§9)."""

from __future__ import annotations

import uuid
from typing import Any

import requests

from tests.emulator import batch_wire as bw
from tests.emulator.conftest import Api, error

BATCH = "batch_22975cad-7f57-410d-be15-6363209367ea"
CHANGESET = "changeset_246e6bfe-89a4-4c77-b293-7a433f082e8a"
API = "/api/data/v9.2"


def send(web: Api, payload: bytes, prefer: str | None = None) -> requests.Response:
    headers = {"Content-Type": f'multipart/mixed; boundary="{BATCH}"'}
    if prefer:
        headers["Prefer"] = prefer
    return web.session.post(web.url("$batch"), data=payload, headers=headers, timeout=60)


def version(web: Api) -> int:
    return int(web.admin("GET", "/status")["version"])


def entity_id(url: str) -> str:
    return url.rsplit("(", 1)[1].rstrip(")")


def test_the_reference_example_runs_a_change_set_then_a_get(web: Api) -> None:
    account_id = next(iter(web.rows("account")))
    task = {"regardingobjectid_account_task@odata.bind": f"accounts({account_id})"}
    payload = bw.body(
        BATCH,
        bw.changeset(
            CHANGESET,
            bw.op("POST", f"{API}/tasks", {"subject": "Task 1 in batch", **task}, content_id="1"),
            bw.op("POST", f"{API}/tasks", {"subject": "Task 2 in batch", **task}, content_id="2"),
        ),
        bw.op("GET", f"{API}/accounts({account_id})/Account_Tasks?$select=subject"),
    )
    response = send(web, payload)
    assert response.status_code == 200
    assert response.headers["OData-Version"] == "4.0"
    first, listing = bw.parse(response)
    assert first.mime["Content-Type"].startswith("multipart/mixed; boundary=changesetresponse_")
    created = first.changeset
    assert [(p.status, p.mime["Content-ID"]) for p in created] == [(204, "1"), (204, "2")]
    for part in created:
        assert part.headers["OData-Version"] == "4.0"
        assert part.headers["Location"] == part.headers["OData-EntityId"]
        assert part.headers["Location"].startswith(f"{web.emulator.api_url}/tasks(")
        assert list(part.headers)[:2] == ["OData-Version", "Location"]
        assert part.body == ""
    ids = [entity_id(p.headers["OData-EntityId"]) for p in created]
    assert listing.status == 200
    assert "Content-ID" not in listing.mime
    assert (
        listing.headers["Content-Type"]
        == "application/json; odata.metadata=minimal; odata.streaming=true"
    )
    assert listing.json()["@odata.context"].endswith("$metadata#tasks(subject)")
    assert sorted(t["activityid"] for t in listing.json()["value"]) == sorted(ids)
    rows = web.rows("task")
    assert {rows[i]["subject"] for i in ids} == {"Task 1 in batch", "Task 2 in batch"}
    assert {rows[i]["_regardingobjectid_value"] for i in ids} == {account_id}
    text = response.content.decode()
    assert "\r\n\r\n\r\n--changesetresponse_" in text  # blank line after a 204's headers
    assert "\n" not in text.replace("\r\n", "")


def test_content_id_references_work_in_urls_and_bodies(web: Api) -> None:
    payload = bw.body(
        BATCH,
        bw.changeset(
            CHANGESET,
            bw.op("POST", f"{API}/contacts", {"firstname": "Ada", "lastname": "L"}, content_id="1"),
            bw.op("POST", "accounts", {"name": "Analytical Engines"}, content_id="2"),
            bw.op("PATCH", "$1", {"jobtitle": "Engineer"}, content_id="3"),
            bw.op("PUT", "$1/lastname", {"value": "Lovelace"}),
            bw.op("PUT", "$2/primarycontactid/$ref", {"@odata.id": "$1"}),
            bw.op(
                "POST",
                f"{web.emulator.api_url}/leads",
                {"lastname": "Byron", "parentcontactid@odata.bind": "$1",
                 "parentaccountid@odata.bind": "$2"},
            ),
        ),
    )  # fmt: skip
    response = send(web, payload)
    assert response.status_code == 200, response.text
    (changeset,) = bw.parse(response)
    statuses = [p.status for p in changeset.changeset]
    assert statuses == [204] * 6
    patched = changeset.changeset[2]
    assert patched.headers["OData-EntityId"] == changeset.changeset[0].headers["OData-EntityId"]
    assert "Location" not in changeset.changeset[3].headers
    contact_id = entity_id(changeset.changeset[0].headers["OData-EntityId"])
    account_id = entity_id(changeset.changeset[1].headers["OData-EntityId"])
    contact = web.rows("contact")[contact_id]
    assert (contact["fullname"], contact["jobtitle"]) == ("Ada Lovelace", "Engineer")
    assert web.rows("account")[account_id]["_primarycontactid_value"] == contact_id
    lead_id = entity_id(changeset.changeset[5].headers["OData-EntityId"])
    lead = web.rows("lead")[lead_id]
    assert (lead["_parentcontactid_value"], lead["_parentaccountid_value"]) == (
        contact_id,
        account_id,
    )


def test_a_change_set_whose_third_operation_fails_leaves_nothing_behind(web: Api) -> None:
    before = version(web)
    leads = web.rows("lead")
    lead_id = next(iter(leads))
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    payload = bw.body(
        BATCH,
        bw.changeset(
            CHANGESET,
            bw.op("POST", f"{API}/tasks", {"activityid": first, "subject": "One"}, content_id="1"),
            bw.op("PATCH", f"{API}/leads({lead_id})", {"jobtitle": "Changed"}, content_id="2"),
            bw.op("POST", f"{API}/tasks", {"subject": "x" * 201}, content_id="3"),
            bw.op(
                "POST", f"{API}/tasks", {"activityid": second, "subject": "Four"}, content_id="4"
            ),
        ),
    )
    response = send(web, payload)
    assert response.status_code == 400
    (part,) = bw.parse(response)
    assert part.changeset == []
    assert "Content-ID" not in part.mime
    assert part.status == 400
    assert list(part.headers)[:3] == ["REQ_ID", "Content-Type", "OData-Version"]
    assert part.headers["Content-Type"] == "application/json; odata.metadata=minimal"
    assert part.json() == {
        "error": {
            "code": "0x80044331",
            "message": "A validation error occurred.  The length of the 'subject' attribute of "
            "the 'task' entity exceeded the maximum allowed length of '200'.",
        }
    }
    assert web.rows("task") == {}
    assert web.rows("lead")[lead_id] == leads[lead_id]
    assert version(web) == before
    assert web.admin("GET", "/tables/task/deleted") == {"deleted": []}


def test_without_continue_on_error_the_batch_stops_at_the_first_failure(web: Api) -> None:
    kept, never = str(uuid.uuid4()), str(uuid.uuid4())
    missing = str(uuid.uuid4())
    payload = bw.body(
        BATCH,
        bw.op("POST", f"{API}/leads", {"leadid": kept, "lastname": "Kept"}),
        bw.op("PATCH", f"{API}/leads({missing})", {"lastname": "x"}, headers={"If-Match": "*"}),
        bw.op("POST", f"{API}/leads", {"leadid": never, "lastname": "Never"}),
    )
    response = send(web, payload)
    assert response.status_code == 400
    (part,) = bw.parse(response)
    assert part.status == 404
    assert part.json()["error"] == {
        "code": "0x80040217",
        "message": f"lead With Id = {missing} Does Not Exist",
    }
    leads = web.rows("lead")
    assert kept in leads  # U26: parts before the failure stay committed
    assert never not in leads
    web.config(batch_error_keeps_earlier_responses=True)
    again = send(web, bw.body(BATCH, bw.op("GET", "WhoAmI"), bw.op("GET", "Lead")))
    assert again.status_code == 400
    assert [p.status for p in bw.parse(again)] == [200, 404]


def test_with_continue_on_error_every_part_is_answered(web: Api) -> None:
    made = str(uuid.uuid4())
    payload = bw.body(
        BATCH,
        bw.op("POST", f"{API}/leads", {"lastname": "x", "foo": 1}, content_id="a"),
        bw.changeset(
            CHANGESET,
            bw.op("POST", f"{API}/contacts", {"lastname": "Rolled back"}, content_id="1"),
            bw.op("POST", f"{API}/contacts", {"lastname": "y" * 51}, content_id="2"),
        ),
        bw.op("POST", f"{API}/leads", {"leadid": made, "lastname": "Made"}),
        bw.op("GET", f"{API}/leads({made})?$select=lastname"),
    )
    contacts = web.rows("contact")
    response = send(web, payload, prefer="odata.continue-on-error")
    assert response.status_code == 200
    assert response.headers["Preference-Applied"] == "odata.continue-on-error"
    invalid, changeset, created, read = bw.parse(response)
    assert (invalid.status, invalid.mime["Content-ID"]) == (400, "a")
    assert invalid.json()["error"]["message"] == (
        "Invalid property 'foo' was found in entity 'Microsoft.Dynamics.CRM.lead'"
    )
    assert changeset.changeset == []  # U27: the failed change set is one error part
    assert (changeset.status, "Content-ID" in changeset.mime) == (400, False)
    assert changeset.json()["error"]["code"] == "0x80044331"
    assert created.status == 204
    assert read.status == 200
    assert read.json()["lastname"] == "Made"
    assert web.rows("contact") == contacts
    web.config(changeset_error_in_changeset=True)
    again = send(
        web,
        bw.body(
            BATCH,
            bw.changeset(
                CHANGESET,
                bw.op("POST", f"{API}/contacts", {"lastname": "ok"}, content_id="1"),
                bw.op("POST", f"{API}/contacts", {"lastname": "y" * 51}, content_id="2"),
            ),
        ),
        prefer="odata.continue-on-error",
    )
    (wrapped,) = bw.parse(again)
    assert [(p.status, p.mime["Content-ID"]) for p in wrapped.changeset] == [(400, "2")]


def test_lf_only_bodies_ending_with_two_line_ends_run_like_crlf_ones(web: Api) -> None:
    crlf = bw.body(
        BATCH,
        bw.changeset(
            CHANGESET,
            bw.op("POST", f"{API}/leads", {"lastname": "LF one"}, content_id="1"),
            bw.op("PATCH", "$1", {"firstname": "Linus"}, content_id="2"),
        ),
        bw.op("GET", f"{API}/leads?$select=fullname&$filter=lastname%20eq%20'LF%20one'"),
    )
    response = send(web, crlf.replace(b"\r\n", b"\n") + b"\n")
    assert response.status_code == 200, response.text
    changeset, read = bw.parse(response)
    assert [p.status for p in changeset.changeset] == [204, 204]
    assert [row["fullname"] for row in read.json()["value"]] == ["Linus LF one"]


def test_a_body_whose_last_line_has_no_line_end_is_refused_in_a_batch_response(web: Api) -> None:
    before = version(web)
    payload = bw.body(BATCH, bw.op("POST", f"{API}/accounts", {"name": "Never"}))
    for unreadable in (payload.rstrip(b"\r\n"), payload.replace(b"\r\n", b"\n")):
        response = send(web, unreadable)
        assert response.status_code == 400
        (part,) = bw.parse(response)
        assert part.status == 400
        assert part.headers["Content-Type"] == "application/json; odata.metadata=minimal"
        assert part.json() == {
            "error": {
                "code": "0x80048d19",
                "message": "Error identified in Payload provided by the user for Entity "
                ":'accounts', For more information on this error please follow this help link "
                "https://go.microsoft.com/fwlink/?linkid=2195293 ---->  InnerException : "
                "System.ArgumentException: Stream was not readable.",
            }
        }
    assert version(web) == before


def test_malformed_batches_are_refused_before_anything_runs(web: Api) -> None:
    before = version(web)
    post = bw.op("POST", f"{API}/leads", {"lastname": "Never"})
    get_in_changeset = bw.body(BATCH, bw.changeset(CHANGESET, post, bw.op("GET", f"{API}/leads")))
    assert error(send(web, get_in_changeset)) == (
        400,
        "0x80048d19",
        "An invalid HTTP method 'GET' was detected for a request in a change set. Requests in "
        "change sets only support the HTTP methods 'POST', 'PUT', 'DELETE', and 'PATCH'.",
    )
    broken = bw.body(BATCH, post, "Content-Type: application/http\r\n\r\nPOST leads")
    assert error(send(web, broken))[:2] == (400, "0x80048d19")
    no_boundary = web.session.post(
        web.url("$batch"), data=b"{}", headers={"Content-Type": "application/json"}, timeout=30
    )
    assert error(no_boundary)[:2] == (400, "0x80048d19")
    unterminated = bw.body(BATCH, post)[: -len(f"--{BATCH}--\r\n")]
    assert error(send(web, unterminated))[:2] == (400, "0x80048d19")
    assert version(web) == before
    assert web.get("$batch").status_code == 405


def test_at_most_1000_operations(web: Api) -> None:
    many = [bw.op("GET", "WhoAmI") for _ in range(1001)]
    assert error(send(web, bw.body(BATCH, *many))) == (
        400,
        "0x80048d19",
        "The current batch message contains too many parts. Only batch messages with a maximum "
        "number of '1000' query operations, including changeset operations, are allowed.",
    )
    in_changeset = bw.body(BATCH, bw.changeset(CHANGESET, *[bw.op("DELETE", "x")] * 1001))
    assert error(send(web, in_changeset))[2] == (
        "The current change set contains too many operations. A maximum number of '1000' "
        "operations are allowed in a change set."
    )
    response = send(web, bw.body(BATCH, *many[:1000]))
    assert response.status_code == 200
    assert len(bw.parse(response)) == 1000


def test_references_must_be_declared_first(web: Api) -> None:
    payload = bw.body(
        BATCH,
        bw.changeset(
            CHANGESET,
            bw.op("POST", f"{API}/leads", {"lastname": "x", "parentcontactid@odata.bind": "$1"}),
            bw.op("POST", f"{API}/contacts", {"lastname": "y"}, content_id="1"),
        ),
    )
    response = send(web, payload)
    assert response.status_code == 400
    (part,) = bw.parse(response)
    assert part.json()["error"]["message"] == (
        "Content-ID Reference: '$1' does not exist in the batch context."
    )
    url_reference = send(web, bw.body(BATCH, bw.op("PATCH", "$9", {"lastname": "z"})))
    assert bw.parse(url_reference)[0].json()["error"]["message"] == (
        "Content-ID Reference: '$9' does not exist in the batch context."
    )


def test_inner_requests_keep_their_own_headers(web: Api) -> None:
    existing: dict[str, Any] = next(r for r in web.rows("lead").values() if r["emailaddress1"])
    payload = bw.body(
        BATCH,
        bw.op(
            "POST",
            f"{API}/leads?$select=lastname",
            {"lastname": "Shown"},
            headers={"Prefer": "return=representation"},
        ),
        bw.op(
            "POST",
            f"{API}/leads",
            {"lastname": "Dup", "emailaddress1": existing["emailaddress1"]},
            headers={"MSCRM.SuppressDuplicateDetection": "false"},
        ),
    )
    response = send(web, payload, prefer="odata.continue-on-error")
    shown, duplicate = bw.parse(response)
    assert shown.status == 201
    assert shown.json()["lastname"] == "Shown"
    assert shown.headers["Preference-Applied"] == "return=representation"
    assert duplicate.status == 500
    assert duplicate.json()["error"]["code"] == "0x80040333"
