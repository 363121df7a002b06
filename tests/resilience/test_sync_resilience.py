"""The sync under faults: whatever goes wrong, the store ends equal to the org.

Each case runs a full sync, lets the org change (creates, updates, deletes), and syncs again,
with faults injected throughout (each must fire); then the store must hold exactly the org's
rows and values. Kill -9 while the emulator holds a chosen page request — so the kill lands
after that many pages — followed by a re-run, must resume with the same kind of cursor (change
tracking, not a silent fall-back to modifiedon) and end the same way. Every case runs with the
store on SQLite and on PostgreSQL (which writes pages through a staging table).
"""

from __future__ import annotations

import json
import signal
import uuid

import pytest

from tests.e2e.conftest import Cli
from tests.postgres_server import PostgresServer

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


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def cli(cli: Cli, request: pytest.FixtureRequest) -> Cli:
    """The suite's CLI, its store on SQLite, then on a fresh database of the session's
    PostgreSQL."""
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        cli.postgres_url = server.create_database(f"resilience_{uuid.uuid4().hex}")
    return cli


def sync(cli: Cli) -> dict[str, object]:
    result = cli.run("run", "sync", "--json")
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


KILL_POINTS = {  # the full read's page request the emulator holds while the sync is killed
    "after the first page": 2,
    "after three pages": 4,
    "after six pages": 7,
}
DELTA_PAGE = 2  # the churn's changes fill two pages of 40: killed between them


@pytest.mark.parametrize("page", KILL_POINTS.values(), ids=KILL_POINTS.keys())
def test_kill_9_at_a_page_then_rerun_resumes_the_same_cursor_and_ends_equal_to_the_org(
    cli: Cli, page: int
) -> None:
    for phase in ("full", "incremental"):
        if phase == "incremental":
            churn(cli)
        at = page if phase == "full" else DELTA_PAGE
        cli.emulator.admin("PUT", "/faults", {"spec": f"hold:path=leads*:at={at}"})
        process = cli.popen("run", "sync")
        cli.wait_until_held(process)
        # the read ahead asks for the held page while the one before it is written: wait for it
        before = (at - 1) * int(cli.env["DVCONNECT_PAGE_SIZE"]) if phase == "full" else 1
        cli.wait_for(cli.reading_mid_table("lead", at_least=before))
        process.send_signal(signal.SIGKILL)
        process.wait()
        state = cli.store().load_state("lead")
        assert state.next_link is not None, f"{phase}: the kill did not land mid-read"
        assert state.phase == phase
        cli.emulator.admin("DELETE", "/faults")
        seq = cli.emulator.requests_after(0)[-1]["seq"]
        sync(cli)
        resumed = [r for r in cli.emulator.requests_after(seq) if r["path"].endswith("/leads")]
        assert "odata.track-changes" in (resumed[0]["prefer"] or "")  # still change tracking
        after = cli.store().load_state("lead")
        assert (after.mode, after.next_link) == ("delta", None)
        assert after.delta_link is not None
        cli.assert_store_matches_org()
