"""The transport: OData headers, retry policy, process-wide pause, 401 renewal, errors, logs."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest
import requests
import responses
from pydantic import SecretStr

from connector.errors import (
    BadRequestError,
    DataverseError,
    DuplicateDetectedError,
    ExpiredDeltaTokenError,
    ForbiddenError,
    NotFoundError,
    PreconditionFailedError,
    ServerError,
    ThrottledError,
    UnauthorizedError,
    UnreachableError,
    parse_retry_after,
)
from connector.http import ThrottleGate, Transport, should_retry
from connector.settings import Connection

ORG = "https://org.example.crm.dynamics.com"
API = f"{ORG}/api/data/v9.2/"
JSON = {"Content-Type": "application/json; odata.metadata=minimal"}


def error_body(code: str, message: str = "error") -> dict[str, object]:
    return {"error": {"code": code, "message": message}}


def connection(max_attempts: int = 4, retry_backoff: float = 1.0) -> Connection:
    return Connection(
        dataverse_url=ORG,
        tenant_id="tenant",
        client_id="client",
        client_secret=SecretStr("secret"),
        certificate_path=None,
        certificate_thumbprint=None,
        certificate_password=None,
        authority="https://login.microsoftonline.com/tenant",
        timeout=130.0,
        max_attempts=max_attempts,
        retry_backoff=retry_backoff,
    )


class FakeAuth(requests.auth.AuthBase):
    """Puts `token-<n>` in the header; `renew()` moves on to the next token."""

    def __init__(self) -> None:
        self.renewals = 0

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer token-{self.renewals + 1}"
        return request

    def renew(self) -> None:
        self.renewals += 1


class FakeClock:
    """A monotonic clock that only moves when someone sleeps; records who slept how long."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[tuple[str, float]] = []
        self._lock = threading.Lock()

    def time(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append((threading.current_thread().name, float(seconds)))
            self.now += seconds

    def waits(self) -> list[float]:
        return [seconds for _, seconds in self.sleeps]


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def auth() -> FakeAuth:
    return FakeAuth()


def make_transport(clock: FakeClock, auth: FakeAuth, max_attempts: int = 4) -> Transport:
    return Transport(
        connection(max_attempts), auth, sleep=clock.sleep, gate=ThrottleGate(clock.time)
    )


@pytest.fixture
def transport(clock: FakeClock, auth: FakeAuth) -> Transport:
    return make_transport(clock, auth)


CONNECTION_ERROR = requests.ConnectionError("connection refused")


@pytest.mark.parametrize(
    ("status", "code", "method", "safe", "exc", "expected"),
    [
        # 429: always, whatever the method; the server did not execute the request.
        (429, "0x80072322", "GET", True, None, True),
        (429, "0x80072321", "POST", False, None, True),
        (429, "", "POST", False, None, True),
        # 502/503/504: only when safe.
        (502, "", "GET", True, None, True),
        (503, "", "PATCH", True, None, True),
        (504, "", "DELETE", True, None, True),
        (503, "", "POST", False, None, False),
        (504, "", "POST", False, None, False),
        (503, "", "POST", True, None, True),
        # 500: only when safe, and never duplicate detection.
        (500, "0x80040265", "GET", True, None, True),
        (500, "0x80040265", "POST", False, None, False),
        (500, "0x80040333", "PATCH", True, None, False),
        (500, "0x80040333", "POST", True, None, False),
        # Other 5xx and every 4xx: never (401 is renewed apart, 403 never repeated).
        (501, "0x80040219", "GET", True, None, False),
        (400, "0x80060888", "GET", True, None, False),
        (401, "", "GET", True, None, False),
        (403, "0x80040220", "GET", True, None, False),
        (404, "0x80040217", "GET", True, None, False),
        (412, "0x80060882", "PATCH", True, None, False),
        # Connection failures and timeouts: only when safe.
        (None, "", "GET", True, CONNECTION_ERROR, True),
        (None, "", "GET", True, requests.ReadTimeout(), True),
        (None, "", "PUT", True, requests.ConnectTimeout(), True),
        (None, "", "PATCH", True, requests.exceptions.ChunkedEncodingError(), True),
        (None, "", "POST", False, CONNECTION_ERROR, False),
        (None, "", "POST", False, requests.ReadTimeout(), False),
        (None, "", "POST", True, requests.ReadTimeout(), True),
        # GET and HEAD only read: safe even when a caller said otherwise.
        (503, "", "GET", False, None, True),
        (None, "", "head", False, CONNECTION_ERROR, True),
        # TLS failures are trust configuration, and other errors are not transport failures.
        (None, "", "GET", True, requests.exceptions.SSLError(), False),
        (None, "", "GET", True, ValueError("not a transport failure"), False),
        (None, "", "GET", True, None, False),
    ],
)
def test_should_retry_table(
    status: int | None,
    code: str,
    method: str,
    safe: bool,
    exc: BaseException | None,
    expected: bool,
) -> None:
    assert should_retry(status, code, method, safe, exc) is expected


def test_a_get_carries_the_odata_headers_the_token_and_the_timeouts(
    rsps: responses.RequestsMock, transport: Transport
) -> None:
    rsps.get(f"{API}leads", json={"value": []}, headers=JSON)

    response = transport.send("GET", "leads", params={"$select": "fullname"})

    assert response.json() == {"value": []}
    sent = rsps.calls[0].request
    assert sent.url == f"{API}leads?%24select=fullname"
    assert sent.headers["Accept"] == "application/json"
    assert sent.headers["OData-MaxVersion"] == "4.0"
    assert sent.headers["OData-Version"] == "4.0"
    assert sent.headers["Authorization"] == "Bearer token-1"
    assert "Content-Type" not in sent.headers
    assert sent.req_kwargs["timeout"] == (10.0, 130.0)  # type: ignore[attr-defined]


def test_a_json_body_is_sent_as_application_json(
    rsps: responses.RequestsMock, transport: Transport
) -> None:
    rsps.post(f"{API}leads", status=204, headers={"OData-EntityId": f"{API}leads(1)"})

    transport.send("POST", "leads", json={"lastname": "Doe"})

    sent = rsps.calls[0].request
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.body == b'{"lastname": "Doe"}'


def test_a_raw_body_keeps_the_callers_content_type(
    rsps: responses.RequestsMock, transport: Transport
) -> None:
    rsps.post(f"{API}$batch", status=200, body="--batchresponse_1--")
    content_type = "multipart/mixed; boundary=batch_1"

    transport.send("POST", "$batch", data=b"--batch_1--", headers={"Content-Type": content_type})

    assert rsps.calls[0].request.headers["Content-Type"] == content_type


def test_a_next_link_is_sent_exactly_as_received(
    rsps: responses.RequestsMock, transport: Transport
) -> None:
    next_link = (
        f"{API}leads?$select=fullname,emailaddress1&$filter=lastname%20eq%20'O''Brien'"
        "&$skiptoken=%3Ccookie%20pagenumber=%222%22%20pagingcookie=%22%253ccookie%2520page"
        "%253d%25221%2522%253e%253c%252fcookie%253e%22%20istracking=%22False%22%20/%3E"
    )
    rsps.get(next_link, json={"value": []}, headers=JSON)

    transport.send("GET", next_link)

    assert rsps.calls[0].request.url == next_link


def test_retry_after_on_429_is_honoured(
    rsps: responses.RequestsMock, transport: Transport, clock: FakeClock
) -> None:
    rsps.get(
        f"{API}leads",
        status=429,
        json=error_body("0x80072322"),
        headers={"Retry-After": "30"},
    )
    rsps.get(f"{API}leads", json={"value": []}, headers=JSON)

    transport.send("GET", "leads")

    assert clock.waits() == [30.0]
    assert (transport.requests_sent, transport.throttled) == (2, 1)


def test_a_503_with_retry_after_then_200_is_retried_after_the_wait(
    rsps: responses.RequestsMock, transport: Transport, clock: FakeClock
) -> None:
    rsps.get(f"{API}leads", status=503, body="", headers={"Retry-After": "5"})
    rsps.get(f"{API}leads", json={"value": [{"leadid": "1"}]}, headers=JSON)

    response = transport.send("GET", "leads")

    assert response.json() == {"value": [{"leadid": "1"}]}
    assert clock.waits() == [5.0]


def test_a_429_without_retry_after_backs_off_exponentially(
    rsps: responses.RequestsMock, transport: Transport, clock: FakeClock
) -> None:
    for _ in range(3):
        rsps.post(f"{API}leads", status=429, json=error_body("0x80072326"), headers=JSON)
    rsps.post(f"{API}leads", status=204)

    transport.send("POST", "leads", json={"lastname": "Doe"})

    first, second, third = clock.waits()
    assert 1 <= first <= 2
    assert 2 <= second <= 3
    assert 4 <= third <= 5


def test_the_first_backoff_wait_is_a_setting_and_the_others_double_it(
    rsps: responses.RequestsMock, clock: FakeClock, auth: FakeAuth
) -> None:
    transport = Transport(connection(retry_backoff=0.25), auth, sleep=clock.sleep,
                          gate=ThrottleGate(clock.time))  # fmt: skip
    for _ in range(3):
        rsps.get(f"{API}leads", body=requests.ConnectionError("reset"))
    rsps.get(f"{API}leads", json={"value": []})

    transport.send("GET", "leads")

    first, second, third = clock.waits()
    assert 0.25 <= first <= 0.5
    assert 0.5 <= second <= 0.75
    assert 1.0 <= third <= 1.25


def test_a_503_on_a_post_is_not_retried(
    rsps: responses.RequestsMock, transport: Transport, clock: FakeClock
) -> None:
    rsps.post(f"{API}leads", status=503, body="")

    with pytest.raises(ServerError) as caught:
        transport.send("POST", "leads", json={"lastname": "Doe"})

    assert caught.value.status == 503
    assert transport.requests_sent == 1
    assert clock.waits() == []


def test_a_post_declared_safe_is_retried_on_503(
    rsps: responses.RequestsMock, transport: Transport
) -> None:
    rsps.post(f"{API}$batch", status=503, body="")
    rsps.post(f"{API}$batch", status=200, body="--batchresponse_1--")

    transport.send("POST", "$batch", data=b"--batch_1--", safe=True)

    assert transport.requests_sent == 2


def test_connection_errors_on_a_get_are_retried_then_unreachable(
    rsps: responses.RequestsMock, clock: FakeClock, auth: FakeAuth
) -> None:
    transport = make_transport(clock, auth, max_attempts=3)
    for _ in range(3):
        rsps.get(f"{API}leads", body=requests.ConnectionError("connection refused"))

    with pytest.raises(UnreachableError) as caught:
        transport.send("GET", "leads?$filter=emailaddress1 eq 'ann@example.com'")

    assert transport.requests_sent == 3
    assert len(clock.waits()) == 2
    assert all(0 < wait <= 60 for wait in clock.waits())
    assert "connection refused" in str(caught.value)
    assert "ann@example.com" not in str(caught.value)
    assert caught.value.exit_code == 3


def test_a_connection_error_on_a_post_is_not_retried(
    rsps: responses.RequestsMock, transport: Transport
) -> None:
    rsps.post(f"{API}leads", body=requests.ReadTimeout("read timed out"))

    with pytest.raises(UnreachableError):
        transport.send("POST", "leads", json={"lastname": "Doe"})

    assert transport.requests_sent == 1


def test_a_429_storm_longer_than_max_attempts_raises_throttled(
    rsps: responses.RequestsMock, transport: Transport, clock: FakeClock
) -> None:
    for _ in range(4):
        rsps.get(
            f"{API}leads",
            status=429,
            json=error_body("0x80072322"),
            headers={**JSON, "Retry-After": "2"},
        )

    with pytest.raises(ThrottledError) as caught:
        transport.send("GET", "leads")

    assert transport.requests_sent == 4
    assert clock.waits() == [2.0, 2.0, 2.0]
    assert caught.value.code == "0x80072322"
    assert caught.value.retry_after == 2.0


def test_server_waits_are_capped_at_the_window_and_stop_at_the_budget(
    rsps: responses.RequestsMock, transport: Transport, clock: FakeClock
) -> None:
    for _ in range(4):
        rsps.get(
            f"{API}leads",
            status=429,
            json=error_body("0x80072321"),
            headers={"Retry-After": "3600"},
        )

    with pytest.raises(ThrottledError):
        transport.send("GET", "leads")

    assert transport.requests_sent == 4
    assert clock.waits() == [300.0, 300.0, 300.0]  # a fourth would pass the 15-minute budget


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "soon"])
def test_a_retry_after_that_is_not_a_finite_number_is_ignored(value: str) -> None:
    assert parse_retry_after(value) is None


