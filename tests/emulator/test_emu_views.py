"""System views (`savedquery`) and personal views (`userquery`): writes, publishing, execution
with `?savedQuery=` / `?userQuery=` (journeys §22)."""

from __future__ import annotations

import uuid
from typing import Any

from tests.emulator.conftest import Api, created_id, error

VIEW_ID = "00000000-0000-0000-0000-0000000000a9"
SALES_CONTACTS = """<fetch version="1.0" output-format="xml-platform" mapping="logical" distinct="false">
  <entity name="contact">
    <attribute name="fullname" /><attribute name="emailaddress1" /><attribute name="jobtitle" />
    <attribute name="contactid" />
    <order attribute="fullname" descending="false" />
    <filter type="and">
      <condition attribute="statecode" operator="eq" value="0" />
      <filter type="or">
        <condition attribute="marketingonly" operator="eq" value="0" />
        <condition attribute="marketingonly" operator="null" />
      </filter>
    </filter>
  </entity>
</fetch>"""
LAYOUT = '<grid name="resultset" object="2" jump="fullname" select="1" icon="1" preview="1"><row name="result" id="contactid"><cell name="fullname" width="300" /></row></grid>'


def view_id(web: Api, name: str) -> str:
    found = web.get(f"savedqueries?$select=name&$filter=name eq '{name}'").json()["value"]
    assert len(found) == 1, found
    return found[0]["savedqueryid"]  # type: ignore[no-any-return]


