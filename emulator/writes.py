"""Web API writes (§7-8): create, upsert/update with conditions, delete, associations.

The record operations (`create`, `upsert`, `update`, `delete`) take an open `WriteTx`, so a
`$batch` change set, a bulk action or QualifyLead runs several in one transaction. Bodies are
validated against the schema: unknown properties, wrong navigation names, value types, MaxLength,
choice values, state/status pairs, closed activities (U22). Single-valued `x@odata.bind`,
collection binds, deep insert and `<activity>_activity_parties` arrays are written here, as are
the `$ref` and single-property requests. Duplicate detection (§7.10) runs when a request asks for
it. Read-only columns are ignored, except `statecode` on create (U19). `fullname`, owner,
created/modified stamps, defaults, the resolved e-mail sender and the initial state of an
appointment (U47) are filled in here; parties are checked against the roles of their activity
(§18.5, §19.4). Versions, tombstones and delete cascades belong to the store; owner checks and
the Assign cascade to `owners`.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from emulator import errors, keys, owners
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
    Reference,
    RequiredLevel,
    Table,
)
from emulator.storage import RestrictedDelete, WriteTx, duplicate_key
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


def parse_url(
    ctx: Context, value: object, expected: str | tuple[str, ...] | None, what: str
) -> tuple[Table, str]:
    """The (table, id) a record URL such as `/contacts(<id>)` names; `expected` is the table
    name (or names) it may name.

    The leading `/` is optional and an absolute URL works too (§8.1).
    """
    allowed = (expected,) if isinstance(expected, str) else expected
    match = _BIND.match(value) if isinstance(value, str) else None
    if match is None:
        example = ctx.schema.by_name[allowed[0]].entity_set if allowed else "<entityset>"
        raise errors.payload_error(f"The value of '{what}' must be a URL like '/{example}(<id>)'.")
    other = ctx.schema.by_set.get(match.group(1))
    if other is None or (allowed is not None and other.name not in allowed):
        raise errors.payload_error(
            f"The entity set '{match.group(1)}' is not a valid target of '{what}'."
        )
    record_id, _ = keys.locate(ctx, other, match.group(2))  # U17: alternate keys when defined
    if record_id is None:
        raise keys.not_found(other)
    return other, record_id


def resolve(
    ctx: Context, tx: WriteTx, value: object, expected: str | tuple[str, ...] | None, what: str
) -> tuple[Table, str]:
    """`parse_url`, and the record must exist."""
    other, record_id = parse_url(ctx, value, expected, what)
    if tx.record(other, record_id) is None:
        raise errors.does_not_exist(other.name, record_id)
    return other, record_id


@dataclass(frozen=True)
class _Related:
    """Writes that follow the record's own: deep-inserted children, collection binds."""

    reference: Reference
    bodies: tuple[object, ...] = ()
    ids: tuple[str, ...] = ()


def _values(
    ctx: Context, tx: WriteTx, table: Table, body: object, *, creating: bool
) -> tuple[dict[str, Any], list[_Related]]:
    """Validate a create/update body: storage column → value (primary key excluded), and the
    related writes to make once the record exists."""
    if not isinstance(body, dict):
        raise errors.payload_error("The request body must be a JSON object.")
    values: dict[str, Any] = {}
    related: list[_Related] = []
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
            binding = table.bindings.get(name)
            collection = ctx.schema.collection(table.name, name)
            if binding is not None:
                attribute, targets = binding
                if attribute.create if creating else attribute.update:
                    _bind(ctx, tx, attribute, targets, key, value, values)
            elif collection is not None:
                if not isinstance(value, list):
                    raise errors.payload_error(
                        f"The value of '{key}' must be an array of record URLs."
                    )
                ids = tuple(resolve(ctx, tx, url, collection.table.name, key)[1] for url in value)
                related.append(_Related(collection, ids=ids))
            elif table.is_activity and f"{name}_{table.name}" in table.navigations:
                raise errors.payload_error(  # U45 (emulator wording)
                    f"The navigation property '{name}' is inherited from "
                    "'Microsoft.Dynamics.CRM.activitypointer' and cannot be bound on "
                    f"'{table.type_name}': use '{name}_{table.name}'."
                )
            else:
                raise errors.undeclared_property(name)
            continue
        column = table.by_name.get(key)
        if column is None or column.is_lookup:
            _navigation_value(ctx, tx, table, key, value, values, related, creating=creating)
            continue
        if column.name == table.primary_id:
            continue
        if not (column.create if creating else column.update):
            if creating and column.type is AttributeType.STATE:
                if not ctx.config.allow_state_on_create:
                    raise errors.invalid_argument(
                        f"The '{column.name}' attribute of the '{table.name}' entity is not "
                        "valid for create: records are created in their default state."
                    )
                values[column.read_name] = coerce(table, column, value)
            continue
        values[column.read_name] = coerce(table, column, value)
    return values, related


