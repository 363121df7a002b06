"""Web API writes: create, upsert, conditional updates, delete with RemoveLink, validation."""

from __future__ import annotations

import uuid

from tests.emulator.conftest import Api, error


def test_create_answers_204_with_the_new_id_and_stores_the_record(web: Api) -> None:
    contact_id = next(iter(web.rows("contact")))
    response = web.post(
        "leads",
        {
            "firstname": "Ada",
            "lastname": "Lovelace",
            "subject": "Interested in product X",
            "emailaddress1": "ada@example.com",
            "leadsourcecode": 8,
            "donotphone": True,
            "parentcontactid@odata.bind": f"/contacts({contact_id})",
        },
    )
    assert response.status_code == 204
    assert response.content == b""
    entity_id = response.headers["OData-EntityId"]
    assert response.headers["Location"] == entity_id
    new_id = entity_id.rsplit("(", 1)[1].rstrip(")")
    assert entity_id == f"{web.emulator.api_url}/leads({new_id})"
    row = web.rows("lead")[new_id]
    whoami = web.get("WhoAmI").json()["UserId"]
    assert row["fullname"] == "Ada Lovelace"
    assert row["_parentcontactid_value"] == contact_id
    assert row["donotphone"] is True
    assert row["donotemail"] is False
    assert (row["statecode"], row["statuscode"]) == (0, 1)
    assert row["_ownerid_value"] == whoami
    assert row["createdon"] == row["modifiedon"] == web.admin("GET", "/clock")["now"]
    assert row["versionnumber"] > 0


def test_create_with_return_representation_answers_201_with_the_record(web: Api) -> None:
    response = web.post(
        "contacts?$select=fullname,emailaddress1",
        {"firstname": "Seán", "lastname": "O'Brien", "emailaddress1": "sean@example.com"},
        headers={"Prefer": "return=representation"},
    )
    assert response.status_code == 201
    assert response.headers["Preference-Applied"] == "return=representation"
    body = response.json()
    assert body["@odata.context"].endswith("$metadata#contacts(fullname,emailaddress1)/$entity")
    assert body["fullname"] == "Seán O'Brien"
    assert body["@odata.etag"] == f'W/"{web.rows("contact")[body["contactid"]]["versionnumber"]}"'


def test_a_client_chosen_key_is_kept_and_a_duplicate_is_refused(web: Api) -> None:
    chosen = str(uuid.uuid4())
    assert web.post("leads", {"leadid": chosen, "lastname": "Keyed"}).status_code == 204
    assert web.rows("lead")[chosen]["lastname"] == "Keyed"
    assert error(web.post("leads", {"leadid": chosen, "lastname": "Again"})) == (
        412,
        "0x80040237",
        "Cannot insert duplicate key.",
    )


def test_patch_upserts_updates_and_honours_conditions(web: Api) -> None:
    new_id = str(uuid.uuid4())
    created = web.patch(f"leads({new_id})", {"lastname": "Upserted", "subject": "Deterministic"})
    assert created.status_code == 204
    assert created.headers["OData-EntityId"] == f"{web.emulator.api_url}/leads({new_id})"
    before = web.rows("lead")[new_id]
    updated = web.patch(f"leads({new_id})", {"firstname": "Now"})
    assert updated.status_code == 204
    after = web.rows("lead")[new_id]
    assert after["fullname"] == "Now Upserted"
    assert after["versionnumber"] > before["versionnumber"]
    missing = str(uuid.uuid4())
    assert error(web.patch(f"leads({missing})", {"lastname": "x"}, headers={"If-Match": "*"})) == (
        404,
        "0x80040217",
        f"lead With Id = {missing} Does Not Exist",
    )
    assert missing not in web.rows("lead")
    assert error(
        web.patch(f"leads({new_id})", {"lastname": "x"}, headers={"If-None-Match": "*"})
    ) == (412, "0x80040237", "A record with matching key values already exists.")
    stale = f'W/"{before["versionnumber"]}"'
    assert error(web.patch(f"leads({new_id})", {"lastname": "x"}, headers={"If-Match": stale})) == (
        412,
        "0x80060882",
        "The version of the existing record doesn't match the RowVersion property provided.",
    )
    current = f'W/"{after["versionnumber"]}"'
    ok = web.patch(
        f"leads({new_id})",
        {"lastname": "Matched"},
        headers={"If-Match": current, "Prefer": "return=representation"},
    )
    assert ok.status_code == 200
    assert ok.json()["lastname"] == "Matched"


def test_delete_removes_the_record_and_unlinks_leads_from_a_deleted_contact(web: Api) -> None:
    leads = web.rows("lead")
    contact_id = next(
        r["_parentcontactid_value"] for r in leads.values() if r["_parentcontactid_value"]
    )
    linked = {i for i, r in leads.items() if r["_parentcontactid_value"] == contact_id}
    response = web.delete(f"contacts({contact_id})")
    assert response.status_code == 204
    assert contact_id not in web.rows("contact")
    after = web.rows("lead")
    for lead_id in linked:
        assert after[lead_id]["_parentcontactid_value"] is None
        assert after[lead_id]["versionnumber"] > leads[lead_id]["versionnumber"]
    assert error(web.delete(f"contacts({contact_id})")) == (
        404,
        "0x80040217",
        f"contact With Id = {contact_id} Does Not Exist",
    )


