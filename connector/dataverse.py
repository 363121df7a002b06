"""Verbs on Dataverse entity sets over the Web API: paged reads, change tracking, metadata.

Reads stream: `pages` yields one validated page at a time and follows `@odata.nextLink` exactly
as received, sending the same `Prefer` on every page, with a guard against repeated links.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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
        """GET `url` and every next link after it, one validated page at a time."""
        prefer = f"odata.maxpagesize={self.page_size}"
        if track_changes:
            prefer = f"{TRACK_CHANGES},{prefer}"
        guard = LinkGuard(table.name)
        next_url: str | None = url
        while next_url is not None:
            response = self.transport.send("GET", next_url, headers={"Prefer": prefer})
            rid = request_id(response)
            try:
                body = response.json()
            except ValueError:
                raise SyncError(
                    f"{table.name}: page of unexpected shape: not JSON (request id {rid or '?'})"
                ) from None
            applied = response.headers.get("Preference-Applied", "")
            page = parse_page(
                body,
                table=table.name,
                primary_key=table.primary_key,
                request_id=rid,
                tracking=TRACK_CHANGES in applied,
            )
            if page.next_link is not None:
                guard.check(page.next_link, rid)
            yield page
            next_url = page.next_link

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
