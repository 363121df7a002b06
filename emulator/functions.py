"""Dataverse query functions (§3.3): `Microsoft.Dynamics.CRM.<Name>(PropertyName=…, …)` → SQL.

Each function names a column with `PropertyName` and takes `PropertyValue` (one value),
`PropertyValues` (a collection of strings) or nothing. Relative dates are ranges [start, end) of
UTC time computed from the emulator's clock, truncated to the second, with the semantics the
connector's segment filters use (`connector/filters.py`) and Microsoft's descriptions where they
say more (weeks run Sunday to Saturday; Last7Days and Next7Days include today):

* Today, Yesterday, Tomorrow: that day. This/Last/NextWeek, …Month, …Year: that calendar period.
* LastXHours(n): now - n hours to now. NextXHours(n): now to now + n hours.
* LastXDays / LastXWeeks / LastXMonths / LastXYears(n): from the start of the day n days / weeks /
  calendar months / years ago, to now. NextX…(n): from now to the end of the day n ahead.
  Last7Days and Next7Days are LastXDays(7) and NextXDays(7). A month step clamps the day.
* OlderThanXMinutes / Hours / Days / Weeks / Months / Years(n): before now - n of them.
* On, OnOrAfter, OnOrBefore(PropertyValue='2024-01-01'): whole days, ends included.

A date-only column matches when its day overlaps the range. `Between`/`NotBetween` take two
values (whole days on date columns, ends included), `In`/`NotIn` any number; values are strings
converted to the column's type. `EqualUserId`, `EqualBusinessId` compare with the caller's user
and business unit, `EqualUserLanguage` with 1033. `Above`, `AboveOrEqual`, `Under`,
`UnderOrEqual`, `NotUnder` walk a table's hierarchical relationship (a lookup to the table
itself: account's `parentaccountid`). A null never matches a function, negated ones included
(as `ne`). Fiscal-period, team and user-hierarchy functions answer 501: the emulator models no
fiscal calendar, teams or manager hierarchy.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from uuid import UUID

from odata_query import ast

from emulator import errors
from emulator.schema import (
    CHOICE_TYPES,
    GUID_TYPES,
    INTEGER_TYPES,
    Attribute,
    AttributeType,
    Table,
)
from emulator.storage import fold

NAMESPACE = ("Microsoft", "Dynamics", "CRM")
USER_LANGUAGE = 1033

_Range = tuple[datetime | None, datetime | None]
_DAY = timedelta(days=1)
_SECOND = timedelta(seconds=1)  # "to now" takes in now itself: stored times are whole seconds
_STAMP = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class Environment:
    """What a function is evaluated against: the clock's now, the caller and their business unit."""

    now: datetime
    user_id: str
    business_unit_id: str


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


def _week(now: datetime, n: int) -> datetime:
    """The Sunday that starts the week `n` weeks from this one."""
    return _day(now) - timedelta(days=(now.weekday() + 1) % 7) + n * 7 * _DAY


_PLAIN: dict[str, Callable[[datetime], _Range]] = {
    "Today": lambda now: (_day(now), _day(now) + _DAY),
    "Yesterday": lambda now: (_day(now) - _DAY, _day(now)),
    "Tomorrow": lambda now: (_day(now) + _DAY, _day(now) + 2 * _DAY),
    "ThisWeek": lambda now: (_week(now, 0), _week(now, 1)),
    "LastWeek": lambda now: (_week(now, -1), _week(now, 0)),
    "NextWeek": lambda now: (_week(now, 1), _week(now, 2)),
    "ThisMonth": lambda now: (_month(now, 0), _month(now, 1)),
    "LastMonth": lambda now: (_month(now, -1), _month(now, 0)),
    "NextMonth": lambda now: (_month(now, 1), _month(now, 2)),
    "ThisYear": lambda now: (_year(now, 0), _year(now, 1)),
    "LastYear": lambda now: (_year(now, -1), _year(now, 0)),
    "NextYear": lambda now: (_year(now, 1), _year(now, 2)),
    "Last7Days": lambda now: (_day(now - 7 * _DAY), now + _SECOND),
    "Next7Days": lambda now: (now, _day(now + 7 * _DAY) + _DAY),
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
    "LastXYears": lambda now, n: (_day(_months(now, -12 * n)), now + _SECOND),
    "NextXYears": lambda now, n: (now, _day(_months(now, 12 * n)) + _DAY),
    "OlderThanXMinutes": lambda now, n: (None, now - timedelta(minutes=n)),
    "OlderThanXHours": lambda now, n: (None, now - timedelta(hours=n)),
    "OlderThanXDays": lambda now, n: (None, now - n * _DAY),
    "OlderThanXWeeks": lambda now, n: (None, now - 7 * n * _DAY),
    "OlderThanXMonths": lambda now, n: (None, _months(now, -n)),
    "OlderThanXYears": lambda now, n: (None, _months(now, -12 * n)),
}
_DATED: dict[str, Callable[[datetime], _Range]] = {  # PropertyValue=<date>, as its midnight
    "On": lambda day: (day, day + _DAY),
    "OnOrAfter": lambda day: (day, None),
    "OnOrBefore": lambda day: (None, day + _DAY),
}
_LISTED = {"In": False, "NotIn": True, "Between": False, "NotBetween": True}
_CONTAINS_VALUES = ("ContainValues", "DoesNotContainValues")
_IDENTITY = {"EqualUserId": False, "NotEqualUserId": True, "EqualBusinessId": False,
             "NotEqualBusinessId": True}  # fmt: skip
