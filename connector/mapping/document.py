"""Reading one admin-editable YAML file: text, structure, the line of every key, clear errors.

Every definition kind (tables, schedule, orphans, segments, journeys) is a strict pydantic model
read through `Document.parse`: unknown keys are refused, and any error — a YAML syntax error, a
file that is not UTF-8, a directory where a file should be, a value out of range — becomes one
`MappingError` naming the file, the key, its line and what was expected. Nothing a file can
contain raises anything else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping as AbstractMapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from connector.errors import MappingError

Location = tuple[int | str, ...]
M = TypeVar("M", bound=BaseModel)
_DURATION = re.compile(r"^\s*(\d{1,6})\s*(m|h|d|w)\s*$")
_DURATION_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


_IDENTIFIER = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def _identifier(value: str) -> str:
    if not _IDENTIFIER.match(value):
        raise ValueError("lower-case letters, digits, '-' and '_' (at most 64)")
    return value


def _time_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("an IANA time zone such as 'UTC' or 'Europe/Zurich'") from None
    return value


Identifier = Annotated[str, AfterValidator(_identifier)]  # a definition's name, a step's id
TimeZone = Annotated[str, AfterValidator(_time_zone)]


class Strict(BaseModel):
    """A definition: unknown keys are errors, values are frozen once read."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def location(loc: Location) -> str:
    """`tables.lead.columns` for a pydantic location; list positions as `steps[2]`."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def parse_duration(text: str) -> timedelta:
    """`30m`, `12h`, `7d` or `2w` as a timedelta; ValueError otherwise."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError("a duration such as '30m', '12h', '7d' or '2w'")
    return timedelta(**{_DURATION_UNITS[match.group(2)]: int(match.group(1))})


@dataclass(frozen=True)
class Document:
    """One YAML file: its data and the line of each key (1-based), by location."""

    path: Path
    data: Any
    lines: dict[Location, int] = field(repr=False)
    text: str = field(default="", repr=False)

    @classmethod
    def read(cls, path: Path) -> Document:
        """Read and parse `path`; MappingError for anything that is not readable YAML."""
        if path.is_dir():
            raise MappingError(str(path), "(file)", "a YAML file, but this is a directory")
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise MappingError(str(path), "(file)", "file not found") from None
        except OSError as exc:
            raise MappingError(str(path), "(file)", f"cannot be read: {exc.strerror}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise MappingError(
                str(path), f"line {line}", "not UTF-8 text (save the file as UTF-8)"
            ) from None
        return cls.from_text(path, text)

    @classmethod
    def from_text(cls, path: Path, text: str) -> Document:
        """Parse `text` as the content of `path` (a version kept in the store, say)."""
        try:
            node, data = _parse(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
            problem = getattr(exc, "problem", None) or "not valid YAML"
            raise MappingError(str(path), where, f"invalid YAML: {problem}") from None
        except RecursionError:
            raise MappingError(str(path), "(file)", "invalid YAML: nested too deeply") from None
        lines: dict[Location, int] = {}
        if node is not None:
            _collect_lines(node, (), lines)
        return cls(path, data, lines, text)

    def line(self, loc: Location) -> int | None:
        """The line of `loc`, or of the nearest key above it; None when unknown."""
        for end in range(len(loc), -1, -1):
            found = self.lines.get(tuple(loc[:end]))
            if found is not None:
                return found
        return None

    def error(self, loc: Location, expected: str) -> MappingError:
        """An error about the key at `loc`, with its line."""
        return MappingError(
            str(self.path), location(loc), expected, self.line(loc) if loc else None
        )

    def mapping(self) -> AbstractMapping[str, Any]:
        """The top level, which must be a mapping of keys to values."""
        if not isinstance(self.data, dict):
            raise MappingError(str(self.path), "(top level)", "a mapping of keys to values")
        return self.data

    def parse(self, model: type[M], data: Any = None, at: Location = ()) -> M:
        """Validate the document (or `data` found at `at` in it) against `model`.

        A check of the whole model names the key it is about by starting its message with
        `key: `; the error is then located at that key.
        """
        try:
            return model.model_validate(self.mapping() if data is None else data)
        except ValidationError as exc:
            # A misspelt key also makes the right one "missing": name the misspelling first.
            error = min(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
            loc, message = tuple(error["loc"]), expected(error)
            key, colon, rest = message.partition(": ")
            if not loc and colon and key in model.model_fields:
                loc, message = (key,), rest
            raise self.error((*at, *loc), message) from None


def expected(error: Any) -> str:
    """What a pydantic error says was expected, in an admin's words."""
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


def _parse(text: str) -> tuple[yaml.Node | None, Any]:
    """The node tree (for the lines) and the data of one YAML document, parsed once: by libyaml
    when PyYAML has it; a document libyaml refuses is parsed again by PyYAML's own parser, whose
    errors say more ("found character '\\t' that cannot start any token")."""
    try:
        return _parse_with(getattr(yaml, "CSafeLoader", yaml.SafeLoader), text)
    except yaml.YAMLError:
        return _parse_with(yaml.SafeLoader, text)


def _parse_with(loader_class: Any, text: str) -> tuple[yaml.Node | None, Any]:
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        return node, None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()


def _collect_lines(node: yaml.Node, loc: Location, lines: dict[Location, int]) -> None:
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                path = (*loc, str(key.value))
                _collect_lines(value, path, lines)
                lines[path] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _collect_lines(item, (*loc, index), lines)
