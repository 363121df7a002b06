"""OData query options → SQLite: `$select` projections, `$filter`, `$orderby`, keyset paging.

Rows are rendered to JSON text by SQLite itself: a `$select` list and an annotation preference
compile to one SQL expression per row (etag first, each annotation right before its property,
annotations left out for null values), so serving a page costs no per-column Python work.
`$filter` text is parsed by the `odata-query` library and compiled here to SQL with bound
parameters: strings compare case-insensitively, GUID and date literals are unquoted, `ne` leaves
nulls out (Dataverse's not-equal), single-valued navigation paths and `any`/`all` over
collection-valued ones become subqueries, `Microsoft.Dynamics.CRM.*` query functions compile
through `functions.py` (collection literals in both quotings). Compiled statements are cached by
their text, except those calling a query function (they depend on the clock). `$expand` of a
lookup's `$ref` gives the related record's `@odata.id`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from uuid import UUID

from odata_query import ast
from odata_query.exceptions import FunctionCallException
from odata_query.grammar import ODataLexer, ODataParser
from odata_query.visitor import NodeVisitor

from emulator import errors
from emulator.clock import parse_wire, wire
from emulator.functions import (
    NAMESPACE,
    Environment,
    FunctionCall,
    lists_in_parentheses,
    unknown_function,
)
from emulator.schema import (
    CHOICE_TYPES,
    GUID_TYPES,
    Attribute,
    AttributeType,
    Schema,
    Table,
)
from emulator.storage import fold

FORMATTED = "OData.Community.Display.V1.FormattedValue"
LOOKUP_LOGICAL = "Microsoft.Dynamics.CRM.lookuplogicalname"
ASSOCIATED_NAV = "Microsoft.Dynamics.CRM.associatednavigationproperty"
TOTAL_COUNT = "Microsoft.Dynamics.CRM.totalrecordcount"
COUNT_LIMIT_EXCEEDED = "Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"
COUNT_LIMIT = 5000
CACHE_SIZE = 512
EXPAND_LIMIT = 15
EXPAND_ROWS = 5000  # U6: rows of one expanded collection
RESTRICTED_EXPAND = (
    "Only $select and $filter clause can be provided while doing $expand on many-to-one "
    "relationship or nested one-to-many relationship."
)
EXPAND_OPTIONS = frozenset({"$select", "$filter", "$orderby", "$top", "$expand"})
_EXPAND_ITEM = re.compile(r"^([A-Za-z_]\w*)(/\$ref)?(?:\((.*)\))?$", re.DOTALL)


@dataclass(frozen=True)
class Annotations:
    """The annotations asked for with `odata.include-annotations` (names, `*`, or `prefix.*`)."""

    patterns: tuple[str, ...] = ()

    @staticmethod
    @lru_cache(maxsize=256)
    def parse(value: str | None) -> Annotations:
        if not value:
            return Annotations()
        return Annotations(tuple(part.strip() for part in value.split(",") if part.strip()))

    def includes(self, name: str) -> bool:
        return any(
            pattern in ("*", name) or (pattern.endswith(".*") and name.startswith(pattern[:-1]))
            for pattern in self.patterns
        )


@dataclass(frozen=True)
class Compiled:
    """A SQL fragment and its bound parameters."""

    sql: str
    params: tuple[Any, ...] = ()


@dataclass(frozen=True)
class OrderKey:
    attribute: Attribute
    descending: bool = False


@dataclass(frozen=True)
class Expansion:
    """One `$expand` item (§3.7): the related table, the lookup that joins it (on the owner for
    a single-valued navigation, on the related table for a collection) and its own options."""

    navigation: str
    table: Table
    attribute: Attribute
    single: bool
    select: tuple[Attribute, ...] | None = None
    filter: str | None = None
    order: tuple[OrderKey, ...] = ()
    top: int | None = None
    expand: tuple[Expansion, ...] = ()
    reference: bool = False  # `<lookup>/$ref`: the related record's `@odata.id` only


def volatile(text: str | None) -> bool:
    """Whether a filter calls a query function (its SQL depends on the clock)."""
    return text is not None and "Microsoft.Dynamics.CRM." in text


def split_top(text: str, separator: str) -> list[str]:
    """Split on `separator` outside parentheses and quotes."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    quoted = False
    for char in text:
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        if char == separator and depth == 0 and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