_HIERARCHY = ("Above", "AboveOrEqual", "Under", "UnderOrEqual", "NotUnder")
_NOT_MODELLED = frozenset(
    {
        "InFiscalPeriod", "InFiscalPeriodAndYear", "InFiscalYear", "InOrAfterFiscalPeriodAndYear",
        "InOrBeforeFiscalPeriodAndYear", "LastFiscalPeriod", "LastFiscalYear",
        "LastXFiscalPeriods", "LastXFiscalYears", "NextFiscalPeriod", "NextFiscalYear",
        "NextXFiscalPeriods", "NextXFiscalYears", "ThisFiscalPeriod", "ThisFiscalYear",
        "EqualUserOrUserHierarchy", "EqualUserOrUserHierarchyAndTeams", "EqualUserOrUserTeams",
        "EqualUserTeams", "Contains",
    }
)  # fmt: skip


def _parameters(name: str) -> tuple[str, ...]:
    if name in _COUNTED or name in _DATED or name in _HIERARCHY:
        return ("PropertyName", "PropertyValue")
    if name in _LISTED or name in _CONTAINS_VALUES:
        return ("PropertyName", "PropertyValues")
    return ("PropertyName",)


KNOWN = frozenset(
    {*_PLAIN, *_COUNTED, *_DATED, *_LISTED, *_CONTAINS_VALUES, *_IDENTITY, *_HIERARCHY,
     "EqualUserLanguage"}
)  # fmt: skip


def unknown_function(full_name: str) -> errors.ApiError:
    """ODataLib's text for a function it cannot bind."""
    return errors.bad_query(
        f"An unknown function with name '{full_name}' was found. This may also be a function "
        "import or a key lookup on a navigation property, which is not allowed."
    )


def _show(node: ast._Node | None) -> str:
    if node is None or isinstance(node, ast.Null):
        return "null"
    if isinstance(node, ast.List):
        return "[" + ",".join(_show(item) for item in node.val) + "]"
    if isinstance(node, ast.String):
        return "'" + node.val.replace("'", "''") + "'"
    return str(getattr(node, "val", type(node).__name__))


Column = Callable[[str], tuple[str, Attribute, Table]]


