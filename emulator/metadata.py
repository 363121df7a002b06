"""Service-level endpoints generated from the schema: service document, `$metadata`, WhoAmI and
EntityDefinitions (§2.4, §15).

EntityDefinitions serves the collection, one table by `LogicalName` or MetadataId, and its
`Attributes` (optionally cast to a derived type such as `Microsoft.Dynamics.CRM.
PicklistAttributeMetadata`, with `$expand=OptionSet`), `ManyToOneRelationships` and
`OneToManyRelationships`. Metadata queries take `$select`, `$expand` and a `$filter` limited to
`eq`/`ne` with `and`/`or`/`not` over properties, `X/Value` managed properties and enum literals
(U38); they are not paged. Items are plain dicts built in a fixed key order.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from odata_query import ast

from emulator import errors
from emulator.context import BUSINESS_UNIT_ID, EMULATOR_NAMESPACE, ORGANIZATION_ID, Context
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
    r"(?:/(?P<nav>Attributes|ManyToOneRelationships|OneToManyRelationships)"
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
    "OwnershipType", "IsActivity", "IsCustomEntity", "ChangeTrackingEnabled",
    "CanChangeTrackingBeEnabled", "IsOptimisticConcurrencyEnabled", "DisplayName",
    "DisplayCollectionName",
)  # fmt: skip
RELATIONSHIP_PROPERTIES = (
    "MetadataId", "SchemaName", "RelationshipType", "ReferencedEntity", "ReferencedAttribute",
    "ReferencingEntity", "ReferencingAttribute", "ReferencedEntityNavigationPropertyName",
    "ReferencingEntityNavigationPropertyName", "CascadeConfiguration", "IsCustomRelationship",
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


def _entities(ctx: Context, tables: list[Table], options: dict[str, str]) -> list[dict[str, Any]]:
    expand = _expansions(options.get("$expand"), ("Attributes",))
    items = _shape(
        ctx, [entity_item(ctx, t) for t in tables], options, ENTITY_PROPERTIES, ENTITY_TYPE
    )
    if "Attributes" in expand:
        by_name = {t.name: t for t in tables}
        names = {entity_item(ctx, t)["MetadataId"]: t.name for t in tables}
        for item in items:
            table = by_name[names[item["MetadataId"]]]
            item["Attributes"] = _attributes(
                ctx, table, expand["Attributes"], list(table.attributes)
            )
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
    match = _PATH.match(path)
    if match is None:
        raise errors.resource_not_found(path.split("/")[-1])
    options = query_options(request, frozenset({"$select", "$filter", "$expand"}))
    root = f"{ctx.api_root}$metadata#"
    if match.group("key") is None:
        if match.group("nav"):
            raise errors.resource_not_found(match.group("nav"))
        items = _entities(ctx, list(ctx.schema.tables), options)
        return json_response(200, {"@odata.context": f"{root}EntityDefinitions", "value": items})
    table = _find_table(ctx, match.group("key"))
    owner = f"EntityDefinitions(LogicalName='{table.name}')"
    nav = match.group("nav")
    if nav is None:
        item = _entities(ctx, [table], options)[0]
        return json_response(200, {"@odata.context": f"{root}EntityDefinitions/$entity", **item})
    if nav != "Attributes":
        if match.group("attribute") or match.group("cast"):
            raise errors.resource_not_found(path.split("/")[-1])
        relationships = (
            many_to_one(ctx, table) if nav == "ManyToOneRelationships" else one_to_many(ctx, table)
        )
        items = _shape(ctx, relationships, options, RELATIONSHIP_PROPERTIES, RELATIONSHIP_TYPE)
        return json_response(200, {"@odata.context": f"{root}{owner}/{nav}", "value": items})
    cast = match.group("cast")
    if cast is not None and cast not in {f"{k}AttributeMetadata" for k in _METADATA_KINDS.values()}:
        raise errors.resource_not_found(f"Microsoft.Dynamics.CRM.{cast}")
    chosen = _cast(table, cast)
    key = match.group("attribute")
    if key is None:
        items = _attributes(ctx, table, options, chosen)
        return json_response(200, {"@odata.context": f"{root}{owner}/Attributes", "value": items})
    name_match = re.match(r"^\s*LogicalName\s*=\s*'([^']*)'\s*$", key)
    wanted = name_match.group(1) if name_match else key.strip().lower()
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
