"""Service document, $metadata, WhoAmI and EntityDefinitions generated from the schema."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from emulator.schema import SCHEMA
from tests.emulator.conftest import Api, error


def test_the_service_document_lists_the_entity_sets(web: Api) -> None:
    body = web.get("").json()
    assert body["@odata.context"] == f"{web.emulator.api_url}/$metadata"
    assert {s["name"] for s in body["value"]} == {
        "leads", "contacts", "accounts", "systemusers", "phonecalls", "tasks", "appointments",
        "activityparties", "opportunities", "emails", "businessunits", "teams", "queues",
        "queueitems", "workflows", "asyncoperations", "interactionforemails", "sdkmessages",
        "sdkmessagefilters", "savedqueries", "userqueries",
    }  # fmt: skip


def test_metadata_is_csdl_for_the_served_tables(web: Api) -> None:
    response = web.get("$metadata")
    assert response.headers["Content-Type"] == "application/xml"
    root = ET.fromstring(response.content)  # noqa: S314 - our own emulator's output
    edm = "{http://docs.oasis-open.org/odata/ns/edm}"
    lead = next(e for e in root.iter(f"{edm}EntityType") if e.get("Name") == "lead")
    properties = {p.get("Name"): p.get("Type") for p in lead.iter(f"{edm}Property")}
    assert properties["leadid"] == "Edm.Guid"
    assert properties["_parentcontactid_value"] == "Edm.Guid"
    assert properties["donotemail"] == "Edm.Boolean"
    navigations = {n.get("Name") for n in lead.iter(f"{edm}NavigationProperty")}
    assert {"parentcontactid", "parentaccountid", "ownerid"} <= navigations
    annotated = web.get("$metadata?annotations=true").text
    assert 'Term="Org.OData.Capabilities.V1.ChangeTracking"' in annotated


def test_whoami_is_a_get_only_function(web: Api) -> None:
    body = web.get("WhoAmI").json()
    assert body["@odata.context"].endswith("$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse")
    app_user = web.get(f"systemusers({body['UserId']})?$select=applicationid,fullname").json()
    assert app_user["fullname"] == "dvconnect Application"
    response = web.post("WhoAmI")
    assert error(response) == (
        404,
        "",
        f"No HTTP resource was found that matches the request URI '{web.emulator.api_url}/WhoAmI'.",
    )


def test_entity_definitions_come_from_the_schema(web: Api) -> None:
    body = web.get(
        "EntityDefinitions?$select=LogicalName,EntitySetName,PrimaryIdAttribute,"
        "PrimaryNameAttribute,ChangeTrackingEnabled"
    ).json()
    by_name = {item["LogicalName"]: item for item in body["value"]}
    assert set(by_name) == set(SCHEMA.by_name)
    assert by_name["lead"] == {
        "MetadataId": by_name["lead"]["MetadataId"],
        "LogicalName": "lead",
        "EntitySetName": "leads",
        "PrimaryIdAttribute": "leadid",
        "PrimaryNameAttribute": "fullname",
        "ChangeTrackingEnabled": True,
    }
    one = web.get(
        "EntityDefinitions(LogicalName='contact')?$select=LogicalName,CanChangeTrackingBeEnabled"
    )
    assert one.json()["CanChangeTrackingBeEnabled"]["Value"] is True
    filtered = web.get(
        "EntityDefinitions?$select=LogicalName&$filter=ChangeTrackingEnabled eq true"
    )
    untracked = {"email", "interactionforemail"}  # U55, U58
    assert {i["LogicalName"] for i in filtered.json()["value"]} == set(SCHEMA.by_name) - untracked
    enum = web.get(
        "EntityDefinitions?$select=LogicalName&$filter=OwnershipType eq "
        "Microsoft.Dynamics.CRM.OwnershipTypes'BusinessOwned'"
    ).json()["value"]
    assert [item["LogicalName"] for item in enum] == ["systemuser", "businessunit", "team"]
    managed = web.get(
        "EntityDefinitions?$select=LogicalName&$filter=CanChangeTrackingBeEnabled/Value eq true"
    )
    assert len(managed.json()["value"]) == len(SCHEMA.tables)


def test_metadata_filters_support_eq_only(web: Api) -> None:
    assert error(web.get("EntityDefinitions?$filter=contains(LogicalName,'lea')"))[:2] == (
        400,
        "0x80060888",
    )
    assert error(web.get("EntityDefinitions?$select=Nope"))[2] == (
        "Could not find a property named 'Nope' on type 'Microsoft.Dynamics.CRM.EntityMetadata'."
    )
    assert web.get("EntityDefinitions(LogicalName='nothing')").status_code == 404


def test_attributes_carry_types_lengths_and_required_levels(web: Api) -> None:
    body = web.get(
        "EntityDefinitions(LogicalName='lead')/Attributes"
        "?$select=LogicalName,AttributeType,MaxLength,RequiredLevel,IsValidForCreate"
    ).json()
    by_name = {item["LogicalName"]: item for item in body["value"]}
    assert {a.name for a in SCHEMA.by_name["lead"].attributes} == set(by_name)
    assert by_name["subject"]["MaxLength"] == 300
    assert by_name["subject"]["@odata.type"] == "#Microsoft.Dynamics.CRM.StringAttributeMetadata"
    assert by_name["mobilephone"]["MaxLength"] == 20
    assert by_name["lastname"]["RequiredLevel"]["Value"] == "ApplicationRequired"
    assert by_name["parentcontactid"]["AttributeType"] == "Lookup"
    assert "MaxLength" not in by_name["parentcontactid"]
    assert by_name["statecode"]["IsValidForCreate"] is False
    marketing = web.get(
        "EntityDefinitions(LogicalName='contact')/Attributes?$select=LogicalName"
        "&$filter=LogicalName eq 'marketingonly'"
    ).json()["value"]
    assert [item["LogicalName"] for item in marketing] == ["marketingonly"]


def test_option_sets_through_a_cast(web: Api) -> None:
    body = web.get(
        "EntityDefinitions(LogicalName='contact')/Attributes(LogicalName='accountrolecode')/"
        "Microsoft.Dynamics.CRM.PicklistAttributeMetadata?$select=LogicalName"
        "&$expand=OptionSet($select=Options),GlobalOptionSet($select=Options)"
    ).json()
    options = {
        o["Value"]: o["Label"]["UserLocalizedLabel"]["Label"] for o in body["OptionSet"]["Options"]
    }
    assert options == {1: "Decision Maker", 2: "Employee", 3: "Influencer"}
    assert body["GlobalOptionSet"] is None
    statuses = web.get(
        "EntityDefinitions(LogicalName='lead')/Attributes/Microsoft.Dynamics.CRM.StatusAttributeMetadata"
        "?$select=LogicalName&$expand=OptionSet"
    ).json()["value"]
    assert [s["LogicalName"] for s in statuses] == ["statuscode"]
    assert {o["Value"]: o["State"] for o in statuses[0]["OptionSet"]["Options"]}[3] == 1


def test_relationships_name_the_navigation_properties(web: Api) -> None:
    body = web.get(
        "EntityDefinitions(LogicalName='lead')/ManyToOneRelationships"
        "?$select=SchemaName,ReferencingAttribute,ReferencingEntityNavigationPropertyName,ReferencedEntity"
    ).json()["value"]
    parent = next(r for r in body if r["SchemaName"] == "lead_parent_contact")
    assert parent["ReferencingEntityNavigationPropertyName"] == "parentcontactid"
    assert parent["ReferencedEntity"] == "contact"
    customers = web.get(
        "EntityDefinitions(LogicalName='contact')/ManyToOneRelationships"
        "?$filter=ReferencingAttribute eq 'parentcustomerid'"
    ).json()["value"]
    assert {r["ReferencingEntityNavigationPropertyName"] for r in customers} == {
        "parentcustomerid_account",
        "parentcustomerid_contact",
    }


def test_journey_tables_have_their_object_type_codes_and_ownership(web: Api) -> None:
    body = web.get(
        "EntityDefinitions?$select=LogicalName,ObjectTypeCode,OwnershipType,IsActivity,"
        "PrimaryIdAttribute,EntitySetName"
    ).json()["value"]
    by_name = {item["LogicalName"]: item for item in body}
    expected = {
        "email": 4202, "team": 9, "businessunit": 10, "queue": 2020, "queueitem": 2029,
        "workflow": 4703, "asyncoperation": 4700, "interactionforemail": 9986,
        "sdkmessage": 4606, "sdkmessagefilter": 4607,
    }  # fmt: skip
    assert {name: by_name[name]["ObjectTypeCode"] for name in expected} == expected
    assert (by_name["email"]["PrimaryIdAttribute"], by_name["email"]["IsActivity"]) == (
        "activityid",
        True,
    )
    assert by_name["interactionforemail"]["EntitySetName"] == "interactionforemails"
    assert by_name["team"]["OwnershipType"] == "BusinessOwned"


def test_email_attributes_come_from_the_schema(web: Api) -> None:
    body = web.get(
        "EntityDefinitions(LogicalName='email')/Attributes"
        "?$select=LogicalName,AttributeType,MaxLength,IsValidForCreate,IsValidForUpdate,Targets"
    ).json()["value"]
    by_name = {item["LogicalName"]: item for item in body}
    assert by_name["subject"]["MaxLength"] == 800
    assert by_name["description"]["MaxLength"] == 1_073_741_823
    assert by_name["ownerid"]["AttributeType"] == "Owner"
    assert by_name["ownerid"]["Targets"] == ["systemuser", "team"]
    read_only = {"senton", "isemailfollowed", "replycount", "emailsender", "owninguser"}
    assert {n for n in read_only if by_name[n]["IsValidForCreate"]} == set()
    assert by_name["opencount"]["IsValidForUpdate"] is True
    regarding = web.get(
        "EntityDefinitions(LogicalName='email')/ManyToOneRelationships"
        "?$select=ReferencingEntityNavigationPropertyName,ReferencedEntity"
        "&$filter=ReferencingAttribute eq 'regardingobjectid'"
    ).json()["value"]
    assert {
        r["ReferencedEntity"]: r["ReferencingEntityNavigationPropertyName"] for r in regarding
    } == {
        "lead": "regardingobjectid_lead_email",
        "contact": "regardingobjectid_contact_email",
        "account": "regardingobjectid_account_email",
    }
    user = web.get(
        "EntityDefinitions(LogicalName='systemuser')/Attributes(LogicalName='emailrouteraccessapproval')"
        "?$select=IsValidForCreate,IsValidForUpdate"
    ).json()
    assert (user["IsValidForCreate"], user["IsValidForUpdate"]) == (False, True)


def test_metadata_declares_ownerid_as_a_principal(web: Api) -> None:
    root = ET.fromstring(web.get("$metadata").content)  # noqa: S314 - our own emulator's output
    edm = "{http://docs.oasis-open.org/odata/ns/edm}"
    types = {e.get("Name"): e for e in root.iter(f"{edm}EntityType")}
    assert types["principal"].get("Abstract") == "true"
    assert types["team"].get("BaseType") == "mscrm.principal"
    email_navigations = {
        n.get("Name"): n.get("Type") for n in types["email"].iter(f"{edm}NavigationProperty")
    }
    assert email_navigations["ownerid"] == "mscrm.principal"
    assert email_navigations["regardingobjectid_lead_email"] == "mscrm.lead"
    assert email_navigations["email_activity_parties"] == "Collection(mscrm.activityparty)"
    for entity in types.values():
        names = [n.get("Name") for n in entity.iter(f"{edm}NavigationProperty")]
        assert len(names) == len(set(names)), entity.get("Name")


def test_every_documented_entity_property_can_be_selected(web: Api) -> None:
    names = (
        "LogicalName,Description,HasActivities,HasNotes,PrimaryImageAttribute,"
        "ChangeTrackingEnabled,IsValidForAdvancedFind,IsCustomizable,OwnershipType,TableType"
    )
    body = web.get(f"EntityDefinitions(LogicalName='contact')?$select={names}").json()
    assert set(body) == {"@odata.context", "MetadataId", *names.split(",")}
    assert body["Description"]["UserLocalizedLabel"]["Label"]
    assert (body["HasActivities"], body["HasNotes"], body["PrimaryImageAttribute"]) == (
        True,
        True,
        "entityimage",
    )
    assert body["IsCustomizable"]["Value"] is True
    assert error(web.get("EntityDefinitions(LogicalName='contact')?$select=NoSuch"))[:2] == (
        400,
        "0x80060888",
    )


def test_relationship_definitions_by_schema_name_and_type(web: Api) -> None:
    one = web.get(
        "RelationshipDefinitions/Microsoft.Dynamics.CRM.OneToManyRelationshipMetadata"
        "?$filter=SchemaName eq 'lead_parent_contact'"
        "&$select=SchemaName,ReferencingAttribute,ReferencingEntityNavigationPropertyName"
    ).json()
    assert one["value"] == [
        {
            "MetadataId": one["value"][0]["MetadataId"],
            "SchemaName": "lead_parent_contact",
            "ReferencingAttribute": "parentcontactid",
            "ReferencingEntityNavigationPropertyName": "parentcontactid",
        }
    ]
    single = web.get("RelationshipDefinitions(SchemaName='account_parent_account')").json()
    assert (single["ReferencedEntity"], single["IsHierarchical"]) == ("account", True)
    everything = web.get("RelationshipDefinitions?$select=SchemaName").json()["value"]
    assert {item["@odata.type"] for item in everything} == {
        "#Microsoft.Dynamics.CRM.OneToManyRelationshipMetadata"
    }
    assert len({item["SchemaName"] for item in everything}) == len(everything)
    many = web.get("RelationshipDefinitions/Microsoft.Dynamics.CRM.ManyToManyRelationshipMetadata")
    assert many.json()["value"] == []
    assert error(web.get("RelationshipDefinitions(SchemaName='nosuch')"))[:2] == (404, "0x80060888")
    expanded = web.get(
        "EntityDefinitions(LogicalName='lead')?$select=LogicalName&$expand="
        "ManyToOneRelationships($select=SchemaName),ManyToManyRelationships,Keys"
    ).json()
    assert "lead_parent_contact" in {r["SchemaName"] for r in expanded["ManyToOneRelationships"]}
    assert (expanded["ManyToManyRelationships"], expanded["Keys"]) == ([], [])
    assert (
        web.get("EntityDefinitions(LogicalName='lead')/ManyToManyRelationships").json()["value"]
        == []
    )