def select_context(select: tuple[Attribute, ...] | None, expand: tuple[Expansion, ...]) -> str:
    """The column list of an `@odata.context`: `fullname,parentcontactid(fullname)`."""
    items = [a.read_name for a in select] if select else []
    items += [
        e.navigation if e.reference else f"{e.navigation}({select_context(e.select, e.expand)})"
        for e in expand
    ]
    return ",".join(items)


def _volatile_expansions(expand: tuple[Expansion, ...]) -> bool:
    return any(volatile(e.filter) or _volatile_expansions(e.expand) for e in expand)


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, int | float):
        return repr(value)
    return sql_text(str(value))


def inline(compiled: Compiled) -> str:
    """A compiled filter with its parameters written in as SQL literals (for subqueries in the
    select list, whose text is cached and shared)."""
    pieces = compiled.sql.split("?")
    if len(pieces) != len(compiled.params) + 1:
        raise errors.bad_query("The $filter of an $expand cannot be compiled.")
    return pieces[0] + "".join(
        _literal(value) + rest for value, rest in zip(compiled.params, pieces[1:], strict=True)
    )


class _Cache:
    """A small bounded memo: cleared when full (the working set of a test or demo is tiny)."""

    def __init__(self) -> None:
        self._items: dict[Any, Any] = {}

    def get(self, key: Any) -> Any:
        return self._items.get(key)

    def put(self, key: Any, value: Any) -> Any:
        if len(self._items) >= CACHE_SIZE:
            self._items.clear()
        self._items[key] = value
        return value


def sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _case(expression: str, mapping: Sequence[tuple[object, str]], default: str = "NULL") -> str:
    whens = " ".join(
        f"WHEN {value if isinstance(value, int) else sql_text(str(value))} THEN {sql_text(label)}"
        for value, label in mapping
    )
    return f"CASE {expression} {whens} ELSE {default} END"


def _datetime_label(column: str, date_only: bool) -> str:
    """Dates as Dataverse formats them for an en-US user in UTC: `4/7/2023 2:59 PM`."""
    hour = f"CAST(substr({column}, 12, 2) AS INTEGER)"
    date = (
        f"CAST(substr({column}, 6, 2) AS INTEGER) || '/' || CAST(substr({column}, 9, 2) AS INTEGER)"
        f" || '/' || substr({column}, 1, 4)"
    )
    if date_only:
        return date
    return (
        f"{date} || ' ' || (({hour} + 11) % 12 + 1) || ':' || substr({column}, 15, 2) || ' ' || "
        f"CASE WHEN {hour} < 12 THEN 'AM' ELSE 'PM' END"
    )


