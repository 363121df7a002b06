"""Loads and validates the admin-editable YAML under `mappings/` into typed, frozen values.

`tables.yaml` says which Dataverse tables and columns are synced (and so which local tables
exist); `schedule.yaml` gives each job's cron; `orphans.yaml` says how `link-orphans` makes a
contact for a lead that has none and whether `promote-contacts` runs; `segments/*.yaml` define
segments as OData `$filter` text over the synced columns, compiled here once. Unknown keys are
rejected and every error names the file, the key and what was expected, so an admin can fix it
without reading Python. A bad segment does not stop the rest: it is kept in
`Mapping.segment_errors`, so `check` fails on it while a scheduled run evaluates the others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from apscheduler.triggers.cron import CronTrigger
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from connector.errors import MappingError
from connector.filters import CompiledFilter, FilterError, parse_filter

ColumnType = Literal["guid", "string", "integer", "bigint", "number", "boolean", "datetime", "date"]
JOB_NAMES = ("sync", "link-orphans", "promote-contacts", "segments")
_LOGICAL_NAME = re.compile(r"^_?[a-z][a-z0-9_]*$")
_ENTITY_SET = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _TableModel(_Strict):
    entity_set: str
    primary_key: str
    change_tracking: bool = True
    watermark_overlap_seconds: int = Field(default=300, ge=0, le=86_400)
    columns: dict[str, ColumnType]

    @field_validator("entity_set")
    @classmethod
    def _entity_set(cls, value: str) -> str:
        if not _ENTITY_SET.match(value):
            raise ValueError("an entity set name such as 'leads'")
        return value

    @field_validator("columns")
    @classmethod
    def _column_names(cls, value: dict[str, ColumnType]) -> dict[str, ColumnType]:
        for name in value:
            if name.startswith("dvc_"):
                raise ValueError(f"column {name!r}: names starting with dvc_ are dvconnect's own")
            if not _LOGICAL_NAME.match(name):
                raise ValueError(
                    f"column {name!r}: a lower-case logical name (lookups as _name_value)"
                )
        return value


class _TablesFile(_Strict):
    tables: dict[str, _TableModel]


class _ScheduleFile(_Strict):
    timezone: str = "UTC"
    jobs: dict[str, str]


MatchRule = Literal["email", "email_and_lastname", "none"]
# What link-orphans reads from the store: the columns it needs on each table.
ORPHAN_LEAD_COLUMNS = ("leadid", "statecode", "_parentcontactid_value", "_ownerid_value",
                       "createdon")  # fmt: skip
ORPHAN_CONTACT_COLUMNS = ("contactid", "statecode", "marketingonly", "modifiedon")
MATCH_COLUMNS: dict[str, tuple[str, ...]] = {
    "email": ("emailaddress1",),
    "email_and_lastname": ("emailaddress1", "lastname"),
    "none": (),
}


class _LinkOrphansModel(_Strict):
    lead_states: list[int] = Field(default=[0], min_length=1)
    match: MatchRule = "email"
    leads_without_email_or_name: Literal["create", "skip"] = "create"
    too_long: Literal["truncate", "reject"] = "truncate"
    duplicate_detection: bool = True
    write: Literal["bulk", "batch"] = "bulk"
    batch_size: int = Field(default=1000, ge=1, le=1000)
    contact_columns: dict[str, str]


class _PromoteContactsModel(_Strict):
    enabled: bool = True


class _OrphansFile(_Strict):
    link_orphans: _LinkOrphansModel
    promote_contacts: _PromoteContactsModel = _PromoteContactsModel()


@dataclass(frozen=True)
class OrphansMapping:
    """How link-orphans makes and finds contacts for orphan leads; whether promotion runs."""

    lead_states: tuple[int, ...]
    match: MatchRule
    leads_without_email_or_name: Literal["create", "skip"]
    too_long: Literal["truncate", "reject"]
    duplicate_detection: bool
    write: Literal["bulk", "batch"]
    batch_size: int
    contact_columns: dict[str, str]  # contact column: the lead column it is copied from
    promote_contacts: bool


Channel = Literal["any", "email", "phone"]
CHANNEL_OPT_OUTS: dict[str, str] = {"email": "donotemail", "phone": "donotphone"}
_SEGMENT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class _SegmentFile(_Strict):
    name: str
    description: str = ""
    lead: str | None = None
    contact: str | None = None
    exclude: str | None = None
    limit: int | None = Field(default=None, ge=1)
    channel: Channel = "any"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _SEGMENT_NAME.match(value):
            raise ValueError("lower-case letters, digits, '-' and '_' (at most 64)")
        return value


@dataclass(frozen=True)
class SegmentMapping:
    """One segment: contacts with a lead matching `lead` (if given) that match `contact`."""

    name: str
    path: Path
    description: str
    lead: CompiledFilter | None
    contact: CompiledFilter | None
    exclude: str | None
    limit: int | None
    channel: Channel


@dataclass(frozen=True)
class TableMapping:
    """One synced table: where it lives in Dataverse and which columns come to the store."""

    name: str
    entity_set: str
    primary_key: str
    change_tracking: bool
    watermark_overlap_seconds: int
    columns: dict[str, ColumnType]

    @property
    def select(self) -> list[str]:
        """The `$select` list, in mapping order."""
        return list(self.columns)


@dataclass(frozen=True)
class Mapping:
    """Everything loaded from the mappings directory."""

    directory: Path
    tables: dict[str, TableMapping]
    schedule: dict[str, str]
    timezone: str
    orphans: OrphansMapping
    segments: dict[str, SegmentMapping]
    segment_errors: dict[str, MappingError]  # by file name: what is wrong with a bad segment


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _expected(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        allowed = error.get("ctx", {}).get("expected", "")
        return f"expected one of {allowed}"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MappingError(str(path), "(file)", "file not found") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise MappingError(str(path), where, f"invalid YAML: {problem}") from None


def _parse(model: type[_Strict], path: Path) -> Any:
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise MappingError(str(path), "(top level)", "a mapping of keys to values")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # A misspelt key also makes the right one "missing": name the misspelling first.
        error = min(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        raise MappingError(str(path), _location(error["loc"]), _expected(error)) from None


def _table(path: Path, name: str, model: _TableModel) -> TableMapping:
    if not _LOGICAL_NAME.match(name) or name.startswith("dvc_"):
        raise MappingError(str(path), f"tables.{name}", "a Dataverse logical name such as 'lead'")
    where = f"tables.{name}.columns"
    if model.columns.get(model.primary_key) != "guid":
        raise MappingError(
            str(path), where, f"must map the primary key {model.primary_key!r} as guid"
        )
    if model.columns.get("modifiedon") != "datetime":
        raise MappingError(
            str(path), where, "must map 'modifiedon' as datetime (the incremental watermark)"
        )
    return TableMapping(
        name=name,
        entity_set=model.entity_set,
        primary_key=model.primary_key,
        change_tracking=model.change_tracking,
        watermark_overlap_seconds=model.watermark_overlap_seconds,
        columns=dict(model.columns),
    )


def _schedule(path: Path, model: _ScheduleFile) -> dict[str, str]:
    for job, cron in model.jobs.items():
        if job not in JOB_NAMES:
            raise MappingError(
                str(path), f"jobs.{job}", f"a job name, one of {', '.join(JOB_NAMES)}"
            )
        try:
            CronTrigger.from_crontab(cron, timezone=model.timezone)
        except ValueError as exc:
            raise MappingError(
                str(path), f"jobs.{job}", f"a five-field cron expression ({exc})"
            ) from None
    return dict(model.jobs)


def _orphans(path: Path, model: _OrphansFile, tables: dict[str, TableMapping]) -> OrphansMapping:
    """The orphans configuration, checked against what tables.yaml syncs of lead and contact."""
    link = model.link_orphans
    needs = {
        "lead": (*ORPHAN_LEAD_COLUMNS, *MATCH_COLUMNS[link.match]),
        "contact": (*ORPHAN_CONTACT_COLUMNS, *MATCH_COLUMNS[link.match]),
    }
    for table, columns in needs.items():
        synced = tables[table].columns if table in tables else {}
        missing = [c for c in columns if c not in synced]
        if missing:
            raise MappingError(
                str(path),
                "link_orphans",
                f"needs tables.yaml to sync {table} column(s) {', '.join(missing)}",
            )
    lead_columns = tables["lead"].columns
    for contact_column, lead_column in link.contact_columns.items():
        where = f"link_orphans.contact_columns.{contact_column}"
        if not _LOGICAL_NAME.match(contact_column) or contact_column.startswith("_"):
            raise MappingError(str(path), where, "a contact column's logical name")
        if contact_column in ("contactid", "marketingonly", "ownerid", "statecode", "statuscode"):
            raise MappingError(str(path), where, "set by link-orphans itself; remove it")
        if lead_column not in lead_columns:
            raise MappingError(
                str(path), where, f"lead column {lead_column!r} is not synced (tables.yaml)"
            )
    return OrphansMapping(
        lead_states=tuple(link.lead_states),
        match=link.match,
        leads_without_email_or_name=link.leads_without_email_or_name,
        too_long=link.too_long,
        duplicate_detection=link.duplicate_detection,
        write=link.write,
        batch_size=link.batch_size,
        contact_columns=dict(link.contact_columns),
        promote_contacts=model.promote_contacts.enabled,
    )


def _segment(path: Path, tables: dict[str, TableMapping]) -> SegmentMapping:
    """One segment file, parsed and its filters compiled against the synced columns."""
    model: _SegmentFile = _parse(_SegmentFile, path)
    if model.lead is None and model.contact is None:
        raise MappingError(str(path), "(top level)", "a 'lead' condition, a 'contact' one, or both")
    required = {"contact": ["contactid", "statecode"], "lead": []}
    if model.channel != "any":
        required["contact"].append(CHANNEL_OPT_OUTS[model.channel])
    if model.lead is not None:
        required["lead"].append("_parentcontactid_value")
    for table, columns in required.items():
        synced = tables[table].columns if table in tables else {}
        missing = [c for c in columns if c not in synced]
        if missing:
            raise MappingError(
                str(path), "(top level)", f"needs tables.yaml to sync {table} {', '.join(missing)}"
            )
    lines = _value_lines(path)
    compiled: dict[str, CompiledFilter | None] = {}
    for key in ("lead", "contact"):
        text = getattr(model, key)
        compiled[key] = None
        if text is None:
            continue
        try:
            compiled[key] = parse_filter(text, tables[key].columns)
        except FilterError as exc:
            where = f"{key} (line {lines.get(key, '?')})"
            at = ""
            if exc.position is not None and "position" not in exc.message:
                at = f" (at character {exc.position + 1})"
            raise MappingError(str(path), where, f"{exc.message}{at}") from None
    return SegmentMapping(
        name=model.name,
        path=path,
        description=model.description,
        lead=compiled["lead"],
        contact=compiled["contact"],
        exclude=model.exclude,
        limit=model.limit,
        channel=model.channel,
    )


def _value_lines(path: Path) -> dict[str, int]:
    """The 1-based line of each top-level key's value in a YAML file."""
    node = yaml.compose(path.read_text(encoding="utf-8"))
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {
        str(key.value): value.start_mark.line + 1
        for key, value in node.value
        if isinstance(key, yaml.ScalarNode)
    }


