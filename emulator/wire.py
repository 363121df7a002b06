"""HTTP values passed between the server and the handlers: `Request`, `Response`, `Prefer`.

The server turns bytes into a `Request`; handlers return a `Response` that the server writes in
one piece, or drops the connection for (`drop=True`, fault injection).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

from emulator.errors import ApiError

JSON_TYPE = "application/json; odata.metadata=minimal"
PLAIN_JSON_TYPE = "application/json; charset=utf-8"
MAX_PAGE_SIZE = 5000

_PREFERENCE = re.compile(r'\s*([^=,\s]+)(?:\s*=\s*("[^"]*"|[^,]*))?\s*(?:,|$)')


@dataclass(frozen=True)
class Prefer:
    """The `Prefer` request header (§1.4); `raw` keeps each preference's text for echoing."""

    max_page_size: int | None = None
    track_changes: bool = False
    annotations: str | None = None
    return_representation: bool = False
    continue_on_error: bool = False

    @classmethod
    def parse(cls, header: str | None) -> Prefer:
        if not header:
            return cls()
        values: dict[str, str] = {}
        for match in _PREFERENCE.finditer(header):
            if match.group(1):
                values[match.group(1).lower()] = (match.group(2) or "").strip()
        size: int | None = None
        if "odata.maxpagesize" in values:
            try:
                size = int(values["odata.maxpagesize"])
            except ValueError:
                size = None
        annotations = values.get("odata.include-annotations")
        return cls(
            max_page_size=size if size is not None and size > 0 else None,
            track_changes="odata.track-changes" in values,
            annotations=annotations.strip('"') if annotations else None,
            return_representation=values.get("return") == "representation",
            continue_on_error="odata.continue-on-error" in values,
        )


@dataclass(frozen=True)
class Request:
    """One HTTP request: decoded `path`, raw path and query as received, lower-case headers."""

    method: str
    path: str
    raw_path: str
    query: str
    headers: Mapping[str, str]
    body: bytes = b""
    peer: str = "127.0.0.1"

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def prefer(self) -> Prefer:
        return _prefer(self.headers.get("prefer"))

    @property
    def options(self) -> tuple[tuple[str, str], ...]:
        """Query options in order, `+` read as a space (as ASP.NET and requests do)."""
        return _options(self.query)

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


@lru_cache(maxsize=1024)
def _prefer(header: str | None) -> Prefer:
    return Prefer.parse(header)


@lru_cache(maxsize=1024)
def _options(query: str) -> tuple[tuple[str, str], ...]:
    return tuple(parse_qsl(query, keep_blank_values=True))


def new_guid() -> str:
    """A random GUID for request ids (not a secret, so the fast generator will do)."""
    text = f"{random.getrandbits(128):032x}"
    return f"{text[:8]}-{text[8:12]}-4{text[13:16]}-a{text[17:20]}-{text[20:]}"


@dataclass(frozen=True)
class Response:
    """An HTTP response; `drop=True` closes the connection instead of sending it (faults)."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    drop: bool = False

    def with_headers(self, *headers: tuple[str, str]) -> Response:
        return Response(self.status, self.headers + headers, self.body, self.drop)

    def dropped(self) -> Response:
        return Response(self.status, self.headers, self.body, True)


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def json_response(
    status: int, value: Any, *headers: tuple[str, str], content_type: str = JSON_TYPE
) -> Response:
    return Response(status, (("Content-Type", content_type), *headers), dumps(value).encode())


def raw_json_response(status: int, body: str, *headers: tuple[str, str]) -> Response:
    """A JSON body assembled as text already (row pages built by SQLite)."""
    return Response(status, (("Content-Type", JSON_TYPE), *headers), body.encode())


def error_response(error: ApiError, *, zero_property_codes: bool = False) -> Response:
    code = "0x0" if zero_property_codes and error.property_error else error.code
    return json_response(error.status, {"error": {"code": code, "message": error.message}})