def test_a_429_on_one_thread_delays_a_send_on_another_thread(
    rsps: responses.RequestsMock, clock: FakeClock, auth: FakeAuth
) -> None:
    throttled_thread_waits = threading.Event()
    other_thread_waited = threading.Event()

    def sleep(seconds: float) -> None:
        """The throttled thread holds its own wait until the other thread has waited."""
        if threading.current_thread().name == "throttled":
            throttled_thread_waits.set()
            assert other_thread_waited.wait(timeout=5)
        clock.sleep(seconds)

    transport = Transport(connection(), auth, sleep=sleep, gate=ThrottleGate(clock.time))
    rsps.get(
        f"{API}leads", status=429, json=error_body("0x80072322"), headers={"Retry-After": "30"}
    )
    rsps.get(f"{API}leads", json={"value": []}, headers=JSON)
    rsps.get(f"{API}contacts", json={"value": []}, headers=JSON)
    worker = threading.Thread(target=transport.send, args=("GET", "leads"), name="throttled")

    worker.start()
    assert throttled_thread_waits.wait(timeout=5)
    transport.send("GET", "contacts")
    other_thread_waited.set()
    worker.join(timeout=5)

    assert ("MainThread", 30.0) in clock.sleeps
    assert ("throttled", 30.0) in clock.sleeps
    assert transport.requests_sent == 3