def _bind(
    ctx: Context,
    tx: WriteTx,
    attribute: Attribute,
    targets: tuple[LookupTarget, ...],
    key: str,
    value: object,
    values: dict[str, Any],
) -> None:
    """`<navigation>@odata.bind`: the lookup (and its target table) a record URL names; an owner
    is a user or a team (U51)."""
    bound: str | None = None
    kind: str | None = None
    if value is not None:
        other, bound = resolve(ctx, tx, value, tuple(t.table for t in targets), key)
        kind = other.name
        if attribute.type is AttributeType.OWNER:
            owners.check_owner(tx, ctx.schema, kind, bound)
    values[attribute.read_name] = bound
    if attribute.type_column:
        values[attribute.type_column] = kind


def _navigation_value(
    ctx: Context,
    tx: WriteTx,
    table: Table,
    key: str,
    value: object,
    values: dict[str, Any],
    related: list[_Related],
    *,
    creating: bool,
) -> None:
    """A navigation property written with a value: deep insert (§7.3) or activity parties."""
    if key in table.navigations:
        if not isinstance(value, dict):
            raise errors.payload_error(
                "A node of type 'PrimitiveValue' was read from the JSON reader when trying to "
                f"read the contents of the navigation property '{key}'; however, a "
                "'StartObject' node was expected."
            )
        attribute, target = table.navigations[key]
        values[attribute.read_name] = create(ctx, tx, ctx.schema.by_name[target.table], value)
        if attribute.type_column:
            values[attribute.type_column] = target.table
        return
    reference = ctx.schema.collection(table.name, key)
    if reference is None:
        raise errors.invalid_property(table.type_name, key)
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise errors.payload_error(
            f"The navigation property '{key}' must be written as an array of objects."
        )
    if not creating and not reference.table.is_party:
        raise errors.payload_error(
            f"The navigation property '{key}' can be written on create only (deep insert)."
        )
    related.append(_Related(reference, bodies=tuple(value)))


def _write_related(
    ctx: Context, tx: WriteTx, table: Table, record_id: str, related: list[_Related]
) -> None:
    """Deep-inserted children and collection binds, now that the record exists."""
    for item in related:
        attribute, child = item.reference.attribute, item.reference.table
        link: dict[str, Any] = {attribute.read_name: record_id}
        if attribute.type_column:
            link[attribute.type_column] = table.name
        if not item.ids and child.is_party and ctx.config.replace_parties_on_patch:
            where = f'WHERE "{attribute.read_name}" = ?'
            for party_id in tx.ids(child, where, (record_id,)):
                tx.delete(child, party_id)
        for body in item.bodies:
            create(ctx, tx, child, body, link=link)
        for child_id in item.ids:
            tx.update(child, child_id, {**link, "modifiedon": tx.now})
    if table.name == "email" and any(item.reference.table.is_party for item in related):
        tx.update(table, record_id, _email_sender(tx, record_id))


def _email_sender(tx: WriteTx, email_id: str) -> dict[str, Any]:
    """`emailsender`, the resolved sender: the record of the e-mail's one From party (§18.5)."""
    senders = tx.rows(
        """SELECT "_partyid_value", partyidtype FROM "activityparty"
        WHERE "_activityid_value" = ? AND activityidtype = 'email' AND participationtypemask = 1""",
        (email_id,),
    )
    if len(senders) > 1:
        raise errors.invalid_argument("An e-mail has one sender: only one party can be its From.")
    sender, kind = senders[0] if senders else (None, None)
    return {"_emailsender_value": sender, "emailsendertype": kind, "modifiedon": tx.now}


