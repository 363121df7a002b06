"""Web API reads: shapes, $select, $filter, $orderby, $top, $count, paging, annotations, errors."""

from __future__ import annotations

import re
import uuid
from urllib.parse import unquote

from tests.emulator.conftest import Api, error

GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def test_every_response_carries_the_dataverse_headers(web: Api) -> None:
    response = web.get("leads?$top=1")
    assert response.status_code == 200
    assert response.headers["OData-Version"] == "4.0"
    assert response.headers["Content-Type"] == "application/json; odata.metadata=minimal"
    assert GUID.match(response.headers["REQ_ID"])
    assert response.headers["x-ms-service-request-id"] == response.headers["REQ_ID"]
    assert web.get("leads?$top=1").headers["REQ_ID"] != response.headers["REQ_ID"]


def test_a_collection_without_select_returns_every_column_with_nulls(web: Api) -> None:
    body = web.get("leads?$top=3").json()
    assert body["@odata.context"] == f"{web.emulator.api_url}/$metadata#leads"
    assert list(body) == ["@odata.context", "value"]
    row = body["value"][0]
    assert next(iter(row)) == "@odata.etag"
    assert row["@odata.etag"] == f'W/"{row["versionnumber"]}"'
    assert list(row)[-1] == "leadid"
    for column in ("firstname", "description", "_parentcontactid_value", "createdon", "statecode"):
        assert column in row
    assert isinstance(row["donotemail"], bool)
    assert re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$", row["createdon"])
    stored = web.rows("lead")[row["leadid"]]
    assert {k: v for k, v in row.items() if k != "@odata.etag"} == stored


def test_select_adds_the_key_and_etag_and_names_columns_in_request_order(web: Api) -> None:
    body = web.get("contacts?$select=lastname,emailaddress1,_parentcustomerid_value&$top=2").json()
    context = (
        f"{web.emulator.api_url}/$metadata#contacts(lastname,emailaddress1,_parentcustomerid_value)"
    )
    assert body["@odata.context"] == context
    assert list(body["value"][0]) == [
        "@odata.etag",
        "lastname",
        "emailaddress1",
        "_parentcustomerid_value",
        "contactid",
    ]


def test_single_record_by_key_with_and_without_select(web: Api) -> None:
    lead_id = next(iter(web.rows("lead")))
    whole = web.get(f"leads({lead_id})")
    assert whole.status_code == 200
    body = whole.json()
    assert body["@odata.context"] == f"{web.emulator.api_url}/$metadata#leads/$entity"
    assert body["leadid"] == lead_id
    assert whole.headers["ETag"] == body["@odata.etag"]
    chosen = web.get(f"leads({lead_id.upper()})?$select=subject").json()
    assert chosen["@odata.context"].endswith("$metadata#leads(subject)/$entity")
    assert list(chosen) == ["@odata.context", "@odata.etag", "subject", "leadid"]


def test_conditional_get_answers_304_when_unchanged(web: Api) -> None:
    lead_id = next(iter(web.rows("lead")))
    etag = web.get(f"leads({lead_id})").headers["ETag"]
    assert web.get(f"leads({lead_id})", headers={"If-None-Match": etag}).status_code == 304
    assert web.get(f"leads({lead_id})", headers={"If-None-Match": "null"}).status_code == 200


def test_unknown_things_fail_with_the_catalogued_errors(web: Api) -> None:
    assert error(web.get("leads?$select=foo")) == (
        400,
        "0x80060888",
        "Could not find a property named 'foo' on type 'Microsoft.Dynamics.CRM.lead'.",
    )
    assert error(web.get("leads?$filter=foo eq 1"))[:2] == (400, "0x80060888")
    assert error(web.get("leads?$orderby=foo"))[2].startswith(
        "Could not find a property named 'foo'"
    )
    assert error(web.get("Lead")) == (
        404,
        "0x8006088a",
        "Resource not found for the segment 'Lead'.",
    )
    assert error(web.get("leads(not-a-guid)")) == (
        400,
        "0x80060888",
        "Bad Request - Error in query syntax.",
    )
    missing = str(uuid.uuid4())
    assert error(web.get(f"leads({missing})")) == (
        404,
        "0x80040217",
        f"lead With Id = {missing} Does Not Exist",
    )
    assert error(web.get("leads?$skip=10")) == (
        400,
        "0x80060888",
        "The query parameter '$skip' is not supported.",
    )
    assert error(web.get("leads?$search=x"))[:2] == (400, "0x80060888")
    assert error(web.get("leads?$top=1&$top=2"))[:2] == (400, "0x80060888")


