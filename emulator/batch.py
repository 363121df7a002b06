"""`$batch` (§9): multipart/mixed requests, atomic change sets, multipart responses.

The whole body is parsed before anything runs, so a malformed batch (no boundary, a broken part, a
GET in a change set, more than 1000 operations) changes nothing. Lines may end with CRLF or LF
(§9.1); only a body whose last line has no line ending (CRLF, or two LFs) is unreadable: outer 400
holding one inner 400 `Stream was not readable` part. Then the parts run in order through the same
routing as top-level requests. A change set runs in one store transaction (inner writes become
savepoints): the first failure rolls the whole set back. Without `Prefer: odata.continue-on-error`
the batch stops at the first failure and answers 400 with only that response (earlier parts outside
change sets stay committed, U26); with it, every part is answered and the outer status is 200 (a
failed change set is one error part, U27). `Content-ID` values become `$n` references in request
URLs and in `@odata.bind` / `@odata.id` values. Every operation counts toward service protection."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from emulator import errors
from emulator.context import Context
from emulator.wire import JSON_TYPE, Request, Response, error_response, new_guid

MAX_OPERATIONS = 1000
API_PREFIX = "/api/data/v9.2"
CHANGESET_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})
INHERITED_HEADERS = ("mscrm.suppressduplicatedetection", "callerobjectid", "mscrmcallerid")
_BOUNDARY = re.compile(r'boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)
_API_URL = re.compile(r"^(?:https?://[^/]+)?/api/data/v9\.\d+/(.*)$")
_REFERENCE = re.compile(r"^\$([A-Za-z0-9_.-]+)(/.*)?$")
_REQUEST_LINE = re.compile(rb"(?m)^[A-Z]+ (\S+) HTTP/1\.\d[ \t]*$")

Dispatch = Callable[[Request, str], Response]
Charge = Callable[[int], Response | None]


@dataclass(frozen=True)
class Operation:
    """One `application/http` part: the inner request as written."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes
    content_id: str | None


@dataclass(frozen=True)
class ChangeSet:
    operations: tuple[Operation, ...]


@dataclass(frozen=True)
class Answer:
    """One response part: a single response, or the responses of a committed change set."""

    response: Response | None = None
    content_id: str | None = None
    changeset: tuple[Answer, ...] = ()


def _boundary_of(content_type: str | None) -> str:
    match = _BOUNDARY.search(content_type or "")
    if not (content_type or "").lower().startswith("multipart/mixed") or match is None:
        raise errors.payload_error(
            "The batch request must have a 'Content-Type' of multipart/mixed with a boundary."
        )
    return match.group(1) or match.group(2)


def _delimiter_at(body: bytes, delimiter: bytes, start: int) -> int:
    """The index of the next `LF--boundary` (or `--boundary` at `start`) that is a whole
    delimiter; -1 when there is none."""
    position = start
    while True:
        found = body.find(delimiter, position)
        if found < 0:
            return -1
        after = body[found + len(delimiter) : found + len(delimiter) + 2]
        if after == b"--" or after[:1] in (b" ", b"\t", b"\n"):
            return found
        position = found + 1


def _split(body: bytes, boundary: str) -> list[bytes]:
    """The parts between `--boundary` delimiters of a body whose line endings are LF."""
    delimiter = b"--" + boundary.encode("latin-1")
    position = _delimiter_at(body, delimiter, 0)
    if position < 0:
        raise errors.payload_error(f"The batch body has no delimiter '--{boundary}'.")
    parts: list[bytes] = []
    while True:
        position += len(delimiter)
        if body.startswith(b"--", position):
            return parts
        start = body.find(b"\n", position) + 1
        following = _delimiter_at(body, b"\n" + delimiter, start) if start else -1
        if following < 0:
            raise errors.payload_error(f"The batch body does not end with '--{boundary}--'.")
        parts.append(body[start:following])
        position = following + 1


def _headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.decode("latin-1").split("\n"):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise errors.payload_error(f"The batch part header '{line}' is not valid.")
        headers[name.strip().lower()] = value.strip()
    return headers


def _head_and_body(part: bytes) -> tuple[bytes, bytes]:
    if part.startswith(b"\n"):
        return b"", part[1:]
    head, separator, rest = part.partition(b"\n\n")
    return (head, rest) if separator else (part, b"")


def _operation(part: bytes, mime: dict[str, str]) -> Operation:
    if not mime.get("content-type", "").lower().startswith("application/http"):
        raise errors.payload_error(
            "Each batch part must have 'Content-Type: application/http' or be a change set."
        )
    _, inner = _head_and_body(part)
    inner = inner.lstrip(b"\n")
    line, _, rest = inner.partition(b"\n")
    words = line.decode("latin-1").split()
    if len(words) != 3 or not words[2].startswith("HTTP/1."):
        raise errors.payload_error(
            f"The request line '{line.decode('latin-1')}' of a batch part is not valid."
        )
    head, body = _head_and_body(rest)
    headers = _headers(head)
    content_id = mime.get("content-id") or headers.get("content-id")
    return Operation(words[0].upper(), words[1], headers, body.strip(b"\n"), content_id)


