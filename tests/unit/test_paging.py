"""Page parsing ($deletedEntity rows, links, shape errors) and the repeated-link guard."""

from __future__ import annotations

from typing import Any

import pytest

from connector.errors import SyncError
from connector.paging import LinkGuard, parse_page

BASE = "https://org.example.crm.dynamics.com/api/data/v9.2/"


def _parse(body: Any) -> Any:
    return parse_page(body, table="lead", primary_key="leadid", request_id="req-1")


def test_delta_page_splits_changed_rows_from_deleted_entities() -> None:
    body = {
        "@odata.context": BASE + "$metadata#leads(subject)/$delta",
        "@odata.deltaLink": BASE + "leads?$select=subject&$deltatoken=919058%2108%2f22%2f2017",
        "value": [
            {
                "@odata.etag": 'W/"915244"',
                "subject": "x",
                "leadid": "60c4e274-0d87-e711-80e5-00155db19e6d",
            },
            {
                "@odata.context": BASE + "$metadata#leads/$deletedEntity",
                "id": "2e451703-c686-e711-80e5-00155db19e6d",
                "reason": "deleted",
            },
        ],
    }
    page = _parse(body)
    assert [r["leadid"] for r in page.rows] == ["60c4e274-0d87-e711-80e5-00155db19e6d"]
    assert page.deleted_ids == ["2e451703-c686-e711-80e5-00155db19e6d"]
    assert page.delta_link is not None
    assert page.delta_link.endswith("%2108%2f22%2f2017")
    assert page.is_last


def test_next_link_may_come_before_or_after_value() -> None:
    link = BASE + "leads?$select=subject&$skiptoken=%3Ccookie%20pagenumber=%222%22%20/%3E"
    page = _parse({"@odata.nextLink": link, "value": []})
    assert page.next_link == link
    assert not page.is_last


@pytest.mark.parametrize(
    ("body", "what"),
    [
        ([], "the body is not a JSON object"),
        ({"values": []}, "no 'value' array"),
        ({"value": ["x"]}, "row 0 is not an object"),
        ({"value": [{"subject": "no key"}]}, "row 0 has no 'leadid'"),
        (
            {"value": [{"@odata.context": BASE + "$metadata#leads/$deletedEntity"}]},
            "deleted row 0 has no 'id'",
        ),
        (
            {"value": [], "@odata.nextLink": "http://plain.example/leads"},
            "@odata.nextLink is not an https URL",
        ),
    ],
)
def test_unexpected_shapes_name_the_table_and_request(body: Any, what: str) -> None:
    with pytest.raises(SyncError) as caught:
        _parse(body)
    assert str(caught.value) == f"lead: page of unexpected shape: {what} (request id req-1)"


def test_link_guard_stops_a_repeated_next_link() -> None:
    guard = LinkGuard("contact")
    guard.check(BASE + "contacts?$skiptoken=1", "r1")
    guard.check(BASE + "contacts?$skiptoken=2", "r2")
    with pytest.raises(
        SyncError, match=r"contact: the server repeated a next link.*\(request id r3\)"
    ):
        guard.check(BASE + "contacts?$skiptoken=1", "r3")
