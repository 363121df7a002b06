"""Bound actions: the bulk actions of §10 and QualifyLead (§14).

`<set>/Microsoft.Dynamics.CRM.CreateMultiple|UpdateMultiple|UpsertMultiple` take `Targets`, each
naming its entity type with `@odata.type`; a request is all-or-nothing (one transaction, the first
bad target fails it with the ordinary error). They serve lead, contact, account and opportunity;
activity tables answer 0x80040315 unless the U28 switch allows them, the other tables always.
`leads(<id>)/Microsoft.Dynamics.CRM.QualifyLead` creates the account, contact and opportunity
asked for, applies the documented side effects only (U37) and answers the created records as
typed entity references (U36). Both honour duplicate detection on request.
"""

from __future__ import annotations

import re
from typing import Any

from emulator import errors, messages
from emulator.context import Context
from emulator.schema import Table
from emulator.storage import WriteTx
from emulator.wire import Request, Response, json_response
from emulator.writes import (
    body_of,
    create,
    detects_duplicates,
    parse_key,
    update,
    upsert,
)

NAMESPACE = "Microsoft.Dynamics.CRM."
BULK_ACTIONS = ("CreateMultiple", "UpdateMultiple", "UpsertMultiple")
QUALIFY_FLAGS = ("CreateAccount", "CreateContact", "CreateOpportunity")
QUALIFY_PARAMETERS = frozenset(
    {*QUALIFY_FLAGS, "Status", "OpportunityCurrencyId", "OpportunityCustomerId",
     "SourceCampaignId", "ProcessInstanceId"}
)  # fmt: skip
_TARGET_ID = re.compile(r"^(?:.*/)?([A-Za-z_]\w*)\(([^)]*)\)$")


def _targets(ctx: Context, table: Table, action: str, body: object) -> list[dict[str, Any]]:
    if not isinstance(body, dict) or not isinstance(body.get("Targets"), list):
        raise errors.payload_error(f"The '{action}' action needs a 'Targets' array.")
    targets: list[dict[str, Any]] = body["Targets"]
    for target in targets:
        if not isinstance(target, dict):
            raise errors.payload_error("Each item of 'Targets' must be a JSON object.")
        kind = str(target.get("@odata.type", "")).lstrip("#")
        if not kind:
            raise errors.payload_error(
                "An item of 'Targets' has no '@odata.type'; each target must name its entity "
                f"type, e.g. '{table.type_name}'."
            )
        if kind != table.type_name:
            raise errors.payload_error(
                f"The entity type '{kind}' of an item of 'Targets' does not match the entity set "
                f"'{table.entity_set}' ('{table.type_name}')."
            )
    return targets


def _target_id(table: Table, target: dict[str, Any], action: str) -> str | None:
    """A target's primary key: from the body, or from `@odata.id` (`leads(<id>)`)."""
    if target.get(table.primary_id) is not None:
        return parse_key(table, str(target[table.primary_id]))
    odata_id = target.get("@odata.id")
    if odata_id is None:
        return None
    match = _TARGET_ID.match(str(odata_id))
    if match is None or match.group(1) != table.entity_set:
        raise errors.payload_error(f"The '@odata.id' of an item of 'Targets' of '{action}' "
                                   f"must name a record of '{table.entity_set}'.")  # fmt: skip
    return parse_key(table, match.group(2))


def bulk(ctx: Context, request: Request, table: Table, action: str) -> Response:
    """CreateMultiple → 200 with `Ids`; UpdateMultiple and UpsertMultiple → 204 (§10)."""
    if not messages.bulk_supported(ctx.config, table):
        raise errors.not_supported(
            f"The '{action}' method does not support entities of type '{table.name}'."
        )
    targets = _targets(ctx, table, action, body_of(request))
    detect = detects_duplicates(request)
    ids: list[str] = []
    with ctx.store.write(ctx.now()) as tx:
        for target in targets:
            fields = {k: v for k, v in target.items() if k not in ("@odata.type", "@odata.id")}
            record_id = _target_id(table, target, action)
            if action == "CreateMultiple":
                ids.append(create(ctx, tx, table, fields, record_id, detect_duplicates=detect))
            elif record_id is None:
                raise errors.invalid_argument(
                    f"Each item of 'Targets' of '{action}' must carry its '{table.primary_id}'."
                )
            elif action == "UpdateMultiple":
                current = tx.record(table, record_id)
                if current is None:
                    raise errors.does_not_exist(table.name, record_id)
                update(ctx, tx, table, record_id, fields, current, detect_duplicates=detect)
            else:
                upsert(ctx, tx, table, record_id, fields, detect_duplicates=detect)
    if action != "CreateMultiple":
        return Response(204)
    context = f"{ctx.api_root}$metadata#{NAMESPACE}CreateMultipleResponse"
    return json_response(200, {"@odata.context": context, "Ids": ids})