def readable(body: bytes) -> bool:
    """§9.1: the body's last line must end with CRLF, or the body with two LFs."""
    return body.endswith((b"\r\n", b"\n\n"))


def unreadable_entity(body: bytes) -> str:
    """The entity set the last request line of an unreadable body names (for the error text)."""
    lines = _REQUEST_LINE.findall(body.replace(b"\r\n", b"\n"))
    if not lines:
        return ""
    match = _API_URL.match(lines[-1].decode("latin-1"))
    path = match.group(1) if match else lines[-1].decode("latin-1").lstrip("/")
    return re.split(r"[(/?]", path, maxsplit=1)[0]


def parse(body: bytes, content_type: str | None) -> tuple[Operation | ChangeSet, ...]:
    """The batch's parts, or the 400 a malformed batch gets (nothing has run yet)."""
    items: list[Operation | ChangeSet] = []
    body = body.replace(b"\r\n", b"\n")  # CRLF and LF line endings are both read (§9.1)
    for part in _split(body, _boundary_of(content_type)):
        head, rest = _head_and_body(part)
        mime = _headers(head)
        if mime.get("content-type", "").lower().startswith("multipart/mixed"):
            operations = []
            for inner in _split(rest, _boundary_of(mime["content-type"])):
                inner_head, _ = _head_and_body(inner)
                operation = _operation(inner, _headers(inner_head))
                if operation.method not in CHANGESET_METHODS:
                    raise errors.payload_error(
                        f"An invalid HTTP method '{operation.method}' was detected for a request "
                        "in a change set. Requests in change sets only support the HTTP methods "
                        "'POST', 'PUT', 'DELETE', and 'PATCH'."
                    )
                operations.append(operation)
            if len(operations) > MAX_OPERATIONS:
                raise errors.payload_error(
                    "The current change set contains too many operations. A maximum number of "
                    f"'{MAX_OPERATIONS}' operations are allowed in a change set."
                )
            items.append(ChangeSet(tuple(operations)))
        else:
            items.append(_operation(part, mime))
    if operation_count(items) > MAX_OPERATIONS:
        raise errors.payload_error(
            "The current batch message contains too many parts. Only batch messages with a "
            f"maximum number of '{MAX_OPERATIONS}' query operations, including changeset "
            "operations, are allowed."
        )
    return tuple(items)


def operation_count(items: list[Operation | ChangeSet] | tuple[Operation | ChangeSet, ...]) -> int:
    return sum(len(i.operations) if isinstance(i, ChangeSet) else 1 for i in items)


# -- running ------------------------------------------------------------------------------------


class _Failed(Exception):
    """Rolls a change set back; carries the failing operation and its response."""

    def __init__(self, operation: Operation, response: Response) -> None:
        super().__init__(response.status)
        self.operation = operation
        self.response = response


class Runner:
    """Runs the parts of one batch in order; `ids` maps Content-ID → the created record's URL."""

    def __init__(self, ctx: Context, outer: Request, dispatch: Dispatch) -> None:
        self.ctx = ctx
        self.outer = outer
        self.dispatch = dispatch
        self.ids: dict[str, str] = {}

    def _substitute(self, value: Any) -> Any:
        """`$n` in `@odata.bind` and `@odata.id` values → the URL Content-ID n created."""
        if isinstance(value, str):
            match = _REFERENCE.match(value)
            if match is None:
                return value
            if match.group(1) not in self.ids:
                raise errors.content_id_missing(f"${match.group(1)}")
            return self.ids[match.group(1)] + (match.group(2) or "")
        if isinstance(value, list):
            return [self._substitute(item) for item in value]
        return value

    def _body(self, operation: Operation) -> bytes:
        if b"$" not in operation.body:
            return operation.body
        try:
            document = json.loads(operation.body)
        except ValueError:
            return operation.body
        if not isinstance(document, dict):
            return operation.body
        changed = {
            key: self._substitute(value)
            if key.endswith("@odata.bind") or key == "@odata.id"
            else value
            for key, value in document.items()
        }
        return json.dumps(changed).encode()

    def _request(self, operation: Operation) -> tuple[Request, str]:
        url = operation.url
        reference = _REFERENCE.match(url)
        if reference is not None:
            if reference.group(1) not in self.ids:
                raise errors.content_id_missing(f"${reference.group(1)}")
            url = self.ids[reference.group(1)] + (reference.group(2) or "")
        match = _API_URL.match(url)
        if match is not None:
            url = match.group(1)
        elif url.startswith(("/", "http:", "https:")):
            raise errors.resource_not_found(url.lstrip("/").split("/")[0])
        raw_resource, _, query = url.partition("?")
        resource = unquote(raw_resource)
        if resource == "$batch":
            raise errors.payload_error("A batch request cannot contain another batch request.")
        headers = {
            name: value
            for name in INHERITED_HEADERS
            if (value := self.outer.header(name)) is not None
        }
        headers.update(operation.headers)
        headers["authorization"] = self.outer.header("authorization") or ""
        request = Request(
            method=operation.method,
            path=f"{API_PREFIX}/{resource}",
            raw_path=f"{API_PREFIX}/{raw_resource}",
            query=query,
            headers=headers,
            body=self._body(operation),
            peer=self.outer.peer,
        )
        return request, resource

    def run(self, operation: Operation) -> Response:
        try:
            request, resource = self._request(operation)
        except errors.ApiError as error:
            return error_response(error, zero_property_codes=self.ctx.config.zero_property_codes)
        response = self.dispatch(request, resource)
        if operation.content_id and response.status < 400:
            location = dict(response.headers).get("OData-EntityId") or dict(response.headers).get(
                "Location"
            )
            if location:
                self.ids[operation.content_id] = location
        return response

    def changeset(self, changeset: ChangeSet) -> tuple[Answer, ...]:
        """All operations in one transaction, or none: raises `_Failed` after the rollback."""
        answers: list[Answer] = []
        with self.ctx.store.write(self.ctx.now()):
            for operation in changeset.operations:
                response = self.run(operation)
                if response.status >= 400:
                    raise _Failed(operation, response)
                answers.append(Answer(response, operation.content_id))
        return tuple(answers)


