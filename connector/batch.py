"""`$batch` (dataverse-webapi.md §9): multipart encode and decode, outcomes per part, chunking.

`encode` writes the parts of one batch as `multipart/mixed` (CRLF line endings, as Dataverse
requires): standalone operations, and change sets whose operations commit or roll back together.
`decode` reads the multipart response, whatever boundary the server chose, nested change-set
responses included. `outcomes` lines the responses up with the parts that were sent and turns
failures into the same `DataverseError` classes a top-level response would give. Pure functions:
sending is `Dataverse.batch`'s job, through the transport.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from itertools import islice, pairwise
from typing import Any, TypeVar
from uuid import uuid4

import orjson

from connector.errors import DataverseError, ProtocolError, error_from

MAX_OPERATIONS = 1000  # per batch, change-set operations included (§9.1)
CRLF = "\r\n"
NOT_RUN_STATUS = 424  # Failed Dependency: what OData's JSON batch answers for a skipped part
_BOUNDARY = re.compile(r'boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_LINE_END = re.compile(r"\r?\n")

T = TypeVar("T")


@dataclass(frozen=True)
class Operation:
    """One request inside a $batch.

    `url` is relative to the Web API root (`contacts(<guid>)`), or a Content-ID reference
    (`$1`, `$1/lastname`) to a record created earlier in the same change set.
    """

    method: str
    url: str
    body: dict[str, Any] | None = None
    headers: tuple[tuple[str, str], ...] = ()
    content_id: str | None = None


@dataclass(frozen=True)
class ChangeSet:
    """Writes that commit together or not at all; Dataverse allows no GET in one."""

    operations: tuple[Operation, ...]

    def __post_init__(self) -> None:
        if any(operation.method.upper() == "GET" for operation in self.operations):
            raise ValueError("a change set cannot hold a GET (dataverse-webapi.md §9.1)")


Part = Operation | ChangeSet


@dataclass(frozen=True)
class PartResponse:
    """One response inside a $batch response; header names are lower-cased."""

    status: int
    headers: dict[str, str]
    body: bytes
    content_id: str | None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            raise ProtocolError(
                f"$batch part with status {self.status} has no JSON body "
                f"(Content-Type {self.headers.get('content-type') or 'absent'})"
            ) from None


@dataclass(frozen=True)
class PartOutcome:
    """What happened to one top-level part of the request.

    `responses` holds one response per operation when the part succeeded (for a change set, one
    per operation, in order), and nothing when it failed. `error` is the failure: the failing
    response (for a change set, the whole set was rolled back), or a `DataverseError` with status
    424 when the part was not run because the batch stopped before it.
    """

    responses: tuple[PartResponse, ...]
    error: DataverseError | None

    @property
    def ok(self) -> bool:
        return self.error is None


def operation_count(parts: Sequence[Part]) -> int:
    """The inner requests of a batch: what the 1000 limit and service protection count."""
    return sum(len(part.operations) if isinstance(part, ChangeSet) else 1 for part in parts)


# -- encoding -----------------------------------------------------------------------------------


def encode(parts: Sequence[Part], api_path: str) -> tuple[str, bytes]:
    """(Content-Type header value, body) of a `$batch` request.

    `api_path` is the Web API root's path (`/api/data/v9.2/`): request lines carry it before each
    operation's url, except `$n` references, which Dataverse resolves itself.
    """
    count = operation_count(parts)
    if count > MAX_OPERATIONS:
        raise ValueError(f"a $batch holds at most {MAX_OPERATIONS} operations, not {count}")
    boundary = f"batch_{uuid4()}"
    body = _join(boundary, [_part(part, api_path) for part in parts]) + CRLF.encode()
    return f'multipart/mixed; boundary="{boundary}"', body


def _part(part: Part, api_path: str) -> bytes:
    if isinstance(part, ChangeSet):
        return _change_set(part, api_path)
    return _operation(part, api_path)


def _change_set(change_set: ChangeSet, api_path: str) -> bytes:
    boundary = f"changeset_{uuid4()}"
    head = f'Content-Type: multipart/mixed; boundary="{boundary}"{CRLF}{CRLF}'.encode()
    inner = [_operation(operation, api_path) for operation in change_set.operations]
    return head + _join(boundary, inner) + CRLF.encode()


def _operation(operation: Operation, api_path: str) -> bytes:
    mime = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if operation.content_id is not None:
        mime.append(f"Content-ID: {operation.content_id}")
    target = operation.url if operation.url.startswith("$") else api_path + operation.url
    request = [f"{operation.method.upper()} {target} HTTP/1.1"]
    if operation.body is not None:
        request.append("Content-Type: application/json; type=entry")
    request += [f"{name}: {value}" for name, value in operation.headers]
    head = CRLF.join(mime) + CRLF * 2 + CRLF.join(request) + CRLF * 2
    body = orjson.dumps(operation.body) if operation.body is not None else b""
    return head.encode() + body


def _join(boundary: str, parts: list[bytes]) -> bytes:
    """`--boundary` before each part, `--boundary--` after the last (no line end after it)."""
    delimiter = f"--{boundary}".encode()
    return b"".join(delimiter + b"\r\n" + part + b"\r\n" for part in parts) + delimiter + b"--"


# -- decoding -----------------------------------------------------------------------------------


def decode(content_type: str, body: bytes) -> list[PartResponse | list[PartResponse]]:
    """The responses of a `$batch` response, in order; a nested list is a change set's.

    Reads the boundary from `content_type` (the server picks its own) and accepts CRLF or LF
    line endings. Anything it cannot read raises `ProtocolError` saying what.
    """
    decoded: list[PartResponse | list[PartResponse]] = []
    for part in _split(body, _boundary(content_type, "$batch response")):
        mime, rest = _head_and_rest(part)
        part_type = mime.get("content-type", "")
        if part_type.lower().startswith("multipart/mixed"):
            inner = _split(rest, _boundary(part_type, "change-set response"))
            decoded.append([_response(*_head_and_rest(item)) for item in inner])
        else:
            decoded.append(_response(mime, rest))
    return decoded


def _boundary(content_type: str, what: str) -> str:
    match = _BOUNDARY.search(content_type)
    if not content_type.lower().startswith("multipart/mixed") or match is None:
        raise ProtocolError(
            f"{what} is not multipart/mixed with a boundary (Content-Type {content_type!r})"
        )
    return match.group(1) or match.group(2)


def _split(body: bytes, boundary: str) -> list[bytes]:
    """The parts between `--boundary` lines, up to `--boundary--`; the line end before a
    delimiter belongs to the delimiter."""
    delimiter = re.compile(
        rb"(?m)(?:\r?\n|^)--" + re.escape(boundary.encode()) + rb"(--)?[ \t]*(?:\r?\n|\Z)"
    )
    matches = list(delimiter.finditer(body))
    closing = next((i for i, match in enumerate(matches) if match.group(1)), None)
    if closing is None:
        raise ProtocolError(f"$batch response has no closing delimiter --{boundary}--")
    return [body[start.end() : end.start()] for start, end in pairwise(matches[: closing + 1])]


def _head_and_rest(part: bytes) -> tuple[dict[str, str], bytes]:
    """A part's headers (names lower-cased) and what follows the blank line after them."""
    if part.startswith((b"\r\n", b"\n")):  # no headers at all
        return {}, part.removeprefix(b"\r").removeprefix(b"\n")
    found = _HEAD_END.search(part)
    head, rest = (part[: found.start()], part[found.end() :]) if found else (part, b"")
    headers: dict[str, str] = {}
    for line in _LINE_END.split(head.decode("latin-1")):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise ProtocolError(f"$batch response has a malformed header line {line!r}")
        headers[name.strip().lower()] = value.strip()
    return headers, rest


