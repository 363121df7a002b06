"""The write jobs under faults and kills: the org ends with exactly the contacts and links of a
clean run, and the store ends equal to the org.

A clean `link-orphans` then `promote-contacts` (after some leads are qualified) gives the
reference: which contacts exist, with which email, flag and owner, and which contact each lead
points to. Every case resets the org, syncs, and runs the same jobs with faults aimed at the
writes (every write is a POST: bulk actions and `$batch`), asserting each fault fired; or kills
the job with SIGKILL while the emulator holds one of its writes — before it is executed, or
after it is committed but before it is answered — so the kill lands at that point of the work,
then re-runs: nothing may be lost or duplicated.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from connector import tables as dvc
from tests.e2e.conftest import Cli
from tests.e2e.test_orphans import mappings_with

QUALIFIED = 5  # leads qualified between link-orphans and promote-contacts
BATCH = 5  # leads per write: many writes even on the small org
_reference: dict[int, Any] = {}

FAULTS_ON_WRITES = {
    "429 bursts": "429:method=POST:every=2:retry-after=0",
    "concurrency 429s": "429:method=POST:every=3:code=concurrency",
    "503s": "503:method=POST:every=2:retry-after=0",
    "504s": "504:method=POST:every=3:retry-after=0",
    "dropped connections": "drop:method=POST:every=3",
    "commit then drop": "commit-drop:method=POST:every=2",
    "slow answers": "slow:method=POST:ms=150",
    "everything at once": "429:method=POST:every=5:retry-after=0,503:method=POST:every=7:"
    "retry-after=0,drop:method=POST:every=9,commit-drop:method=POST:every=3,slow:method=POST:ms=30",
}
KILL_POINTS = {
    "before the first contacts are created": "hold:path=contacts/*CreateMultiple:at=1",
    "after contacts are created, before their leads are linked": (
        "commit-hold:path=contacts/*CreateMultiple:at=2"
    ),
    "after links are made, before they are confirmed": (
        "commit-hold:path=leads/*UpdateMultiple:at=3"
    ),
    "in the middle of the run": "hold:method=POST:at=9",
}


@pytest.fixture
def env(cli: Cli, tmp_path: Path) -> dict[str, str]:
    """Settings for small writes: many of them even on the small org."""
    mappings = mappings_with(tmp_path, batch_size=BATCH)
    cli.env["DVCONNECT_MAPPINGS_DIR"] = str(mappings)
    return {"DVCONNECT_MAPPINGS_DIR": str(mappings)}


def org_state(cli: Cli) -> tuple[dict[str, tuple[Any, ...]], dict[str, Any]]:
    contacts = {
        c["contactid"]: (c["emailaddress1"], c["marketingonly"], c["_ownerid_value"], c["lastname"])
        for c in cli.emulator.rows("contact")
    }
    links = {lead["leadid"]: lead["_parentcontactid_value"] for lead in cli.emulator.rows("lead")}
    return contacts, links


def qualify_some(cli: Cli) -> None:
    """Qualify the first open leads linked to a marketing-only contact (the same ones each time)."""
    marketing = {c["contactid"] for c in cli.emulator.rows("contact") if c["marketingonly"]}
    linked = sorted(
        lead["leadid"]
        for lead in cli.emulator.rows("lead")
        if lead["statecode"] == 0 and lead["_parentcontactid_value"] in marketing
    )
    for lead_id in linked[:QUALIFIED]:
        cli.emulator.admin("PATCH", f"/tables/lead/{lead_id}", {"statecode": 1, "statuscode": 3})


def run_jobs(cli: Cli) -> None:
    for job in ("link-orphans", "sync", "promote-contacts", "sync"):
        result = cli.run("run", job)
        assert result.returncode == 0, result.stderr[-3000:]
        if job == "link-orphans":
            qualify_some(cli)


def reference(cli: Cli) -> tuple[dict[str, tuple[Any, ...]], dict[str, Any]]:
    """The org after a clean run of the jobs (computed once per org size)."""
    size = len(cli.emulator.rows("lead"))
    if size not in _reference:
        assert cli.run("run", "sync").returncode == 0
        run_jobs(cli)
        _reference[size] = org_state(cli)
        cli.emulator.reset()
        cli.database.unlink()
    return _reference[size]


def fired(cli: Cli) -> dict[str, int]:
    return {r["rule"]: r["injected"] for r in cli.emulator.admin("GET", "/faults")["rules"]}


def outbox(cli: Cli) -> dict[str, int]:
    """Intents of link-orphans by status, as the store has them."""
    store = cli.store()
    o = dvc.outbox.c
    with store.engine.connect() as conn:
        rows = conn.execute(select(o.status, func.count()).group_by(o.status)).all()
    return {status: int(count) for status, count in rows}


@pytest.mark.parametrize("spec", FAULTS_ON_WRITES.values(), ids=FAULTS_ON_WRITES.keys())
def test_faults_on_the_writes_lose_and_duplicate_nothing(
    cli: Cli, env: dict[str, str], spec: str
) -> None:
    clean = reference(cli)
    assert cli.run("run", "sync").returncode == 0
    cli.emulator.admin("PUT", "/faults", {"spec": spec, "seed": 11})
    run_jobs(cli)
    counts = fired(cli)
    cli.emulator.admin("DELETE", "/faults")
    assert all(counts.values()), f"a fault never fired on a write: {counts}"
    assert org_state(cli) == clean
    cli.assert_store_matches_org()


def test_an_expired_access_token_mid_run_is_renewed_and_nothing_doubles(
    cli: Cli, env: dict[str, str]
) -> None:
    clean = reference(cli)
    assert cli.run("run", "sync").returncode == 0
    cli.emulator.admin("POST", "/tokens/revoke")
    run_jobs(cli)
    assert org_state(cli) == clean


@pytest.mark.parametrize("spec", KILL_POINTS.values(), ids=KILL_POINTS.keys())
def test_kill_9_at_a_point_of_the_work_then_rerun_ends_as_a_clean_run(
    cli: Cli, env: dict[str, str], spec: str
) -> None:
    clean = reference(cli)
    assert cli.run("run", "sync").returncode == 0
    cli.emulator.admin("PUT", "/faults", {"spec": spec})
    process = cli.popen("run", "link-orphans")
    cli.wait_until_held(process)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    recorded = outbox(cli)
    assert recorded.get("pending", 0) > 0, f"the kill did not land mid-work: {recorded}"
    cli.emulator.admin("DELETE", "/faults")  # releases the held write: its connection closes
    run_jobs(cli)
    assert outbox(cli).get("pending", 0) == 0
    assert org_state(cli) == clean
    cli.assert_store_matches_org()


@pytest.mark.parametrize("write", range(1, 11))
def test_a_sync_while_link_orphans_writes_leaves_the_store_equal_to_the_org(
    cli: Cli, env: dict[str, str], write: int
) -> None:
    assert cli.run("run", "sync").returncode == 0
    cli.emulator.admin("PUT", "/faults", {"spec": f"commit-hold:method=POST:at={write}"})
    process = cli.popen("run", "link-orphans")
    cli.wait_until_held(process)
    concurrent = cli.run("run", "sync")  # reads the org while a write is held
    assert concurrent.returncode == 0, concurrent.stderr[-2000:]
    cli.emulator.admin("POST", "/faults/release")
    assert process.wait(timeout=300) == 0  # the lost answer is retried, the run completes
    cli.emulator.admin("DELETE", "/faults")
    assert cli.run("run", "sync").returncode == 0
    cli.assert_store_matches_org()
