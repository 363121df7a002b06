"""The one error tree of dvconnect, and the mapping from Dataverse responses onto it.

Every failure the service reports is a `DvconnectError`; its `exit_code` is the CLI's exit code
(1 a record failed, 2 bad configuration, 3 Dataverse or the store unreachable or authentication
refused, 4 the job did not run: its lease is held or a precondition is unmet).
Dataverse errors are chosen by HTTP status plus the Dataverse error code (`0x8004…`), and carry
status, code, message and request id, never a token or a secret.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import requests

# Dataverse error codes the connector branches on (dataverse-webapi.md §11.5).
EXPIRED_VERSION_STAMP = "0x80044352"
EXPIRED_VERSION_STAMP_TEXT = "Version stamp associated with the client has expired"
DUPLICATE_RECORDS_FOUND = "0x80040333"
MAX_SERVER_WAIT_SECONDS = 300.0  # the service-protection window: no honest wait is longer


class DvconnectError(Exception):
    """Base of every error the service reports; `exit_code` is what the CLI exits with."""

    exit_code = 1


class ConfigError(DvconnectError):
    """Bad settings, mappings or usage: nothing was written."""

    exit_code = 2


class MappingError(ConfigError):
    """A mapping file is invalid; the message names the file, the key and what was expected."""

    def __init__(self, path: str, key: str, expected: str, line: int | None = None) -> None:
        self.path = path
        self.key = key
        self.expected = expected
        self.line = line
        where = f"{key} (line {line})" if line is not None else key
        super().__init__(f"{path}: {where}: {expected}")


class AuthError(DvconnectError):
    """The identity provider refused to issue a token (or Dataverse refused every token)."""

    exit_code = 3

    def __init__(self, error: str, description: str = "", correlation_id: str = "") -> None:
        self.error = error
        self.description = description
        self.correlation_id = correlation_id
        text = f"authentication failed: {error}"
        if description:
            text += f": {description}"
        if correlation_id:
            text += f" (correlation id {correlation_id})"
        super().__init__(text)


class UnreachableError(DvconnectError):
    """Dataverse could not be reached (DNS, TCP, TLS, timeouts) after the bounded retries."""

    exit_code = 3


class SyncError(DvconnectError):
    """The sync met data it cannot trust (a repeated next link, a page of unexpected shape)."""


class NotRunError(DvconnectError):
    """The job did not start: another run holds its lease, or a precondition is unmet."""

    exit_code = 4


class StoreError(DvconnectError):
    """The store cannot be used: unreachable, locked, read-only or damaged."""

    exit_code = 3


class ProtocolError(DvconnectError):
    """Dataverse answered something the connector cannot read (a malformed `$batch` response)."""


class DataverseError(DvconnectError):
    """An error response from the Dataverse Web API."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        request_id: str = "",
        method: str = "",
        path: str = "",
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.method = method
        self.path = path
        self.retry_after = retry_after
        parts = [f"Dataverse {status}"]
        if code:
            parts.append(code)
        text = " ".join(parts) + f": {message}" if message else " ".join(parts)
        where = f"{method} {path}".strip()
        if where:
            text += f" [{where}]"
        if request_id:
            text += f" (request id {request_id})"
        super().__init__(text)


class BadRequestError(DataverseError):
    """400: the request itself is wrong; never retried."""


class UnauthorizedError(DataverseError):
    """401: the token was missing, expired or rejected."""

    exit_code = 3


class ForbiddenError(DataverseError):
    """403: the application user lacks a privilege or is not a member of the org."""

    exit_code = 3


class NotFoundError(DataverseError):
    """404: the record, entity set or function does not exist."""


class PreconditionFailedError(DataverseError):
    """412: an If-Match / If-None-Match condition did not hold."""


class ThrottledError(DataverseError):
    """429: service protection limits; retried after `Retry-After`."""


class ServerError(DataverseError):
    """5xx other than duplicate detection: transient or unexpected server failures."""


class UnavailableError(ServerError):
    """502/503/504 after the retries: the org is down, being updated, or timing out."""

    exit_code = 3


class DuplicateDetectedError(DataverseError):
    """Duplicate detection found an existing record (HTTP 500, 0x80040333); never retried."""


class ExpiredDeltaTokenError(DataverseError):
    """The change-tracking token is outside the retention window: a full sync is needed."""


_BY_STATUS: dict[int, type[DataverseError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    412: PreconditionFailedError,
    429: ThrottledError,
}


def error_class(status: int, code: str, message: str = "") -> type[DataverseError]:
    """Choose the error class for a status and a Dataverse error code (code first, then status)."""
    if code == EXPIRED_VERSION_STAMP or EXPIRED_VERSION_STAMP_TEXT in message:
        return ExpiredDeltaTokenError
    if code == DUPLICATE_RECORDS_FOUND:
        return DuplicateDetectedError
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status in (502, 503, 504):
        return UnavailableError
    if status >= 500:
        return ServerError
    return DataverseError


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (integer or decimal seconds), at most five minutes;
    None when absent or not a finite number."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_SERVER_WAIT_SECONDS)


def _header(headers: Mapping[str, str], name: str) -> str:
    """A header's value, whatever the case of its name; "" when absent."""
    wanted = name.lower()
    return next((value for key, value in headers.items() if key.lower() == wanted), "")


def error_body(content_type: str, content: bytes, reason: str) -> tuple[str, str]:
    """(code, message) from a Dataverse error body; bodies that are not JSON give the reason."""
    if "json" in content_type.split(";")[0]:
        try:
            payload: Any = json.loads(content)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
            payload = None
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            err = payload["error"]
            return str(err.get("code") or ""), str(err.get("message") or "")
    return "", reason


def _headers_request_id(headers: Mapping[str, str]) -> str:
    """The request id Dataverse reports in response headers, for support tickets and logs."""
    return _header(headers, "x-ms-service-request-id") or _header(headers, "REQ_ID")


def request_id(response: requests.Response) -> str:
    """The request id Dataverse reports, for support tickets and logs."""
    return _headers_request_id(response.headers)


def error_from(
    status: int, headers: Mapping[str, str], content: bytes, reason: str, method: str, path: str
) -> DataverseError:
    """The error for a failed Dataverse response given as its parts (a `$batch` part, say)."""
    code, message = error_body(_header(headers, "Content-Type"), content, reason)
    cls = error_class(status, code, message)
    return cls(
        status=status,
        code=code,
        message=message,
        request_id=_headers_request_id(headers),
        method=method,
        path=path,
        retry_after=parse_retry_after(_header(headers, "Retry-After")),
    )


def from_response(response: requests.Response, path: str = "") -> DataverseError:
    """The error for a failed Dataverse response: status, code, message, request id."""
    return error_from(
        response.status_code,
        response.headers,
        response.content,
        response.reason or "",
        (response.request.method or "") if response.request is not None else "",
        path,
    )
