"""`dvconnect status`: per job, per table, per segment, per journey; and `--version`."""

from __future__ import annotations

import json
from importlib.metadata import version

from tests.e2e.conftest import Cli

NOW = "2027-01-04T09:03:00Z"


def test_status_shows_each_job_table_segment_and_journey(cli: Cli) -> None:
    assert cli.run("run", "all", DVCONNECT_NOW=NOW).returncode == 0
    cli.emulator.admin("PUT", "/faults", {"spec": "drop:path=leads*"})
    failed = cli.run("run", "sync", DVCONNECT_NOW=NOW, DVCONNECT_MAX_ATTEMPTS="1")
    assert failed.returncode == 3
    assert cli.run("run", "segments", DVCONNECT_NOW=NOW).returncode == 0
    later = "2027-01-04T09:08:30Z"
    result = cli.run("status", "--json", DVCONNECT_NOW=later, DVCONNECT_HEALTH_FAILURES="1")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)

    sync = status["jobs"]["sync"]
    assert sync["last_run"]["outcome"] == "failed"
    assert sync["cron"] == "*/15 * * * *"
    assert sync["next_run"] == "2027-01-04T09:15:00+00:00"
    assert sync["problem"].startswith("failing: the last 1 runs failed")
    orphans = status["jobs"]["link-orphans"]
    assert (orphans["last_run"]["outcome"], orphans["problem"]) == ("succeeded", None)
    assert orphans["last_run"]["seconds"] == 0  # DVCONNECT_NOW: every stamp is that instant
    assert orphans["last_run"]["counts"]["created"] > 0
    assert orphans["next_run"] == "2027-01-04T09:20:00+00:00"
    lead = status["tables"]["lead"]
    assert lead["lag_seconds"] == 330
    # `run all` syncs twice: the second read of lead is the incremental one
    assert lead["last_read"]["how"] == "delta"
    assert lead["last_read"]["why"] == "incremental: change tracking (delta link)"
    segment = status["segments"]["contoso-decision-makers"]
    assert segment["change"] == 0
    journey = next(j for j in status["journeys"] if j["journey"] == "product-launch")
    assert (journey["state"], journey["steps"], journey["failed"]) == ("draft", {}, 0)

    text = cli.run("status", DVCONNECT_NOW=later, DVCONNECT_HEALTH_FAILURES="1").stdout
    assert "  sync: #" in text
    assert "; next 2027-01-04T09:15:00+00:00 (*/15 * * * *)" in text
    assert "    unhealthy: failing: the last 1 runs failed" in text
    assert "(lag 5m), last sync" not in text
    assert (
        "lead: 300 rows, follows change tracking, last sync 2027-01-04T09:03:00Z (lag 5m)" in text
    )
    assert "    last read: incremental: change tracking (delta link)" in text
    assert "(+0 since the previous evaluation: 0 in, 0 out)" in text


def test_version_comes_from_the_package_metadata(cli: Cli) -> None:
    result = cli.run("--version")
    assert (result.returncode, result.stdout) == (0, f"dvconnect {version('dvconnect')}\n")


def test_json_logs_carry_the_run_and_its_counts_as_keys(cli: Cli) -> None:
    result = cli.popen("run", "sync", DVCONNECT_LOG_FORMAT="json")
    _, stderr = result.communicate(timeout=120)
    assert result.returncode == 0, stderr
    lines = [json.loads(line) for line in stderr.splitlines()]
    summary = next(line for line in lines if line.get("outcome") == "succeeded")
    assert (summary["job"], summary["counts"]["lead"]["read"]) == ("sync", 300)
    assert summary["requests"] == sum(1 for line in lines if "request_id" in line)
    request = next(line for line in lines if line.get("path") == "leads")
    assert (request["job"], request["run_id"], request["status"]) == ("sync", 1, 200)
    read = next(line for line in lines if line.get("table") == "lead")
    assert (read["read_kind"], read["run_id"]) == ("full", 1)
