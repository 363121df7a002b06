"""Associations (§8): `$ref`, collection binds, deep insert, single properties, and `$expand`."""

from __future__ import annotations

import uuid

from tests.emulator.conftest import Api, created_id, error


def test_single_valued_links_are_set_and_removed_with_ref(web: Api) -> None:
    lead_id = next(i for i, r in web.rows("lead").items() if r["_parentcontactid_value"] is None)
    contact_id = next(iter(web.rows("contact")))
    url = f"{web.emulator.api_url}/contacts({contact_id})"
    assert web.put(f"leads({lead_id})/parentcontactid/$ref", {"@odata.id": url}).status_code == 204
    assert web.rows("lead")[lead_id]["_parentcontactid_value"] == contact_id
    related = web.get(f"leads({lead_id})/parentcontactid?$select=fullname")
    assert related.json().get("contactid") == contact_id, related.text
    assert web.delete(f"leads({lead_id})/parentcontactid/$ref").status_code == 204
    assert web.rows("lead")[lead_id]["_parentcontactid_value"] is None
    assert web.get(f"leads({lead_id})/parentcontactid").status_code == 204
    wrong = web.put(
        f"leads({lead_id})/parentcontactid/$ref", {"@odata.id": f"accounts({uuid.uuid4()})"}
    )
    assert error(wrong)[:2] == (400, "0x80048d19")


def test_collection_links_are_added_and_removed(web: Api) -> None:
    contact_id = next(iter(web.rows("contact")))
    orphans = [i for i, r in web.rows("lead").items() if r["_parentcontactid_value"] is None][:3]
    url = f"{web.emulator.api_url}/leads({orphans[0]})"
    added = web.post(f"contacts({contact_id})/lead_parent_contact/$ref", {"@odata.id": url})
    assert added.status_code == 204
    assert web.rows("lead")[orphans[0]]["_parentcontactid_value"] == contact_id
    listed = web.get(f"contacts({contact_id})/lead_parent_contact?$select=subject").json()
    assert orphans[0] in {row["leadid"] for row in listed["value"]}
    removed = web.delete(f"contacts({contact_id})/lead_parent_contact/$ref?$id={url}")
    assert removed.status_code == 204
    assert web.rows("lead")[orphans[0]]["_parentcontactid_value"] is None
    assert error(web.delete(f"contacts({contact_id})/lead_parent_contact({orphans[0]})/$ref"))[
        :2
    ] == (
        404,
        "0x80040217",
    )
    created = created_id(
        web.post(
            "contacts",
            {
                "lastname": "Parent",
                "lead_parent_contact@odata.bind": [f"/leads({i})" for i in orphans[1:]],
            },
        )
    )
    leads = web.rows("lead")
    assert {leads[i]["_parentcontactid_value"] for i in orphans[1:]} == {created}
    assert (
        web.delete(f"contacts({created})/lead_parent_contact({orphans[1]})/$ref").status_code == 204
    )
    assert web.rows("lead")[orphans[1]]["_parentcontactid_value"] is None


def test_deep_insert_creates_related_records_in_one_transaction(web: Api) -> None:
    lead_id = created_id(
        web.post(
            "leads",
            {
                "lastname": "Deep",
                "parentcontactid": {"firstname": "Nested", "lastname": "Contact"},
                "Lead_Tasks": [{"subject": "First task"}, {"subject": "Second task"}],
            },
        )
    )
    lead = web.rows("lead")[lead_id]
    contact = web.rows("contact")[lead["_parentcontactid_value"]]
    assert contact["fullname"] == "Nested Contact"
    tasks = [t for t in web.rows("task").values() if t["_regardingobjectid_value"] == lead_id]
    assert sorted(t["subject"] for t in tasks) == ["First task", "Second task"]
    before = web.admin("GET", "/status")["version"]
    failing = web.post("leads", {"lastname": "Deep", "Lead_Tasks": [{"subject": "x" * 201}]})
    assert error(failing)[:2] == (400, "0x80044331")
    assert web.admin("GET", "/status")["version"] == before


