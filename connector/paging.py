"""Reading one page of a Web API collection: rows, `$deletedEntity` tombstones and the links.

A page is validated before anything is written from it: a body of unexpected shape raises
`SyncError` naming the table and the request id, so the sync state is never advanced past data
it could not read. `LinkGuard` stops a server that repeats a next link from looping us forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from connector.errors import SyncError

_DELETED_SUFFIX = "/$deletedEntity"


@dataclass(frozen=True)
class Page:
    """One page of a collection or delta response."""

    rows: list[dict[str, Any]]
    deleted_ids: list[str]
    next_link: str | None
    delta_link: str | None
    request_id: str
    server_time: str | None  # when the server answered (its Date header), ISO-8601 UTC

    @property
    def is_last(self) -> bool:
        """No next link: the response (all its pages) is complete."""
        return self.next_link is None


def _fail(table: str, request_id: str, what: str) -> SyncError:
    return SyncError(f"{table}: page of unexpected shape: {what} (request id {request_id or '?'})")


def parse_page(
    body: Any, *, table: str, primary_key: str, request_id: str, server_time: str | None = None
) -> Page:
    """Split a decoded JSON body into rows, deleted ids and links, or raise SyncError."""
    if not isinstance(body, dict):
        raise _fail(table, request_id, "the body is not a JSON object")
    value = body.get("value")
    if not isinstance(value, list):
        raise _fail(table, request_id, "no 'value' array")
    rows: list[dict[str, Any]] = []
    deleted: list[str] = []
    for position, item in enumerate(value):
        if not isinstance(item, dict):
            raise _fail(table, request_id, f"row {position} is not an object")
        context = item.get("@odata.context")
        if isinstance(context, str) and context.endswith(_DELETED_SUFFIX):
            deleted_id = item.get("id")
            if not isinstance(deleted_id, str):
                raise _fail(table, request_id, f"deleted row {position} has no 'id'")
            deleted.append(deleted_id)
            continue
        if not isinstance(item.get(primary_key), str):
            raise _fail(table, request_id, f"row {position} has no '{primary_key}'")
        rows.append(item)
    next_link = body.get("@odata.nextLink")
    delta_link = body.get("@odata.deltaLink")
    for name, link in (("@odata.nextLink", next_link), ("@odata.deltaLink", delta_link)):
        if link is not None and not (isinstance(link, str) and link.startswith("https://")):
            raise _fail(table, request_id, f"{name} is not an https URL")
    return Page(
        rows=rows,
        deleted_ids=deleted,
        next_link=next_link,
        delta_link=delta_link,
        request_id=request_id,
        server_time=server_time,
    )


class LinkGuard:
    """Remembers the next links of one response; a repeated link is an error, not a loop."""

    def __init__(self, table: str) -> None:
        self._table = table
        self._seen: set[str] = set()

    def check(self, link: str, request_id: str) -> None:
        """Record `link`; raise SyncError when the server already sent it."""
        if link in self._seen:
            raise SyncError(
                f"{self._table}: the server repeated a next link; stopping instead of looping "
                f"(request id {request_id or '?'})"
            )
        self._seen.add(link)