def test_property_error_codes_can_be_switched_to_0x0(web: Api) -> None:
    web.admin("PATCH", "/config", {"zero_property_codes": True})
    assert error(web.get("leads?$select=foo"))[1] == "0x0"


def test_filters_compare_strings_case_insensitively(web: Api) -> None:
    contacts = web.rows("contact")
    zoe = next(c for c in contacts.values() if c["fullname"] == "Zoë Ångström")
    found = web.get("contacts?$select=fullname&$filter=lastname eq 'ÅNGSTRÖM'").json()["value"]
    assert zoe["contactid"] in {row["contactid"] for row in found}
    quoted = web.get("contacts?$filter=lastname eq 'O''Brien'&$select=lastname").json()["value"]
    assert quoted
    assert all(row["lastname"] == "O'Brien" for row in quoted)
    assert len(web.get("contacts?$filter=startswith(fullname,'zoË')").json()["value"]) >= 1


def test_filter_operators_nulls_guids_dates_and_in(web: Api) -> None:
    leads = web.rows("lead")
    orphans = {i for i, r in leads.items() if r["_parentcontactid_value"] is None}
    body = web.get("leads?$select=leadid&$filter=_parentcontactid_value eq null").json()
    assert {r["leadid"] for r in body["value"]} == orphans
    linked = web.get("leads?$select=leadid&$filter=_parentcontactid_value ne null").json()
    assert {r["leadid"] for r in linked["value"]} == set(leads) - orphans
    parent = next(
        r["_parentcontactid_value"] for r in leads.values() if r["_parentcontactid_value"]
    )
    by_guid = web.get(f"leads?$filter=_parentcontactid_value eq {parent}").json()["value"]
    assert {r["leadid"] for r in by_guid} == {
        i for i, r in leads.items() if r["_parentcontactid_value"] == parent
    }
    cutoff = sorted(r["createdon"] for r in leads.values())[150]
    newer = web.get(f"leads?$select=createdon&$filter=createdon ge {cutoff}").json()["value"]
    assert len(newer) == sum(r["createdon"] >= cutoff for r in leads.values())
    date_only = cutoff[:10]
    after_day = web.get(f"leads?$select=leadid&$filter=createdon gt {date_only}").json()["value"]
    assert len(after_day) == sum(r["createdon"] > f"{date_only}T00:00:00Z" for r in leads.values())
    chosen = web.get("leads?$select=leadid&$filter=leadsourcecode in (1,2,3)").json()["value"]
    assert len(chosen) == sum(r["leadsourcecode"] in (1, 2, 3) for r in leads.values())
    combined = "statecode eq 0 and (donotphone eq true or not contains(subject,'contoso'))"
    expected = {
        i
        for i, r in leads.items()
        if r["statecode"] == 0 and (r["donotphone"] or "contoso" not in r["subject"].lower())
    }
    got = web.get(f"leads?$select=leadid&$filter={combined}").json()["value"]
    assert {r["leadid"] for r in got} == expected


def test_ne_leaves_nulls_out_as_dataverse_does(web: Api) -> None:
    leads = web.rows("lead")
    got = web.get("leads?$select=leadid&$filter=leadqualitycode ne 1").json()["value"]
    assert len(got) == sum(r["leadqualitycode"] not in (None, 1) for r in leads.values())


