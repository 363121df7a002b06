"""The admin endpoint `/_emulator/…`: not Dataverse; drives and inspects the emulator for tests.

Loopback peers only, no authentication, plain JSON. Rows use the Web API property names
(`_parentcontactid_value`) with booleans as true/false, and include `versionnumber`. Writes made
here go through the same store as Web API writes: new versions, tombstones, RemoveLink/Cascade.

    GET    /status                      version, clock, row counts, change-tracking flags,
                                        service protection windows per caller
    GET    /requests?after=SEQ          Web API calls after SEQ        DELETE /requests
    POST   /reset {"seed","leads","contacts"}   reseed (a twin reloads its rows file); clear
                                        tombstones, log, faults, invocations, clock, config,
                                        service protection windows (versions keep growing;
                                        tokens stay valid)
    GET    /tables/<t>[?$filter=…]      every row (optionally filtered with OData $filter text)
    GET    /tables/<t>/count            GET /tables/<t>/deleted (tombstones)
    GET    /tables/<t>/<id>             PATCH /tables/<t>/<id>           DELETE /tables/<t>/<id>
    POST   /tables/<t> {"rows":[…]}     insert, or update when the id exists
    POST   /activity {"table","creates","updates","deletes","seed"}   random churn
    GET    /clock                       POST /clock {"advance_seconds": N} | {"now": "…Z"}
    POST   /tokens/revoke               every issued token now gets 401
    GET|PUT|DELETE /faults              {"spec": "…", "seed": N}; GET shows counters and holds
    POST   /faults/release              let held requests go (they end by closing the connection)
    GET|PATCH /config                   {"change_tracking": {"lead": false}, "token_lifetime": …,
                                        "service_protection": {"requests": 5}, U-switches…}
    POST   /emails/<id>/engagement {"opens","clicks","attachment_opens","replies","interactions"}
                                        engagement recorded on a mail (U43)
    POST   /emails/<id>/transport {"outcome": "sending"|"sent"|"failed"}   the mail transport
    GET    /invocations                 workflows and custom actions run (DELETE clears)
"""

from __future__ import annotations

import ipaddress
import json
import re
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from emulator import emails, errors, messages, owners, seed, twin
from emulator.clock import parse_wire, wire
from emulator.faults import FaultPlan, FaultSpecError, parse_spec
from emulator.schema import GUID_TYPES, AttributeType, Table
from emulator.storage import TOMBSTONES, RestrictedDelete, WriteTx
from emulator.wire import PLAIN_JSON_TYPE, Request, Response, json_response
from emulator.writes import fill_defaults, fill_fullname

if TYPE_CHECKING:
    from emulator.app import Emulator


class AdminError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _reply(value: Any, status: int = 200) -> Response:
    return json_response(status, value, content_type=PLAIN_JSON_TYPE)


def _object(request: Request) -> dict[str, Any]:
    if not request.body:
        return {}
    try:
        value = request.json()
    except ValueError:
        raise AdminError(400, "the body must be JSON") from None
    if not isinstance(value, dict):
        raise AdminError(400, "the body must be a JSON object")
    return value


def _integer(body: dict[str, Any], key: str, default: int) -> int:
    value = body.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise AdminError(400, f"{key} must be a non-negative integer")
    return value


Handler = Callable[..., Response]
_ID = "[0-9a-fA-F-]{36}"


