"""`journeys/*.yaml`: one journey per file — its audience, trigger, entry rules, schedule, steps.

A journey takes the members of a segment — or those a trigger admits: a lead or contact the
sync saw created, or a column of it change value — through steps: waits, conditions that hold
a member until they are true or a timeout passes, branches, random splits, and actions that
write to
Dataverse (an e-mail sent with `SendEmail`, a phone call, a task, an appointment, a lead, an
update, a qualification, a workflow). This module reads and checks the definition; whether it
makes sense as a flow (reachability, cycles, timing, templates) is checked by
`jobs.journeys.validate`, and running it is `jobs.journeys.engine`'s job.

Like segments, a bad journey does not stop the others: each file gives a `Journey` or a
`MappingError` naming the file, the key (`steps[2].email.subject`) and its line.
"""

from __future__ import annotations

import difflib
import re
from datetime import date, datetime, time, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import Field, PrivateAttr, field_validator, model_validator

from connector.errors import MappingError
from connector.filters import CompiledFilter
from connector.mapping.document import (
    Document,
    Identifier,
    Location,
    Strict,
    TimeZone,
    parse_duration,
)
from connector.mapping.tables import TableMapping, compile_filter

ACTIVITIES = ("email", "phonecall", "task", "appointment")
ACTION_KINDS = (*ACTIVITIES, "create_lead", "update", "qualify_lead", "run_workflow")
FLOW_KINDS = ("wait", "wait_until", "if", "branch", "split", "end")
STEP_KINDS = (*FLOW_KINDS, *ACTION_KINDS)
GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
MAX_WAIT = timedelta(days=90)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
TRIGGER_TABLES = ("lead", "contact")
UNWATCHED = ("modifiedon", "createdon", "versionnumber")  # every write touches them
DURATION = "a duration such as '3d', '12h', {days: 3}, {hours: 4} or {business_days: 2}"


def _guid(value: str) -> str:
    if not isinstance(value, str) or not GUID.match(value.strip("{}")):
        raise ValueError("a GUID such as 00000000-0000-0000-0000-000000000000")
    return value.strip("{}").lower()


