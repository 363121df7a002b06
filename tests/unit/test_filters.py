"""Segment filters: OData $filter text selects the same rows of a store table on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Column, MetaData, Table, create_engine, select

from connector.errors import ConfigError
from connector.filters import FilterError, parse_filter
from connector.mapping import ColumnType
from connector.store import _TYPES

COLUMNS: dict[str, ColumnType] = {
    "leadid": "guid",
    "fullname": "string",
    "subject": "string",
    "statecode": "integer",
    "revenue": "number",
    "employees": "bigint",
    "donotemail": "boolean",
    "createdon": "datetime",
    "birthdate": "date",
    "_parentcontactid_value": "guid",
}
NOW = datetime(2024, 6, 12, 14, 13, 17, tzinfo=UTC)
ANN = "0a1b2c3d-0000-0000-0000-00000000000a"
PARENT = "5e6f7a8b-0000-0000-0000-0000000000c1"
ROWS = [
    {
        "fullname": "ann",
        "leadid": ANN,
        "subject": "Annual Conference",
        "statecode": 0,
        "revenue": 1500.5,
        "employees": 5_000_000_000,
        "donotemail": False,
        "createdon": "2024-06-12T09:00:00Z",
        "birthdate": "1990-01-01",
        "_parentcontactid_value": PARENT,
    },
    {
        "fullname": "bob",
        "subject": "annual review",
        "statecode": 1,
        "revenue": 200.0,
        "employees": 10,
        "donotemail": True,
        "createdon": "2024-06-11T23:59:59Z",
        "birthdate": "2024-06-12",
    },
    {
        "fullname": "cat",
        "subject": "O'Brien 100% _done_",
        "statecode": 2,
        "createdon": "2024-05-31T12:00:00Z",
        "birthdate": "2024-06-05",
        "_parentcontactid_value": "5e6f7a8b-0000-0000-0000-0000000000c2",
    },
    {"fullname": "dan"},
    {
        "fullname": "eve",
        "subject": "Zoë Ärger",
        "statecode": 0,
        "revenue": 99.5,
        "employees": 3,
        "donotemail": False,
        "createdon": "2024-06-13T10:00:00Z",
        "birthdate": "2024-06-19",
        "_parentcontactid_value": PARENT,
    },
    {
        "fullname": "fay",
        "subject": "abc_def/x",
        "statecode": 1,
        "revenue": 0.0,
        "employees": 0,
        "donotemail": True,
        "createdon": "2023-12-31T23:59:59Z",
        "birthdate": "2023-12-31",
    },
    {"fullname": "gus", "createdon": "2024-02-29T00:00:00Z", "birthdate": "2024-02-28"},
]

Matching = Callable[..., set[str]]


@pytest.fixture
def matching(database_url: str) -> Iterator[Matching]:
    """Who a filter selects from the rows above: a lead table typed as the store types it."""
    engine = create_engine(database_url)
    table = Table(
        "lead",
        MetaData(),
        *(Column(name, _TYPES[kind]) for name, kind in COLUMNS.items()),
    )
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        for number, row in enumerate(ROWS):
            leadid = row.get("leadid", f"00000000-0000-0000-0000-{number:012d}")
            conn.execute(table.insert().values({**row, "leadid": leadid}))

    def select_names(text: str, now: datetime = NOW) -> set[str]:
        condition = parse_filter(text, COLUMNS).condition(table, now)
        with engine.connect() as conn:
            return set(conn.scalars(select(table.c.fullname).where(condition)))

    yield select_names
    engine.dispose()


def _crm(function: str, column: str, value: str | None = None) -> str:
    """A Dataverse relative-date condition as admins write it."""
    parameters = f"PropertyName='{column}'" + (f",{value}" if value else "")
    return f"Microsoft.Dynamics.CRM.{function}({parameters})"


def _error(text: str) -> FilterError:
    with pytest.raises(FilterError) as caught:
        parse_filter(text, COLUMNS)
    return caught.value


def test_comparisons_and_logic_select_the_same_rows_on_both_databases(matching: Matching) -> None:
    cases = {
        "statecode eq 0": {"ann", "eve"},
        "statecode ne 0": {"bob", "cat", "fay"},
        "statecode gt 0": {"bob", "cat", "fay"},
        "statecode ge 1": {"bob", "cat", "fay"},
        "statecode lt 1": {"ann", "eve"},
        "statecode le 1": {"ann", "bob", "eve", "fay"},
        "revenue gt 100": {"ann", "bob"},
        "revenue le 99.5": {"eve", "fay"},
        "revenue eq 1500.5": {"ann"},
        "employees gt 4000000000": {"ann"},
        "statecode eq 0 and revenue gt 100": {"ann"},
        "statecode eq 2 or donotemail eq true": {"bob", "cat", "fay"},
        "statecode eq 1 or statecode eq 0 and revenue gt 1000": {"ann", "bob", "fay"},
        "(statecode eq 1 or statecode eq 0) and revenue gt 100": {"ann", "bob"},
        "not (statecode eq 0 or statecode eq 1)": {"cat"},
        "statecode in (0, 2)": {"ann", "cat", "eve"},
        "not (statecode in (0,1))": {"cat"},
    }
    assert {text: matching(text) for text in cases} == cases


def test_nulls_match_only_eq_null_as_in_dataverse(matching: Matching) -> None:
    cases = {
        "subject eq null": {"dan", "gus"},
        "_parentcontactid_value ne null": {"ann", "cat", "eve"},
        "statecode ne 0": {"bob", "cat", "fay"},
        "not (statecode eq 0)": {"bob", "cat", "fay"},
        "subject ne 'annual review'": {"ann", "cat", "eve", "fay"},
        "not (subject eq 'annual review')": {"ann", "cat", "eve", "fay"},
        "not contains(subject, 'annual')": {"cat", "eve", "fay"},
    }
    assert {text: matching(text) for text in cases} == cases


def test_boolean_columns_are_conditions_on_their_own(matching: Matching) -> None:
    cases = {
        "donotemail": {"bob", "fay"},
        "not donotemail": {"ann", "eve"},
        "donotemail eq false": {"ann", "eve"},
        "donotemail ne true": {"ann", "eve"},
        "donotemail and statecode eq 1": {"bob", "fay"},
    }
    assert {text: matching(text) for text in cases} == cases


def test_strings_compare_ignoring_case(matching: Matching) -> None:
    cases = {
        "subject eq 'annual CONFERENCE'": {"ann"},
        "subject eq 'O''BRIEN 100% _DONE_'": {"cat"},
        "subject in ('ANNUAL REVIEW', 'abc_DEF/x')": {"bob", "fay"},
        "startswith(subject, 'ANNUAL')": {"ann", "bob"},
        "endswith(subject, 'Review')": {"bob"},
        "contains(subject, 'CONF')": {"ann"},
        "subject gt 'b'": {"cat", "eve"},
        "subject lt 'B'": {"ann", "bob", "fay"},
        "subject eq 'Zoë Ärger'": {"eve"},
    }
    assert {text: matching(text) for text in cases} == cases


def test_other_letters_ignore_case_only_where_the_database_folds_them(
    matching: Matching, database_url: str
) -> None:
    folds = not database_url.startswith("sqlite")  # the test server runs in C.UTF-8
    assert matching("subject eq 'zoë ärger'") == ({"eve"} if folds else set())
    assert matching("subject eq 'zOë ÄrGeR'") == {"eve"}  # ASCII letters in any case


def test_like_wildcards_in_the_text_are_taken_literally(matching: Matching) -> None:
    cases = {
        "contains(subject, '%')": {"cat"},
        "startswith(subject, '_')": set(),
        "contains(subject, 'c_d')": {"fay"},
        "startswith(subject, 'abc%')": set(),
        "contains(subject, '/')": {"fay"},
        "endswith(subject, 'f/x')": {"fay"},
        "contains(subject, '')": {"ann", "bob", "cat", "eve", "fay"},
    }
    assert {text: matching(text) for text in cases} == cases


def test_guids_compare_whatever_the_case_of_the_literal(matching: Matching) -> None:
    cases = {
        "leadid eq 0A1B2C3D-0000-0000-0000-00000000000A": {"ann"},
        f"_parentcontactid_value eq {PARENT.upper()}": {"ann", "eve"},
        f"leadid in ({ANN}, 00000000-0000-0000-0000-000000000001)": {"ann", "bob"},
        "_parentcontactid_value eq null": {"bob", "dan", "fay", "gus"},
    }
    assert {text: matching(text) for text in cases} == cases


def test_datetimes_compare_in_utc_and_dates_as_days(matching: Matching) -> None:
    cases = {
        "createdon ge 2024-06-12T00:00:00Z": {"ann", "eve"},
        "createdon lt 2024-06-12T00:00:00Z": {"bob", "cat", "fay", "gus"},
        "createdon eq 2024-06-11T23:59:59Z": {"bob"},
        "createdon eq 2024-06-12T01:59:59+02:00": {"bob"},
        "createdon gt 2024-06-12T11:00:00+02:00": {"eve"},
        "createdon eq 2024-06-12T09:00:00": {"ann"},
        "birthdate eq 2024-06-12": {"bob"},
        "birthdate ge 2024-06-05": {"bob", "cat", "eve"},
        "birthdate lt 2024-01-01": {"ann", "fay"},
    }
    assert {text: matching(text) for text in cases} == cases


def test_relative_dates_are_evaluated_against_the_given_clock(matching: Matching) -> None:
    cases = {
        _crm("Today", "createdon"): {"ann"},
        _crm("Yesterday", "createdon"): {"bob"},
        _crm("Tomorrow", "createdon"): {"eve"},
        _crm("LastXHours", "createdon", "PropertyValue=6"): {"ann"},
        _crm("LastXHours", "createdon", "PropertyValue=15"): {"ann", "bob"},
        _crm("NextXHours", "createdon", "PropertyValue=19"): set(),
        _crm("NextXHours", "createdon", "PropertyValue=20"): {"eve"},
        _crm("LastXDays", "createdon", "PropertyValue=1"): {"ann", "bob"},
        _crm("LastXDays", "createdon", "PropertyValue=11"): {"ann", "bob"},
        _crm("LastXDays", "createdon", "PropertyValue=12"): {"ann", "bob", "cat"},
        _crm("NextXDays", "createdon", "PropertyValue=1"): {"eve"},
        _crm("OlderThanXDays", "createdon", "PropertyValue=12"): {"cat", "fay", "gus"},
        _crm("OlderThanXDays", "createdon", "PropertyValue=13"): {"fay", "gus"},
        _crm("LastXWeeks", "createdon", "PropertyValue=2"): {"ann", "bob", "cat"},
        _crm("NextXWeeks", "createdon", "PropertyValue=1"): {"eve"},
        _crm("LastXMonths", "createdon", "PropertyValue=1"): {"ann", "bob", "cat"},
        _crm("NextXMonths", "createdon", "PropertyValue=1"): {"eve"},
        _crm("OlderThanXMonths", "createdon", "PropertyValue=3"): {"fay", "gus"},
        _crm("OlderThanXMonths", "createdon", "PropertyValue=5"): {"fay"},
        _crm("ThisMonth", "createdon"): {"ann", "bob", "eve"},
        _crm("LastMonth", "createdon"): {"cat"},
        _crm("ThisYear", "createdon"): {"ann", "bob", "cat", "eve", "gus"},
        _crm("LastYear", "createdon"): {"fay"},
        _crm("On", "createdon", "PropertyValue='2024-05-31'"): {"cat"},
        _crm("OnOrAfter", "createdon", "PropertyValue=2024-06-12"): {"ann", "eve"},
        _crm("OnOrBefore", "createdon", "PropertyValue='2024-06-11'"): {"bob", "cat", "fay", "gus"},
        _crm("Between", "createdon", "PropertyValues=['2024-05-31','2024-06-11']"): {"bob", "cat"},
        _crm("Between", "createdon", 'PropertyValues=["2024-05-31","2024-06-11"]'): {"bob", "cat"},
    }
    assert {text: matching(text) for text in cases} == cases


def test_relative_dates_on_a_date_column_take_every_day_the_range_touches(
    matching: Matching,
) -> None:
    cases = {
        _crm("Today", "birthdate"): {"bob"},
        _crm("LastXHours", "birthdate", "PropertyValue=2"): {"bob"},
        _crm("LastXDays", "birthdate", "PropertyValue=7"): {"bob", "cat"},
        _crm("NextXDays", "birthdate", "PropertyValue=7"): {"bob", "eve"},
        _crm("OlderThanXDays", "birthdate", "PropertyValue=7"): {"ann", "cat", "fay", "gus"},
        _crm("ThisMonth", "birthdate"): {"bob", "cat", "eve"},
        _crm("On", "birthdate", "PropertyValue=2024-06-05"): {"cat"},
        _crm("Between", "birthdate", "PropertyValues=['2024-06-05','2024-06-12']"): {"bob", "cat"},
    }
    assert {text: matching(text) for text in cases} == cases


def test_month_steps_keep_the_day_clamped_to_the_month(matching: Matching) -> None:
    march_31 = datetime(2024, 3, 31, 12, 0, tzinfo=UTC)
    last_month = _crm("LastXMonths", "createdon", "PropertyValue=1")
    assert matching(last_month, march_31) == {"gus"}  # from Feb 29 00:00
    assert matching(_crm("LastXMonths", "birthdate", "PropertyValue=1"), march_31) == set()
    older = _crm("OlderThanXMonths", "createdon", "PropertyValue=1")
    assert matching(older, datetime(2024, 3, 31, tzinfo=UTC)) == {"fay"}  # before Feb 29 00:00


def test_a_relative_date_combines_with_other_conditions(matching: Matching) -> None:
    text = f"statecode eq 0 and {_crm('LastXDays', 'createdon', 'PropertyValue=30')}"
    assert matching(text) == {"ann"}
    assert matching(f"not {_crm('Today', 'createdon')}") == {"bob", "cat", "eve", "fay", "gus"}


def test_columns_lists_what_the_filter_reads() -> None:
    text = (
        "statecode eq 0 and (contains(subject, 'a') or "
        "Microsoft.Dynamics.CRM.LastXDays(PropertyName='createdon',PropertyValue=3))"
    )
    compiled = parse_filter(text, COLUMNS)
    assert compiled.text == text
    assert compiled.columns == {"statecode", "subject", "createdon"}


def test_the_condition_needs_an_aware_clock() -> None:
    compiled = parse_filter("statecode eq 0", COLUMNS)
    table = Table("lead", MetaData(), *(Column(n, _TYPES[k]) for n, k in COLUMNS.items()))
    with pytest.raises(ValueError, match="aware"):
        compiled.condition(table, datetime(2024, 1, 1))


@pytest.mark.parametrize(
    ("text", "message", "position"),
    [
        ("subjet eq 'a'", "unknown column 'subjet'; did you mean 'subject'?", 0),
        ("statecode eq 1 and xyz eq 1", "unknown column 'xyz'", 19),
        (_crm("Today", "createdn"), "unknown column 'createdn'; did you mean 'createdon'?", 0),
        ("statecode eq 'open'", "statecode is integer; 'open' is a string", 0),
        ("statecode eq 1.5", "statecode is integer; 1.5 is a decimal", 0),
        ("donotemail eq 1", "donotemail is boolean; 1 is an integer", 0),
        ("leadid eq 'abc'", "leadid is guid; 'abc' is a string", 0),
        ("createdon ge 2024-01-01", "createdon is datetime; 2024-01-01 is a date", 0),
        (
            "birthdate eq 2024-01-01T00:00:00Z",
            "birthdate is date; 2024-01-01T00:00:00Z is a datetime",
            0,
        ),
        ("statecode in (0, 'x')", "statecode is integer; 'x' is a string", 0),
        ("statecode in (0, null)", "null cannot be in a list: use statecode eq null", 0),
        ("statecode gt null", "statecode gt null: only eq and ne compare with null", 0),
        ("donotemail gt true", "donotemail is boolean: 'gt' does not apply", 0),
        ("subject eq fullname", "subject is compared to a column: compare it to a value", 0),
        ("0 eq statecode", "expected a column, found 0", None),
        ("not subject eq 'a'", "expected a column, found not subject", None),
        ("subject", "subject is not a condition: compare it to a value", 0),
        ("'subject'", "expected a condition, found 'subject'", None),
        (
            "createdon eq 2024-01-01T00:00:00.5Z",
            "2024-01-01T00:00:00.5Z: the store keeps whole seconds",
            0,
        ),
        ("createdon eq 2024-02-30T00:00:00Z", "2024-02-30T00:00:00Z is not a valid datetime", 0),
        ("birthdate eq 2024-02-30", "2024-02-30 is not a valid date", 0),
        ("contains(statecode, '1')", "contains applies to string columns; statecode is integer", 9),
        ("contains(subject, 1)", "contains looks for a string, not 1", 0),
        ("length(subject) gt 3", "unsupported function 'length'", 0),
        ("statecode eq 0 and year(createdon) eq 2024", "unsupported function 'year'", 19),
        ("soundex(subject) eq 'x'", "unsupported function 'soundex'", 0),
        ("subject/any(s: s eq 'a')", "unsupported function 'any'", 8),
        ("statecode add 1 eq 2", "unsupported operator 'add'", 10),
        ("statecode eq - 1", "unsupported operator '-'", 13),
        (
            "parentcontactid/fullname eq 'a'",
            "related tables are not supported: parentcontactid/fullname",
            None,
        ),
        ("contains(subject)", "contains takes 2 arguments, not 1", 0),
        (
            _crm("ThisWeek", "createdon"),
            "unsupported function 'Microsoft.Dynamics.CRM.ThisWeek'",
            0,
        ),
        (
            _crm("LastXDays", "subject", "PropertyValue=3"),
            "LastXDays needs a datetime or date column; subject is string",
            0,
        ),
        (
            _crm("LastXDays", "createdon"),
            "LastXDays: PropertyValue=<number ≥ 0> (found nothing)",
            0,
        ),
        (
            _crm("LastXDays", "createdon", "PropertyValue=-1"),
            "LastXDays: PropertyValue=<number ≥ 0> (found -1)",
            0,
        ),
        (
            _crm("LastXDays", "createdon", "PropertyValue='3'"),
            "LastXDays: PropertyValue=<number ≥ 0> (found '3')",
            0,
        ),
        (
            _crm("LastXDays", "createdon", "PropertyValue=99999999"),
            "LastXDays: PropertyValue=99999999 is too far",
            0,
        ),
        (_crm("Today", "createdon", "PropertyValue=1"), "Today takes PropertyName='<column>'", 0),
        ("Microsoft.Dynamics.CRM.Today(PropertyValue=1)", "Today takes PropertyName='<column>'", 0),
        (
            "Microsoft.Dynamics.CRM.Today(PropertyName=1)",
            "Today: PropertyName='<column>' (found 1)",
            0,
        ),
        (
            _crm("On", "createdon", "PropertyValue='June'"),
            "On: dates as 'YYYY-MM-DD' (found 'June')",
            0,
        ),
        (
            _crm("Between", "createdon", "PropertyValues=['2024-01-01']"),
            "Between: PropertyValues=[from, to] (found '2024-01-01')",
            0,
        ),
        (
            "Microsoft.Dynamics.CRM.On(PropertyName='a',PropertyValue=1,X=2)",
            "a function call has more than two named parameters",
            None,
        ),
    ],
)
def test_invalid_filters_are_refused_with_what_and_where(
    text: str, message: str, position: int | None
) -> None:
    error = _error(text)
    assert (error.message, error.position) == (message, position)
    assert str(error) == message
    assert isinstance(error, ConfigError)


@pytest.mark.parametrize(
    ("text", "message", "position"),
    [
        ("", "the filter is empty", 0),
        ("statecode eq eq 1", "syntax error at position 16: unexpected '1'", 16),
        ("subject eq 'a", "syntax error at position 11: a string is never closed", 11),
        ("subject eq 'a' and", "syntax error at position 15: unexpected 'and'", 15),
        ("statecode eq 1 and ", "syntax error at position 15: unexpected 'and'", 15),
        ("statecode eq 1 $", "syntax error at position 15: unexpected '$'", 15),
        ("(statecode eq 1", "syntax error at position 15: the filter ends too early", 15),
        ("statecode in (0)", "syntax error at position 15: unexpected ')'", 15),
        (
            _crm("Between", "createdon", 'PropertyValues=["2024-01-01","2024-01-31"]') + " $",
            "syntax error at position 100: unexpected '$'",
            100,
        ),
    ],
)
def test_syntax_errors_name_the_position_and_what_was_found(
    text: str, message: str, position: int
) -> None:
    error = _error(text)
    assert (error.message, error.position) == (message, position)


def test_injection_attempts_in_values_stay_values(matching: Matching) -> None:
    assert matching("subject eq 'x'' or ''1'' eq ''1'") == set()
    assert matching("subject eq 'O''Brien 100% _done_'") == {"cat"}
    with pytest.raises(FilterError, match="syntax error"):
        parse_filter("subject eq 'x') or (1 eq 1", COLUMNS)
    with pytest.raises(FilterError):
        parse_filter("subject eq 'x'; DROP TABLE lead; --'", COLUMNS)


def test_a_guid_column_refuses_what_is_not_a_guid() -> None:
    with pytest.raises(FilterError, match="_parentcontactid_value"):
        parse_filter("_parentcontactid_value eq 'not-a-guid'", COLUMNS)
    with pytest.raises(FilterError):
        parse_filter("_parentcontactid_value eq 12345", COLUMNS)
