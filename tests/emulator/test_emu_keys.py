"""Alternate keys (§7.5): defined through metadata or seeded, used in URLs and binds."""

from __future__ import annotations

from typing import Any

from tests.emulator.conftest import Api, created_id, error

U16 = (
    "The key in the request URI is not valid for resource 'Microsoft.Dynamics.CRM.contact'. "
    "Ensure that the names and number of key properties match the declared or alternate key "
    "properties for the resource 'Microsoft.Dynamics.CRM.contact'."
)
EMAIL_KEY = {
    "SchemaName": "new_ContactEmail",
    "DisplayName": {"LocalizedLabels": [{"Label": "Contact email", "LanguageCode": 1033}]},
    "KeyAttributes": ["emailaddress1"],
}


def contact_with_email(web: Api) -> dict[str, Any]:
    return next(r for r in web.rows("contact").values() if r["emailaddress1"])


def test_key_syntax_is_refused_while_no_key_is_defined(web: Api) -> None:
    assert error(web.get("contacts(emailaddress1='ada@example.com')")) == (400, "0x80060888", U16)
    assert error(web.patch("contacts(emailaddress1='ada@example.com')", {"lastname": "x"})) == (
        400,
        "0x80060888",
        U16,
    )
    bound = web.post(
        "leads", {"lastname": "x", "parentcontactid@odata.bind": "/contacts(emailaddress1='a@b.c')"}
    )
    assert error(bound) == (400, "0x80060888", U16)


def test_a_key_defined_through_metadata_serves_get_patch_upsert_bind_and_delete(web: Api) -> None:
    defined = web.post("EntityDefinitions(LogicalName='contact')/Keys", EMAIL_KEY)
    assert defined.status_code == 204, defined.text
    assert "/EntityDefinitions(" in defined.headers["OData-EntityId"]
    (key,) = web.get("EntityDefinitions(LogicalName='contact')/Keys").json()["value"]
    assert (key["LogicalName"], key["KeyAttributes"], key["EntityKeyIndexStatus"]) == (
        "new_contactemail",
        ["emailaddress1"],
        "Active",
    )
    known = contact_with_email(web)
    email = known["emailaddress1"].strip()
    found = web.get(f"contacts(emailaddress1='{email.upper()}')?$select=fullname")
    assert found.json()["contactid"] == known["contactid"]
    assert web.patch(f"contacts(emailaddress1='{email}')", {"jobtitle": "Keyed"}).status_code == 204
    assert web.rows("contact")[known["contactid"]]["jobtitle"] == "Keyed"
    created = web.patch("contacts(emailaddress1='o''hara@example.com')", {"lastname": "O'Hara"})
    new_id = created_id(created)
    assert web.rows("contact")[new_id]["emailaddress1"] == "o'hara@example.com"
    lead = created_id(
        web.post(
            "leads",
            {
                "lastname": "L",
                "parentcontactid@odata.bind": "/contacts(emailaddress1='o''hara@example.com')",
            },
        )
    )
    assert web.rows("lead")[lead]["_parentcontactid_value"] == new_id
    assert error(
        web.post("contacts", {"lastname": "Twin", "emailaddress1": "O'HARA@example.com"})
    ) == (
        412,
        "0x80060892",
        "Entity Key Contact email violated. A record with the same value for emailaddress1 already exists.",
    )
    update_only = web.patch(
        "contacts(emailaddress1='nobody@example.com')", {"lastname": "x"}, headers={"If-Match": "*"}
    )
    assert error(update_only) == (
        404,
        "0x80040217",
        "A record with the specified key values does not exist in contact entity",
    )
    assert web.delete("contacts(emailaddress1='o''hara@example.com')").status_code == 204
    assert new_id not in web.rows("contact")
    assert error(web.get("contacts(emailaddress1='o''hara@example.com')"))[:2] == (
        404,
        "0x80040217",
    )
    assert error(web.get("contacts(lastname='x')")) == (400, "0x80060888", U16)
    removed = web.delete(
        "EntityDefinitions(LogicalName='contact')/Keys(LogicalName='new_contactemail')"
    )
    assert removed.status_code == 204
    assert error(web.get(f"contacts(emailaddress1='{email}')")) == (400, "0x80060888", U16)


def test_the_seeded_email_key_is_off_by_default_and_a_switch_away(web: Api) -> None:
    email = contact_with_email(web)["emailaddress1"].strip()
    assert error(web.get(f"contacts(emailaddress1='{email}')"))[:2] == (400, "0x80060888")
    web.config(contact_email_key=True)
    assert web.get(f"contacts(emailaddress1='{email}')").status_code == 200
    (key,) = web.get("EntityDefinitions(LogicalName='contact')?$expand=Keys").json()["Keys"]
    assert key["LogicalName"] == "contact_emailaddress1"


def test_bad_key_definitions_are_refused(web: Api) -> None:
    path = "EntityDefinitions(LogicalName='contact')/Keys"
    assert error(web.post(path, {**EMAIL_KEY, "KeyAttributes": ["nosuch"]}))[:2] == (
        400,
        "0x80041103",
    )
    assert error(web.post(path, {"KeyAttributes": ["emailaddress1"]}))[:2] == (400, "0x80048d19")
    assert error(web.post(path, {**EMAIL_KEY, "KeyAttributes": ["donotemail"]}))[:2] == (
        400,
        "0x80040203",
    )
    web.post(path, EMAIL_KEY)
    assert error(web.post(path, EMAIL_KEY))[:2] == (400, "0x80040203")
    web.post("contacts", {"lastname": "A", "jobtitle": "Same"})
    web.post("contacts", {"lastname": "B", "jobtitle": "same"})
    clash = {**EMAIL_KEY, "SchemaName": "new_Title", "KeyAttributes": ["jobtitle"]}
    assert web.post(path, clash).status_code == 204
    title = web.get(f"{path}(LogicalName='new_title')?$select=EntityKeyIndexStatus").json()
    assert title["EntityKeyIndexStatus"] == "Failed"
    assert error(web.get("contacts(jobtitle='Same')"))[:2] == (400, "0x80060888")
    assert error(web.delete(f"{path}(LogicalName='nosuch')"))[:2] == (404, "0x80060888")
