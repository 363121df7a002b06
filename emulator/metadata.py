"""Service-level endpoints generated from the schema: service document, `$metadata`, WhoAmI,
EntityDefinitions and RelationshipDefinitions (§2.4, §7.5, §15).

EntityDefinitions serves the collection, one table by `LogicalName` or MetadataId with the
documented EntityMetadata properties, and its `Attributes` (optionally cast to a derived type
such as `Microsoft.Dynamics.CRM.PicklistAttributeMetadata`, with `$expand=OptionSet`), `Keys`
(EntityKeyMetadata; POST defines an alternate key, DELETE removes one), `ManyToOneRelationships`,
`OneToManyRelationships` and `ManyToManyRelationships` (none among the served tables), each also
through `$expand`. RelationshipDefinitions lists every relationship, finds one by `SchemaName`,
and casts to `OneToManyRelationshipMetadata` / `ManyToManyRelationshipMetadata`. Metadata queries
take `$select`, `$expand` and a `$filter` limited to `eq`/`ne` with `and`/`or`/`not` over
properties, `X/Value` managed properties and enum literals (U38); they are not paged. Items are
plain dicts built in a fixed key order.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from odata_query import ast

from emulator import errors, keys
from emulator.context import BUSINESS_UNIT_ID, EMULATOR_NAMESPACE, ORGANIZATION_ID, Context
from emulator.keys import Key
from emulator.query import split_top
from emulator.reads import query_options
from emulator.schema import Attribute, AttributeType, Table
from emulator.wire import Request, Response, json_response

PRINCIPALS = frozenset({"systemuser", "team"})
ENTITY_TYPE = "Microsoft.Dynamics.CRM.EntityMetadata"
ATTRIBUTE_TYPE = "Microsoft.Dynamics.CRM.AttributeMetadata"
RELATIONSHIP_TYPE = "Microsoft.Dynamics.CRM.RelationshipMetadataBase"
_ENUM_LITERAL = re.compile(r"Microsoft\.Dynamics\.CRM\.\w+'([^']*)'")
_PATH = re.compile(
    r"^EntityDefinitions(?:\((?P<key>[^)]*)\))?"
    r"(?:/(?P<nav>Attributes|Keys|ManyToOneRelationships|OneToManyRelationships"
    r"|ManyToManyRelationships)"
    r"(?:\((?P<attribute>[^)]*)\))?(?:/Microsoft\.Dynamics\.CRM\.(?P<cast>\w+))?)?$"
)
_METADATA_KINDS = {
    AttributeType.STRING: "String",
    AttributeType.MEMO: "Memo",
    AttributeType.INTEGER: "Integer",
    AttributeType.BIGINT: "BigInt",
    AttributeType.BOOLEAN: "Boolean",
    AttributeType.DATETIME: "DateTime",
    AttributeType.LOOKUP: "Lookup",
    AttributeType.CUSTOMER: "Lookup",
    AttributeType.OWNER: "Lookup",
    AttributeType.PICKLIST: "Picklist",
    AttributeType.STATE: "State",
    AttributeType.STATUS: "Status",
    AttributeType.UNIQUEIDENTIFIER: "UniqueIdentifier",
    AttributeType.ENTITYNAME: "EntityName",
}
ATTRIBUTE_PROPERTIES = (
    "MetadataId", "LogicalName", "SchemaName", "EntityLogicalName", "AttributeType",
    "AttributeTypeName", "DisplayName", "RequiredLevel", "IsValidForCreate", "IsValidForUpdate",
    "IsValidForRead", "IsPrimaryId", "IsPrimaryName", "IsCustomAttribute", "AttributeOf",
    "MaxLength", "Format", "FormatName", "MinValue", "MaxValue", "DateTimeBehavior", "Targets",
    "DefaultValue", "DefaultFormValue",
)  # fmt: skip
ENTITY_PROPERTIES = (
    "MetadataId", "LogicalName", "SchemaName", "EntitySetName", "LogicalCollectionName",
    "CollectionSchemaName", "ObjectTypeCode", "PrimaryIdAttribute", "PrimaryNameAttribute",
    "PrimaryImageAttribute", "OwnershipType", "IsActivity", "IsActivityParty", "IsCustomEntity",
    "ChangeTrackingEnabled", "CanChangeTrackingBeEnabled", "IsOptimisticConcurrencyEnabled",
    "DisplayName", "DisplayCollectionName", "Description", "HasActivities", "HasNotes",
    "HasEmailAddresses", "HasFeedback", "HasChanged", "ActivityTypeMask", "AutoCreateAccessTeams",
    "AutoRouteToOwnerQueue", "CanBeInCustomEntityAssociation", "CanBeInManyToMany",
    "CanBePrimaryEntityInRelationship", "CanBeRelatedEntityInRelationship",
    "CanChangeHierarchicalRelationship", "CanCreateAttributes", "CanCreateCharts",
    "CanCreateForms", "CanCreateViews", "CanEnableSyncToExternalSearchIndex",
    "CanModifyAdditionalSettings", "CanTriggerWorkflow", "CreatedOn", "ModifiedOn",
    "DataProviderId", "DataSourceId", "DaysSinceRecordLastModified", "EnforceStateTransitions",
    "EntityColor", "EntityHelpUrl", "EntityHelpUrlEnabled", "ExternalCollectionName",
    "ExternalName", "IconLargeName", "IconMediumName", "IconSmallName", "IconVectorName",
    "IntroducedVersion", "IsAIRUpdated", "IsAuditEnabled", "IsAvailableOffline",
    "IsBPFEntity", "IsBusinessProcessEnabled", "IsChildEntity", "IsConnectionsEnabled",
    "IsCustomizable", "IsDocumentManagementEnabled", "IsDocumentRecommendationsEnabled",
    "IsDuplicateDetectionEnabled", "IsEnabledForCharts", "IsEnabledForExternalChannels",
    "IsEnabledForTrace", "IsImportable", "IsInteractionCentricEnabled", "IsIntersect",
    "IsKnowledgeManagementEnabled", "IsLogicalEntity", "IsMailMergeEnabled", "IsManaged",
    "IsMappable", "IsMSTeamsIntegrationEnabled", "IsOfflineInMobileClient",
    "IsOneNoteIntegrationEnabled", "IsPrivate", "IsQuickCreateEnabled", "IsReadingPaneEnabled",
    "IsReadOnlyInMobileClient", "IsRenameable", "IsRetentionEnabled", "IsRetrieveAuditEnabled",
    "IsRetrieveMultipleAuditEnabled", "IsSLAEnabled", "IsSolutionAware", "IsStateModelAware",
    "IsValidForAdvancedFind", "IsValidForQueue", "IsVisibleInMobile", "IsVisibleInMobileClient",
    "MobileOfflineFilters", "OwnerId", "OwnerIdType", "OwningBusinessUnit",
    "RecurrenceBaseEntityLogicalName", "ReportViewName", "SettingOf", "SyncToExternalSearchIndex",
    "TableType", "UsesBusinessDataLabelTable",
)  # fmt: skip
RELATIONSHIP_PROPERTIES = (
    "MetadataId", "SchemaName", "RelationshipType", "ReferencedEntity", "ReferencedAttribute",
    "ReferencingEntity", "ReferencingAttribute", "ReferencedEntityNavigationPropertyName",
    "ReferencingEntityNavigationPropertyName", "CascadeConfiguration", "IsCustomRelationship",
    "IsHierarchical", "IsValidForAdvancedFind", "IsManaged", "IsCustomizable", "SecurityTypes",
    "IntroducedVersion", "HasChanged", "RelationshipBehavior", "AssociatedMenuConfiguration",
    "Entity1LogicalName", "Entity2LogicalName", "IntersectEntityName",
    "Entity1IntersectAttribute", "Entity2IntersectAttribute",
    "Entity1NavigationPropertyName", "Entity2NavigationPropertyName",
)  # fmt: skip
KEY_PROPERTIES = (
    "MetadataId", "LogicalName", "SchemaName", "DisplayName", "EntityLogicalName",
    "KeyAttributes", "EntityKeyIndexStatus", "IsManaged", "IsCustomizable", "IntroducedVersion",
    "IsExportKey", "IsSecondaryKey", "IsSynchronous", "HasChanged",
)  # fmt: skip
KEY_TYPE = "Microsoft.Dynamics.CRM.EntityKeyMetadata"
ONE_TO_MANY = "OneToManyRelationshipMetadata"
MANY_TO_MANY = "ManyToManyRelationshipMetadata"
NAVIGATIONS = (
    "Attributes", "Keys", "ManyToOneRelationships", "OneToManyRelationships",
    "ManyToManyRelationships",
)  # fmt: skip


def _id(*parts: str) -> str:
    return str(uuid.uuid5(EMULATOR_NAMESPACE, ":".join(parts)))


def _label(text: str, owner: str) -> dict[str, Any]:
    localized = {
        "Label": text,
        "LanguageCode": 1033,
        "IsManaged": True,
        "MetadataId": _id("label", owner),
        "HasChanged": None,
    }
    return {"LocalizedLabels": [localized], "UserLocalizedLabel": localized}


# -- item builders ---------------------------------------------------------------------------


def entity_item(ctx: Context, table: Table) -> dict[str, Any]:
    return {
        "MetadataId": _id("entity", table.name),
        "LogicalName": table.name,
        "SchemaName": table.schema_name,
        "EntitySetName": table.entity_set,
        "LogicalCollectionName": table.entity_set,
        "CollectionSchemaName": f"{table.schema_name}s",
        "ObjectTypeCode": table.object_type_code,
        "PrimaryIdAttribute": table.primary_id,
        "PrimaryNameAttribute": table.primary_name,
        "OwnershipType": table.ownership,
        "IsActivity": table.is_activity,
        "IsCustomEntity": False,
        "ChangeTrackingEnabled": ctx.config.tracked(table.name),
        "CanChangeTrackingBeEnabled": {
            "Value": True,
            "CanBeChanged": False,
            "ManagedPropertyLogicalName": "canchangetrackingbeenabled",
        },
        "IsOptimisticConcurrencyEnabled": True,
        "DisplayName": _label(table.display, f"{table.name}.display"),
        "DisplayCollectionName": _label(table.display_plural, f"{table.name}.plural"),
        **_documented(table),
    }


IMAGED = ("lead", "contact", "account", "systemuser")  # tables with an entityimage column


def _managed(value: bool, name: str) -> dict[str, Any]:
    return {"Value": value, "CanBeChanged": False, "ManagedPropertyLogicalName": name}


def _documented(table: Table) -> dict[str, Any]:
    """The other documented EntityMetadata properties, with the values of a standard table."""
    standard = table.name in ("lead", "contact", "account", "opportunity")
    with_activities = standard or table.name == "systemuser"
    managed = {
        name: _managed(True, name.lower())
        for name in (
            "CanBeInCustomEntityAssociation", "CanBeInManyToMany",
            "CanBePrimaryEntityInRelationship", "CanBeRelatedEntityInRelationship",
            "CanChangeHierarchicalRelationship",
            "CanCreateAttributes", "CanCreateCharts", "CanCreateForms", "CanCreateViews",
            "CanModifyAdditionalSettings", "IsAuditEnabled", "IsConnectionsEnabled",
            "IsCustomizable", "IsDuplicateDetectionEnabled", "IsMailMergeEnabled",
            "IsMappable", "IsOfflineInMobileClient", "IsReadOnlyInMobileClient",
            "IsRenameable", "IsValidForQueue", "IsVisibleInMobile", "IsVisibleInMobileClient",
        )
    }  # fmt: skip
    return {
        "Description": _label(f"A {table.display.lower()} record.", f"{table.name}.description"),
        "PrimaryImageAttribute": "entityimage"
        if table.name in ("lead", "contact", "account", "systemuser")
        else None,
        "IsActivityParty": table.name in ("lead", "contact", "account", "systemuser"),
        "HasActivities": with_activities,
        "HasNotes": with_activities or table.is_activity,
        "HasEmailAddresses": any(a.format == "Email" for a in table.attributes),
        "HasFeedback": False,
        "HasChanged": None,
        "ActivityTypeMask": 1 if table.is_activity else 0,
        "AutoCreateAccessTeams": False,
        "AutoRouteToOwnerQueue": False,
        **managed,
        "CanEnableSyncToExternalSearchIndex": _managed(True, "canenablesynctoexternalsearchindex"),
        "CanTriggerWorkflow": True,
        "CreatedOn": "1900-01-01T00:00:00Z",
        "ModifiedOn": "1900-01-01T00:00:00Z",
        "DataProviderId": None,
        "DataSourceId": None,
        "DaysSinceRecordLastModified": 0,
        "EnforceStateTransitions": False,
        "EntityColor": None,
        "EntityHelpUrl": None,
        "EntityHelpUrlEnabled": False,
        "ExternalCollectionName": None,
        "ExternalName": None,
        "IconLargeName": None,
        "IconMediumName": None,
        "IconSmallName": None,
        "IconVectorName": None,
        "IntroducedVersion": "5.0.0.0",
        "IsAIRUpdated": False,
        "IsAvailableOffline": standard or table.is_activity,
        "IsBPFEntity": False,
        "IsBusinessProcessEnabled": standard,
        "IsChildEntity": table.is_party,
        "IsDocumentManagementEnabled": False,
        "IsDocumentRecommendationsEnabled": False,
        "IsEnabledForCharts": True,
        "IsEnabledForExternalChannels": False,
        "IsEnabledForTrace": False,
        "IsImportable": True,
        "IsInteractionCentricEnabled": False,
        "IsIntersect": False,
        "IsKnowledgeManagementEnabled": False,
        "IsLogicalEntity": False,
        "IsManaged": True,
        "IsMSTeamsIntegrationEnabled": False,
        "IsOneNoteIntegrationEnabled": False,
        "IsPrivate": False,
        "IsQuickCreateEnabled": standard or table.is_activity,
        "IsReadingPaneEnabled": True,
        "IsRetentionEnabled": False,
        "IsRetrieveAuditEnabled": False,
        "IsRetrieveMultipleAuditEnabled": False,
        "IsSLAEnabled": False,
        "IsSolutionAware": False,
        "IsStateModelAware": any(a.name == "statecode" for a in table.attributes),
        "IsValidForAdvancedFind": not table.is_party,
        "MobileOfflineFilters": None,
        "OwnerId": None,
        "OwnerIdType": 8,
        "OwningBusinessUnit": None,
        "RecurrenceBaseEntityLogicalName": None,
        "ReportViewName": f"Filtered{table.schema_name}",
        "SettingOf": None,
        "SyncToExternalSearchIndex": standard,
        "TableType": "Standard",
        "UsesBusinessDataLabelTable": False,
    }


def _kind(attribute: Attribute) -> str:
    return _METADATA_KINDS[attribute.type]


def option_set(table: Table, attribute: Attribute) -> dict[str, Any] | None:
    owner = f"{table.name}.{attribute.name}"
    if attribute.type is AttributeType.BOOLEAN:
        true, false = attribute.labels
        return {
            "MetadataId": _id("optionset", owner),
            "Name": f"{table.name}_{attribute.name}",
            "OptionSetType": "Boolean",
            "IsGlobal": False,
            "TrueOption": {"Value": 1, "Label": _label(true, f"{owner}.1")},
            "FalseOption": {"Value": 0, "Label": _label(false, f"{owner}.0")},
        }
    if not attribute.is_choice:
        return None
    options = []
    for option in attribute.options:
        item: dict[str, Any] = {
            "Value": option.value,
            "Label": _label(option.label, f"{owner}.{option.value}"),
        }
        if option.state is not None:
            item["State"] = option.state
        if option.default_status is not None:
            item["DefaultStatus"] = option.default_status
            item["InvariantName"] = option.label
        options.append(item)
    return {
        "MetadataId": _id("optionset", owner),
        "Name": f"{table.name}_{attribute.name}",
        "OptionSetType": _kind(attribute),
        "IsGlobal": False,
        "Options": options,
    }


def attribute_item(table: Table, attribute: Attribute) -> dict[str, Any]:
    kind = _kind(attribute)
    item: dict[str, Any] = {
        "@odata.type": f"#Microsoft.Dynamics.CRM.{kind}AttributeMetadata",
        "MetadataId": _id("attribute", table.name, attribute.name),
        "LogicalName": attribute.name,
        "SchemaName": attribute.name[:1].upper() + attribute.name[1:],
        "EntityLogicalName": table.name,
        "AttributeType": attribute.type.value,
        "AttributeTypeName": {"Value": f"{attribute.type.value}Type"},
        "DisplayName": _label(attribute.display, f"{table.name}.{attribute.name}"),
        "RequiredLevel": {
            "Value": attribute.required.value,
            "CanBeChanged": attribute.name != table.primary_id,
            "ManagedPropertyLogicalName": "canmodifyrequirementlevelsettings",
        },
        "IsValidForCreate": attribute.create,
        "IsValidForUpdate": attribute.update,
        "IsValidForRead": True,
        "IsPrimaryId": attribute.name == table.primary_id,
        "IsPrimaryName": attribute.name == table.primary_name,
        "IsCustomAttribute": False,
        "AttributeOf": None,
    }
    if attribute.is_text:
        item["MaxLength"] = attribute.max_length
        item["Format"] = attribute.format
        item["FormatName"] = {"Value": attribute.format}
    elif attribute.type is AttributeType.INTEGER:
        item["MinValue"] = attribute.min_value
        item["MaxValue"] = attribute.max_value
        item["Format"] = "None"
    elif attribute.type is AttributeType.DATETIME:
        item["Format"] = "DateOnly" if attribute.date_only else "DateAndTime"
        item["DateTimeBehavior"] = {"Value": "DateOnly" if attribute.date_only else "UserLocal"}
    elif attribute.is_lookup:
        item["Targets"] = [target.table for target in attribute.targets]
    elif attribute.type is AttributeType.BOOLEAN:
        item["DefaultValue"] = bool(attribute.default)
    elif attribute.type is AttributeType.PICKLIST:
        item["DefaultFormValue"] = attribute.default if attribute.default is not None else -1
    return item


def _relationship(
    ctx: Context, table: Table, attribute: Attribute, target_index: int
) -> dict[str, Any]:
    target = attribute.targets[target_index]
    referenced = ctx.schema.by_name.get(target.table)
    shared = sum(t.relationship == target.relationship for t in attribute.targets) > 1
    return {
        "MetadataId": _id("relationship", target.relationship, *([target.table] if shared else [])),
        "SchemaName": target.relationship,
        "RelationshipType": "OneToManyRelationship",
        "ReferencedEntity": target.table,
        "ReferencedAttribute": referenced.primary_id if referenced else f"{target.table}id",
        "ReferencingEntity": table.name,
        "ReferencingAttribute": attribute.name,
        "ReferencedEntityNavigationPropertyName": target.relationship,
        "ReferencingEntityNavigationPropertyName": target.navigation,
        "CascadeConfiguration": {
            "Assign": "Cascade" if target.assign else "NoCascade",
            "Delete": target.on_delete.value,
        },
        "IsCustomRelationship": False,
        "IsHierarchical": target.table == table.name and table.name == "account",
        "IsValidForAdvancedFind": True,
        "IsManaged": True,
        "IsCustomizable": _managed(True, "iscustomizable"),
        "SecurityTypes": "Append",
        "IntroducedVersion": "5.0.0.0",
        "HasChanged": None,
        "RelationshipBehavior": 0,
    }


def many_to_one(ctx: Context, table: Table) -> list[dict[str, Any]]:
    return [
        _relationship(ctx, table, attribute, index)
        for attribute in table.attributes
        for index in range(len(attribute.targets))
    ]


def one_to_many(ctx: Context, table: Table) -> list[dict[str, Any]]:
    return [
        _relationship(
            ctx,
            reference.table,
            reference.attribute,
            reference.attribute.targets.index(reference.target),
        )
        for reference in ctx.schema.references_to(table.name)
    ]


# -- query options over item lists -----------------------------------------------------------


def _expansions(text: str | None, allowed: Iterable[str]) -> dict[str, dict[str, str]]:
    """`$expand=A($select=x;$filter=y),B` → {"A": {"$select": "x", "$filter": "y"}, "B": {}}."""
    expansions: dict[str, dict[str, str]] = {}
    for part in split_top(text or "", ","):
        match = re.match(r"^(\w+)(?:\((.*)\))?$", part)
        if match is None or match.group(1) not in allowed:
            raise errors.bad_query(f"The $expand option '{part}' is not supported here.")
        inner: dict[str, str] = {}
        for option in split_top(match.group(2) or "", ";"):
            name, _, value = option.partition("=")
            if name not in ("$select", "$filter"):
                raise errors.bad_query(
                    f"The query option '{name}' is not supported inside $expand."
                )
            inner[name] = value
        expansions[match.group(1)] = inner
    return expansions


def _predicate(
    ctx: Context, text: str, properties: Iterable[str], type_name: str
) -> Callable[[dict[str, Any]], bool]:
    """A metadata `$filter` as a Python predicate over items (U38: eq/ne, and/or/not)."""
    tree = ctx.compiler.parse(_ENUM_LITERAL.sub(r"'\1'", text))
    known = set(properties)

    def path(node: ast._Node) -> Callable[[dict[str, Any]], Any]:
        if isinstance(node, ast.Identifier) and not node.namespace:
            if node.name not in known:
                raise errors.unknown_property(type_name, node.name)
            return lambda item: item.get(node.name)
        if isinstance(node, ast.Attribute) and isinstance(node.owner, ast.Identifier):
            name = node.owner.name
            if name not in known:
                raise errors.unknown_property(type_name, name)
            return lambda item: (item.get(name) or {}).get(node.attr)
        raise errors.bad_query("Metadata filters compare a property with a literal.")

    def literal(node: ast._Node) -> Any:
        if isinstance(node, ast.Null | ast.String | ast.Integer | ast.Boolean | ast.GUID):
            return node.py_val if not isinstance(node, ast.GUID) else node.val.lower()
        raise errors.bad_query("Metadata filters compare a property with a literal.")

    def same(left: Any, right: Any) -> bool:
        if isinstance(left, str) and isinstance(right, str):
            return left.casefold() == right.casefold()
        return bool(left == right)

    def build(node: ast._Node) -> Callable[[dict[str, Any]], bool]:
        if isinstance(node, ast.BoolOp):
            left, right = build(node.left), build(node.right)
            if isinstance(node.op, ast.And):
                return lambda item: left(item) and right(item)
            return lambda item: left(item) or right(item)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = build(node.operand)
            return lambda item: not inner(item)
        if isinstance(node, ast.Compare) and isinstance(node.comparator, ast.Eq | ast.NotEq):
            getter, value = path(node.left), literal(node.right)
            if isinstance(node.comparator, ast.Eq):
                return lambda item: same(getter(item), value)
            return lambda item: not same(getter(item), value)
        if isinstance(node, ast.Call):
            raise errors.bad_query(
                f"The function '{node.func.full_name()}' is not supported in metadata queries."
            )
        raise errors.bad_query("Only eq and ne comparisons are supported in metadata queries.")

    return build(tree)


def _shape(
    ctx: Context,
    items: list[dict[str, Any]],
    options: dict[str, str],
    properties: tuple[str, ...],
    type_name: str,
) -> list[dict[str, Any]]:
    """Apply `$filter` and `$select` (MetadataId and @odata.type always kept)."""
    if "$filter" in options:
        keep = _predicate(ctx, options["$filter"], properties, type_name)
        items = [item for item in items if keep(item)]
    if options.get("$select"):
        chosen = [name.strip() for name in options["$select"].split(",") if name.strip()]
        for name in chosen:
            if name not in properties:
                raise errors.unknown_property(type_name, name)
        wanted = {*chosen, "MetadataId", "@odata.type"}
        items = [{k: v for k, v in item.items() if k in wanted} for item in items]
    return items


def _cast(table: Table, cast: str | None) -> list[Attribute]:
    return [a for a in table.attributes if cast is None or f"{_kind(a)}AttributeMetadata" == cast]


def _attributes(
    ctx: Context, table: Table, options: dict[str, str], chosen: list[Attribute]
) -> list[dict[str, Any]]:
    expand = _expansions(options.get("$expand"), ("OptionSet", "GlobalOptionSet"))
    by_id = {_id("attribute", table.name, a.name): a for a in chosen}
    items = [attribute_item(table, a) for a in chosen]
    items = _shape(ctx, items, options, ATTRIBUTE_PROPERTIES, ATTRIBUTE_TYPE)
    for item in items:
        attribute = by_id[item["MetadataId"]]
        if "OptionSet" in expand:
            item["OptionSet"] = option_set(table, attribute)
        if "GlobalOptionSet" in expand:
            item["GlobalOptionSet"] = None
    return items


def key_item(key: Key) -> dict[str, Any]:
    """EntityKeyMetadata of an alternate key (§7.5)."""
    return {
        "MetadataId": key.metadata_id,
        "LogicalName": key.logical_name,
        "SchemaName": key.schema_name,
        "DisplayName": _label(key.display, f"key.{key.table}.{key.logical_name}"),
        "EntityLogicalName": key.table,
        "KeyAttributes": list(key.attributes),
        "EntityKeyIndexStatus": key.status,
        "IsManaged": False,
        "IsCustomizable": _managed(True, "iscustomizable"),
        "IntroducedVersion": "1.0",
        "IsExportKey": False,
        "IsSecondaryKey": False,
        "IsSynchronous": False,
        "HasChanged": None,
    }


def _navigation(
    ctx: Context, table: Table, name: str, options: dict[str, str]
) -> list[dict[str, Any]]:
    """The items of one collection-valued navigation of an EntityMetadata, shaped by `options`."""
    if name == "Attributes":
        return _attributes(ctx, table, options, list(table.attributes))
    if name == "Keys":
        items = [key_item(k) for k in keys.defined(ctx, table)]
        return _shape(ctx, items, options, KEY_PROPERTIES, KEY_TYPE)
    if name == "ManyToManyRelationships":
        relationships: list[dict[str, Any]] = []  # no served table has an N:N relationship
    elif name == "ManyToOneRelationships":
        relationships = many_to_one(ctx, table)
    else:
        relationships = one_to_many(ctx, table)
    return _shape(ctx, relationships, options, RELATIONSHIP_PROPERTIES, RELATIONSHIP_TYPE)


def _entities(ctx: Context, tables: list[Table], options: dict[str, str]) -> list[dict[str, Any]]:
    expand = _expansions(options.get("$expand"), NAVIGATIONS)
    items = _shape(
        ctx, [entity_item(ctx, t) for t in tables], options, ENTITY_PROPERTIES, ENTITY_TYPE
    )
    by_id = {_id("entity", t.name): t for t in tables}
    for item in items:
        for name, inner in expand.items():
            item[name] = _navigation(ctx, by_id[item["MetadataId"]], name, inner)
    return items


def _find_table(ctx: Context, key: str) -> Table:
    match = re.match(r"^\s*LogicalName\s*=\s*'([^']*)'\s*$", key)
    if match:
        name = match.group(1)
        table = ctx.schema.by_name.get(name)
    else:
        name = key.strip()
        table = next((t for t in ctx.schema.tables if _id("entity", t.name) == name.lower()), None)
    if table is None:
        raise errors.ApiError(404, errors.ODATA_ERROR, f"Could not find entity with name '{name}'.")
    return table


def entity_definitions(ctx: Context, request: Request, path: str) -> Response:
    """GET EntityDefinitions…; POST …/Keys and DELETE …/Keys(…) define and remove alternate keys."""
    match = _PATH.match(path)
    if match is None:
        raise errors.resource_not_found(path.split("/")[-1])
    nav, sub, method = match.group("nav"), match.group("attribute"), request.method
    if method != "GET" and not (
        nav == "Keys"
        and not match.group("cast")
        and (method, sub is None) in (("POST", True), ("DELETE", False))
    ):
        raise errors.ApiError(
            405,
            errors.ODATA_ERROR,
            f"The requested resource does not support http method '{method}'.",
        )
    options = query_options(request, frozenset({"$select", "$filter", "$expand"}))
    root = f"{ctx.api_root}$metadata#"
    if match.group("key") is None:
        if nav:
            raise errors.resource_not_found(nav)
        items = _entities(ctx, list(ctx.schema.tables), options)
        return json_response(200, {"@odata.context": f"{root}EntityDefinitions", "value": items})
    table = _find_table(ctx, match.group("key"))
    owner = f"EntityDefinitions(LogicalName='{table.name}')"
    if nav is None:
        item = _entities(ctx, [table], options)[0]
        return json_response(200, {"@odata.context": f"{root}EntityDefinitions/$entity", **item})
    if nav == "Keys":
        return _keys(ctx, request, table, sub, options)
    if nav != "Attributes":
        if sub or match.group("cast"):
            raise errors.resource_not_found(path.split("/")[-1])
        items = _navigation(ctx, table, nav, options)
        return json_response(200, {"@odata.context": f"{root}{owner}/{nav}", "value": items})
    cast = match.group("cast")
    if cast is not None and cast not in {f"{k}AttributeMetadata" for k in _METADATA_KINDS.values()}:
        raise errors.resource_not_found(f"Microsoft.Dynamics.CRM.{cast}")
    chosen = _cast(table, cast)
    if sub is None:
        items = _attributes(ctx, table, options, chosen)
        return json_response(200, {"@odata.context": f"{root}{owner}/Attributes", "value": items})
    name_match = _LOGICAL_NAME.match(sub)
    wanted = name_match.group(1) if name_match else sub.strip().lower()
    found = [a for a in chosen if wanted in (a.name, _id("attribute", table.name, a.name))]
    if not found:
        raise errors.ApiError(
            404,
            errors.ODATA_ERROR,
            f"Could not find attribute '{wanted}' on entity '{table.name}'.",
        )
    items = _attributes(ctx, table, options, found)
    context = f"{root}{owner}/Attributes/$entity"
    return json_response(200, {"@odata.context": context, **(items[0] if items else {})})


def _keys(
    ctx: Context, request: Request, table: Table, sub: str | None, options: dict[str, str]
) -> Response:
    """`…/Keys`: list (GET), define (POST); `…/Keys(LogicalName='x')`: read (GET), remove
    (DELETE)."""
    root = f"{ctx.api_root}$metadata#EntityDefinitions(LogicalName='{table.name}')/Keys"
    if request.method == "POST":
        try:
            body = request.json()
        except (UnicodeDecodeError, ValueError):
            raise errors.payload_error(
                "Invalid JSON. The request body is not a valid JSON document."
            ) from None
        key = keys.create(ctx, table, body)
        url = (
            f"{ctx.api_root}EntityDefinitions({_id('entity', table.name)})/Keys({key.metadata_id})"
        )
        return Response(204, (("OData-EntityId", url),))
    if sub is None:
        items = _navigation(ctx, table, "Keys", options)
        return json_response(200, {"@odata.context": root, "value": items})
    name_match = _LOGICAL_NAME.match(sub)
    wanted = name_match.group(1) if name_match else sub.strip().lower()
    found = [k for k in keys.defined(ctx, table) if wanted in (k.logical_name, k.metadata_id)]
    if not found:
        raise errors.ApiError(
            404, errors.ODATA_ERROR, f"Could not find key '{wanted}' on entity '{table.name}'."
        )
    if request.method == "DELETE":
        keys.delete(ctx, table, found[0].logical_name)
        return Response(204)
    item = _shape(ctx, [key_item(found[0])], options, KEY_PROPERTIES, KEY_TYPE)[0]
    return json_response(200, {"@odata.context": f"{root}/$entity", **item})


_RELATIONSHIP_PATH = re.compile(
    r"^RelationshipDefinitions(?:\((?P<key>[^)]*)\))?"
    r"(?:/Microsoft\.Dynamics\.CRM\.(?P<cast>\w+))?$"
)
_SCHEMA_NAME = re.compile(r"^\s*SchemaName\s*=\s*'([^']*)'\s*$")
_LOGICAL_NAME = re.compile(r"^\s*LogicalName\s*=\s*'([^']*)'\s*$")


def relationship_definitions(ctx: Context, request: Request, path: str) -> Response:
    """`RelationshipDefinitions`, one by `SchemaName` or MetadataId, cast to the one-to-many or
    many-to-many type (§15); items of the base collection carry their `@odata.type`."""
    match = _RELATIONSHIP_PATH.match(path)
    if match is None:
        raise errors.resource_not_found(path.split("/")[-1])
    if request.method != "GET":
        raise errors.ApiError(
            405, errors.ODATA_ERROR,
            f"The requested resource does not support http method '{request.method}'.",
        )  # fmt: skip
    cast = match.group("cast")
    if cast not in (None, ONE_TO_MANY, MANY_TO_MANY):
        raise errors.resource_not_found(f"Microsoft.Dynamics.CRM.{cast}")
    options = query_options(request, frozenset({"$select", "$filter"}))
    items = [] if cast == MANY_TO_MANY else _all_relationships(ctx)
    if cast is None:
        items = [{"@odata.type": f"#Microsoft.Dynamics.CRM.{ONE_TO_MANY}", **i} for i in items]
    root = f"{ctx.api_root}$metadata#RelationshipDefinitions"
    suffix = f"/Microsoft.Dynamics.CRM.{cast}" if cast else ""
    key = match.group("key")
    if key is None:
        shaped = _shape(ctx, items, options, RELATIONSHIP_PROPERTIES, RELATIONSHIP_TYPE)
        return json_response(200, {"@odata.context": root + suffix, "value": shaped})
    by_name = _SCHEMA_NAME.match(key)
    wanted = by_name.group(1) if by_name else key.strip().lower()
    found = [i for i in items if wanted in (i["SchemaName"], i["MetadataId"])]
    if not found:
        raise errors.ApiError(
            404, errors.ODATA_ERROR, f"Could not find relationship with name '{wanted}'."
        )
    item = _shape(ctx, found, options, RELATIONSHIP_PROPERTIES, RELATIONSHIP_TYPE)[0]
    return json_response(200, {"@odata.context": f"{root}{suffix}/$entity", **item})


def _all_relationships(ctx: Context) -> list[dict[str, Any]]:
    """Every one-to-many relationship of the served tables, once each."""
    seen: dict[str, dict[str, Any]] = {}
    for table in ctx.schema.tables:
        for item in many_to_one(ctx, table):
            seen.setdefault(item["SchemaName"], item)
    return list(seen.values())


# -- service document, $metadata, WhoAmI -------------------------------------------------------


def service_document(ctx: Context) -> Response:
    sets = [
        {"name": t.entity_set, "kind": "EntitySet", "url": t.entity_set} for t in ctx.schema.tables
    ]
    return json_response(200, {"@odata.context": f"{ctx.api_root}$metadata", "value": sets})


def who_am_i(ctx: Context) -> Response:
    return json_response(
        200,
        {
            "@odata.context": f"{ctx.api_root}$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
            "BusinessUnitId": BUSINESS_UNIT_ID,
            "UserId": ctx.caller_id,
            "OrganizationId": ORGANIZATION_ID,
        },
    )


def csdl(ctx: Context, with_annotations: bool) -> Response:
    """A minimal, valid CSDL document for the served tables."""
    lines = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">',
        "<edmx:DataServices>",
        '<Schema Namespace="Microsoft.Dynamics.CRM" Alias="mscrm" '
        'xmlns="http://docs.oasis-open.org/odata/ns/edm">',
    ]
    lines.append(
        '<EntityType Name="principal" Abstract="true"><Key><PropertyRef Name="ownerid" /></Key>'
        '<Property Name="ownerid" Type="Edm.Guid" Nullable="false" /></EntityType>'
    )
    for table in ctx.schema.tables:
        if table.name in PRINCIPALS:  # systemuser and team derive from principal (§21.1)
            lines.append(f'<EntityType Name="{table.name}" BaseType="mscrm.principal">')
        else:
            lines.append(f'<EntityType Name="{table.name}">')
            lines.append(f'<Key><PropertyRef Name="{table.primary_id}" /></Key>')
        for attribute in table.attributes:
            lines.append(f'<Property Name="{attribute.read_name}" Type="{attribute.edm_type}" />')
        for name, (_, targets) in table.bindings.items():
            served = [t for t in targets if t.table in ctx.schema.by_name]
            if len(served) > 1:  # ownerid: a user or a team
                lines.append(f'<NavigationProperty Name="{name}" Type="mscrm.principal" />')
            elif served:
                lines.append(
                    f'<NavigationProperty Name="{name}" Type="mscrm.{served[0].table}" '
                    f'Nullable="true" Partner="{served[0].relationship}" />'
                )
        for reference in ctx.schema.references_to(table.name):
            lines.append(
                f'<NavigationProperty Name="{reference.target.relationship}" '
                f'Type="Collection(mscrm.{reference.table.name})" '
                f'Partner="{reference.target.navigation}" />'
            )
        lines.append("</EntityType>")
    lines += [
        '<ComplexType Name="WhoAmIResponse"><Property Name="BusinessUnitId" Type="Edm.Guid" '
        'Nullable="false" /><Property Name="UserId" Type="Edm.Guid" Nullable="false" />'
        '<Property Name="OrganizationId" Type="Edm.Guid" Nullable="false" /></ComplexType>',
        '<Function Name="WhoAmI"><ReturnType Type="mscrm.WhoAmIResponse" Nullable="false" />'
        "</Function>",
        '<EntityContainer Name="System">',
    ]
    for table in ctx.schema.tables:
        lines.append(f'<EntitySet Name="{table.entity_set}" EntityType="mscrm.{table.name}">')
        if with_annotations:
            tracked = "true" if ctx.config.tracked(table.name) else "false"
            lines.append(
                '<Annotation Term="Org.OData.Capabilities.V1.ChangeTracking"><Record>'
                f'<PropertyValue Property="Supported" Bool="{tracked}" /></Record></Annotation>'
            )
        lines.append("</EntitySet>")
    lines += [
        '<FunctionImport Name="WhoAmI" Function="mscrm.WhoAmI" />',
        "</EntityContainer>",
        "</Schema>",
        "</edmx:DataServices>",
        "</edmx:Edmx>",
    ]
    body = "\n".join(lines).encode()
    return Response(200, (("Content-Type", "application/xml"),), body)
