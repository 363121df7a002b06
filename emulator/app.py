"""Routing: identity endpoints, the Web API under `/api/data/v9.2/`, and the admin endpoint.

For a Web API call the order is: bearer check (401 + challenge), fault decision (which may answer
429/503/504, delay, or drop the connection before or after executing), dispatch by URL shape,
then the headers every Dataverse response carries (`OData-Version`, `REQ_ID`,
`x-ms-service-request-id`, rate-limit and parallelism hints). Each API call is recorded in the
request log the admin endpoint serves. Identity and admin calls are never faulted nor logged.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from emulator import errors, metadata, reads, writes
from emulator.admin import Admin
from emulator.context import Context
from emulator.faults import FaultPlan
from emulator.identity import Identity
from emulator.wire import Request, Response, error_response, json_response, new_guid

API_PREFIX = "/api/data/v9.2"
ADMIN_PREFIX = "/_emulator"
LOG_LIMIT = 50_000
_ENTITY = re.compile(r"^(?P<set>[A-Za-z_]\w*)(?:\((?P<key>[^)]*)\))?(?:/(?P<rest>.+))?$")
_IDENTITY = re.compile(
    r"^/(?P<tenant>[^/]+)/(?:(?P<discovery>(?:v2\.0/)?\.well-known/openid-configuration)"
    r"|(?P<token>oauth2/v2\.0/token)|(?P<keys>discovery/v2\.0/keys))$"
)
_SERVICE_HEADERS = (
    ("OData-Version", "4.0"),
    ("x-ms-ratelimit-burst-remaining-xrm-requests", "7999"),
    ("x-ms-ratelimit-time-remaining-xrm-requests", "1,200.00"),
    ("x-ms-dop-hint", "4"),
)

logger = logging.getLogger("emulator")


@dataclass(frozen=True)
class SeedOptions:
    """What `POST /_emulator/reset` reseeds with unless the body says otherwise."""

    seed: int
    leads: int
    contacts: int


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

    def _api(self, request: Request) -> Response:
        started = time.perf_counter()
        request_id = new_guid()
        fault_kind: str | None = None
        if not self.identity.authorized(request.header("authorization")):
            response = self.identity.challenge()
        else:
            resource = request.path[len(API_PREFIX) + 1 :]
            fault = self.faults.decide(request.method, resource)
            fault_kind = fault.kind if fault else None
            if fault is None or fault.kind in ("slow", "commit-drop"):
                if fault is not None and fault.kind == "slow":
                    time.sleep(fault.rule.ms / 1000)
                response = self._dispatch(request, resource)
                if fault is not None and fault.kind == "commit-drop":
                    response = response.dropped()
            elif fault.kind == "drop":
                response = Response(0, drop=True)
            else:
                response = fault.response()
        response = response.with_headers(
            *_SERVICE_HEADERS, ("REQ_ID", request_id), ("x-ms-service-request-id", request_id)
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
                "ms": elapsed,
                "prefer": request.header("prefer"),
                "if_match": request.header("if-match"),
                "if_none_match": request.header("if-none-match"),
                "request_id": request_id,
            }
        )
        return response

    def _dispatch(self, request: Request, resource: str) -> Response:
        try:
            return self._route(request, resource)
        except errors.ApiError as error:
            return error_response(error, zero_property_codes=self.ctx.config.zero_property_codes)
        except Exception:
            logger.exception("unexpected error serving %s %s", request.method, request.path)
            return error_response(errors.unexpected())

    def _route(self, request: Request, resource: str) -> Response:
        ctx, method = self.ctx, request.method
        if resource in ("", "$metadata", "WhoAmI", "WhoAmI()") or resource.startswith(
            "EntityDefinitions"
        ):
            if method != "GET":
                if resource.startswith("WhoAmI"):
                    raise errors.no_http_resource(f"{ctx.origin}{request.raw_path}")
                raise method_not_allowed(method)
            if resource == "":
                return metadata.service_document(ctx)
            if resource == "$metadata":
                return metadata.csdl(ctx, ("annotations", "true") in request.options)
            if resource.startswith("WhoAmI"):
                return metadata.who_am_i(ctx)
            return metadata.entity_definitions(ctx, request, resource)
        if resource == "$batch":
            raise errors.not_implemented("$batch")
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
            if rest.startswith("Microsoft.Dynamics.CRM."):
                raise errors.not_implemented(f"The action '{rest}'")
            raise errors.resource_not_found(rest.split("/")[0])
        record_id = writes.parse_key(table, key)
        if rest is None:
            if method == "GET":
                return reads.get_entity(ctx, request, table, record_id)
            if method == "PATCH":
                return writes.patch_entity(ctx, request, table, record_id)
            if method == "DELETE":
                return writes.delete_entity(ctx, request, table, record_id)
            raise method_not_allowed(method)
        segment = rest.split("/")[0]
        known = (
            segment in table.by_read_name
            or segment in table.navigations
            or ctx.schema.collection(table.name, segment) is not None
            or segment.startswith("Microsoft.Dynamics.CRM.")
        )
        if known:
            raise errors.not_implemented(f"The path segment '{segment}' under a record")
        raise errors.resource_not_found(segment)
