"""Change tracking: snapshot with a deltaLink on the last page, deltas, deletions, expiry."""

from __future__ import annotations

import re
import uuid
from typing import Any
from urllib.parse import unquote

from tests.emulator.conftest import Api, error

TRACK = "odata.track-changes,odata.maxpagesize=100"


def snapshot(
    web: Api, path: str = "leads?$select=fullname,subject"
) -> tuple[list[dict[str, Any]], str]:
    pages = web.pages(path, TRACK)
    for page in pages[:-1]:
        assert "@odata.deltaLink" not in page
    return [row for page in pages for row in page["value"]], pages[-1]["@odata.deltaLink"]


def delta(web: Api, link: str, prefer: str = TRACK) -> tuple[list[dict[str, Any]], str]:
    pages = web.pages(link, prefer)
    for page in pages:
        assert page["@odata.context"].endswith("/$delta")
    return [row for page in pages for row in page["value"]], pages[-1]["@odata.deltaLink"]


def test_the_initial_request_returns_every_row_and_a_deltalink_on_the_last_page(web: Api) -> None:
    first = web.get("leads?$select=fullname,subject", TRACK)
    assert first.headers["Preference-Applied"] == "odata.track-changes,odata.maxpagesize=100"
    assert "@odata.nextLink" in first.json()
    rows, link = snapshot(web)
    assert len(rows) == len({r["leadid"] for r in rows}) == 300
    assert link.startswith(f"{web.emulator.api_url}/leads?$select=fullname,subject&$deltatoken=")
    token = unquote(link.split("$deltatoken=")[1])
    assert re.match(r"^\d+!\d{2}/\d{2}/\d{4} \d{2}:\d{2}:\d{2}$", token)
    assert int(token.split("!")[0]) == web.admin("GET", "/status")["version"]


def test_a_delta_returns_changed_rows_then_deletions(web: Api) -> None:
    _, link = snapshot(web)
    leads = sorted(web.rows("lead"))
    web.admin("PATCH", f"/tables/lead/{leads[5]}", {"subject": "Changed"})
    web.admin("DELETE", f"/tables/lead/{leads[6]}")
    created = str(uuid.uuid4())
    web.admin("POST", "/tables/lead", {"rows": [{"leadid": created, "lastname": "Fresh"}]})
    rows, new_link = delta(web, link)
    assert [r.get("leadid") for r in rows[:2]] == [leads[5], created]
    assert rows[0]["subject"] == "Changed"
    assert list(rows[0]) == ["@odata.etag", "fullname", "subject", "leadid"]
    assert rows[2] == {
        "@odata.context": f"{web.emulator.api_url}/$metadata#leads/$deletedEntity",
        "id": leads[6],
        "reason": "deleted",
    }
    assert len(rows) == 3
    assert new_link != link
    again, newest = delta(web, new_link)
    assert again == []
    assert "$deltatoken=" in newest


def test_an_empty_delta_still_brings_a_fresh_deltalink(web: Api) -> None:
    _, link = snapshot(web)
    body = web.get(link, TRACK).json()
    assert body["value"] == []
    assert body["@odata.context"].endswith("$metadata#leads(fullname,subject)/$delta")
    assert "@odata.deltaLink" in body


def test_a_row_created_and_deleted_between_syncs_shows_as_a_deletion(web: Api) -> None:
    _, link = snapshot(web)
    created = str(uuid.uuid4())
    assert web.post("leads", {"leadid": created, "lastname": "Brief"}).status_code == 204
    assert web.delete(f"leads({created})").status_code == 204
    rows, _ = delta(web, link)
    assert rows == [
        {
            "@odata.context": f"{web.emulator.api_url}/$metadata#leads/$deletedEntity",
            "id": created,
            "reason": "deleted",
        }
    ]


