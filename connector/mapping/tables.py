"""`tables.yaml`: which Dataverse tables and columns the sync copies into the local store."""

from __future__ import annotations

import re
from datetime import timedelta
from functools import cached_property
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from connector.filters import CompiledFilter, FilterError, parse_filter
from connector.mapping.document import Document, Location, Strict, parse_duration

ColumnType = Literal[
    "guid", "string", "integer", "bigint", "number", "boolean", "datetime", "date", "lookuptype"
]
LOGICAL_NAME = re.compile(r"^_?[a-z][a-z0-9_]*$")
_ENTITY_SET = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_LOOKUP = re.compile(r"^_([a-z][a-z0-9_]*)_value$")


class TableMapping(Strict):
    """One synced table: where it lives in Dataverse and which columns come to the store.

    A column typed `lookuptype` (`owneridtype` beside `_ownerid_value`) holds the table a
    polymorphic lookup points at — `systemuser` or `team` for an owner — read from the
    lookup's `Microsoft.Dynamics.CRM.lookuplogicalname` annotation, not selected.
    """

    name: str
    entity_set: str
    primary_key: str
    change_tracking: bool = True
    watermark_overlap_seconds: int = Field(default=300, ge=0, le=86_400)
    full_read_every: timedelta | None = timedelta(days=7)
    columns: dict[str, ColumnType]

    @field_validator("entity_set")
    @classmethod
    def _entity_set(cls, value: str) -> str:
        if not _ENTITY_SET.match(value):
            raise ValueError("an entity set name such as 'leads'")
        return value

    @field_validator("full_read_every", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)

    @field_validator("columns")
    @classmethod
    def _column_names(cls, value: dict[str, ColumnType]) -> dict[str, ColumnType]:
        for name, kind in value.items():
            if name.startswith("dvc_"):
                raise ValueError(f"column {name!r}: names starting with dvc_ are dvconnect's own")
            if not LOGICAL_NAME.match(name):
                raise ValueError(
                    f"column {name!r}: a lower-case logical name (lookups as _name_value)"
                )
            if kind == "lookuptype" and value.get(f"_{name.removesuffix('type')}_value") != "guid":
                raise ValueError(
                    f"column {name!r}: a lookuptype column is named after a lookup mapped as "
                    f"guid (owneridtype for _ownerid_value)"
                )
        return value

    @model_validator(mode="after")
    def _required_columns(self) -> TableMapping:
        if self.columns.get(self.primary_key) != "guid":
            raise ValueError(f"columns: must map the primary key {self.primary_key!r} as guid")
        if self.columns.get("modifiedon") != "datetime":
            raise ValueError(
                "columns: must map 'modifiedon' as datetime (the incremental watermark)"
            )
        return self

    @cached_property
    def select(self) -> list[str]:
        """The `$select` list, in mapping order (lookup types come from annotations)."""
        return [name for name, kind in self.columns.items() if kind != "lookuptype"]

    @cached_property
    def lookup_types(self) -> dict[str, str]:
        """Store column → the lookup value column whose annotation fills it."""
        return {
            name: f"_{name.removesuffix('type')}_value"
            for name, kind in self.columns.items()
            if kind == "lookuptype"
        }


class _TablesFile(Strict):
    tables: dict[str, dict[str, Any]]


def load_tables(document: Document) -> dict[str, TableMapping]:
    """Every table of `tables.yaml`, by logical name."""
    body = document.parse(_TablesFile)
    if not body.tables:
        raise document.error(("tables",), "at least one table")
    tables: dict[str, TableMapping] = {}
    for name, table in body.tables.items():
        where = ("tables", name)
        if not LOGICAL_NAME.match(name) or name.startswith(("dvc_", "_")):
            raise document.error(where, "a Dataverse logical name such as 'lead'")
        if not isinstance(table, dict):
            raise document.error(where, "a mapping of keys to values")
        if "name" in table:
            raise document.error((*where, "name"), "unknown key")
        tables[name] = document.parse(TableMapping, {**table, "name": name}, at=where)
    return tables


def compile_filter(
    document: Document, loc: Location, text: str, table: str, tables: dict[str, TableMapping]
) -> CompiledFilter:
    """An OData filter of a definition, compiled against `table`'s synced columns; a
    MappingError at `loc` (with the character) when it does not compile."""
    if table not in tables:
        raise document.error(loc, f"needs tables.yaml to sync the {table} table")
    try:
        return parse_filter(text, tables[table].columns)
    except FilterError as exc:
        at = ""
        if exc.position is not None and "position" not in exc.message:
            at = f" (at character {exc.position + 1})"
        raise document.error(loc, f"{exc.message}{at}") from None
