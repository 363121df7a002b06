"""The CLI's other commands and its failures: exit codes, messages, nothing written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import requests

from tests.e2e.conftest import DVCONNECT, Cli
from tests.paths import MAPPINGS


def copy_mappings(tmp_path: Path) -> Path:
    target = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, target)
    return target


def test_check_online_proves_credentials_and_every_column(cli: Cli) -> None:
    result = cli.run("check")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "mappings ok: lead, contact, email, phonecall, task, systemuser, queue, 2 segments, "
        f"2 journeys, 1 scoring model ({MAPPINGS})",
        "note: email: change tracking is off in Dataverse; syncs follow modifiedon and cannot "
        "see deletions (turn on 'Track changes' for the table, then `dvconnect state reset "
        "email`)",
        f"dataverse ok: every mapped column exists ({cli.emulator.base_url})",
    ]


def test_check_names_a_mapped_column_the_org_does_not_have(cli: Cli, tmp_path: Path) -> None:
    mappings = copy_mappings(tmp_path)
    tables = mappings / "tables.yaml"
    tables.write_text(
        tables.read_text().replace("      companyname: string\n", "      companynam: string\n", 1)
    )
    orphans = mappings / "orphans.yaml"
    orphans.write_text(orphans.read_text().replace("    jobtitle: jobtitle", "    job: jobtitle"))
    cli.emulator.admin("PATCH", "/config", {"change_tracking": {"contact": False}})
    result = cli.run("check", DVCONNECT_MAPPINGS_DIR=str(mappings))
    assert result.returncode == 2
    assert "error: lead.companynam: no column 'companynam' in Dataverse" in result.stderr
    assert (
        "error: orphans.yaml: link_orphans.contact_columns.job: no column 'job' on contact in "
        "Dataverse" in result.stderr
    )
    assert "note: contact: change tracking is off in Dataverse" in result.stdout


def test_a_wrong_secret_exits_3_with_the_aad_error_and_never_shows_the_secret(cli: Cli) -> None:
    result = cli.run("run", "sync", DVCONNECT_CLIENT_SECRET="not-the-secret-x9")
    assert result.returncode == 3
    assert "authentication failed: invalid_client: AADSTS7000215" in result.stderr
    assert "not-the-secret-x9" not in result.stderr + result.stdout
    assert cli.emulator.requests_after(0) == []


def test_bad_mappings_exit_2_naming_file_and_key_and_write_nothing(
    cli: Cli, tmp_path: Path
) -> None:
    mappings = copy_mappings(tmp_path)
    tables = mappings / "tables.yaml"
    tables.write_text(tables.read_text().replace("entity_set: leads", "entityset: leads", 1))
    result = cli.run("run", "sync", DVCONNECT_MAPPINGS_DIR=str(mappings))
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"dvconnect: {tables}: tables.lead.entityset (line 10): unknown key"
    )
    assert not cli.database.exists()
    assert cli.emulator.requests_after(0) == []


def test_a_malformed_setting_exits_2_naming_the_variable(cli: Cli) -> None:
    result = cli.run("run", "sync", DVCONNECT_PAGE_SIZE="0")
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "dvconnect: DVCONNECT_PAGE_SIZE: Input should be greater than or equal to 1"
    )


def test_an_org_that_drops_every_connection_exits_3_after_bounded_retries(cli: Cli) -> None:
    cli.emulator.admin("PUT", "/faults", {"spec": "drop:path=leads*"})
    result = cli.run("run", "sync", DVCONNECT_MAX_ATTEMPTS="3")
    assert result.returncode == 3
    assert "Dataverse at 127.0.0.1 unreachable (GET leads): ConnectionError" in result.stderr
    assert result.stderr.count("retrying in") == 2
    assert [c["fault"] for c in cli.emulator.requests_after(0)] == ["drop"] * 3
    assert cli.store().recent_runs(1)[0].outcome == "failed"


def test_an_unreachable_identity_provider_exits_3(cli: Cli) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    result = cli.run("run", "sync", DVCONNECT_AUTHORITY=f"https://127.0.0.1:{closed_port}/tenant")
    assert result.returncode == 3
    assert "identity provider 127.0.0.1 unreachable" in result.stderr
    assert cli.emulator.requests_after(0) == []


def test_the_scheduler_runs_now_then_stops_cleanly_on_sigterm(cli: Cli) -> None:
    in_order = ["sync", "link-orphans", "promote-contacts", "sync", "segments", "journeys",
                "scoring"]  # fmt: skip
    cli.schedule_without_ticks()
    process = cli.popen("schedule", "--now")

    def all_ran() -> bool:  # a signal between two jobs would find the next one starting
        runs = cli.store().recent_runs() if cli.store_ready() else []
        return len(runs) == len(in_order) and all(r.outcome != "running" for r in runs)

    cli.wait_for(all_ran)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "scheduled sync: 0 0 1 1 * (UTC)" in stderr
    assert "SIGTERM received" in stderr
    runs = list(reversed(cli.store().recent_runs()))
    assert [r.job for r in runs] == in_order
    assert {r.outcome for r in runs} == {"succeeded"}


def test_sigterm_during_a_scheduled_sync_saves_the_page_and_the_next_run_resumes(cli: Cli) -> None:
    cli.emulator.admin("PUT", "/faults", {"spec": "slow:ms=200:path=leads*"})
    cli.schedule_without_ticks()
    process = cli.popen("schedule", "--now", DVCONNECT_PAGE_SIZE="20")
    cli.wait_for(cli.reading_mid_table("lead"))
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    run = cli.store().recent_runs(1)[0]
    assert run.outcome == "interrupted"
    assert cli.store().load_state("lead").next_link is not None
    cli.emulator.admin("DELETE", "/faults")
    result = cli.run("run", "sync")
    assert result.returncode == 0, result.stderr
    cli.assert_store_matches_org()


def test_a_second_sync_of_the_same_store_is_refused_while_one_runs(cli: Cli) -> None:
    cli.emulator.admin("PUT", "/faults", {"spec": "slow:ms=400:path=leads*"})
    first = cli.popen("run", "sync", DVCONNECT_PAGE_SIZE="20")  # 15 slow pages: ~6 s of reading
    cli.wait_for(cli.reading_mid_table("lead"))
    second = cli.run("run", "sync")
    assert second.returncode == 4  # did not run: another run holds the lease
    assert "dvconnect: sync lead is already running (pid " in second.stderr
    reset = cli.run("state", "reset", "lead")
    assert reset.returncode == 4
    assert "sync lead is already running" in reset.stderr
    assert first.wait(timeout=120) == 0
    cli.assert_store_matches_org()
    assert cli.run("run", "sync").returncode == 0  # released: the next one runs


def test_sigterm_on_run_saves_the_page_prints_what_was_saved_and_exits_130(cli: Cli) -> None:
    cli.emulator.admin("PUT", "/faults", {"spec": "slow:ms=200:path=leads*"})
    process = cli.popen("run", "sync", DVCONNECT_PAGE_SIZE="20")
    cli.wait_for(cli.reading_mid_table("lead"))
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    lines = stdout.splitlines()
    assert lines[0].startswith("sync: interrupted in ")
    assert lines[1].startswith("  lead: full, ")
    assert lines[-1] == "stopped: what is listed above is saved; the next run continues from there"
    assert "Traceback" not in stderr
    assert cli.store().load_state("lead").next_link is not None
    assert cli.store().recent_runs(1)[0].outcome == "interrupted"


def test_a_killed_run_shows_as_abandoned_not_running(cli: Cli) -> None:
    cli.emulator.admin("PUT", "/faults", {"spec": "hold:path=leads*:at=2"})
    process = cli.popen("run", "sync", DVCONNECT_PAGE_SIZE="50")
    cli.wait_until_held(process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    cli.emulator.admin("DELETE", "/faults")
    status = cli.run("status", "--json")
    assert status.returncode == 0, status.stderr
    (run,) = json.loads(status.stdout)["runs"]
    assert (run["job"], run["outcome"], run["finished_at"]) == ("sync", "abandoned", None)
    assert f"#{run['run_id']} sync abandoned started" in cli.run("status").stdout


def test_the_demo_uses_its_own_store_and_never_prints_a_password(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    workdir.mkdir()
    shutil.copytree(MAPPINGS, workdir / "mappings")
    (workdir / ".env").write_text(
        "DVCONNECT_DATABASE_URL=postgresql://crm:s3cr3t-pw@127.0.0.1:9/production\n"
        "DVCONNECT_DATAVERSE_URL=https://contoso.crm4.dynamics.com\n"
        "DVCONNECT_CLIENT_SECRET=the-real-org-secret\n"
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DVCONNECT_")}
    result = subprocess.run(
        [DVCONNECT, "demo", "--leads", "400", "--contacts", "200"],
        cwd=workdir, env={**environment, "DVCONNECT_LOG_LEVEL": "WARNING"},
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    shown = result.stdout + result.stderr
    assert "s3cr3t-pw" not in shown
    assert "the-real-org-secret" not in shown
    assert "contoso.crm4" not in shown
    assert "store:    var/demo/dvconnect.sqlite3" in result.stdout
    assert (workdir / "var" / "demo" / "dvconnect.sqlite3").exists()
    assert "journeys over the week" in result.stdout
    assert "after a last sync the store holds every row of the org" in result.stdout


def test_views_install_twice_leaves_exactly_the_two_views(cli: Cli) -> None:
    assert cli.run("run", "all").returncode == 0  # marketing-only contacts for the orphans
    before = {v["savedqueryid"] for v in cli.emulator.rows("savedquery")}
    first = cli.run("views", "install")
    assert first.returncode == 0, first.stderr
    assert [line.split(":")[1].split("(")[0].strip() for line in first.stdout.splitlines()] == [
        "created", "created"
    ]  # fmt: skip
    second = cli.run("views", "install")
    assert second.returncode == 0, second.stderr
    assert "already installed" in second.stdout
    views = {v["savedqueryid"]: v for v in cli.emulator.rows("savedquery")}
    added = {i: v for i, v in views.items() if i not in before}
    assert sorted(v["name"] for v in added.values()) == ["Marketing Contacts", "Sales Contacts"]
    sales = next(v for v in added.values() if v["name"] == "Sales Contacts")
    assert (sales["returnedtypecode"], sales["querytype"]) == ("contact", 0)
    # the sales view hides marketing-only contacts; the marketing view shows them
    contacts = cli.emulator.rows("contact")
    marketing_only = {
        c["contactid"] for c in contacts if c["marketingonly"] and c["statecode"] == 0
    }
    assert marketing_only
    token = cli.emulator.token()

    def view(savedquery: str) -> set[str]:
        ids: set[str] = set()
        url = f"{cli.emulator.api_url}/contacts?savedQuery={savedquery}"
        while url:
            page = requests.get(
                url, headers={"Authorization": f"Bearer {token}",
                              "Prefer": "odata.maxpagesize=5000"},
                verify=cli.emulator.ca_bundle, timeout=30,
            ).json()  # fmt: skip
            ids |= {row["contactid"] for row in page["value"]}
            url = page.get("@odata.nextLink")
        return ids

    shown = view(sales["savedqueryid"])
    everyone = view(next(i for i, v in added.items() if v["name"] == "Marketing Contacts"))
    assert shown
    assert not shown & marketing_only
    assert marketing_only <= everyone
    assert everyone - shown == marketing_only


def test_the_emulator_says_when_its_port_is_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [DVCONNECT, "emulator", "--port", str(port), "--leads", "10", "--contacts", "5"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines()[-1] == f"emulator: --port {port}: Address already in use"
    )
    assert "Traceback" not in result.stderr
