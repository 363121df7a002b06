"""The HTTP side of `dvconnect schedule`: Prometheus `/metrics` and `/healthz`, on an optional port.

Off unless `DVCONNECT_METRICS_PORT` is set; it listens on `DVCONNECT_METRICS_HOST` (loopback by
default). The port is bound before anything else happens, so a port in use stops the command
(exit 2, naming it) before the store or Dataverse is touched.

What is shown is read from the store at scrape time by `StoreCollector` — runs, durations,
records read and written, sync lag, segments, journeys, the outbox, scoring grades — so every
instance sharing a store shows the same values: a dashboard takes `max` of these across
instances, never `sum`. Only what the store does not keep is counted in this process
(`connector.telemetry`: HTTP requests by status, waits on Dataverse); those are per instance
and add up. No series carries a record id, a name or a value from a record.

`/healthz` answers 200 `ok`, or 503 with one line per unhealthy job (`jobs.health`), or 503
when the store cannot be read.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import version
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector
from sqlalchemy import TIMESTAMP, BigInteger, Connection, cast, extract, func, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from connector import tables as dvc
from connector import telemetry
from connector.clock import parse_stamp
from connector.errors import ConfigError
from connector.settings import Settings
from connector.store import store_error
from jobs.context import Context
from jobs.health import job_problems

log = logging.getLogger("dvconnect.service")

SYNC_COUNTS = ("read", "upserted", "deleted")
StartResponse = Callable[..., Any]


class StoreCollector(Collector):
    """Every series read from the store, computed when Prometheus scrapes."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("dvconnect_store_up", "1 when the store could be read")
        try:
            with self._ctx.store.engine.connect() as conn:
                families = list(self._families(conn))
        except SQLAlchemyError as exc:
            log.warning("metrics: %s", store_error(exc, self._ctx.settings.database_url))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self, conn: Connection) -> Iterator[Metric]:
        yield from self._runs(conn)
        yield from self._sync(conn)
        yield from self._writes(conn)
        yield from self._segments(conn)
        yield from self._journeys(conn)
        yield from self._scoring(conn)

    def _runs(self, conn: Connection) -> Iterator[Metric]:
        r = dvc.runs.c
        runs = CounterMetricFamily(
            "dvconnect_runs",
            "Job runs by outcome (running ones not included)",
            labels=["job", "outcome"],
        )
        for job, outcome, n in conn.execute(
            select(r.job, r.outcome, func.count()).where(r.outcome != "running")
            .group_by(r.job, r.outcome)
        ):  # fmt: skip
            runs.add_metric([job, outcome], n)
        yield runs
        seconds = _seconds_between(r.started_at, r.finished_at, conn.dialect.name)
        duration = SummaryMetricFamily(
            "dvconnect_run_duration_seconds",
            "Duration of finished runs (from their recorded start and end, whole seconds)",
            labels=["job"],
        )
        last = GaugeMetricFamily(
            "dvconnect_run_last_duration_seconds",
            "Duration of the latest finished run",
            labels=["job"],
        )
        finished = r.finished_at.is_not(None)
        for job, count, total in conn.execute(
            select(r.job, func.count(), func.sum(seconds)).where(finished).group_by(r.job)
        ):
            duration.add_metric([job], count, float(total or 0))
        latest = select(func.max(r.run_id)).where(finished).group_by(r.job)
        for job, took in conn.execute(select(r.job, seconds).where(r.run_id.in_(latest))):
            last.add_metric([job], float(took or 0))
        yield duration
        yield last
        success = GaugeMetricFamily(
            "dvconnect_run_last_success_timestamp_seconds",
            "When the latest run that ran to its end (succeeded or partial) finished",
            labels=["job"],
        )
        for job, at in conn.execute(
            select(r.job, func.max(r.finished_at))
            .where(r.outcome.in_(("succeeded", "partial"))).group_by(r.job)
        ):  # fmt: skip
            success.add_metric([job], parse_stamp(at).timestamp())
        yield success
        problems = {p.job for p in job_problems(self._ctx, conn)}
        healthy = GaugeMetricFamily(
            "dvconnect_job_healthy",
            "0 when /healthz finds the job failing or stuck",
            labels=["job"],
        )
        for job in self._ctx.mapping.schedule.jobs:
            healthy.add_metric([job], 0 if job in problems else 1)
        yield healthy
        requests = CounterMetricFamily(
            "dvconnect_run_requests", "Dataverse requests sent by finished runs", labels=["job"]
        )
        for job, n in conn.execute(select(r.job, func.sum(r.requests)).group_by(r.job)):
            requests.add_metric([job], n or 0)
        yield requests

    def _sync(self, conn: Connection) -> Iterator[Metric]:
        r, s = dvc.runs.c, dvc.sync_state.c
        records = CounterMetricFamily(
            "dvconnect_sync_records",
            "Rows the sync read from Dataverse, upserted into the store or deleted from it",
            labels=["table", "op"],
        )
        tables = list(self._ctx.mapping.tables)
        sums = [
            func.coalesce(func.sum(_json_int(r.counts, conn.dialect.name, table, op)), 0)
            for table in tables
            for op in SYNC_COUNTS
        ]
        totals = iter(conn.execute(select(*sums).where(r.job == "sync")).one())
        for table in tables:
            for op in SYNC_COUNTS:
                records.add_metric([table, op], next(totals))
        yield records
        lag = GaugeMetricFamily(
            "dvconnect_sync_lag_seconds",
            "Seconds since the latest completed sync of the table",
            labels=["table"],
        )
        last = GaugeMetricFamily(
            "dvconnect_sync_last_timestamp_seconds",
            "When the latest sync of the table completed",
            labels=["table"],
        )
        now = self._ctx.clock.now()
        for table, at in conn.execute(select(s.table_name, s.last_sync_at)):
            if at is None or table not in self._ctx.mapping.tables:
                continue
            lag.add_metric([table], max(0.0, (now - parse_stamp(at)).total_seconds()))
            last.add_metric([table], parse_stamp(at).timestamp())
        yield lag
        yield last

    def _writes(self, conn: Connection) -> Iterator[Metric]:
        o = dvc.outbox.c
        written = CounterMetricFamily(
            "dvconnect_dataverse_writes",
            "Writes into Dataverse made (done) or refused (failed), by job, table and kind",
            labels=["job", "table", "kind", "outcome"],
        )
        depth = GaugeMetricFamily(
            "dvconnect_outbox_depth", "Writes recorded and not yet sent, by job", labels=["job"]
        )
        for job in self._ctx.mapping.schedule.jobs:
            depth.add_metric([job], 0)
        pending: dict[str, int] = {}
        for job, table, kind, status, n in conn.execute(
            select(o.job, o.table_name, o.kind, o.status, func.count())
            .group_by(o.job, o.table_name, o.kind, o.status)
        ):  # fmt: skip
            if status == "pending":
                pending[job] = pending.get(job, 0) + n
            else:
                written.add_metric([job, table, kind, status], n)
        for job, n in pending.items():
            depth.add_metric([job], n)
        yield written
        yield depth

    def _segments(self, conn: Connection) -> Iterator[Metric]:
        e = dvc.segment_evaluations.c
        size = GaugeMetricFamily(
            "dvconnect_segment_members", "Members at the latest evaluation", labels=["segment"]
        )
        latest = select(func.max(e.evaluation_id)).group_by(e.segment)
        for segment, n in conn.execute(
            select(e.segment, e.size).where(e.evaluation_id.in_(latest))
        ):
            size.add_metric([segment], n)
        yield size
        moved = CounterMetricFamily(
            "dvconnect_segment_changes",
            "Contacts that entered or exited the segment, over every evaluation",
            labels=["segment", "change"],
        )
        for segment, entered, exited in conn.execute(
            select(e.segment, func.sum(e.entered), func.sum(e.exited)).group_by(e.segment)
        ):
            moved.add_metric([segment, "entered"], entered or 0)
            moved.add_metric([segment, "exited"], exited or 0)
        yield moved

    def _journeys(self, conn: Connection) -> Iterator[Metric]:
        m = dvc.journey_members.c
        by_status = GaugeMetricFamily(
            "dvconnect_journey_members",
            "Members by status (active, completed, converted, exited, failed, ...)",
            labels=["journey", "status"],
        )
        by_step = GaugeMetricFamily(
            "dvconnect_journey_step_members",
            "Active members at each step",
            labels=["journey", "step"],
        )
        statuses: dict[tuple[str, str], int] = {}
        for journey, step, status, n in conn.execute(
            select(m.journey, m.step, m.status, func.count()).group_by(m.journey, m.step, m.status)
        ):
            statuses[journey, status] = statuses.get((journey, status), 0) + n
            if status == "active":
                by_step.add_metric([journey, step or ""], n)
        for (journey, status), n in statuses.items():
            by_status.add_metric([journey, status], n)
        yield by_status
        yield by_step

    def _scoring(self, conn: Connection) -> Iterator[Metric]:
        k = dvc.scores.c
        grades = GaugeMetricFamily(
            "dvconnect_scoring_leads", "Scored leads by model and grade", labels=["model", "grade"]
        )
        for model, grade, n in conn.execute(
            select(k.model, k.grade, func.count()).group_by(k.model, k.grade)
        ):
            grades.add_metric([model, grade], n)
        yield grades