def test_a_401_renews_the_token_once_and_repeats_the_request(
    rsps: responses.RequestsMock, transport: Transport, auth: FakeAuth
) -> None:
    rsps.get(f"{API}WhoAmI", status=401, body="")
    rsps.get(f"{API}WhoAmI", json={"UserId": "u"}, headers=JSON)

    response = transport.send("GET", "WhoAmI")

    assert response.json() == {"UserId": "u"}
    assert auth.renewals == 1
    assert [call.request.headers["Authorization"] for call in rsps.calls] == [
        "Bearer token-1",
        "Bearer token-2",
    ]


def test_a_second_401_raises_unauthorized(
    rsps: responses.RequestsMock, transport: Transport, auth: FakeAuth
) -> None:
    rsps.get(f"{API}WhoAmI", status=401, body="")
    rsps.get(f"{API}WhoAmI", status=401, body="")

    with pytest.raises(UnauthorizedError) as caught:
        transport.send("GET", "WhoAmI")

    assert auth.renewals == 1
    assert transport.requests_sent == 2
    assert caught.value.exit_code == 3


def test_a_403_is_neither_renewed_nor_retried(
    rsps: responses.RequestsMock, transport: Transport, auth: FakeAuth
) -> None:
    rsps.get(
        f"{API}WhoAmI",
        status=403,
        json=error_body("0x80072560", "The user is not a member of the organization."),
        headers=JSON,
    )

    with pytest.raises(ForbiddenError):
        transport.send("GET", "WhoAmI")

    assert auth.renewals == 0
    assert transport.requests_sent == 1


