"""OData literals, query strings and paths: values can never change a filter's meaning."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone
from urllib.parse import unquote

import pytest

from connector.odata import (
    collection_url,
    entity_definition_path,
    entity_path,
    guid,
    literal,
    query_string,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("O'Bryan", "'O''Bryan'"),
        ("'); DROP TABLE lead;--", "'''); DROP TABLE lead;--'"),
        ("x' or 1 eq 1 or 'a' eq 'a", "'x'' or 1 eq 1 or ''a'' eq ''a'"),
        ("Zoë Ångström", "'Zoë Ångström'"),
        ("", "''"),
        (None, "null"),
        (True, "true"),
        (False, "false"),
        (8, "8"),
        (2.5, "2.5"),
        (uuid.UUID("49B0BE2E-D01C-ED11-B83E-000D3A572421"), "49b0be2e-d01c-ed11-b83e-000d3a572421"),
        (
            datetime(2024, 6, 12, 16, 13, 17, tzinfo=timezone(timedelta(hours=2))),
            "2024-06-12T14:13:17Z",
        ),
        (date(2024, 4, 11), "2024-04-11"),
    ],
)
def test_literal_quotes_every_kind_of_value(value: object, expected: str) -> None:
    assert literal(value) == expected


def test_literal_refuses_naive_datetimes_and_unknown_types() -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        literal(datetime(2024, 1, 1))
    with pytest.raises(TypeError, match="no OData literal for list"):
        literal([1])


def test_guid_normalises_and_rejects_non_guids() -> None:
    assert guid("{49B0BE2E-D01C-ED11-B83E-000D3A572421}") == "49b0be2e-d01c-ed11-b83e-000d3a572421"
    with pytest.raises(ValueError, match="not a GUID") as caught:
        guid("1') or (1 eq 1")
    assert str(caught.value) == 'not a GUID: "1\') or (1 eq 1"'


def test_entity_path_only_accepts_guids() -> None:
    assert entity_path("leads", uuid.UUID(int=1)) == "leads(00000000-0000-0000-0000-000000000001)"
    with pytest.raises(ValueError, match="not a GUID"):
        entity_path("leads", "abc)/contacts(")


def test_query_string_escapes_the_characters_that_split_a_url() -> None:
    text = query_string({"$filter": "subject eq 'A&B #1 + 100%'"})
    assert text == "$filter=subject%20eq%20'A%26B%20%231%20%2B%20100%25'"
    assert unquote(text.split("=", 1)[1]) == "subject eq 'A&B #1 + 100%'"


def test_collection_url_keeps_select_order_and_adds_options() -> None:
    url = collection_url(
        "leads",
        ["leadid", "modifiedon"],
        filter="modifiedon ge 2024-01-01T00:00:00Z",
        orderby="modifiedon asc,leadid asc",
    )
    assert url == (
        "leads?$select=leadid,modifiedon&$filter=modifiedon%20ge%202024-01-01T00:00:00Z"
        "&$orderby=modifiedon%20asc,leadid%20asc"
    )


def test_entity_definition_path_quotes_the_logical_name() -> None:
    assert (
        entity_definition_path("lead", "/Attributes")
        == "EntityDefinitions(LogicalName='lead')/Attributes"
    )