class Delay(Strict):
    """A duration: calendar time (`3d`, `12h`) or business days (`{business_days: 2}`)."""

    calendar: timedelta | None = None
    business_days: int | None = Field(default=None, ge=1, le=65)

    @model_validator(mode="before")
    @classmethod
    def _read(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return {"calendar": parse_duration(value)}
            except ValueError:
                pass
        if isinstance(value, dict) and set(value) == {"business_days"}:
            return value
        if isinstance(value, dict) and len(value) == 1:
            unit, amount = next(iter(value.items()))
            if unit in ("minutes", "hours", "days", "weeks") and isinstance(amount, int):
                if amount < 1:
                    raise ValueError(f"{unit}: at least 1")
                return {"calendar": timedelta(**{unit: amount})}
        raise ValueError(DURATION)

    def longest(self) -> timedelta:
        """The longest time this delay can take (a business day may span a weekend)."""
        if self.calendar is not None:
            return self.calendar
        return timedelta(days=(self.business_days or 0) * 7 // 5 + 4)


class ActivityCondition(Strict):
    """A condition on the activity a step of this journey created for the member."""

    step: str
    filter: str
    _compiled: CompiledFilter | None = PrivateAttr(None)

    @property
    def compiled(self) -> CompiledFilter:
        assert self._compiled is not None, "conditions are compiled by load_journey"
        return self._compiled


class Condition(Strict):
    """Every part given must hold: the member's contact, its lead, an activity this journey
    created for it, membership of a segment; `any` and `all` combine conditions."""

    contact: str | None = None
    lead: str | None = None
    email: ActivityCondition | None = None
    phonecall: ActivityCondition | None = None
    task: ActivityCondition | None = None
    appointment: ActivityCondition | None = None
    in_segment: str | None = None
    not_in_segment: str | None = None
    any: list[Condition] | None = Field(default=None, min_length=1)
    all: list[Condition] | None = Field(default=None, min_length=1)
    _filters: dict[str, CompiledFilter] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _not_empty(self) -> Condition:
        if not self.model_fields_set:
            raise ValueError(
                "a condition needs at least one of contact, lead, email, phonecall, task, "
                "appointment, in_segment, not_in_segment, any, all"
            )
        return self

    def compiled(self, table: str) -> CompiledFilter | None:
        return self._filters.get(table)

    def activities(self) -> list[tuple[str, ActivityCondition]]:
        found = [(kind, getattr(self, kind)) for kind in ACTIVITIES if getattr(self, kind)]
        for part in (self.any or []) + (self.all or []):
            found += part.activities()
        return found

    def segments(self) -> list[str]:
        names = [name for name in (self.in_segment, self.not_in_segment) if name]
        for part in (self.any or []) + (self.all or []):
            names += part.segments()
        return names


class Sender(Strict):
    """Who an e-mail is from: a user or a queue (Dataverse accepts no other sender)."""

    user: str | None = None
    queue: str | None = None

    @model_validator(mode="after")
    def _one(self) -> Sender:
        if (self.user is None) == (self.queue is None):
            raise ValueError("either user: <systemuserid> or queue: <queueid>")
        return self

    @field_validator("user", "queue")
    @classmethod
    def _id(cls, value: str | None) -> str | None:
        return None if value is None else _guid(value)


class EmailAction(Strict):
    sender: Literal["owner"] | Sender = Field(default="owner", alias="from")
    subject: str = Field(min_length=1)
    body: str = Field(min_length=1)
    delivery: Literal["dynamics", "recorded"] = "dynamics"  # SendEmail IssueSend true / false


class PhonecallAction(Strict):
    subject: str = Field(min_length=1)
    description: str = ""
    due: Delay = Delay(business_days=1)
    phone: str = "telephone1"  # the contact column holding the number (mobilephone if empty)


class TaskAction(Strict):
    subject: str = Field(min_length=1)
    description: str = ""
    due: Delay = Delay(business_days=1)
    priority: Literal[0, 1, 2] = 1


class AppointmentAction(Strict):
    subject: str = Field(min_length=1)
    description: str = ""
    location: str = ""
    start: Delay = Delay(business_days=2)
    minutes: int = Field(default=30, ge=5, le=480)


class CreateLeadAction(Strict):
    subject: str = Field(min_length=1)  # the topic: an open lead of the contact with it is reused
    values: dict[str, str] = Field(default_factory=dict)  # lead column: template


class UpdateAction(Strict):
    table: Literal["lead", "contact"]
    values: dict[str, str | int | float | bool | None] = Field(min_length=1)


class QualifyLeadAction(Strict):
    create_account: bool = False
    create_contact: bool = False
    create_opportunity: bool = True
    status: int = 3


class RunWorkflowAction(Strict):
    workflow: str | None = None  # an on-demand classic workflow, by id (ExecuteWorkflow)
    action: str | None = None  # or a custom action bound to the record, by name
    target: Literal["lead", "contact"] = "lead"
    parameters: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one(self) -> RunWorkflowAction:
        if (self.workflow is None) == (self.action is None):
            raise ValueError("either workflow: <workflowid> or action: <custom action name>")
        if self.workflow is not None:
            object.__setattr__(self, "workflow", _guid(self.workflow))
        elif not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", self.action or ""):
            raise ValueError("action: the custom action's unique name, e.g. new_RouteLead")
        return self


class IfSpec(Strict):
    condition: Condition
    timeout: Delay


class BranchCase(Strict):
    when: Condition
    then: str


class SplitPart(Strict):
    percent: int = Field(ge=1, le=99)
    then: str


class Step(Strict):
    """One step: its id, exactly one kind, and where a member goes after it."""

    id: Identifier
    next: str | None = None
    wait: Delay | None = None
    wait_until: datetime | None = None
    if_: IfSpec | None = Field(default=None, alias="if")
    then: str | None = None
    else_: str | None = Field(default=None, alias="else")
    branch: list[BranchCase] | None = Field(default=None, min_length=1)
    default: str | None = None
    split: list[SplitPart] | None = Field(default=None, min_length=2)
    end: Literal[True] | None = None
    email: EmailAction | None = None
    phonecall: PhonecallAction | None = None
    task: TaskAction | None = None
    appointment: AppointmentAction | None = None
    create_lead: CreateLeadAction | None = None
    update: UpdateAction | None = None
    qualify_lead: QualifyLeadAction | None = None
    run_workflow: RunWorkflowAction | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        kinds = [kind for kind in STEP_KINDS if getattr(self, _field(kind)) is not None]
        if len(kinds) != 1:
            found = f" (found {', '.join(kinds)})" if kinds else ""
            raise ValueError(f"a step has exactly one of {', '.join(STEP_KINDS)}{found}")
        kind = kinds[0]
        if kind == "if" and (self.then is None or self.else_ is None):
            raise ValueError("if: needs then: <step id> and else: <step id>")
        if kind == "branch" and self.default is None:
            raise ValueError("branch: needs default: <step id>")
        if kind == "split" and sum(part.percent for part in self.split or []) != 100:
            raise ValueError("split: the percentages must add up to 100")
        if kind in ("if", "branch", "split", "end") and self.next is not None:
            raise ValueError(f"next: a {kind} step chooses where members go itself")
        if kind not in ("if",) and (self.then is not None or self.else_ is not None):
            raise ValueError("then/else: only for an if step")
        if kind != "branch" and self.default is not None:
            raise ValueError("default: only for a branch step")
        return self

    @cached_property  # read for every member at every step: computed once
    def kind(self) -> str:
        return next(kind for kind in STEP_KINDS if getattr(self, _field(kind)) is not None)

    @property
    def is_action(self) -> bool:
        return self.kind in ACTION_KINDS

    def action(self) -> Any:
        return getattr(self, _field(self.kind))

    def targets(self) -> list[str]:
        """The step ids a member can go to from here (`next` resolved by the journey)."""
        match self.kind:
            case "if":
                return [str(self.then), str(self.else_)]
            case "branch":
                return [case.then for case in self.branch or []] + [str(self.default)]
            case "split":
                return [part.then for part in self.split or []]
            case "end":
                return []
        return [self.next] if self.next else []

    def conditions(self) -> list[Condition]:
        if self.if_ is not None:
            return [self.if_.condition]
        return [case.when for case in self.branch or []]


def _field(kind: str) -> str:
    return {"if": "if_"}.get(kind, kind)


class Window(Strict):
    """When the journey runs, in its own time zone."""

    start: datetime
    end: datetime
    timezone: TimeZone = "UTC"
    end_policy: Literal["hard_stop", "finish"] = "hard_stop"

    @model_validator(mode="after")
    def _order(self) -> Window:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("start/end: local times of `timezone`, without an offset")
        if self.end <= self.start:
            raise ValueError("end: must come after start")
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def moment(self, local: datetime) -> datetime:
        """A local time of the journey's zone as an aware datetime."""
        return local.replace(tzinfo=self.zone)

    @property
    def starts(self) -> datetime:
        return self.moment(self.start)

    @property
    def ends(self) -> datetime:
        return self.moment(self.end)


class BusinessHours(Strict):
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(
        default=["mon", "tue", "wed", "thu", "fri"], min_length=1
    )
    from_: time = Field(default=time(9), alias="from")
    to: time = time(17)
    holidays: list[date] = Field(default_factory=list)

    @model_validator(mode="after")
    def _order(self) -> BusinessHours:
        if self.to <= self.from_:
            raise ValueError("to: must come after from")
        return self


class Audience(Strict):
    segment: str | None = None  # without: only the trigger admits (exclusions still apply)
    exclude: list[str] = Field(default_factory=list)


class TableTrigger(Strict):
    """Enter on a record of one table: created (`created: true`), a column changed value
    (`changed: COLUMN`, with `to: VALUE` only to that value), or — on a lead — the lead became
    sales-ready in a scoring model (`sales_ready: MODEL`); `filter` must hold for the record as
    the store holds it when the journeys run."""

    created: Literal[True] | None = None
    changed: str | None = None
    to: bool | int | float | str | None = None
    sales_ready: str | None = None
    filter: str | None = None
    _compiled: CompiledFilter | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _one(self) -> TableTrigger:
        given = [self.created, self.changed, self.sales_ready]
        if sum(value is not None for value in given) != 1:
            raise ValueError("one of created: true, changed: <column> or sales_ready: <model>")
        if self.has_to and self.changed is None:
            raise ValueError("to: goes with changed: <column>")
        return self

    @property
    def has_to(self) -> bool:
        """Whether `to` was given (`to: null` is a value: the column emptied)."""
        return "to" in self.model_fields_set

    @property
    def compiled(self) -> CompiledFilter | None:
        return self._compiled


class Trigger(Strict):
    """What the sync saw that admits a member: on `lead`, the lead is the member's own (its
    goal and exit look at it); on `contact`, the contact enters."""

    lead: TableTrigger | None = None
    contact: TableTrigger | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> Trigger:
        if not self.tables():
            raise ValueError("a trigger on lead: or contact: (or both)")
        return self

    def tables(self) -> list[tuple[str, TableTrigger]]:
        return [(name, part) for name in TRIGGER_TABLES if (part := getattr(self, name))]


class Repeat(Strict):
    every: Delay


class ReEntry(Strict):
    after: Delay


class Caps(Strict):
    """Calls, tasks and appointments per owner per day; what happens to a capped owner's work;
    how many members may enter per day."""

    per_owner_per_day: int | None = Field(default=None, ge=1, le=10_000)
    spill: Literal["next_day", "round_robin"] = "next_day"
    entries_per_day: int | None = Field(default=None, ge=1, le=10_000_000)


class RoundRobin(Strict):
    round_robin: list[str] = Field(min_length=1)

    @field_validator("round_robin")
    @classmethod
    def _ids(cls, value: list[str]) -> list[str]:
        return [_guid(item) for item in value]


class FixedUser(Strict):
    user: str

    @field_validator("user")
    @classmethod
    def _id(cls, value: str) -> str:
        return _guid(value)


Owner = Literal["lead_owner", "contact_owner"] | FixedUser | RoundRobin


class Journey(Strict):
    """One journey, as its file says; `steps[0]` is where members enter."""

    name: Identifier
    description: str = ""
    audience: Audience | None = None
    trigger: Trigger | None = None
    entry: Literal["once", "dynamic", "repeating"] = "once"
    repeat: Repeat | None = None
    re_entry: Literal["never"] | ReEntry = "never"
    schedule: Window
    business_hours: BusinessHours = BusinessHours()
    owner: Owner = "lead_owner"
    caps: Caps = Caps()
    goal: Condition | None = None
    exit: Condition | None = None
    on_resume: Literal["proceed", "shift"] = "proceed"  # after a pause: see jobs/journeys/lifecycle
    # earlier versions' step id: this version's step id (`journeys migrate`)
    migrate: dict[str, str] = Field(default_factory=dict)
    steps: list[Step] = Field(min_length=1)
    _document: Document | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _entry(self) -> Journey:
        if (self.entry == "repeating") != (self.repeat is not None):
            raise ValueError("repeat: {every: <duration>} goes with entry: repeating, and only")
        if self.trigger is None and self.segment is None:
            raise ValueError("audience: {segment: NAME}, or a trigger: to enter by (or both)")
        return self

    @property
    def segment(self) -> str | None:
        """The segment whose members enter, if any."""
        return self.audience.segment if self.audience is not None else None

    @property
    def excluded(self) -> list[str]:
        """The segments whose members never enter, by segment or by trigger."""
        return self.audience.exclude if self.audience is not None else []

    @property
    def path(self) -> Path:
        assert self._document is not None, "journeys are made by load_journey"
        return self._document.path

    def error(self, loc: Location, expected: str) -> MappingError:
        """An error about a key of this journey's file, with its line."""
        assert self._document is not None, "journeys are made by load_journey"
        return self._document.error(loc, expected)

    def step(self, step_id: str) -> Step:
        return next(s for s in self.steps if s.id == step_id)

    def index(self, step_id: str) -> int:
        return next(i for i, s in enumerate(self.steps) if s.id == step_id)

    def following(self, step: Step) -> str | None:
        """Where a member goes after `step` when it has no `next`: the step below, if any."""
        if step.next is not None or step.kind in ("if", "branch", "split", "end"):
            return step.next
        position = self.index(step.id)
        return self.steps[position + 1].id if position + 1 < len(self.steps) else None

    def successors(self, step: Step) -> list[str]:
        if step.kind in ("if", "branch", "split", "end"):
            return step.targets()
        after = self.following(step)
        return [after] if after else []

    @property
    def text(self) -> str:
        """The file's content (versions are kept by their text)."""
        assert self._document is not None
        return self._document.text


def load_journey(path: Path, tables: dict[str, TableMapping], text: str | None = None) -> Journey:
    """One journey file (or `text`, a version of it), parsed, its step references and
    conditions checked and compiled."""
    document = Document.read(path) if text is None else Document.from_text(path, text)
    journey = document.parse(Journey)
    journey._document = document
    ids: dict[str, int] = {}
    for position, step in enumerate(journey.steps):
        if step.id in ids:
            first = ids[step.id]
            raise document.error(
                ("steps", position, "id"), f"step {step.id!r} is already defined at steps[{first}]"
            )
        ids[step.id] = position
    for position, step in enumerate(journey.steps):
        for key, target in _references(step):
            if target not in ids:
                raise document.error(("steps", position, *key), _unknown(target, ids))
    if journey.caps.spill == "round_robin" and not isinstance(journey.owner, RoundRobin):
        raise document.error(("caps", "spill"), "round_robin hands a capped owner's work to "
                             "another owner of owner: {round_robin: [...]}; this journey has "
                             "no such list")  # fmt: skip
    if journey.caps.entries_per_day is not None and journey.entry == "repeating":
        raise document.error(("caps", "entries_per_day"), "not with entry: repeating (each "
                             "repetition admits every member at once)")  # fmt: skip
    for old, new in journey.migrate.items():
        if new not in ids:
            raise document.error(("migrate", old), _unknown(new, ids))
    for loc, condition in _conditions(journey):
        _compile(document, loc, condition, tables, ids)
    for table, part in journey.trigger.tables() if journey.trigger else []:
        _check_trigger(document, ("trigger", table), table, part, tables)
    return journey


def _check_trigger(
    document: Document, loc: Location, table: str, part: TableTrigger,
    tables: dict[str, TableMapping],
) -> None:  # fmt: skip
    """The watched column is synced and worth watching, `to` fits it, the filter compiles."""
    if table not in tables:
        raise document.error(loc, f"needs tables.yaml to sync the {table} table")
    mapping = tables[table]
    if part.sales_ready is not None and table != "lead":
        raise document.error((*loc, "sales_ready"), "a lead becomes sales-ready: use it on lead:")
    if part.changed is not None:
        column = part.changed
        if column not in mapping.columns:
            close = difflib.get_close_matches(column, mapping.columns, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise document.error((*loc, "changed"), f"unknown column {column!r}{hint}")
        if column in UNWATCHED:
            raise document.error(
                (*loc, "changed"), f"{column} changes with every write: name a column whose "
                "value matters")  # fmt: skip
        if column == mapping.primary_key:
            raise document.error(
                (*loc, "changed"), f"{column} is the record's id: it never changes"
            )
        kind = mapping.columns[column]
        if part.has_to and not _fits(part.to, kind):
            raise document.error((*loc, "to"), f"a value of {column} ({kind}), or null")
    if part.filter is not None:
        part._compiled = compile_filter(document, (*loc, "filter"), part.filter, table, tables)


def _fits(value: object, kind: str) -> bool:
    """Whether a `to:` value can be a value of a column of type `kind`."""
    if value is None:
        return True
    if kind in ("integer", "bigint"):
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    return isinstance(value, str)


def _references(step: Step) -> list[tuple[tuple[str | int, ...], str]]:
    found: list[tuple[tuple[str | int, ...], str]] = []
    if step.next is not None:
        found.append((("next",), step.next))
    if step.then is not None:
        found.append((("then",), step.then))
    if step.else_ is not None:
        found.append((("else",), step.else_))
    if step.default is not None:
        found.append((("default",), step.default))
    for i, case in enumerate(step.branch or []):
        found.append((("branch", i, "then"), case.then))
    for i, part in enumerate(step.split or []):
        found.append((("split", i, "then"), part.then))
    return found


def _unknown(target: str, ids: dict[str, int]) -> str:
    close = difflib.get_close_matches(target, ids)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"no step {target!r} in this journey{hint}"


def _conditions(journey: Journey) -> list[tuple[Location, Condition]]:
    found: list[tuple[Location, Condition]] = []
    if journey.goal is not None:
        found.append((("goal",), journey.goal))
    if journey.exit is not None:
        found.append((("exit",), journey.exit))
    for position, step in enumerate(journey.steps):
        if step.if_ is not None:
            found.append((("steps", position, "if", "condition"), step.if_.condition))
        for i, case in enumerate(step.branch or []):
            found.append((("steps", position, "branch", i, "when"), case.when))
    return found


def _compile(
    document: Document,
    loc: Location,
    condition: Condition,
    tables: dict[str, TableMapping],
    steps: dict[str, int],
) -> None:
    """Compile every filter of a condition against the synced columns of its table."""
    for table in ("contact", "lead"):
        text = getattr(condition, table)
        if text is not None:
            condition._filters[table] = compile_filter(document, (*loc, table), text, table, tables)
    for kind in ACTIVITIES:
        part: ActivityCondition | None = getattr(condition, kind)
        if part is None:
            continue
        if part.step not in steps:
            raise document.error((*loc, kind, "step"), _unknown(part.step, steps))
        part._compiled = compile_filter(document, (*loc, kind, "filter"), part.filter, kind, tables)
    for combinator in ("any", "all"):
        for i, inner in enumerate(getattr(condition, combinator) or []):
            _compile(document, (*loc, combinator, i), inner, tables, steps)


def load_journeys(
    directory: Path, tables: dict[str, TableMapping]
) -> tuple[dict[str, Journey], dict[str, MappingError]]:
    """Every good journey of `directory` by name, and an error per bad file (by file name)."""
    journeys: dict[str, Journey] = {}
    errors: dict[str, MappingError] = {}
    for path in sorted(directory.glob("*.yaml")) if directory.is_dir() else []:
        try:
            journey = load_journey(path, tables)
        except MappingError as exc:
            errors[path.name] = exc
            continue
        if journey.name in journeys:
            first = journeys[journey.name].path.name
            errors[path.name] = journey.error(
                ("name",), f"journey {journey.name!r} is already defined in {first}"
            )
            continue
        journeys[journey.name] = journey
    return journeys, errors