def test_removelink_changes_are_seen_by_change_tracking(web: Api) -> None:
    _, link = snapshot(web)
    leads = web.rows("lead")
    contact_id = next(
        r["_parentcontactid_value"] for r in leads.values() if r["_parentcontactid_value"]
    )
    linked = {i for i, r in leads.items() if r["_parentcontactid_value"] == contact_id}
    assert web.delete(f"contacts({contact_id})").status_code == 204
    rows, _ = delta(web, link)
    assert {r["leadid"] for r in rows} == linked


def test_big_deltas_are_paged_and_keep_their_order(web: Api) -> None:
    _, link = snapshot(web)
    changes = web.admin(
        "POST",
        "/activity",
        {"table": "lead", "creates": 30, "updates": 120, "deletes": 40, "seed": 7},
    )
    rows, _ = delta(web, link, "odata.track-changes,odata.maxpagesize=25")
    changed = [r["leadid"] for r in rows if "leadid" in r]
    deleted = [r["id"] for r in rows if "id" in r]
    assert set(changed) == set(changes["created"]) | set(changes["updated"])
    assert set(deleted) == set(changes["deleted"])
    assert rows[: len(changed)] == [r for r in rows if "leadid" in r]
    versions = [int(r["@odata.etag"][3:-1]) for r in rows if "leadid" in r]
    assert versions == sorted(versions)


def test_changes_during_a_snapshot_reach_the_next_delta(web: Api) -> None:
    first = web.get("leads?$select=subject", TRACK).json()
    seen = {r["leadid"] for r in first["value"]}
    target = sorted(seen)[0]
    web.admin("PATCH", f"/tables/lead/{target}", {"subject": "During the snapshot"})
    pages = web.pages(first["@odata.nextLink"], TRACK)
    link = pages[-1]["@odata.deltaLink"]
    rows, _ = delta(web, link)
    assert [r["leadid"] for r in rows] == [target]
    assert rows[0]["subject"] == "During the snapshot"


def test_query_options_that_conflict_with_change_tracking_are_refused(web: Api) -> None:
    for option, value in (("$filter", "statecode eq 0"), ("$orderby", "createdon"), ("$top", "5")):
        assert error(web.get(f"leads?{option}={value}", "odata.track-changes")) == (
            400,
            "0x80060888",
            f'The "{option}" query parameter isn\'t supported when Change Tracking is enabled.',
        )


def test_an_old_token_expires_after_the_retention(web: Api) -> None:
    _, link = snapshot(web)
    web.advance(6 * 86400)
    assert web.get(link, TRACK).status_code == 200
    web.advance(2 * 86400)
    assert error(web.get(link, TRACK)) == (
        400,
        "0x80044352",
        "Version stamp associated with the client has expired. Please perform a full sync.",
    )


def test_retention_is_configurable(web: Api) -> None:
    _, link = snapshot(web)
    web.admin("PATCH", "/config", {"retention_days": 1})
    web.advance(2 * 86400)
    assert error(web.get(link))[1] == "0x80044352"


def test_track_changes_is_silently_ignored_on_an_untracked_table(web: Api) -> None:
    web.admin("PATCH", "/config", {"change_tracking": {"lead": False}})
    response = web.get("leads?$select=subject", TRACK)
    assert response.status_code == 200
    assert response.headers["Preference-Applied"] == "odata.maxpagesize=100"
    pages = web.pages("leads?$select=subject", TRACK)
    assert all("@odata.deltaLink" not in page for page in pages)
    definition = web.get("EntityDefinitions(LogicalName='lead')?$select=ChangeTrackingEnabled")
    assert definition.json()["ChangeTrackingEnabled"] is False


def test_a_delta_count_counts_changes(web: Api) -> None:
    _, link = snapshot(web)
    token = link.split("$deltatoken=")[1]
    leads = sorted(web.rows("lead"))
    web.admin("PATCH", f"/tables/lead/{leads[0]}", {"subject": "x"})
    web.admin("DELETE", f"/tables/lead/{leads[1]}")
    assert web.get(f"leads/$count?$deltatoken={token}").text == "2"
