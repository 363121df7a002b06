"""Change capture: the real value changes an incremental sync sees, for journeys' triggers.

A journey may be entered on a change (`trigger:` in its file): a lead or contact created, or a
watched column of one changing value. When a sync page holds rows of a table some journey
triggers on, `capture` reads the stored values of the page's ids in one query (before the page
is upserted, in the page's transaction) and records in `dvc_changes`:

* `created` — a row the store did not hold (only when a trigger on the table asks for it);
* `changed` — a watched column whose value differs, with the old and new value, one row per
  column; only the columns the triggers name are compared, so a touch of `modifiedon` (or of
  any column no trigger names) is no change.

Only incremental reads capture (delta links and watermarks): a full read — the first load of a
table, `state reset`, a resync after an expired token, a periodic full read, a column added to
the mapping — records nothing, so existing rows never fire "created" and a new column's values
never fire "changed". Changes made while a table is being read in full are not triggers.

dvconnect's own writes are not triggers. An intent of the outbox (pending, or done after the
table's last completed read began: its effect may be what this read brings) that created the
row, or wrote the column's new value, makes that part of the change its own: it is dropped. The
columns an intent writes are its body's (a lookup bound as `x@odata.bind: /set(id)` is
`_x_value`), and for `QualifyLead` `statecode` 1 with its `Status`; a custom action or workflow
writes what it likes, unknown here, so changes after one are triggers.

Tables no journey triggers on cost nothing: `watches` has no entry for them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table, and_, or_, select, true

from connector import tables as dvc
from connector.mapping.journeys import Journey
from connector.mapping.tables import TableMapping

READ_CHUNK = 500  # ids per read of stored rows or intents (below SQLite's 999 variables)
_BIND = re.compile(r"^/?[A-Za-z_][A-Za-z0-9_]*\(\{?([0-9A-Fa-f-]{36})\}?\)$")
Created = object()  # in what an intent wrote: it created the record


@dataclass(frozen=True)
class Watch:
    """What the triggers on one table need: new rows, and which columns' values."""

    created: bool
    columns: tuple[str, ...]


def watches(journeys: Iterable[Journey]) -> dict[str, Watch]:
    """Per table some journey triggers on, what its syncs must capture."""
    created: dict[str, bool] = {}
    columns: dict[str, set[str]] = {}
    for journey in journeys:
        for table, part in journey.trigger.tables() if journey.trigger else []:
            created[table] = created.get(table, False) or bool(part.created)
            columns.setdefault(table, set()).update([part.changed] if part.changed else [])
    return {table: Watch(created[table], tuple(sorted(columns[table]))) for table in created}


def encode(value: Any) -> str | None:
    """A column value as `dvc_changes` keeps it: JSON, whole numbers without a fraction, empty
    as None (SQL NULL), so a trigger's `to` compares as text with what a sync saw."""
    if value is None or value == "":
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value)


def _same(old: Any, new: Any) -> bool:
    return encode(old) == encode(new)


def capture(
    conn: Connection, table: TableMapping, stored: Table, watch: Watch,
    rows: Sequence[dict[str, Any]], *, seen_tick: int | None, run_id: int | None, at: str,
) -> int:  # fmt: skip
    """Record the real changes `rows` bring to `stored` (not yet upserted); returns how many
    rows of `dvc_changes` were written. See the module docstring."""
    pk = table.primary_key
    incoming = {str(row[pk]): row for row in rows if row.get(pk)}
    before: dict[str, Any] = {}
    ids = list(incoming)
    for start in range(0, len(ids), READ_CHUNK):
        chunk = ids[start : start + READ_CHUNK]
        query = select(stored.c[pk], *(stored.c[c] for c in watch.columns)).where(
            stored.c[pk].in_(chunk)
        )
        before.update({str(row[0]): row for row in conn.execute(query)})
    found: list[dict[str, Any]] = []
    for record_id, row in incoming.items():
        old = before.get(record_id)
        if old is None:
            if watch.created:
                found.append({"record_id": record_id, "kind": "created", "column_name": None,
                              "old_value": None, "new_value": None})  # fmt: skip
            continue
        for position, column in enumerate(watch.columns, start=1):
            if not _same(old[position], row.get(column)):
                found.append({"record_id": record_id, "kind": "changed", "column_name": column,
                              "old_value": encode(old[position]),
                              "new_value": encode(row.get(column))})  # fmt: skip
    if not found:
        return 0
    own = own_writes(conn, table.name, {change["record_id"] for change in found}, seen_tick)
    kept = [change for change in found if not _is_own(change, own)]
    if kept:
        conn.execute(
            dvc.changes.insert(),
            [{"table_name": table.name, "run_id": run_id, "at": at, **change} for change in kept],
        )
    return len(kept)


def own_writes(
    conn: Connection, table: str, record_ids: Iterable[str], seen_tick: int | None
) -> dict[str, dict[Any, Any]]:
    """What dvconnect's intents that a sync may not have read back yet wrote on these records:
    per record, each column's value (`Created` under the key `None` for a create)."""
    o = dvc.outbox.c
    unseen = true() if seen_tick is None else o.done_tick > seen_tick
    recent = or_(o.status == "pending", and_(o.status == "done", unseen))
    own: dict[str, dict[Any, Any]] = {}
    ids = sorted(record_ids)
    for start in range(0, len(ids), READ_CHUNK):
        chunk = ids[start : start + READ_CHUNK]
        query = (
            select(o.record_id, o.kind, o.action, o.body)
            .where(o.table_name == table, o.record_id.in_(chunk), recent)
            .order_by(o.intent_id)
        )
        for record_id, kind, action, body in conn.execute(query):
            own.setdefault(record_id, {}).update(written(kind, action, json.loads(body)))
    return own


def written(kind: str, action: str | None, body: dict[str, Any]) -> dict[Any, Any]:
    """The columns an intent sets, by value (`None: Created` when it creates the record)."""
    if kind == "action":
        if action == "QualifyLead":
            return {"statecode": 1, "statuscode": body.get("Status")}
        return {}
    values: dict[Any, Any] = {None: Created} if kind == "create" else {}
    for key, value in body.items():
        if key.endswith("@odata.bind"):
            bound = _BIND.match(str(value))
            values[f"_{key.removesuffix('@odata.bind')}_value"] = (
                bound.group(1).lower() if bound else value
            )
        elif "@" not in key:
            values[key] = value
    return values


def _is_own(change: dict[str, Any], own: dict[str, dict[Any, Any]]) -> bool:
    values = own.get(change["record_id"])
    if values is None:
        return False
    if change["kind"] == "created":
        return values.get(None) is Created
    column = change["column_name"]
    new = None if change["new_value"] is None else json.loads(change["new_value"])
    return column in values and _loose(values[column]) == _loose(new)


def _loose(value: Any) -> str | None:
    """A value as text, so an intent's `"8"` (a rendered template) is the 8 a sync reads."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
