"""HTTP transport: the one place that sends requests to the Dataverse Web API.

`Transport` owns the one `requests.Session` (OData headers, timeouts, the bearer-token auth hook)
and the retry policy, declared once with tenacity:

* `should_retry` decides, as a pure function: 429 always; 500/502/503/504 and connection failures
  only for requests that are safe to repeat; duplicate detection (0x80040333) and 4xx never.
* Waits follow `Retry-After` when the server sent one, else exponential backoff with jitter,
  bounded by `Connection.max_attempts` and a total wait budget.
* A server-sent wait holds back every send of the process (`ThrottleGate`), not only the thread
  that was told, since service protection limits count per user.
* A 401 renews the token once and repeats the request once; a second 401 is `UnauthorizedError`.
* Each request sent and each wait is counted for `/metrics` (`connector.telemetry`).

`send` returns successful responses only; every failure raises from `connector.errors`. Each
request sent gives one log line (method, path without query, status, ms, request id): never
headers, bodies, tokens or query strings (filter values, skip tokens).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests
import tenacity

from connector.errors import (
    DUPLICATE_RECORDS_FOUND,
    DataverseError,
    UnreachableError,
    from_response,
    request_id,
)
from connector.settings import Connection
from connector.telemetry import HTTP_REQUESTS, waited

log = logging.getLogger("dvconnect.http")

CONNECT_TIMEOUT_SECONDS = 10.0
MAX_BACKOFF_SECONDS = 60.0
WAIT_BUDGET_SECONDS = 15 * 60.0
ODATA_HEADERS = {"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0"}
SAFE_BY_DEFAULT = frozenset({"GET", "HEAD", "PUT", "PATCH", "DELETE"})
READ_ONLY_METHODS = frozenset({"GET", "HEAD"})
RETRYABLE_STATUSES = frozenset({500, 502, 503, 504})
SERVER_WAIT_STATUSES = frozenset({429, 503})
RETRYABLE_EXCEPTIONS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


class RenewableAuth(Protocol):
    """A requests auth hook whose token can be renewed after a 401 (`auth.DataverseAuth`)."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest: ...

    def renew(self) -> None: ...


def should_retry(
    status: int | None, code: str, method: str, safe: bool, exc: BaseException | None
) -> bool:
    """Whether a failed attempt may be sent again.

    `status` and `code` describe an error response; `exc` a transport failure (status None).
    `safe` says the request may be repeated (idempotent, or a POST with deterministic ids);
    GET and HEAD only read, so they are always safe. 401 is handled apart (renew, then once).
    """
    if code == DUPLICATE_RECORDS_FOUND:
        return False
    if status == 429:
        return True
    repeatable = safe or method.upper() in READ_ONLY_METHODS
    if status is not None:
        return repeatable and status in RETRYABLE_STATUSES
    # A TLS failure is a trust problem (REQUESTS_CA_BUNDLE), not a transient one.
    return (
        repeatable
        and isinstance(exc, RETRYABLE_EXCEPTIONS)
        and not isinstance(exc, requests.exceptions.SSLError)
    )