class QueryCompiler:
    """Compiles query options for the tables of one schema; results are cached by their text."""

    def __init__(
        self, schema: Schema, environment: Callable[[], Environment], api_root: str = ""
    ) -> None:
        self.schema = schema
        self.api_root = api_root  # for `@odata.id` values
        self.environment = environment  # what query functions are evaluated against, now
        self._rows = _Cache()
        self._selects = _Cache()
        self._filters = _Cache()
        self._lexer = ODataLexer()
        self._parser = ODataParser()
        self._parsing = threading.Lock()  # sly lexers and parsers keep state on the instance

    # -- $select -------------------------------------------------------------------------------

    def select(self, table: Table, text: str | None) -> tuple[Attribute, ...] | None:
        """The attributes named in `$select`, in request order; None means every column."""
        if text is None or text.strip() in ("", "*"):
            return None
        key = (table.name, text)
        cached: tuple[Attribute, ...] | None = self._selects.get(key)
        if cached is not None:
            return cached
        chosen: list[Attribute] = []
        for name in (part.strip() for part in text.split(",")):
            attribute = table.by_read_name.get(name)
            if attribute is None:
                raise errors.unknown_property(table.type_name, name)
            if attribute not in chosen:
                chosen.append(attribute)
        return self._selects.put(key, tuple(chosen))  # type: ignore[no-any-return]

    @staticmethod
    def columns(table: Table, select: tuple[Attribute, ...] | None) -> tuple[Attribute, ...]:
        """What a row carries: the selection (or every column) and the primary key, last."""
        if select is None:
            return (*(a for a in table.attributes if a.name != table.primary_id), table.key)
        return select if table.key in select else (*select, table.key)

    # -- row rendering ---------------------------------------------------------------------------

    def row_json(
        self,
        table: Table,
        select: tuple[Attribute, ...] | None,
        annotations: Annotations,
        alias: str = "t",
        expand: tuple[Expansion, ...] = (),
    ) -> str:
        """SQL producing one row's JSON object text (`@odata.etag` first, expansions last).

        Without annotations it is one `json_object()` call; with them, one `printf()` whose
        arguments are the values and, per column, the annotations text ('' when the value is null).
        Each expansion is a correlated subquery rendering the related row(s) the same way.
        """
        names = None if select is None else tuple(a.name for a in select)
        key = (table.name, names, annotations, alias, expand)
        cached: str | None = self._rows.get(key)
        if cached is not None:
            return cached
        etag = f"'W/\"' || {alias}.versionnumber || '\"'"
        columns = self.columns(table, select)
        expanded = [(e.navigation, self._expansion(table, e, alias, annotations)) for e in expand]
        if not annotations.patterns:
            pairs = [f"'@odata.etag', {etag}"]
            for attribute in columns:
                column = f'{alias}."{attribute.read_name}"'
                pairs.append(f"'{attribute.read_name}', {self._value(attribute, column)}")
            pairs += [f"'{navigation}', json({sql})" for navigation, sql in expanded]
            rendered = f"json_object({', '.join(pairs)})"
            return rendered if _volatile_expansions(expand) else self._rows.put(key, rendered)
        template = ['{"@odata.etag":%s']
        arguments = [f"json_quote({etag})"]
        for attribute in columns:
            column = f'{alias}."{attribute.read_name}"'
            notes = self._annotations(attribute, column, alias, annotations)
            if notes:
                rendered = " || ".join(
                    f"',\"{attribute.read_name}@{name}\":' || json_quote({expression})"
                    for name, expression in notes
                )
                template.append("%s")
                arguments.append(f"CASE WHEN {column} IS NULL THEN '' ELSE {rendered} END")
            template.append(f',"{attribute.read_name}":%s')
            arguments.append(f"json_quote({self._value(attribute, column)})")
        for navigation, sql in expanded:
            template.append(f',"{navigation}":%s')
            arguments.append(f"coalesce({sql}, 'null')")
        template.append("}")
        rendered_row = f"printf({sql_text(''.join(template))}, {', '.join(arguments)})"
        return rendered_row if _volatile_expansions(expand) else self._rows.put(key, rendered_row)

    def _expansion(
        self, owner: Table, expansion: Expansion, alias: str, annotations: Annotations
    ) -> str:
        """The correlated subquery of one expansion: an object (or NULL), or an array."""
        inner = f"x{int(alias[1:] or 0) + 1}" if alias.startswith("x") else "x1"
        related = expansion.table
        row = self.row_json(related, expansion.select, annotations, inner, expansion.expand)
        attribute = expansion.attribute
        if expansion.single:
            conditions = [f'{inner}."{related.primary_id}" = {alias}."{attribute.read_name}"']
            if attribute.type_column:
                conditions.append(f'{alias}."{attribute.type_column}" = {sql_text(related.name)}')
        else:
            conditions = [f'{inner}."{attribute.read_name}" = {alias}."{owner.primary_id}"']
            if attribute.type_column:
                conditions.append(f'{inner}."{attribute.type_column}" = {sql_text(owner.name)}')
        if expansion.filter is not None:
            conditions.append(inline(self.filter(related, expansion.filter, inner)))
        where = " AND ".join(conditions)
        if expansion.reference:
            prefix = sql_text(f"{self.api_root}{related.entity_set}(")
            url = f"{prefix} || {inner}.\"{related.primary_id}\" || ')'"
            source = f'"{related.name}" {inner} WHERE {where}'
            return f"(SELECT json_object('@odata.id', {url}) FROM {source})"
        if expansion.single:
            return f'(SELECT {row} FROM "{related.name}" {inner} WHERE {where})'
        order = ", ".join(
            f"{self.sort_expression(k.attribute, inner)} {'DESC' if k.descending else 'ASC'}"
            for k in expansion.order or self.order(related, None)
        )
        limit = min(expansion.top, EXPAND_ROWS) if expansion.top is not None else EXPAND_ROWS
        return (
            f"(SELECT json_group_array(json(r)) FROM (SELECT {row} AS r FROM "
            f'"{related.name}" {inner} WHERE {where} ORDER BY {order} LIMIT {limit}))'
        )

    # -- $expand -------------------------------------------------------------------------------

    def expand(self, table: Table, text: str) -> tuple[Expansion, ...]:
        """`$expand` text → expansions (at most 15 in all; §3.7 restrictions)."""
        key = ("expand", table.name, text)
        cached: tuple[Expansion, ...] | None = self._selects.get(key)
        if cached is not None:
            return cached
        counter = [0]
        return self._selects.put(key, self._expand(table, text, False, counter))  # type: ignore[no-any-return]

    def _expand(
        self, table: Table, text: str, nested: bool, counter: list[int]
    ) -> tuple[Expansion, ...]:
        items: list[Expansion] = []
        for part in split_top(text, ","):
            match = _EXPAND_ITEM.match(part)
            if match is None:
                raise errors.bad_query(f"Syntax error in the $expand item '{part}'.")
            name, ref, inner = match.groups()
            counter[0] += 1
            if counter[0] > EXPAND_LIMIT:
                raise errors.bad_query(
                    f"The $expand query option cannot expand more than {EXPAND_LIMIT} navigation "
                    "properties."
                )
            navigation = table.navigations.get(name)
            reference = None if navigation else self.schema.collection(table.name, name)
            if navigation is not None and navigation[1].table in self.schema.by_name:
                attribute, related = navigation[0], self.schema.by_name[navigation[1].table]
            elif reference is not None:
                attribute, related = reference.attribute, reference.table
            else:
                raise errors.unknown_property(table.type_name, name)
            single = navigation is not None
            if ref:
                if not single:
                    raise errors.bad_query(
                        "Expand with $ref is only supported on lookup type navigation property."
                    )
                if inner:
                    raise errors.bad_query(
                        f"Query options cannot be given to the $ref expansion of '{name}'."
                    )
                items.append(Expansion(name, related, attribute, True, reference=True))
                continue
            options: dict[str, str] = {}
            for option in split_top(inner or "", ";"):
                option_name, _, value = option.partition("=")
                if option_name not in EXPAND_OPTIONS:
                    raise errors.bad_query(
                        f"The query option '{option_name}' is not supported inside $expand."
                    )
                options[option_name] = value
            if (single or nested) and {"$orderby", "$top"} & options.keys():
                raise errors.bad_query(RESTRICTED_EXPAND)
            top = options.get("$top")
            if top is not None and not top.isdigit():
                raise errors.bad_query(f"Invalid value '{top}' for $top query option found.")
            if "$filter" in options:
                self.filter(related, options["$filter"])  # syntax and column errors now
            items.append(
                Expansion(
                    navigation=name,
                    table=related,
                    attribute=attribute,
                    single=single,
                    select=self.select(related, options.get("$select")),
                    filter=options.get("$filter"),
                    order=self.order(related, options["$orderby"]) if "$orderby" in options else (),
                    top=int(top) if top is not None else None,
                    expand=self._expand(related, options["$expand"], True, counter)
                    if "$expand" in options
                    else (),
                )
            )
        return tuple(items)

    @staticmethod
    def _value(attribute: Attribute, column: str) -> str:
        """The column as a JSON value for json_object()/json_quote(): booleans as true/false."""
        if attribute.type is AttributeType.BOOLEAN:
            flag = (
                f"CASE WHEN {column} IS NULL THEN 'null' WHEN {column} THEN 'true' ELSE 'false' END"
            )
            return f"json({flag})"
        return column

    def _annotations(
        self, attribute: Attribute, column: str, alias: str, annotations: Annotations
    ) -> list[tuple[str, str]]:
        if not annotations.patterns:
            return []
        notes: list[tuple[str, str]] = []
        served = [t for t in attribute.targets if t.table in self.schema.by_name]
        if attribute.is_lookup and served:
            type_column = f'{alias}."{attribute.type_column}"' if attribute.type_column else None
            if annotations.includes(ASSOCIATED_NAV):
                navigation = (
                    _case(type_column, [(t.table, t.navigation) for t in served])
                    if type_column
                    else sql_text(served[0].navigation)
                )
                notes.append((ASSOCIATED_NAV, navigation))
            if annotations.includes(LOOKUP_LOGICAL):
                notes.append((LOOKUP_LOGICAL, type_column or sql_text(served[0].table)))
        if annotations.includes(FORMATTED):
            label = self._formatted(attribute, column, alias, served)
            if label is not None:
                notes.append((FORMATTED, label))
        return notes

    def _formatted(
        self, attribute: Attribute, column: str, alias: str, served: list[Any]
    ) -> str | None:
        if attribute.type in CHOICE_TYPES:
            return _case(column, sorted(attribute.option_labels.items()), f"CAST({column} AS TEXT)")
        if attribute.type is AttributeType.BOOLEAN:
            true, false = attribute.labels
            return f"CASE WHEN {column} THEN {sql_text(true)} ELSE {sql_text(false)} END"
        if attribute.type is AttributeType.DATETIME:
            return _datetime_label(column, attribute.date_only)
        if attribute.is_lookup and served:
            names = []
            for target in served:
                other = self.schema.by_name[target.table]
                names.append(
                    (
                        target.table,
                        f'(SELECT r."{other.primary_name}" FROM "{other.name}" r '
                        f'WHERE r."{other.primary_id}" = {column})',
                    )
                )
            if attribute.type_column:
                type_column = f'{alias}."{attribute.type_column}"'
                whens = " ".join(f"WHEN {sql_text(t)} THEN {q}" for t, q in names)
                return f"CASE {type_column} {whens} END"
            return names[0][1]
        return None

    # -- $orderby --------------------------------------------------------------------------------

    def order(self, table: Table, text: str | None) -> tuple[OrderKey, ...]:
        """`$orderby` keys, always ending with the primary key so paging is stable."""
        keys: list[OrderKey] = []
        for part in (text or "").split(","):
            words = part.split()
            if not words:
                continue
            if len(words) > 2 or (len(words) == 2 and words[1] not in ("asc", "desc")):
                position = (text or "").find(part) + len(part)
                raise errors.bad_query(f"Syntax error at position {position} in '{text}'.")
            attribute = table.by_read_name.get(words[0])
            if attribute is None:
                raise errors.unknown_property(table.type_name, words[0])
            if all(key.attribute != attribute for key in keys):
                keys.append(OrderKey(attribute, len(words) == 2 and words[1] == "desc"))
        if all(key.attribute != table.key for key in keys):
            keys.append(OrderKey(table.key))
        return tuple(keys)

    def sort_expression(self, attribute: Attribute, alias: str = "t") -> str:
        """What a key sorts by: lookups sort by the related record's primary name (§3.4)."""
        column = f'{alias}."{attribute.read_name}"'
        if attribute.is_lookup:
            label = self._formatted(
                attribute,
                column,
                alias,
                [t for t in attribute.targets if t.table in self.schema.by_name],
            )
            return f"({label}) COLLATE NOCASE" if label else column
        if attribute.is_text:
            return f"{column} COLLATE NOCASE"
        return column

    def keyset(self, keys: Sequence[OrderKey], last: Sequence[Any], alias: str = "t") -> Compiled:
        """Rows strictly after `last` in the order of `keys` (NULLs first, as in SQL Server)."""
        expressions = [self.sort_expression(key.attribute, alias) for key in keys]
        clauses: list[str] = []
        params: list[Any] = []
        for index, key in enumerate(keys):
            value = last[index]
            if key.descending:
                if value is None:
                    continue
                after, after_params = (
                    f"({expressions[index]} < ? OR {expressions[index]} IS NULL)",
                    [value],
                )
            elif value is None:
                after, after_params = f"{expressions[index]} IS NOT NULL", []
            else:
                after, after_params = f"{expressions[index]} > ?", [value]
            conditions: list[str] = []
            for previous in range(index):
                if last[previous] is None:
                    conditions.append(f"{expressions[previous]} IS NULL")
                else:
                    conditions.append(f"{expressions[previous]} = ?")
                    params.append(last[previous])
            conditions.append(after)
            params.extend(after_params)
            clauses.append("(" + " AND ".join(conditions) + ")")
        return Compiled("(" + (" OR ".join(clauses) or "0") + ")", tuple(params))

    # -- $filter ---------------------------------------------------------------------------------

    def filter(self, table: Table, text: str, alias: str = "t") -> Compiled:
        """A `$filter` as SQL; one calling a query function depends on the clock and the caller,
        so it is compiled anew each time."""
        key = (table.name, text, alias)
        cached: Compiled | None = self._filters.get(key)
        if cached is not None:
            return cached
        tree = self.parse(text)
        compiled = _FilterCompiler(self, table, alias).predicate(tree)
        return compiled if volatile(text) else self._filters.put(key, compiled)

    def parse(self, text: str) -> ast._Node:
        """Parse `$filter` text with odata-query; syntax errors become 400 0x80060888.

        Collection literals in function parameters (`["1","2"]`, `['1','2']`) are read too."""
        text = lists_in_parentheses(text)
        try:
            with self._parsing:
                return self._parser.parse(self._lexer.tokenize(text))  # type: ignore[no-any-return]
        except FunctionCallException as error:
            raise errors.bad_query(f"{error}.") from None
        except Exception as error:  # any other parser failure is a syntax error
            token = getattr(error, "token", None)
            position = getattr(token, "index", len(text)) if token is not None else len(text)
            raise errors.bad_query(f"Syntax error at position {position} in '{text}'.") from None


