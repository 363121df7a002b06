"""FetchXML over the Web API (§3.9, §4.4): `<set>?fetchXml=…`, also run by saved and user queries.

The document is parsed with defusedxml (it comes from clients: no DTDs, no entity expansion) and
compiled to one SQL statement over the store: `<attribute>`/`<all-attributes>` (none means every
column), `<filter type="and|or">` with `<condition>`s (the comparison, text, list, null, date,
user, business unit and hierarchy operators, the date ones with the same semantics as the query
functions of `functions.py`), `<link-entity>` (inner or outer join by `from`/`to`, with its own
attributes, filters, orders and nested links), `<order>` (choices sort by label, lookups by
name, §3.4), `top`, `distinct`, and `count`/`page`/`paging-cookie` paging, answered with the
`fetchxmlpagingcookie` and `morerecords` annotations. `aggregate="true"` groups by the
`groupby` attributes (with `dategrouping`) and computes count, countcolumn, sum, avg, min, max.

Rows omit null values (§3.9, §22.4); columns of a linked table are named `<alias>.<column>`
(`<table><n>` when the link has no alias). Conditions never match null with `eq`/`ne`; `null`
and `not-null` test for it (U54).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring
from odata_query import ast

from emulator import errors
from emulator.context import Context
from emulator.functions import NAMESPACE, FunctionCall, convert
from emulator.query import COUNT_LIMIT, COUNT_LIMIT_EXCEEDED, TOTAL_COUNT, Annotations, Compiled
from emulator.schema import CHOICE_TYPES, Attribute, AttributeType, Table
from emulator.wire import Request, Response, dumps, raw_json_response

PAGING_COOKIE = "Microsoft.Dynamics.CRM.fetchxmlpagingcookie"
MORE_RECORDS = "Microsoft.Dynamics.CRM.morerecords"
PAGE_SIZE = 5000
AGGREGATE_LIMIT = 50_000
_COMPARISONS = {"eq": "=", "ne": "!=", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}
_LIKE = {
    "like": ("{}", False), "not-like": ("{}", True),
    "begins-with": ("{}%", False), "not-begin-with": ("{}%", True),
    "ends-with": ("%{}", False), "not-end-with": ("%{}", True),
}  # fmt: skip
_PLAIN_DATES = {
    "today": "Today", "yesterday": "Yesterday", "tomorrow": "Tomorrow",
    "this-week": "ThisWeek", "last-week": "LastWeek", "next-week": "NextWeek",
    "this-month": "ThisMonth", "last-month": "LastMonth", "next-month": "NextMonth",
    "this-year": "ThisYear", "last-year": "LastYear", "next-year": "NextYear",
    "last-seven-days": "Last7Days", "next-seven-days": "Next7Days",
    "eq-userid": "EqualUserId", "ne-userid": "NotEqualUserId",
    "eq-businessid": "EqualBusinessId", "ne-businessid": "NotEqualBusinessId",
    "eq-userlanguage": "EqualUserLanguage",
}  # fmt: skip
_UNITS = ("hours", "days", "weeks", "months", "years")
_VALUED = {
    **{f"last-x-{unit}": f"LastX{unit.title()}" for unit in _UNITS},
    **{f"next-x-{unit}": f"NextX{unit.title()}" for unit in _UNITS},
    **{f"olderthan-x-{unit}": f"OlderThanX{unit.title()}" for unit in ("minutes", *_UNITS)},
    "on": "On", "on-or-after": "OnOrAfter", "on-or-before": "OnOrBefore",
    "above": "Above", "eq-or-above": "AboveOrEqual", "under": "Under",
    "eq-or-under": "UnderOrEqual", "not-under": "NotUnder",
}  # fmt: skip
_LISTED = {
    "in": "In", "not-in": "NotIn", "between": "Between", "not-between": "NotBetween",
    "contain-values": "ContainValues", "not-contain-values": "DoesNotContainValues",
}  # fmt: skip
_NUMERIC_VALUES = ("LastX", "NextX", "OlderThanX")
_AGGREGATES = {"count": "count(*)", "countcolumn": "count({})", "sum": "sum({})",
               "avg": "avg({})", "min": "min({})", "max": "max({})"}  # fmt: skip
_DATE_GROUPS = {"year": "%Y", "month": "%m", "day": "%d", "week": "%W"}


def bad_fetch(message: str) -> errors.ApiError:
    """A well-formed document FetchXML does not allow (InvalidArgument, emulator wording)."""
    return errors.invalid_argument(message)


@dataclass
class _Node:
    """An `<entity>` or `<link-entity>`: its table, SQL alias and the name its columns carry."""

    table: Table
    sql_alias: str
    prefix: str  # "" for the entity, "<alias>." for a link


@dataclass
class _Column:
    key: str  # the name in the result row
    sql: str
    attribute: Attribute | None  # None: an aggregate


@dataclass
class _Query:
    joins: list[str] = field(default_factory=list)
    join_params: list[Any] = field(default_factory=list)
    where: list[str] = field(default_factory=list)
    where_params: list[Any] = field(default_factory=list)
    columns: list[_Column] = field(default_factory=list)
    orders: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    links: int = 0


def _flag(element: ET.Element, name: str) -> bool:
    return (element.get(name) or "false").strip().lower() in ("true", "1")


def _number(element: ET.Element, name: str) -> int | None:
    text = element.get(name)
    if text is None:
        return None
    if not text.strip().isdigit() or int(text) < 1:
        raise bad_fetch(f"The '{name}' attribute of <fetch> must be a positive whole number.")
    return int(text)


class _Compiler:
    """Walks one `<fetch>` document and builds its SQL."""

    def __init__(self, ctx: Context, root: ET.Element, table: Table) -> None:
        self.ctx = ctx
        self.root = root
        self.aggregate = _flag(root, "aggregate")
        self.query = _Query()
        self.nodes: dict[str, _Node] = {}
        self.main = _Node(table, "t", "")

    def column(self, node: _Node, name: str | None) -> tuple[str, Attribute]:
        attribute = node.table.by_name.get(name or "")
        if attribute is None:
            raise errors.no_attribute(node.table.name, name or "")
        return f'{node.sql_alias}."{attribute.read_name}"', attribute

    # -- structure ------------------------------------------------------------------------------

    def compile(self, entity: ET.Element) -> None:
        self.children(self.main, entity, self.query.where, self.query.where_params)
        if not self.aggregate and not any(
            c.key == self.main.table.primary_id for c in self.query.columns
        ):
            key, attribute = self.column(self.main, self.main.table.primary_id)
            self.query.columns.append(_Column(self.main.table.primary_id, key, attribute))

    def children(
        self, node: _Node, element: ET.Element, where: list[str], params: list[Any]
    ) -> None:
        named = [c for c in element if c.tag == "attribute"]
        if any(c.tag == "all-attributes" for c in element) or (
            node is self.main and not named and not self.aggregate
        ):
            for attribute in node.table.attributes:
                key = node.prefix + attribute.name if node.prefix else attribute.read_name
                sql = f'{node.sql_alias}."{attribute.read_name}"'
                self.query.columns.append(_Column(key, sql, attribute))
        for child in element:
            if child.tag == "attribute":
                self.attribute(node, child)
            elif child.tag == "filter":
                sql, values = self.filter(node, child)
                if sql:
                    where.append(sql)
                    params.extend(values)
            elif child.tag == "order":
                self.order(node, child)
            elif child.tag == "link-entity":
                self.link(node, child)
            elif child.tag not in ("all-attributes",):
                raise bad_fetch(f"The element <{child.tag}> is not valid inside <{element.tag}>.")

    def attribute(self, node: _Node, element: ET.Element) -> None:
        sql, attribute = self.column(node, element.get("name"))
        alias = element.get("alias")
        function = element.get("aggregate")
        if self.aggregate:
            if not alias:
                raise bad_fetch("In an aggregate query every <attribute> needs an alias.")
            if function:
                template = _AGGREGATES.get(function)
                if template is None:
                    raise bad_fetch(f"The aggregate '{function}' is not valid.")
                if _flag(element, "distinct") and function in ("count", "countcolumn"):
                    template = "count(DISTINCT {})"
                self.query.columns.append(_Column(alias, template.format(sql), None))
                return
            if not _flag(element, "groupby"):
                raise bad_fetch(
                    f"The attribute '{attribute.name}' needs an aggregate or groupby='true'."
                )
            grouping = element.get("dategrouping")
            if grouping:
                pattern = _DATE_GROUPS.get(grouping)
                if pattern is None and grouping != "quarter":
                    raise bad_fetch(f"The dategrouping '{grouping}' is not valid.")
                sql = (
                    f"((CAST(strftime('%m', {sql}) AS INTEGER) + 2) / 3)"
                    if grouping == "quarter"
                    else f"CAST(strftime('{pattern}', {sql}) AS INTEGER)"
                )
                self.query.groups.append(sql)
                self.query.columns.append(_Column(alias, sql, None))
                return
            self.query.groups.append(sql)
            self.query.columns.append(_Column(alias, sql, attribute))
            return
        key = alias or (node.prefix + attribute.name if node.prefix else attribute.read_name)
        if all(c.key != key for c in self.query.columns):
            self.query.columns.append(_Column(key, sql, attribute))

    def link(self, parent: _Node, element: ET.Element) -> None:
        name = element.get("name") or ""
        table = self.ctx.schema.by_name.get(name)
        if table is None:
            raise bad_fetch(f"The entity '{name}' of a <link-entity> is not served.")
        self.query.links += 1
        alias = element.get("alias") or f"{name}{self.query.links}"
        node = _Node(table, f"l{self.query.links}", f"{alias}.")
        self.nodes[alias] = node
        linked, _ = self.column(node, element.get("from"))
        owner, _ = self.column(parent, element.get("to"))
        kind = (element.get("link-type") or "inner").lower()
        if kind not in ("inner", "outer"):
            raise bad_fetch(f"The link-type '{kind}' is not valid.")
        conditions: list[str] = [f"{linked} = {owner}"]
        params: list[Any] = []
        self.children(node, element, conditions, params)
        join = "JOIN" if kind == "inner" else "LEFT JOIN"
        self.query.joins.append(
            f'{join} "{table.name}" {node.sql_alias} ON {" AND ".join(conditions)}'
        )
        self.query.join_params.extend(params)

    def order(self, node: _Node, element: ET.Element) -> None:
        direction = "DESC" if _flag(element, "descending") else "ASC"
        alias = element.get("alias")
        if alias is not None:
            named = [c for c in self.query.columns if c.key == alias]
            if not named:
                raise bad_fetch(f"The order alias '{alias}' names no attribute.")
            target = f'"{alias}"' if self.aggregate else named[0].sql
            self.query.orders.append(f"{target} {direction}")
            return
        sql, attribute = self.column(node, element.get("attribute"))
        if self.aggregate:
            raise bad_fetch("An aggregate query orders by alias.")
        if attribute.type in CHOICE_TYPES:
            labels = " ".join(
                f"WHEN {v} THEN '{label.replace(chr(39), chr(39) * 2)}'"
                for v, label in attribute.option_labels.items()
            )
            sql = f"CASE {sql} {labels} END"
        elif attribute.is_lookup or attribute.is_text:
            sql = self.ctx.compiler.sort_expression(attribute, node.sql_alias)
        self.query.orders.append(f"{sql} {direction}")

    # -- filters --------------------------------------------------------------------------------

    def filter(self, node: _Node, element: ET.Element) -> tuple[str, list[Any]]:
        word = (element.get("type") or "and").lower()
        if word not in ("and", "or"):
            raise bad_fetch(f"The filter type '{word}' is not valid.")
        parts: list[str] = []
        params: list[Any] = []
        for child in element:
            if child.tag == "condition":
                sql, values = self.condition(node, child)
            elif child.tag == "filter":
                sql, values = self.filter(node, child)
            else:
                raise bad_fetch(f"The element <{child.tag}> is not valid inside <filter>.")
            if sql:
                parts.append(sql)
                params.extend(values)
        return (f"({f' {word.upper()} '.join(parts)})" if parts else ""), params

    def condition(self, node: _Node, element: ET.Element) -> tuple[str, list[Any]]:
        target = element.get("entityname")
        if target is not None:
            if target not in self.nodes:
                raise bad_fetch(f"The entityname '{target}' names no <link-entity> alias.")
            node = self.nodes[target]
        sql, attribute = self.column(node, element.get("attribute"))
        operator = (element.get("operator") or "").lower()
        value = element.get("value")
        values = [v.text or "" for v in element if v.tag == "value"]
        if operator == "null":
            return f"({sql} IS NULL)", []
        if operator == "not-null":
            return f"({sql} IS NOT NULL)", []
        if operator in _COMPARISONS:
            converted = self.convert(attribute, value)
            target_sql = f"dv_fold({sql})" if attribute.is_text else sql
            return f"({target_sql} {_COMPARISONS[operator]} ?)", [converted]
        if operator in _LIKE:
            pattern, negated = _LIKE[operator]
            if not attribute.is_text:
                raise bad_fetch(f"The operator '{operator}' applies to text columns.")
            text = pattern.format(self.text(value, operator))
            word = "NOT LIKE" if negated else "LIKE"
            return f"({sql} IS NOT NULL AND dv_fold({sql}) {word} ? ESCAPE '\\')", [
                str(convert(attribute, text))
            ]
        if operator in _PLAIN_DATES:
            return self.function(node, attribute, _PLAIN_DATES[operator], None)
        if operator in _VALUED:
            name = _VALUED[operator]
            text = self.text(value, operator)
            if name.startswith(_NUMERIC_VALUES):
                if not text.strip().isdigit():
                    raise bad_fetch(f"The operator '{operator}' takes a whole number.")
                argument: ast._Node = ast.Integer(text.strip())
            else:
                argument = ast.String(text)
            return self.function(node, attribute, name, argument)
        if operator in _LISTED:
            if value is not None and not values:
                values = [value]
            items = ast.List([ast.String(v) for v in values])
            return self.function(node, attribute, _LISTED[operator], items)
        raise bad_fetch(f"The condition operator '{operator}' is not valid.")

    def text(self, value: str | None, operator: str) -> str:
        if value is None:
            raise bad_fetch(f"The operator '{operator}' needs a value.")
        return value

    def convert(self, attribute: Attribute, value: str | None) -> Any:
        if value is None:
            raise bad_fetch(f"A condition on '{attribute.name}' needs a value.")
        try:
            return convert(attribute, value)
        except ValueError:
            raise bad_fetch(
                f"The value '{value}' is not valid for the attribute '{attribute.name}' of type "
                f"'{attribute.type.value}'."
            ) from None

    def function(
        self, node: _Node, attribute: Attribute, name: str, value: ast._Node | None
    ) -> tuple[str, list[Any]]:
        """A date, user or hierarchy condition, through the query function of the same meaning."""
        args = [ast.NamedParam(ast.Identifier("PropertyName"), ast.String(attribute.name))]
        if value is not None:
            parameter = "PropertyValues" if isinstance(value, ast.List) else "PropertyValue"
            args.append(ast.NamedParam(ast.Identifier(parameter), value))
        call = ast.Call(ast.Identifier(name, NAMESPACE), args)

        def column(text: str) -> tuple[str, Attribute, Table]:
            sql, found = self.column(node, text)
            return sql, found, node.table

        sql, params = FunctionCall(call, column, self.ctx.compiler.environment()).compile()
        return sql, list(params)


# -- executing ----------------------------------------------------------------------------------


def parse(text: str) -> ET.Element:
    """The `<fetch>` element of a document, or 400 Invalid XML."""
    try:
        root = fromstring(text)
    except (ET.ParseError, DefusedXmlException, ValueError):
        raise errors.invalid_xml() from None
    if root.tag != "fetch":
        raise errors.invalid_xml()
    return root


def _cookie_value(root: ET.Element) -> None:
    """A `paging-cookie` must be a cookie (QueryBuilderInvalidPagingCookie otherwise)."""
    cookie = root.get("paging-cookie")
    if cookie is None:
        return
    try:
        parsed = fromstring(cookie)
    except (ET.ParseError, DefusedXmlException, ValueError):
        raise errors.invalid_paging_cookie() from None
    if parsed.tag != "cookie":
        raise errors.invalid_paging_cookie()


def _paging_cookie(page: int, table: Table, first: str, last: str) -> str:
    inner = (
        f'<cookie page="{page}"><{table.primary_id} last="{{{last.upper()}}}" '
        f'first="{{{first.upper()}}}" /></cookie>'
    )
    once = re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote(inner, safe=""))
    encoded = quote(once, safe="")  # lower-case hex, encoded twice, as in §4.4
    return f'<cookie pagenumber="{page + 1}" pagingcookie="{encoded}" istracking="False" />'


def _render(columns: list[_Column], values: tuple[Any, ...]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for column, value in zip(columns, values, strict=False):
        if value is None:
            continue  # FetchXML results leave nulls out
        if column.attribute is not None and column.attribute.type is AttributeType.BOOLEAN:
            value = bool(value)
        row[column.key] = value
    return row


def execute(
    ctx: Context, request: Request, table: Table, text: str, scope: Compiled | None = None
) -> Response:
    """Run a FetchXML document against `table` (the entity set of the URL)."""
    root = parse(text)
    entities = [child for child in root if child.tag == "entity"]
    if len(entities) != 1:
        raise errors.invalid_xml()
    entity = entities[0]
    if entity.get("name") != table.name:
        raise bad_fetch(
            f"The entity '{entity.get('name')}' of the FetchXML does not match the entity set "
            f"'{table.entity_set}'."
        )
    _cookie_value(root)
    count, page, top = _number(root, "count"), _number(root, "page") or 1, _number(root, "top")
    if top is not None and (count is not None or root.get("page") is not None):
        raise bad_fetch("The 'top' attribute cannot be used with 'count' or 'page'.")
    compiler = _Compiler(ctx, root, table)
    compiler.compile(entity)
    query = compiler.query
    where = list(query.where)
    params = [*query.join_params, *query.where_params]
    if scope is not None:
        where.insert(0, scope.sql)
        params = [*query.join_params, *scope.params, *query.where_params]
    source = f'FROM "{table.name}" t {" ".join(query.joins)}'
    condition = f" WHERE {' AND '.join(where)}" if where else ""
    annotations = Annotations.parse(request.prefer.annotations)
    if compiler.aggregate:
        return _aggregate(ctx, table, query, source + condition, params)
    size = top or count or PAGE_SIZE
    offset = 0 if top else (page - 1) * size
    distinct = "DISTINCT " if _flag(root, "distinct") else ""
    selected = ", ".join(f"{c.sql} AS c{i}" for i, c in enumerate(query.columns))
    orders = [*query.orders, f't."{table.primary_id}" ASC']
    sql = (
        f'SELECT {distinct}{selected}, t.versionnumber AS etag, t."{table.primary_id}" AS pk '
        f"{source}{condition} ORDER BY {', '.join(orders)} LIMIT ? OFFSET ?"
    )
    fetched = ctx.store.rows(sql, (*params, size + 1, offset))
    more = len(fetched) > size and top is None
    rows = []
    for values in fetched[:size]:
        rendered = _render(query.columns, values[: len(query.columns)])
        rows.append(dumps({"@odata.etag": f'W/"{values[-2]}"', **rendered}))
    head = [
        '"@odata.context":'
        + dumps(
            f"{ctx.api_root}$metadata#{table.entity_set}({','.join(c.key for c in query.columns)})"
        )
    ]
    if annotations.includes(TOTAL_COUNT):
        total = -1
        if _flag(root, "returntotalrecordcount"):
            total = int(ctx.store.scalar(f"SELECT count(*) {source}{condition}", params))
        head.append(f'"@{TOTAL_COUNT}":{min(total, COUNT_LIMIT)}')
        if annotations.includes(COUNT_LIMIT_EXCEEDED):
            head.append(f'"@{COUNT_LIMIT_EXCEEDED}":{"true" if total > COUNT_LIMIT else "false"}')
    paging = annotations.includes(PAGING_COOKIE) or annotations.includes(MORE_RECORDS)
    if paging and more:
        cookie = _paging_cookie(page, table, str(fetched[0][-1]), str(fetched[size - 1][-1]))
        head.append(f'"@{PAGING_COOKIE}":{dumps(cookie)}')
    if paging:
        head.append(f'"@{MORE_RECORDS}":{"true" if more else "false"}')
    body = "{" + ",".join(head) + ',"value":[' + ",".join(rows) + "]}"
    return raw_json_response(200, body, *_applied(request))


def _applied(request: Request) -> tuple[tuple[str, str], ...]:
    if not request.prefer.annotations:
        return ()
    return (("Preference-Applied", f'odata.include-annotations="{request.prefer.annotations}"'),)


def _aggregate(
    ctx: Context, table: Table, query: _Query, source: str, params: list[Any]
) -> Response:
    """`aggregate="true"`: one row per group, values under their aliases (AggregateQueryRecordLimit
    above 50,000 rows)."""
    matched = int(
        ctx.store.scalar(
            f"SELECT count(*) FROM (SELECT 1 {source} LIMIT ?)", (*params, AGGREGATE_LIMIT + 1)
        )
    )
    if matched > AGGREGATE_LIMIT:
        raise errors.ApiError(
            400, "0x8004E023", "The maximum record limit is exceeded. Reduce the number of records."
        )
    if not query.columns:
        raise bad_fetch("An aggregate query needs at least one aggregate attribute.")
    selected = ", ".join(f'{c.sql} AS "{c.key}"' for c in query.columns)
    group = f" GROUP BY {', '.join(query.groups)}" if query.groups else ""
    order = f" ORDER BY {', '.join(query.orders)}" if query.orders else ""
    fetched = ctx.store.rows(f"SELECT {selected} {source}{group}{order}", params)
    rows = [dumps(_render(query.columns, values)) for values in fetched]
    context = dumps(f"{ctx.api_root}$metadata#{table.entity_set}")
    return raw_json_response(
        200, '{"@odata.context":' + context + ',"value":[' + ",".join(rows) + "]}"
    )