def _response(mime: dict[str, str], rest: bytes) -> PartResponse:
    if not mime.get("content-type", "").lower().startswith("application/http"):
        raise ProtocolError(
            "$batch response part is not application/http "
            f"(Content-Type {mime.get('content-type') or 'absent'})"
        )
    first, _, message = rest.lstrip(b"\r\n").partition(b"\n")
    status_line = first.decode("latin-1").strip()
    words = status_line.split(maxsplit=2)
    if len(words) < 2 or not words[0].startswith("HTTP/") or not words[1].isdigit():
        raise ProtocolError(f"$batch response part has a malformed status line {status_line!r}")
    headers, body = _head_and_rest(message)
    return PartResponse(
        status=int(words[1]),
        headers=headers,
        body=body,
        content_id=mime.get("content-id") or headers.get("content-id"),
    )


# -- outcomes -----------------------------------------------------------------------------------


def outcomes(
    parts: Sequence[Part], decoded: list[PartResponse | list[PartResponse]], request_id: str
) -> list[PartOutcome]:
    """One outcome per part sent, in order, from the decoded responses of its batch.

    With `Prefer: odata.continue-on-error` every part has a response. Without it the batch stops
    at the first failure, and the parts after it are reported as not run. (Dataverse may return
    only the failing response, not those before it (§9.4, U26): the failure is then reported
    against the first part, which is one reason to prefer continue-on-error.)

    A change set that failed comes back as one error response, or as a nested list holding it;
    its error names the failing operation when the response's Content-ID or the set's size tells
    which one it was. `request_id` (the outer response's) stands in for parts that carry none.
    """
    if len(decoded) > len(parts):
        raise ProtocolError(f"$batch answered {len(decoded)} parts to a request of {len(parts)}")
    answered, skipped = parts[: len(decoded)], parts[len(decoded) :]
    results = [
        _outcome(part, answer, request_id) for part, answer in zip(answered, decoded, strict=True)
    ]
    return results + [PartOutcome((), _not_run(part, request_id)) for part in skipped]