class FunctionCall:
    """One call: checks its parameters, then builds `(sql, params)` over the column it names."""

    def __init__(self, node: ast.Call, column: Column, env: Environment) -> None:
        self.name = node.func.name
        self.full = node.func.full_name()
        self.column = column
        self.env = env
        self.now = env.now.astimezone(UTC).replace(microsecond=0)
        self.args = node.args

    def error(self, message: str) -> errors.ApiError:
        return errors.bad_query(f"{self.full}: {message}")

    def compile(self) -> tuple[str, tuple[Any, ...]]:
        if self.name in _NOT_MODELLED:
            raise errors.not_implemented(f"The query function '{self.full}'")
        if self.name not in KNOWN:
            raise unknown_function(self.full)
        expected = _parameters(self.name)
        params: dict[str, ast._Node] = {}
        for arg in self.args:
            if not isinstance(arg, ast.NamedParam) or arg.name.name in params:
                raise self.error(f"the parameters are {', '.join(expected)}, each given by name.")
            params[arg.name.name] = arg.param
        if set(params) != set(expected):
            names = ", ".join(f"'{p}'" for p in expected)
            raise self.error(f"the function takes the parameters {names}; found "
                             f"{', '.join(repr(p) for p in params) or 'none'}.")  # fmt: skip
        subject = params["PropertyName"]
        if not isinstance(subject, ast.String):
            raise self.error(
                f"PropertyName must be a property name in quotes, not {_show(subject)}."
            )
        sql, attribute, table = self.column(subject.val)
        value = params.get(expected[1]) if len(expected) > 1 else None
        if self.name in _PLAIN or self.name in _COUNTED or self.name in _DATED:
            return self._dates(sql, attribute, value)
        if self.name in _LISTED:
            return self._listed(sql, attribute, value)
        if self.name in _IDENTITY:
            return self._identity(sql, attribute)
        if self.name == "EqualUserLanguage":
            if attribute.type not in INTEGER_TYPES:
                raise self._type(attribute, "a whole number")
            return f"({sql} = ?)", (USER_LANGUAGE,)
        if self.name in _HIERARCHY:
            return self._hierarchy(sql, attribute, table, value)
        raise self.error(
            f"'{attribute.read_name}' is not a multi-select choice column; ContainValues and "
            "DoesNotContainValues apply to those only."
        )

    def _type(self, attribute: Attribute, wanted: str) -> errors.ApiError:
        return self.error(
            f"the function applies to {wanted} properties; '{attribute.read_name}' is of type "
            f"'{attribute.edm_type}'."
        )

    # -- dates ----------------------------------------------------------------------------------

    def _dates(
        self, sql: str, attribute: Attribute, value: ast._Node | None
    ) -> tuple[str, tuple[Any, ...]]:
        if attribute.type is not AttributeType.DATETIME:
            raise self._type(attribute, "date and time")
        start, end = self._range(value)
        conditions, params = [f"{sql} IS NOT NULL"], []
        if start is not None:
            conditions.append(f"{sql} >= ?")
            params.append(_bound(start, attribute.date_only, end=False))
        if end is not None:
            conditions.append(f"{sql} < ?")
            params.append(_bound(end, attribute.date_only, end=True))
        return "(" + " AND ".join(conditions) + ")", tuple(params)

    def _range(self, value: ast._Node | None) -> _Range:
        if self.name in _PLAIN:
            return _PLAIN[self.name](self.now)
        if self.name in _DATED:
            return _DATED[self.name](self._midnight(value, "PropertyValue"))
        number = value.val if isinstance(value, ast.Integer) else None
        if number is None or int(number) < 0:
            raise self.error(
                f"PropertyValue must be a whole number of 0 or more, not {_show(value)}."
            )
        try:
            return _COUNTED[self.name](self.now, int(number))
        except (OverflowError, ValueError):
            raise self.error(f"PropertyValue {number} reaches outside the calendar.") from None

    def _midnight(self, node: ast._Node | None, parameter: str) -> datetime:
        if isinstance(node, ast.Date | ast.String | ast.DateTime):
            text = node.val[:10] if isinstance(node, ast.DateTime) else node.val.strip()
            try:
                return datetime.combine(date.fromisoformat(text[:10]), time(), UTC)
            except ValueError:
                pass
        raise self.error(f"{parameter} must hold dates as 'YYYY-MM-DD', not {_show(node)}.")

    # -- In, NotIn, Between, NotBetween -----------------------------------------------------------

    def _listed(
        self, sql: str, attribute: Attribute, value: ast._Node | None
    ) -> tuple[str, tuple[Any, ...]]:
        items = list(value.val) if isinstance(value, ast.List) else None
        if items and isinstance(items[-1], ast.String) and items[-1].val == ONE_ITEM:
            items = items[:-1]  # a one-item collection (see lists_in_parentheses)
        if not items or not all(isinstance(item, ast.String) for item in items):
            raise self.error(
                f'PropertyValues must be a collection of strings, such as ["1","2"], not '
                f"{_show(value)}."
            )
        texts = [item.val for item in items if isinstance(item, ast.String)]
        negated = _LISTED[self.name]
        if self.name.endswith("Between"):
            if len(texts) != 2:
                raise self.error(f"PropertyValues must hold two values, not {len(texts)}.")
            if attribute.type is AttributeType.DATETIME:
                first, last = (self._midnight(item, "PropertyValues") for item in items)
                low = _bound(first, attribute.date_only, end=False)
                high = _bound(last + _DAY, attribute.date_only, end=True)
                inside = f"{sql} >= ? AND {sql} < ?"
            else:
                low, high = (self._convert(attribute, text) for text in texts)
                inside = f"{sql} >= ? AND {sql} <= ?"
                if attribute.is_text:
                    sql = f"dv_fold({sql})"
                    inside = f"{sql} >= ? AND {sql} <= ?"
            word = "NOT " if negated else ""
            return f"({sql} IS NOT NULL AND {word}({inside}))", (low, high)
        values = tuple(self._convert(attribute, text) for text in texts)
        target = f"dv_fold({sql})" if attribute.is_text else sql
        marks = ", ".join("?" * len(values))
        word = "NOT IN" if negated else "IN"
        return f"({target} IS NOT NULL AND {target} {word} ({marks}))", values

    def _convert(self, attribute: Attribute, text: str) -> Any:
        try:
            return convert(attribute, text)
        except ValueError:
            raise self.error(
                f"the value '{text}' cannot be converted to '{attribute.edm_type}' for "
                f"'{attribute.read_name}'."
            ) from None

    # -- user, business unit, hierarchy ---------------------------------------------------------

    def _identity(self, sql: str, attribute: Attribute) -> tuple[str, tuple[Any, ...]]:
        if attribute.type not in GUID_TYPES:
            raise self._type(attribute, "unique identifier and lookup")
        user = "User" in self.name
        wanted = self.env.user_id if user else self.env.business_unit_id
        operator = "!=" if _IDENTITY[self.name] else "="
        return f"({sql} {operator} ?)", (wanted,)

    def _hierarchy(
        self, sql: str, attribute: Attribute, table: Table, value: ast._Node | None
    ) -> tuple[str, tuple[Any, ...]]:
        parent = next(
            (a for a in table.attributes if any(t.table == table.name for t in a.targets)), None
        )
        if parent is None:
            raise self.error(f"the table '{table.name}' has no hierarchical relationship.")
        if attribute.name != table.primary_id:
            raise self.error(f"PropertyName must be the primary key '{table.primary_id}'.")
        text = value.val if isinstance(value, ast.String | ast.GUID) else None
        try:
            record = str(UUID(str(text)))
        except ValueError:
            raise self.error(f"PropertyValue must be a record id, not {_show(value)}.") from None
        key, link = f'"{table.primary_id}"', f'"{parent.read_name}"'
        if self.name.startswith("Above"):
            walk = (
                f'WITH RECURSIVE h(id) AS (SELECT {link} FROM "{table.name}" WHERE {key} = ? '
                f'UNION SELECT r.{link} FROM "{table.name}" r JOIN h ON r.{key} = h.id) '
                "SELECT id FROM h WHERE id IS NOT NULL"
            )
        else:
            walk = (
                f'WITH RECURSIVE h(id) AS (SELECT {key} FROM "{table.name}" WHERE {link} = ? '
                f'UNION SELECT r.{key} FROM "{table.name}" r JOIN h ON r.{link} = h.id) '
                "SELECT id FROM h"
            )
        if self.name.endswith("OrEqual"):
            return f"({sql} = ? OR {sql} IN ({walk}))", (record, record)
        if self.name == "NotUnder":
            return f"({sql} NOT IN ({walk}))", (record,)
        return f"({sql} IN ({walk}))", (record,)


