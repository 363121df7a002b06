"""An action step for one member: the outbox intents that do it, with deterministic ids.

The record an action creates gets the id uuid5(journey, version, contact, entry, step), so a
retry, a re-run after a crash, or an overlapping run finds it instead of creating another. An
e-mail is two intents: its create (a draft, with its sender and recipient parties), then
`SendEmail`, guarded by a re-read (only a draft is sent). Phone calls, tasks and appointments go
to the owner, regarding the member's lead (its contact when it has none), with due times placed
in business hours. A lead is created for the contact only when it has no open lead with the
same topic (its id comes from the contact and the topic, so two journeys share it); updates,
qualification and workflows act on the member's lead or contact.

`Act` carries the intents, the record to remember for the member, and a summary of what will be
written (table, id, owner, regarding, due, subject) that the dry run lists.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from connector.clock import stamp
from connector.keys import match_key
from connector.mapping.journeys import (
    AppointmentAction,
    CreateLeadAction,
    EmailAction,
    FixedUser,
    Journey,
    PhonecallAction,
    QualifyLeadAction,
    RoundRobin,
    RunWorkflowAction,
    Sender,
    Step,
    TaskAction,
    UpdateAction,
)
from connector.outbox import Guard, Intent
from jobs.journeys.calendar import Calendar
from jobs.journeys.templates import render

JOB = "journeys"
JOURNEY_NAMESPACE = uuid.UUID("3e1f8a52-9c4b-4d7e-8f26-0b5a7c9d1e42")
SENDER, TO, REQUIRED, ORGANIZER = 1, 2, 5, 7  # activity party participation types (§8.5)
GUARD_MARGIN = timedelta(minutes=10)  # clock skew allowed between dvconnect and Dataverse


class ActionProblem(ValueError):
    """An action that cannot be made for this member (the member fails with this message)."""


@dataclass(frozen=True)
class Owner:
    """Who gets an activity: a user or a team."""

    id: str
    table: str  # systemuser or team

    @property
    def bind(self) -> str:
        return f"/{'teams' if self.table == 'team' else 'systemusers'}({self.id})"


@dataclass(frozen=True)
class Target:
    """One member as actions see it: its ids, its synced rows, its owner."""

    journey: Journey
    version: int
    member_id: int
    contactid: str
    entry: int
    leadid: str | None
    contact: dict[str, Any]
    lead: dict[str, Any]
    owner: Owner | None
    owner_row: dict[str, Any]
    last_intent: str | None = None  # the member's latest write: its next one waits for it

    @property
    def key(self) -> str:
        return f"{self.contactid}/{self.entry}"

    def record_id(self, step: Step) -> str:
        name = f"{self.journey.name}/{self.version}/{self.contactid}/{self.entry}/{step.id}"
        return str(uuid.uuid5(JOURNEY_NAMESPACE, name))

    def intent_key(self, step: Step, part: str) -> str:
        """The outbox key of one write of this member at `step` (local to this store)."""
        return f"{JOB}/{self.member_id}/{step.id}/{part}"

    def values(self) -> dict[str, Any]:
        return {"contact": self.contact, "lead": self.lead, "owner": self.owner_row,
                "journey": {"name": self.journey.name}}  # fmt: skip

    def regarding(self, activity: str) -> tuple[str, str]:
        """The regarding bind of an activity: the lead, or the contact without one."""
        if self.leadid:
            return f"regardingobjectid_lead_{activity}@odata.bind", f"/leads({self.leadid})"
        return f"regardingobjectid_contact_{activity}@odata.bind", f"/contacts({self.contactid})"


@dataclass
class Act:
    """What an action writes for one member."""

    intents: list[Intent] = field(default_factory=list)
    table: str = ""
    record_id: str | None = None
    reused: bool = False  # an existing record serves (no create)
    summary: dict[str, Any] = field(default_factory=dict)


def owner_for(journey: Journey, member_key: str, contact: dict[str, Any],
              lead: dict[str, Any]) -> Owner | None:  # fmt: skip
    """The owner of the member's activities, by the journey's `owner` rule."""
    rule = journey.owner
    if rule == "lead_owner" and lead.get("_ownerid_value"):
        return Owner(lead["_ownerid_value"], lead.get("owneridtype") or "systemuser")
    if rule in ("lead_owner", "contact_owner"):
        owner = contact.get("_ownerid_value")
        return Owner(owner, contact.get("owneridtype") or "systemuser") if owner else None
    if isinstance(rule, FixedUser):
        return Owner(rule.user, "systemuser")
    assert isinstance(rule, RoundRobin)
    users = rule.round_robin
    digest = hashlib.sha256(f"{journey.name}/{member_key}/owner".encode()).digest()
    return Owner(users[int.from_bytes(digest[:8], "big") % len(users)], "systemuser")


def act(target: Target, step: Step, now: datetime, calendar: Calendar,
        open_leads: list[dict[str, Any]]) -> Act:  # fmt: skip
    """The writes of `step` for `target` at `now` (`open_leads`: the contact's open leads)."""
    action = step.action()
    match action:
        case EmailAction():
            return _email(target, step, action)
        case PhonecallAction():
            return _phonecall(target, step, action, now, calendar)
        case TaskAction():
            return _task(target, step, action, now, calendar)
        case AppointmentAction():
            return _appointment(target, step, action, now, calendar)
        case CreateLeadAction():
            return _create_lead(target, step, action, open_leads)
        case UpdateAction():
            return _update(target, step, action)
        case QualifyLeadAction():
            return _qualify(target, step, action)
        case RunWorkflowAction():
            return _workflow(target, step, action, now)
    raise AssertionError(f"not an action: {step.kind}")


def _owned(target: Target, body: dict[str, Any]) -> dict[str, Any]:
    if target.owner is not None:
        body["ownerid@odata.bind"] = target.owner.bind
    return body


def _create(target: Target, step: Step, table: str, body: dict[str, Any],
            summary: dict[str, Any]) -> Act:  # fmt: skip
    record_id = target.record_id(step)
    intent = Intent(
        target.intent_key(step, "create"), JOB, "create", table, f"{table}s", "activityid",
        record_id, body,
    )  # fmt: skip
    regarding = f"lead {target.leadid}" if target.leadid else f"contact {target.contactid}"
    owner = target.owner.id if target.owner else None
    shown = {"table": table, "id": record_id, "owner": owner, "regarding": regarding, **summary}
    return Act([intent], table, record_id, summary=shown)


def _email(target: Target, step: Step, action: EmailAction) -> Act:
    values = target.values()
    subject = render(action.subject, values)
    body = render(action.body, values, html=True)
    sender = action.sender
    if isinstance(sender, Sender):
        party = (
            ("partyid_queue@odata.bind", f"/queues({sender.queue})")
            if sender.queue
            else ("partyid_systemuser@odata.bind", f"/systemusers({sender.user})")
        )
    elif target.owner is not None and target.owner.table == "systemuser":
        party = ("partyid_systemuser@odata.bind", f"/systemusers({target.owner.id})")
    else:
        raise ActionProblem("the owner is not a user: an e-mail needs a user or queue as sender "
                            "(set email.from)")  # fmt: skip
    regarding = target.regarding("email")
    created = _create(target, step, "email", _owned(target, {
        "subject": subject,
        "description": body,
        "directioncode": True,
        "followemailuserpreference": True,  # ask for opens and clicks to be followed (§18.6)
        regarding[0]: regarding[1],
        "email_activity_parties": [
            {party[0]: party[1], "participationtypemask": SENDER},
            {"partyid_contact@odata.bind": f"/contacts({target.contactid})",
             "participationtypemask": TO},
        ],
    }), {"subject": subject, "due": None})  # fmt: skip
    email_id = created.record_id
    assert email_id is not None
    created.intents.append(
        Intent(
            target.intent_key(step, "send"), JOB, "action", "email", "emails", "activityid",
            email_id, {"IssueSend": action.delivery == "dynamics"}, action="SendEmail",
            after=created.intents[0].key,
            guard=Guard("emails", "activityid", "activityid", email_id, "statuscode ne 1"),
        )
    )  # fmt: skip
    return created


def _phonecall(target: Target, step: Step, action: PhonecallAction, now: datetime,
               calendar: Calendar) -> Act:  # fmt: skip
    values = target.values()
    subject = render(action.subject, values)
    due = calendar.place(calendar.add(now, action.due))
    number = target.contact.get(action.phone) or target.contact.get("mobilephone")
    parties: list[dict[str, Any]] = [
        {"partyid_contact@odata.bind": f"/contacts({target.contactid})",
         "participationtypemask": TO}]  # fmt: skip
    if target.owner is not None and target.owner.table == "systemuser":
        parties.insert(0, {"partyid_systemuser@odata.bind": f"/systemusers({target.owner.id})",
                           "participationtypemask": SENDER})  # fmt: skip
    regarding = target.regarding("phonecall")
    body = {
        "subject": subject,
        "description": render(action.description, values),
        "directioncode": True,
        "scheduledend": stamp(due),
        regarding[0]: regarding[1],
        "phonecall_activity_parties": parties,
    }
    if number:
        body["phonenumber"] = number
    return _create(target, step, "phonecall", _owned(target, body),
                   {"subject": subject, "due": stamp(due)})  # fmt: skip


def _task(target: Target, step: Step, action: TaskAction, now: datetime,
          calendar: Calendar) -> Act:  # fmt: skip
    values = target.values()
    subject = render(action.subject, values)
    due = calendar.place(calendar.add(now, action.due))
    regarding = target.regarding("task")
    body = {
        "subject": subject,
        "description": render(action.description, values),
        "scheduledend": stamp(due),
        "prioritycode": action.priority,
        regarding[0]: regarding[1],
    }
    return _create(target, step, "task", _owned(target, body),
                   {"subject": subject, "due": stamp(due)})  # fmt: skip


def _appointment(target: Target, step: Step, action: AppointmentAction, now: datetime,
                 calendar: Calendar) -> Act:  # fmt: skip
    values = target.values()
    subject = render(action.subject, values)
    start = calendar.place(calendar.add(now, action.start))
    parties: list[dict[str, Any]] = [
        {"partyid_contact@odata.bind": f"/contacts({target.contactid})",
         "participationtypemask": REQUIRED}]  # fmt: skip
    if target.owner is not None and target.owner.table == "systemuser":
        parties.insert(0, {"partyid_systemuser@odata.bind": f"/systemusers({target.owner.id})",
                           "participationtypemask": ORGANIZER})  # fmt: skip
    regarding = target.regarding("appointment")
    body = {
        "subject": subject,
        "description": render(action.description, values),
        "location": render(action.location, values),
        "scheduledstart": stamp(start),
        "scheduledend": stamp(start + timedelta(minutes=action.minutes)),
        regarding[0]: regarding[1],
        "appointment_activity_parties": parties,
    }
    return _create(target, step, "appointment", _owned(target, body),
                   {"subject": subject, "due": stamp(start)})  # fmt: skip


def lead_id_for(contactid: str, topic: str, attempt: int = 1) -> str:
    """The id of the lead made for a contact and a topic (`attempt` > 1: after a closed one)."""
    name = f"lead/{contactid}/{match_key(topic, 'keep')}" + (f"/{attempt}" if attempt > 1 else "")
    return str(uuid.uuid5(JOURNEY_NAMESPACE, name))


def _create_lead(target: Target, step: Step, action: CreateLeadAction,
                 open_leads: list[dict[str, Any]]) -> Act:  # fmt: skip
    values = target.values()
    topic = render(action.subject, values)
    for lead in open_leads:
        if lead.get("statecode") == 0 and match_key(lead.get("subject"), "keep") == match_key(
            topic, "keep"
        ):
            return Act([], "lead", lead["leadid"], reused=True, summary={
                "table": "lead", "id": lead["leadid"], "subject": topic,
                "regarding": f"contact {target.contactid}", "reused": True})  # fmt: skip
    closed = {lead["leadid"] for lead in open_leads if lead.get("statecode") != 0}
    attempt = 1
    while lead_id_for(target.contactid, topic, attempt) in closed:
        attempt += 1
    lead_id = lead_id_for(target.contactid, topic, attempt)
    body: dict[str, Any] = {
        "subject": topic,
        "parentcontactid@odata.bind": f"/contacts({target.contactid})",
        "customerid_contact@odata.bind": f"/contacts({target.contactid})",
    }
    for column in ("firstname", "lastname", "emailaddress1", "telephone1"):
        if target.contact.get(column):
            body[column] = target.contact[column]
    body.update({column: render(text, values) for column, text in action.values.items()})
    intent = Intent(target.intent_key(step, "create"), JOB, "create", "lead", "leads", "leadid",
                    lead_id, _owned(target, body))  # fmt: skip
    owner = target.owner.id if target.owner else None
    return Act([intent], "lead", lead_id, summary={
        "table": "lead", "id": lead_id, "owner": owner, "subject": topic,
        "regarding": f"contact {target.contactid}"})  # fmt: skip


def _update(target: Target, step: Step, action: UpdateAction) -> Act:
    record = target.leadid if action.table == "lead" else target.contactid
    if record is None:
        raise ActionProblem("the member has no lead to update")
    body = _rendered(action.values, target.values())
    set_name = "leads" if action.table == "lead" else "contacts"
    intent = Intent(target.intent_key(step, "update"), JOB, "update", action.table, set_name,
                    f"{action.table}id", record, body)  # fmt: skip
    return Act([intent], action.table, None, summary={
        "table": action.table, "id": record, "update": sorted(body)})  # fmt: skip


def _rendered(values: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """Column or parameter values, the strings among them rendered as templates."""
    return {key: render(value, context) if isinstance(value, str) else value
            for key, value in values.items()}  # fmt: skip


def _qualify(target: Target, step: Step, action: QualifyLeadAction) -> Act:
    if target.leadid is None:
        raise ActionProblem("the member has no lead to qualify")
    body = {"CreateAccount": action.create_account, "CreateContact": action.create_contact,
            "CreateOpportunity": action.create_opportunity, "Status": action.status}  # fmt: skip
    guard = Guard("leads", "leadid", "leadid", target.leadid, "statecode ne 0")
    intent = Intent(target.intent_key(step, "qualify"), JOB, "action", "lead", "leads", "leadid",
                    target.leadid, body, action="QualifyLead", guard=guard)  # fmt: skip
    return Act([intent], "lead", None, summary={"table": "lead", "id": target.leadid,
                                               "action": "QualifyLead"})  # fmt: skip


def _workflow(target: Target, step: Step, action: RunWorkflowAction, now: datetime) -> Act:
    record = target.leadid if action.target == "lead" else target.contactid
    if record is None:
        raise ActionProblem("the member has no lead to run the workflow on")
    key = target.intent_key(step, "run")
    if action.workflow is not None:
        since = stamp(now - GUARD_MARGIN)
        condition = f"_workflowactivationid_value eq {action.workflow} and createdon ge {since}"
        guard = Guard("asyncoperations", "regardingobjectid", "_regardingobjectid_value", record,
                      condition)  # fmt: skip
        intent = Intent(key, JOB, "action", "workflow", "workflows", "workflowid", action.workflow,
                        {"EntityId": record}, action="ExecuteWorkflow", guard=guard)  # fmt: skip
        name = "ExecuteWorkflow"
    else:
        set_name = "leads" if action.target == "lead" else "contacts"
        intent = Intent(key, JOB, "action", action.target, set_name, f"{action.target}id", record,
                        _rendered(action.parameters, target.values()),
                        action=action.action)  # fmt: skip
        name = str(action.action)
    return Act([intent], action.target, None, summary={
        "table": action.target, "id": record, "action": name})  # fmt: skip