def _outcome(part: Part, answer: PartResponse | list[PartResponse], request_id: str) -> PartOutcome:
    if isinstance(part, Operation):
        if isinstance(answer, list):
            raise ProtocolError("$batch answered a single request with a change-set response")
        if answer.ok:
            return PartOutcome((answer,), None)
        return PartOutcome((), _error(answer, part, request_id))
    answers = answer if isinstance(answer, list) else [answer]
    failed = next((response for response in answers if not response.ok), None)
    if failed is not None:
        return PartOutcome((), _error(failed, _failed_operation(part, failed), request_id))
    if len(answers) != len(part.operations):
        raise ProtocolError(
            f"$batch answered a change set of {len(part.operations)} operations "
            f"with {len(answers)} responses"
        )
    return PartOutcome(tuple(answers), None)


def _failed_operation(change_set: ChangeSet, failed: PartResponse) -> Operation | None:
    """The operation a change set's error response answers, when that can be told."""
    if len(change_set.operations) == 1:
        return change_set.operations[0]
    if failed.content_id is None:
        return None
    return next((op for op in change_set.operations if op.content_id == failed.content_id), None)


def _error(response: PartResponse, operation: Operation | None, request_id: str) -> DataverseError:
    # The part's own REQ_ID or x-ms-service-request-id wins over the outer request id.
    headers = {"req_id": request_id, **response.headers}
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = ""
    if operation is None:  # a change set's failure that names no operation
        return error_from(response.status, headers, response.body, reason, "POST", "$batch")
    method, path = operation.method.upper(), _path(operation.url)
    return error_from(response.status, headers, response.body, reason, method, path)


def _not_run(part: Part, request_id: str) -> DataverseError:
    operation = part.operations[0] if isinstance(part, ChangeSet) else part
    return DataverseError(
        status=NOT_RUN_STATUS,
        code="",
        message="not run: the batch stopped at an earlier failure",
        request_id=request_id,
        method=operation.method.upper(),
        path=_path(operation.url),
    )


def _path(url: str) -> str:
    """The url without its query: filter values stay out of messages and logs."""
    return url.partition("?")[0]


# -- chunking -----------------------------------------------------------------------------------


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of at most `size` items, in order, read from `items` one list at a time."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, not {size}")
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