def handle(ctx: Context, request: Request, dispatch: Dispatch, charge: Charge) -> Response:
    """`POST $batch`: parse, count every operation, run, answer multipart/mixed."""
    _boundary_of(request.header("content-type"))
    if not readable(request.body):
        refusal = errors.stream_not_readable(unreadable_entity(request.body))
        response = error_response(refusal, zero_property_codes=ctx.config.zero_property_codes)
        return _multipart(400, [Answer(response)], ())
    items = parse(request.body, request.header("content-type"))
    refused = charge(operation_count(items) - 1)  # the batch itself was counted as one
    if refused is not None:
        return refused
    keep_going = request.prefer.continue_on_error
    runner = Runner(ctx, request, dispatch)
    answers: list[Answer] = []
    failed: Answer | None = None
    for item in items:
        if isinstance(item, ChangeSet):
            ids_before = dict(runner.ids)
            try:
                answers.append(Answer(changeset=runner.changeset(item)))
                continue
            except _Failed as failure:
                runner.ids = ids_before
                answer = Answer(failure.response)
                if ctx.config.changeset_error_in_changeset:
                    answer = Answer(
                        changeset=(Answer(failure.response, failure.operation.content_id),)
                    )
        else:
            response = runner.run(item)
            answer = Answer(response, item.content_id)
            if response.status < 400:
                answers.append(answer)
                continue
        if keep_going:
            answers.append(answer)
            continue
        failed = answer
        break
    if failed is not None:
        shown = [*answers, failed] if ctx.config.batch_error_keeps_earlier_responses else [failed]
        return _multipart(400, shown, ())
    applied = (("Preference-Applied", "odata.continue-on-error"),) if keep_going else ()
    return _multipart(200, answers, applied)


# -- writing ------------------------------------------------------------------------------------


def _inner_headers(response: Response) -> list[tuple[str, str]]:
    headers = [(k, v) for k, v in response.headers if k not in ("Content-Type", "OData-Version")]
    content_type = dict(response.headers).get("Content-Type")
    if response.status >= 400:
        return [
            ("REQ_ID", new_guid()),
            *((("Content-Type", content_type),) if content_type else ()),
            ("OData-Version", "4.0"),
            *headers,
        ]
    if content_type == JSON_TYPE:
        content_type += "; odata.streaming=true"
    located = sorted(headers, key=lambda header: header[0] != "Location")
    if content_type:
        return [("Content-Type", content_type), ("OData-Version", "4.0"), *located]
    return [("OData-Version", "4.0"), *located]


def _http_part(response: Response, content_id: str | None) -> bytes:
    mime = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if content_id:
        mime.append(f"Content-ID: {content_id}")
    status = f"HTTP/1.1 {response.status} {HTTPStatus(response.status).phrase}"
    lines = [status, *(f"{k}: {v}" for k, v in _inner_headers(response))]
    head = "\r\n".join(mime) + "\r\n\r\n" + "\r\n".join(lines) + "\r\n\r\n"
    return head.encode("latin-1") + response.body


def _part(answer: Answer) -> bytes:
    if answer.response is not None:
        return _http_part(answer.response, answer.content_id)
    boundary = f"changesetresponse_{new_guid()}"
    inner = _join(boundary, [_part(a) for a in answer.changeset])
    return f"Content-Type: multipart/mixed; boundary={boundary}\r\n\r\n".encode() + inner


def _join(boundary: str, parts: list[bytes]) -> bytes:
    delimiter = f"--{boundary}".encode()
    chunks = [delimiter + b"\r\n" + part + b"\r\n" for part in parts]
    return b"".join(chunks) + delimiter + b"--"


def _multipart(
    status: int, answers: list[Answer], headers: tuple[tuple[str, str], ...]
) -> Response:
    boundary = f"batchresponse_{new_guid()}"
    body = _join(boundary, [_part(a) for a in answers]) + b"\r\n"
    content_type = ("Content-Type", f"multipart/mixed; boundary={boundary}")
    return Response(status, (content_type, *headers), body)