def values(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    return response.json()["value"]  # type: ignore[no-any-return]


def test_seeded_system_views_run_with_saved_query(web: Api) -> None:
    listed = values(
        web.get(
            "savedqueries?$select=name,querytype,componentstate&$filter=returnedtypecode eq 'contact'"
        )
    )
    assert {v["name"] for v in listed} >= {"Active Contacts", "My Active Contacts"}
    assert {(v["querytype"], v["componentstate"]) for v in listed} == {(0, 0)}
    contacts = web.rows("contact")
    active = values(web.get(f"contacts?savedQuery={view_id(web, 'Active Contacts')}"))
    assert {row["contactid"] for row in active} == {
        k for k, r in contacts.items() if r["statecode"] == 0
    }
    for row in active:
        stored = contacts[row["contactid"]]
        assert set(row) - {"@odata.etag"} == {
            c
            for c in ("fullname", "emailaddress1", "_parentcustomerid_value", "contactid")
            if stored[c] is not None
        }
    mine = created_id(web.post("contacts", {"lastname": "Mine"}))
    my_view = view_id(web, "My Active Contacts")
    assert [row["contactid"] for row in values(web.get(f"contacts?savedQuery={my_view}"))] == [mine]


def test_a_view_runs_on_a_related_collection(web: Api) -> None:
    contacts = web.rows("contact")
    account = next(
        r["_parentcustomerid_value"]
        for r in contacts.values()
        if r["_parentcustomerid_value"] and r["statecode"] == 0
    )
    expected = {
        k
        for k, r in contacts.items()
        if r["_parentcustomerid_value"] == account and r["statecode"] == 0
    }
    active = view_id(web, "Active Contacts")
    found = values(web.get(f"accounts({account})/contact_customer_accounts?savedQuery={active}"))
    assert {row["contactid"] for row in found} == expected


def test_public_view_is_created_with_its_id_and_published_after_updates(web: Api) -> None:
    body = {
        "savedqueryid": VIEW_ID,
        "name": "Active sales contacts",
        "description": "Active contacts that are not marketing-only",
        "returnedtypecode": "contact",
        "querytype": 0,
        "fetchxml": SALES_CONTACTS,
        "layoutxml": LAYOUT,
    }
    assert created_id(web.post("savedqueries", body)) == VIEW_ID
    assert web.get(f"savedqueries({VIEW_ID})?$select=componentstate").json()["componentstate"] == 0
    contacts = web.rows("contact")
    expected = {k for k, r in contacts.items() if r["statecode"] == 0 and not r["marketingonly"]}
    assert {
        row["contactid"] for row in values(web.get(f"contacts?savedQuery={VIEW_ID}"))
    } == expected
    changed = web.patch(
        f"savedqueries({VIEW_ID})", {"fetchxml": SALES_CONTACTS.replace("jobtitle", "telephone1")}
    )
    assert changed.status_code == 204
    assert web.get(f"savedqueries({VIEW_ID})?$select=componentstate").json()["componentstate"] == 1
    other = web.post(
        "PublishXml",
        {
            "ParameterXml": "<importexportxml><entities><entity>lead</entity></entities></importexportxml>"
        },
    )
    assert other.status_code == 204
    assert web.get(f"savedqueries({VIEW_ID})?$select=componentstate").json()["componentstate"] == 1
    published = web.post(
        "PublishXml",
        {
            "ParameterXml": "<importexportxml><entities><entity>contact</entity></entities></importexportxml>"
        },
    )
    assert published.status_code == 204
    assert web.get(f"savedqueries({VIEW_ID})?$select=componentstate").json()["componentstate"] == 0
    web.patch(f"savedqueries({VIEW_ID})", {"layoutxml": LAYOUT})
    assert web.post("PublishAllXml").status_code == 204
    assert web.get(f"savedqueries({VIEW_ID})?$select=componentstate").json()["componentstate"] == 0


def test_savedquery_has_no_upsert_and_refuses_state_on_create(web: Api) -> None:
    missing = str(uuid.uuid4())
    assert error(web.patch(f"savedqueries({missing})", {"name": "x"})) == (
        404,
        "0x80040217",
        f"savedquery With Id = {missing} Does Not Exist",
    )
    assert missing not in web.rows("savedquery")
    refused = web.post(
        "savedqueries",
        {
            "name": "x",
            "returnedtypecode": "contact",
            "querytype": 0,
            "fetchxml": SALES_CONTACTS,
            "statecode": 1,
        },
    )
    assert error(refused)[:2] == (400, "0x80040203")


def test_personal_views_need_fetchxml_and_run_with_user_query(web: Api) -> None:
    body = {"name": "My sales contacts", "returnedtypecode": "contact", "querytype": 0}
    assert error(web.post("userqueries", body)) == (
        400,
        "0x80040203",
        "The 'fetchxml' attribute of the 'userquery' entity is required.",
    )
    made = created_id(
        web.post("userqueries", {**body, "fetchxml": SALES_CONTACTS, "layoutxml": LAYOUT})
    )
    me = web.get("WhoAmI").json()["UserId"]
    assert web.get(f"userqueries({made})?$select=_ownerid_value").json()["_ownerid_value"] == me
    rows = values(web.get(f"contacts?userQuery={made}"))
    assert rows == sorted(rows, key=lambda r: (r["fullname"].lower(), r["contactid"]))
    assert all(
        "jobtitle" in row or web.rows("contact")[row["contactid"]]["jobtitle"] is None
        for row in rows
    )


def test_bad_view_requests_get_errors(web: Api) -> None:
    missing = str(uuid.uuid4())
    assert error(web.get(f"contacts?savedQuery={missing}")) == (
        404,
        "0x80040217",
        f"savedquery With Id = {missing} Does Not Exist",
    )
    assert error(web.get(f"leads?savedQuery={view_id(web, 'Active Contacts')}"))[:2] == (
        400,
        "0x80040203",
    )
    assert error(web.get("contacts?savedQuery=not-a-guid"))[:2] == (400, "0x80060888")
    assert error(web.get(f"contacts?savedQuery={view_id(web, 'Active Contacts')}&$top=1"))[:2] == (
        400,
        "0x80060888",
    )
    assert error(web.post("PublishXml", {"ParameterXml": "<importexportxml>"})) == (
        400,
        "0x80040201",
        "Invalid XML.",
    )
    assert error(web.get("PublishXml"))[:2] == (404, "")