def duplicates_exist(
    ctx: Context, tx: WriteTx, table: Table, values: dict[str, Any], record_id: str
) -> bool:
    """§7.10: another record with the same duplicate key (email, trimmed, in any case)."""
    tables = [table]
    if ctx.config.duplicates_across_tables:
        tables += [t for t in ctx.schema.tables if t is not table and t.duplicate_keys]
    for column in table.duplicate_keys:
        value = values.get(column)
        if not isinstance(value, str) or not value.strip():
            continue
        for other in tables:
            if column not in other.duplicate_keys:
                continue
            sql = (
                f'SELECT 1 FROM "{other.name}" WHERE {duplicate_key(column)} = dv_dupkey(?) '
                f'AND "{other.primary_id}" != ? LIMIT 1'
            )
            if tx.rows(sql, (value, record_id)):
                return True
    return False


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
        "activitytypecode": table.name,
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
    owners.fill_owner(table, values)


def _scheduled(ctx: Context, table: Table, values: dict[str, Any]) -> bool:
    """U47: an appointment created with a start and an end is Scheduled (3, Busy)."""
    return (
        table.name == "appointment"
        and ctx.config.appointment_scheduled_on_create
        and "statecode" not in values
        and values.get("statuscode") is None
        and values.get("scheduledstart") is not None
        and values.get("scheduledend") is not None
    )


def create(
    ctx: Context,
    tx: WriteTx,
    table: Table,
    body: object,
    record_id: str | None = None,
    *,
    detect_duplicates: bool = False,
    link: dict[str, Any] | None = None,
) -> str:
    """Insert a record; the id comes from the URL (upsert), the body, or is new. `link` sets the
    lookup of a child created through its parent's collection (activity parties)."""
    values, related = _values(ctx, tx, table, body, creating=True)
    values.update(link or {})
    if record_id is None:
        supplied = body.get(table.primary_id) if isinstance(body, dict) else None
        record_id = (
            _guid(supplied, table, table.primary_id) if supplied is not None else str(uuid.uuid4())
        )
    if tx.record(table, record_id) is not None:
        raise errors.duplicate_key()
    if _scheduled(ctx, table, values):
        values["statecode"] = 3
    if values.get("statuscode") is not None:
        _check_pair(table, values.get("statecode", 0), values["statuscode"])
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
    if table.is_party:
        _check_party(ctx, values)
    fill_fullname(table, values, None)
    if detect_duplicates and duplicates_exist(ctx, tx, table, values, record_id):
        raise errors.duplicates_found()
    keys.check_unique(ctx, tx, table, values, record_id)
    values[table.primary_id] = record_id
    tx.insert(table, values)
    _write_related(ctx, tx, table, record_id, related)
    return record_id


def _check_party(ctx: Context, values: dict[str, Any]) -> None:
    """An activity party names a record, or (U24) only an address; where the activity lists its
    roles (e-mail, appointment), the mask and the party's table must fit one (§18.5, §19.4)."""
    kind = values.get("activityidtype") or ""
    activity = ctx.schema.by_name.get(kind)
    roles = activity.party_roles if activity is not None else {}
    mask = values["participationtypemask"]
    role = roles.get(mask)
    if roles and role is None:
        raise errors.invalid_argument(
            f"The participation type {mask} is not valid for an activity of type '{kind}'."
        )
    party = values.get("partyidtype")
    if values.get("_partyid_value") is not None:
        if role is not None and party not in role.tables:
            raise errors.invalid_argument(
                f"A {party} cannot take the participation type {mask} on an activity of type "
                f"'{kind}'."
            )
        return
    if not values.get("addressused"):
        raise errors.invalid_argument(
            "An activity party needs a party (partyid_<table>@odata.bind) or an addressused."
        )
    if not ctx.config.unresolved_parties or (role is not None and not role.unresolved):
        raise errors.invalid_argument(
            "An activity party with only an addressused (unresolved) is not allowed here."
        )


