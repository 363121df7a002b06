"""`dvconnect run segments` and `dvconnect segments …` against a store synced from the emulator."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Cli
from tests.paths import MAPPINGS

CONTOSO = "contoso-decision-makers"

# Written apart from the segment compiler: the shipped segment's meaning in plain SQL.
CONTOSO_SQL = """
SELECT DISTINCT c.contactid
FROM contact c JOIN lead l ON l._parentcontactid_value = c.contactid
WHERE lower(l.subject) = 'contoso ltd conference' AND l.statecode <> 2
  AND c.accountrolecode = 1 AND c.statecode = 0 AND (c.donotemail IS NULL OR c.donotemail = 0)
"""


@pytest.fixture(autouse=True)
def larger_org(cli: Cli) -> None:
    """3,000 leads: the 300 of the shared seed hold no conference decision maker."""
    cli.emulator.reset(leads=3000, contacts=1500)


def plain_sql(cli: Cli, query: str) -> set[str]:
    with sqlite3.connect(cli.database) as conn:
        return {row[0] for row in conn.execute(query)}


def members(cli: Cli, segment: str) -> set[str]:
    return plain_sql(cli, f"SELECT contactid FROM dvc_segment_members WHERE segment = '{segment}'")


def run_json(cli: Cli, *args: str, **env: str) -> tuple[int, dict[str, Any]]:
    result = cli.run(*args, "--json", **env)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def test_the_conference_segment_equals_a_plain_sql_count_over_the_seed(cli: Cli) -> None:
    assert cli.run("run", "sync").returncode == 0
    expected = plain_sql(cli, CONTOSO_SQL)
    assert len(expected) >= 3

    code, document = run_json(cli, "run", "segments")

    assert code == 0
    counts = document["runs"][0]["counts"]
    assert counts[CONTOSO]["size"] == len(expected)
    assert counts[CONTOSO]["entered"] == len(expected)
    assert members(cli, CONTOSO) == expected


def test_entered_and_exited_follow_changes_in_the_org_across_syncs(cli: Cli) -> None:
    assert cli.run("run", "sync").returncode == 0
    assert cli.run("run", "segments").returncode == 0
    before = members(cli, CONTOSO)
    leaving = sorted(before)[0]
    cli.emulator.admin("PATCH", f"/tables/contact/{leaving}", {"accountrolecode": 2})
    outsiders = (
        plain_sql(
            cli,
            "SELECT c.contactid FROM contact c JOIN lead l ON l._parentcontactid_value = c.contactid"
            " WHERE c.accountrolecode = 1 AND c.statecode = 0 AND (c.donotemail IS NULL OR"
            " c.donotemail = 0) AND l.statecode <> 2 AND lower(l.subject) <> 'contoso ltd conference'",
        )
        - before
    )
    joining = sorted(outsiders)[0]
    lead_id = plain_sql(
        cli,
        f"SELECT leadid FROM lead WHERE _parentcontactid_value = '{joining}' AND statecode <> 2",
    ).pop()
    cli.emulator.admin("PATCH", f"/tables/lead/{lead_id}", {"subject": "Contoso Ltd Conference"})

    assert cli.run("run", "sync").returncode == 0
    code, document = run_json(cli, "run", "segments")

    assert code == 0
    counts = document["runs"][0]["counts"][CONTOSO]
    assert (counts["entered"], counts["exited"]) == (1, 1)
    assert members(cli, CONTOSO) == before - {leaving} | {joining}
    events = plain_sql(
        cli,
        "SELECT event || ' ' || contactid FROM dvc_segment_events"
        f" WHERE segment = '{CONTOSO}' ORDER BY event_id DESC LIMIT 2",
    )
    assert events == {f"exited {leaving}", f"entered {joining}"}
    code, history = run_json(cli, "segments", "history", CONTOSO)
    assert [(e["size"], e["entered"], e["exited"]) for e in history["evaluations"]] == [
        (len(before), 1, 1),
        (len(before), len(before), 0),
    ]


def test_list_preview_and_status_show_the_segments(cli: Cli) -> None:
    assert cli.run("run", "sync").returncode == 0
    expected = plain_sql(cli, CONTOSO_SQL)

    preview = cli.run("segments", "preview", CONTOSO, "--sql", "--sample", "2")
    assert preview.returncode == 0, preview.stderr
    assert preview.stdout.startswith(f"{CONTOSO}: {len(expected):,} members (")
    assert "FROM contact JOIN" in preview.stdout
    assert (
        len([line for line in preview.stdout.splitlines() if line.startswith("  contactid ")]) == 2
    )
    assert members(cli, CONTOSO) == set()  # a preview saves nothing

    listing = cli.run("segments", "list")
    assert f"{CONTOSO}: not evaluated" in listing.stdout
    assert cli.run("run", "segments").returncode == 0
    _, status = run_json(cli, "status")
    assert status["segments"][CONTOSO]["size"] == len(expected)
    unknown = cli.run("segments", "preview", "nope")
    assert unknown.returncode == 2
    assert (
        "unknown segment 'nope': the mappings define contoso-decision-makers, recent-web-leads"
        in unknown.stderr
    )


def test_a_bad_segment_fails_check_but_not_the_others_in_a_run(cli: Cli, tmp_path: Path) -> None:
    directory = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, directory)
    (directory / "segments" / "typo.yaml").write_text(
        "name: typo\ndescription: a typo\nlead: \"subjet eq 'x'\"\n"
    )
    env = {"DVCONNECT_MAPPINGS_DIR": str(directory)}

    check = cli.run("check", "--offline", **env)
    assert check.returncode == 2
    assert (
        f"{directory / 'segments' / 'typo.yaml'}: lead (line 3): unknown column 'subjet'"
        in check.stderr
    )

    assert cli.run("run", "sync", **env).returncode == 0
    code, document = run_json(cli, "run", "segments", **env)
    assert code == 1
    counts = document["runs"][0]["counts"]
    assert counts["typo.yaml"]["failed"] == 1
    assert counts[CONTOSO]["failed"] == 0
    assert members(cli, CONTOSO) == plain_sql(cli, CONTOSO_SQL)
