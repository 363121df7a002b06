"""Segment filters: OData `$filter` text compiled to a SQLAlchemy Core condition on a store table.

Segment conditions are `$filter` texts an admin could send to Dataverse; here they run as SQL on
the local store, selecting the same rows on SQLite and PostgreSQL. `parse_filter` parses a text
once (odata-query) and checks it against the synced columns; `CompiledFilter.condition` builds
the SQL for each evaluation, since relative dates depend on the run's clock.

Supported: `eq ne gt ge lt le`, `and or not`, parentheses, `in (…)`, `eq null` / `ne null`,
`contains` / `startswith` / `endswith`, a boolean column alone (`not donotemail`), and Dataverse's
relative dates `Microsoft.Dynamics.CRM.<Name>(PropertyName='col'[,PropertyValue=…])`. Anything
else (`length`, `year`, lambdas, arithmetic, comparing two columns) is a FilterError.

Literals are compared as the store keeps values: guids in lower case; datetimes as ISO UTC text
in whole seconds (an offset is converted, none means UTC, a fraction is refused); dates as
`YYYY-MM-DD`. A null matches only `eq null`: `x ne 'a'` and `not (x eq 'a')` leave it out, as in
Dataverse (SQL's three-valued logic, the same on both databases). Strings ignore case: both
sides go through the database's `lower()`, which folds ASCII letters on both databases but other
letters only where the database does (PostgreSQL with a UTF-8 locale, not SQLite), so
`'é' eq 'É'` may differ between them; exact-case matches always hold. String `gt`, `lt`… use
code-point order on both (`COLLATE "C"` on PostgreSQL).

Relative dates are ranges [start, end) of UTC time (Dataverse uses the user's time zone; a
service has none), from `now` truncated to the second. Today, Yesterday, Tomorrow: that day.
ThisMonth, LastMonth, ThisYear, LastYear: that calendar month or year. LastXHours(n): now - n
hours to now; NextXHours(n): now to now + n hours. LastXDays / LastXWeeks / LastXMonths(n): from
the start of the day n days / weeks / calendar months ago to now. NextXDays / NextXWeeks /
NextXMonths(n): from now to the end of the day n ahead. OlderThanXDays / OlderThanXMonths(n):
before now - n. On, OnOrAfter, OnOrBefore(PropertyValue='2024-01-01') and
Between(PropertyValues=['2024-01-01','2024-01-31']): whole days, ends included. A month step
clamps the day (Mar 31 - 1 month = Feb 29). A date column matches when its day overlaps the
range: LastXDays(7) and NextXDays(7) both take in today.
"""

from __future__ import annotations

import calendar
import difflib
import re
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from odata_query import ast
from odata_query import exceptions as odata
from odata_query.grammar import ODataLexer, ODataParser
from sqlalchemy import ColumnElement, Text, and_, func, literal, not_, or_, true
from sqlalchemy import column as sql_column
from sqlalchemy import table as sql_table
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import FunctionElement, TableClause

from connector.errors import ConfigError

if TYPE_CHECKING:  # mapping.py imports this module to check segment files
    from connector.mapping import ColumnType


class FilterError(ConfigError):
    """A filter that cannot be compiled: what is wrong, and where (0-based offset, or None)."""

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.position = position


@dataclass(frozen=True)
class CompiledFilter:
    """A parsed, checked filter: `columns` are the store columns it reads."""

    text: str
    columns: frozenset[str]
    _tree: ast._Node = field(repr=False, compare=False)
    _types: Mapping[str, ColumnType] = field(repr=False, compare=False)

    def condition(self, table: TableClause, now: datetime) -> ColumnElement[bool]:
        """The SQL condition over `table`, relative dates resolved against `now` (aware)."""
        if now.tzinfo is None:
            raise ValueError("now must be an aware datetime")
        return _Compiler(table, self._types, now, {}).condition(self._tree)


