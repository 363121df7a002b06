"""Processes: ExecuteWorkflow and its system jobs, the new_RouteLead custom action, invocations."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.emulator import batch_wire as bw
from tests.emulator.conftest import Api, error

ANNOTATIONS = 'odata.include-annotations="*"'


def workflow(web: Api, name: str) -> str:
    return next(i for i, w in web.rows("workflow").items() if w["name"] == name)


def first(web: Api, table: str, **where: Any) -> str:
    return next(i for i, r in web.rows(table).items() if all(r[k] == v for k, v in where.items()))


def execute(web: Api, workflow_id: str, body: Any) -> requests.Response:
    return web.post(f"workflows({workflow_id})/Microsoft.Dynamics.CRM.ExecuteWorkflow", body)


def test_the_org_has_on_demand_workflows_a_draft_and_an_action(web: Api) -> None:
    processes = web.get(
        "workflows?$select=name,category,type,ondemand,primaryentity,statecode,uniquename"
        "&$orderby=name",
        ANNOTATIONS,
    ).json()["value"]
    assert [
        (p["name"], p["category"], p["type"], p["ondemand"], p["primaryentity"], p["statecode"])
        for p in processes
    ] == [
        ("Contact welcome", 0, 1, True, "contact", 1),
        ("Lead nurture follow-up", 0, 1, True, "lead", 1),
        ("Lead re-engagement (draft)", 0, 1, True, "lead", 0),
        ("Route lead", 3, 1, False, "lead", 1),
    ]
    assert processes[0]["statecode@OData.Community.Display.V1.FormattedValue"] == "Activated"
    assert processes[3]["uniquename"] == "new_RouteLead"


def test_execute_workflow_creates_a_waiting_system_job_regarding_the_record(web: Api) -> None:
    workflow_id = workflow(web, "Lead nurture follow-up")
    lead_id = first(web, "lead", statecode=0)
    response = execute(web, workflow_id, {"EntityId": lead_id})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["@odata.context"] == (
        f"{web.emulator.api_url}/$metadata#Microsoft.Dynamics.CRM.ExecuteWorkflowResponse"
    )
    job = web.get(
        f"asyncoperations({body['Id']})?$select=name,operationtype,statecode,statuscode,"
        "_regardingobjectid_value,_workflowactivationid_value,createdon,primaryentitytype",
        ANNOTATIONS,
    ).json()
    assert (job["name"], job["operationtype"], job["primaryentitytype"]) == (
        "Lead nurture follow-up",
        10,
        "lead",
    )
    assert (job["statecode"], job["statuscode"]) == (0, 0)
    assert job["statuscode@OData.Community.Display.V1.FormattedValue"] == "Waiting For Resources"
    assert job["operationtype@OData.Community.Display.V1.FormattedValue"] == "Workflow"
    assert job["_regardingobjectid_value"] == lead_id
    assert job["_regardingobjectid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "lead"
    assert job["_workflowactivationid_value"] == workflow_id
    assert job["createdon"] is not None
    (entry,) = web.admin("GET", "/invocations")["invocations"]
    assert entry == {
        "kind": "workflow",
        "name": "Lead nurture follow-up",
        "workflowid": workflow_id,
        "entity": "lead",
        "entityid": lead_id,
        "asyncoperationid": body["Id"],
        "at": entry["at"],
    }


def test_a_contact_workflow_runs_on_a_contact(web: Api) -> None:
    contact_id = first(web, "contact", statecode=0)
    response = execute(web, workflow(web, "Contact welcome"), {"EntityId": contact_id})
    assert response.status_code == 200
    job = web.rows("asyncoperation")[response.json()["Id"]]
    assert job["_regardingobjectid_value"] == contact_id


def test_system_jobs_can_be_moved_on_through_the_admin_endpoint(web: Api) -> None:
    lead_id = first(web, "lead", statecode=0)
    job_id = execute(web, workflow(web, "Lead nurture follow-up"), {"EntityId": lead_id}).json()[
        "Id"
    ]
    web.admin("PATCH", f"/tables/asyncoperation/{job_id}", {"statecode": 3, "statuscode": 30})
    done = web.get("asyncoperations?$select=statuscode&$filter=statecode eq 3").json()["value"]
    assert [j["asyncoperationid"] for j in done] == [job_id]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "Lead re-engagement (draft)",
            "The workflow 'Lead re-engagement (draft)' is not activated: only an activated "
            "workflow can be run.",
        ),
        (
            "Route lead",
            "The process 'Route lead' is not a workflow definition: only classic workflows run "
            "with ExecuteWorkflow.",
        ),
    ],
)
def test_execute_workflow_refuses_drafts_and_actions(web: Api, name: str, message: str) -> None:
    lead_id = first(web, "lead", statecode=0)
    assert error(execute(web, workflow(web, name), {"EntityId": lead_id})) == (
        400,
        "0x80040203",
        message,
    )
    assert web.rows("asyncoperation") == {}
    assert web.admin("GET", "/invocations")["invocations"] == []


def test_execute_workflow_refuses_a_workflow_that_is_not_on_demand(web: Api) -> None:
    workflow_id = workflow(web, "Lead nurture follow-up")
    web.admin("PATCH", f"/tables/workflow/{workflow_id}", {"ondemand": False})
    lead_id = first(web, "lead", statecode=0)
    assert error(execute(web, workflow_id, {"EntityId": lead_id})) == (
        400,
        "0x80040203",
        "The workflow 'Lead nurture follow-up' cannot be run on demand.",
    )


def test_a_deactivated_workflow_stops_running(web: Api) -> None:
    workflow_id = workflow(web, "Lead nurture follow-up")
    assert web.patch(f"workflows({workflow_id})", {"statecode": 0, "statuscode": 1}).ok
    lead_id = first(web, "lead", statecode=0)
    assert error(execute(web, workflow_id, {"EntityId": lead_id}))[:2] == (400, "0x80040203")


def test_execute_workflow_checks_the_entity_id(web: Api) -> None:
    workflow_id = workflow(web, "Lead nurture follow-up")
    contact_id = first(web, "contact", statecode=0)
    assert error(execute(web, workflow_id, {"EntityId": contact_id})) == (
        400,
        "0x80040203",
        f"The record {contact_id} is a contact: this workflow runs on lead records.",
    )
    missing = "00000000-0000-0000-0000-0000000000a1"
    assert error(execute(web, workflow_id, {"EntityId": missing})) == (
        404,
        "0x80040217",
        f"lead With Id = {missing} Does Not Exist",
    )
    assert error(execute(web, workflow_id, {})) == (
        400,
        "0x80040203",
        "The parameter 'EntityId' of ExecuteWorkflow is required.",
    )
    assert error(execute(web, workflow_id, {"EntityId": "not-a-guid"})) == (
        400,
        "0x80048d19",
        "Cannot convert the literal 'not-a-guid' to the expected type 'Edm.Guid'.",
    )
    assert error(execute(web, workflow_id, {"EntityId": missing, "Target": 1}))[2] == (
        "The parameter 'Target' in the request payload is not a valid parameter for the "
        "operation 'ExecuteWorkflow'."
    )
    assert error(execute(web, missing, {"EntityId": contact_id})) == (
        404,
        "0x80040217",
        f"workflow With Id = {missing} Does Not Exist",
    )
    assert web.rows("asyncoperation") == {}


def test_the_route_lead_action_records_each_invocation(web: Api) -> None:
    lead_id = first(web, "lead", statecode=0)
    url = f"leads({lead_id})/Microsoft.Dynamics.CRM.new_RouteLead"
    assert web.post(url, {"Reason": "Enterprise"}).status_code == 204
    assert web.post(url).status_code == 204
    entries = web.admin("GET", "/invocations")["invocations"]
    assert [(e["kind"], e["name"], e["entityid"], e["parameters"]) for e in entries] == [
        ("action", "new_RouteLead", lead_id, {"Reason": "Enterprise"}),
        ("action", "new_RouteLead", lead_id, {"Reason": None}),
    ]
    web.admin("DELETE", "/invocations")
    assert web.admin("GET", "/invocations")["invocations"] == []


def test_the_route_lead_action_refuses_bad_calls(web: Api) -> None:
    lead_id = first(web, "lead", statecode=0)
    url = f"leads({lead_id})/Microsoft.Dynamics.CRM.new_RouteLead"
    assert error(web.post(url, {"Reason": 3}))[2] == (
        "The parameter 'Reason' of the operation 'new_RouteLead' must be of type 'Edm.String'."
    )
    assert error(web.post(url, {"Queue": "x"}))[2] == (
        "The parameter 'Queue' in the request payload is not a valid parameter for the "
        "operation 'new_RouteLead'."
    )
    missing = "00000000-0000-0000-0000-0000000000a1"
    assert error(web.post(f"leads({missing})/Microsoft.Dynamics.CRM.new_RouteLead")) == (
        404,
        "0x80040217",
        f"lead With Id = {missing} Does Not Exist",
    )
    contact_id = first(web, "contact", statecode=0)
    on_contact = web.post(f"contacts({contact_id})/Microsoft.Dynamics.CRM.new_RouteLead")
    assert error(on_contact) == (
        404,
        "0x8006088a",
        "Resource not found for the segment 'Microsoft.Dynamics.CRM.new_RouteLead'.",
    )
    action = workflow(web, "Route lead")
    web.admin("PATCH", f"/tables/workflow/{action}", {"statecode": 0, "statuscode": 1})
    assert error(web.post(url)) == (
        400,
        "0x80040203",
        "The action 'new_RouteLead' is not activated.",
    )
    assert web.admin("GET", "/invocations")["invocations"] == []


def test_workflows_and_actions_run_inside_a_batch(web: Api) -> None:
    lead_id = first(web, "lead", statecode=0)
    workflow_id = workflow(web, "Lead nurture follow-up")
    boundary = "batch_processes"
    payload = bw.body(
        boundary,
        bw.op(
            "POST",
            f"/api/data/v9.2/workflows({workflow_id})/Microsoft.Dynamics.CRM.ExecuteWorkflow",
            {"EntityId": lead_id},
        ),
        bw.op(
            "POST",
            f"/api/data/v9.2/leads({lead_id})/Microsoft.Dynamics.CRM.new_RouteLead",
            {"Reason": "batch"},
        ),
    )
    response = web.session.post(
        web.url("$batch"),
        data=payload,
        headers={"Content-Type": f"multipart/mixed; boundary={boundary}"},
        timeout=30,
    )
    job, action = bw.parse(response)
    assert (job.status, action.status) == (200, 204)
    assert job.json()["Id"] in web.rows("asyncoperation")
    kinds = [e["kind"] for e in web.admin("GET", "/invocations")["invocations"]]
    assert kinds == ["workflow", "action"]