def test_filter_through_a_lookup_and_over_a_collection(web: Api) -> None:
    leads, contacts = web.rows("lead"), web.rows("contact")
    parent = next(r for r in leads.values() if r["_parentcontactid_value"])
    email = contacts[parent["_parentcontactid_value"]]["emailaddress1"].strip()
    path = f"leads?$select=leadid&$filter=parentcontactid/emailaddress1 eq '{email.upper()}'"
    assert parent["leadid"] in {r["leadid"] for r in web.get(path).json()["value"]}
    open_leads = web.get(
        "contacts?$select=contactid&$filter=lead_parent_contact/any(l:l/statecode eq 0)"
    ).json()["value"]
    expected = {
        r["_parentcontactid_value"]
        for r in leads.values()
        if r["statecode"] == 0 and r["_parentcontactid_value"]
    }
    assert {r["contactid"] for r in open_leads} == expected


def test_bad_filters_are_rejected(web: Api) -> None:
    assert error(web.get("leads?$filter=statecode eq"))[:2] == (400, "0x80060888")
    assert error(web.get("leads?$filter=statecode eq 'open'"))[2] == (
        "A binary operator with incompatible types was detected. Found operand types "
        "'Edm.Int32' and 'Edm.String' for operator kind 'Equal'."
    )
    assert error(web.get("leads?$filter=tolower(subject) eq 'x'"))[:2] == (400, "0x80060888")


def test_orderby_sorts_choices_by_value_and_ties_by_key(web: Api) -> None:
    rows = web.get(
        "leads?$select=leadsourcecode,createdon&$orderby=leadsourcecode desc,createdon"
    ).json()["value"]
    keys = [
        (-(r["leadsourcecode"] if r["leadsourcecode"] is not None else -1), r["createdon"])
        for r in rows
    ]
    assert keys == sorted(keys)


def test_top_and_count(web: Api) -> None:
    body = web.get("leads?$select=leadid&$top=7&$count=true").json()
    assert len(body["value"]) == 7
    assert body["@odata.count"] == 300
    assert list(body)[:2] == ["@odata.context", "@odata.count"]
    assert "@odata.nextLink" not in body
    count = web.get("leads/$count")
    assert count.status_code == 200
    assert count.headers["Content-Type"].startswith("text/plain")
    assert count.text == "300"
    assert web.get("leads/$count?$filter=statecode eq 1").text == str(
        sum(r["statecode"] == 1 for r in web.rows("lead").values())
    )


def test_count_is_capped_at_5000(web: Api) -> None:
    web.emulator.reset(leads=5100, contacts=20)
    assert web.get("leads/$count").text == "5000"
    body = web.get(
        "leads?$select=leadid&$count=true&$top=1", prefer='odata.include-annotations="*"'
    ).json()
    assert body["@odata.count"] == 5000
    assert body["@Microsoft.Dynamics.CRM.totalrecordcount"] == 5000
    assert body["@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"] is True
    assert len(web.get("leads?$select=leadid").json()["value"]) == 5000


def test_paging_follows_nextlinks_with_cookie_skiptokens(web: Api) -> None:
    prefer = "odata.maxpagesize=40"
    first = web.get("leads?$select=fullname&$filter=statecode eq 0", prefer)
    assert first.headers["Preference-Applied"] == "odata.maxpagesize=40"
    body = first.json()
    assert list(body) == ["@odata.context", "value", "@odata.nextLink"]
    link = body["@odata.nextLink"]
    assert link.startswith(f"{web.emulator.api_url}/leads?$select=fullname&$filter=statecode")
    token = unquote(link.split("$skiptoken=")[1])
    assert re.match(r'^<cookie pagenumber="2" pagingcookie="%3ccookie%20page%3d%221%22', token)
    assert token.endswith('istracking="False" />')
    pages = web.pages("leads?$select=fullname&$filter=statecode eq 0", prefer)
    ids = [r["leadid"] for page in pages for r in page["value"]]
    assert all(len(page["value"]) == 40 for page in pages[:-1])
    assert len(ids) == len(set(ids)) == sum(r["statecode"] == 0 for r in web.rows("lead").values())
    assert "@odata.nextLink" not in pages[-1]


