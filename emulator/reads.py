"""Web API reads (§3-6): collections with keyset paging, single records, `$count`, change tracking.

A collection page is one SQL statement: the compiled `$filter`, the keyset condition taken from
the `$skiptoken`, `ORDER BY` the `$orderby` keys plus the primary key, and `LIMIT pagesize + 1` to
learn whether a next page exists. With `Prefer: odata.track-changes` the first page pins the
current version; the last page carries a `@odata.deltaLink` for it. A delta request returns rows
whose version lies between the token's version and the version pinned by its first page (by
version), then the tombstones in the same range, paged the same way. A collection asked for with
`fetchXml`, `savedQuery`/`userQuery` or `$apply` is answered by `fetchxml.py`, `views.py` or
`apply.py` instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from emulator import apply, errors, fetchxml, views
from emulator.context import Context
from emulator.functions import with_aliases
from emulator.paging import (
    Cursor,
    decode_skiptoken,
    delta_link,
    encode_skiptoken,
    next_link,
    parse_deltatoken,
)
from emulator.query import (
    COUNT_LIMIT,
    COUNT_LIMIT_EXCEEDED,
    TOTAL_COUNT,
    Annotations,
    Compiled,
    Expansion,
    OrderKey,
    select_context,
)
from emulator.schema import Attribute, Table
from emulator.storage import TOMBSTONES
from emulator.wire import (
    MAX_PAGE_SIZE,
    Prefer,
    Request,
    Response,
    dumps,
    json_response,
    raw_json_response,
)

COLLECTION_OPTIONS = frozenset(
    {"$select", "$filter", "$orderby", "$top", "$count", "$skiptoken", "$deltatoken", "$expand",
     "fetchXml", "$apply", "savedQuery", "userQuery"}
)  # fmt: skip
ENTITY_OPTIONS = frozenset({"$select", "$expand"})
COUNT_OPTIONS = frozenset({"$filter", "$deltatoken"})
CHANGE_TRACKING_EXCLUDES = ("$filter", "$orderby", "$expand", "$top")
ALIASED = ("$filter", "$orderby", "$expand", "$apply")


def query_options(request: Request, allowed: frozenset[str]) -> dict[str, str]:
    """The request's query options by name; duplicates and unsupported options are a 400.

    Parameter aliases (`@p1=…`) are written into the expressions that use them (§3.3)."""
    options: dict[str, str] = {}
    for name, value in request.options:
        if name in options:
            raise errors.bad_query(
                f"Query option '{name}' was specified more than once, but it must be specified "
                "at most once."
            )
        options[name] = value
    for name in options:
        if name in allowed:
            continue
        if name.startswith("$"):
            raise errors.bad_query(f"The query parameter '{name}' is not supported.")
    aliases = {name: value for name, value in options.items() if name.startswith("@")}
    for name in ALIASED:
        if name in options:
            options[name] = with_aliases(options[name], aliases)
    return options


def _alone(name: str, options: dict[str, str], *allowed: str) -> None:
    """A query given as FetchXML, `$apply` or a saved query takes no other query option
    (emulator wording)."""
    others = sorted(o for o in options if not o.startswith("@") and o not in (name, *allowed))
    if others:
        raise errors.bad_query(f"The query option '{others[0]}' cannot be used with '{name}'.")


def preference_applied(prefer: Prefer, *, tracking: bool = False) -> list[str]:
    applied = ["odata.track-changes"] if tracking else []
    if prefer.annotations:
        applied.append(f'odata.include-annotations="{prefer.annotations}"')
    if prefer.max_page_size is not None:
        applied.append(f"odata.maxpagesize={min(prefer.max_page_size, MAX_PAGE_SIZE)}")
    return applied


def context_url(
    ctx: Context,
    table: Table,
    select: tuple[Attribute, ...] | None,
    suffix: str = "",
    expand: tuple[Expansion, ...] = (),
) -> str:
    columns = select_context(select, expand)
    columns = f"({columns})" if columns else ""
    return f"{ctx.api_root}$metadata#{table.entity_set}{columns}{suffix}"


def _expansions(ctx: Context, table: Table, options: dict[str, str]) -> tuple[Expansion, ...]:
    return ctx.compiler.expand(table, options["$expand"]) if "$expand" in options else ()


def _top(options: dict[str, str]) -> int | None:
    if "$top" not in options:
        return None
    text = options["$top"]
    if not text.isdigit():
        raise errors.bad_query(
            f"Invalid value '{text}' for $top query option found. The $top query option requires "
            "a non-negative integer value."
        )
    return int(text)


def _count_requested(options: dict[str, str]) -> bool:
    value = options.get("$count", "false")
    if value not in ("true", "false"):
        raise errors.bad_query(f"'{value}' is not a valid count option.")
    return value == "true"


def _respond(
    head: list[str], rows: Sequence[str], link: tuple[str, str] | None, applied: list[str]
) -> Response:
    body = "{" + ",".join(head) + ',"value":[' + ",".join(rows) + "]"
    if link is not None:
        body += f',"{link[0]}":{dumps(link[1])}'
    headers = (("Preference-Applied", ",".join(applied)),) if applied else ()
    return raw_json_response(200, body + "}", *headers)


def _count_head(count: int | None, annotations: Annotations) -> list[str]:
    head = []
    if count is not None:
        head.append(f'"@odata.count":{min(count, COUNT_LIMIT)}')
    if annotations.includes(TOTAL_COUNT):
        head.append(f'"@{TOTAL_COUNT}":{-1 if count is None else min(count, COUNT_LIMIT)}')
    if annotations.includes(COUNT_LIMIT_EXCEEDED):
        exceeded = count is not None and count > COUNT_LIMIT
        head.append(f'"@{COUNT_LIMIT_EXCEEDED}":{"true" if exceeded else "false"}')
    return head


def get_collection(
    ctx: Context, request: Request, table: Table, scope: Compiled | None = None
) -> Response:
    """A collection page; `scope` narrows it to the rows related to one record (no tracking)."""
    options = query_options(request, COLLECTION_OPTIONS)
    if "fetchXml" in options:
        _alone("fetchXml", options)
        return fetchxml.execute(ctx, request, table, options["fetchXml"], scope)
    for name in ("savedQuery", "userQuery"):
        if name in options:
            _alone(name, options)
            return views.run(ctx, request, table, name, options[name], scope)
    if "$apply" in options:
        _alone("$apply", options, "$orderby")
        return apply.execute(ctx, table, options["$apply"], options, scope)
    prefer = request.prefer
    select = ctx.compiler.select(table, options.get("$select"))
    annotations = Annotations.parse(prefer.annotations)
    tracked = ctx.config.tracked(table.name) and scope is None
    delta = "$deltatoken" in options
    if delta or (prefer.track_changes and tracked):
        for name in CHANGE_TRACKING_EXCLUDES:
            if name in options:
                raise errors.track_changes_option(name)
    applied = preference_applied(prefer, tracking=prefer.track_changes and (tracked or delta))
    if delta:
        return _delta_page(ctx, request, table, options, select, annotations, applied)
    tracking = prefer.track_changes and tracked
    return _page(ctx, request, table, options, select, annotations, applied, tracking, scope)


def _page(
    ctx: Context,
    request: Request,
    table: Table,
    options: dict[str, str],
    select: tuple[Attribute, ...] | None,
    annotations: Annotations,
    applied: list[str],
    tracking: bool,
    scope: Compiled | None,
) -> Response:
    compiler = ctx.compiler
    keys = compiler.order(table, options.get("$orderby"))
    key_attributes = [key.attribute for key in keys]
    expand = _expansions(ctx, table, options)
    conditions: list[str] = [scope.sql] if scope else []
    params: list[Any] = list(scope.params) if scope else []
    if "$filter" in options:
        compiled = compiler.filter(table, options["$filter"])
        conditions.append(compiled.sql)
        params.extend(compiled.params)
    count = _count(ctx, table, conditions, params) if _count_requested(options) else None
    cursor: Cursor | None = None
    if "$skiptoken" in options:
        cursor = decode_skiptoken(options["$skiptoken"], key_attributes, table.primary_id)
    upto = cursor.upto if cursor else (ctx.store.version if tracking else None)
    served = cursor.served if cursor else 0
    size = min(request.prefer.max_page_size or MAX_PAGE_SIZE, MAX_PAGE_SIZE)
    top = _top(options)
    if top is not None and request.prefer.max_page_size is None:
        size = min(size, top - served)
    if cursor is not None:
        keyset = compiler.keyset(keys, cursor.last)
        conditions.append(keyset.sql)
        params.extend(keyset.params)
    rows, last, first, more = _fetch(
        ctx, table, select, annotations, keys, conditions, params, size, expand
    )
    if top is not None and request.prefer.max_page_size is None and served + len(rows) >= top:
        more = False
    head = ['"@odata.context":' + dumps(context_url(ctx, table, select, expand=expand))]
    head += _count_head(count, annotations)
    link: tuple[str, str] | None = None
    if more and last is not None:
        page = Cursor(
            page=(cursor.page if cursor else 1) + 1,
            last=last,
            first=first,
            served=served + len(rows) if top is not None else 0,
            upto=upto,
        )
        token = encode_skiptoken(page, key_attributes, table.primary_id, tracking)
        link = ("@odata.nextLink", next_link(ctx.origin, request.raw_path, request.query, token))
    elif tracking and upto is not None:
        url = delta_link(ctx.origin, request.raw_path, request.query, upto, ctx.clock.now())
        link = ("@odata.deltaLink", url)
    return _respond(head, rows, link, applied)


def _count(ctx: Context, table: Table, conditions: list[str], params: list[Any]) -> int:
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    sql = f'SELECT count(*) FROM (SELECT 1 FROM "{table.name}" t{where} LIMIT ?)'
    return int(ctx.store.scalar(sql, (*params, COUNT_LIMIT + 1)))


def _fetch(
    ctx: Context,
    table: Table,
    select: tuple[Attribute, ...] | None,
    annotations: Annotations,
    keys: Sequence[OrderKey],
    conditions: list[str],
    params: list[Any],
    size: int,
    expand: tuple[Expansion, ...],
) -> tuple[list[str], tuple[Any, ...] | None, str | None, bool]:
    """One page: row JSON texts, the last row's sort keys, the first row's id, more rows exist."""
    if size <= 0:
        return [], None, None, False
    compiler = ctx.compiler
    sort = [compiler.sort_expression(key.attribute) for key in keys]
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    order = ", ".join(
        f"{expression} {'DESC' if key.descending else 'ASC'}"
        for expression, key in zip(sort, keys, strict=True)
    )
    sql = (
        f"SELECT {compiler.row_json(table, select, annotations, expand=expand)}, "
        f"{', '.join(sort)} "
        f'FROM "{table.name}" t{where} ORDER BY {order} LIMIT ?'
    )
    fetched = ctx.store.rows(sql, (*params, size + 1))
    more = len(fetched) > size
    page = fetched[:size]
    if not page:
        return [], None, None, False
    return [row[0] for row in page], tuple(page[-1][1:]), page[0][-1], more


def _delta_page(
    ctx: Context,
    request: Request,
    table: Table,
    options: dict[str, str],
    select: tuple[Attribute, ...] | None,
    annotations: Annotations,
    applied: list[str],
) -> Response:
    since, minted = parse_deltatoken(options["$deltatoken"])
    now = ctx.clock.now()
    if not ctx.config.tracked(table.name) or minted < now - timedelta(
        days=ctx.config.retention_days
    ):
        raise errors.expired_version_stamp()
    version_key = [table.by_name["versionnumber"]]
    cursor: Cursor | None = None
    if "$skiptoken" in options:
        cursor = decode_skiptoken(options["$skiptoken"], version_key, "")
    upto = cursor.upto if cursor is not None and cursor.upto is not None else ctx.store.version
    phase = cursor.phase if cursor else "changes"
    after = int(cursor.last[0]) if cursor else since
    size = min(request.prefer.max_page_size or MAX_PAGE_SIZE, MAX_PAGE_SIZE)
    rows: list[str] = []
    next_cursor: Cursor | None = None
    page = (cursor.page if cursor else 1) + 1
    if phase == "changes":
        sql = (
            f"SELECT {ctx.compiler.row_json(table, select, annotations)}, t.versionnumber "
            f'FROM "{table.name}" t WHERE t.versionnumber > ? AND t.versionnumber <= ? '
            "ORDER BY t.versionnumber LIMIT ?"
        )
        fetched = ctx.store.rows(sql, (after, upto, size + 1))
        rows = [row[0] for row in fetched[:size]]
        if len(fetched) > size:
            next_cursor = Cursor(page, (fetched[size - 1][1],), upto=upto, phase="changes")
        else:
            phase, after = "deletes", since
    if phase == "deletes":
        room = size - len(rows)
        fetched = ctx.store.rows(
            f"SELECT id, versionnumber FROM {TOMBSTONES} WHERE tablename = ? "
            "AND versionnumber > ? AND versionnumber <= ? ORDER BY versionnumber LIMIT ?",
            (table.name, after, upto, room + 1),
        )
        deleted_context = dumps(f"{ctx.api_root}$metadata#{table.entity_set}/$deletedEntity")
        rows += [
            f'{{"@odata.context":{deleted_context},"id":{dumps(row[0])},"reason":"deleted"}}'
            for row in fetched[:room]
        ]
        if len(fetched) > room:
            last = fetched[room - 1][1] if room else after
            next_cursor = Cursor(page, (last,), upto=upto, phase="deletes")
    head = ['"@odata.context":' + dumps(context_url(ctx, table, select, "/$delta"))]
    if next_cursor is not None:
        token = encode_skiptoken(next_cursor, version_key, "", True)
        link = ("@odata.nextLink", next_link(ctx.origin, request.raw_path, request.query, token))
    else:
        link = (
            "@odata.deltaLink",
            delta_link(ctx.origin, request.raw_path, request.query, upto, now),
        )
    return _respond(head, rows, link, applied)


def get_count(ctx: Context, request: Request, table: Table) -> Response:
    """`<set>/$count`: a bare number, text/plain, at most 5000; with `$deltatoken`, the changes."""
    options = query_options(request, COUNT_OPTIONS)
    if "$deltatoken" in options:
        since, minted = parse_deltatoken(options["$deltatoken"])
        retention = timedelta(days=ctx.config.retention_days)
        if not ctx.config.tracked(table.name) or minted < ctx.clock.now() - retention:
            raise errors.expired_version_stamp()
        changed = ctx.store.scalar(
            f'SELECT count(*) FROM "{table.name}" WHERE versionnumber > ?', (since,)
        )
        deleted = ctx.store.scalar(
            f"SELECT count(*) FROM {TOMBSTONES} WHERE tablename = ? AND versionnumber > ?",
            (table.name, since),
        )
        count = int(changed) + int(deleted)
    else:
        conditions: list[str] = []
        params: list[Any] = []
        if "$filter" in options:
            compiled = ctx.compiler.filter(table, options["$filter"])
            conditions.append(compiled.sql)
            params.extend(compiled.params)
        count = _count(ctx, table, conditions, params)
    body = str(min(count, COUNT_LIMIT)).encode()
    return Response(200, (("Content-Type", "text/plain; charset=utf-8"),), body)


def entity_json(
    ctx: Context,
    table: Table,
    record_id: str,
    select: tuple[Attribute, ...] | None,
    annotations: Annotations,
    expand: tuple[Expansion, ...] = (),
) -> tuple[str, int] | None:
    """A record as the Web API writes it (with `@odata.context`), and its version."""
    sql = (
        f"SELECT {ctx.compiler.row_json(table, select, annotations, expand=expand)}, "
        f't.versionnumber FROM "{table.name}" t WHERE t."{table.primary_id}" = ?'
    )
    found = ctx.store.rows(sql, (record_id,))
    if not found:
        return None
    row, version = found[0]
    entity_context = dumps(context_url(ctx, table, select, "/$entity", expand))
    return '{"@odata.context":' + entity_context + "," + row[1:], int(version)


def get_entity(ctx: Context, request: Request, table: Table, record_id: str) -> Response:
    options = query_options(request, ENTITY_OPTIONS)
    select = ctx.compiler.select(table, options.get("$select"))
    annotations = Annotations.parse(request.prefer.annotations)
    expand = _expansions(ctx, table, options)
    found = entity_json(ctx, table, record_id, select, annotations, expand)
    if found is None:
        raise errors.does_not_exist(table.name, record_id)
    body, version = found
    etag = f'W/"{version}"'
    if request.header("if-none-match") == etag and not expand and not annotations.patterns:
        return Response(304, (("ETag", etag),))
    applied = preference_applied(Prefer(annotations=request.prefer.annotations))
    headers = (("ETag", etag),) + ((("Preference-Applied", applied[0]),) if applied else ())
    return raw_json_response(200, body, *headers)


def get_property(ctx: Context, table: Table, record_id: str, attribute: Attribute) -> Response:
    """`GET <set>(<id>)/<column>`: `{"@odata.context": …, "value": …}`."""
    value = ctx.compiler.row_json(table, (attribute,), Annotations())
    found = ctx.store.rows(
        f'SELECT {value} FROM "{table.name}" t WHERE t."{table.primary_id}" = ?', (record_id,)
    )
    if not found:
        raise errors.does_not_exist(table.name, record_id)
    row = json.loads(found[0][0])
    context = f"{ctx.api_root}$metadata#{table.entity_set}({record_id})/{attribute.read_name}"
    return json_response(200, {"@odata.context": context, "value": row[attribute.read_name]})
