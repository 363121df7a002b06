"""Web API writes (§7-8): create, upsert/update with conditions, delete, `@odata.bind`.

The record operations (`create`, `upsert`, `delete`) take an open `WriteTx`, so a later `$batch`
change set can run several in one transaction. Bodies are validated against the schema: unknown
properties, wrong navigation names, value types, MaxLength, choice values, state/status pairs.
Read-only columns are ignored, except `statecode` on create (U19). `fullname`, owner, created/
modified stamps and defaults are filled in here; versions, tombstones and cascades by the store.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from emulator import errors
from emulator.clock import parse_wire, wire
from emulator.context import BUSINESS_UNIT_ID, Context
from emulator.query import Annotations
from emulator.reads import entity_json, query_options
from emulator.schema import (
    CHOICE_TYPES,
    GUID_TYPES,
    INTEGER_TYPES,
    Attribute,
    AttributeType,
    LookupTarget,
    RequiredLevel,
    Table,
)
from emulator.storage import RestrictedDelete, WriteTx
from emulator.wire import Request, Response, raw_json_response

_BIND = re.compile(r"^/?(?:.*/api/data/v9\.\d/)?([A-Za-z_]\w*)\(([^)]*)\)$")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def parse_key(table: Table, key: str) -> str:
    """The record id in `<set>(<key>)`: a GUID, or `<pk>=<GUID>`; alternate keys are not defined."""
    text = key.strip()
    if "=" in text:
        name, _, value = text.partition("=")
        if name.strip() != table.primary_id:
            raise errors.invalid_alternate_key(table.type_name)
        text = value.strip()
    if not _GUID.match(text):
        raise errors.bad_key()
    return text.lower()


def _guid(value: object, table: Table, name: str) -> str:
    if not isinstance(value, str) or not _GUID.match(value):
        raise errors.payload_error(
            f"Cannot convert the literal '{value}' to the expected type 'Edm.Guid' for the "
            f"property '{name}' of '{table.type_name}'."
        )
    return value.lower()


def _type_error(value: object, edm: str) -> errors.ApiError:
    literal = json.dumps(value) if not isinstance(value, str) else value
    return errors.payload_error(
        f"Cannot convert the literal '{literal}' to the expected type '{edm}'."
    )


def coerce(table: Table, attribute: Attribute, value: object) -> object:
    """A JSON value for `attribute` → its stored form (validated)."""
    if value is None:
        return None
    kind = attribute.type
    if attribute.is_text:
        if not isinstance(value, str):
            raise _type_error(value, "Edm.String")
        if attribute.max_length is not None and len(value) > attribute.max_length:
            raise errors.too_long(attribute.name, table.name, attribute.max_length)
        return value
    if kind is AttributeType.BOOLEAN:
        if not isinstance(value, bool):
            raise _type_error(value, "Edm.Boolean")
        return int(value)
    if kind in INTEGER_TYPES:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _type_error(value, attribute.edm_type)
        if kind in CHOICE_TYPES and value not in attribute.option_labels:
            raise errors.out_of_range(attribute.name, table.name, value)
        low, high = attribute.min_value, attribute.max_value
        if (low is not None and value < low) or (high is not None and value > high):
            raise errors.out_of_range(attribute.name, table.name, value)
        return value
    if kind is AttributeType.DATETIME:
        if not isinstance(value, str):
            raise _type_error(value, attribute.edm_type)
        try:
            when = parse_wire(value if "T" in value else f"{value}T00:00:00Z")
        except ValueError:
            raise _type_error(value, attribute.edm_type) from None
        return wire(when)[:10] if attribute.date_only else wire(when)
    if kind in GUID_TYPES:
        return _guid(value, table, attribute.name)
    raise errors.payload_error(f"The property '{attribute.name}' cannot be written.")


def _bind(
    ctx: Context, tx: WriteTx, target: LookupTarget, navigation: str, value: object
) -> str | None:
    """The id an `x@odata.bind` value points at (checked to exist), or None to clear the lookup."""
    if value is None:
        return None
    match = _BIND.match(value) if isinstance(value, str) else None
    if match is None:
        example = ctx.schema.by_name[target.table].entity_set
        raise errors.payload_error(
            f"The value of '{navigation}@odata.bind' must be a URL like '/{example}(<id>)'."
        )
    other = ctx.schema.by_set.get(match.group(1))
    if other is None or other.name != target.table:
        raise errors.payload_error(
            f"The entity set '{match.group(1)}' is not a valid target of the navigation "
            f"property '{navigation}'."
        )
    record_id = parse_key(other, match.group(2))
    if tx.record(other, record_id) is None:
        raise errors.does_not_exist(other.name, record_id)
    return record_id


def _values(
    ctx: Context, tx: WriteTx, table: Table, body: object, *, creating: bool
) -> dict[str, Any]:
    """Validate a create/update body; returns storage column → value (primary key excluded)."""
    if not isinstance(body, dict):
        raise errors.payload_error("The request body must be a JSON object.")
    values: dict[str, Any] = {}
    for key, value in body.items():
        if key.startswith("@"):
            if key == "@odata.type" and str(value).lstrip("#") != table.type_name:
                raise errors.payload_error(
                    f"The entity type '{str(value).lstrip('#')}' does not match "
                    f"'{table.type_name}'."
                )
            continue
        name, annotated, annotation = key.partition("@")
        if annotated:
            if annotation != "odata.bind":
                continue
            navigation = table.navigations.get(name)
            if navigation is None:
                raise errors.undeclared_property(name)
            attribute, target = navigation
            if attribute.create if creating else attribute.update:
                values[attribute.read_name] = _bind(ctx, tx, target, name, value)
                if attribute.type_column:
                    values[attribute.type_column] = target.table if value is not None else None
            continue
        column = table.by_name.get(key)
        if column is None or column.is_lookup:
            if key in table.navigations:
                if isinstance(value, dict):
                    raise errors.not_implemented("Deep insert")
                raise errors.payload_error(
                    "A node of type 'PrimitiveValue' was read from the JSON reader when trying to "
                    f"read the contents of the navigation property '{key}'; however, a "
                    "'StartObject' node was expected."
                )
            raise errors.invalid_property(table.type_name, key)
        if column.name == table.primary_id:
            continue
        if not (column.create if creating else column.update):
            if creating and column.type is AttributeType.STATE:
                raise errors.invalid_argument(
                    f"The '{column.name}' attribute of the '{table.name}' entity is not valid "
                    "for create: records are created in their default state."
                )
            continue
        values[column.read_name] = coerce(table, column, value)
    return values


def default_status(table: Table, state: int) -> int | None:
    """The status a state takes when only statecode is written (§13)."""
    options = table.by_name["statecode"].options
    return next((o.default_status for o in options if o.value == state), None)


def _check_pair(table: Table, state: int, status: int) -> None:
    """U20: a statuscode must belong to the statecode it is written with."""
    option = next(o for o in table.by_name["statuscode"].options if o.value == status)
    if option.state != state:
        raise errors.invalid_argument(
            f"{status} is not a valid status code for state code {state}."
        )


def _check_status(
    ctx: Context, table: Table, values: dict[str, Any], current: dict[str, Any]
) -> None:
    """Validate a state change of an update (§7.8; U20, U21) and fill the default status."""
    if "statecode" not in table.by_name or not {"statecode", "statuscode"} & values.keys():
        return
    state = values.get("statecode", current["statecode"])
    if state is None:
        raise errors.invalid_argument("statecode cannot be null.")
    qualifying = table.name == "lead" and state == 1 and current["statecode"] != 1
    if qualifying and not ctx.config.allow_lead_qualify_patch:
        raise errors.invalid_argument(
            "A lead can be qualified only through the QualifyLead action."
        )
    if values.get("statuscode") is None:
        values["statuscode"] = default_status(table, state)
    else:
        _check_pair(table, state, values["statuscode"])


def fill_fullname(table: Table, values: dict[str, Any], current: dict[str, Any] | None) -> None:
    """Compute `fullname` from first and last name when either is written (or on create)."""
    if not table.computed_fullname or not (
        {"firstname", "lastname"} & values.keys() or current is None
    ):
        return
    merged = {**(current or {}), **values}
    parts = [merged.get("firstname"), merged.get("lastname")]
    values["fullname"] = " ".join(p.strip() for p in parts if p and p.strip()) or None


def fill_defaults(ctx: Context, table: Table, values: dict[str, Any], now: str) -> None:
    """Owner, creator, business unit, timestamps, choice and boolean defaults, initial status."""
    automatic = {
        "_ownerid_value": ctx.caller_id,
        "_businessunitid_value": BUSINESS_UNIT_ID,
        "_createdby_value": ctx.caller_id,
        "_modifiedby_value": ctx.caller_id,
        "createdon": now,
        "modifiedon": now,
        "statecode": 0,
    }
    for attribute in table.attributes:
        column = attribute.read_name
        if column in values:
            continue
        if column in automatic:
            values[column] = automatic[column]
        elif attribute.default is not None:
            values[column] = int(attribute.default)
    if "statecode" in table.by_name and values.get("statuscode") is None:
        values["statuscode"] = default_status(table, values["statecode"])


def create(
    ctx: Context, tx: WriteTx, table: Table, body: object, record_id: str | None = None
) -> str:
    """Insert a record; the id comes from the URL (upsert), the body, or is new."""
    values = _values(ctx, tx, table, body, creating=True)
    if record_id is None:
        supplied = body.get(table.primary_id) if isinstance(body, dict) else None
        record_id = (
            _guid(supplied, table, table.primary_id) if supplied is not None else str(uuid.uuid4())
        )
    if tx.record(table, record_id) is not None:
        raise errors.duplicate_key()
    if values.get("statuscode") is not None:
        _check_pair(table, 0, values["statuscode"])
    fill_defaults(ctx, table, values, tx.now)
    for attribute in table.attributes:
        if (
            attribute.required is RequiredLevel.SYSTEM_REQUIRED
            and attribute.create
            and attribute.name != table.primary_id
            and values.get(attribute.read_name) is None
        ):
            raise errors.invalid_argument(
                f"The '{attribute.name}' attribute of the '{table.name}' entity is required."
            )
    fill_fullname(table, values, None)
    values[table.primary_id] = record_id
    tx.insert(table, values)
    return record_id


def update(
    ctx: Context, tx: WriteTx, table: Table, record_id: str, body: object, current: dict[str, Any]
) -> None:
    values = _values(ctx, tx, table, body, creating=False)
    supplied = body.get(table.primary_id) if isinstance(body, dict) else None
    if supplied is not None and _guid(supplied, table, table.primary_id) != record_id:
        raise errors.payload_error(f"The '{table.primary_id}' in the body does not match the URL.")
    _check_status(ctx, table, values, current)
    fill_fullname(table, values, current)
    values["modifiedon"] = tx.now
    values["_modifiedby_value"] = ctx.caller_id
    tx.update(table, record_id, values)


def _check_if_match(
    if_match: str | None, current: dict[str, Any] | None, table: Table, record_id: str
) -> None:
    if if_match is None:
        return
    if current is None:
        raise errors.does_not_exist(table.name, record_id)
    if if_match.strip() != "*" and if_match.strip() != f'W/"{current["versionnumber"]}"':
        raise errors.version_mismatch()


def upsert(
    ctx: Context,
    tx: WriteTx,
    table: Table,
    record_id: str,
    body: object,
    *,
    if_match: str | None = None,
    if_none_match: str | None = None,
) -> bool:
    """PATCH semantics (§7.4-7.6): update, or create when missing; True when it created."""
    current = tx.record(table, record_id)
    if if_none_match is not None and if_none_match.strip() == "*" and current is not None:
        raise errors.matching_key_exists()
    _check_if_match(if_match, current, table, record_id)
    if current is None:
        create(ctx, tx, table, body, record_id)
        return True
    update(ctx, tx, table, record_id, body, current)
    return False


def delete(
    ctx: Context, tx: WriteTx, table: Table, record_id: str, *, if_match: str | None = None
) -> None:
    current = tx.record(table, record_id)
    if current is None:
        raise errors.does_not_exist(table.name, record_id)
    _check_if_match(if_match, current, table, record_id)
    if not table.deletable:
        raise errors.not_supported(
            f"The 'Delete' method does not support entities of type '{table.name}'."
        )
    try:
        tx.delete(table, record_id)
    except RestrictedDelete as blocked:
        raise errors.not_supported(
            f"The record cannot be deleted because it is associated with '{blocked.table}' records."
        ) from None


# -- HTTP handlers -----------------------------------------------------------------------------


def _body(request: Request) -> object:
    try:
        return request.json()
    except (UnicodeDecodeError, ValueError):
        raise errors.payload_error(
            "Invalid JSON. The request body is not a valid JSON document."
        ) from None


def _entity_url(ctx: Context, table: Table, record_id: str) -> str:
    return f"{ctx.api_root}{table.entity_set}({record_id})"


def _representation(
    ctx: Context, request: Request, table: Table, record_id: str, status: int
) -> Response:
    select = ctx.compiler.select(
        table, query_options(request, frozenset({"$select"})).get("$select")
    )
    found = entity_json(
        ctx, table, record_id, select, Annotations.parse(request.prefer.annotations)
    )
    if found is None:
        raise errors.does_not_exist(table.name, record_id)
    body, version = found
    return raw_json_response(
        status,
        body,
        ("Preference-Applied", "return=representation"),
        ("ETag", f'W/"{version}"'),
        ("Location", _entity_url(ctx, table, record_id)),
    )


def post_collection(ctx: Context, request: Request, table: Table) -> Response:
    body = _body(request)
    with ctx.store.write(ctx.now()) as tx:
        record_id = create(ctx, tx, table, body)
    if request.prefer.return_representation:
        return _representation(ctx, request, table, record_id, 201)
    url = _entity_url(ctx, table, record_id)
    return Response(204, (("OData-EntityId", url), ("Location", url)))


def patch_entity(ctx: Context, request: Request, table: Table, record_id: str) -> Response:
    body = _body(request)
    with ctx.store.write(ctx.now()) as tx:
        created = upsert(
            ctx, tx, table, record_id, body,
            if_match=request.header("if-match"), if_none_match=request.header("if-none-match"),
        )  # fmt: skip
    if request.prefer.return_representation:
        return _representation(ctx, request, table, record_id, 201 if created else 200)
    url = _entity_url(ctx, table, record_id)
    headers = (
        (("OData-EntityId", url), ("Location", url)) if created else (("OData-EntityId", url),)
    )
    return Response(204, headers)


def delete_entity(ctx: Context, request: Request, table: Table, record_id: str) -> Response:
    with ctx.store.write(ctx.now()) as tx:
        delete(ctx, tx, table, record_id, if_match=request.header("if-match"))
    return Response(204)
