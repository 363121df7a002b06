"""`dvconnect run sync` against the emulator over HTTPS with real MSAL tokens."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
from contextlib import suppress
from datetime import datetime, timedelta
from typing import Any

from tests.e2e.conftest import DVCONNECT, Cli

PAGE = {"DVCONNECT_PAGE_SIZE": "50"}


def run_json(cli: Cli, *args: str, **env: str) -> dict[str, Any]:
    result = cli.run("run", *args, "--json", **env)
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def sync_counts(cli: Cli, **env: str) -> dict[str, Any]:
    run: dict[str, Any] = run_json(cli, "sync", **env)["runs"][0]
    assert run["outcome"] == "succeeded"
    return run


def api_calls(cli: Cli) -> list[dict[str, Any]]:
    """The Web API calls the emulator saw, with paths relative to the API root."""
    calls = cli.emulator.requests_after(0)
    for call in calls:
        call["path"] = call["path"].removeprefix("/api/data/v9.2/")
    return calls


def test_full_sync_copies_every_row_and_column_page_by_page(cli: Cli) -> None:
    run = sync_counts(cli, **PAGE)
    assert run["counts"]["lead"]["read"] == 300
    assert run["counts"]["lead"]["pages"] == 6
    assert (
        run["counts"]["contact"]["read"]
        == cli.emulator.admin("GET", "/tables/contact/count")["count"]
    )
    cli.assert_store_matches_org()
    reads = [c for c in api_calls(cli) if c["path"].startswith("leads")]
    assert len(reads) == 6
    assert all(
        "odata.track-changes" in c["prefer"] and "odata.maxpagesize=50" in c["prefer"]
        for c in reads
    )


def test_incremental_sync_transfers_only_the_changes(cli: Cli) -> None:
    sync_counts(cli, **PAGE)
    lead_ids = sorted(cli.org_rows("lead"))
    emulator = cli.emulator
    emulator.admin(
        "PATCH",
        f"/tables/lead/{lead_ids[0]}",
        {"subject": "Contoso Ltd Conference", "lastname": "O'Brien-Zoë"},
    )
    emulator.admin("DELETE", f"/tables/lead/{lead_ids[1]}")
    emulator.admin(
        "POST",
        "/tables/lead",
        {
            "rows": [
                {
                    "leadid": "00000000-0000-0000-0000-00000000abcd",
                    "lastname": "New",
                    "subject": "Walk-in",
                }
            ]
        },
    )
    emulator.admin(
        "POST",
        "/activity",
        {"table": "contact", "creates": 2, "updates": 3, "deletes": 0, "seed": 5},
    )
    emulator.admin("DELETE", "/requests")

    run = sync_counts(cli, **PAGE)
    lead, contact = run["counts"]["lead"], run["counts"]["contact"]
    assert (lead["full"], lead["upserted"], lead["deleted"]) == (False, 2, 1)
    assert (contact["full"], contact["upserted"], contact["deleted"]) == (False, 5, 0)
    assert run["requests"] == len(run["counts"]) == 7  # one read per mapped table
    cli.assert_store_matches_org()
    assert cli.store_rows("lead")[lead_ids[0]]["lastname"] == "O'Brien-Zoë"


def test_an_expired_change_token_resyncs_in_full_and_removes_rows_deleted_meanwhile(
    cli: Cli,
) -> None:
    sync_counts(cli)
    gone = sorted(cli.org_rows("lead"))[5]
    cli.emulator.admin("DELETE", f"/tables/lead/{gone}")
    cli.emulator.admin("POST", "/clock", {"advance_seconds": 8 * 86_400})  # retention is 7 days

    run = sync_counts(cli)
    assert run["counts"]["lead"]["resyncs"] == 1
    assert run["counts"]["lead"]["full"] is True
    assert run["counts"]["lead"]["deleted"] == 1
    assert gone not in cli.store_rows("lead")
    cli.assert_store_matches_org()


def test_a_killed_sync_resumes_and_ends_equal_to_a_clean_run(cli: Cli) -> None:
    cli.emulator.admin("PUT", "/faults", {"spec": "slow:ms=150:path=leads*"})
    process = cli.popen("run", "sync", DVCONNECT_PAGE_SIZE="20")
    cli.wait_for(cli.reading_mid_table("lead", at_least=60))
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = len(cli.store_rows("lead"))
    assert 60 <= partial < 300
    cli.emulator.admin("DELETE", "/faults")

    run = sync_counts(cli, DVCONNECT_PAGE_SIZE="20")
    assert run["counts"]["lead"]["full"] is True
    assert run["counts"]["lead"]["read"] <= 300 - partial + 40  # resumed, not restarted
    cli.assert_store_matches_org()


def test_throttling_and_unavailability_slow_the_run_but_every_row_arrives(cli: Cli) -> None:
    cli.emulator.admin(
        "PUT", "/faults", {"spec": "429:every=3:retry-after=1,503:every=5:retry-after=1", "seed": 3}
    )
    run = sync_counts(cli, **PAGE)
    statuses = [c["status"] for c in api_calls(cli)]
    assert statuses.count(429) >= 2
    assert statuses.count(503) >= 1
    assert run["counts"]["lead"]["upserted"] == 300
    assert run["requests"] == len(statuses)
    cli.assert_store_matches_org()


def test_a_token_revoked_mid_run_is_renewed_once_and_the_run_completes(cli: Cli) -> None:
    cli.emulator.admin("PUT", "/faults", {"spec": "slow:ms=200:path=leads*"})
    process = cli.popen("run", "sync", "--json", DVCONNECT_PAGE_SIZE="50")
    cli.wait_for(cli.reading_mid_table("lead"))
    cli.emulator.admin("POST", "/tokens/revoke")
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert json.loads(stdout)["runs"][0]["outcome"] == "succeeded"
    statuses = [c["status"] for c in api_calls(cli)]
    assert statuses.count(401) == 1
    assert statuses[statuses.index(401) + 1] == 200
    cli.assert_store_matches_org()


def test_without_change_tracking_the_sync_follows_modifiedon(cli: Cli) -> None:
    cli.emulator.admin("PATCH", "/config", {"change_tracking": {"lead": False}})
    sync_counts(cli)
    state = cli.store().load_state("lead")
    assert (state.mode, state.delta_link) == ("watermark", None)
    # the server's time when the full read began: no row was modified later than that
    assert state.watermark >= max(r["modifiedon"] for r in cli.org_rows("lead").values())
    since = (
        datetime.strptime(state.watermark, "%Y-%m-%dT%H:%M:%SZ") - timedelta(seconds=300)
    ).strftime("%Y-%m-%dT%H:%M:%SZ")
    overlap = {i for i, r in cli.org_rows("lead").items() if r["modifiedon"] >= since}
    changed = sorted(set(cli.org_rows("lead")) - overlap)[3]
    cli.emulator.admin("POST", "/clock", {"advance_seconds": 3600})
    cli.emulator.admin("PATCH", f"/tables/lead/{changed}", {"subject": "changed later"})
    cli.emulator.admin("DELETE", "/requests")

    run = sync_counts(cli)
    assert run["counts"]["lead"]["full"] is False
    assert run["counts"]["lead"]["upserted"] == 1 + len(overlap)  # re-read: the overlap window
    lead_call = next(c for c in api_calls(cli) if c["path"].startswith("leads"))
    assert "$filter=modifiedon" in lead_call["query"]
    assert cli.store_rows("lead")[changed]["subject"] == "changed later"


def test_state_reset_makes_the_next_sync_full(cli: Cli) -> None:
    sync_counts(cli)
    result = cli.run("state", "reset", "lead")
    assert result.returncode == 0
    assert result.stdout.strip() == "lead: cursor forgotten; the next sync reads the whole table"
    run = sync_counts(cli)
    assert run["counts"]["lead"]["full"] is True
    assert run["counts"]["contact"]["full"] is False


def test_dry_run_plans_without_sending_anything(cli: Cli) -> None:
    sync_counts(cli)
    cli.emulator.admin("DELETE", "/requests")
    document = run_json(cli, "sync", "--dry-run")
    delta = "changes since the last sync (change tracking)"
    plan = {step["table"]: step["read"] for step in document["plan"]["sync"]}
    assert plan.pop("email").startswith("rows modified since ")  # no change tracking (U55)
    assert plan == dict.fromkeys(
        ["lead", "contact", "phonecall", "task", "systemuser", "queue"], delta
    )
    assert api_calls(cli) == []


def test_status_reports_runs_and_tables(cli: Cli) -> None:
    sync_counts(cli)
    result = cli.run("status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["tables"]["lead"]["rows"] == 300
    assert status["tables"]["lead"]["mode"] == "delta"
    assert status["runs"][0]["job"] == "sync"
    assert status["runs"][0]["outcome"] == "succeeded"
    assert status["runs"][0]["counts"]["lead"]["read"] == 300


def test_short_lived_tokens_are_renewed_before_they_expire(cli: Cli) -> None:
    cli.emulator.admin("PATCH", "/config", {"token_lifetime": 2})
    cli.emulator.admin("PUT", "/faults", {"spec": "slow:ms=700:path=leads*"})
    run = sync_counts(cli, **PAGE)  # six slow pages: several token lifetimes
    assert run["counts"]["lead"]["read"] == 300
    assert [c["status"] for c in api_calls(cli)].count(401) == 0
    cli.assert_store_matches_org()


def test_a_terminal_sees_a_progress_bar_per_table(cli: Cli) -> None:
    leader, follower = pty.openpty()  # stderr is a terminal, as in an admin's shell
    process = subprocess.Popen(
        [DVCONNECT, "run", "sync"],
        cwd=cli.workdir,
        env=cli.environment(DVCONNECT_PAGE_SIZE="100", DVCONNECT_LOG_LEVEL="WARNING"),
        stdout=subprocess.DEVNULL,
        stderr=follower,
        stdin=subprocess.DEVNULL,
    )
    os.close(follower)
    screen = b""
    with suppress(OSError):  # reading a pty whose other end closed raises EIO
        while chunk := os.read(leader, 4096):
            screen += chunk
    os.close(leader)
    assert process.wait(timeout=60) == 0
    drawn = screen.decode()
    assert "sync lead" in drawn
    assert re.search(r"sync lead +━+ +300 ", re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", drawn))
