"""The admin-editable YAML under `mappings/`, loaded and validated into typed, frozen values.

One module per definition kind: `tables` (what the sync copies), `schedule` (each job's cron),
`orphans` (how `link-orphans` finds or makes contacts), `segments` (OData conditions compiled
once), `journeys` (steps over a segment's members), `scoring` (lead-scoring models); `document`
reads any of them with the line
of every key. Unknown keys are refused and
every error names the file, the key, its line and what was expected, so an admin can fix it
without reading Python. A bad segment, journey or model does not stop the rest: it is kept in
`Mapping.segment_errors` (`journey_errors`, `model_errors`), so `check` fails on it while a
scheduled run evaluates the others.
"""

from __future__ import annotations

from collections.abc import Mapping as AbstractMapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TypeVar

from connector.errors import ConfigError, MappingError
from connector.keys import Accents
from connector.mapping.document import Document
from connector.mapping.journeys import Journey, load_journeys
from connector.mapping.orphans import MATCH_COLUMNS, Orphans, load_orphans
from connector.mapping.schedule import JOB_NAMES, Schedule, load_schedule
from connector.mapping.scoring import Model, load_models
from connector.mapping.segments import CHANNEL_OPT_OUTS, Segment, load_segments
from connector.mapping.tables import ColumnType, TableMapping, load_tables

__all__ = [
    "CHANNEL_OPT_OUTS",
    "JOB_NAMES",
    "MATCH_COLUMNS",
    "ColumnType",
    "Journey",
    "Mapping",
    "Model",
    "Orphans",
    "Schedule",
    "Segment",
    "TableMapping",
    "load_mapping",
    "named",
]

D = TypeVar("D")


def named(kind: str, name: str, defined: AbstractMapping[str, D],
          errors: AbstractMapping[str, MappingError]) -> D:  # fmt: skip
    """The definition `name` of one kind (a segment, a journey, a scoring model); a ConfigError
    with its file's own error when that file is bad, else naming the ones the mappings define."""
    if name in defined:
        return defined[name]
    for error in errors.values():
        if Path(error.path).stem == name:
            raise ConfigError(str(error))
    known = ", ".join(sorted(defined)) or "none"
    raise ConfigError(f"unknown {kind} {name!r}: the mappings define {known}")


@dataclass(frozen=True)
class Mapping:
    """Everything loaded from the mappings directory."""

    directory: Path
    tables: dict[str, TableMapping]
    schedule: Schedule
    orphans: Orphans
    segments: dict[str, Segment]
    segment_errors: dict[str, MappingError]  # by file name: what is wrong with a bad segment
    journeys: dict[str, Journey]
    journey_errors: dict[str, MappingError]  # by file name: what is wrong with a bad journey
    models: dict[str, Model]  # lead-scoring models
    model_errors: dict[str, MappingError]

    @cached_property
    def match_keys(self) -> dict[str, tuple[str, ...]]:
        """Per table, the columns whose match key (connector.keys) the store keeps."""
        columns = MATCH_COLUMNS[self.orphans.link_orphans.match]
        return {"lead": columns, "contact": columns} if columns else {}

    @property
    def accents(self) -> Accents:
        return self.orphans.link_orphans.accents


def load_mapping(directory: Path) -> Mapping:
    """Load and validate every file of the mappings directory."""
    if not directory.is_dir():
        what = "is a file" if directory.exists() else "does not exist"
        raise ConfigError(f"DVCONNECT_MAPPINGS_DIR: {directory} {what}; it must be a folder")
    tables = load_tables(Document.read(directory / "tables.yaml"))
    schedule = load_schedule(Document.read(directory / "schedule.yaml"))
    orphans = load_orphans(Document.read(directory / "orphans.yaml"), tables)
    segments, segment_errors = load_segments(directory / "segments", tables)
    journeys, journey_errors = load_journeys(directory / "journeys", tables)
    models, model_errors = load_models(directory / "scoring", tables, set(segments), set(journeys))
    for name, journey in list(journeys.items()):  # a trigger on a scoring model that is not valid
        part = journey.trigger.lead if journey.trigger else None
        if part is not None and part.sales_ready is not None and part.sales_ready not in models:
            journey_errors[journey.path.name] = journey.error(
                ("trigger", "lead", "sales_ready"),
                f"scoring model {part.sales_ready!r} is missing or not valid",
            )
            del journeys[name]
    return Mapping(
        directory=directory,
        tables=tables,
        schedule=schedule,
        orphans=orphans,
        segments=segments,
        segment_errors=segment_errors,
        journeys=journeys,
        journey_errors=journey_errors,
        models=models,
        model_errors=model_errors,
    )