def _seconds_between(
    start: ColumnElement[Any], end: ColumnElement[Any], dialect: str
) -> ColumnElement[Any]:
    """`end - start` in seconds, for two stored stamps (ISO-8601 text)."""
    if dialect == "postgresql":
        moment = TIMESTAMP(timezone=True)
        return extract("epoch", cast(end, moment) - cast(start, moment))
    return (func.julianday(end) - func.julianday(start)) * 86400.0


def _json_int(column: ColumnElement[Any], dialect: str, *path: str) -> ColumnElement[Any]:
    """An integer inside a JSON document kept as text (`counts`), NULL where it is absent."""
    if dialect == "postgresql":
        return cast(func.jsonb_extract_path_text(cast(column, JSONB), *path), BigInteger)
    return func.json_extract(column, "$." + ".".join(f'"{key}"' for key in path))


class _Metrics(Collector):
    """The store's series, then this process's own counters."""

    def __init__(self, ctx: Context) -> None:
        self._store = StoreCollector(ctx)

    def collect(self) -> Iterable[Metric]:
        info = InfoMetricFamily("dvconnect_build", "The running release")
        info.add_metric([], {"version": version("dvconnect")})
        yield info
        yield from self._store.collect()
        yield from telemetry.REGISTRY.collect()


def health(ctx: Context) -> tuple[bool, str]:
    """Whether every scheduled job is healthy, and the text `/healthz` answers."""
    try:
        with ctx.store.engine.connect() as conn:
            problems = job_problems(ctx, conn)
    except SQLAlchemyError as exc:
        return False, f"unhealthy\nstore: {store_error(exc, ctx.settings.database_url)}\n"
    if not problems:
        return True, "ok\n"
    return False, "unhealthy\n" + "".join(f"{problem}\n" for problem in problems)