def _customer(ctx: Context, tx: WriteTx, value: object) -> tuple[Table, str]:
    """OpportunityCustomerId: `{"@odata.type": "Microsoft.Dynamics.CRM.contact", …}`."""
    kind = str(value.get("@odata.type", "")).lstrip("#") if isinstance(value, dict) else ""
    table = ctx.schema.by_name.get(kind.removeprefix(NAMESPACE))
    if not isinstance(value, dict) or table is None or table.name not in ("account", "contact"):
        raise errors.payload_error(
            "OpportunityCustomerId must be an account or a contact with its '@odata.type'."
        )
    record_id = parse_key(table, str(value.get(table.primary_id, "")))
    if tx.record(table, record_id) is None:
        raise errors.does_not_exist(table.name, record_id)
    return table, record_id


def _qualify_parameters(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise errors.payload_error("The request body must be a JSON object.")
    for name in body:
        if name not in QUALIFY_PARAMETERS:
            raise errors.payload_error(
                f"The parameter '{name}' in the request payload is not a valid parameter for "
                "the operation 'QualifyLead'."
            )
    for flag in QUALIFY_FLAGS:
        if not isinstance(body.get(flag), bool):
            raise errors.payload_error(
                f"The parameter '{flag}' of the operation 'QualifyLead' is required and must be "
                "a boolean."
            )
    status = body.get("Status", 3)
    if not isinstance(status, int) or isinstance(status, bool):
        raise errors.payload_error("The parameter 'Status' must be an integer.")
    return body


def qualify_lead(ctx: Context, request: Request, lead: Table, lead_id: str) -> Response:
    """§14 with U36/U37: create what is asked, qualify the lead, answer the created records."""
    parameters = _qualify_parameters(body_of(request))
    detect = detects_duplicates(request)
    schema = ctx.schema
    account, contact, opportunity = (
        schema.by_name[n] for n in ("account", "contact", "opportunity")
    )
    created: list[tuple[Table, str]] = []
    with ctx.store.write(ctx.now()) as tx:
        current = tx.record(lead, lead_id)
        if current is None:
            raise errors.does_not_exist(lead.name, lead_id)
        if current["statecode"] != 0:
            raise errors.invalid_argument("The lead is closed: only an open lead can be qualified.")
        status = parameters.get("Status", 3)
        option = next((o for o in lead.by_name["statuscode"].options if o.value == status), None)
        if option is None or option.state != 1:
            raise errors.invalid_argument(f"{status} is not a valid status code for state code 1.")
        customer = None
        if parameters.get("OpportunityCustomerId") is not None:
            customer = _customer(ctx, tx, parameters["OpportunityCustomerId"])
        lead_url = f"/leads({lead_id})"
        account_id = contact_id = opportunity_id = None
        if parameters["CreateAccount"] and current.get("companyname"):
            fields = {"name": current["companyname"], "telephone1": current.get("telephone1"),
                      "emailaddress1": current.get("emailaddress1")}  # fmt: skip
            account_id = create(ctx, tx, account, fields, detect_duplicates=detect)
            created.append((account, account_id))
        if parameters["CreateContact"]:
            fields = {
                name: current.get(name)
                for name in ("firstname", "lastname", "emailaddress1", "telephone1",
                             "mobilephone", "jobtitle")
            }  # fmt: skip
            fields["originatingleadid@odata.bind"] = lead_url
            if account_id is not None:
                fields["parentcustomerid_account@odata.bind"] = f"/accounts({account_id})"
            contact_id = create(ctx, tx, contact, fields, detect_duplicates=detect)
            created.append((contact, contact_id))
        if parameters["CreateOpportunity"]:
            fields = {
                "name": current.get("subject") or current.get("fullname"),
                "originatingleadid@odata.bind": lead_url,
            }
            chosen = customer or (
                (account, account_id)
                if account_id
                else (contact, contact_id)
                if contact_id
                else None
            )
            if chosen is not None and chosen[1] is not None:
                kind, chosen_id = chosen
                fields[f"customerid_{kind.name}@odata.bind"] = f"/{kind.entity_set}({chosen_id})"
            if contact_id is not None:
                fields["parentcontactid@odata.bind"] = f"/contacts({contact_id})"
            if account_id is not None:
                fields["parentaccountid@odata.bind"] = f"/accounts({account_id})"
            opportunity_id = create(ctx, tx, opportunity, fields)
            created.append((opportunity, opportunity_id))
        values: dict[str, Any] = {
            "statecode": 1, "statuscode": status, "modifiedon": tx.now,
            "_modifiedby_value": ctx.caller_id,
        }  # fmt: skip
        if opportunity_id is not None:
            values["_qualifyingopportunityid_value"] = opportunity_id
        if ctx.config.qualify_links_lead:
            if contact_id is not None:
                values["_parentcontactid_value"] = contact_id
            if account_id is not None:
                values["_parentaccountid_value"] = account_id
        tx.update(lead, lead_id, values)
    items = [
        {"@odata.type": f"#{table.type_name}", table.primary_id: record_id}
        for table, record_id in created
    ]
    context = f"{ctx.api_root}$metadata#Collection({NAMESPACE}crmbaseentity)"
    return json_response(200, {"@odata.context": context, "value": items})