def _segments(
    directory: Path, tables: dict[str, TableMapping]
) -> tuple[dict[str, SegmentMapping], dict[str, MappingError]]:
    """Every good segment of `segments/` by name, and an error per bad file.

    A segment whose exclusion is missing, bad, or part of a cycle is bad too.
    """
    segments: dict[str, SegmentMapping] = {}
    errors: dict[str, MappingError] = {}

    def reject(segment: SegmentMapping, key: str, expected: str) -> None:
        errors[segment.path.name] = MappingError(str(segment.path), key, expected)
        segments.pop(segment.name, None)

    for path in sorted((directory / "segments").glob("*.yaml")):
        try:
            segment = _segment(path, tables)
        except MappingError as exc:
            errors[path.name] = exc
            continue
        if segment.name in segments:
            first = segments[segment.name].path.name
            errors[path.name] = MappingError(
                str(path), "name", f"segment {segment.name!r} is already defined in {first}"
            )
            continue
        segments[segment.name] = segment
    for segment in list(segments.values()):
        chain = [segment.name]
        while (excluded := segments[chain[-1]].exclude) is not None:
            if excluded in chain:
                cycle = " -> ".join([*chain, excluded])
                reject(segment, "exclude", f"exclusions form a cycle: {cycle}")
                break
            if excluded not in segments:
                reject(segment, "exclude", f"segment {excluded!r} is missing or not valid")
                break
            chain.append(excluded)
    return segments, errors


