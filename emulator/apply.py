"""`$apply` aggregation (§3.8): `filter(…)`, `groupby((…),aggregate(…))` and `aggregate(…)`.

Transformations are separated by `/` and run in order: any number of `filter(<$filter>)` first,
then at most one `groupby((p1,p2)[,aggregate(…)])` or `aggregate(…)`. Aggregates are
`<property> with sum|min|max|average|countdistinct as <alias>` and `$count as <alias>`. Rows come
back under the property and alias names, one per group, ordered by the grouped properties (or by
`$orderby` on them; aliases cannot be ordered by, §3.8). More than 50,000 matching records is the
AggregateQueryRecordLimit error.
"""

from __future__ import annotations

import re
from typing import Any

from emulator import errors
from emulator.context import Context
from emulator.query import Compiled, split_top
from emulator.schema import Attribute, AttributeType, Table
from emulator.wire import Response, dumps, raw_json_response

AGGREGATE_LIMIT = 50_000
_METHODS = {
    "sum": "sum({})",
    "min": "min({})",
    "max": "max({})",
    "average": "avg({})",
    "countdistinct": "count(DISTINCT {})",
}
_STEP = re.compile(r"^(filter|groupby|aggregate)\((.*)\)$", re.DOTALL)
_AGGREGATE = re.compile(r"^(\$count|[A-Za-z_]\w*)(?:\s+with\s+(\w+))?\s+as\s+([A-Za-z_]\w*)$")


def aggregate_limit() -> errors.ApiError:
    return errors.ApiError(
        400, "0x8004E023", "The maximum record limit is exceeded. Reduce the number of records."
    )


def _steps(text: str) -> list[tuple[str, str]]:
    """`filter(a)/groupby((b))` → [("filter", "a"), ("groupby", "(b)")]."""
    steps: list[tuple[str, str]] = []
    depth, quoted, start = 0, False, 0
    for index, char in enumerate(text + "/"):
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif char == "/" and depth == 0 and not quoted:
            part = text[start:index].strip()
            match = _STEP.match(part)
            if match is None:
                raise errors.bad_query(f"The $apply transformation '{part}' is not supported.")
            steps.append((match.group(1), match.group(2)))
            start = index + 1
    return steps


class _Apply:
    def __init__(self, table: Table) -> None:
        self.table = table
        self.groups: list[Attribute] = []
        self.aggregates: list[tuple[str, str, Attribute | None]] = []  # (alias, sql, source)

    def property(self, name: str) -> Attribute:
        attribute = self.table.by_read_name.get(name.strip())
        if attribute is None:
            raise errors.unknown_property(self.table.type_name, name.strip())
        return attribute

    def aggregate(self, text: str) -> None:
        items = split_top(text, ",")
        if not items:
            raise errors.bad_query("aggregate needs at least one aggregate expression.")
        for item in items:
            match = _AGGREGATE.match(item.strip())
            if match is None:
                raise errors.bad_query(f"The aggregate expression '{item}' is not valid.")
            source, method, alias = match.groups()
            if source == "$count":
                if method is not None:
                    raise errors.bad_query("$count takes no aggregation method.")
                self.aggregates.append((alias, "count(*)", None))
                continue
            attribute = self.property(source)
            if method not in _METHODS:
                raise errors.bad_query(
                    f"The aggregation method '{method}' is not supported; use sum, min, max, "
                    "average, countdistinct or $count."
                )
            column = f't."{attribute.read_name}"'
            self.aggregates.append((alias, _METHODS[method].format(column), attribute))

    def groupby(self, text: str) -> None:
        parts = split_top(text, ",")
        if not parts or not (parts[0].startswith("(") and parts[0].endswith(")")):
            raise errors.bad_query("groupby takes a parenthesized list of properties.")
        self.groups = [self.property(name) for name in split_top(parts[0][1:-1], ",")]
        for rest in parts[1:]:
            match = _STEP.match(rest)
            if match is None or match.group(1) != "aggregate":
                raise errors.bad_query(f"The groupby argument '{rest}' is not supported.")
            self.aggregate(match.group(2))


def execute(
    ctx: Context, table: Table, text: str, options: dict[str, str], scope: Compiled | None
) -> Response:
    """Run `$apply` over `table` (narrowed by `scope` on a related collection)."""
    apply = _Apply(table)
    conditions: list[str] = [scope.sql] if scope else []
    params: list[Any] = list(scope.params) if scope else []
    shaped = False
    for name, argument in _steps(text):
        if name == "filter":
            if shaped:
                raise errors.bad_query("filter after groupby or aggregate is not supported.")
            compiled = ctx.compiler.filter(table, argument)
            conditions.append(compiled.sql)
            params.extend(compiled.params)
        elif shaped:
            raise errors.bad_query("Only one groupby or aggregate transformation is supported.")
        else:
            shaped = True
            if name == "groupby":
                apply.groupby(argument)
            else:
                apply.aggregate(argument)
    if not shaped:
        raise errors.bad_query("$apply needs a groupby or aggregate transformation.")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    matched = ctx.store.scalar(
        f'SELECT count(*) FROM (SELECT 1 FROM "{table.name}" t{where} LIMIT ?)',
        (*params, AGGREGATE_LIMIT + 1),
    )
    if int(matched) > AGGREGATE_LIMIT:
        raise aggregate_limit()
    groups = [f't."{a.read_name}"' for a in apply.groups]
    order = _order(apply, options.get("$orderby"))
    columns = [*(f'{g} AS "{a.read_name}"' for g, a in zip(groups, apply.groups, strict=True)),
               *(f'{sql} AS "{alias}"' for alias, sql, _ in apply.aggregates)]  # fmt: skip
    sql = f'SELECT {", ".join(columns)} FROM "{table.name}" t{where}'
    if groups:
        sql += f" GROUP BY {', '.join(groups)}"
    if order:
        sql += f" ORDER BY {order}"
    names = [a.read_name for a in apply.groups] + [alias for alias, _, _ in apply.aggregates]
    sources: list[Attribute | None] = [*apply.groups, *(a for _, _, a in apply.aggregates)]
    rows = [_row(names, sources, values) for values in ctx.store.rows(sql, params)]
    context = f"{ctx.api_root}$metadata#{table.entity_set}({','.join(names)})"
    body = '{"@odata.context":' + dumps(context) + ',"value":[' + ",".join(rows) + "]}"
    return raw_json_response(200, body)


def _order(apply: _Apply, text: str | None) -> str:
    grouped = {a.read_name for a in apply.groups}
    keys = []
    for part in split_top(text or "", ","):
        name, _, direction = part.partition(" ")
        if name not in grouped:
            raise errors.bad_query(
                f"$orderby with $apply can only name grouped properties, not '{name}'."
            )
        keys.append(f'"{name}" {"DESC" if direction.strip() == "desc" else "ASC"}')
    return ", ".join(keys or (f'"{a.read_name}"' for a in apply.groups))


def _row(names: list[str], sources: list[Attribute | None], values: tuple[Any, ...]) -> str:
    row: dict[str, Any] = {}
    for name, source, value in zip(names, sources, values, strict=True):
        if source is not None and source.type is AttributeType.BOOLEAN and value is not None:
            value = bool(value)
        row[name] = value
    return dumps(row)