def _check_closed(
    ctx: Context, table: Table, current: dict[str, Any], values: dict[str, Any], related: list[Any]
) -> None:
    """U22: a closed activity takes a state change only (reopen it to change anything else)."""
    if not (table.is_activity and ctx.config.closed_activities_read_only):
        return
    if current.get("statecode") == 0:
        return
    if related or "statecode" not in values or set(values) - {"statecode", "statuscode"}:
        raise errors.read_only_record()


def update(
    ctx: Context,
    tx: WriteTx,
    table: Table,
    record_id: str,
    body: object,
    current: dict[str, Any],
    *,
    detect_duplicates: bool = False,
) -> None:
    values, related = _values(ctx, tx, table, body, creating=False)
    supplied = body.get(table.primary_id) if isinstance(body, dict) else None
    if supplied is not None and _guid(supplied, table, table.primary_id) != record_id:
        raise errors.payload_error(f"The '{table.primary_id}' in the body does not match the URL.")
    _check_closed(ctx, table, current, values, related)
    _check_status(ctx, table, values, current)
    fill_fullname(table, values, current)
    owners.fill_owner(table, values)
    if detect_duplicates and duplicates_exist(ctx, tx, table, values, record_id):
        raise errors.duplicates_found()
    keys.check_unique(ctx, tx, table, {**current, **values}, record_id)
    if table.solution_component and values.keys() & {"fetchxml", "layoutxml"}:
        values["componentstate"] = 1  # unpublished until PublishXml (U53)
    values["modifiedon"] = tx.now
    values["_modifiedby_value"] = ctx.caller_id
    tx.update(table, record_id, values)
    if owners.owner_changed(values, current):
        owners.cascade_assign(tx, ctx.schema, table, record_id, values)
    _write_related(ctx, tx, table, record_id, related)


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
    detect_duplicates: bool = False,
) -> bool:
    """PATCH semantics (§7.4-7.6): update, or create when missing; True when it created."""
    current = tx.record(table, record_id)
    if if_none_match is not None and if_none_match.strip() == "*" and current is not None:
        raise errors.matching_key_exists()
    _check_if_match(if_match, current, table, record_id)
    if current is None:
        if not table.upsert:  # no Upsert message (savedquery, journeys §22.3)
            raise errors.does_not_exist(table.name, record_id)
        create(ctx, tx, table, body, record_id, detect_duplicates=detect_duplicates)
        return True
    update(ctx, tx, table, record_id, body, current, detect_duplicates=detect_duplicates)
    return False


def delete(
    ctx: Context, tx: WriteTx, table: Table, record_id: str, *, if_match: str | None = None
) -> None:
    current = tx.record(table, record_id)
    if current is None:
        raise errors.does_not_exist(table.name, record_id)
    _check_if_match(if_match, current, table, record_id)
    if not table.supports("Delete"):
        raise unsupported("Delete", table)
    try:
        tx.delete(table, record_id)
    except RestrictedDelete as blocked:
        raise errors.not_supported(
            f"The record cannot be deleted because it is associated with '{blocked.table}' records."
        ) from None


# -- HTTP handlers -----------------------------------------------------------------------------


def body_of(request: Request) -> object:
    try:
        return request.json()
    except (UnicodeDecodeError, ValueError):
        raise errors.payload_error(
            "Invalid JSON. The request body is not a valid JSON document."
        ) from None


def action_parameters(
    request: Request, operation: str, types: dict[str, type | None]
) -> dict[str, Any]:
    """An action's JSON parameters (an empty body is none): each a parameter of `operation`
    (ODataLib's text otherwise) and, where `types` gives one, of that type (emulator wording)."""
    body = body_of(request) if request.body else {}
    if not isinstance(body, dict):
        raise errors.payload_error("The request body must be a JSON object.")
    for name, value in body.items():
        if name not in types:
            raise errors.payload_error(
                f"The parameter '{name}' in the request payload is not a valid parameter for the "
                f"operation '{operation}'."
            )
        kind = types[name]
        if kind is not None and value is not None and not isinstance(value, kind):
            edm = "Edm.Boolean" if kind is bool else "Edm.String"
            raise errors.payload_error(
                f"The parameter '{name}' of the operation '{operation}' must be of type '{edm}'."
            )
    return body


