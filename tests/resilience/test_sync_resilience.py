"""The sync under faults: whatever goes wrong, the store ends equal to the org.

Each case runs a full sync, lets the org change (creates, updates, deletes), and syncs again,
with faults injected throughout; then the store must hold exactly the org's rows and values.
Kill -9 at seeded random moments, followed by a re-run, must end the same way.
"""

from __future__ import annotations

import json
import random
import signal
import time

import pytest

from tests.e2e.conftest import Cli

CHURN = {"creates": 12, "updates": 25, "deletes": 8}

FAULTS = {
    "429 bursts": "429:rate=0.35:retry-after=0",
    "concurrency 429s": "429:rate=0.2:code=concurrency",
    "503s": "503:rate=0.3:retry-after=0",
    "504s": "504:rate=0.2:retry-after=0",
    "dropped connections": "drop:rate=0.2",
    "commit then drop": "commit-drop:rate=0.2",
    "slow answers": "slow:rate=0.3:ms=150",
    "everything at once": "429:rate=0.1:retry-after=0,503:rate=0.1:retry-after=0,drop:rate=0.1,slow:rate=0.1:ms=50",
}


def sync(cli: Cli) -> dict[str, object]:
    result = cli.run("run", "sync", "--json", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run: dict[str, object] = json.loads(result.stdout)["runs"][0]
    return run


def churn(cli: Cli) -> None:
    for table in ("lead", "contact"):
        cli.emulator.admin("POST", "/activity", {"table": table, **CHURN})


@pytest.mark.parametrize("spec", FAULTS.values(), ids=FAULTS.keys())
def test_faults_during_full_and_incremental_syncs_lose_and_duplicate_nothing(
    cli: Cli, spec: str
) -> None:
    cli.emulator.admin("PUT", "/faults", {"spec": spec, "seed": 11})
    sync(cli)
    cli.assert_store_matches_org()
    churn(cli)
    sync(cli)
    cli.assert_store_matches_org()
    injected = sum(rule["injected"] for rule in cli.emulator.admin("GET", "/faults")["rules"])
    assert injected > 0


def test_an_expired_access_token_mid_run_is_renewed(cli: Cli) -> None:
    cli.emulator.admin("PUT", "/faults", {"spec": "slow:ms=150:path=leads*"})
    process = cli.popen("run", "sync")
    cli.wait_for(cli.reading_mid_table("lead"))
    cli.emulator.admin("POST", "/tokens/revoke")
    assert process.wait(timeout=600) == 0
    churn(cli)
    cli.emulator.admin("POST", "/tokens/revoke")
    sync(cli)
    cli.assert_store_matches_org()


def test_an_expired_delta_token_resyncs_to_the_same_state(cli: Cli) -> None:
    sync(cli)
    churn(cli)
    cli.emulator.admin("POST", "/clock", {"advance_seconds": 8 * 86_400})
    run = sync(cli)
    assert run["counts"]["lead"]["resyncs"] == 1  # type: ignore[index]
    cli.assert_store_matches_org()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_at_random_moments_then_rerun_ends_equal_to_the_org(cli: Cli, seed: int) -> None:
    rng = random.Random(seed)
    cli.emulator.admin("PUT", "/faults", {"spec": "slow:ms=60", "seed": seed})
    for phase in ("full", "incremental"):
        if phase == "incremental":
            churn(cli)
        for _ in range(2):  # two kills per phase, each at a random moment
            process = cli.popen("run", "sync")
            time.sleep(rng.uniform(0.8, 2.5))
            process.send_signal(signal.SIGKILL)
            process.wait()
        cli.emulator.admin("DELETE", "/faults")
        sync(cli)
        cli.assert_store_matches_org()
        cli.emulator.admin("PUT", "/faults", {"spec": "slow:ms=60", "seed": seed})
