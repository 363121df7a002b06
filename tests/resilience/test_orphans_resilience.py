"""The write jobs under faults: the org ends with exactly the contacts and links of a clean run.

A clean `link-orphans` then `promote-contacts` (after some leads are qualified) gives the
reference: which contacts exist, with which email, flag and owner, and which contact each lead
points to. Every case resets the org, syncs, and runs the same jobs with faults injected into
every write (429 bursts, 503/504, dropped connections, commit-then-drop, an expired token) or
with kill -9 at seeded random moments followed by a re-run: nothing may be lost or duplicated.
"""

from __future__ import annotations

import random
import signal
import time
from typing import Any

import pytest

from tests.e2e.conftest import Cli
from tests.e2e.test_orphans import mappings_with
from tests.resilience.test_sync_resilience import FAULTS

QUALIFIED = 5  # leads qualified between link-orphans and promote-contacts
_reference: dict[int, Any] = {}


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
    for job in ("link-orphans", "sync", "promote-contacts"):
        result = cli.run("run", job, timeout=600)
        assert result.returncode == 0, result.stderr
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


@pytest.mark.parametrize("spec", FAULTS.values(), ids=FAULTS.keys())
def test_faults_during_the_write_jobs_lose_and_duplicate_nothing(cli: Cli, spec: str) -> None:
    clean = reference(cli)
    assert cli.run("run", "sync").returncode == 0
    cli.emulator.admin("PUT", "/faults", {"spec": spec, "seed": 11})
    run_jobs(cli)
    cli.emulator.admin("DELETE", "/faults")
    assert org_state(cli) == clean


def test_an_expired_access_token_mid_run_is_renewed_and_nothing_doubles(cli: Cli) -> None:
    clean = reference(cli)
    assert cli.run("run", "sync").returncode == 0
    cli.emulator.admin("POST", "/tokens/revoke")
    run_jobs(cli)
    assert org_state(cli) == clean


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_at_random_moments_then_rerun_ends_as_a_clean_run(cli: Cli, seed: int) -> None:
    clean = reference(cli)
    assert cli.run("run", "sync").returncode == 0
    cli.env["DVCONNECT_MAPPINGS_DIR"] = str(mappings_with(cli.workdir, batch_size=4))
    cli.emulator.admin("PUT", "/faults", {"spec": "slow:method=POST:ms=80"})
    moments = random.Random(seed)
    for _ in range(2):
        process = cli.popen("run", "link-orphans")
        time.sleep(moments.uniform(0.6, 2.5))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()
    cli.emulator.admin("DELETE", "/faults")
    run_jobs(cli)
    assert org_state(cli) == clean
