"""`segments/*.yaml`: one segment per file, its OData conditions compiled once.

A bad segment does not stop the rest: each file either gives a `Segment` or a `MappingError`
(kept by file name), so `check` fails on it while a scheduled run evaluates the others. A
segment whose exclusion is missing, bad, or part of a cycle is bad too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, PrivateAttr

from connector.errors import MappingError
from connector.filters import CompiledFilter
from connector.mapping.document import Document, Identifier, Strict
from connector.mapping.tables import TableMapping, compile_filter

Channel = Literal["any", "email", "phone"]
CHANNEL_OPT_OUTS: dict[str, str] = {"email": "donotemail", "phone": "donotphone"}
MAX_LIMIT = 2**31 - 1


class Segment(Strict):
    """One segment: active contacts with a lead matching `lead` (if given) matching `contact`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Identifier
    description: str = ""
    lead: str | None = None
    contact: str | None = None
    exclude: str | None = None
    limit: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    channel: Channel = "any"
    _document: Document | None = PrivateAttr(None)
    _filters: dict[str, CompiledFilter] = PrivateAttr(default_factory=dict)

    @property
    def path(self) -> Path:
        assert self._document is not None, "segments are made by load_segment"
        return self._document.path

    def error(self, key: str, expected: str) -> MappingError:
        """An error about one of this segment's keys, with its line."""
        assert self._document is not None, "segments are made by load_segment"
        return self._document.error((key,), expected)

    def condition(self, table: str) -> CompiledFilter | None:
        """The compiled `lead` or `contact` condition, when the segment has one."""
        return self._filters.get(table)


def load_segment(path: Path, tables: dict[str, TableMapping]) -> Segment:
    """One segment file, parsed and its filters compiled against the synced columns."""
    document = Document.read(path)
    segment = document.parse(Segment)
    if segment.lead is None and segment.contact is None:
        raise document.error((), "a 'lead' condition, a 'contact' one, or both")
    required: dict[str, list[str]] = {"contact": ["contactid", "statecode"], "lead": []}
    if segment.channel != "any":
        required["contact"].append(CHANNEL_OPT_OUTS[segment.channel])
    if segment.lead is not None:
        required["lead"].append("_parentcontactid_value")
    for table, columns in required.items():
        synced = tables[table].columns if table in tables else {}
        missing = [c for c in columns if c not in synced]
        if missing:
            raise document.error((), f"needs tables.yaml to sync {table} {', '.join(missing)}")
    segment._document = document
    for key in ("lead", "contact"):
        text = getattr(segment, key)
        if text is None:
            continue
        segment._filters[key] = compile_filter(document, (key,), text, key, tables)
    return segment


def load_segments(
    directory: Path, tables: dict[str, TableMapping]
) -> tuple[dict[str, Segment], dict[str, MappingError]]:
    """Every good segment of `directory` by name, and an error per bad file (by file name)."""
    segments: dict[str, Segment] = {}
    errors: dict[str, MappingError] = {}

    for path in sorted(directory.glob("*.yaml")) if directory.is_dir() else []:
        try:
            segment = load_segment(path, tables)
        except MappingError as exc:
            errors[path.name] = exc
            continue
        if segment.name in segments:
            first = segments[segment.name].path.name
            errors[path.name] = segment.error(
                "name", f"segment {segment.name!r} is already defined in {first}"
            )
            continue
        segments[segment.name] = segment
    rejected = True
    while rejected:  # a segment excluding a rejected one is rejected in turn
        rejected = False
        for segment in list(segments.values()):
            problem = _exclusion_problem(segment, segments)
            if problem is not None:
                errors[segment.path.name] = segment.error("exclude", problem)
                del segments[segment.name]
                rejected = True
    return segments, errors


def _exclusion_problem(segment: Segment, segments: dict[str, Segment]) -> str | None:
    """Why the chain of exclusions starting at `segment` is unusable, or None."""
    chain = [segment.name]
    while (excluded := segments[chain[-1]].exclude) is not None:
        if excluded in chain:
            return f"exclusions form a cycle: {' -> '.join([*chain, excluded])}"
        if excluded not in segments:
            return f"segment {excluded!r} is missing or not valid"
        chain.append(excluded)
    return None