_KIND_NAMES = {
    "string": "Edm.String",
    "int": "Edm.Int32",
    "bigint": "Edm.Int64",
    "float": "Edm.Double",
    "bool": "Edm.Boolean",
    "guid": "Edm.Guid",
    "datetime": "Edm.DateTimeOffset",
    "date": "Edm.Date",
}
_COMPARATORS = {
    ast.Eq: ("=", "Equal"),
    ast.NotEq: ("!=", "NotEqual"),
    ast.Gt: (">", "GreaterThan"),
    ast.GtE: (">=", "GreaterThanOrEqual"),
    ast.Lt: ("<", "LessThan"),
    ast.LtE: ("<=", "LessThanOrEqual"),
}
_NUMERIC = frozenset({"int", "bigint", "float"})
_STRING_FUNCTIONS = frozenset({"contains", "startswith", "endswith"})


def _kind(attribute: Attribute) -> str:
    if attribute.is_text:
        return "string"
    if attribute.type is AttributeType.BOOLEAN:
        return "bool"
    if attribute.type in GUID_TYPES:
        return "guid"
    if attribute.type is AttributeType.DATETIME:
        return "date" if attribute.date_only else "datetime"
    if attribute.type is AttributeType.BIGINT:
        return "bigint"
    return "int"


@dataclass(frozen=True)
class _Operand:
    sql: str
    params: tuple[Any, ...]
    kind: str | None  # None: the null literal
    column: bool = False


