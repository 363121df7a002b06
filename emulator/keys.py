"""Alternate keys (§7.5): their definitions (EntityKeyMetadata) and the key syntax in URLs.

Keys are defined through metadata (`POST EntityDefinitions(LogicalName='contact')/Keys`), kept in
the store (a reset removes them) and removed with `DELETE …/Keys(LogicalName='…')`; the
`contact_email_key` switch adds a seeded one, `contact_emailaddress1` on `emailaddress1`. A key's
index is Active at once, or Failed when existing rows already share a value (Dataverse builds it
asynchronously). `<set>(<key>)` takes the primary key (a GUID, or `<pk>=<GUID>`) or the values of
every column of a defined, active key (`contacts(emailaddress1='ada@example.com')`,
`accounts(_primarycontactid_value=<guid>)`, compound keys comma-separated); strings compare
case-insensitively. Any other key is the U16 error. Writes keep key values unique (nulls are not
compared).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from emulator import errors
from emulator.context import EMULATOR_NAMESPACE, Context
from emulator.functions import convert
from emulator.schema import GUID_TYPES, INTEGER_TYPES, Attribute, AttributeType, Table
from emulator.storage import WriteTx

META_KEY = "entitykeys"
KEY_TYPES = frozenset(
    {AttributeType.STRING, AttributeType.INTEGER, AttributeType.BIGINT, AttributeType.DATETIME,
     AttributeType.LOOKUP, AttributeType.CUSTOMER, AttributeType.OWNER, AttributeType.PICKLIST}
)  # fmt: skip
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_PAIR = re.compile(r"\s*([A-Za-z_]\w*)\s*=\s*('(?:[^']|'')*'|[^,']+?)\s*(?:,|$)")


@dataclass(frozen=True)
class Key:
    """One alternate key of a table."""

    table: str
    logical_name: str
    schema_name: str
    display: str
    attributes: tuple[str, ...]  # logical names, in definition order
    status: str = "Active"

    @property
    def metadata_id(self) -> str:
        return str(uuid.uuid5(EMULATOR_NAMESPACE, f"entitykey:{self.table}:{self.logical_name}"))


SEEDED = Key(
    "contact", "contact_emailaddress1", "contact_emailaddress1", "Email", ("emailaddress1",)
)


@lru_cache(maxsize=64)
def _parse(text: str | None) -> tuple[Key, ...]:
    if not text:
        return ()
    return tuple(
        Key(**{**item, "attributes": tuple(item["attributes"])}) for item in json.loads(text)
    )


def stored(ctx: Context) -> tuple[Key, ...]:
    return _parse(ctx.store.meta(META_KEY))


def defined(ctx: Context, table: Table) -> tuple[Key, ...]:
    """The keys of `table`: those created through metadata, and the seeded one if switched on."""
    keys = tuple(k for k in stored(ctx) if k.table == table.name)
    if ctx.config.contact_email_key and table.name == SEEDED.table:
        keys = (SEEDED, *keys)
    return keys


def not_found(table: Table) -> errors.ApiError:
    return errors.ApiError(
        404,
        "0x80040217",
        f"A record with the specified key values does not exist in {table.name} entity",
    )


def _values(table: Table, text: str) -> dict[str, Any]:
    """`name='v',other=3` → {attribute logical name: stored value}; the U16 error otherwise."""
    values: dict[str, Any] = {}
    position = 0
    text = text.strip()
    while position < len(text):
        match = _PAIR.match(text, position)
        if match is None or match.end() == position:
            raise errors.invalid_alternate_key(table.type_name)
        name, raw = match.group(1), match.group(2).strip()
        attribute = table.by_read_name.get(name)
        if attribute is None or attribute.name in values:
            raise errors.invalid_alternate_key(table.type_name)
        values[attribute.name] = _literal(table, attribute, raw)
        position = match.end()
    return values


def _literal(table: Table, attribute: Attribute, raw: str) -> Any:
    quoted = raw.startswith("'") and raw.endswith("'") and len(raw) >= 2
    if attribute.is_text != quoted and attribute.type is not AttributeType.DATETIME:
        raise errors.invalid_alternate_key(table.type_name)
    text = raw[1:-1].replace("''", "'") if quoted else raw
    try:
        if attribute.is_text:
            return text
        if attribute.type in GUID_TYPES and not _GUID.match(text):
            raise ValueError(text)
        if attribute.type in INTEGER_TYPES and not re.fullmatch(r"-?\d+", text):
            raise ValueError(text)
        return convert(attribute, text)
    except ValueError:
        raise errors.bad_key() from None


def locate(ctx: Context, table: Table, text: str) -> tuple[str | None, dict[str, Any]]:
    """The record `<set>(<text>)` names, and the key values written in it ({} for a GUID).

    The id is None when an alternate key matches no record (PATCH then creates one)."""
    if "=" not in text:
        if not _GUID.match(text.strip()):
            raise errors.bad_key()
        return text.strip().lower(), {}
    values = _values(table, text)
    if set(values) == {table.primary_id}:
        return str(values[table.primary_id]), {}
    key = next(
        (
            k
            for k in defined(ctx, table)
            if set(k.attributes) == set(values) and k.status == "Active"
        ),
        None,
    )
    if key is None:
        raise errors.invalid_alternate_key(table.type_name)
    found = ctx.store.rows(*_lookup(table, values))
    return (found[0][0] if found else None), values


def _lookup(
    table: Table, values: dict[str, Any], exclude: str | None = None
) -> tuple[str, tuple[Any, ...]]:
    conditions, params = [], []
    for name, value in values.items():
        attribute = table.by_name[name]
        column = f'"{attribute.read_name}"'
        if attribute.is_text:
            conditions.append(f"dv_fold({column}) = ?")
            params.append(convert(attribute, str(value)))
        else:
            conditions.append(f"{column} = ?")
            params.append(value)
    if exclude is not None:
        conditions.append(f'"{table.primary_id}" != ?')
        params.append(exclude)
    where = " AND ".join(conditions)
    return f'SELECT "{table.primary_id}" FROM "{table.name}" WHERE {where} LIMIT 1', tuple(params)


def check_unique(
    ctx: Context, tx: WriteTx, table: Table, row: dict[str, Any], record_id: str
) -> None:
    """DuplicateRecordEntityKey when another record has the same values for an active key."""
    for key in defined(ctx, table):
        if key.status != "Active":
            continue
        values = {name: row.get(table.by_name[name].read_name) for name in key.attributes}
        if any(value is None for value in values.values()):
            continue
        if tx.rows(*_lookup(table, values, exclude=record_id)):
            raise errors.ApiError(
                412,
                "0x80060892",
                f"Entity Key {key.display} violated. A record with the same value for "
                f"{', '.join(key.attributes)} already exists.",
            )


# -- definitions through metadata -----------------------------------------------------------------


def _label(value: object) -> str | None:
    if isinstance(value, dict):
        labels = value.get("LocalizedLabels") or [value.get("UserLocalizedLabel") or {}]
        if labels and isinstance(labels[0], dict) and isinstance(labels[0].get("Label"), str):
            return str(labels[0]["Label"])
    return None


def create(ctx: Context, table: Table, body: object) -> Key:
    """A new key from an EntityKeyMetadata body: SchemaName, DisplayName, KeyAttributes."""
    if not isinstance(body, dict):
        raise errors.payload_error("The request body must be a JSON object.")
    schema_name = body.get("SchemaName")
    attributes = body.get("KeyAttributes")
    if not isinstance(schema_name, str) or not re.fullmatch(r"[A-Za-z_]\w*", schema_name):
        raise errors.payload_error("An entity key needs a 'SchemaName'.")
    if (
        not isinstance(attributes, list)
        or not attributes
        or not all(isinstance(a, str) for a in attributes)
    ):
        raise errors.payload_error(
            "An entity key needs 'KeyAttributes', a list of attribute names."
        )
    for name in attributes:
        attribute = table.by_name.get(name)
        if attribute is None:
            raise errors.no_attribute(table.name, name)
        if attribute.type not in KEY_TYPES or attribute.name == table.primary_id:
            raise errors.invalid_argument(
                f"The attribute '{name}' of type '{attribute.type.value}' cannot be part of a key."
            )
    logical = schema_name.lower()
    existing = stored(ctx)
    if any(
        k.table == table.name and k.logical_name == logical
        for k in (*existing, *defined(ctx, table))
    ):
        raise errors.invalid_argument(f"An entity key named '{schema_name}' already exists.")
    folded = ", ".join(
        f'dv_fold("{table.by_name[a].read_name}")'
        if table.by_name[a].is_text
        else f'"{table.by_name[a].read_name}"'
        for a in attributes
    )
    nulls = " AND ".join(f'"{table.by_name[a].read_name}" IS NOT NULL' for a in attributes)
    clash = ctx.store.rows(
        f'SELECT 1 FROM "{table.name}" WHERE {nulls} GROUP BY {folded} HAVING count(*) > 1 LIMIT 1'
    )
    key = Key(
        table.name, logical, schema_name, _label(body.get("DisplayName")) or schema_name,
        tuple(attributes), "Failed" if clash else "Active",
    )  # fmt: skip
    _save(ctx, (*existing, key))
    return key


def delete(ctx: Context, table: Table, logical_name: str) -> None:
    existing = stored(ctx)
    kept = tuple(
        k for k in existing if not (k.table == table.name and k.logical_name == logical_name)
    )
    if len(kept) == len(existing):
        raise errors.ApiError(
            404,
            errors.ODATA_ERROR,
            f"Could not find key '{logical_name}' on entity '{table.name}'.",
        )
    _save(ctx, kept)


def _save(ctx: Context, keys: tuple[Key, ...]) -> None:
    with ctx.store.write(ctx.now()) as tx:
        tx.set_meta(META_KEY, json.dumps([asdict(k) for k in keys]))
