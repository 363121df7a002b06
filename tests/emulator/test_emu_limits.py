"""Service protection limits (§12): sliding window per caller, 429 with Retry-After and headers."""

from __future__ import annotations

import threading

import requests

from tests.emulator import batch_wire as bw
from tests.emulator.conftest import Api

REMAINING = "x-ms-ratelimit-burst-remaining-xrm-requests"
TIME_LEFT = "x-ms-ratelimit-time-remaining-xrm-requests"


def limits(web: Api, **values: object) -> None:
    web.config(service_protection=values)


def test_defaults_are_the_real_limits_scaled_down(web: Api) -> None:
    assert web.admin("GET", "/config")["service_protection"] == {
        "enabled": True,
        "requests": 1200,
        "window_seconds": 60,
        "execution_ms": 240000,
        "concurrency": 10,
    }
    first, second = web.get("WhoAmI"), web.get("WhoAmI")
    assert int(first.headers[REMAINING]) == 1199
    assert int(second.headers[REMAINING]) == 1198
    assert float(second.headers[TIME_LEFT].replace(",", "")) <= 240.0
    assert first.headers[TIME_LEFT].count(".") == 1


def test_the_request_window_answers_429_until_it_slides(web: Api) -> None:
    limits(web, requests=3, window_seconds=30)
    assert [web.get("WhoAmI").status_code for _ in range(3)] == [200, 200, 200]
    refused = web.get("leads?$top=1")
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "30"
    assert refused.headers[REMAINING] == "0"
    assert refused.json() == {
        "error": {
            "code": "0x80072322",
            "message": "Number of requests exceeded the limit of 3 over time window of 30 seconds.",
        }
    }
    web.admin("POST", "/clock", {"advance_seconds": 20})
    still = web.get("WhoAmI")
    assert (still.status_code, still.headers["Retry-After"]) == (429, "10")
    web.admin("POST", "/clock", {"advance_seconds": 11})
    assert web.get("WhoAmI").status_code == 200
    log = web.emulator.requests_after(0)
    assert [e["throttled"] for e in log] == [None, None, None, "requests", "requests", None]
    assert web.admin("GET", "/status")["service_protection"]["emulator-client"]["requests"] >= 1


def test_every_inner_batch_request_counts(web: Api) -> None:
    limits(web, requests=5)
    small = bw.body("b", *[bw.op("GET", "WhoAmI")] * 4)
    headers = {"Content-Type": "multipart/mixed; boundary=b"}
    ok = web.session.post(web.url("$batch"), data=small, headers=headers, timeout=30)
    assert ok.status_code == 200
    assert ok.headers[REMAINING] == "1"
    big = bw.body("b", bw.op("POST", "leads", {"lastname": "Never"}), bw.op("GET", "WhoAmI"))
    refused = web.session.post(web.url("$batch"), data=big, headers=headers, timeout=30)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "0x80072322"
    assert "Retry-After" in refused.headers
    assert not [r for r in web.rows("lead").values() if r["lastname"] == "Never"]


def test_combined_execution_time_is_limited(web: Api) -> None:
    limits(web, execution_ms=250, window_seconds=60)
    web.admin("PUT", "/faults", {"spec": "slow:ms=300:first=1"})
    assert web.get("WhoAmI").status_code == 200
    refused = web.get("WhoAmI")
    assert refused.status_code == 429
    assert refused.json()["error"] == {
        "code": "0x80072321",
        "message": "Combined execution time of incoming requests exceeded limit of 250 "
        "milliseconds over time window of 60 seconds. Decrease number of concurrent requests "
        "or reduce the duration of requests and try again later.",
    }
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers[TIME_LEFT] == "0.00"


def test_concurrent_requests_are_limited_without_retry_after(web: Api) -> None:
    limits(web, concurrency=2)
    web.admin("PUT", "/faults", {"spec": "slow:ms=1500:path=WhoAmI"})
    results: list[requests.Response] = []

    def call() -> None:
        session = requests.Session()
        session.verify = web.session.verify
        session.trust_env = False
        session.headers.update(web.session.headers)
        results.append(session.get(web.url("WhoAmI"), timeout=30))

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    while (
        web.admin("GET", "/status")["service_protection"]
        .get("emulator-client", {})
        .get("in_flight", 0)
        < 2
    ):
        threading.Event().wait(0.02)
    refused = web.get("leads?$top=1")
    for thread in threads:
        thread.join()
    assert refused.status_code == 429
    assert "Retry-After" not in refused.headers
    assert refused.json()["error"] == {
        "code": "0x80072326",
        "message": "Number of concurrent requests exceeded the limit of 2.",
    }
    assert [r.status_code for r in results] == [200, 200]


def test_limits_are_per_caller_and_can_be_switched_off(web: Api) -> None:
    limits(web, requests=1)
    assert web.get("WhoAmI").status_code == 200
    assert web.get("WhoAmI").status_code == 429
    impersonated = web.get(
        "WhoAmI", headers={"CallerObjectId": "5f0c0d5e-0000-0000-0000-000000000001"}
    )
    assert impersonated.status_code == 200
    limits(web, enabled=False)
    response = web.get("WhoAmI")
    assert response.status_code == 200
    assert response.headers[REMAINING] == "7999"
