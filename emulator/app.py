"""Routing: identity endpoints, the Web API under `/api/data/v9.2/`, and the admin endpoint.

For a Web API call the order is: bearer check (401 + challenge), service protection (429 when the
caller's window is full), fault decision (which may answer 429/503/504, delay, or drop the
connection before or after executing), dispatch by URL shape, then the headers every Dataverse
response carries (`OData-Version`, `REQ_ID`, `x-ms-service-request-id`, rate-limit and
parallelism hints). `$batch` parts are dispatched through the same routing. Each API call is
recorded in the request log the admin endpoint serves. Identity and admin calls are never
faulted, throttled nor logged.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from emulator import (
    actions,
    batch,
    emails,
    errors,
    keys,
    metadata,
    queues,
    reads,
    views,
    workflows,
    writes,
)
from emulator.admin import Admin
from emulator.context import Context
from emulator.faults import FaultPlan
from emulator.identity import Identity
from emulator.limits import DISABLED_HEADERS, ServiceProtection
from emulator.query import Compiled, sql_text
from emulator.schema import Table
from emulator.wire import Request, Response, error_response, json_response, new_guid

API_PREFIX = "/api/data/v9.2"
ADMIN_PREFIX = "/_emulator"
LOG_LIMIT = 50_000
_ENTITY = re.compile(r"^(?P<set>[A-Za-z_]\w*)(?:\((?P<key>[^)]*)\))?(?:/(?P<rest>.+))?$")
_IDENTITY = re.compile(
    r"^/(?P<tenant>[^/]+)/(?:(?P<discovery>(?:v2\.0/)?\.well-known/openid-configuration)"
    r"|(?P<token>oauth2/v2\.0/token)|(?P<keys>discovery/v2\.0/keys))$"
)
_SERVICE_HEADERS = (("OData-Version", "4.0"), ("x-ms-dop-hint", "4"))
_ACTION = "Microsoft.Dynamics.CRM."
_REF = re.compile(r"^(?P<nav>[A-Za-z_]\w*)(?:\((?P<key>[^)]*)\))?/\$ref$")
BOUND_ACTIONS = {  # (table, action) → handler(ctx, request, table, record id)
    ("lead", "QualifyLead"): actions.qualify_lead,
    ("email", "SendEmail"): emails.send_email,
    ("queue", "AddToQueue"): queues.add_to_queue,
    ("workflow", "ExecuteWorkflow"): workflows.execute_workflow,
    ("lead", workflows.ROUTE_LEAD): workflows.route_lead,
}
UNBOUND_ACTIONS = {"GetTrackingTokenEmail": emails.tracking_token}

logger = logging.getLogger("emulator")


@dataclass(frozen=True)
class SeedOptions:
    """What `POST /_emulator/reset` reseeds with unless the body says otherwise."""

    seed: int
    leads: int
    contacts: int
    rows: Path | None = None  # a twin (`--rows`): reset reloads this file, sizes unused


class RequestLog:
    """The Web API calls seen, in order, each with a sequence number that keeps growing."""

    def __init__(self) -> None:
        self._entries: list[dict[str, Any]] = []
        self._next = 1
        self._lock = threading.Lock()

    def add(self, entry: dict[str, Any]) -> None:
        with self._lock:
            entry["seq"] = self._next
            self._next += 1
            self._entries.append(entry)
            if len(self._entries) > LOG_LIMIT:
                del self._entries[: LOG_LIMIT // 10]

    def after(self, seq: int) -> list[dict[str, Any]]:
        with self._lock:
            return [entry for entry in self._entries if entry["seq"] > seq]

    def clear(self) -> None:
        with self._lock:
            self._entries = []


def method_not_allowed(method: str) -> errors.ApiError:
    return errors.ApiError(
        405, errors.ODATA_ERROR, f"The requested resource does not support http method '{method}'."
    )


class Emulator:
    """The whole application: everything the HTTP server hands requests to."""

    def __init__(
        self, ctx: Context, identity: Identity, faults: FaultPlan, defaults: SeedOptions
    ) -> None:
        self.ctx = ctx
        self.identity = identity
        self.faults = faults
        self.defaults = defaults
        self.log = RequestLog()
        self.protection = ServiceProtection(ctx.clock)
        self.admin = Admin(self)

    def handle(self, request: Request) -> Response:
        path = request.path
        if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
            return self._api(request)
        if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
            return self.admin.handle(request)
        match = _IDENTITY.match(path)
        if match is None:
            return json_response(
                404, {"error": "not_found", "error_description": f"No route for {path}"}
            )
        tenant = match.group("tenant")
        if match.group("token"):
            return self.identity.token(tenant, request)
        if match.group("keys"):
            return self.identity.keys()
        return self.identity.openid_configuration(tenant)

    def caller(self, request: Request) -> str:
        """Whom service protection counts a request against (§12.1: per user)."""
        return (
            request.header("callerobjectid")
            or request.header("mscrmcallerid")
            or self.ctx.client_id
        )

    def _api(self, request: Request) -> Response:
        started = time.perf_counter()
        request_id = new_guid()
        fault_kind: str | None = None
        throttled: str | None = None
        limits = self.ctx.config.limits
        caller = self.caller(request)
        if not self.identity.authorized(request.header("authorization")):
            response = self.identity.challenge()
        else:
            refusal = self.protection.enter(caller, limits) if limits.enabled else None
            if refusal is not None:
                throttled = refusal.measure
                response = refusal.response()
            else:
                try:
                    response, fault_kind = self._faulted(request)
                finally:
                    if limits.enabled:
                        elapsed_ms = (time.perf_counter() - started) * 1000
                        self.protection.leave(caller, elapsed_ms)
        rate = self.protection.headers(caller, limits) if limits.enabled else DISABLED_HEADERS
        response = response.with_headers(
            *_SERVICE_HEADERS,
            ("Date", format_datetime(self.ctx.clock.now(), usegmt=True)),  # the emulator's clock
            *rate,
            ("REQ_ID", request_id),
            ("x-ms-service-request-id", request_id),
        )
        elapsed = round((time.perf_counter() - started) * 1000, 2)
        status = None if response.status == 0 else response.status
        logger.info("%s %s %s %.1fms %s", request.method, request.path, status, elapsed, request_id)
        self.log.add(
            {
                "at": self.ctx.now(),
                "method": request.method,
                "path": request.path,
                "query": request.query,
                "status": status,
                "fault": fault_kind,
                "throttled": throttled,
                "ms": elapsed,
                "prefer": request.header("prefer"),
                "if_match": request.header("if-match"),
                "if_none_match": request.header("if-none-match"),
                "request_id": request_id,
            }
        )
        return response

    def _faulted(self, request: Request) -> tuple[Response, str | None]:
        """Execute the request, unless a fault rule answers, delays or drops it."""
        resource = request.path[len(API_PREFIX) + 1 :]
        fault = self.faults.decide(request.method, resource)
        if fault is None:
            return self._dispatch(request, resource), None
        if fault.kind == "slow":
            time.sleep(fault.rule.ms / 1000)
            return self._dispatch(request, resource), fault.kind
        if fault.kind == "commit-drop":
            return self._dispatch(request, resource).dropped(), fault.kind
        if fault.kind == "hold":
            self.faults.hold()
            return Response(0, drop=True), fault.kind
        if fault.kind == "commit-hold":
            response = self._dispatch(request, resource)
            self.faults.hold()
            return response.dropped(), fault.kind
        if fault.kind == "drop":
            return Response(0, drop=True), fault.kind
        return fault.response(), fault.kind

    def _dispatch(self, request: Request, resource: str) -> Response:
        try:
            return self._route(request, resource)
        except errors.ApiError as error:
            return error_response(error, zero_property_codes=self.ctx.config.zero_property_codes)
        except Exception:
            logger.exception("unexpected error serving %s %s", request.method, request.path)
            return error_response(errors.unexpected())

    def _charge(self, request: Request, extra: int) -> Response | None:
        """Count the inner requests of a `$batch` (§12.1)."""
        limits = self.ctx.config.limits
        if not limits.enabled:
            return None
        refusal = self.protection.charge(self.caller(request), limits, extra)
        return refusal.response() if refusal is not None else None

    def _route(self, request: Request, resource: str) -> Response:
        ctx, method = self.ctx, request.method
        if resource.startswith("EntityDefinitions"):
            return metadata.entity_definitions(ctx, request, resource)
        if resource.startswith("RelationshipDefinitions"):
            return metadata.relationship_definitions(ctx, request, resource)
        if resource in ("", "$metadata", "WhoAmI", "WhoAmI()"):
            if method != "GET":
                if resource.startswith("WhoAmI"):
                    raise errors.no_http_resource(f"{ctx.origin}{request.raw_path}")
                raise method_not_allowed(method)
            if resource == "":
                return metadata.service_document(ctx)
            if resource == "$metadata":
                return metadata.csdl(ctx, ("annotations", "true") in request.options)
            return metadata.who_am_i(ctx)
        if resource in ("PublishXml", "PublishAllXml"):
            if method != "POST":
                raise errors.no_http_resource(f"{ctx.origin}{request.raw_path}")
            return views.publish(ctx, request, resource)
        if resource == "$batch":
            if method != "POST":
                raise method_not_allowed(method)
            return batch.handle(
                ctx, request, self._dispatch, lambda extra: self._charge(request, extra)
            )
        if resource in UNBOUND_ACTIONS:
            if method != "POST":
                raise errors.no_http_resource(f"{ctx.origin}{request.raw_path}")
            return UNBOUND_ACTIONS[resource](ctx, request)
        match = _ENTITY.match(resource)
        if match is None:
            raise errors.resource_not_found(resource.split("/")[0])
        table = ctx.schema.by_set.get(match.group("set"))
        if table is None:
            raise errors.resource_not_found(match.group("set"))
        key, rest = match.group("key"), match.group("rest")
        if key is None:
            if rest is None:
                if method == "GET":
                    return reads.get_collection(ctx, request, table)
                if method == "POST":
                    return writes.post_collection(ctx, request, table)
                raise method_not_allowed(method)
            if rest == "$count" and method == "GET":
                return reads.get_count(ctx, request, table)
            action = rest.removeprefix(_ACTION)
            if rest.startswith(_ACTION) and action in actions.BULK_ACTIONS:
                if method != "POST":
                    raise errors.no_http_resource(f"{ctx.origin}{request.raw_path}")
                return actions.bulk(ctx, request, table, action)
            raise errors.resource_not_found(rest.split("/")[0])
        if method == "GET" and not table.supports("Retrieve"):
            raise writes.unsupported("Retrieve", table)
        found, key_values = keys.locate(ctx, table, key)
        creates = rest is None and method == "PATCH" and request.header("if-match") is None
        if found is None and not creates:
            raise keys.not_found(table)  # an alternate key that matches no record
        record_id = found or str(uuid.uuid4())
        if rest is None:
            if method == "GET":
                return reads.get_entity(ctx, request, table, record_id)
            if method == "PATCH":
                return writes.patch_entity(ctx, request, table, record_id, key_values)
            if method == "DELETE":
                return writes.delete_entity(ctx, request, table, record_id)
            raise method_not_allowed(method)
        return self._record_path(request, table, record_id, rest)

    def _record_path(self, request: Request, table: Table, record_id: str, rest: str) -> Response:
        """`<set>(<id>)/…`: a column, a navigation (or its `$ref`), or a bound action."""
        ctx, method = self.ctx, request.method
        handler = BOUND_ACTIONS.get((table.name, rest.removeprefix(_ACTION)))
        if handler is not None and rest.startswith(_ACTION):
            if method != "POST":
                raise errors.no_http_resource(f"{ctx.origin}{request.raw_path}")
            return handler(ctx, request, table, record_id)
        reference = _REF.match(rest)
        if reference is not None:
            return self._reference(request, table, record_id, reference)
        attribute = table.by_read_name.get(rest)
        if attribute is not None and attribute.name != table.primary_id:
            if method == "GET":
                return reads.get_property(ctx, table, record_id, attribute)
            if method in ("PUT", "DELETE") and not attribute.is_lookup:
                return writes.write_property(ctx, request, table, record_id, attribute)
            raise method_not_allowed(method)
        if rest in table.navigations:
            if method != "GET":
                raise method_not_allowed(method)
            lookup, targets = table.bindings[rest]
            current = ctx.store.record(table, record_id)
            if current is None:
                raise errors.does_not_exist(table.name, record_id)
            linked = current.get(lookup.read_name)
            kind = current.get(lookup.type_column) if lookup.type_column else targets[0].table
            related = ctx.schema.by_name.get(kind or "")
            if related is None or linked is None or kind not in {t.table for t in targets}:
                return Response(204)
            return reads.get_entity(ctx, request, related, linked)
        collection = ctx.schema.collection(table.name, rest)
        if collection is not None:
            if method == "PUT" and collection.table.is_party and table.name == "email":
                return writes.replace_parties(ctx, request, table, record_id, collection)
            if method == "PUT" and collection.table.is_party:
                raise errors.bad_query(
                    f"The collection '{rest}' cannot be replaced with PUT; PATCH the "
                    f"{table.name} with its '{rest}' array instead."
                )
            if method != "GET":
                raise method_not_allowed(method)
            if ctx.store.record(table, record_id) is None:
                raise errors.does_not_exist(table.name, record_id)
            attribute = collection.attribute
            sql = f't."{attribute.read_name}" = ?'
            if attribute.type_column:
                sql += f' AND t."{attribute.type_column}" = {sql_text(table.name)}'
            return reads.get_collection(ctx, request, collection.table, Compiled(sql, (record_id,)))
        raise errors.resource_not_found(rest.split("/")[0])

    def _reference(
        self, request: Request, table: Table, record_id: str, match: re.Match[str]
    ) -> Response:
        """`…/<nav>/$ref` (PUT, DELETE) and `…/<collection>[(<id>)]/$ref` (POST, DELETE)."""
        ctx, method = self.ctx, request.method
        navigation, key = match.group("nav"), match.group("key")
        if navigation in table.navigations and key is None:
            if method not in ("PUT", "DELETE"):
                raise method_not_allowed(method)
            return writes.write_reference(ctx, request, table, record_id, navigation)
        collection = ctx.schema.collection(table.name, navigation)
        if collection is None:
            raise errors.resource_not_found(navigation)
        if method == "POST" and key is None:
            return writes.associate(ctx, request, table, record_id, collection)
        if method != "DELETE":
            raise method_not_allowed(method)
        if key is None:
            target = dict(request.options).get("$id")
            if target is None:
                raise errors.bad_query("The $id query option is required to remove a link.")
            child = writes.parse_url(ctx, target, collection.table.name, "$id")[1]
        else:
            child, _ = keys.locate(ctx, collection.table, key)
            if child is None:
                raise keys.not_found(collection.table)
        return writes.disassociate(ctx, table, record_id, collection, child)