def test_single_properties_are_read_written_and_cleared(web: Api) -> None:
    lead_id = next(iter(web.rows("lead")))
    assert web.put(f"leads({lead_id})/telephone1", {"value": "555-0100"}).status_code == 204
    read = web.get(f"leads({lead_id})/telephone1").json()
    assert read == {
        "@odata.context": f"{web.emulator.api_url}/$metadata#leads({lead_id})/telephone1",
        "value": "555-0100",
    }
    assert web.delete(f"leads({lead_id})/telephone1").status_code == 204
    assert web.rows("lead")[lead_id]["telephone1"] is None
    assert error(web.put(f"leads({lead_id})/subject", {"value": "x" * 301}))[:2] == (
        400,
        "0x80044331",
    )
    assert error(web.put(f"leads({uuid.uuid4()})/subject", {"value": "x"}))[:2] == (
        404,
        "0x80040217",
    )


def test_expand_reads_related_rows_with_their_options(web: Api) -> None:
    contacts = web.rows("contact")
    leads = web.rows("lead")
    accounts = web.rows("account")
    contact_id = max(
        contacts, key=lambda c: sum(r["_parentcontactid_value"] == c for r in leads.values())
    )
    mine = sorted(
        (r for r in leads.values() if r["_parentcontactid_value"] == contact_id),
        key=lambda r: (r["createdon"], r["leadid"]),
        reverse=True,
    )
    assert len(mine) >= 2
    response = web.get(
        f"contacts({contact_id})?$select=fullname"
        "&$expand=lead_parent_contact($select=subject,createdon;$orderby=createdon desc;$top=2)"
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["@odata.context"].endswith(
        "#contacts(fullname,lead_parent_contact(subject,createdon))/$entity"
    )
    assert [r["leadid"] for r in body["lead_parent_contact"]] == [r["leadid"] for r in mine[:2]]
    listing = web.get(
        "leads?$select=fullname&$filter=_parentcontactid_value ne null"
        "&$expand=parentcontactid($select=fullname,emailaddress1;"
        "$expand=parentcustomerid_account($select=name))",
        "odata.maxpagesize=5",
    ).json()
    assert len(listing["value"]) == 5
    for row in listing["value"]:
        contact = contacts[leads[row["leadid"]]["_parentcontactid_value"]]
        assert row["parentcontactid"]["fullname"] == contact["fullname"]
        account = row["parentcontactid"]["parentcustomerid_account"]
        assert (account or {}).get("accountid") == (
            contact["_parentcustomerid_value"]
            if contact["_parentcustomerid_value"] in accounts
            else None
        )
    filtered = web.get(
        f"contacts({contact_id})?$select=fullname"
        f"&$expand=lead_parent_contact($select=subject;$filter=leadid eq {mine[0]['leadid']})"
    ).json()
    assert [r["leadid"] for r in filtered["lead_parent_contact"]] == [mine[0]["leadid"]]


def test_expand_restrictions_are_the_reference_errors(web: Api) -> None:
    restricted = (
        400,
        "0x80060888",
        "Only $select and $filter clause can be provided while doing $expand on many-to-one "
        "relationship or nested one-to-many relationship.",
    )
    assert error(web.get("leads?$expand=parentcontactid($top=1)")) == restricted
    assert (
        error(
            web.get(
                "accounts?$expand=contact_customer_accounts($expand=lead_parent_contact($top=1))"
            )
        )
        == restricted
    )
    assert error(web.get("contacts?$expand=lead_parent_contact/$ref")) == (
        400,
        "0x80060888",
        "Expand with $ref is only supported on lookup type navigation property.",
    )
    assert error(web.get("leads?$expand=ParentContactId")) == (
        400,
        "0x80060888",
        "Could not find a property named 'ParentContactId' on type 'Microsoft.Dynamics.CRM.lead'.",
    )
    sixteen = ",".join(["parentcontactid"] * 16)
    assert error(web.get(f"leads?$expand={sixteen}"))[:2] == (400, "0x80060888")
    tracked = web.get("leads?$expand=parentcontactid", "odata.track-changes")
    assert error(tracked)[2] == (
        'The "$expand" query parameter isn\'t supported when Change Tracking is enabled.'
    )


def test_expand_ref_on_a_lookup_gives_the_related_records_id_url(web: Api) -> None:
    leads = web.rows("lead")
    body = web.get("leads?$select=subject&$expand=parentcontactid/$ref").json()
    for row in body["value"]:
        contact = leads[row["leadid"]]["_parentcontactid_value"]
        expected = {"@odata.id": f"{web.emulator.api_url}/contacts({contact})"} if contact else None
        assert row["parentcontactid"] == expected
    assert error(web.get("leads?$expand=parentcontactid/$ref($select=fullname)"))[:2] == (
        400,
        "0x80060888",
    )
