"""`queues(<id>)/Microsoft.Dynamics.CRM.AddToQueue` (§21.4, U52).

The bound queue is the destination; `Target` names the activity (`@odata.type` and its key).
The result is a `queueitem` (`queueid`, `objectid`), answered as `AddToQueueResponse
{"QueueItemId"}`. A record already in the destination queue keeps its item (the same id comes
back); with `SourceQueue`, the record's item in that queue moves to the destination instead.
`QueueItemProperties` may set the item's `title`; its `queueid` / `objectid` are ignored, as
documented.
"""

from __future__ import annotations

from typing import Any

from emulator import errors
from emulator.context import Context
from emulator.schema import Attribute, Table
from emulator.storage import WriteTx
from emulator.wire import Request, Response, json_response
from emulator.writes import action_parameters, coerce, insert_system, parse_key

NAMESPACE = "Microsoft.Dynamics.CRM."
PARAMETERS: dict[str, type | None] = {"Target": None, "SourceQueue": None,
                                       "QueueItemProperties": None}  # fmt: skip


def _reference(
    ctx: Context, value: object, name: str, allowed: tuple[str, ...]
) -> tuple[Table, str]:
    """A typed entity reference parameter: `{"@odata.type": "Microsoft.Dynamics.CRM.x", "<pk>"}`."""
    kind = str(value.get("@odata.type", "")).lstrip("#") if isinstance(value, dict) else ""
    table = ctx.schema.by_name.get(kind.removeprefix(NAMESPACE))
    if not isinstance(value, dict) or table is None or table.name not in allowed:
        raise errors.payload_error(
            f"The parameter '{name}' must be an entity reference with its '@odata.type', one of: "
            f"{', '.join(f'{NAMESPACE}{t}' for t in allowed)}."
        )
    if value.get(table.primary_id) is None:
        raise errors.payload_error(f"The parameter '{name}' must carry its '{table.primary_id}'.")
    return table, parse_key(table, str(value[table.primary_id]))


def _cut(text: str | None, column: Attribute) -> str | None:
    """A default title: the record's subject, cut to the title's MaxLength."""
    return text[: column.max_length] if text is not None else None


def _item_of(tx: WriteTx, queue_id: str, record_id: str) -> str | None:
    found = tx.rows(
        'SELECT queueitemid FROM "queueitem" WHERE "_queueid_value" = ? AND "_objectid_value" = ? '
        "ORDER BY createdon, queueitemid LIMIT 1",
        (queue_id, record_id),
    )
    return found[0][0] if found else None


def add_to_queue(ctx: Context, request: Request, queue: Table, queue_id: str) -> Response:
    """Put the `Target` record into the bound queue (or move it there from `SourceQueue`)."""
    body = action_parameters(request, "AddToQueue", PARAMETERS)
    items = ctx.schema.by_name["queueitem"]
    targets = tuple(t.table for t in items.by_name["objectid"].targets)
    if body.get("Target") is None:
        raise errors.payload_error(
            "The parameter 'Target' of the operation 'AddToQueue' is required."
        )
    table, record_id = _reference(ctx, body["Target"], "Target", targets)
    source = None
    if body.get("SourceQueue") is not None:
        source = _reference(ctx, body["SourceQueue"], "SourceQueue", ("queue",))[1]
    properties = body.get("QueueItemProperties") or {}
    if not isinstance(properties, dict):
        raise errors.payload_error("The parameter 'QueueItemProperties' must be a queueitem.")
    title_column = items.by_name["title"]
    title = coerce(items, title_column, properties.get("title"))
    with ctx.store.write(ctx.now()) as tx:
        for kind, key in ((queue, queue_id), (table, record_id)):
            if tx.record(kind, key) is None:
                raise errors.does_not_exist(kind.name, key)
        if source is not None and tx.record(queue, source) is None:
            raise errors.does_not_exist(queue.name, source)
        item_id = _item_of(tx, queue_id, record_id)
        moving = _item_of(tx, source, record_id) if source and item_id is None else None
        extra: dict[str, Any] = {"title": title} if title is not None else {}
        if moving is not None:
            tx.update(items, moving, {"_queueid_value": queue_id, "enteredon": tx.now,
                                      "modifiedon": tx.now, **extra})  # fmt: skip
            item_id = moving
        elif item_id is None:
            record = tx.record(table, record_id) or {}
            item_id = insert_system(ctx, tx, items, {
                "title": title if title is not None else _cut(record.get("subject"), title_column),
                "_queueid_value": queue_id, "_objectid_value": record_id,
                "objectidtype": table.name, "enteredon": tx.now,
            })  # fmt: skip
        elif extra:
            tx.update(items, item_id, {**extra, "modifiedon": tx.now})
    context = f"{ctx.api_root}$metadata#{NAMESPACE}AddToQueueResponse"
    return json_response(200, {"@odata.context": context, "QueueItemId": item_id})