@pytest.mark.parametrize(
    ("method", "status", "code", "expected"),
    [
        ("GET", 400, "0x80060888", BadRequestError),
        ("GET", 404, "0x80040217", NotFoundError),
        ("PATCH", 412, "0x80060882", PreconditionFailedError),
        ("PATCH", 500, "0x80040333", DuplicateDetectedError),
        ("GET", 400, "0x80044352", ExpiredDeltaTokenError),
    ],
)
def test_error_bodies_map_onto_the_error_tree_without_retry(
    rsps: responses.RequestsMock,
    transport: Transport,
    method: str,
    status: int,
    code: str,
    expected: type[DataverseError],
) -> None:
    rsps.add(
        method,
        f"{API}leads(1)",
        status=status,
        json=error_body(code, "what the server said"),
        headers={**JSON, "x-ms-service-request-id": "req-1"},
    )

    with pytest.raises(expected) as caught:
        transport.send(method, "leads(1)", json={"subject": "x"} if method == "PATCH" else None)

    error = caught.value
    assert (error.status, error.code, error.message) == (status, code, "what the server said")
    assert (error.method, error.path, error.request_id) == (method, "leads(1)", "req-1")
    assert transport.requests_sent == 1


def test_a_503_with_an_html_body_is_a_server_error(
    rsps: responses.RequestsMock, transport: Transport
) -> None:
    rsps.post(
        f"{API}leads",
        status=503,
        body="<html><body>Service Unavailable</body></html>",
        content_type="text/html",
    )

    with pytest.raises(ServerError) as caught:
        transport.send("POST", "leads", json={"lastname": "Doe"})

    assert caught.value.code == ""
    assert caught.value.message == "Service Unavailable"


