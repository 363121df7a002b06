"""Verbs on Dataverse entity sets over the Web API: paged reads, change tracking, metadata.

Reads stream: `pages` yields one validated page at a time and follows `@odata.nextLink` exactly
as received, sending the same `Prefer` on every page, with a guard against repeated links. While
the caller writes a page, the next one is already being fetched (one page ahead, never more), so
the database and the network work at the same time and memory stays at two pages.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from connector.errors import SyncError, request_id
from connector.http import Transport
from connector.mapping import TableMapping
from connector.odata import collection_url, entity_definition_path
from connector.paging import LinkGuard, Page, parse_page

TRACK_CHANGES = "odata.track-changes"


class Dataverse:
    """The Web API of one environment, through the one Transport."""

    def __init__(self, transport: Transport, page_size: int) -> None:
        self.transport = transport
        self.page_size = page_size

    @property
    def requests_sent(self) -> int:
        return self.transport.requests_sent

    def is_own_link(self, link: str) -> bool:
        """Whether a saved next/delta link points at this environment's Web API."""
        own, other = urlsplit(self.transport.api_url), urlsplit(link)
        return (own.scheme, own.netloc.lower()) == (other.scheme, other.netloc.lower()) and (
            other.path.startswith(own.path)
        )

    def full_read_url(self, table: TableMapping) -> str:
        """Every row of a table, mapped columns only (track-changes allows no other option)."""
        return collection_url(table.entity_set, table.select)

    def watermark_url(self, table: TableMapping, since: str) -> str:
        """Rows modified at or after `since` (ISO UTC), oldest first, stable under paging."""
        return collection_url(
            table.entity_set,
            table.select,
            filter=f"modifiedon ge {since}",
            orderby=f"modifiedon asc,{table.primary_key} asc",
        )

    def pages(self, table: TableMapping, url: str, *, track_changes: bool) -> Iterator[Page]:
        """GET `url` and every next link after it, one validated page at a time, in order.

        A failure to fetch or read a page is raised when the caller asks for that page, after
        every page before it has been handed over.
        """
        prefer = f"odata.maxpagesize={self.page_size}"
        if track_changes:
            prefer = f"{TRACK_CHANGES},{prefer}"
        guard = LinkGuard(table.name)
        ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"read-{table.name}")
        try:
            pending: Future[Page] | None = ahead.submit(self._page, table, url, prefer)
            while pending is not None:
                page = pending.result()
                pending = None
                if page.next_link is not None:
                    guard.check(page.next_link, page.request_id)
                    pending = ahead.submit(self._page, table, page.next_link, prefer)
                yield page
        finally:  # a caller that stops early does not wait for the page read ahead
            ahead.shutdown(wait=False, cancel_futures=True)

    def _page(self, table: TableMapping, url: str, prefer: str) -> Page:
        response = self.transport.send("GET", url, headers={"Prefer": prefer})
        rid = request_id(response)
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise SyncError(
                f"{table.name}: page of unexpected shape: not JSON (request id {rid or '?'})"
            ) from None
        return parse_page(
            body,
            table=table.name,
            primary_key=table.primary_key,
            request_id=rid,
            server_time=_server_time(response.headers.get("Date")),
        )

    def who_am_i(self) -> dict[str, Any]:
        """The caller's ids (`UserId`, `BusinessUnitId`, `OrganizationId`)."""
        body: dict[str, Any] = self.transport.send("GET", "WhoAmI").json()
        return body

    def table_definition(self, logical_name: str) -> dict[str, Any]:
        """EntityDefinitions of one table: set name, primary key, change tracking."""
        path = entity_definition_path(logical_name)
        select = "LogicalName,EntitySetName,PrimaryIdAttribute,ChangeTrackingEnabled"
        body: dict[str, Any] = self.transport.send("GET", f"{path}?$select={select}").json()
        return body

    def attributes(self, logical_name: str) -> dict[str, str]:
        """Column logical name → AttributeType for one table."""
        path = entity_definition_path(logical_name, "/Attributes")
        body = self.transport.send("GET", f"{path}?$select=LogicalName,AttributeType").json()
        return {a["LogicalName"]: a["AttributeType"] for a in body.get("value", [])}


def _server_time(date_header: str | None) -> str | None:
    """The server's clock from an HTTP `Date` header, as ISO-8601 UTC; None when absent or bad."""
    if not date_header:
        return None
    try:
        moment = parsedate_to_datetime(date_header)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