def detects_duplicates(request: Request) -> bool:
    """§7.10: duplicate detection runs only when the request switches it on."""
    header = request.header("mscrm.suppressduplicatedetection") or ""
    return header.strip().lower() == "false"


def entity_url(ctx: Context, table: Table, record_id: str) -> str:
    return f"{ctx.api_root}{table.entity_set}({record_id})"


def unsupported(method: str, table: Table) -> errors.ApiError:
    """A message the table does not serve (emulator wording, code 0x80040315)."""
    return errors.not_supported(
        f"The '{method}' method does not support entities of type '{table.name}'."
    )


def _direct(method: str, table: Table) -> None:
    """activityparty is written through its activity only (reference silent; emulator wording);
    read-only tables (interactionforemail, sdkmessage…) refuse Create and Update (Delete is
    checked once the record is found)."""
    if table.is_party or (method != "Delete" and not table.supports(method)):
        raise unsupported(method, table)


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
        ("Location", entity_url(ctx, table, record_id)),
    )


def post_collection(ctx: Context, request: Request, table: Table) -> Response:
    _direct("Create", table)
    body = body_of(request)
    with ctx.store.write(ctx.now()) as tx:
        record_id = create(ctx, tx, table, body, detect_duplicates=detects_duplicates(request))
        if request.prefer.return_representation:
            return _representation(ctx, request, table, record_id, 201)
    url = entity_url(ctx, table, record_id)
    return Response(204, (("OData-EntityId", url), ("Location", url)))


def patch_entity(
    ctx: Context,
    request: Request,
    table: Table,
    record_id: str,
    key_values: dict[str, Any] | None = None,
) -> Response:
    """PATCH: update or upsert; `key_values` are the alternate key's values from the URL, written
    into a record the request creates (§7.5)."""
    _direct("Update", table)
    body = body_of(request)
    if key_values and isinstance(body, dict):
        body = {**_key_body(ctx, table, key_values), **body}
    with ctx.store.write(ctx.now()) as tx:
        created = upsert(
            ctx, tx, table, record_id, body,
            if_match=request.header("if-match"), if_none_match=request.header("if-none-match"),
            detect_duplicates=detects_duplicates(request),
        )  # fmt: skip
        if request.prefer.return_representation:
            return _representation(ctx, request, table, record_id, 201 if created else 200)
    url = entity_url(ctx, table, record_id)
    headers = (
        (("OData-EntityId", url), ("Location", url)) if created else (("OData-EntityId", url),)
    )
    return Response(204, headers)


def _key_body(ctx: Context, table: Table, key_values: dict[str, Any]) -> dict[str, Any]:
    """Alternate key values as a create body writes them (a lookup as a bind to its target)."""
    body: dict[str, Any] = {}
    for name, value in key_values.items():
        attribute = table.by_name[name]
        if attribute.is_lookup:
            target = attribute.targets[0]
            entity_set = ctx.schema.by_name[target.table].entity_set
            body[f"{target.navigation}@odata.bind"] = f"/{entity_set}({value})"
        else:
            body[name] = bool(value) if attribute.type is AttributeType.BOOLEAN else value
    return body


def delete_entity(ctx: Context, request: Request, table: Table, record_id: str) -> Response:
    _direct("Delete", table)
    with ctx.store.write(ctx.now()) as tx:
        delete(ctx, tx, table, record_id, if_match=request.header("if-match"))
    return Response(204)


def _existing(tx: WriteTx, table: Table, record_id: str) -> dict[str, Any]:
    current = tx.record(table, record_id)
    if current is None:
        raise errors.does_not_exist(table.name, record_id)
    return current


