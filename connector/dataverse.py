"""Verbs on Dataverse entity sets over the Web API: paged reads, change tracking, metadata,
writes ($batch and bulk actions).

Reads stream: `pages` yields one validated page at a time and follows `@odata.nextLink` exactly
as received, sending the same `Prefer` on every page, with a guard against repeated links. While
the caller writes a page, the next one is already being fetched (one page ahead, never more), so
the database and the network work at the same time and memory stays at two pages.
"""

from __future__ import annotations

import contextvars
import json
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from connector.batch import Part, PartOutcome, decode, encode, outcomes
from connector.errors import BadRequestError, NotFoundError, SyncError, request_id
from connector.http import Transport
from connector.mapping import TableMapping
from connector.odata import (
    collection_url,
    entity_definition_path,
    entity_path,
    literal,
    query_string,
)
from connector.paging import LinkGuard, Page, parse_page

log = logging.getLogger("dvconnect.dataverse")

TRACK_CHANGES = "odata.track-changes"
LOOKUP_TYPES = 'odata.include-annotations="Microsoft.Dynamics.CRM.lookuplogicalname"'
BULK_ACTIONS = frozenset({"CreateMultiple", "UpsertMultiple", "UpdateMultiple"})


class Dataverse:
    """The Web API of one environment, through the one Transport."""

    def __init__(self, transport: Transport, page_size: int) -> None:
        self.transport = transport
        self.page_size = page_size
        self._supported: dict[tuple[str, str], bool] = {}

    @property
    def requests_sent(self) -> int:
        return self.transport.requests_sent

    @property
    def throttled(self) -> int:
        return self.transport.throttled

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

    def pages(
        self, table: TableMapping, url: str, *, track_changes: bool, lookup_types: bool = False
    ) -> Iterator[Page]:
        """GET `url` and every next link after it, one validated page at a time, in order.

        `lookup_types` asks for each lookup's `lookuplogicalname` annotation (which table it
        points at). A failure to fetch or read a page is raised when the caller asks for that
        page, after every page before it has been handed over.
        """
        prefer = f"odata.maxpagesize={self.page_size}"
        if track_changes:
            prefer = f"{TRACK_CHANGES},{prefer}"
        if lookup_types:
            prefer = f"{prefer},{LOOKUP_TYPES}"
        guard = LinkGuard(table.name)
        ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"read-{table.name}")
        try:
            # in the caller's context: its log lines' fields (the run) follow the read ahead
            context = contextvars.copy_context()
            pending: Future[Page] | None = ahead.submit(context.run, self._page, table, url, prefer)
            while pending is not None:
                page = pending.result()
                pending = None
                if page.next_link is not None:
                    guard.check(page.next_link, page.request_id)
                    pending = ahead.submit(context.run, self._page, table, page.next_link, prefer)
                yield page
        finally:  # a caller that stops early does not wait for the page read ahead
            ahead.shutdown(wait=False, cancel_futures=True)

    def _page(self, table: TableMapping, url: str, prefer: str) -> Page:
        response = self.transport.send("GET", url, headers={"Prefer": prefer})
        rid = request_id(response)
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            try:  # the stdlib parser takes what orjson refuses: unpaired surrogates in \u escapes
                body = json.loads(response.content)
            except ValueError:
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

    def batch(
        self, parts: Sequence[Part], *, safe: bool, continue_on_error: bool = True
    ) -> list[PartOutcome]:
        """POST one $batch; `safe` says the whole batch may be re-sent after a lost response
        (every operation idempotent). Returns one outcome per part, in order.

        Without continue-on-error, a failing part makes Dataverse answer 400 for the whole batch,
        which the transport raises as `BadRequestError` without the part's own error: dvconnect
        sends continue-on-error, and gets every part's outcome.
        """
        content_type, body = encode(parts, urlsplit(self.transport.api_url).path)
        headers = {"Content-Type": content_type}
        if continue_on_error:
            headers["Prefer"] = "odata.continue-on-error"
        response = self.transport.send("POST", "$batch", headers=headers, data=body, safe=safe)
        decoded = decode(response.headers.get("Content-Type", ""), response.content)
        return outcomes(parts, decoded, request_id(response))

    def bulk(
        self,
        table: str,
        entity_set: str,
        action: str,
        targets: Sequence[dict[str, Any]],
        headers: dict[str, str] | None = None,
    ) -> None:
        """One bulk action (`CreateMultiple`, `UpdateMultiple`, `UpsertMultiple`) on a table,
        all-or-nothing.

        Every target names its type and its primary key. Each may be re-sent after a lost
        response: updates and upserts set the same values on the same ids again, and a
        repeated create fails on the ids it already created instead of creating them twice.
        """
        if action not in BULK_ACTIONS:
            raise ValueError(f"{action}: not a bulk action dvconnect sends")
        kind = f"Microsoft.Dynamics.CRM.{table}"
        body = {"Targets": [{"@odata.type": kind, **target} for target in targets]}
        self.transport.send(
            "POST",
            f"{entity_set}/Microsoft.Dynamics.CRM.{action}",
            headers={"Content-Type": "application/json", **(headers or {})},
            data=orjson.dumps(body),
            safe=True,
        )

    def supports(self, table: str, message: str) -> bool:
        """Whether the org supports a bulk `message` on `table` (the §10.3 probe, once each).

        Activity tables do not list the bulk messages (§23.2); a probe that fails is taken as
        "not supported": the per-record path is always correct, only slower.
        """
        known = self._supported.get((table, message))
        if known is not None:
            return known
        options = {
            "$select": "sdkmessagefilterid",
            "$filter": "sdkmessageid/name eq @message and primaryobjecttypecode eq @table",
            "@message": literal(message),
            "@table": literal(table),
        }
        try:
            found = self.transport.send("GET", f"sdkmessagefilters?{query_string(options)}")
            supported = bool(found.json().get("value"))
        except (BadRequestError, NotFoundError) as exc:
            log.warning("%s on %s: support probe refused (%s); writing per record", message,
                        table, exc)  # fmt: skip
            supported = False
        self._supported[(table, message)] = supported
        return supported

    def first_rows(
        self, entity_set: str, select: list[str], filter: str, top: int
    ) -> list[dict[str, Any]]:
        """At most `top` rows matching `filter`, for a lookup (not for reading a table)."""
        url = collection_url(entity_set, select, filter=filter, top=top)
        rows: list[dict[str, Any]] = self.transport.send("GET", url).json().get("value", [])
        return rows

    def rows(self, entity_set: str, select: list[str], filter: str) -> Iterator[dict[str, Any]]:
        """Every row matching `filter` (all its pages), for a lookup: not for reading a table."""
        url: str | None = collection_url(entity_set, select, filter=filter)
        prefer = {"Prefer": f"odata.maxpagesize={self.page_size}"}
        while url is not None:
            body: dict[str, Any] = self.transport.send("GET", url, headers=prefer).json()
            yield from body.get("value", [])
            url = body.get("@odata.nextLink")

    def record(self, entity_set: str, key: str, select: Sequence[str]) -> dict[str, Any] | None:
        """One record by primary key, or None when it does not exist."""
        url = f"{entity_path(entity_set, key)}?{query_string({'$select': ','.join(select)})}"
        try:
            body: dict[str, Any] = self.transport.send("GET", url).json()
        except NotFoundError:
            return None
        return body

    def create(self, entity_set: str, body: dict[str, Any]) -> None:
        """POST one record (its id in `body`: a repeat fails instead of creating a second)."""
        self.transport.send("POST", entity_set, json=body, safe=True)

    def update(self, entity_set: str, key: str, body: dict[str, Any]) -> None:
        """PATCH one existing record (`If-Match: *`: never creates it)."""
        self.transport.send(
            "PATCH", entity_path(entity_set, key), json=body, headers={"If-Match": "*"}
        )

    def call(self, action: str, body: dict[str, Any]) -> None:
        """An unbound action such as `PublishXml`."""
        self.transport.send("POST", action, json=body)

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

    def string_lengths(self, logical_name: str) -> dict[str, int]:
        """Text column logical name → MaxLength for one table (what a value may hold)."""
        path = entity_definition_path(
            logical_name, "/Attributes/Microsoft.Dynamics.CRM.StringAttributeMetadata"
        )
        body = self.transport.send("GET", f"{path}?$select=LogicalName,MaxLength").json()
        return {
            a["LogicalName"]: int(a["MaxLength"])
            for a in body.get("value", [])
            if a.get("MaxLength") is not None
        }


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