def load_mapping(directory: Path) -> Mapping:
    """Load and validate `tables.yaml`, `schedule.yaml` and `orphans.yaml` from `directory`."""
    tables_path = directory / "tables.yaml"
    tables_file: _TablesFile = _parse(_TablesFile, tables_path)
    if not tables_file.tables:
        raise MappingError(str(tables_path), "tables", "at least one table")
    tables = {name: _table(tables_path, name, t) for name, t in tables_file.tables.items()}

    schedule_path = directory / "schedule.yaml"
    schedule_file: _ScheduleFile = _parse(_ScheduleFile, schedule_path)
    try:
        CronTrigger.from_crontab("0 0 * * *", timezone=schedule_file.timezone)
    except Exception:
        raise MappingError(
            str(schedule_path), "timezone", "an IANA time zone such as 'UTC' or 'Europe/Paris'"
        ) from None
    orphans_path = directory / "orphans.yaml"
    orphans_file: _OrphansFile = _parse(_OrphansFile, orphans_path)
    segments, segment_errors = _segments(directory, tables)
    return Mapping(
        directory=directory,
        tables=tables,
        schedule=_schedule(schedule_path, schedule_file),
        timezone=schedule_file.timezone,
        orphans=_orphans(orphans_path, orphans_file, tables),
        segments=segments,
        segment_errors=segment_errors,
    )
