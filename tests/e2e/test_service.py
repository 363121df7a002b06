"""`dvconnect schedule` with a metrics port: `/metrics` and `/healthz`, scraped as Prometheus would."""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from connector import tables as dvc
from tests.e2e.conftest import Cli


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def stop() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes to stop with SIGTERM at the end of the test, whatever happened."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=60)


def samples(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:  # fmt: skip
    return scraped[name, frozenset(labels.items())]


def test_metrics_show_runs_records_lag_segments_writes_requests_and_waits(
    cli: Cli, port: int, stop: list[subprocess.Popen[str]]
) -> None:
    cli.emulator.admin("PUT", "/faults", {"spec": "429:retry-after=1:first=1:path=leads*"})
    cli.schedule_without_ticks()
    process = cli.popen("schedule", "--now", DVCONNECT_METRICS_PORT=str(port))
    stop.append(process)

    def every_job_ran() -> bool:
        runs = cli.store().recent_runs(20) if cli.store_ready() else []
        return len(runs) == 7 and all(r.outcome != "running" for r in runs)

    cli.wait_for(every_job_ran, seconds=120)
    scraped = samples(port)
    runs = cli.store().recent_runs(20)
    assert {r.outcome for r in runs} == {"succeeded"}

    assert value(scraped, "dvconnect_store_up") == 1
    assert value(scraped, "dvconnect_runs_total", job="sync", outcome="succeeded") == 2
    assert value(scraped, "dvconnect_runs_total", job="scoring", outcome="succeeded") == 1
    assert value(scraped, "dvconnect_run_duration_seconds_count", job="sync") == 2
    assert value(scraped, "dvconnect_job_healthy", job="sync") == 1
    syncs = [r.counts for r in runs if r.job == "sync"]
    for table in ("lead", "contact"):
        for op in ("read", "upserted", "deleted"):
            assert value(scraped, "dvconnect_sync_records_total", table=table, op=op) == sum(
                c[table][op] for c in syncs
            )
    assert value(scraped, "dvconnect_sync_records_total", table="lead", op="read") >= 300
    assert 0 <= value(scraped, "dvconnect_sync_lag_seconds", table="lead") < 120
    created = value(scraped, "dvconnect_dataverse_writes_total", job="link-orphans",
                    table="contact", kind="create", outcome="done")  # fmt: skip
    link = next(r for r in runs if r.job == "link-orphans")
    assert created == link.counts["created"] > 0
    assert value(scraped, "dvconnect_outbox_depth", job="link-orphans") == 0
    e = dvc.segment_evaluations.c
    with cli.store().engine.connect() as conn:
        sizes = dict(conn.execute(select(e.segment, e.size)).all())  # one evaluation each
    assert set(sizes) == {"contoso-decision-makers", "recent-web-leads"}
    for segment, size in sizes.items():
        assert value(scraped, "dvconnect_segment_members", segment=segment) == size
    # The requests this process sent: by status, counted where they happened.
    assert value(scraped, "dvconnect_http_requests_total", method="GET", status="429") == 1
    sent = sum(v for (name, _), v in scraped.items() if name == "dvconnect_http_requests_total")
    assert sent == sum(r.requests for r in runs)
    assert value(scraped, "dvconnect_http_waits_total", reason="throttled") == 1
    assert value(scraped, "dvconnect_http_wait_seconds_total", reason="throttled") == 1
    names = {name for name, _ in scraped}
    assert {"dvconnect_run_last_duration_seconds", "dvconnect_run_last_success_timestamp_seconds",
            "dvconnect_build_info", "dvconnect_segment_changes_total"} <= names  # fmt: skip
    health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
    assert (health.status_code, health.text) == (200, "ok\n")
    assert cli.run("health", DVCONNECT_METRICS_PORT=str(port)).stdout == "ok\n"


def test_healthz_names_a_job_whose_runs_keep_failing(
    cli: Cli, port: int, stop: list[subprocess.Popen[str]]
) -> None:
    cli.emulator.admin("PUT", "/faults", {"spec": "drop:path=leads*"})
    cli.schedule_without_ticks()
    process = cli.popen("schedule", "--now", DVCONNECT_METRICS_PORT=str(port),
                        DVCONNECT_MAX_ATTEMPTS="1", DVCONNECT_HEALTH_FAILURES="2")  # fmt: skip
    stop.append(process)

    def both_syncs_failed() -> bool:
        runs = cli.store().recent_runs(20) if cli.store_ready() else []
        return [r.outcome for r in runs if r.job == "sync"] == ["failed", "failed"]

    cli.wait_for(both_syncs_failed, seconds=120)
    health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
    assert health.status_code == 503
    lines = health.text.splitlines()
    assert lines[0] == "unhealthy"
    assert lines[1].startswith("sync: failing: the last 2 runs failed; the latest, #")
    assert "Dataverse at 127.0.0.1 unreachable (GET leads): ConnectionError" in lines[1]
    assert value(samples(port), "dvconnect_job_healthy", job="sync") == 0
    checked = cli.run("health", DVCONNECT_METRICS_PORT=str(port))
    assert checked.returncode == 1
    assert checked.stdout.splitlines()[1] == lines[1]


def test_a_metrics_port_in_use_exits_2_naming_it_before_anything_is_done(cli: Cli) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli.run("schedule", DVCONNECT_METRICS_PORT=str(port))
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"dvconnect: DVCONNECT_METRICS_PORT: port {port} on 127.0.0.1 is already in use"
    )
    assert not cli.database.exists()
    assert cli.emulator.requests_after(0) == []


def test_health_without_a_running_service_exits_3(cli: Cli) -> None:
    result = cli.run("health", DVCONNECT_METRICS_PORT=str(free_port()))
    assert result.returncode == 3
    assert "/healthz unreachable: ConnectionError" in result.stderr
