"""`scoring/*.yaml`: lead-scoring models, one per file, their conditions compiled once.

A model names the leads it scores (`leads`, an OData filter on the lead), rules that add or
remove points — each over one source: the lead, its parent contact, the activities regarding
it (`email`, `phonecall`, `task`, optionally only those a journey made) or membership of a
segment — once per lead or once per matching record with an optional cap, how points decay with
age, the grades, the sales-ready threshold, what is written back to the lead, and the hand-off
to the lead's owner when it becomes sales-ready.

A bad model does not stop the others: each file gives a `Model` or a `MappingError` (kept by
file name), so `check` fails on it while a scheduled run scores with the rest. A model writing a
lead column that another model (earlier by file name) writes is refused: which one should win is
not for dvconnect to guess.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, model_validator

from connector.errors import MappingError
from connector.filters import CompiledFilter
from connector.mapping.document import Document, Identifier, Location, Strict, TimeZone
from connector.mapping.journeys import BusinessHours, Delay
from connector.mapping.tables import TableMapping, compile_filter

SCORED_ACTIVITIES = ("email", "phonecall", "task")
SOURCES = ("lead", "contact", *SCORED_ACTIVITIES, "in_segment")
RATING = "leadqualitycode"  # the lead's Rating: 1 Hot, 2 Warm, 3 Cold
RATINGS = {"hot": 1, "warm": 2, "cold": 3}


class ActivityRule(Strict):
    """Activities regarding the lead that meet `filter`; with `journey`, only those it made."""

    filter: str
    journey: str | None = None
    _compiled: CompiledFilter | None = PrivateAttr(None)

    @property
    def compiled(self) -> CompiledFilter:
        assert self._compiled is not None, "rules are compiled by load_model"
        return self._compiled


class Rule(Strict):
    """Points for the leads that meet one condition, once per lead or per matching record."""

    id: Identifier
    points: int = Field(ge=-1000, le=1000)
    reason: str = Field(min_length=1, max_length=200)  # in the hand-off: "opened a launch e-mail"
    lead: str | None = None
    contact: str | None = None
    email: ActivityRule | None = None
    phonecall: ActivityRule | None = None
    task: ActivityRule | None = None
    in_segment: str | None = None
    per: Literal["lead", "record"] = "lead"
    cap: int | None = Field(default=None, ge=1, le=100_000)  # the most points (either sign)
    _compiled: CompiledFilter | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _one_source(self) -> Rule:
        given = [source for source in SOURCES if getattr(self, source) is not None]
        if len(given) != 1:
            found = f" (found {', '.join(given)})" if given else ""
            raise ValueError(f"a rule has exactly one of {', '.join(SOURCES)}{found}")
        if self.points == 0:
            raise ValueError("points: not 0 (a rule that gives nothing is a mistake)")
        if self.per == "record" and self.activity is None:
            raise ValueError("per: record counts activities; this rule has none")
        return self

    @property
    def source(self) -> str:
        return next(source for source in SOURCES if getattr(self, source) is not None)

    @property
    def activity(self) -> ActivityRule | None:
        return self.email or self.phonecall or self.task

    @property
    def compiled(self) -> CompiledFilter:
        """The compiled `lead` or `contact` filter."""
        assert self._compiled is not None, "rules are compiled by load_model"
        return self._compiled


class Decay(Strict):
    """Activities' points older than `after` count `weight` of themselves; older than `expire`,
    nothing. (A condition on the lead, its contact or a segment counts whole while it holds.)"""

    after: Delay | None = None
    weight: float = Field(default=0.5, gt=0, lt=1)
    expire: Delay | None = None

    @model_validator(mode="after")
    def _calendar(self) -> Decay:
        for key in ("after", "expire"):
            delay = getattr(self, key)
            if delay is not None and delay.calendar is None:
                raise ValueError(f"{key}: calendar time such as 30d (points age every day)")
            if delay is not None and delay.calendar.total_seconds() <= 0:
                raise ValueError(f"{key}: a positive time such as 30d")
        if self.after is None and self.expire is None:
            raise ValueError("after: or expire: (or both)")
        if self.after and self.expire and self.expire.calendar <= self.after.calendar:  # type: ignore[operator]
            raise ValueError("expire: must be longer than after")
        return self


class Grades(Strict):
    """Scores from `warm` up are warm, from `hot` up hot; below `warm`, cold."""

    warm: int
    hot: int

    @model_validator(mode="after")
    def _order(self) -> Grades:
        if self.hot <= self.warm:
            raise ValueError("hot: must be above warm (cold < warm < hot)")
        return self

    def of(self, score: float) -> str:
        return "hot" if score >= self.hot else "warm" if score >= self.warm else "cold"


class Write(Strict):
    """What goes back to the lead: its Rating from the grade, and the score in a column."""

    rating: bool = True
    score: str | None = None  # a number column of the lead, e.g. new_leadscore


class HandOff(Strict):
    """A task or call for the lead's owner when the lead becomes sales-ready."""

    activity: Literal["task", "phonecall"] = "task"
    subject: str = "Sales-ready: {{ lead.fullname or lead.subject }}"
    due: Delay = Delay(business_days=1)
    quiet: Delay = Field(default_factory=lambda: Delay.model_validate("30d"))  # between two
    timezone: TimeZone = "UTC"
    business_hours: BusinessHours = BusinessHours()
    per_owner_per_day: int | None = Field(default=None, ge=1, le=10_000)

    @model_validator(mode="after")
    def _quiet(self) -> HandOff:
        if self.quiet.calendar is None:
            raise ValueError("quiet: calendar time such as 30d")
        return self