@dataclass(frozen=True)
class _Scope:
    table: Table
    alias: str
    variable: str | None = None


_DATETIME_LITERAL = re.compile(r"^\d{4}-\d{2}-\d{2}T")


class _FilterCompiler(NodeVisitor):
    """One `$filter` tree → SQL over alias `t` of `table` (lambda variables get their own alias)."""

    def __init__(self, compiler: QueryCompiler, table: Table, alias: str) -> None:
        self.compiler = compiler
        self.scopes = [_Scope(table, alias)]

    def predicate(self, node: ast._Node) -> Compiled:
        result = self.visit(node)
        if isinstance(result, _Operand):
            if result.kind != "bool":
                raise errors.bad_query(
                    "The $filter expression must evaluate to a single boolean value."
                )
            return Compiled(f"({result.sql} = 1)", result.params)
        return result  # type: ignore[no-any-return]

    def generic_visit(self, node: ast._Node) -> Any:
        raise errors.bad_query(
            f"The query node '{type(node).__name__}' is not supported in $filter."
        )

    # -- operands ---------------------------------------------------------------------------------

    def _column(self, scope: _Scope, name: str) -> _Operand:
        attribute = scope.table.by_read_name.get(name)
        if attribute is None:
            raise errors.unknown_property(scope.table.type_name, name)
        return _Operand(f'{scope.alias}."{attribute.read_name}"', (), _kind(attribute), column=True)

    def visit_Identifier(self, node: ast.Identifier) -> _Operand:
        if node.namespace:
            raise errors.unknown_property(self.scopes[0].table.type_name, node.full_name())
        return self._column(self.scopes[0], node.name)

    def visit_Attribute(self, node: ast.Attribute) -> _Operand:
        owner = node.owner
        if not isinstance(owner, ast.Identifier) or owner.namespace:
            raise errors.bad_query("Only one navigation step is supported in a $filter path.")
        for scope in reversed(self.scopes):
            if scope.variable == owner.name:
                return self._column(scope, node.attr)
        outer = self.scopes[0]
        navigation = outer.table.navigations.get(owner.name)
        if navigation is None:
            raise errors.unknown_property(outer.table.type_name, owner.name)
        attribute, target = navigation
        other = self.compiler.schema.by_name.get(target.table)
        if other is None:
            raise errors.unknown_property(outer.table.type_name, owner.name)
        inner = self._column(_Scope(other, "n"), node.attr)
        join = f'n."{other.primary_id}" = {outer.alias}."{attribute.read_name}"'
        if attribute.type_column:
            join += f' AND {outer.alias}."{attribute.type_column}" = {sql_text(other.name)}'
        subquery = f'(SELECT {inner.sql} FROM "{other.name}" n WHERE {join})'
        return _Operand(subquery, (), inner.kind, column=True)

    def visit_String(self, node: ast.String) -> _Operand:
        return _Operand("?", (node.val,), "string")

    def visit_Integer(self, node: ast.Integer) -> _Operand:
        return _Operand("?", (node.py_val,), "int")

    def visit_Float(self, node: ast.Float) -> _Operand:
        return _Operand("?", (node.py_val,), "float")

    def visit_Boolean(self, node: ast.Boolean) -> _Operand:
        return _Operand("?", (1 if node.py_val else 0,), "bool")

    def visit_Null(self, node: ast.Null) -> _Operand:
        return _Operand("NULL", (), None)

    def visit_GUID(self, node: ast.GUID) -> _Operand:
        return _Operand("?", (str(UUID(node.val)),), "guid")

    def visit_DateTime(self, node: ast.DateTime) -> _Operand:
        try:
            return _Operand("?", (wire(parse_wire(node.val)),), "datetime")
        except ValueError:
            raise errors.bad_query(f"The date '{node.val}' is not valid.") from None

    def visit_Date(self, node: ast.Date) -> _Operand:
        return _Operand("?", (node.val,), "date")

    # -- predicates ----------------------------------------------------------------------------

    def _operand(self, node: ast._Node) -> _Operand:
        result = self.visit(node)
        if not isinstance(result, _Operand):
            raise errors.bad_query("A comparison operand must be a property or a literal.")
        return result

    def visit_Compare(self, node: ast.Compare) -> Compiled:
        left = self._operand(node.left)
        if isinstance(node.comparator, ast.In):
            if not isinstance(node.right, ast.List):
                raise errors.bad_query("The right operand of 'in' must be a list of literals.")
            items = [self._operand(item) for item in node.right.val]
            params: list[Any] = list(left.params)
            marks = []
            for item in items:
                left_sql, item_sql, pair = self._coerce(left, item, "In")
                marks.append(item_sql)
                params.extend(pair[1])
            return Compiled(f"({left_sql} IN ({', '.join(marks)}))", tuple(params))
        right = self._operand(node.right)
        operator, kind_name = _COMPARATORS[type(node.comparator)]
        if left.kind is None or right.kind is None:
            other = right if left.kind is None else left
            if operator == "=":
                return Compiled(f"({other.sql} IS NULL)", other.params)
            if operator == "!=":
                return Compiled(f"({other.sql} IS NOT NULL)", other.params)
            return Compiled("(0)")
        left_sql, right_sql, (left_params, right_params) = self._coerce(left, right, kind_name)
        return Compiled(f"({left_sql} {operator} {right_sql})", left_params + right_params)

    def _coerce(
        self, left: _Operand, right: _Operand, operator: str
    ) -> tuple[str, str, tuple[tuple[Any, ...], tuple[Any, ...]]]:
        """Check the operand types agree; fold strings; bring date literals to the column's form."""
        kinds = {left.kind, right.kind}
        if left.kind != right.kind and not kinds <= _NUMERIC and kinds != {"datetime", "date"}:
            raise errors.bad_query(
                "A binary operator with incompatible types was detected. Found operand types "
                f"'{_KIND_NAMES[left.kind or '']}' and '{_KIND_NAMES[right.kind or '']}' for "
                f"operator kind '{operator}'."
            )
        if kinds == {"datetime", "date"}:
            column, literal = (left, right) if left.column else (right, left)
            value = literal.params[0] if literal.params else None
            if (
                column.kind == "datetime"
                and isinstance(value, str)
                and not _DATETIME_LITERAL.match(value)
            ):
                literal = _Operand(literal.sql, (f"{value}T00:00:00Z",), "datetime")
            elif column.kind == "date" and isinstance(value, str):
                literal = _Operand(literal.sql, (value[:10],), "date")
            left, right = (column, literal) if left.column else (literal, column)
        if left.kind == "string":
            return (
                self._folded(left),
                self._folded(right),
                (self._folded_params(left), self._folded_params(right)),
            )
        return left.sql, right.sql, (left.params, right.params)

    @staticmethod
    def _folded(operand: _Operand) -> str:
        return f"dv_fold({operand.sql})" if operand.sql != "?" else "?"

    @staticmethod
    def _folded_params(operand: _Operand) -> tuple[Any, ...]:
        return tuple(fold(p) for p in operand.params) if operand.sql == "?" else operand.params

    def visit_BoolOp(self, node: ast.BoolOp) -> Compiled:
        left = self.predicate(node.left)
        right = self.predicate(node.right)
        word = "AND" if isinstance(node.op, ast.And) else "OR"
        return Compiled(f"({left.sql} {word} {right.sql})", left.params + right.params)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Compiled:
        if not isinstance(node.op, ast.Not):
            raise errors.bad_query("Arithmetic operators are not supported in $filter.")
        inner = self.predicate(node.operand)
        return Compiled(f"(NOT {inner.sql})", inner.params)

    def _function_column(self, name: str) -> tuple[str, Attribute, Table]:
        """The column a query function's PropertyName names: a logical name (`ownerid`, never
        `_ownerid_value`), looked up by the query builder."""
        scope = self.scopes[-1]
        attribute = scope.table.by_name.get(name)
        if attribute is None:
            raise errors.no_attribute(scope.table.name, name)
        return f'{scope.alias}."{attribute.read_name}"', attribute, scope.table

    def visit_Call(self, node: ast.Call) -> Compiled:
        name = node.func.full_name()
        if tuple(node.func.namespace) == NAMESPACE:
            call = FunctionCall(node, self._function_column, self.compiler.environment())
            return Compiled(*call.compile())
        if node.func.namespace:
            raise unknown_function(name)
        if node.func.name not in _STRING_FUNCTIONS:
            raise errors.bad_query(f"The function '{name}' is not supported.")
        if len(node.args) != 2:
            raise errors.bad_query(f"The function '{name}' takes two arguments.")
        subject = self._operand(node.args[0])
        needle = self._operand(node.args[1])
        if subject.kind != "string" or needle.kind != "string" or needle.sql != "?":
            raise errors.bad_query(
                f"The function '{name}' needs a string property and a string literal."
            )
        text = fold(needle.params[0])
        assert isinstance(text, str)
        value = f"dv_fold({subject.sql})"
        if node.func.name == "contains":
            return Compiled(f"(instr({value}, ?) > 0)", (*subject.params, text))
        if node.func.name == "startswith":
            return Compiled(f"(substr({value}, 1, {len(text)}) = ?)", (*subject.params, text))
        return Compiled(f"(substr({value}, -{len(text)}) = ?)", (*subject.params, text))

    def visit_CollectionLambda(self, node: ast.CollectionLambda) -> Compiled:
        outer = self.scopes[0]
        if not isinstance(node.owner, ast.Identifier):
            raise errors.bad_query("Lambda operators need a collection navigation property.")
        reference = self.compiler.schema.collection(outer.table.name, node.owner.name)
        if reference is None:
            raise errors.unknown_property(outer.table.type_name, node.owner.name)
        alias = f"l{len(self.scopes)}"
        attribute = reference.attribute
        join = f'{alias}."{attribute.read_name}" = {outer.alias}."{outer.table.primary_id}"'
        if attribute.type_column:
            join += f' AND {alias}."{attribute.type_column}" = {sql_text(outer.table.name)}'
        source = f'SELECT 1 FROM "{reference.table.name}" {alias} WHERE {join}'
        if node.lambda_ is None:
            return Compiled(f"(EXISTS ({source}))")
        self.scopes.append(_Scope(reference.table, alias, node.lambda_.identifier.name))
        try:
            condition = self.predicate(node.lambda_.expression)
        finally:
            self.scopes.pop()
        if isinstance(node.operator, ast.Any):
            return Compiled(f"(EXISTS ({source} AND {condition.sql}))", condition.params)
        return Compiled(f"(NOT EXISTS ({source} AND NOT {condition.sql}))", condition.params)