class Admin:
    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.ctx = emulator.ctx
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = [
            ("GET", re.compile(r"^/status$"), self.status),
            ("GET", re.compile(r"^/requests$"), self.requests),
            ("DELETE", re.compile(r"^/requests$"), self.clear_requests),
            ("POST", re.compile(r"^/reset$"), self.reset),
            ("GET", re.compile(r"^/tables/(?P<name>\w+)$"), self.table_rows),
            ("POST", re.compile(r"^/tables/(?P<name>\w+)$"), self.put_rows),
            ("GET", re.compile(r"^/tables/(?P<name>\w+)/count$"), self.table_count),
            ("GET", re.compile(r"^/tables/(?P<name>\w+)/deleted$"), self.table_deleted),
            ("GET", re.compile(r"^/tables/(?P<name>\w+)/(?P<rid>[0-9a-fA-F-]{36})$"), self.get_row),
            (
                "PATCH",
                re.compile(r"^/tables/(?P<name>\w+)/(?P<rid>[0-9a-fA-F-]{36})$"),
                self.patch_row,
            ),
            (
                "DELETE",
                re.compile(r"^/tables/(?P<name>\w+)/(?P<rid>[0-9a-fA-F-]{36})$"),
                self.delete_row,
            ),
            ("POST", re.compile(r"^/activity$"), self.activity),
            ("GET", re.compile(r"^/clock$"), self.clock),
            ("POST", re.compile(r"^/clock$"), self.set_clock),
            ("POST", re.compile(r"^/tokens/revoke$"), self.revoke),
            ("GET", re.compile(r"^/faults$"), self.faults),
            ("PUT", re.compile(r"^/faults$"), self.set_faults),
            ("DELETE", re.compile(r"^/faults$"), self.clear_faults),
            ("POST", re.compile(r"^/faults/release$"), self.release_faults),
            ("GET", re.compile(r"^/config$"), self.config),
            ("PATCH", re.compile(r"^/config$"), self.set_config),
            ("POST", re.compile(rf"^/emails/(?P<rid>{_ID})/engagement$"), self.engagement),
            ("POST", re.compile(rf"^/emails/(?P<rid>{_ID})/transport$"), self.transport),
            ("GET", re.compile(r"^/invocations$"), self.invocations),
            ("DELETE", re.compile(r"^/invocations$"), self.clear_invocations),
        ]

    def handle(self, request: Request) -> Response:
        try:
            loopback = ipaddress.ip_address(request.peer).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            return _reply({"error": "the admin endpoint only answers loopback peers"}, 403)
        path = request.path.removeprefix("/_emulator") or "/"
        allowed = False
        for method, pattern, handler in self._routes:
            match = pattern.match(path)
            if match is None:
                continue
            allowed = True
            if method == request.method:
                try:
                    return handler(request, **match.groupdict())
                except AdminError as error:
                    return _reply({"error": error.message}, error.status)
                except errors.ApiError as error:
                    return _reply({"error": error.message, "code": error.code}, error.status)
        if allowed:
            return _reply({"error": f"method {request.method} not allowed on {path}"}, 405)
        return _reply({"error": f"no admin route {path}"}, 404)

    # -- helpers ------------------------------------------------------------------------------

    def _table(self, name: str) -> Table:
        schema = self.ctx.schema
        table = schema.by_name.get(name) or schema.by_set.get(name)
        if table is None:
            raise AdminError(404, f"unknown table {name!r}")
        return table

    def _rows(
        self, table: Table, where: str = "", params: tuple[Any, ...] = ()
    ) -> list[dict[str, Any]]:
        columns = [a.read_name for a in table.attributes]
        booleans = {a.read_name for a in table.attributes if a.type is AttributeType.BOOLEAN}
        selected = ", ".join(f't."{column}"' for column in columns)
        sql = f'SELECT {selected} FROM "{table.name}" t {where} ORDER BY t."{table.primary_id}"'

        rows = []
        for row in self.ctx.store.rows(sql, params):
            rows.append({
                c: (bool(v) if c in booleans and v is not None else v)
                for c, v in zip(columns, row, strict=True)
            })  # fmt: skip
        return rows

    def _values(self, tx: WriteTx, table: Table, row: dict[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        type_columns = {a.type_column: a for a in table.attributes if a.type_column}
        for key, value in row.items():
            if key == "versionnumber" or key in type_columns:
                continue
            attribute = table.by_read_name.get(key)
            if attribute is None:
                raise AdminError(400, f"unknown column {key!r} for table {table.name}")
            if attribute.type is AttributeType.BOOLEAN and value is not None:
                value = int(bool(value))
            elif attribute.type in GUID_TYPES and isinstance(value, str):
                value = value.lower()
            values[key] = value
            if attribute.type_column:
                target = row.get(attribute.type_column)
                if target is None and value is not None:
                    target = next(
                        (
                            t.table for t in attribute.targets
                            if t.table in self.ctx.schema.by_name
                            and tx.record(self.ctx.schema.by_name[t.table], value) is not None
                        ),
                        None,
                    )  # fmt: skip
                values[attribute.type_column] = target if value is not None else None
        owners.fill_owner(table, values)
        return values

    # -- routes --------------------------------------------------------------------------------

    def status(self, request: Request) -> Response:
        ctx = self.ctx
        tables = {
            t.name: {"rows": ctx.store.count(t), "change_tracking": ctx.config.tracked(t.name)}
            for t in ctx.schema.tables
        }
        return _reply(
            {
                "version": ctx.store.version,
                "now": ctx.now(),
                "tables": tables,
                "service_protection": self.emulator.protection.describe(),
            }
        )

    def requests(self, request: Request) -> Response:
        after = dict(request.options).get("after", "0")
        if not after.isdigit():
            raise AdminError(400, "after must be a sequence number")
        return _reply({"requests": self.emulator.log.after(int(after))})

    def clear_requests(self, request: Request) -> Response:
        self.emulator.log.clear()
        return _reply({"cleared": True})

    def reset(self, request: Request) -> Response:
        body = _object(request)
        defaults = self.emulator.defaults
        sizes = {
            "seed": _integer(body, "seed", defaults.seed),
            "leads": _integer(body, "leads", defaults.leads),
            "contacts": _integer(body, "contacts", defaults.contacts),
        }
        ctx = self.ctx
        ctx.clock.reset()
        ctx.config = ctx.initial_config
        self.emulator.faults.release()
        self.emulator.faults = FaultPlan()
        self.emulator.protection.reset()
        anchor = ctx.clock.now().replace(hour=0, minute=0, second=0, microsecond=0)
        with ctx.store.write(ctx.now()) as tx:
            tx.clear()
            if defaults.rows is not None:
                try:
                    counts = twin.load(ctx, tx, defaults.rows)
                except twin.RowsError as error:
                    raise AdminError(409, f"the twin cannot be reloaded: {error}") from None
            else:
                counts = seed.seed(tx, anchor=anchor, client_id=ctx.client_id, **sizes)
            messages.sync(ctx, tx)
        self.emulator.log.clear()
        ctx.invocations.clear()
        return _reply({"seeded": counts, "version": ctx.store.version})

    def table_rows(self, request: Request, name: str) -> Response:
        table = self._table(name)
        text = dict(request.options).get("$filter")
        if text:
            compiled = self.ctx.compiler.filter(table, text)
            return _reply({"rows": self._rows(table, f"WHERE {compiled.sql}", compiled.params)})
        return _reply({"rows": self._rows(table)})

    def table_count(self, request: Request, name: str) -> Response:
        return _reply({"count": self.ctx.store.count(self._table(name))})

    def table_deleted(self, request: Request, name: str) -> Response:
        table = self._table(name)
        rows = self.ctx.store.rows(
            f"SELECT id, versionnumber, deletedon FROM {TOMBSTONES} WHERE tablename = ? "
            "ORDER BY versionnumber",
            (table.name,),
        )
        keys = ("id", "versionnumber", "deletedon")
        return _reply({"deleted": [dict(zip(keys, row, strict=True)) for row in rows]})

    def get_row(self, request: Request, name: str, rid: str) -> Response:
        table = self._table(name)
        rows = self._rows(table, f'WHERE t."{table.primary_id}" = ?', (rid.lower(),))
        if not rows:
            raise AdminError(404, f"{table.name} {rid} does not exist")
        return _reply({"row": rows[0]})

    def put_rows(self, request: Request, name: str) -> Response:
        table = self._table(name)
        rows = _object(request).get("rows")
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise AdminError(400, "rows must be a list of objects")
        ctx = self.ctx
        ids = []
        with ctx.store.write(ctx.now()) as tx:
            for row in rows:
                record_id = str(row.get(table.primary_id) or uuid.uuid4()).lower()
                values = self._values(
                    tx, table, {k: v for k, v in row.items() if k != table.primary_id}
                )
                current = tx.record(table, record_id)
                if current is None:
                    fill_defaults(ctx, table, values, tx.now)
                    fill_fullname(table, values, None)
                    tx.insert(table, {**values, table.primary_id: record_id})
                else:
                    values.setdefault("modifiedon", tx.now)
                    fill_fullname(table, values, current)
                    tx.update(table, record_id, values)
                ids.append(record_id)
        return _reply({"ids": ids})

    def patch_row(self, request: Request, name: str, rid: str) -> Response:
        table = self._table(name)
        record_id = rid.lower()
        body = {k: v for k, v in _object(request).items() if k != table.primary_id}
        ctx = self.ctx
        with ctx.store.write(ctx.now()) as tx:
            current = tx.record(table, record_id)
            if current is None:
                raise AdminError(404, f"{table.name} {rid} does not exist")
            values = self._values(tx, table, body)
            values.setdefault("modifiedon", tx.now)
            fill_fullname(table, values, current)
            tx.update(table, record_id, values)
        return self.get_row(request, name, record_id)

    def delete_row(self, request: Request, name: str, rid: str) -> Response:
        table = self._table(name)
        ctx = self.ctx
        with ctx.store.write(ctx.now()) as tx:
            if tx.record(table, rid.lower()) is None:
                raise AdminError(404, f"{table.name} {rid} does not exist")
            try:
                deleted = tx.delete(table, rid.lower())
            except RestrictedDelete as blocked:
                raise AdminError(409, f"referenced by {blocked.table} records") from None
        return _reply({"deleted": [{"table": t, "id": i} for t, i in deleted]})

    def activity(self, request: Request) -> Response:
        body = _object(request)
        table = self._table(str(body.get("table", "lead")))
        if table.name not in ("lead", "contact", "account"):
            raise AdminError(400, "activity supports lead, contact and account")
        ctx = self.ctx
        with ctx.store.write(ctx.now()) as tx:
            changes = seed.churn(
                tx,
                table,
                creates=_integer(body, "creates", 0),
                updates=_integer(body, "updates", 0),
                deletes=_integer(body, "deletes", 0),
                seed=_integer(body, "seed", 0),
                anchor=ctx.clock.now(),
            )
        return _reply({"table": table.name, **changes})

    def clock(self, request: Request) -> Response:
        return _reply({"now": self.ctx.now()})

    def set_clock(self, request: Request) -> Response:
        body = _object(request)
        if "now" in body:
            try:
                self.ctx.clock.set(parse_wire(str(body["now"])))
            except ValueError:
                raise AdminError(400, "now must be an ISO-8601 timestamp") from None
        elif "advance_seconds" in body:
            seconds = body["advance_seconds"]
            if not isinstance(seconds, int | float) or isinstance(seconds, bool):
                raise AdminError(400, "advance_seconds must be a number")
            self.ctx.clock.advance(float(seconds))
        else:
            raise AdminError(400, "give now or advance_seconds")
        return _reply({"now": wire(self.ctx.clock.now())})

    def revoke(self, request: Request) -> Response:
        return _reply({"revoked": self.emulator.identity.revoke()})

    def faults(self, request: Request) -> Response:
        return _reply(self.emulator.faults.describe())

    def set_faults(self, request: Request) -> Response:
        body = _object(request)
        try:
            rules = parse_spec(str(body.get("spec", "")))
        except FaultSpecError as error:
            raise AdminError(400, str(error)) from None
        self.emulator.faults.release()
        self.emulator.faults = FaultPlan(rules, _integer(body, "seed", 0))
        return _reply(self.emulator.faults.describe())

    def clear_faults(self, request: Request) -> Response:
        self.emulator.faults.release()
        self.emulator.faults = FaultPlan()
        return _reply(self.emulator.faults.describe())

    def release_faults(self, request: Request) -> Response:
        self.emulator.faults.release()
        return _reply(self.emulator.faults.describe())

    def config(self, request: Request) -> Response:
        return _reply(self.ctx.config.as_json())

    def set_config(self, request: Request) -> Response:
        ctx = self.ctx
        try:
            ctx.config = ctx.config.updated(_object(request))
        except ValueError as error:
            raise AdminError(400, str(error)) from None
        with ctx.store.write(ctx.now()) as tx:
            messages.sync(ctx, tx)
        return _reply(ctx.config.as_json())

    def engagement(self, request: Request, rid: str) -> Response:
        body = _object(request)
        unknown = set(body) - {*emails.INTERACTIONS, "interactions"}
        if unknown:
            raise AdminError(400, f"unknown keys {sorted(unknown)}")
        counts = {key: _integer(body, key, 0) for key in emails.INTERACTIONS if key in body}
        interactions = body.get("interactions", False)
        if not isinstance(interactions, bool):
            raise AdminError(400, "interactions must be a boolean")
        created = emails.engage(self.ctx, rid.lower(), counts, interactions=interactions)
        row = self.get_row(request, "email", rid.lower())
        return _reply({**json.loads(row.body), "interactions": created})

    def transport(self, request: Request, rid: str) -> Response:
        outcome = _object(request).get("outcome")
        if outcome not in emails.TRANSPORT:
            raise AdminError(400, f"outcome must be one of {', '.join(emails.TRANSPORT)}")
        try:
            emails.move(self.ctx, rid.lower(), str(outcome))
        except emails.HookError as error:
            raise AdminError(409, str(error)) from None
        return self.get_row(request, "email", rid.lower())

    def invocations(self, request: Request) -> Response:
        return _reply({"invocations": self.ctx.invocations.entries()})

    def clear_invocations(self, request: Request) -> Response:
        self.ctx.invocations.clear()
        return _reply({"cleared": True})