def parse_filter(text: str, columns: Mapping[str, ColumnType]) -> CompiledFilter:
    """Parse `text` and check it against `columns` (the synced columns of one table, typed)."""
    if not text.strip():
        raise FilterError("the filter is empty", 0)
    # YAML's folded and literal blocks end with a newline; trailing space is no part of a filter.
    source = _LISTS.sub(_list_in_parentheses, text.rstrip())
    try:
        tokens = list(ODataLexer().tokenize(source))
    except odata.TokenizingException as exc:
        raise _syntax_error(source, exc.token.index) from None
    positions = _positions(source, tokens)
    try:
        tree = ODataParser().parse(iter(tokens))
    except odata.ParsingException as exc:
        raise _syntax_error(source, len(source) if exc.token is None else exc.token.index) from None
    except odata.UnknownFunctionException as exc:
        name = exc.function_name
        raise FilterError(f"unsupported function '{name}'", positions.get(name.lower())) from None
    except odata.ArgumentCountException as exc:
        name, count = exc.function_name, f"{exc.exp_min_args} arguments, not {exc.n_args_given}"
        raise FilterError(f"{name} takes {count}", positions.get(name.lower())) from None
    except AttributeError as exc:  # odata-query 0.10 fails on a third named parameter
        if "list_items" not in str(exc):
            raise
        raise FilterError("a function call has more than two named parameters") from None
    except RecursionError:
        raise FilterError(f"nested more than {MAX_DEPTH} levels deep") from None
    if _depth(tree) > MAX_DEPTH:
        raise FilterError(f"nested more than {MAX_DEPTH} levels deep")
    # The check builds the SQL once over a stand-in table, on the current clock.
    probe = sql_table("filter", *(sql_column(name) for name in columns))
    compiler = _Compiler(probe, columns, datetime.now(UTC), positions)
    compiler.condition(tree)
    read = frozenset(compiler.read)
    return CompiledFilter(text, read, tree, {name: columns[name] for name in read})


# -- reading the text ------------------------------------------------------------------------

MAX_DEPTH = 100  # parentheses and `not`s inside each other; `and`/`or` chains may be any length
INT64 = (-(2**63), 2**63 - 1)