class Model(Strict):
    """One scoring model, as its file says."""

    name: Identifier
    description: str = ""
    leads: str  # which leads it scores: an OData filter on the lead
    rules: list[Rule] = Field(min_length=1, max_length=100)
    decay: Decay | None = None
    grades: Grades
    sales_ready: int
    write: Write = Write()
    hand_off: HandOff | None = None
    _document: Document | None = PrivateAttr(None)
    _leads: CompiledFilter | None = PrivateAttr(None)

    @property
    def path(self) -> Path:
        assert self._document is not None, "models are made by load_model"
        return self._document.path

    @property
    def text(self) -> str:
        assert self._document is not None
        return self._document.text

    def error(self, loc: Location, expected: str) -> MappingError:
        assert self._document is not None, "models are made by load_model"
        return self._document.error(loc, expected)

    @property
    def scored(self) -> CompiledFilter:
        assert self._leads is not None
        return self._leads

    def columns_written(self) -> list[str]:
        return ([RATING] if self.write.rating else []) + (
            [self.write.score] if self.write.score else []
        )


def load_model(path: Path, tables: dict[str, TableMapping]) -> Model:
    """One model file, parsed, its filters compiled against the synced columns."""
    document = Document.read(path)
    model = document.parse(Model)
    model._document = document
    if "lead" not in tables or "_ownerid_value" not in tables["lead"].columns:
        raise document.error((), "needs tables.yaml to sync lead with _ownerid_value")
    model._leads = compile_filter(document, ("leads",), model.leads, "lead", tables)
    seen: dict[str, int] = {}
    for position, rule in enumerate(model.rules):
        if rule.id in seen:
            raise document.error(
                ("rules", position, "id"),
                f"rule {rule.id!r} is already defined at rules[{seen[rule.id]}]",
            )
        seen[rule.id] = position
        source = rule.source
        if source in ("lead", "contact"):
            text = getattr(rule, source)
            rule._compiled = compile_filter(
                document, ("rules", position, source), text, source, tables
            )
        elif rule.activity is not None:
            loc: Location = ("rules", position, source, "filter")
            if source in tables and "_regardingobjectid_value" not in tables[source].columns:
                raise document.error(
                    loc[:-1], f"needs tables.yaml to sync {source} _regardingobjectid_value"
                )
            rule.activity._compiled = compile_filter(
                document, loc, rule.activity.filter, source, tables
            )
    if model.sales_ready < model.grades.warm:
        raise document.error(
            ("sales_ready",),
            f"must be at least grades.warm ({model.grades.warm}): a cold lead is never sales-ready",
        )
    if model.write.score is not None:
        kind = tables["lead"].columns.get(model.write.score)
        if kind not in ("integer", "number", "bigint"):
            what = "is not synced" if kind is None else f"is a {kind} column"
            raise document.error(
                ("write", "score"),
                f"{model.write.score!r} {what}: name a number column of the "
                "lead that tables.yaml syncs",
            )
    if model.write.rating and RATING not in tables["lead"].columns:
        raise document.error(("write", "rating"), f"needs tables.yaml to sync lead {RATING}")
    return model


def load_models(
    directory: Path, tables: dict[str, TableMapping], segments: set[str], journeys: set[str]
) -> tuple[dict[str, Model], dict[str, MappingError]]:
    """Every good model of `directory` by name, and an error per bad file (by file name)."""
    models: dict[str, Model] = {}
    errors: dict[str, MappingError] = {}
    writers: dict[str, str] = {}  # lead column: the model writing it
    for path in sorted(directory.glob("*.yaml")) if directory.is_dir() else []:
        try:
            model = load_model(path, tables)
            _check_names(model, segments, journeys)
        except MappingError as exc:
            errors[path.name] = exc
            continue
        if model.name in models:
            first = models[model.name].path.name
            errors[path.name] = model.error(
                ("name",), f"model {model.name!r} is already defined in {first}"
            )
            continue
        clash = next((c for c in model.columns_written() if c in writers), None)
        if clash is not None:
            other = models[writers[clash]]
            errors[path.name] = model.error(
                ("write",), f"{other.path.name} writes lead {clash} too: one model per column"
            )
            continue
        writers.update(dict.fromkeys(model.columns_written(), model.name))
        models[model.name] = model
    return models, errors


def _check_names(model: Model, segments: set[str], journeys: set[str]) -> None:
    for position, rule in enumerate(model.rules):
        if rule.in_segment is not None and rule.in_segment not in segments:
            raise model.error(
                ("rules", position, "in_segment"),
                f"segment {rule.in_segment!r} is missing or not valid",
            )
        activity = rule.activity
        if (
            activity is not None
            and activity.journey is not None
            and (activity.journey not in journeys)
        ):
            raise model.error(
                ("rules", position, rule.source, "journey"),
                f"journey {activity.journey!r} is missing or not valid",
            )
