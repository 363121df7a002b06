"""System and personal views (journeys §22): running them, and publishing system views.

`GET <set>?savedQuery=<savedqueryid>` and `?userQuery=<userqueryid>` run the view's FetchXML
against the entity set (also on a related collection), with FetchXML's result shape (nulls left
out, §22.4). `PublishXml` (for the tables its `ParameterXml` lists) and `PublishAllXml` set the
`componentstate` of the system views that an update left unpublished back to 0 (U53); a view
runs its current FetchXML either way.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from uuid import UUID

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from emulator import errors, fetchxml
from emulator.context import Context
from emulator.query import Compiled
from emulator.schema import Table
from emulator.wire import Request, Response

QUERY_TABLES = {"savedQuery": "savedquery", "userQuery": "userquery"}


def run(
    ctx: Context,
    request: Request,
    table: Table,
    option: str,
    value: str,
    scope: Compiled | None = None,
) -> Response:
    """Run the saved or user query `value` names over `table`."""
    views = ctx.schema.by_name[QUERY_TABLES[option]]
    try:
        view_id = str(UUID(value.strip()))
    except ValueError:
        raise errors.bad_key() from None
    view = ctx.store.record(views, view_id)
    if view is None:
        raise errors.does_not_exist(views.name, view_id)
    if view["returnedtypecode"] != table.name:
        raise errors.invalid_argument(
            f"The {views.name} '{view['name']}' returns '{view['returnedtypecode']}' records, "
            f"not '{table.name}'."
        )
    if not view.get("fetchxml"):
        raise errors.invalid_argument(f"The {views.name} '{view['name']}' has no fetchxml.")
    return fetchxml.execute(ctx, request, table, view["fetchxml"], scope)


def _published_tables(body: object) -> set[str]:
    """The tables a PublishXml `ParameterXml` lists."""
    if not isinstance(body, dict) or not isinstance(body.get("ParameterXml"), str):
        raise errors.payload_error("PublishXml needs the string parameter 'ParameterXml'.")
    try:
        root = fromstring(body["ParameterXml"])
    except (ET.ParseError, DefusedXmlException, ValueError):
        raise errors.invalid_xml() from None
    if root.tag != "importexportxml":
        raise errors.invalid_xml()
    return {(e.text or "").strip() for e in root.iterfind("./entities/entity")}


def publish(ctx: Context, request: Request, action: str) -> Response:
    """`POST PublishXml` / `POST PublishAllXml`: 204, views of those tables published."""
    if action == "PublishXml":
        try:
            body = request.json()
        except (UnicodeDecodeError, ValueError):
            raise errors.payload_error(
                "Invalid JSON. The request body is not a valid JSON document."
            ) from None
        tables = _published_tables(body)
    else:
        tables = None
    views = ctx.schema.by_name["savedquery"]
    with ctx.store.write(ctx.now()) as tx:
        where = "WHERE componentstate = 1"
        for view_id in tx.ids(views, where):
            current = tx.record(views, view_id)
            if current is not None and (tables is None or current["returnedtypecode"] in tables):
                tx.update(views, view_id, {"componentstate": 0})
    return Response(204)