class ThrottleGate:
    """A pause shared by every sender: after a server-sent wait, no send starts before it ends."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._resume_at = float("-inf")

    def hold(self, seconds: float) -> None:
        """Pause every send for `seconds` from now (an earlier, longer pause stays)."""
        with self._lock:
            self._resume_at = max(self._resume_at, self._clock() + seconds)

    def remaining(self) -> float:
        """Seconds left before sends may start again; 0 when there is no pause."""
        with self._lock:
            return max(0.0, self._resume_at - self._clock())


PROCESS_GATE = ThrottleGate()


@dataclass(frozen=True)
class _Request:
    method: str
    url: str
    path: str
    safe: bool
    headers: Mapping[str, str] | None
    params: Mapping[str, str] | None
    json: Any
    data: bytes | str | None


class Transport:
    """The one session to one Dataverse environment, with the retry policy around every send."""

    def __init__(
        self,
        connection: Connection,
        auth: RenewableAuth,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        gate: ThrottleGate = PROCESS_GATE,
    ) -> None:
        self._api_url = connection.api_url
        self._api_path = urlsplit(connection.api_url).path
        self._host = urlsplit(connection.api_url).hostname or ""
        self._timeout = (CONNECT_TIMEOUT_SECONDS, connection.timeout)
        self._max_attempts = connection.max_attempts
        self._auth = auth
        self._session = session if session is not None else requests.Session()
        self._session.headers.update(ODATA_HEADERS)
        if connection.ca_bundle is not None:  # REQUESTS_CA_BUNDLE given in .env
            self._session.verify = str(connection.ca_bundle)
        self._sleep = sleep
        self._gate = gate
        self._sent = 0
        self._throttled = 0
        self._sent_lock = threading.Lock()
        self._retrying = tenacity.Retrying(
            retry=self._is_retryable,
            wait=self._wait,
            stop=self._give_up,
            sleep=sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        self._backoff = tenacity.wait_exponential_jitter(
            multiplier=connection.retry_backoff, max=MAX_BACKOFF_SECONDS,
            jitter=connection.retry_backoff,
        )  # fmt: skip

    @property
    def api_url(self) -> str:
        """The Web API root this transport sends to (`https://org…/api/data/v9.2/`)."""
        return self._api_url

    @property
    def requests_sent(self) -> int:
        """Every HTTP request actually sent by this transport, retries included."""
        with self._sent_lock:
            return self._sent

    @property
    def throttled(self) -> int:
        """How many of those requests Dataverse refused with 429 (service protection)."""
        with self._sent_lock:
            return self._throttled

    def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        data: bytes | str | None = None,
        safe: bool | None = None,
    ) -> requests.Response:
        """Send with retries; return the successful response, raise from the error tree otherwise.

        `url` is relative to the Web API root (`leads`, `$batch`) or absolute (a next or delta
        link, sent exactly as received). `safe` defaults to True for every method but POST.
        """
        method = method.upper()
        absolute = url.startswith(("https://", "http://"))
        full_url = url if absolute else self._api_url + url.lstrip("/")
        request = _Request(
            method=method,
            url=full_url,
            path=urlsplit(full_url).path.removeprefix(self._api_path),
            safe=method in SAFE_BY_DEFAULT if safe is None else safe,
            headers=headers,
            params=params,
            json=json,
            data=data,
        )
        try:
            return self._retrying(self._attempt, request)
        except requests.RequestException as exc:
            raise UnreachableError(
                f"Dataverse at {self._host} unreachable ({method} {request.path}): {_reason(exc)}"
            ) from None

    def _attempt(self, request: _Request) -> requests.Response:
        pause = self._gate.remaining()
        if pause > 0:
            log.info(
                "%s %s waits %.1f s: Dataverse asked to pause", request.method, request.path, pause
            )
            waited("held", pause)
            self._sleep(pause)
        response = self._exchange(request)
        if response.status_code == 401:
            self._auth.renew()
            response = self._exchange(request)
        if response.ok:
            return response
        error = from_response(response, request.path)
        if response.status_code in SERVER_WAIT_STATUSES and error.retry_after is not None:
            self._gate.hold(error.retry_after)
        raise error

    def _exchange(self, request: _Request) -> requests.Response:
        """One HTTP request on the wire, counted and logged."""
        started = time.perf_counter()
        try:
            response = self._session.request(
                request.method,
                request.url,
                headers=request.headers,
                params=request.params,
                json=request.json,
                data=request.data,
                auth=self._auth,
                timeout=self._timeout,
            )
        except requests.RequestException as exc:
            self._record(request, type(exc).__name__, started, "")
            raise
        self._record(request, response.status_code, started, request_id(response))
        return response

    def _record(self, request: _Request, outcome: int | str, started: float, req_id: str) -> None:
        with self._sent_lock:
            self._sent += 1
            self._throttled += outcome == 429
        HTTP_REQUESTS.labels(request.method, str(outcome)).inc()
        elapsed_ms = round((time.perf_counter() - started) * 1000)
        log.info(
            "%s %s %s %d ms request_id=%s",
            request.method,
            request.path,
            outcome,
            elapsed_ms,
            req_id or "-",
            extra={
                "method": request.method,
                "path": request.path,
                "status": outcome,
                "elapsed_ms": elapsed_ms,
                "request_id": req_id,
            },
        )

    def _is_retryable(self, state: tenacity.RetryCallState) -> bool:
        request: _Request = state.args[0]
        exc = _failure(state)
        if isinstance(exc, DataverseError):
            return should_retry(exc.status, exc.code, request.method, request.safe, None)
        return should_retry(None, "", request.method, request.safe, exc)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = _failure(state)
        if isinstance(exc, DataverseError) and exc.retry_after is not None:
            return exc.retry_after
        return self._backoff(state)

    def _give_up(self, state: tenacity.RetryCallState) -> bool:
        """Stop after the last attempt, or when the next wait would exceed the wait budget."""
        return (
            state.attempt_number >= self._max_attempts
            or state.idle_for + state.upcoming_sleep > WAIT_BUDGET_SECONDS
        )

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        request: _Request = state.args[0]
        exc = _failure(state)
        told = isinstance(exc, DataverseError) and exc.retry_after is not None
        waited("throttled" if told else "backoff", state.upcoming_sleep)
        log.warning(
            "%s %s %s (attempt %d of %d), retrying in %.1f s",
            request.method,
            request.path,
            _describe(exc),
            state.attempt_number,
            self._max_attempts,
            state.upcoming_sleep,
        )


def _failure(state: tenacity.RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None else None


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, DataverseError):
        return f"{exc.status} {exc.code}".strip()
    return type(exc).__name__


def _reason(exc: requests.RequestException) -> str:
    """What failed, without the URL (its query may hold filter values or skip tokens)."""
    inner = exc.args[0] if exc.args else None
    reason = getattr(inner, "reason", inner)  # urllib3's MaxRetryError keeps the cause in .reason
    return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
