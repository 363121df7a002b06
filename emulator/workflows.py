"""Processes: `workflows(<id>)/Microsoft.Dynamics.CRM.ExecuteWorkflow` and the custom action
`leads(<id>)/Microsoft.Dynamics.CRM.new_RouteLead`.

ExecuteWorkflow runs an activated, on-demand classic workflow (category 0, type 1) on a record of
its primary table: it creates the system job (`asyncoperation`, operation type 10 Workflow, state
0 Ready / status 0 Waiting For Resources, regarding the record, `workflowactivationid` the
workflow) and answers `ExecuteWorkflowResponse {"Id": <system job>}`. Jobs are not run: tests move
them on with the admin endpoint. `new_RouteLead` is a custom action (a category 3 process) bound to
lead with an optional string parameter `Reason`; it changes nothing and answers 204. Both are
listed by `GET /_emulator/invocations`. Refusals use code 0x80040203 and emulator wording (the
reference documents none).
"""

from __future__ import annotations

import re

from emulator import errors
from emulator.context import Context
from emulator.schema import Table
from emulator.storage import WriteTx
from emulator.wire import Request, Response, json_response
from emulator.writes import action_parameters, insert_system

NAMESPACE = "Microsoft.Dynamics.CRM."
CLASSIC_WORKFLOW, ACTION = 0, 3
DEFINITION = 1
ACTIVATED = 1
WORKFLOW_OPERATION = 10
ROUTE_LEAD = "new_RouteLead"
GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def _entity_id(value: object) -> str:
    """`EntityId` (Edm.Guid), lower case."""
    if isinstance(value, str) and GUID.match(value):
        return value.lower()
    raise errors.payload_error(
        f"Cannot convert the literal '{value}' to the expected type 'Edm.Guid'."
    )


def _find_record(ctx: Context, tx: WriteTx, entity: Table, record_id: str) -> None:
    """The record must be one of `entity`; one of another table is named as such."""
    if tx.record(entity, record_id) is not None:
        return
    for other in ctx.schema.tables:
        if other is not entity and other.supports("Retrieve") and tx.record(other, record_id):
            raise errors.invalid_argument(
                f"The record {record_id} is a {other.name}: this workflow runs on {entity.name} "
                "records."
            )
    raise errors.does_not_exist(entity.name, record_id)


def execute_workflow(ctx: Context, request: Request, table: Table, workflow_id: str) -> Response:
    """ExecuteWorkflow: a system job for the workflow on `EntityId`."""
    body = action_parameters(request, "ExecuteWorkflow", {"EntityId": None, "InputArguments": None})
    if body.get("EntityId") is None:
        raise errors.invalid_argument("The parameter 'EntityId' of ExecuteWorkflow is required.")
    jobs = ctx.schema.by_name["asyncoperation"]
    with ctx.store.write(ctx.now()) as tx:
        workflow = tx.record(table, workflow_id)
        if workflow is None:
            raise errors.does_not_exist(table.name, workflow_id)
        entity_id = _entity_id(body["EntityId"])
        if (workflow["category"], workflow["type"]) != (CLASSIC_WORKFLOW, DEFINITION):
            raise errors.invalid_argument(
                f"The process '{workflow['name']}' is not a workflow definition: only classic "
                "workflows run with ExecuteWorkflow."
            )
        if workflow["statecode"] != ACTIVATED:
            raise errors.invalid_argument(
                f"The workflow '{workflow['name']}' is not activated: only an activated workflow "
                "can be run."
            )
        if not workflow["ondemand"]:
            raise errors.invalid_argument(
                f"The workflow '{workflow['name']}' cannot be run on demand."
            )
        entity = ctx.schema.by_name.get(workflow["primaryentity"] or "")
        if entity is None:
            raise errors.invalid_argument(
                f"The workflow '{workflow['name']}' runs on '{workflow['primaryentity']}', "
                "which the emulator does not serve."
            )
        _find_record(ctx, tx, entity, entity_id)
        regarding = jobs.by_name["regardingobjectid"]
        served = {t.table for t in regarding.targets}
        job_id = insert_system(ctx, tx, jobs, {
            "name": workflow["name"], "operationtype": WORKFLOW_OPERATION,
            "messagename": "ExecuteWorkflow", "primaryentitytype": entity.name,
            "_regardingobjectid_value": entity_id if entity.name in served else None,
            "regardingobjectidtype": entity.name if entity.name in served else None,
            "_workflowactivationid_value": workflow_id,
        })  # fmt: skip
    ctx.invocations.add({
        "kind": "workflow", "name": workflow["name"], "workflowid": workflow_id,
        "entity": entity.name, "entityid": entity_id, "asyncoperationid": job_id,
        "at": ctx.now(),
    })  # fmt: skip
    context = f"{ctx.api_root}$metadata#{NAMESPACE}ExecuteWorkflowResponse"
    return json_response(200, {"@odata.context": context, "Id": job_id})


def route_lead(ctx: Context, request: Request, table: Table, lead_id: str) -> Response:
    """The custom action `new_RouteLead` bound to lead: `Reason` (Edm.String, optional)."""
    reason = action_parameters(request, ROUTE_LEAD, {"Reason": str}).get("Reason")
    with ctx.store.write(ctx.now()) as tx:
        if tx.record(table, lead_id) is None:
            raise errors.does_not_exist(table.name, lead_id)
        action = tx.rows(
            'SELECT statecode FROM "workflow" WHERE uniquename = ? AND category = ?',
            (ROUTE_LEAD, ACTION),
        )
        if not action or action[0][0] != ACTIVATED:
            raise errors.invalid_argument(f"The action '{ROUTE_LEAD}' is not activated.")
    ctx.invocations.add({
        "kind": "action", "name": ROUTE_LEAD, "entity": table.name, "entityid": lead_id,
        "parameters": {"Reason": reason}, "at": ctx.now(),
    })  # fmt: skip
    return Response(204)
