"""Seed the emulator from a rows file instead of generated data: a twin of an org (`--rows`).

The file (what `dvconnect emulator --from-store` writes) holds JSON lines, one record each:
`{"table": "<logical name>", "row": {<Web API property>: value, …}}`, lookups as `_x_value` with
their type column where it is known (`owneridtype`, `regardingobjectidtype`). It is read line by
line, so memory stays flat. Around its rows the twin holds what every org has and the emulator
needs: the root business unit, its default team, the application user of the client id the
emulator serves, the system views (and the message filters the server adds). Rows of tables the
emulator does not serve and columns it does not know are left out, and logged; a row whose record
is there already (the application user) updates it; columns a row lacks take the defaults of a
Web API create (state, status, owner, business unit, timestamps).

After the rows: a polymorphic lookup whose type the file did not give (or gave wrong) takes the
table its record is in, and a lookup to a record that is in no table (a team owning leads, a
contact's account, when the store does not sync teams or accounts) gets a placeholder record,
named as one, so reads, expansions and binds to it work as in the org.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from emulator import owners, seed
from emulator.context import BUSINESS_UNIT_ID, Context, application_user_id
from emulator.schema import BUSINESSUNIT, GUID_TYPES, SAVEDQUERY, SYSTEMUSER, TEAM, AttributeType
from emulator.schema import Table as SchemaTable
from emulator.storage import WriteTx
from emulator.writes import fill_defaults

logger = logging.getLogger("emulator")

MIRRORS = ("owninguser", "owningteam")  # follow the owner: refreshed after the owners are known


class RowsError(ValueError):
    """The rows file cannot be read or holds something that is not a row."""


def load(ctx: Context, tx: WriteTx, path: Path) -> dict[str, int]:
    """Fill empty tables from `path` (and the twin's skeleton); returns the rows per table."""
    counts: Counter[str] = Counter()
    left_out: Counter[str] = Counter()
    unknown: dict[str, set[str]] = {}
    for table, row in _skeleton(ctx, tx.now):
        _put(ctx, tx, table, row)
    try:
        handle = path.open(encoding="utf-8")
    except OSError as error:
        raise RowsError(f"{path}: {error.strerror or error}") from None
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:
                raise RowsError(f"{path}:{number}: not a JSON document") from None
            if not (
                isinstance(item, dict)
                and isinstance(item.get("table"), str)
                and isinstance(item.get("row"), dict)
            ):
                raise RowsError(f'{path}:{number}: expected {{"table": "…", "row": {{…}}}}')
            table = ctx.schema.by_name.get(item["table"])
            if table is None:
                left_out[item["table"]] += 1
                continue
            values = _values(table, item["row"], unknown.setdefault(table.name, set()))
            if not isinstance(values.get(table.primary_id), str):
                raise RowsError(f"{path}:{number}: a {table.name} row needs its {table.primary_id}")
            _put(ctx, tx, table, values)
            counts[table.name] += 1
    for name, count in sorted(left_out.items()):
        logger.warning("rows: %d rows of %s left out: the emulator does not serve it", count, name)
    for name, columns in sorted(unknown.items()):
        if columns:
            logger.warning("rows: %s columns left out (not served): %s", name,
                           ", ".join(sorted(columns)))  # fmt: skip
    loaded = [ctx.schema.by_name[name] for name in sorted(counts)]
    for table in loaded:
        _type_lookups(ctx, tx, table)
    placeholders: Counter[str] = Counter()
    for table in loaded:
        for name, made in _placeholders(ctx, tx, table).items():
            placeholders[name] += made
    for table in loaded:
        _mirror_owner(tx, table)
    for name, made in sorted(placeholders.items()):
        logger.info("rows: %d placeholder %s records for lookups to records not in the rows",
                    made, name)  # fmt: skip
    return {**counts, **{f"{name} placeholders": n for name, n in placeholders.items()}}


def _skeleton(ctx: Context, now: str) -> list[tuple[SchemaTable, dict[str, Any]]]:
    """What every org has and the emulator needs, whatever the rows hold."""
    made = {"createdon": now, "modifiedon": now}
    unit = {"businessunitid": BUSINESS_UNIT_ID, "name": "Twin", "isdisabled": 0, **made}
    team = {"teamid": seed.DEFAULT_TEAM_ID, "name": "Twin", "teamtype": 0, "isdefault": 1,
            "_businessunitid_value": BUSINESS_UNIT_ID, **made}  # fmt: skip
    views = seed.system_views(application_user_id(ctx.client_id), now)
    return [
        (BUSINESSUNIT, unit),
        (TEAM, team),
        (SYSTEMUSER, seed.application_user(ctx.client_id, now)),
        *((SAVEDQUERY, view) for view in views),
    ]


def _values(table: SchemaTable, row: dict[str, Any], unknown: set[str]) -> dict[str, Any]:
    """A file row as storage values: booleans as 0/1, GUIDs in lower case, known columns only."""
    type_columns = {a.type_column for a in table.attributes if a.type_column}
    values: dict[str, Any] = {}
    for key, value in row.items():
        if key in type_columns:
            values[key] = value
            continue
        attribute = table.by_read_name.get(key)
        if attribute is None or key == "versionnumber":
            unknown.add(key)
            continue
        if attribute.type is AttributeType.BOOLEAN and value is not None:
            value = int(bool(value))
        elif attribute.type in GUID_TYPES and isinstance(value, str):
            value = value.lower()
        values[key] = value
    return values


def _put(ctx: Context, tx: WriteTx, table: SchemaTable, values: dict[str, Any]) -> None:
    """Insert the row, or update the record of its id when it exists."""
    record_id = values[table.primary_id]
    if tx.record(table, record_id) is None:
        fill_defaults(ctx, table, values, tx.now)
        tx.insert(table, values)
    else:
        owners.fill_owner(table, values)
        tx.update(table, record_id, {k: v for k, v in values.items() if k != table.primary_id})


def _found(ctx: Context, target: str, column: str) -> str:
    """SQL: the record `column` names is in the table `target`."""
    table = ctx.schema.by_name[target]
    return f'EXISTS (SELECT 1 FROM "{target}" x WHERE x."{table.primary_id}" = t."{column}")'


def _targets(ctx: Context, table: SchemaTable, name: str) -> list[str]:
    return [t.table for t in table.by_name[name].targets if t.table in ctx.schema.by_name]


def _type_lookups(ctx: Context, tx: WriteTx, table: SchemaTable) -> None:
    """Polymorphic lookups whose type is missing or names a table without the record: the
    first table holding the record."""
    for attribute in table.attributes:
        targets = _targets(ctx, table, attribute.name)
        if not attribute.type_column or not targets:
            continue
        column, kind = attribute.read_name, attribute.type_column
        typed = " OR ".join(f"(t.\"{kind}\" = '{n}' AND {_found(ctx, n, column)})" for n in targets)
        choice = " ".join(f"WHEN {_found(ctx, n, column)} THEN '{n}'" for n in targets)
        tx.rows(
            f'UPDATE "{table.name}" AS t SET "{kind}" = CASE {choice} ELSE t."{kind}" END '
            f'WHERE t."{column}" IS NOT NULL AND NOT ({typed})'
        )


def _placeholders(ctx: Context, tx: WriteTx, table: SchemaTable) -> Counter[str]:
    """A placeholder record for every lookup value whose record is in no table."""
    made: Counter[str] = Counter()
    for attribute in table.attributes:
        targets = _targets(ctx, table, attribute.name)
        if not attribute.is_lookup or not targets or attribute.name in MIRRORS:
            continue
        column, kind = attribute.read_name, attribute.type_column
        anywhere = " OR ".join(_found(ctx, n, column) for n in targets)
        type_sql = f't."{kind}"' if kind else "NULL"
        missing = tx.rows(
            f'SELECT DISTINCT t."{column}", {type_sql} FROM "{table.name}" t '
            f'WHERE t."{column}" IS NOT NULL AND NOT ({anywhere}) ORDER BY 1'
        )
        for record_id, named in missing:
            target = ctx.schema.by_name[named if named in targets else targets[0]]
            if tx.record(target, record_id) is None:
                name = f"Placeholder {target.name} {record_id[:8]} (not in the twin's rows)"
                _put(ctx, tx, target, {target.primary_id: record_id, target.primary_name: name})
                made[target.name] += 1
            if kind:
                tx.rows(
                    f'UPDATE "{table.name}" SET "{kind}" = ? WHERE "{column}" = ?',
                    (target.name, record_id),
                )
    return made


def _mirror_owner(tx: WriteTx, table: SchemaTable) -> None:
    """The read-only owning user / team columns follow the owner and its (corrected) type."""
    if "ownerid" not in table.by_name or not all(m in table.by_name for m in MIRRORS):
        return
    tx.rows(
        f'UPDATE "{table.name}" SET '
        "_owninguser_value = CASE WHEN owneridtype = 'systemuser' THEN _ownerid_value END, "
        "_owningteam_value = CASE WHEN owneridtype = 'team' THEN _ownerid_value END"
    )
