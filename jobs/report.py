"""`dvconnect report`: what the runs recorded, as numbers (terminal, JSON) or charts (HTML).

Read-only, and only from the store's own `dvc_` tables, aggregated in SQL so that memory does
not grow with the tables (the document holds one row per time bucket and series, never per
record):

* sync volume (rows read, upserted, deleted) per table and bucket, and its lag: the hours since
  the table's previous sync when each sync began (the store's staleness it ended), from
  `dvc_runs` — the sync's counts name each table it read;
* segment sizes at the end of each bucket with who entered and exited, from
  `dvc_segment_evaluations`;
* each journey's funnel (entered, each step reached, then goal, exited, failed, completed) and its
  branches (step → step, counted from `dvc_journey_history`);
* the activities journeys created per owner and day (`dvc_journey_records` whose write was
  done in `dvc_outbox`);
* API requests per job and bucket, and how many Dataverse refused with 429 (`dvc_runs`);
* lead scores' distribution per model and grade (`dvc_scores`), hand-offs per day
  (`dvc_handoffs`).

A bucket is an hour when the runs reported span at most three days, otherwise a day. Personal
data never appears: no names, e-mail addresses or record contents; owners by id only.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Float,
    Integer,
    String,
    and_,
    case,
    cast,
    extract,
    func,
    literal_column,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from connector import tables as dvc
from connector.clock import parse_stamp, stamp
from connector.errors import ConfigError
from jobs.context import Context
from jobs.runner import HTTP_COUNTS

DAY, HOUR = 10, 13  # a bucket: that many characters of a stored stamp (2027-01-04T08)
HOURLY_SPAN = timedelta(days=3)
TOP_OWNERS = 10  # the others are summed as "other owners"
OTHER_OWNERS = "other owners"
NO_OWNER = "no owner"
SCORE_BUCKETS = 20
FINISHED = ("succeeded", "partial")  # sync runs whose tables were read to the end
# How a member's history event without a next step ends its path (None: it does not).
OUTCOMES = {"converted": "goal reached", "exited": "exited", "failed": "failed",
            "stopped": "stopped"}  # fmt: skip
NOT_ENDINGS = ("capped", "retried", "migrated")
ENDINGS = ("goal reached", "exited", "failed", "completed", "stopped")
ENTERED = "entered"
_RELATIVE = re.compile(r"^(\d+)([dh])$")


def parse_since(text: str | None, now: datetime) -> str | None:
    """`--since`: an ISO-8601 date or time, or `7d` / `12h` before now; as a stored stamp."""
    if text is None:
        return None
    relative = _RELATIVE.match(text.strip())
    if relative:
        amount, unit = int(relative.group(1)), relative.group(2)
        return stamp(now - (timedelta(days=amount) if unit == "d" else timedelta(hours=amount)))
    try:
        return stamp(parse_stamp(text.strip()))
    except ValueError:
        raise ConfigError(
            f"--since {text!r}: expected an ISO-8601 date or time (2027-01-04, "
            "2027-01-04T09:00Z) or a duration before now (7d, 12h)"
        ) from None


def report_document(ctx: Context, since: str | None = None) -> dict[str, Any]:
    """Every figure of the report, aggregated in SQL; `since` a stored stamp or None (all)."""
    document: dict[str, Any] = {
        "generated_at": ctx.clock.stamp(),
        "since": since,
        "bucket": "day",
        "sync": {"volume": [], "lag": [], "tables": {}},
        "segments": [],
        "journeys": {},
        "activities": [],
        "requests": [],
        "scores": {},
        "handoffs": [],
    }
    if not ctx.store.exists:
        return document
    start = since or ""
    with ctx.store.engine.connect() as conn:
        length = _bucket_length(conn, start)
        document["bucket"] = "hour" if length == HOUR else "day"
        document["sync"] = _sync(ctx, conn, start, length)
        document["segments"] = _segments(conn, start, length)
        document["journeys"] = _journeys(ctx, conn, start)
        document["activities"] = _activities(conn, start)
        document["requests"] = _requests(ctx, conn, start, length)
        document["scores"] = _scores(ctx, conn)
        document["handoffs"] = _handoffs(conn, start)
    return document


# -- SQL helpers: the few expressions SQLite and PostgreSQL spell differently -----------------


def _json_number(ctx: Context, column: Any, *path: str) -> ColumnElement[Any]:
    """A number inside a JSON text column, NULL when the path is absent."""
    if ctx.store.engine.dialect.name == "postgresql":
        return cast(cast(column, JSONB)[path].astext, Float)
    return func.json_extract(column, "$" + "".join(f'."{key}"' for key in path))


def _hours_between(ctx: Context, later: Any, earlier: Any) -> ColumnElement[Any]:
    if ctx.store.engine.dialect.name == "postgresql":
        from sqlalchemy import TIMESTAMP

        moment = TIMESTAMP(timezone=True)
        return extract("epoch", cast(later, moment) - cast(earlier, moment)) / 3600.0
    return (func.julianday(later) - func.julianday(earlier)) * 24.0


def _constant(text: str) -> ColumnElement[str]:
    """A string of ours written into the SQL: PostgreSQL takes a bound parameter in a SELECT
    and the same in its GROUP BY for two different expressions."""
    assert "'" not in text
    return literal_column(f"'{text}'", String)


def _bucket(column: Any, length: int) -> ColumnElement[str]:
    """The first `length` characters of a stamp (constants in the SQL, as for `_constant`)."""
    return func.substr(column, literal_column("1"), literal_column(str(int(length))))


def _bucket_length(conn: Connection, start: str) -> int:
    r = dvc.runs.c
    first, last = conn.execute(
        select(func.min(r.started_at), func.max(r.started_at)).where(r.started_at >= start)
    ).one()
    if first is None or parse_stamp(last) - parse_stamp(first) > HOURLY_SPAN:
        return DAY
    return HOUR


# -- each part --------------------------------------------------------------------------------


def _sync(ctx: Context, conn: Connection, start: str, length: int) -> dict[str, Any]:
    r = dvc.runs.c
    volume, lag, tables = [], [], {}
    for table in ctx.mapping.tables:
        read = _json_number(ctx, r.counts, table, "read")
        mine = and_(r.job == "sync", read.is_not(None))
        bucket = _bucket(r.started_at, length).label("bucket")
        for row in conn.execute(
            select(
                bucket,
                func.count().label("runs"),
                func.sum(read).label("read"),
                func.sum(_json_number(ctx, r.counts, table, "upserted")).label("upserted"),
                func.sum(_json_number(ctx, r.counts, table, "deleted")).label("deleted"),
            )
            .where(mine, r.started_at >= start)
            .group_by(bucket)
            .order_by(bucket)
        ):
            volume.append({"bucket": row.bucket, "table": table, "runs": int(row.runs),
                           "read": int(row.read or 0), "upserted": int(row.upserted or 0),
                           "deleted": int(row.deleted or 0)})  # fmt: skip
        syncs = (
            select(
                r.started_at,
                _hours_between(
                    ctx, r.started_at, func.lag(r.started_at).over(order_by=r.run_id)
                ).label("hours"),
            )
            .where(mine, r.outcome.in_(FINISHED))
            .subquery()
        )
        bucket = _bucket(syncs.c.started_at, length).label("bucket")
        for row in conn.execute(
            select(bucket, func.max(syncs.c.hours).label("hours"))
            .where(syncs.c.started_at >= start, syncs.c.hours.is_not(None))
            .group_by(bucket)
            .order_by(bucket)
        ):
            lag.append({"bucket": row.bucket, "table": table, "hours": round(row.hours, 2)})
        state = ctx.store.load_state(table)
        hours = None
        if state.last_sync_at:
            elapsed = ctx.clock.now() - parse_stamp(state.last_sync_at)
            if elapsed >= timedelta(0):  # a store synced at a later simulated time: unknown
                hours = round(elapsed.total_seconds() / 3600, 2)
        tables[table] = {"last_sync_at": state.last_sync_at, "hours_since": hours}
    return {"volume": volume, "lag": lag, "tables": tables}


def _segments(conn: Connection, start: str, length: int) -> list[dict[str, Any]]:
    e = dvc.segment_evaluations.c
    bucket = _bucket(e.evaluated_at, length)
    last = (
        select(
            e.segment,
            bucket.label("bucket"),
            func.max(e.evaluation_id).label("last"),
            func.sum(e.entered).label("entered"),
            func.sum(e.exited).label("exited"),
        )
        .where(e.evaluated_at >= start)
        .group_by(e.segment, bucket)
        .subquery()
    )
    rows = conn.execute(
        select(last.c.segment, last.c.bucket, e.size, last.c.entered, last.c.exited)
        .join_from(last, dvc.segment_evaluations, e.evaluation_id == last.c.last)
        .order_by(last.c.segment, last.c.bucket)
    )
    return [{"segment": row.segment, "bucket": row.bucket, "size": int(row.size),
             "entered": int(row.entered), "exited": int(row.exited)} for row in rows]  # fmt: skip


def _ending() -> ColumnElement[Any]:
    """A history event's ending of a member's path, NULL when it is not one."""
    h = dvc.journey_history.c
    return case(
        (h.to_step.is_not(None), None),
        *((h.event == event, _constant(label)) for event, label in OUTCOMES.items()),
        (h.event.in_(NOT_ENDINGS), None),
        else_=_constant("completed"),
    )


def _journeys(ctx: Context, conn: Connection, start: str) -> dict[str, Any]:
    h = dvc.journey_history.c
    named = list(ctx.mapping.journeys)
    stored = conn.execute(select(h.journey).where(h.at >= start).distinct()).scalars()
    names = named + sorted(set(stored) - set(named))
    journeys: dict[str, Any] = {}
    for name in names:
        mine = and_(h.journey == name, h.at >= start)
        entered = conn.execute(
            select(func.count(h.member_id.distinct())).where(mine, h.event == ENTERED)
        ).scalar_one()
        reached: dict[str, int] = dict(conn.execute(
            select(h.to_step, func.count(h.member_id.distinct()))
            .where(mine, h.to_step.is_not(None)).group_by(h.to_step)
        ).all())  # fmt: skip
        # Grouped outside the subquery that classifies: PostgreSQL sees the parameters of an
        # expression in a SELECT and in its GROUP BY as different expressions.
        events = select(
            h.member_id, h.to_step, _ending().label("ending"),
            func.coalesce(h.step, _constant(ENTERED)).label("source"),
            func.coalesce(h.step, "").label("step"),
        ).where(mine).subquery()  # fmt: skip
        e = events.c
        ended: dict[str, int] = dict(conn.execute(
            select(e.ending, func.count(e.member_id.distinct()))
            .where(e.ending.is_not(None)).group_by(e.ending)
        ).all())  # fmt: skip
        if not entered and not reached and not ended:
            journeys[name] = {"funnel": [], "links": []}
            continue
        journey = ctx.mapping.journeys.get(name)
        steps = [step.id for step in journey.steps] if journey else []
        steps += sorted(set(reached) - set(steps))
        funnel = [{"stage": ENTERED, "members": int(entered)}]
        funnel += [{"stage": step, "members": int(reached.get(step, 0))} for step in steps]
        funnel += [{"stage": end, "members": int(ended.get(end, 0))} for end in ENDINGS
                   if end not in ("completed", "stopped") or ended.get(end)]  # fmt: skip
        links = conn.execute(
            select(e.source, e.to_step, e.ending, func.count().label("n"))
            .where(or_(e.to_step.is_not(None), e.ending.is_not(None)),
                   e.step != func.coalesce(e.to_step, ""))
            .group_by(e.source, e.to_step, e.ending)
            .order_by(e.source, e.to_step, e.ending)
        )  # fmt: skip
        journeys[name] = {
            "funnel": funnel,
            "links": [
                {"source": row.source, "target": row.to_step or row.ending,
                 "ending": row.to_step is None, "moves": int(row.n)}
                for row in links
            ],
        }  # fmt: skip
    return journeys


def _activities(conn: Connection, start: str) -> list[dict[str, Any]]:
    r, o = dvc.journey_records.c, dvc.outbox.c
    made = and_(o.status == "done", r.day >= start[:DAY])
    owner = func.coalesce(r.owner_id, _constant(NO_OWNER))
    joined = dvc.journey_records.join(dvc.outbox, o.key == r.intent)
    top = (
        select(owner.label("owner"))
        .select_from(joined)
        .where(made)
        .group_by(owner)
        .order_by(func.count().desc(), owner)
        .limit(TOP_OWNERS)
        .scalar_subquery()
    )
    shown = case((owner.in_(top), owner), else_=_constant(OTHER_OWNERS)).label("owner")
    records = (
        select(r.day, r.table_name, shown).select_from(joined).where(made).subquery()
    )  # grouped outside, as in `_journeys`
    c = records.c
    rows = conn.execute(
        select(c.day, c.owner, c.table_name, func.count().label("n"))
        .group_by(c.day, c.owner, c.table_name)
        .order_by(c.day, c.owner, c.table_name)
    )
    return [{"day": row.day, "owner": row.owner, "table": row.table_name, "records": int(row.n)}
            for row in rows]  # fmt: skip


def _requests(ctx: Context, conn: Connection, start: str, length: int) -> list[dict[str, Any]]:
    r = dvc.runs.c
    bucket = _bucket(r.started_at, length).label("bucket")
    throttled = func.sum(_json_number(ctx, r.counts, HTTP_COUNTS, "throttled"))
    rows = conn.execute(
        select(
            bucket,
            r.job,
            func.count().label("runs"),
            func.sum(r.requests).label("requests"),
            throttled.label("throttled"),
        )
        .where(r.started_at >= start)
        .group_by(bucket, r.job)
        .order_by(bucket, r.job)
    )
    return [{"bucket": row.bucket, "job": row.job, "runs": int(row.runs),
             "requests": int(row.requests or 0), "throttled": int(row.throttled or 0)}
            for row in rows]  # fmt: skip


def _nice_width(low: float, high: float) -> float:
    """A round bucket width (1, 2 or 5 times a power of ten) giving at most SCORE_BUCKETS."""
    span = high - low
    if span <= 0:
        return 1.0
    raw = span / SCORE_BUCKETS
    power = 10 ** math.floor(math.log10(raw))
    return float(next(f * power for f in (1, 2, 5, 10) if f * power >= raw))


def _scores(ctx: Context, conn: Connection) -> dict[str, Any]:
    k = dvc.scores.c
    models = list(ctx.mapping.models)
    models += sorted(set(conn.execute(select(k.model).distinct()).scalars()) - set(models))
    result: dict[str, Any] = {}
    for model in models:
        low, high = conn.execute(
            select(func.min(k.score), func.max(k.score)).where(k.model == model)
        ).one()
        if low is None:
            result[model] = {"width": None, "buckets": []}
            continue
        width = _nice_width(float(low), float(high))
        base = math.floor(float(low) / width) * width
        position = (k.score - literal_column(repr(base))) / literal_column(repr(width))
        index = (
            func.floor(position) if ctx.store.engine.dialect.name == "postgresql"
            else cast(position, Integer)  # SQLite truncates, and position >= 0
        ).label("bucket")  # fmt: skip
        rows = conn.execute(
            select(index, k.grade, func.count().label("n"))
            .where(k.model == model)
            .group_by(index, k.grade)
            .order_by(index, k.grade)
        )
        result[model] = {
            "width": width,
            "buckets": [
                {"from": round(base + int(row.bucket) * width, 6),
                 "to": round(base + (int(row.bucket) + 1) * width, 6),
                 "grade": row.grade, "leads": int(row.n)}
                for row in rows
            ],
        }  # fmt: skip
    return result


def _handoffs(conn: Connection, start: str) -> list[dict[str, Any]]:
    h = dvc.handoffs.c
    rows = conn.execute(
        select(h.day, h.model, h.table_name, func.count().label("n"))
        .where(h.at >= start)
        .group_by(h.day, h.model, h.table_name)
        .order_by(h.day, h.model, h.table_name)
    )
    return [{"day": row.day, "model": row.model, "table": row.table_name,
             "handoffs": int(row.n)} for row in rows]  # fmt: skip


# -- the terminal's tables --------------------------------------------------------------------


def _table(title: str, headers: list[str], rows: list[list[Any]]) -> list[str]:
    if not rows:
        return [f"{title}: nothing recorded", ""]
    cells = [[f"{v:,}" if isinstance(v, int) else str(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        return (
            "  "
            + "  ".join(
                v.ljust(w) if i == 0 or not _numeric(v) else v.rjust(w)
                for i, (v, w) in enumerate(zip(values, widths, strict=True))
            ).rstrip()
        )

    return [f"{title}:", line(headers), *(line(row) for row in cells), ""]


def _numeric(text: str) -> bool:
    return bool(re.fullmatch(r"-?[\d,]+(\.\d+)?", text))


def text_lines(document: dict[str, Any]) -> list[str]:
    """The report as aligned tables: the same numbers the HTML charts draw."""
    since = f" since {document['since']}" if document["since"] else ""
    lines = [f"report at {document['generated_at']}{since}, per {document['bucket']}", ""]
    sync = document["sync"]
    lines += _table(
        "sync volume",
        [document["bucket"], "table", "runs", "read", "upserted", "deleted"],
        [[v["bucket"], v["table"], v["runs"], v["read"], v["upserted"], v["deleted"]]
         for v in sync["volume"]],
    )  # fmt: skip
    lines += _table(
        "sync lag (hours since the table's previous sync, when a sync began; the most per "
        + document["bucket"]
        + ")",
        [document["bucket"], "table", "hours"],
        [[v["bucket"], v["table"], f"{v['hours']:.2f}"] for v in sync["lag"]],
    )
    lines += _table(
        "tables now",
        ["table", "last sync", "hours since"],
        [[name, t["last_sync_at"] or "never", "-" if t["hours_since"] is None
          else f"{t['hours_since']:.2f}"] for name, t in sync["tables"].items()],
    )  # fmt: skip
    lines += _table(
        "segment sizes",
        ["segment", document["bucket"], "size", "entered", "exited"],
        [[s["segment"], s["bucket"], s["size"], s["entered"], s["exited"]]
         for s in document["segments"]],
    )  # fmt: skip
    for name, journey in document["journeys"].items():
        lines += _table(
            f"journey {name}: funnel (members)",
            ["stage", "members"],
            [[stage["stage"], stage["members"]] for stage in journey["funnel"]],
        )
        if journey["links"]:
            lines += _table(
                f"journey {name}: branches (moves)",
                ["from", "to", "moves"],
                [[link["source"], link["target"], link["moves"]] for link in journey["links"]],
            )
    lines += _table(
        "activities journeys created, per owner and day",
        ["day", "owner", "table", "records"],
        [[a["day"], a["owner"], a["table"], a["records"]] for a in document["activities"]],
    )
    lines += _table(
        "API requests and 429s",
        [document["bucket"], "job", "runs", "requests", "429s"],
        [[r["bucket"], r["job"], r["runs"], r["requests"], r["throttled"]]
         for r in document["requests"]],
    )  # fmt: skip
    for model, scored in document["scores"].items():
        lines += _table(
            f"lead scores, {model} (leads per score range and grade)",
            ["from", "to", "grade", "leads"],
            [[f"{b['from']:g}", f"{b['to']:g}", b["grade"], b["leads"]]
             for b in scored["buckets"]],
        )  # fmt: skip
    lines += _table(
        "hand-offs per day",
        ["day", "model", "table", "hand-offs"],
        [[h["day"], h["model"], h["table"], h["handoffs"]] for h in document["handoffs"]],
    )
    return lines[:-1]


# -- the HTML file ----------------------------------------------------------------------------

GRADE_COLORS = {"cold": "#6baed6", "warm": "#fd8d3c", "hot": "#d7301f"}
ENDING_COLORS = {"goal reached": "#2ca02c", "exited": "#7f7f7f", "failed": "#d62728",
                 "completed": "#17becf", "stopped": "#8c564b"}  # fmt: skip
CHART_HEIGHT = 360


def _moment(bucket: str) -> str:
    """A bucket as plotly reads dates: `2027-01-04` or `2027-01-04 08:00`."""
    return bucket if len(bucket) == DAY else f"{bucket[:DAY]} {bucket[DAY + 1 :]}:00"


def _time_axis(figure: Any, period: str) -> None:
    """A date x axis a bucket wider than its points on each side, bars a bucket wide (plotly
    would zoom on a single date down to milliseconds, and draw its bar a millisecond wide)."""
    step = timedelta(days=1) if period == "day" else timedelta(hours=1)
    moments = sorted({datetime.fromisoformat(str(x)) for trace in figure.data
                      for x in (trace.x or ())})  # fmt: skip
    if not moments:
        return
    figure.update_xaxes(type="date", range=[moments[0] - step * 0.7, moments[-1] + step * 0.7])
    if period == "day" and moments[-1] - moments[0] <= timedelta(days=14):
        figure.update_xaxes(dtick=86_400_000, tickformat="%b %-d")  # one tick a day, no hours
    figure.update_traces(width=step.total_seconds() * 1000 * 0.8, selector={"type": "bar"})


def _owner_label(owner: str) -> str:
    return owner if owner in (OTHER_OWNERS, NO_OWNER) else f"owner {owner[:8]}…"


def html_report(document: dict[str, Any]) -> str:
    """One self-contained HTML page (plotly.js inside, no network) with every chart."""
    import plotly.graph_objects as go
    from jinja2 import Environment
    from markupsafe import Markup
    from plotly.offline import get_plotlyjs
    from plotly.subplots import make_subplots

    bucket_name = document["bucket"]
    sections: list[dict[str, Any]] = []

    def chart(figure: Any, title: str, note: str = "", period: str | None = None) -> dict[str, Any]:
        if period is not None:
            _time_axis(figure, period)
        figure.update_layout(
            title={"text": title, "x": 0.01}, height=CHART_HEIGHT, template="plotly_white",
            margin={"l": 55, "r": 20, "t": 50, "b": 45}, legend={"font": {"size": 10}},
        )  # fmt: skip
        div = figure.to_html(
            full_html=False, include_plotlyjs=False, config={"displaylogo": False,
                                                             "responsive": True},
        )  # fmt: skip
        return {"html": Markup(div), "title": title, "note": note}  # noqa: S704 - plotly's own

    def empty(title: str, why: str) -> dict[str, Any]:
        return {"html": None, "title": title, "note": why}

    # sync
    sync = document["sync"]
    charts = []
    if sync["volume"]:
        figure = go.Figure()
        per_table: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for v in sync["volume"]:
            per_table[v["table"]].append(v)
        for table, values in per_table.items():
            figure.add_bar(
                name=table, x=[_moment(v["bucket"]) for v in values],
                y=[v["read"] for v in values],
                customdata=[[v["upserted"], v["deleted"], v["runs"]] for v in values],
                hovertemplate=f"{table}: %{{y:,}} read, %{{customdata[0]:,}} upserted, "
                "%{customdata[1]:,} deleted in %{customdata[2]} runs<extra></extra>",
            )  # fmt: skip
        figure.update_layout(barmode="stack", yaxis_title="rows read")
        charts.append(chart(figure, f"Sync volume per {bucket_name}", period=bucket_name))
    else:
        charts.append(empty("Sync volume", "no sync recorded in this period"))
    if sync["lag"]:
        figure = go.Figure()
        per_table = defaultdict(list)
        for v in sync["lag"]:
            per_table[v["table"]].append(v)
        for table, values in per_table.items():
            figure.add_scatter(name=table, mode="lines+markers",
                               x=[_moment(v["bucket"]) for v in values],
                               y=[v["hours"] for v in values])  # fmt: skip
        figure.update_layout(yaxis_title="hours since the previous sync")
        note = (
            "When each sync began: hours since the table's previous sync (the most per "
            f"{bucket_name})."
        )
        charts.append(chart(figure, "Sync lag", note, bucket_name))
    else:
        charts.append(empty("Sync lag", "fewer than two syncs of a table in this period"))
    sections.append({"title": "Sync", "charts": charts})

    # segments
    charts = []
    per_segment: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in document["segments"]:
        per_segment[s["segment"]].append(s)
    for segment, values in per_segment.items():
        if not any(v["size"] or v["entered"] or v["exited"] for v in values):
            charts.append(empty(f"Segment {segment}", "no member at any evaluation in this "
                                "period (nothing to draw)"))  # fmt: skip
            continue
        figure = make_subplots(specs=[[{"secondary_y": True}]])
        x = [_moment(v["bucket"]) for v in values]
        figure.add_bar(name="entered", x=x, y=[v["entered"] for v in values],
                       marker_color="#2ca02c", secondary_y=False)  # fmt: skip
        figure.add_bar(name="exited", x=x, y=[-v["exited"] for v in values],
                       marker_color="#d62728", secondary_y=False)  # fmt: skip
        figure.add_scatter(name="size", x=x, y=[v["size"] for v in values],
                           mode="lines+markers", line_color="#1f77b4",
                           secondary_y=True)  # fmt: skip
        figure.update_layout(barmode="relative")
        figure.update_yaxes(title_text="entered / exited", secondary_y=False)
        figure.update_yaxes(title_text="members", rangemode="tozero", secondary_y=True)
        charts.append(
            chart(
                figure,
                f"Segment {segment}",
                f"Size at the end of each {bucket_name}, members who entered and exited.",
                bucket_name,
            )
        )
    if not charts:
        charts.append(empty("Segments", "no segment evaluated in this period"))
    sections.append({"title": "Segments", "charts": charts})

    # journeys
    charts = []
    for name, journey in document["journeys"].items():
        if not journey["funnel"]:
            charts.append(empty(f"Journey {name}", "no member moved in this period"))
            continue
        stages = journey["funnel"]
        colors = [ENDING_COLORS.get(s["stage"], "#1f77b4") for s in stages]
        figure = go.Figure(go.Funnel(
            y=[s["stage"] for s in stages], x=[s["members"] for s in stages],
            marker={"color": colors}, textinfo="value",
        ))  # fmt: skip
        charts.append(
            chart(
                figure,
                f"Journey {name}: funnel",
                "Members who entered, reached each step, and how they left.",
            )
        )
        nodes: dict[tuple[bool, str], int] = {}
        for link in journey["links"]:
            for key in ((False, link["source"]), (link["ending"], link["target"])):
                nodes.setdefault(key, len(nodes))
        labels = [label for _, label in nodes]
        node_colors = [ENDING_COLORS.get(label, "#1f77b4") if ending else "#1f77b4"
                       for ending, label in nodes]  # fmt: skip
        figure = go.Figure(go.Sankey(
            arrangement="snap",
            node={"label": labels, "color": node_colors, "pad": 14, "thickness": 14},
            link={"source": [nodes[(False, link["source"])] for link in journey["links"]],
                  "target": [nodes[(link["ending"], link["target"])]
                             for link in journey["links"]],
                  "value": [link["moves"] for link in journey["links"]]},
        ))  # fmt: skip
        charts.append(
            chart(
                figure,
                f"Journey {name}: branches",
                "Moves from step to step, from the journey's history.",
            )
        )
    if not charts:
        charts.append(empty("Journeys", "no journey"))
    sections.append({"title": "Journeys", "charts": charts})

    # activities and requests
    charts = []
    if document["activities"]:
        per_owner: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for a in document["activities"]:
            per_owner[a["owner"]][a["day"]] += a["records"]
        figure = go.Figure()
        for owner, days in per_owner.items():
            figure.add_bar(name=_owner_label(owner), x=list(days), y=list(days.values()),
                           hovertext=owner, hovertemplate="%{hovertext}: %{y:,} on %{x}"
                           "<extra></extra>")  # fmt: skip
        figure.update_layout(barmode="stack", yaxis_title="records created")
        charts.append(
            chart(
                figure,
                "Activities created by journeys, per owner and day",
                f"The {TOP_OWNERS} busiest owners by id; the rest together.",
                "day",
            )
        )
    else:
        charts.append(empty("Activities created by journeys", "none in this period"))
    if document["requests"]:
        figure = make_subplots(specs=[[{"secondary_y": True}]])
        per_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
        throttled: dict[str, int] = defaultdict(int)
        for r in document["requests"]:
            per_job[r["job"]].append(r)
            throttled[r["bucket"]] += r["throttled"]
        for job, values in per_job.items():
            figure.add_bar(name=job, x=[_moment(v["bucket"]) for v in values],
                           y=[v["requests"] for v in values], secondary_y=False)  # fmt: skip
        figure.add_scatter(name="429s", x=[_moment(b) for b in throttled],
                           y=list(throttled.values()), mode="lines+markers",
                           line_color="#d62728", secondary_y=True)  # fmt: skip
        figure.update_layout(barmode="stack")
        figure.update_yaxes(title_text="requests", secondary_y=False)
        most = max(throttled.values())
        figure.update_yaxes(title_text="429s", range=[0, max(most, 1) * 1.15],
                            dtick=max(1, math.ceil(most / 5)), secondary_y=True)  # fmt: skip
        charts.append(
            chart(
                figure,
                f"API requests per job and {bucket_name}, and 429s",
                "Requests sent by each job's runs; 429s: refused by service "
                "protection, then retried.",
                bucket_name,
            )
        )
    else:
        charts.append(empty("API requests", "no run in this period"))
    sections.append({"title": "Activities and API", "charts": charts})

    # scoring
    charts = []
    for model, scored in document["scores"].items():
        if not scored["buckets"]:
            charts.append(empty(f"Lead scores, {model}", "no lead scored yet"))
            continue
        figure = go.Figure()
        per_grade: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for b in scored["buckets"]:
            per_grade[b["grade"]].append(b)
        for grade, values in sorted(per_grade.items(), key=lambda g: list(GRADE_COLORS).index(
                g[0]) if g[0] in GRADE_COLORS else 9):  # fmt: skip
            figure.add_bar(name=grade, x=[(b["from"] + b["to"]) / 2 for b in values],
                           y=[b["leads"] for b in values], width=scored["width"] * 0.95,
                           marker_color=GRADE_COLORS.get(grade),
                           customdata=[[b["from"], b["to"]] for b in values],
                           hovertemplate=f"{grade}: %{{y:,}} leads scored %{{customdata[0]}} to "
                           "%{customdata[1]}<extra></extra>")  # fmt: skip
        figure.update_layout(barmode="stack", xaxis_title="score", yaxis_title="leads",
                             yaxis_type="log")  # fmt: skip
        charts.append(
            chart(figure, f"Lead scores, {model}", "Leads per score range, by grade (log scale).")
        )
    if document["handoffs"]:
        figure = go.Figure()
        per_model: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for h in document["handoffs"]:
            per_model[h["model"]][h["day"]] += h["handoffs"]
        for model, days in per_model.items():
            figure.add_bar(name=model, x=list(days), y=list(days.values()))
        figure.update_layout(barmode="stack", yaxis_title="hand-offs", showlegend=True)
        charts.append(chart(figure, "Hand-offs to owners per day", period="day"))
    elif document["scores"]:
        charts.append(empty("Hand-offs to owners", "none in this period"))
    if charts:
        sections.append({"title": "Lead scoring", "charts": charts})

    template = Environment(autoescape=True).from_string(PAGE)
    return template.render(
        document=document, sections=sections,
        plotly_js=Markup(get_plotlyjs().replace("</script", "<\\/script")),  # noqa: S704
        figures=json.dumps(sum(1 for s in sections for c in s["charts"] if c["html"])),
    )  # fmt: skip


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>dvconnect report {{ document.generated_at }}</title>
<script>{{ plotly_js }}</script>
<style>
  body { font-family: system-ui, sans-serif; margin: 16px 24px; color: #222; background: #fafafa; }
  h1 { font-size: 20px; margin: 0 0 4px; }
  h2 { font-size: 16px; margin: 22px 0 8px; border-bottom: 1px solid #ddd; }
  .meta { color: #666; font-size: 13px; }
  .grid { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 12px; }
  .chart { background: #fff; border: 1px solid #e3e3e3; border-radius: 4px; padding: 4px; }
  .note { color: #666; font-size: 12px; margin: 2px 8px 6px; }
  .empty { padding: 16px; }
</style>
</head>
<body>
<h1>dvconnect report</h1>
<div class="meta">generated {{ document.generated_at }}{% if document.since %}, since
{{ document.since }}{% endif %}; per {{ document.bucket }}; from the store's own records
(no names or e-mail addresses: owners by id)</div>
{% for section in sections %}
<h2>{{ section.title }}</h2>
<div class="grid">
{% for c in section.charts %}
  {% if c.html %}
  <section class="chart" data-chart="{{ c.title }}">{{ c.html }}
    {% if c.note %}<div class="note">{{ c.note }}</div>{% endif %}</section>
  {% else %}
  <section class="chart empty" data-empty="{{ c.title }}"><strong>{{ c.title }}</strong>:
    {{ c.note }}</section>
  {% endif %}
{% endfor %}
</div>
{% endfor %}
<script>document.body.dataset.figures = {{ figures }};</script>
</body>
</html>
"""
