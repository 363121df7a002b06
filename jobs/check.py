"""`dvconnect check`: settings and mappings are valid; online, every mapped column exists.

Online, each mapped table is looked up in EntityDefinitions (set name, primary key, change
tracking) and each mapped column in its Attributes, with a type the mapping can hold; so is each
contact column `link-orphans` writes (`orphans.yaml`), synced or not.
"""

from __future__ import annotations

from connector.errors import NotFoundError
from connector.mapping import ColumnType, TableMapping
from jobs.context import Context

# Which Dataverse AttributeTypes each mapping type can hold.
COMPATIBLE: dict[ColumnType, frozenset[str]] = {
    "guid": frozenset({"Uniqueidentifier", "Lookup", "Owner", "Customer"}),
    "string": frozenset({"String", "Memo", "EntityName"}),
    "integer": frozenset({"Integer", "Picklist", "State", "Status"}),
    "bigint": frozenset({"BigInt", "Integer"}),
    "number": frozenset({"Decimal", "Double", "Money", "Integer"}),
    "boolean": frozenset({"Boolean"}),
    "datetime": frozenset({"DateTime"}),
    "date": frozenset({"DateTime"}),
}


def _attribute_name(column: str) -> str:
    """`_parentcontactid_value` → `parentcontactid`; other names are unchanged."""
    if column.startswith("_") and column.endswith("_value"):
        return column[1 : -len("_value")]
    return column


def check_table(ctx: Context, table: TableMapping) -> tuple[list[str], list[str]]:
    """(problems, notes) for one mapped table against the org's metadata."""
    dataverse = ctx.online()
    try:
        definition = dataverse.table_definition(table.name)
    except NotFoundError:
        return [f"{table.name}: no such table in Dataverse"], []
    problems: list[str] = []
    notes: list[str] = []
    if definition.get("EntitySetName") != table.entity_set:
        problems.append(
            f"{table.name}: entity_set is {table.entity_set!r}, "
            f"Dataverse says {definition.get('EntitySetName')!r}"
        )
    if definition.get("PrimaryIdAttribute") != table.primary_key:
        problems.append(
            f"{table.name}: primary_key is {table.primary_key!r}, "
            f"Dataverse says {definition.get('PrimaryIdAttribute')!r}"
        )
    if table.change_tracking and not definition.get("ChangeTrackingEnabled"):
        notes.append(
            f"{table.name}: change tracking is off in Dataverse; syncs follow modifiedon and "
            "cannot see deletions (turn on 'Track changes' for the table, then "
            f"`dvconnect state reset {table.name}`)"
        )
    attributes = dataverse.attributes(table.name)
    for column, kind in table.columns.items():
        if kind == "lookuptype":  # read from its lookup's annotation: the lookup is checked
            continue
        attribute = _attribute_name(column)
        found = attributes.get(attribute)
        if found is None:
            problems.append(f"{table.name}.{column}: no column {attribute!r} in Dataverse")
        elif found not in COMPATIBLE[kind]:
            problems.append(
                f"{table.name}.{column}: mapped as {kind}, but Dataverse's type is {found}"
            )
    return problems, notes


def check_online(ctx: Context) -> tuple[list[str], list[str]]:
    """Problems and notes for every mapped table; WhoAmI first proves the credentials."""
    ctx.online().who_am_i()
    problems: list[str] = []
    notes: list[str] = []
    for table in ctx.mapping.tables.values():
        table_problems, table_notes = check_table(ctx, table)
        problems += table_problems
        notes += table_notes
    contact_attributes = ctx.online().attributes("contact")
    for column in ctx.mapping.orphans.link_orphans.contact_columns:
        if column not in contact_attributes:
            problems.append(
                f"orphans.yaml: link_orphans.contact_columns.{column}: "
                f"no column {column!r} on contact in Dataverse"
            )
    return problems, notes
