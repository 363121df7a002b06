"""Owners (§21.1): who may own a record, the owning user / team columns, the Assign cascade.

An owner is a systemuser or a team (`ownerid@odata.bind` to `/systemusers(<id>)` or
`/teams(<id>)`); an access team cannot own records (U51). Which of the two it is lives in the
`owneridtype` storage column (not a Web API property: reads show it through the
`lookuplogicalname` annotation) and in the read-only `_owninguser_value` / `_owningteam_value`.
Giving a record a new owner gives the records of its parental relationships (the activities
regarding it) the same owner (Assign cascade, §18.4, §21.1). A disabled user may own records: the
reference documents no refusal.
"""

from __future__ import annotations

from typing import Any

from emulator import errors
from emulator.schema import Schema, Table
from emulator.storage import WriteTx

OWNER = "_ownerid_value"
OWNER_TYPE = "owneridtype"
ACCESS_TEAM = 1


def check_owner(tx: WriteTx, schema: Schema, target: str, owner_id: str) -> None:
    """U51: owner teams (0) and group teams (2, 3) may own records, access teams (1) not."""
    if target != "team":
        return
    team = tx.record(schema.by_name["team"], owner_id)
    if team is not None and team["teamtype"] == ACCESS_TEAM:
        raise errors.invalid_argument("Access teams cannot own records.")


def fill_owner(table: Table, values: dict[str, Any]) -> None:
    """When `_ownerid_value` is written: its type (a user unless a team was bound) and the owning
    user / team columns that mirror it."""
    if OWNER not in values or "ownerid" not in table.by_name:
        return
    owner = values[OWNER]
    kind = values.get(OWNER_TYPE) or "systemuser"
    values[OWNER_TYPE] = kind if owner is not None else None
    values["_owninguser_value"] = owner if kind == "systemuser" else None
    values["_owningteam_value"] = owner if kind == "team" else None


def owner_changed(values: dict[str, Any], current: dict[str, Any]) -> bool:
    return OWNER in values and (values[OWNER], values.get(OWNER_TYPE)) != (
        current.get(OWNER),
        current.get(OWNER_TYPE),
    )


def cascade_assign(
    tx: WriteTx, schema: Schema, table: Table, record_id: str, values: dict[str, Any]
) -> None:
    """Assign cascade: the records of the table's parental relationships take its new owner."""
    owner = {
        key: values[key] for key in (OWNER, OWNER_TYPE, "_owninguser_value", "_owningteam_value")
    }
    for reference in schema.references_to(table.name):
        if not reference.target.assign:
            continue
        attribute = reference.attribute
        where = f'WHERE "{attribute.read_name}" = ?'
        params: tuple[str, ...] = (record_id,)
        if attribute.type_column:
            where += f' AND "{attribute.type_column}" = ?'
            params += (table.name,)
        for child in tx.ids(reference.table, where, params):
            tx.update(reference.table, child, {**owner, "modifiedon": tx.now})