def write_property(
    ctx: Context, request: Request, table: Table, record_id: str, attribute: Attribute
) -> Response:
    """`PUT <set>(<id>)/<column>` with `{"value": …}`, or `DELETE` to clear it (§7.4)."""
    _direct("Update", table)
    if request.method == "PUT":
        body = body_of(request)
        if not isinstance(body, dict) or set(body) - {"value", "@odata.context"}:
            raise errors.payload_error('The body of a property PUT must be {"value": …}.')
        value = body.get("value")
    else:
        value = None
    with ctx.store.write(ctx.now()) as tx:
        current = _existing(tx, table, record_id)
        update(ctx, tx, table, record_id, {attribute.name: value}, current)
    return Response(204)


def write_reference(
    ctx: Context, request: Request, table: Table, record_id: str, navigation: str
) -> Response:
    """`PUT <set>(<id>)/<nav>/$ref` with `{"@odata.id": url}`, or `DELETE` to clear (§8.4)."""
    _direct("Update", table)
    target = None
    if request.method == "PUT":
        body = body_of(request)
        if not isinstance(body, dict) or "@odata.id" not in body:
            raise errors.payload_error('The body of a $ref request must be {"@odata.id": url}.')
        target = body["@odata.id"]
    with ctx.store.write(ctx.now()) as tx:
        current = _existing(tx, table, record_id)
        update(ctx, tx, table, record_id, {f"{navigation}@odata.bind": target}, current)
    return Response(204)


def associate(
    ctx: Context, request: Request, table: Table, record_id: str, reference: Reference
) -> Response:
    """`POST <set>(<id>)/<collection>/$ref` with `{"@odata.id": url}`: link a child (§8.4)."""
    body = body_of(request)
    if not isinstance(body, dict) or "@odata.id" not in body:
        raise errors.payload_error('The body of a $ref request must be {"@odata.id": url}.')
    with ctx.store.write(ctx.now()) as tx:
        _existing(tx, table, record_id)
        child = resolve(ctx, tx, body["@odata.id"], reference.table.name, "@odata.id")[1]
        _write_related(ctx, tx, table, record_id, [_Related(reference, ids=(child,))])
    return Response(204)


def replace_parties(
    ctx: Context, request: Request, table: Table, record_id: str, reference: Reference
) -> Response:
    """`PUT emails(<id>)/email_activity_parties` with `{"value": […]}`: the parties are replaced
    (documented for e-mail only, §18.5)."""
    body = body_of(request)
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("value"), list)
        or set(body) - {"value", "@odata.context"}
    ):
        raise errors.payload_error('The body of a collection PUT must be {"value": [...]}.')
    attribute = reference.attribute
    with ctx.store.write(ctx.now()) as tx:
        current = _existing(tx, table, record_id)
        where = f'WHERE "{attribute.read_name}" = ?'
        for party_id in tx.ids(reference.table, where, (record_id,)):
            tx.delete(reference.table, party_id)
        body = {reference.target.relationship: body["value"]}
        update(ctx, tx, table, record_id, body, current)
    return Response(204)


def insert_system(ctx: Context, tx: WriteTx, table: Table, values: dict[str, Any]) -> str:
    """A record the platform makes itself (a system job, a queue item, an engagement row): the
    usual defaults, none of a client's restrictions; returns its id."""
    record_id = values.pop(table.primary_id, None) or str(uuid.uuid4())
    fill_defaults(ctx, table, values, tx.now)
    fill_fullname(table, values, None)
    tx.insert(table, {**values, table.primary_id: record_id})
    return record_id


def disassociate(
    ctx: Context, table: Table, record_id: str, reference: Reference, child: str
) -> Response:
    """`DELETE <set>(<id>)/<collection>(<child>)/$ref` or `…/$ref?$id=<url>` (§8.4)."""
    attribute = reference.attribute
    with ctx.store.write(ctx.now()) as tx:
        _existing(tx, table, record_id)
        current = _existing(tx, reference.table, child)
        if current.get(attribute.read_name) != record_id:
            raise errors.does_not_exist(reference.table.name, child)
        cleared: dict[str, Any] = {attribute.read_name: None, "modifiedon": tx.now}
        if attribute.type_column:
            cleared[attribute.type_column] = None
        tx.update(reference.table, child, cleared)
    return Response(204)
