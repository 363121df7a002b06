"""Fault injection: spec parsing, the injected answers, selectors, filters and determinism."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest
import requests

from emulator.faults import FaultSpecError, parse_spec
from tests.emulator import batch_wire as bw
from tests.emulator.conftest import Api


def faults(web: Api, spec: str, seed: int = 0) -> None:
    web.admin("PUT", "/faults", {"spec": spec, "seed": seed})


def statuses(web: Api, count: int, path: str = "leads?$top=1") -> list[int]:
    return [web.get(path).status_code for _ in range(count)]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("500", "unknown kind '500'"),
        ("429:foo=1", "unknown key 'foo' for kind 429"),
        ("slow:retry-after=1", "unknown key 'retry-after' for kind slow"),
        ("429:every=0", "key 'every' must be an integer >= 1"),
        ("drop:rate=2", "key 'rate' must be a number from 0 to 1"),
        ("429:code=minutes", "key 'code' must be one of requests, time, concurrency"),
        ("503:at=1;x", "key 'at' must be an integer >= 1"),
        ("504:path", "key 'path' needs a value"),
    ],
)
def test_bad_specs_name_the_rule_and_the_key(spec: str, message: str) -> None:
    with pytest.raises(FaultSpecError) as raised:
        parse_spec(f"slow:ms=5,{spec}")
    assert f"fault rule {spec!r}" in str(raised.value)
    assert message in str(raised.value)


def test_a_bad_spec_on_the_command_line_exits_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "emulator", "--faults", "429:foo=1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "'429:foo=1'" in result.stderr
    assert "'foo'" in result.stderr
    assert result.stdout == ""


def test_throttling_answers_429_with_the_service_protection_texts(web: Api) -> None:
    faults(web, "429:at=1,429:at=2:code=time:retry-after=7,429:at=3:code=concurrency")
    requests_limit, time_limit, concurrency = (web.get("leads?$top=1") for _ in range(3))
    assert requests_limit.status_code == 429
    assert requests_limit.headers["Retry-After"] == "1"
    assert requests_limit.json() == {
        "error": {
            "code": "0x80072322",
            "message": "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
        }
    }
    assert time_limit.headers["Retry-After"] == "7"
    assert time_limit.json()["error"]["code"] == "0x80072321"
    assert time_limit.json()["error"]["message"].startswith(
        "Combined execution time of incoming requests exceeded limit of 1,200,000 milliseconds"
    )
    assert "Retry-After" not in concurrency.headers
    assert concurrency.json()["error"] == {
        "code": "0x80072326",
        "message": "Number of concurrent requests exceeded the limit of 52.",
    }
    assert web.get("leads?$top=1").status_code == 200


def test_gateway_errors_have_html_bodies(web: Api) -> None:
    faults(web, "503:at=1:retry-after=3,504:at=2")
    unavailable, timeout = web.get("leads?$top=1"), web.get("leads?$top=1")
    assert unavailable.status_code == 503
    assert unavailable.headers["Retry-After"] == "3"
    assert unavailable.headers["Content-Type"].startswith("text/html")
    assert timeout.status_code == 504
    assert "Retry-After" not in timeout.headers
    assert timeout.text.startswith("<html>")


def test_drop_closes_the_connection_without_executing(web: Api) -> None:
    faults(web, "drop:method=POST:first=1")
    new_id = str(uuid.uuid4())
    with pytest.raises(requests.ConnectionError):
        web.post("leads", {"leadid": new_id, "lastname": "Dropped"})
    assert new_id not in web.rows("lead")
    assert web.post("leads", {"leadid": new_id, "lastname": "Retried"}).status_code == 204
    log = web.emulator.requests_after(0)
    assert [(e["method"], e["status"], e["fault"]) for e in log] == [
        ("POST", None, "drop"),
        ("POST", 204, None),
    ]


def test_commit_drop_commits_and_then_closes_the_connection(web: Api) -> None:
    faults(web, "commit-drop:method=POST:first=1")
    new_id = str(uuid.uuid4())
    with pytest.raises(requests.ConnectionError):
        web.post("leads", {"leadid": new_id, "lastname": "Committed"})
    assert web.rows("lead")[new_id]["lastname"] == "Committed"
    retry = web.post("leads", {"leadid": new_id, "lastname": "Committed"})
    assert retry.status_code == 412
    assert retry.json()["error"]["code"] == "0x80040237"


def test_slow_delays_then_answers(web: Api) -> None:
    faults(web, "slow:ms=300:first=1")
    started = time.monotonic()
    assert web.get("leads?$top=1").status_code == 200
    assert time.monotonic() - started >= 0.3
    assert web.emulator.requests_after(0)[0]["fault"] == "slow"


def test_selectors_count_matching_requests(web: Api) -> None:
    faults(web, "503:every=3")
    assert statuses(web, 7) == [200, 200, 503, 200, 200, 503, 200]
    faults(web, "503:at=2;4")
    assert statuses(web, 5) == [200, 503, 200, 503, 200]
    faults(web, "503:times=2")
    assert statuses(web, 4) == [503, 503, 200, 200]
    faults(web, "503:path=contacts*")
    assert statuses(web, 2) == [200, 200]
    assert statuses(web, 1, "contacts?$top=1") == [503]
    faults(web, "503:method=PATCH")
    assert statuses(web, 2) == [200, 200]
    described = web.admin("GET", "/faults")
    assert described["rules"] == [
        {"rule": "503:method=PATCH", "kind": "503", "matched": 0, "injected": 0}
    ]


def test_rates_are_deterministic_for_a_seed(web: Api) -> None:
    faults(web, "429:rate=0.5", seed=11)
    first = statuses(web, 20)
    faults(web, "429:rate=0.5", seed=11)
    assert statuses(web, 20) == first
    assert 2 < first.count(429) < 18


def test_identity_and_admin_calls_are_never_faulted(web: Api) -> None:
    faults(web, "503")
    assert web.emulator.token()
    assert web.admin("GET", "/status")["tables"]["lead"]["rows"] == 300
    assert web.get("WhoAmI").status_code == 503
    web.admin("DELETE", "/faults")
    assert web.get("WhoAmI").status_code == 200


def _batch_of_leads(ids: list[str]) -> bytes:
    operations = [
        bw.op(
            "POST", "/api/data/v9.2/leads", {"leadid": i, "lastname": "Batched"}, content_id=str(n)
        )
        for n, i in enumerate(ids, start=1)
    ]
    return bw.body("batch_cd", bw.changeset("changeset_cd", *operations))


def _send_batches(web: Api, count: int) -> tuple[list[bool], list[list[str]]]:
    """Send `count` batches of two creates; which ones lost their answer, and their ids."""
    dropped, sent = [], []
    for _ in range(count):
        ids = [str(uuid.uuid4()), str(uuid.uuid4())]
        sent.append(ids)
        try:
            response = web.session.post(
                web.url("$batch"),
                data=_batch_of_leads(ids),
                headers={"Content-Type": "multipart/mixed; boundary=batch_cd"},
                timeout=30,
            )
            assert response.status_code == 200
            dropped.append(False)
        except requests.ConnectionError:
            dropped.append(True)
    return dropped, sent


def test_commit_drop_on_a_batch_commits_it_all_reproducibly_for_a_seed(web: Api) -> None:
    faults(web, "commit-drop:path=$batch:rate=0.5", seed=7)
    dropped, sent = _send_batches(web, 8)
    assert 0 < dropped.count(True) < 8
    leads = web.rows("lead")
    for ids in sent:  # dropped or not, every batch was committed as a whole
        assert {leads[i]["lastname"] for i in ids} == {"Batched"}
    log = web.emulator.requests_after(0)
    assert [e["fault"] == "commit-drop" for e in log] == dropped
    assert [e["status"] for e in log if e["fault"]] == [200] * dropped.count(True)
    web.emulator.reset()
    faults(web, "commit-drop:path=$batch:rate=0.5", seed=7)
    again, _ = _send_batches(web, 8)
    assert again == dropped


def test_commit_drop_on_a_bulk_action_commits_every_target(web: Api) -> None:
    faults(web, "commit-drop:path=*CreateMultiple:first=1")
    ids = [str(uuid.uuid4()) for _ in range(3)]
    targets = [{"@odata.type": "Microsoft.Dynamics.CRM.contact", "contactid": i, "lastname": "Bulk"}
               for i in ids]  # fmt: skip
    with pytest.raises(requests.ConnectionError):
        web.post("contacts/Microsoft.Dynamics.CRM.CreateMultiple", {"Targets": targets})
    contacts = web.rows("contact")
    assert all(contacts[i]["lastname"] == "Bulk" for i in ids)
    retry = web.post("contacts/Microsoft.Dynamics.CRM.CreateMultiple", {"Targets": targets})
    assert retry.status_code == 412
    upsert = web.post("contacts/Microsoft.Dynamics.CRM.UpsertMultiple", {"Targets": targets})
    assert upsert.status_code == 204
