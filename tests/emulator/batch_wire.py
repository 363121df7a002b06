"""Build `$batch` request bodies and read `$batch` responses, independently of the emulator code."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import requests

CRLF = "\r\n"


def op(
    method: str,
    url: str,
    body: Any = None,
    *,
    content_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    """One `application/http` part (without its delimiter)."""
    mime = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if content_id is not None:
        mime.append(f"Content-ID: {content_id}")
    lines = [f"{method} {url} HTTP/1.1"]
    if body is not None:
        lines.append("Content-Type: application/json; type=entry")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    text = json.dumps(body) if body is not None else ""
    return CRLF.join(mime) + CRLF + CRLF + CRLF.join(lines) + CRLF + CRLF + text


def changeset(boundary: str, *parts: str) -> str:
    inner = "".join(f"--{boundary}{CRLF}{part}{CRLF}" for part in parts) + f"--{boundary}--"
    return f'Content-Type: multipart/mixed; boundary="{boundary}"{CRLF}{CRLF}{inner}'


def body(boundary: str, *parts: str) -> bytes:
    return (
        "".join(f"--{boundary}{CRLF}{part}{CRLF}" for part in parts) + f"--{boundary}--{CRLF}"
    ).encode()


@dataclass
class Part:
    """One response part: an HTTP response, or (`changeset`) the parts of a change set."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    mime: dict[str, str] = field(default_factory=dict)
    body: str = ""
    changeset: list[Part] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)


def _headers(block: str) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in block.split(CRLF) if line)
    return {name.strip(): value.strip() for name, value in pairs}


def parse_parts(text: str, content_type: str) -> list[Part]:
    boundary = re.search(r"boundary=([^;\s]+)", content_type)
    assert boundary is not None, content_type
    delimiter = f"--{boundary.group(1)}"
    assert text.rstrip(CRLF).endswith(f"{delimiter}--"), text[-200:]
    chunks = text.split(f"{CRLF}{delimiter}")
    assert chunks[0].startswith(delimiter + CRLF)
    chunks[0] = chunks[0][len(delimiter) :]
    parts = []
    for chunk in chunks[:-1]:
        assert chunk.startswith(CRLF), repr(chunk[:40])
        mime_block, _, rest = chunk[2:].partition(CRLF + CRLF)
        mime = _headers(mime_block)
        if mime["Content-Type"].startswith("multipart/mixed"):
            parts.append(Part(mime=mime, changeset=parse_parts(rest, mime["Content-Type"])))
            continue
        assert mime["Content-Type"] == "application/http"
        assert mime["Content-Transfer-Encoding"] == "binary"
        head, _, payload = rest.partition(CRLF + CRLF)
        status_line, _, header_block = head.partition(CRLF)
        assert status_line.startswith("HTTP/1.1 ")
        parts.append(Part(int(status_line.split()[1]), _headers(header_block), mime, payload))
    return parts


def parse(response: requests.Response) -> list[Part]:
    content_type = response.headers["Content-Type"]
    assert content_type.startswith("multipart/mixed; boundary=batchresponse_"), content_type
    return parse_parts(response.content.decode(), content_type)
