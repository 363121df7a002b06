"""The `sdkmessage` / `sdkmessagefilter` rows that say which message serves which table.

Clients probe them before using a bulk action (base §10.3, §23.2):
`sdkmessagefilters?$filter=sdkmessageid/name eq 'CreateMultiple' and primaryobjecttypecode eq
'lead'`. The rows follow what the emulator really does: the bulk messages for the tables that
take them (activity tables only while the U28 switch `bulk_on_activities` is on), and the bound
actions it serves. `sync` brings the rows in line with the schema and the configuration; it runs
after seeding, at start-up and after every configuration change, and writes only what differs.
"""

from __future__ import annotations

import uuid
from typing import Any

from emulator.context import EMULATOR_NAMESPACE, Config, Context
from emulator.schema import Schema, Table
from emulator.storage import WriteTx
from emulator.writes import insert_system

BULK_MESSAGES = ("CreateMultiple", "UpdateMultiple", "UpsertMultiple")
BOUND_ACTIONS = (
    ("QualifyLead", "lead"),
    ("SendEmail", "email"),
    ("AddToQueue", "queue"),
    ("ExecuteWorkflow", "workflow"),
    ("new_RouteLead", "lead"),
)


def bulk_supported(config: Config, table: Table) -> bool:
    """Whether CreateMultiple, UpdateMultiple and UpsertMultiple serve `table` (§10, U28, U56)."""
    return table.bulk and (not table.is_activity or config.bulk_on_activities)


def _id(kind: str, *parts: str) -> str:
    return str(uuid.uuid5(EMULATOR_NAMESPACE, ":".join((kind, *parts))))


def wanted(schema: Schema, config: Config) -> set[tuple[str, str]]:
    """(message, table) pairs that have a filter row."""
    pairs = {
        (message, table.name)
        for table in schema.tables
        if bulk_supported(config, table)
        for message in BULK_MESSAGES
    }
    return pairs | set(BOUND_ACTIONS)


def sync(ctx: Context, tx: WriteTx) -> None:
    """Create the missing message and filter rows, delete those no longer true."""
    schema = ctx.schema
    messages, filters = schema.by_name["sdkmessage"], schema.by_name["sdkmessagefilter"]
    pairs = wanted(schema, ctx.config)
    for name in sorted({message for message, _ in pairs}):
        if tx.record(messages, _id("sdkmessage", name)) is None:
            row: dict[str, Any] = {"sdkmessageid": _id("sdkmessage", name), "name": name}
            row |= {"categoryname": "Custom" if name.startswith("new_") else None, "isprivate": 0}
            insert_system(ctx, tx, messages, row)
    present = {row[0] for row in tx.rows('SELECT sdkmessagefilterid FROM "sdkmessagefilter"')}
    keep = {_id("sdkmessagefilter", message, table): (message, table) for message, table in pairs}
    for filter_id in sorted(present - keep.keys()):
        tx.delete(filters, filter_id)
    for filter_id, (message, table) in sorted(keep.items()):
        if filter_id in present:
            continue
        insert_system(ctx, tx, filters, {
            "sdkmessagefilterid": filter_id, "name": f"{message} {table}",
            "_sdkmessageid_value": _id("sdkmessage", message), "primaryobjecttypecode": table,
            "secondaryobjecttypecode": "none", "iscustomprocessingstepallowed": 1,
            "isvisible": 1,
        })  # fmt: skip
