"""The admin endpoint: status, request log, reset, table access, churn, clock, config."""

from __future__ import annotations

import uuid

import pytest
import requests

from emulator.process import EmulatorError
from tests.emulator.conftest import Api


def test_status_reports_counts_flags_and_version(web: Api) -> None:
    status = web.admin("GET", "/status")
    assert status["tables"]["lead"] == {"rows": 300, "change_tracking": True}
    assert status["tables"]["contact"]["rows"] == 150
    assert status["tables"]["systemuser"]["rows"] == 18  # 15 sales, 2 more, the application
    assert status["version"] > 0


def test_the_request_log_lists_api_calls_only(web: Api) -> None:
    web.get("leads?$select=fullname", "odata.maxpagesize=5")
    web.patch(f"leads({uuid.uuid4()})", {"lastname": "x"}, headers={"If-Match": "*"})
    web.admin("GET", "/status")
    log = web.emulator.requests_after(0)
    assert [(e["method"], e["path"], e["status"]) for e in log] == [
        ("GET", "/api/data/v9.2/leads", 200),
        ("PATCH", log[1]["path"], 404),
    ]
    assert log[0]["query"] == "$select=fullname"
    assert log[0]["prefer"] == "odata.maxpagesize=5"
    assert log[1]["if_match"] == "*"
    assert log[0]["fault"] is None
    assert log[0]["ms"] >= 0
    assert web.emulator.requests_after(log[0]["seq"]) == [log[1]]
    web.admin("DELETE", "/requests")
    assert web.emulator.requests_after(0) == []
    web.get("WhoAmI")
    assert web.emulator.requests_after(0)[0]["seq"] > log[1]["seq"]


def test_reset_reseeds_and_clears_the_rest(web: Api) -> None:
    first = sorted(web.rows("lead"))
    web.admin("DELETE", f"/tables/lead/{first[0]}")
    web.admin("PUT", "/faults", {"spec": "503:path=nothing"})
    web.admin("PATCH", "/config", {"retention_days": 1, "change_tracking": {"contact": False}})
    web.admin("POST", "/clock", {"now": "2030-01-01T00:00:00Z"})
    version = web.admin("GET", "/status")["version"]
    result = web.admin("POST", "/reset", {"leads": 20, "contacts": 10})
    assert result["seeded"]["lead"] == 20
    assert result["version"] > version
    assert web.admin("GET", "/tables/lead/deleted") == {"deleted": []}
    assert web.admin("GET", "/faults")["rules"] == []
    assert web.admin("GET", "/config")["retention_days"] == 7
    assert web.admin("GET", "/config")["change_tracking"]["contact"] is True
    assert not web.admin("GET", "/clock")["now"].startswith("2030")
    web.admin("POST", "/reset")
    assert sorted(web.rows("lead")) == first


def test_tables_can_be_read_written_and_filtered(web: Api) -> None:
    contact_id = next(iter(web.rows("contact")))
    new_id = str(uuid.uuid4())
    created = web.admin(
        "POST",
        "/tables/lead",
        {
            "rows": [
                {
                    "leadid": new_id,
                    "firstname": "Zoë",
                    "lastname": "Ångström",
                    "donotemail": True,
                    "_parentcontactid_value": contact_id.upper(),
                }
            ]
        },
    )
    assert created == {"ids": [new_id]}
    row = web.admin("GET", f"/tables/lead/{new_id}")["row"]
    assert row["fullname"] == "Zoë Ångström"
    assert row["donotemail"] is True
    assert row["_parentcontactid_value"] == contact_id
    assert (row["statecode"], row["statuscode"]) == (0, 1)
    patched = web.admin("PATCH", f"/tables/lead/{new_id}", {"statecode": 2, "statuscode": 6})["row"]
    assert patched["versionnumber"] > row["versionnumber"]
    assert patched["statuscode"] == 6
    upserted = web.admin("POST", "/tables/lead", {"rows": [{"leadid": new_id, "subject": "Again"}]})
    assert upserted == {"ids": [new_id]}
    assert web.admin("GET", f"/tables/lead/{new_id}")["row"]["subject"] == "Again"
    found = web.admin("GET", "/tables/lead?$filter=lastname eq 'ångström' and donotemail eq true")
    assert new_id in {r["leadid"] for r in found["rows"]}
    assert web.admin("GET", "/tables/lead/count") == {"count": 301}
    assert web.admin("DELETE", f"/tables/lead/{new_id}") == {
        "deleted": [{"table": "lead", "id": new_id}]
    }
    assert web.admin("GET", "/tables/lead/deleted")["deleted"][0]["id"] == new_id


def test_admin_deletes_cascade_like_web_api_deletes(web: Api) -> None:
    account_id = next(
        r["_parentcustomerid_value"]
        for r in web.rows("contact").values()
        if r["_parentcustomerid_value"]
    )
    deleted = web.admin("DELETE", f"/tables/account/{account_id}")["deleted"]
    assert deleted[0] == {"table": "account", "id": account_id}
    assert {d["table"] for d in deleted[1:]} == {"contact"}


def test_admin_errors_are_plain_json(web: Api) -> None:
    with pytest.raises(EmulatorError, match="404"):
        web.admin("GET", "/tables/campaign")
    with pytest.raises(EmulatorError, match="unknown column 'nope'"):
        web.admin("POST", "/tables/lead", {"rows": [{"nope": 1}]})
    with pytest.raises(EmulatorError, match="405"):
        web.admin("PUT", "/status")
    with pytest.raises(EmulatorError, match="unknown configuration key"):
        web.admin("PATCH", "/config", {"colour": "blue"})
    with pytest.raises(EmulatorError, match="404"):
        web.admin("PATCH", f"/tables/lead/{uuid.uuid4()}", {"subject": "x"})


def test_activity_makes_reproducible_churn(web: Api) -> None:
    body = {"table": "contact", "creates": 3, "updates": 5, "deletes": 2, "seed": 9}
    first = web.admin("POST", "/activity", body)
    assert len(first["created"]) == 3
    assert len(first["updated"]) == 5
    assert len(first["deleted"]) == 2
    contacts = web.rows("contact")
    assert set(first["created"]) <= set(contacts)
    assert not set(first["deleted"]) & set(contacts)
    web.admin("POST", "/reset")
    second = web.admin("POST", "/activity", body)
    assert (second["updated"], second["deleted"]) == (first["updated"], first["deleted"])


def test_the_clock_can_be_set_and_advanced(web: Api) -> None:
    assert web.admin("POST", "/clock", {"now": "2031-05-06T07:08:09Z"})["now"].startswith(
        "2031-05-06T07:08"
    )
    assert web.admin("POST", "/clock", {"advance_seconds": 86400})["now"].startswith("2031-05-07")
    web.renew()
    assert web.post("leads", {"lastname": "Dated"}).status_code == 204
    dated = [r for r in web.rows("lead").values() if r["lastname"] == "Dated"]
    assert dated[0]["createdon"].startswith("2031-05-07")


def test_the_admin_endpoint_needs_no_token(web: Api) -> None:
    response = requests.get(
        f"{web.emulator.admin_url}/status", verify=web.emulator.ca_bundle, timeout=30
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"


def test_activity_called_twice_with_the_same_seed_makes_new_records(web: Api) -> None:
    body = {"table": "lead", "creates": 3, "updates": 2, "deletes": 3}
    first = web.admin("POST", "/activity", body)
    second = web.admin("POST", "/activity", body)
    assert len(set(first["created"]) | set(second["created"])) == 6
    assert web.admin("GET", "/tables/lead/count")["count"] == 300