def _depth(tree: ast._Node) -> int:
    """How deeply conditions nest, not counting chains of one operator (`a and b and c`)."""
    deepest = 0
    stack: list[tuple[ast._Node, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        match node:
            case ast.BoolOp(operator, left, right):
                for side in (left, right):
                    same = isinstance(side, ast.BoolOp) and type(side.op) is type(operator)
                    stack.append((side, depth if same else depth + 1))
            case ast.UnaryOp(_, operand):
                stack.append((operand, depth + 1))
    return deepest


def _chain(node: ast.BoolOp) -> list[ast._Node]:
    """The operands of a chain of one boolean operator, in order, without recursion."""
    operands: list[ast._Node] = []
    stack: list[ast._Node] = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, ast.BoolOp) and type(current.op) is type(node.op):
            stack += [current.right, current.left]
        else:
            operands.append(current)
    return operands


# Dataverse writes list parameters as ["a","b"]; odata-query reads ('a','b'). Same length, so
# positions in the rewritten text are positions in the original.
_STRING = r"'(?:[^']|'')*'"
_LISTS = re.compile(rf"{_STRING}|\[(?:{_STRING}|\"[^\"']*\"|[^\[\]'\"])*\]")
_QUOTES = re.compile(rf"({_STRING})|\"([^\"']*)\"")
_WORD = re.compile(_STRING + r"|[\w.:+-]+|\S")


def _list_in_parentheses(match: re.Match[str]) -> str:
    found = match.group()
    if found.startswith("'"):
        return found
    return "(" + _QUOTES.sub(lambda m: m[1] or f"'{m[2]}'", found[1:-1]) + ")"


def _syntax_error(text: str, position: int) -> FilterError:
    position += len(text[position:]) - len(text[position:].lstrip())
    if position >= len(text):
        what = "the filter ends too early"
    else:
        word = _WORD.match(text, position)
        found = word.group() if word else text[position]
        what = "a string is never closed" if found == "'" else f"unexpected {found!r}"
    return FilterError(f"syntax error at position {position}: {what}", position)


def _positions(text: str, tokens: list[Any]) -> dict[str, int]:
    """Where each word of the text first appears (lower case), to point errors at it."""
    positions: dict[str, int] = {}
    ends = [token.index for token in tokens[1:]] + [len(text)]
    for token, end in zip(tokens, ends, strict=True):
        raw = text[token.index : end]
        positions.setdefault(raw.strip().lower(), token.index + len(raw) - len(raw.lstrip()))
    return positions


def _name(node: ast.Identifier) -> str:
    return ".".join((*node.namespace, node.name))


def _show(node: ast._Node | None) -> str:
    """A node as the admin wrote it, for messages."""
    match node:
        case None:
            return "nothing"
        case ast.String(text):
            return "'" + text.replace("'", "''") + "'"
        case ast.Identifier():
            return _name(node)
        case ast.Attribute(owner, attr):
            return f"{_show(owner)}/{attr}"
        case ast.List(items):
            return "(" + ",".join(map(_show, items)) + ")"
        case ast.Call(ast.Identifier() as function):
            return f"{_name(function)}(…)"
        case ast.UnaryOp(ast.Not(), operand):
            return f"not {_show(operand)}"
        case ast.Compare() | ast.BoolOp():
            return "a condition"
    return str(getattr(node, "val", "null" if isinstance(node, ast.Null) else "an expression"))


# -- building SQL ----------------------------------------------------------------------------


class _Bytewise(FunctionElement[str]):
    """Text ordered by code point: `COLLATE "C"` on PostgreSQL, SQLite's default elsewhere."""

    inherit_cache = True


@compiles(_Bytewise)
def _bytewise_default(element: _Bytewise, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.clauses, **kw)


@compiles(_Bytewise, "postgresql")
def _bytewise_postgresql(element: _Bytewise, compiler: SQLCompiler, **kw: Any) -> str:
    return f'{compiler.process(element.clauses, **kw)} COLLATE "C"'


_Range = tuple[datetime | None, datetime | None]  # [start, end) in UTC; None: open on that side
_DAY = timedelta(days=1)
_SECOND = timedelta(seconds=1)  # "to now" takes in now itself: stored times are whole seconds
_STAMP = "%Y-%m-%dT%H:%M:%SZ"


def _day(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def _months(moment: datetime, n: int) -> datetime:
    """`moment` moved by `n` calendar months, the day clamped to the length of the month."""
    year, month = divmod(moment.year * 12 + moment.month - 1 + n, 12)
    last = calendar.monthrange(year, month + 1)[1]
    return moment.replace(year=year, month=month + 1, day=min(moment.day, last))


def _month(now: datetime, n: int) -> datetime:
    return _months(_day(now).replace(day=1), n)


def _year(now: datetime, n: int) -> datetime:
    return _day(now).replace(year=now.year + n, month=1, day=1)


_PLAIN: dict[str, Callable[[datetime], _Range]] = {
    "Today": lambda now: (_day(now), _day(now) + _DAY),
    "Yesterday": lambda now: (_day(now) - _DAY, _day(now)),
    "Tomorrow": lambda now: (_day(now) + _DAY, _day(now) + 2 * _DAY),
    "ThisMonth": lambda now: (_month(now, 0), _month(now, 1)),
    "LastMonth": lambda now: (_month(now, -1), _month(now, 0)),
    "ThisYear": lambda now: (_year(now, 0), _year(now, 1)),
    "LastYear": lambda now: (_year(now, -1), _year(now, 0)),
}
_COUNTED: dict[str, Callable[[datetime, int], _Range]] = {  # PropertyValue=<whole number>
    "LastXHours": lambda now, n: (now - timedelta(hours=n), now + _SECOND),
    "NextXHours": lambda now, n: (now, now + timedelta(hours=n) + _SECOND),
    "LastXDays": lambda now, n: (_day(now - n * _DAY), now + _SECOND),
    "NextXDays": lambda now, n: (now, _day(now + n * _DAY) + _DAY),
    "LastXWeeks": lambda now, n: (_day(now - 7 * n * _DAY), now + _SECOND),
    "NextXWeeks": lambda now, n: (now, _day(now + 7 * n * _DAY) + _DAY),
    "LastXMonths": lambda now, n: (_day(_months(now, -n)), now + _SECOND),
    "NextXMonths": lambda now, n: (now, _day(_months(now, n)) + _DAY),
    "OlderThanXDays": lambda now, n: (None, now - n * _DAY),
    "OlderThanXMonths": lambda now, n: (None, _months(now, -n)),
}
_DATED: dict[str, Callable[[datetime], _Range]] = {  # PropertyValue=<date>, as its midnight
    "On": lambda day: (day, day + _DAY),
    "OnOrAfter": lambda day: (day, None),
    "OnOrBefore": lambda day: (None, day + _DAY),
}
_VALUE = {**dict.fromkeys((*_COUNTED, *_DATED), "PropertyValue"), "Between": "PropertyValues"}
_RELATIVE = {*_PLAIN, *_VALUE}

_Comparison = Callable[[ColumnElement[Any], Any], ColumnElement[bool]]
_OPERATORS: dict[type[ast._Node], tuple[str, _Comparison]] = {
    ast.Eq: ("eq", lambda a, b: a == b),
    ast.NotEq: ("ne", lambda a, b: a != b),
    ast.Lt: ("lt", lambda a, b: a < b),
    ast.LtE: ("le", lambda a, b: a <= b),
    ast.Gt: ("gt", lambda a, b: a > b),
    ast.GtE: ("ge", lambda a, b: a >= b),
    ast.In: ("in", lambda a, b: a.in_(b)),
}
_ARITHMETIC = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div", ast.Mod: "mod"}
_LIKE = {"contains": "%{}%", "startswith": "{}%", "endswith": "%{}"}
# fmt: off
_KINDS: dict[type[ast._Node], str] = {
    ast.String: "a string", ast.Integer: "an integer", ast.Float: "a decimal",
    ast.Boolean: "a boolean", ast.GUID: "a guid", ast.DateTime: "a datetime",
    ast.Date: "a date", ast.Time: "a time", ast.Duration: "a duration",
}
# fmt: on


@dataclass
class _Compiler:
    """One walk over the syntax tree: checks it against the typed columns and builds the SQL."""

    table: TableClause
    types: Mapping[str, ColumnType]
    now: datetime
    positions: Mapping[str, int]  # where words first appear in the text, for errors
    read: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.now = self.now.astimezone(UTC).replace(microsecond=0)

    def error(self, message: str, near: str | None = None) -> FilterError:
        return FilterError(message, self.positions.get(near.lower()) if near else None)

    def condition(self, node: ast._Node) -> ColumnElement[bool]:
        match node:
            case ast.BoolOp(ast.And()):
                return and_(*(self.condition(operand) for operand in _chain(node)))
            case ast.BoolOp(ast.Or()):
                return or_(*(self.condition(operand) for operand in _chain(node)))
            case ast.UnaryOp(ast.Not(), operand):
                return not_(self.condition(operand))
            case ast.Compare(comparator, left, right):
                return self.compare(_OPERATORS[type(comparator)], left, right)
            case ast.Call(ast.Identifier(function, ()), [subject, needle]) if function in _LIKE:
                return self.like(function, subject, needle)
            case ast.Call(ast.Identifier(function, ("Microsoft", "Dynamics", "CRM")), args):
                return self.relative(function, args)
            case ast.Identifier():
                name, kind = self.column(node)
                if kind != "boolean":
                    raise self.error(f"{name} is not a condition: compare it to a value", name)
                return self.table.c[name] == true()
        self.unsupported(node)
        raise self.error(f"expected a condition, found {_show(node)}")

    def column(self, node: ast._Node, near: str | None = None) -> tuple[str, ColumnType]:
        """The synced column `node` names, and its type."""
        self.unsupported(node)
        if not isinstance(node, ast.Identifier):
            raise self.error(f"expected a column, found {_show(node)}")
        name = _name(node)
        if name not in self.types:
            close = difflib.get_close_matches(name, self.types)
            hint = "; did you mean " + " or ".join(f"'{c}'" for c in close) + "?" if close else ""
            raise self.error(f"unknown column '{name}'{hint}", near or name)
        self.read.add(name)
        return name, self.types[name]

    def unsupported(self, node: ast._Node) -> None:
        """FilterError for the parts of OData that segments do not support."""
        match node:
            case ast.Call(ast.Identifier() as function):
                raise self.error(f"unsupported function '{_name(function)}'", _name(function))
            case ast.CollectionLambda(_, operator):
                word = type(operator).__name__.lower()
                raise self.error(f"unsupported function '{word}'", word)
            case ast.BinOp(operator):
                word = _ARITHMETIC[type(operator)]
                raise self.error(f"unsupported operator '{word}'", word)
            case ast.UnaryOp(ast.USub()):
                raise self.error("unsupported operator '-'", "-")
            case ast.Attribute():
                raise self.error(f"related tables are not supported: {_show(node)}")

    def compare(
        self, operator: tuple[str, _Comparison], left: ast._Node, right: ast._Node
    ) -> ColumnElement[bool]:
        word, apply = operator
        name, kind = self.column(left)
        column = self.table.c[name]
        if isinstance(right, ast.Null):
            if word not in ("eq", "ne"):
                raise self.error(f"{name} {word} null: only eq and ne compare with null", name)
            return column.is_(None) if word == "eq" else column.is_not(None)
        target: ColumnElement[Any] = func.lower(column) if kind == "string" else column
        if word in ("lt", "le", "gt", "ge"):
            if kind in ("guid", "boolean"):
                raise self.error(f"{name} is {kind}: '{word}' does not apply", name)
            if kind == "string":
                target = _Bytewise(target)
        if word == "in":
            items = right.val if isinstance(right, ast.List) else [right]
            return apply(target, [self.value(name, kind, item) for item in items])
        return apply(target, self.value(name, kind, right))

    def value(self, name: str, kind: ColumnType, node: ast._Node) -> Any:
        """The literal `node` as the store keeps values of `kind` (strings lower-cased in SQL)."""
        self.unsupported(node)
        match kind, node:
            case "string", ast.String(text):
                return func.lower(literal(text, Text()))
            case "guid", ast.GUID(text):
                return text.lower()
            case (("integer" | "bigint"), ast.Integer(text)):
                if not INT64[0] <= int(text) <= INT64[1]:
                    raise self.error(f"{text} is too large for {name} ({kind})", name)
                return int(text)
            case "number", ast.Integer(text) | ast.Float(text):
                return float(text)
            case "boolean", ast.Boolean(text):
                return text.lower() == "true"
            case "datetime", ast.DateTime(text):
                with suppress(ValueError):
                    moment = datetime.fromisoformat(text)
                    if moment.microsecond:
                        raise self.error(f"{text}: the store keeps whole seconds", name)
                    return (
                        moment.replace(tzinfo=moment.tzinfo or UTC).astimezone(UTC).strftime(_STAMP)
                    )
                raise self.error(f"{text} is not a valid datetime", name)
            case "date", ast.Date(text):
                with suppress(ValueError):
                    return date.fromisoformat(text).isoformat()
                raise self.error(f"{text} is not a valid date", name)
            case _, ast.Identifier():
                raise self.error(f"{name} is compared to a column: compare it to a value", name)
            case _, ast.Null():
                raise self.error(f"null cannot be in a list: use {name} eq null", name)
        if type(node) not in _KINDS:
            raise self.error(f"expected a value to compare {name} to, found {_show(node)}", name)
        raise self.error(f"{name} is {kind}; {_show(node)} is {_KINDS[type(node)]}", name)

    def like(self, function: str, subject: ast._Node, needle: ast._Node) -> ColumnElement[bool]:
        name, kind = self.column(subject)
        if kind != "string":
            raise self.error(f"{function} applies to string columns; {name} is {kind}", name)
        if not isinstance(needle, ast.String):
            raise self.error(f"{function} looks for a string, not {_show(needle)}", function)
        pattern = _LIKE[function].format(re.sub(r"[/%_]", r"/\g<0>", needle.val))
        return func.lower(self.table.c[name]).like(func.lower(literal(pattern, Text())), escape="/")

    def relative(self, function: str, args: list[ast._Node]) -> ColumnElement[bool]:
        """A Dataverse relative-date condition: its column within the range of the function."""
        full = f"Microsoft.Dynamics.CRM.{function}"
        if function not in _RELATIVE:
            raise self.error(f"unsupported function '{full}'", full)
        params = {arg.name.name: arg.param for arg in args if isinstance(arg, ast.NamedParam)}
        wanted = _VALUE.get(function, "")
        if len(params) != len(args) or not params.keys() <= {"PropertyName", wanted}:
            also = f" and {wanted}" if wanted else ""
            raise self.error(f"{function} takes PropertyName='<column>'{also}", full)
        subject = params.get("PropertyName")
        if not isinstance(subject, ast.String):
            raise self.error(f"{function}: PropertyName='<column>' (found {_show(subject)})", full)
        name, kind = self.column(ast.Identifier(subject.val), near=full)
        if kind not in ("datetime", "date"):
            raise self.error(f"{function} needs a datetime or date column; {name} is {kind}", full)
        start, end = self.range(function, params.get(wanted), full)
        column = self.table.c[name]
        try:
            after = true() if start is None else column >= _bound(start, kind, end=False)
            before = true() if end is None else column < _bound(end, kind, end=True)
        except OverflowError:
            raise self.error(f"{function}: its range reaches past the year 9999", full) from None
        return and_(after, before)

    def range(self, function: str, value: ast._Node | None, full: str) -> _Range:
        try:
            return self._range(function, value, full)
        except OverflowError:
            raise self.error(f"{function}: its range reaches past the year 9999", full) from None

    def _range(self, function: str, value: ast._Node | None, full: str) -> _Range:
        if function in _PLAIN:
            return _PLAIN[function](self.now)
        if function in _DATED:
            return _DATED[function](self.midnight(function, value, full))
        if function == "Between":
            items = value.val if isinstance(value, ast.List) else []
            if len(items) != 2:
                raise self.error(f"Between: PropertyValues=[from, to] (found {_show(value)})", full)
            first, last = (self.midnight(function, item, full) for item in items)
            return first, last + _DAY
        if not isinstance(value, ast.Integer) or int(value.val) < 0:
            raise self.error(f"{function}: PropertyValue=<number ≥ 0> (found {_show(value)})", full)
        try:
            return _COUNTED[function](self.now, int(value.val))
        except (OverflowError, ValueError):
            raise self.error(f"{function}: PropertyValue={value.val} is too far", full) from None

    def midnight(self, function: str, node: ast._Node | None, full: str) -> datetime:
        if isinstance(node, ast.Date | ast.String):
            with suppress(ValueError):
                return datetime.combine(date.fromisoformat(node.val), time(), UTC)
        raise self.error(f"{function}: dates as 'YYYY-MM-DD' (found {_show(node)})", full)


def _bound(moment: datetime, kind: ColumnType, end: bool) -> str:
    """A range bound as the store writes `kind`; on a date column, every day the range touches."""
    if kind == "datetime":
        return moment.strftime(_STAMP)
    day = moment.date()
    return (day + _DAY if end and moment != _day(moment) else day).isoformat()