def convert(attribute: Attribute, text: str) -> Any:
    """A value written as text, as the store keeps values of `attribute` (strings folded);
    ValueError when it is not one."""
    if attribute.is_text:
        return fold(text)
    if attribute.type in INTEGER_TYPES or attribute.type in CHOICE_TYPES:
        return int(text)
    if attribute.type is AttributeType.BOOLEAN:
        flags = {"true": 1, "false": 0, "1": 1, "0": 0}
        if text.strip().lower() not in flags:
            raise ValueError(text)
        return flags[text.strip().lower()]
    if attribute.type in GUID_TYPES:
        return str(UUID(text.strip("{} ")))
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if attribute.date_only:
        return moment.date().isoformat()
    return moment.replace(tzinfo=moment.tzinfo or UTC).astimezone(UTC).strftime(_STAMP)


def _bound(moment: datetime, date_only: bool, end: bool) -> str:
    """A range bound as the store writes the column; on a date column, every day it touches."""
    if not date_only:
        return moment.strftime(_STAMP)
    day = moment.date()
    return (day + _DAY if end and moment != _day(moment) else day).isoformat()


# -- parameter aliases and collection literals ------------------------------------------------

_STRING = r"'(?:[^']|'')*'"
_ALIAS = re.compile(rf"{_STRING}|@[A-Za-z_]\w*")
_LISTS = re.compile(rf"{_STRING}|\[(?:{_STRING}|\"[^\"']*\"|[^\[\]'\"])*\]")
_QUOTES = re.compile(rf"({_STRING})|\"([^\"']*)\"")
ONE_ITEM = "\x00"  # marks a collection of one item once written with parentheses


def with_aliases(text: str, aliases: dict[str, str]) -> str:
    """`@p1` outside string literals → the alias's value text; an alias without one is null
    (OData URL conventions, parameter aliases)."""
    return _ALIAS.sub(
        lambda m: m.group() if m.group().startswith("'") else aliases.get(m.group(), "null"), text
    )


def lists_in_parentheses(text: str) -> str:
    """Collection literals as Dataverse takes them (`["1","2"]` or `['1','2']`) → the `('1','2')`
    the parser reads; string literals are left alone."""

    def rewrite(match: re.Match[str]) -> str:
        found = match.group()
        if found.startswith("'"):
            return found
        inner = _QUOTES.sub(lambda m: m[1] or "'" + m[2] + "'", found[1:-1])
        if inner.strip() and "," not in re.sub(_STRING, "", inner):
            inner += f",'{ONE_ITEM}'"  # one item: `('1')` would read as a parenthesized string
        return "(" + inner + ")"

    return _LISTS.sub(rewrite, text)