def test_one_log_line_per_request_without_query_or_token(
    rsps: responses.RequestsMock, transport: Transport, caplog: pytest.LogCaptureFixture
) -> None:
    rsps.get(f"{API}leads", status=503, body="", headers={"REQ_ID": "req-503"})
    rsps.get(f"{API}leads", json={"value": []}, headers={**JSON, "REQ_ID": "req-200"})
    caplog.set_level(logging.INFO, logger="dvconnect.http")

    transport.send("GET", "leads?$filter=emailaddress1 eq 'ann@example.com'&$skiptoken=abc")

    request_lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    retry_lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(request_lines) == transport.requests_sent == 2
    assert request_lines[0].startswith("GET leads 503 ")
    assert request_lines[0].endswith("request_id=req-503")
    assert request_lines[1].startswith("GET leads 200 ")
    assert request_lines[1].endswith("request_id=req-200")
    assert len(retry_lines) == 1
    assert "GET leads 503 (attempt 1 of 4), retrying in" in retry_lines[0]
    for text in [*request_lines, *retry_lines]:
        assert "ann@example.com" not in text
        assert "skiptoken" not in text
        assert "token-1" not in text


def test_a_connection_failure_is_logged_with_its_name(
    rsps: responses.RequestsMock, transport: Transport, caplog: pytest.LogCaptureFixture
) -> None:
    rsps.post(f"{API}leads", body=requests.ConnectionError("connection refused"))
    caplog.set_level(logging.INFO, logger="dvconnect.http")

    with pytest.raises(UnreachableError):
        transport.send("POST", "leads", json={"lastname": "Doe"})

    [line] = [record.getMessage() for record in caplog.records]
    assert line.startswith("POST leads ConnectionError ")


def test_an_expired_change_token_is_known_by_its_message_too_and_5xx_outages_exit_3() -> None:
    from connector.errors import UnavailableError, error_class

    message = "Version stamp associated with the client has expired. Please perform a full sync."
    assert error_class(400, "0x0", message) is ExpiredDeltaTokenError
    assert error_class(503, "") is UnavailableError
    assert UnavailableError.exit_code == 3
    assert error_class(500, "") is ServerError
    assert ServerError.exit_code == 1
