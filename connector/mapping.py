"""Loads and validates the admin-editable YAML under `mappings/` into typed, frozen values.

`tables.yaml` says which Dataverse tables and columns are synced (and so which local tables
exist); `schedule.yaml` gives each job's cron; `orphans.yaml` says how `link-orphans` makes a
contact for a lead that has none and whether `promote-contacts` runs. Unknown keys are rejected
and every error names the file, the key and what was expected, so an admin can fix it without
reading Python.
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

ColumnType = Literal["guid", "string", "integer", "bigint", "number", "boolean", "datetime", "date"]
JOB_NAMES = ("sync", "link-orphans", "promote-contacts")
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
    return Mapping(
        directory=directory,
        tables=tables,
        schedule=_schedule(schedule_path, schedule_file),
        timezone=schedule_file.timezone,
        orphans=_orphans(orphans_path, orphans_file, tables),
    )