def application(ctx: Context) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """The WSGI application: `/metrics`, `/healthz`, and 404 for anything else."""
    metrics = make_wsgi_app(_Metrics(ctx))

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            ok, text = health(ctx)
            body = text.encode()
            status = "200 OK" if ok else "503 Service Unavailable"
        else:
            body, status = b"not found: /metrics or /healthz\n", "404 Not Found"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                                ("Content-Length", str(len(body)))])  # fmt: skip
        return [body]

    return app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds the shutdown


class _Handler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class Service:
    """The listening socket, bound at once; `start` serves it in a thread, `stop` closes it."""

    def __init__(self, settings: Settings) -> None:
        host, port = settings.metrics_host, settings.metrics_port
        assert port is not None
        try:
            self._server = make_server(host, port, _not_ready, _Server, _Handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"DVCONNECT_METRICS_PORT: port {port} on {host} is already in use"
                ) from None
            raise ConfigError(
                f"DVCONNECT_METRICS_HOST/PORT: cannot listen on {host}:{port}: "
                f"{exc.strerror or exc}"
            ) from None
        self._thread: threading.Thread | None = None
        self.address = f"http://{host}:{self._server.server_port}"

    def start(self, ctx: Context) -> None:
        self._server.set_app(application(ctx))
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()
        log.info("serving %s/metrics and %s/healthz", self.address, self.address)

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()


def _not_ready(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
    return [b"starting\n"]
