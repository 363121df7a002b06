"""Paging and change-tracking tokens: cookie-shaped `$skiptoken`s, `$deltatoken`s, and links.

A `$skiptoken` looks like the real one (§4.3): `<cookie pagenumber="2" pagingcookie="…"
istracking="False" />`, whose URL-encoded `pagingcookie` holds `<cookie page="1">` with one element
per sort key carrying the last row's value (the primary key as an upper-case braced GUID). That
is the whole keyset cursor, so paging stays correct while rows change. Change-tracking pages also
carry the version their snapshot or delta runs up to. A `$deltatoken` is `<version>!<MM/dd/yyyy
HH:mm:ss>` (§6.7). Links repeat the request's query options as received and add the token.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote, unquote_plus
from xml.sax.saxutils import quoteattr

from emulator import errors
from emulator.schema import INTEGER_TYPES, Attribute, AttributeType

DELTA_FORMAT = "%m/%d/%Y %H:%M:%S"
_DELTA = re.compile(r"^(\d+)!(\d{2}/\d{2}/\d{4} \d{2}:\d{2}:\d{2})$")
_OUTER = re.compile(
    r'^<cookie pagenumber="(\d+)" pagingcookie="([^"]*)" istracking="(True|False)" />$'
)
_HEX = re.compile(r"%[0-9A-F]{2}")


@dataclass(frozen=True)
class Cursor:
    """Where the next page starts: the sort-key values of the last row served (primary key last)."""

    page: int
    last: tuple[Any, ...]
    first: str | None = None
    served: int = 0
    upto: int | None = None
    phase: str = ""


def _lower_hex(text: str) -> str:
    return _HEX.sub(lambda match: match.group(0).lower(), text)


def encode_skiptoken(
    cursor: Cursor, keys: Sequence[Attribute], key_name: str, tracking: bool
) -> str:
    """The (not yet URL-encoded) cookie for `cursor`; `key_name` is the primary key column."""
    attributes = [f'page="{cursor.page - 1}"']
    if cursor.served:
        attributes.append(f'served="{cursor.served}"')
    if cursor.upto is not None:
        attributes.append(f'upto="{cursor.upto}"')
    if cursor.phase:
        attributes.append(f'phase="{cursor.phase}"')
    elements = []
    for attribute, value in zip(keys, cursor.last, strict=True):
        if attribute.name == key_name:
            first = f" first={quoteattr('{' + cursor.first.upper() + '}')}" if cursor.first else ""
            elements.append(
                f"<{attribute.read_name} last={quoteattr('{' + value.upper() + '}')}{first} />"
            )
        elif value is None:
            elements.append(f'<{attribute.read_name} null="1" />')
        else:
            elements.append(f"<{attribute.read_name} last={quoteattr(str(value))} />")
    inner = f"<cookie {' '.join(attributes)}>{''.join(elements)}</cookie>"
    return (
        f'<cookie pagenumber="{cursor.page}" pagingcookie="{_lower_hex(quote(inner, safe=""))}" '
        f'istracking="{tracking}" />'
    )


def decode_skiptoken(token: str, keys: Sequence[Attribute], key_name: str) -> Cursor:
    """Read a cookie made by `encode_skiptoken` for the same sort keys, or fail with 0x8004112A."""
    outer = _OUTER.match(token)
    if outer is None:
        raise errors.invalid_paging_cookie()
    try:
        root = ET.fromstring(unquote(outer.group(2)))  # noqa: S314 - our own cookie format
        elements = list(root)
        if len(elements) != len(keys):
            raise ValueError("key count")
        values: list[Any] = []
        first = None
        for attribute, element in zip(keys, elements, strict=True):
            if element.tag != attribute.read_name:
                raise ValueError("key name")
            raw = element.get("last")
            if attribute.name == key_name:
                values.append(str(raw).strip("{}").lower())
                first = (element.get("first") or "").strip("{}").lower() or None
            elif raw is None:
                values.append(None)
            elif attribute.type in INTEGER_TYPES or attribute.type is AttributeType.BOOLEAN:
                values.append(int(raw))
            else:
                values.append(raw)
        upto = root.get("upto")
        return Cursor(
            page=int(outer.group(1)),
            last=tuple(values),
            first=first,
            served=int(root.get("served", "0")),
            upto=int(upto) if upto is not None else None,
            phase=root.get("phase", ""),
        )
    except (ET.ParseError, ValueError):
        raise errors.invalid_paging_cookie() from None


def format_deltatoken(version: int, when: datetime) -> str:
    return f"{version}!{when.astimezone(UTC).strftime(DELTA_FORMAT)}"


def parse_deltatoken(token: str) -> tuple[int, datetime]:
    """(version, timestamp) of a `$deltatoken`; anything else is a 400 0x80060888."""
    match = _DELTA.match(token.strip())
    if match is None:
        raise errors.bad_query(f"The delta token '{token}' is not valid.")
    try:
        when = datetime.strptime(match.group(2), DELTA_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise errors.bad_query(f"The delta token '{token}' is not valid.") from None
    return int(match.group(1)), when


def _options_without(raw_query: str, *names: str) -> list[str]:
    kept = []
    for part in raw_query.split("&"):
        if part and unquote_plus(part.split("=", 1)[0]) not in names:
            kept.append(part)
    return kept


def next_link(origin: str, raw_path: str, raw_query: str, skiptoken: str) -> str:
    """The original request with `$skiptoken` replaced: absolute, options as received."""
    parts = [
        *_options_without(raw_query, "$skiptoken"),
        "$skiptoken=" + quote(skiptoken, safe="=/"),
    ]
    return f"{origin}{raw_path}?{'&'.join(parts)}"


def delta_link(origin: str, raw_path: str, raw_query: str, version: int, when: datetime) -> str:
    token = _lower_hex(quote(format_deltatoken(version, when), safe=""))
    parts = [*_options_without(raw_query, "$skiptoken", "$deltatoken"), f"$deltatoken={token}"]
    return f"{origin}{raw_path}?{'&'.join(parts)}"