def test_paging_stays_correct_while_rows_change(web: Api) -> None:
    prefer = "odata.maxpagesize=50"
    first = web.get("leads?$select=subject&$orderby=createdon desc", prefer).json()
    seen = {r["leadid"] for r in first["value"]}
    leads = web.rows("lead")
    unseen = sorted(set(leads) - seen)
    web.admin("DELETE", f"/tables/lead/{unseen[0]}")
    web.admin("PATCH", f"/tables/lead/{unseen[1]}", {"subject": "Changed while paging"})
    rest = web.pages(first["@odata.nextLink"], prefer)
    later = [r["leadid"] for page in rest for r in page["value"]]
    assert len(later) == len(set(later))
    assert set(later) == set(unseen) - {unseen[0]}
    assert not seen & set(later)


def test_top_is_ignored_when_a_page_size_is_asked_for(web: Api) -> None:
    body = web.get("leads?$select=leadid&$top=5", "odata.maxpagesize=10").json()
    assert len(body["value"]) == 10
    assert "@odata.nextLink" in body


def test_page_size_is_capped_at_5000(web: Api) -> None:
    response = web.get("leads?$select=leadid", "odata.maxpagesize=9000")
    assert response.headers["Preference-Applied"] == "odata.maxpagesize=5000"


def test_annotations_for_choices_booleans_lookups_and_dates(web: Api) -> None:
    leads = web.rows("lead")
    lead_id = next(
        i for i, r in leads.items() if r["_parentcontactid_value"] and r["leadsourcecode"]
    )
    prefer = 'odata.include-annotations="*"'
    response = web.get(
        f"leads({lead_id})?$select=leadsourcecode,donotemail,_parentcontactid_value,createdon,subject",
        prefer,
    )
    assert response.headers["Preference-Applied"] == 'odata.include-annotations="*"'
    row = response.json()
    keys = list(row)
    formatted = "@OData.Community.Display.V1.FormattedValue"
    assert keys.index(f"leadsourcecode{formatted}") == keys.index("leadsourcecode") - 1
    labels = {1: "Advertisement", 8: "Web", 10: "Other"}
    if row["leadsourcecode"] in labels:
        assert row[f"leadsourcecode{formatted}"] == labels[row["leadsourcecode"]]
    assert row[f"donotemail{formatted}"] == ("Do Not Allow" if row["donotemail"] else "Allow")
    contact = web.rows("contact")[row["_parentcontactid_value"]]
    assert row[f"_parentcontactid_value{formatted}"] == contact["fullname"]
    lookup = "_parentcontactid_value@Microsoft.Dynamics.CRM."
    assert row[f"{lookup}lookuplogicalname"] == "contact"
    assert row[f"{lookup}associatednavigationproperty"] == "parentcontactid"
    assert re.match(r"^\d{1,2}/\d{1,2}/\d{4} \d{1,2}:\d{2} (AM|PM)$", row[f"createdon{formatted}"])
    assert f"subject{formatted}" not in row
    only = web.get(
        f"leads({lead_id})?$select=leadsourcecode,_parentcontactid_value",
        'odata.include-annotations="OData.Community.Display.V1.FormattedValue"',
    ).json()
    assert f"leadsourcecode{formatted}" in only
    assert f"{lookup}lookuplogicalname" not in only


def test_null_values_carry_no_annotations(web: Api) -> None:
    orphan = next(i for i, r in web.rows("lead").items() if r["_parentcontactid_value"] is None)
    row = web.get(
        f"leads({orphan})?$select=_parentcontactid_value", 'odata.include-annotations="*"'
    ).json()
    assert [k for k in row if k.startswith("_parentcontactid_value@")] == []


def test_polymorphic_lookups_name_their_target(web: Api) -> None:
    contact = next(r for r in web.rows("contact").values() if r["_parentcustomerid_value"])
    row = web.get(
        f"contacts({contact['contactid']})?$select=_parentcustomerid_value",
        'odata.include-annotations="*"',
    ).json()
    prefix = "_parentcustomerid_value@Microsoft.Dynamics.CRM."
    assert row[f"{prefix}lookuplogicalname"] == "account"
    assert row[f"{prefix}associatednavigationproperty"] == "parentcustomerid_account"
