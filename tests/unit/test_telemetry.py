"""The transport counts each request by method and status, and each wait by why it happened."""

from __future__ import annotations

import requests
import responses

from connector.telemetry import REGISTRY
from tests.unit.test_http import API, JSON, FakeAuth, FakeClock, error_body, make_transport


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_requests_are_counted_by_status_and_waits_by_reason() -> None:
    clock = FakeClock()
    transport = make_transport(clock, FakeAuth())
    before = {
        "429": sample("dvconnect_http_requests_total", method="GET", status="429"),
        "200": sample("dvconnect_http_requests_total", method="GET", status="200"),
        "dropped": sample("dvconnect_http_requests_total", method="GET", status="ConnectionError"),
        "throttled": sample("dvconnect_http_waits_total", reason="throttled"),
        "throttled_s": sample("dvconnect_http_wait_seconds_total", reason="throttled"),
        "backoff": sample("dvconnect_http_waits_total", reason="backoff"),
    }
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        rsps.get(f"{API}leads", status=429, json=error_body("0x80072322"),
                 headers={"Retry-After": "30"})  # fmt: skip
        rsps.get(f"{API}leads", body=requests.ConnectionError("reset"))
        rsps.get(f"{API}leads", json={"value": []}, headers=JSON)
        transport.send("GET", "leads")

    assert sample("dvconnect_http_requests_total", method="GET", status="429") == before["429"] + 1
    assert sample("dvconnect_http_requests_total", method="GET", status="200") == before["200"] + 1
    assert (
        sample("dvconnect_http_requests_total", method="GET", status="ConnectionError")
        == before["dropped"] + 1
    )
    assert sample("dvconnect_http_waits_total", reason="throttled") == before["throttled"] + 1
    assert (
        sample("dvconnect_http_wait_seconds_total", reason="throttled")
        == before["throttled_s"] + 30
    )
    assert sample("dvconnect_http_waits_total", reason="backoff") == before["backoff"] + 1