def test_deleting_an_account_cascades_to_its_contacts(web: Api) -> None:
    contacts = web.rows("contact")
    account_id = next(
        r["_parentcustomerid_value"] for r in contacts.values() if r["_parentcustomerid_value"]
    )
    children = {i for i, r in contacts.items() if r["_parentcustomerid_value"] == account_id}
    assert web.delete(f"accounts({account_id})").status_code == 204
    assert not children & set(web.rows("contact"))
    deleted = {d["id"] for d in web.admin("GET", "/tables/contact/deleted")["deleted"]}
    assert children <= deleted


def test_bodies_are_validated_against_the_schema(web: Api) -> None:
    assert error(web.post("leads", {"lastname": "x", "foo": 1})) == (
        400,
        "0x80048d19",
        "Invalid property 'foo' was found in entity 'Microsoft.Dynamics.CRM.lead'",
    )
    assert error(web.post("leads", {"subject": "x" * 301})) == (
        400,
        "0x80044331",
        "A validation error occurred.  The length of the 'subject' attribute of the 'lead' "
        "entity exceeded the maximum allowed length of '300'.",
    )
    assert error(web.post("leads", {"lastname": "x", "statecode": 1}))[:2] == (400, "0x80040203")
    bad_json = web.session.post(
        web.url("leads"), data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert error(bad_json)[:2] == (400, "0x80048d19")
    assert error(web.post("leads", {"leadsourcecode": "8"}))[:2] == (400, "0x80048d19")
    assert error(web.post("leads", {"leadsourcecode": 99}))[:2] == (400, "0x80044331")
    assert (
        error(web.post("leads", {"_parentcontactid_value": str(uuid.uuid4())}))[1] == "0x80048d19"
    )


def test_binds_use_case_sensitive_navigation_names(web: Api) -> None:
    contact_id = next(iter(web.rows("contact")))
    account_id = next(iter(web.rows("account")))
    assert error(web.post("leads", {"ParentContactId@odata.bind": f"/contacts({contact_id})"}))[
        2
    ].startswith("An undeclared property 'ParentContactId' which only has property annotations")
    assert error(web.post("contacts", {"parentcustomerid@odata.bind": f"/accounts({account_id})"}))[
        :2
    ] == (400, "0x80048d19")
    created = web.post(
        "contacts",
        {"lastname": "Bound", "parentcustomerid_account@odata.bind": f"accounts({account_id})"},
    )
    assert created.status_code == 204
    new_id = created.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
    assert web.rows("contact")[new_id]["_parentcustomerid_value"] == account_id
    missing = str(uuid.uuid4())
    assert error(web.post("leads", {"parentcontactid@odata.bind": f"/contacts({missing})"}))[
        :2
    ] == (
        404,
        "0x80040217",
    )
    assert error(web.post("leads", {"parentcontactid@odata.bind": f"/accounts({account_id})"}))[
        :2
    ] == (400, "0x80048d19")


def test_clearing_a_lookup_with_a_null_bind(web: Api) -> None:
    lead_id = next(i for i, r in web.rows("lead").items() if r["_parentcontactid_value"])
    assert web.patch(f"leads({lead_id})", {"parentcontactid@odata.bind": None}).status_code == 204
    assert web.rows("lead")[lead_id]["_parentcontactid_value"] is None


def test_state_and_status_pairs_are_checked(web: Api) -> None:
    lead_id = next(i for i, r in web.rows("lead").items() if r["statecode"] == 0)
    assert web.patch(f"leads({lead_id})", {"statecode": 2, "statuscode": 4}).status_code == 204
    assert (web.rows("lead")[lead_id]["statecode"], web.rows("lead")[lead_id]["statuscode"]) == (
        2,
        4,
    )
    assert error(web.patch(f"leads({lead_id})", {"statecode": 0, "statuscode": 5})) == (
        400,
        "0x80040203",
        "5 is not a valid status code for state code 0.",
    )
    assert web.patch(f"leads({lead_id})", {"statecode": 0}).status_code == 204
    assert web.rows("lead")[lead_id]["statuscode"] == 1
    assert error(web.patch(f"leads({lead_id})", {"statecode": 1, "statuscode": 3}))[1] == (
        "0x80040203"
    )
    web.admin("PATCH", "/config", {"allow_lead_qualify_patch": True})
    assert web.patch(f"leads({lead_id})", {"statecode": 1, "statuscode": 3}).status_code == 204


def test_a_failed_write_changes_nothing(web: Api) -> None:
    before = web.admin("GET", "/status")["version"]
    web.post("leads", {"lastname": "x", "foo": 1})
    web.patch(f"leads({uuid.uuid4()})", {"lastname": "x"}, headers={"If-Match": "*"})
    assert web.admin("GET", "/status")["version"] == before
