"""`link-orphans` and `promote-contacts` against the emulator, through the real CLI."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Cli
from tests.paths import MAPPINGS

OPEN, QUALIFIED = 0, 1


def normal(email: str | None) -> str | None:
    """The match key the tests expect: trimmed, lower case; None when there is no email."""
    return email.strip().lower() if email and email.strip() else None


def open_orphans(cli: Cli) -> list[dict[str, Any]]:
    return [
        lead
        for lead in cli.emulator.rows("lead")
        if lead["statecode"] == OPEN and lead.get("_parentcontactid_value") is None
    ]


def created_contacts(cli: Cli, before: set[str]) -> dict[str, dict[str, Any]]:
    return {c["contactid"]: c for c in cli.emulator.rows("contact") if c["contactid"] not in before}


def run(cli: Cli, job: str, *args: str, **env: str) -> tuple[int, dict[str, Any]]:
    result = cli.run("run", job, "--json", *args, **env)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def job_counts(document: dict[str, Any], job: str) -> dict[str, Any]:
    (counts,) = [r["counts"] for r in document["runs"] if r["job"] == job]
    return counts


def mappings_with(tmp_path: Path, **orphans: Any) -> Path:
    """A copy of the shipped mappings whose orphans.yaml sets the given link_orphans keys."""
    directory = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, directory)
    path = directory / "orphans.yaml"
    text = path.read_text()
    for key, value in orphans.items():
        lines = [line for line in text.splitlines() if line.strip().startswith(f"{key}:")]
        if lines:
            indent = lines[0][: len(lines[0]) - len(lines[0].lstrip())]
            text = text.replace(lines[0], f"{indent}{key}: {json.dumps(value)}")
        else:
            text = text.replace("link_orphans:\n", f"link_orphans:\n  {key}: {json.dumps(value)}\n")
    path.write_text(text)
    return directory


def test_run_all_gives_every_open_orphan_a_contact_one_per_distinct_new_email(cli: Cli) -> None:
    orphans = open_orphans(cli)
    contacts_before = cli.emulator.rows("contact")
    known_emails = {normal(c["emailaddress1"]) for c in contacts_before}
    new_emails = {normal(o["emailaddress1"]) for o in orphans} - known_emails
    assert len(orphans) > 50
    assert len(new_emails) > 30
    assert None not in new_emails

    code, document = run(cli, "all")

    assert code == 0
    assert open_orphans(cli) == []
    created = created_contacts(cli, {c["contactid"] for c in contacts_before})
    assert len(created) == len(new_emails)
    assert {normal(c["emailaddress1"]) for c in created.values()} == new_emails
    assert all(c["marketingonly"] for c in created.values())
    leads = {lead["leadid"]: lead for lead in cli.emulator.rows("lead")}
    contacts = {c["contactid"]: c for c in cli.emulator.rows("contact")}
    for orphan in orphans:
        lead = leads[orphan["leadid"]]
        contact = contacts[lead["_parentcontactid_value"]]
        assert normal(contact["emailaddress1"]) == normal(orphan["emailaddress1"])
        if contact["contactid"] in created:
            assert contact["_ownerid_value"] in {
                leads[o["leadid"]]["_ownerid_value"]
                for o in orphans
                if normal(o["emailaddress1"]) == normal(contact["emailaddress1"])
            }
    counts = job_counts(document, "link-orphans")
    assert counts["created"] == len(created)
    assert counts["linked"] == len(orphans)
    assert counts["matched"] == len(orphans) - sum(
        1 for o in orphans if normal(o["emailaddress1"]) in new_emails
    )
    assert counts["failed"] == 0
    # every link is on record, and the store holds them once a sync has read them back
    listed = cli.run("orphans", "links", "--csv")
    records = list(csv.DictReader(io.StringIO(listed.stdout)))
    assert {(r["leadid"], r["status"]) for r in records} == {(o["leadid"], "done") for o in orphans}
    assert {r["contactid"] for r in records if r["how"] == "created"} == set(created)
    assert cli.run("run", "sync").returncode == 0
    stored_leads = cli.store_rows("lead")
    assert all(stored_leads[o["leadid"]]["_parentcontactid_value"] for o in orphans)
    assert set(created) <= set(cli.store_rows("contact"))

    seq = cli.emulator.requests_after(0)[-1]["seq"]
    code, document = run(cli, "all")
    assert code == 0
    assert job_counts(document, "link-orphans")["orphans"] == 0
    writes = [r for r in cli.emulator.requests_after(seq) if r["method"] != "GET"]
    assert writes == []
    assert len(created_contacts(cli, {c["contactid"] for c in contacts_before})) == len(created)


def test_each_created_contact_takes_the_owner_of_the_lead_it_was_made_from(cli: Cli) -> None:
    orphans = open_orphans(cli)
    before = {c["contactid"] for c in cli.emulator.rows("contact")}
    run(cli, "all")
    leads = {lead["leadid"]: lead for lead in cli.emulator.rows("lead")}
    created = created_contacts(cli, before)
    for contact in created.values():
        sources = sorted(
            (leads[o["leadid"]] for o in orphans
             if leads[o["leadid"]]["_parentcontactid_value"] == contact["contactid"]),
            key=lambda lead: (lead["createdon"], lead["leadid"]),
        )  # fmt: skip
        assert contact["_ownerid_value"] == sources[0]["_ownerid_value"]
        assert contact["lastname"] == sources[0]["lastname"].strip()


def test_links_go_at_most_one_request_per_batch_size_leads(cli: Cli, tmp_path: Path) -> None:
    mappings = mappings_with(tmp_path, batch_size=20)
    cli.run("run", "sync", DVCONNECT_MAPPINGS_DIR=str(mappings))
    seq = cli.emulator.requests_after(0)[-1]["seq"]
    orphans = len(open_orphans(cli))

    code, _ = run(cli, "link-orphans", DVCONNECT_MAPPINGS_DIR=str(mappings))

    assert code == 0
    calls = [r for r in cli.emulator.requests_after(seq) if r["method"] == "POST"]
    chunks = -(-orphans // 20)
    creates = [
        c for c in calls if c["path"].endswith("contacts/Microsoft.Dynamics.CRM.CreateMultiple")
    ]
    updates = [
        c for c in calls if c["path"].endswith("leads/Microsoft.Dynamics.CRM.UpdateMultiple")
    ]
    assert len(updates) == chunks
    assert len(creates) <= chunks
    assert len(calls) == len(creates) + chunks
    assert open_orphans(cli) == []


def test_batch_mode_writes_through_batch_only_and_gives_the_same_contacts(
    cli: Cli, tmp_path: Path
) -> None:
    before = {c["contactid"] for c in cli.emulator.rows("contact")}
    run(cli, "all")
    bulk = {
        i: (c["emailaddress1"], c["marketingonly"])
        for i, c in created_contacts(cli, before).items()
    }
    links = {lead["leadid"]: lead["_parentcontactid_value"] for lead in cli.emulator.rows("lead")}

    cli.emulator.reset()
    cli.database.unlink()
    mappings = mappings_with(tmp_path, write="batch")
    shutil.rmtree(mappings / "scoring")  # its ratings go by UpdateMultiple: this is about links
    seq = cli.emulator.requests_after(0)[-1]["seq"] if cli.emulator.requests_after(0) else 0
    code, _ = run(cli, "all", DVCONNECT_MAPPINGS_DIR=str(mappings))

    assert code == 0
    batched = {
        i: (c["emailaddress1"], c["marketingonly"])
        for i, c in created_contacts(cli, before).items()
    }
    assert batched == bulk
    assert {
        lead["leadid"]: lead["_parentcontactid_value"] for lead in cli.emulator.rows("lead")
    } == links
    posts = [r for r in cli.emulator.requests_after(seq) if r["method"] == "POST"]
    assert posts
    assert all(r["path"].endswith("$batch") for r in posts)


def test_faults_and_a_kill_mid_run_end_with_exactly_the_contacts_of_a_clean_run(
    cli: Cli, tmp_path: Path
) -> None:
    mappings = mappings_with(tmp_path, batch_size=6)
    env = {"DVCONNECT_MAPPINGS_DIR": str(mappings)}
    contacts_before = {c["contactid"] for c in cli.emulator.rows("contact")}
    assert run(cli, "all", **env)[0] == 0
    clean = {
        i: (c["emailaddress1"], c["marketingonly"], c["_ownerid_value"], c["lastname"])
        for i, c in created_contacts(cli, contacts_before).items()
    }
    clean_links = {
        lead["leadid"]: lead["_parentcontactid_value"] for lead in cli.emulator.rows("lead")
    }

    cli.emulator.reset()
    cli.database.unlink()
    assert cli.run("run", "sync", **env).returncode == 0
    cli.emulator.admin(
        "PUT",
        "/faults",
        {
            "spec": "commit-drop:method=POST:rate=0.1,503:rate=0.05:retry-after=0,"
            "429:rate=0.05:retry-after=0,slow:method=POST:ms=100",
            "seed": 7,
        },
    )
    process = cli.popen("run", "link-orphans", **env)

    def links_done() -> int:
        store = cli.store()
        if not store.exists:
            return 0
        with store.engine.connect() as conn:
            return int(
                conn.exec_driver_sql(
                    "SELECT count(*) FROM dvc_outbox WHERE kind = 'update' AND status = 'done'"
                ).scalar_one()
            )

    def some_links_saved() -> bool:
        return links_done() >= 12 or process.poll() is not None

    cli.wait_for(some_links_saved)
    assert process.poll() is None, "the run ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert open_orphans(cli), "the kill came too late to test a re-run"

    code, document = run(cli, "all", **env)

    assert code == 0, document
    faults = cli.emulator.admin("GET", "/faults")
    assert any(rule["kind"] == "commit-drop" and rule["injected"] for rule in faults["rules"])
    after = {
        i: (c["emailaddress1"], c["marketingonly"], c["_ownerid_value"], c["lastname"])
        for i, c in created_contacts(cli, contacts_before).items()
    }
    assert after == clean
    assert {
        lead["leadid"]: lead["_parentcontactid_value"] for lead in cli.emulator.rows("lead")
    } == clean_links


def test_promotion_clears_the_flag_only_for_contacts_of_qualified_leads(cli: Cli) -> None:
    before = {c["contactid"] for c in cli.emulator.rows("contact")}
    run(cli, "all")
    created = created_contacts(cli, before)
    linked = [
        lead for lead in cli.emulator.rows("lead")
        if lead["_parentcontactid_value"] in created and lead["statecode"] == OPEN
    ]  # fmt: skip
    qualified = {lead["_parentcontactid_value"] for lead in linked[:5]}
    for lead in linked[:5]:
        cli.emulator.admin(
            "PATCH", f"/tables/lead/{lead['leadid']}", {"statecode": 1, "statuscode": 3}
        )

    code, document = run(cli, "all")

    assert code == 0
    assert job_counts(document, "promote-contacts")["promoted"] == len(qualified)
    contacts = {c["contactid"]: c for c in cli.emulator.rows("contact")}
    assert {i for i in created if not contacts[i]["marketingonly"]} == qualified
    seq = cli.emulator.requests_after(0)[-1]["seq"]
    # before the next sync reads them back, promotions in flight are not sent again
    assert job_counts(run(cli, "promote-contacts")[1], "promote-contacts")["promoted"] == 0
    assert cli.run("run", "sync").returncode == 0
    assert all(not cli.store_rows("contact")[i]["marketingonly"] for i in qualified)
    assert job_counts(run(cli, "promote-contacts")[1], "promote-contacts")["promoted"] == 0
    assert [r for r in cli.emulator.requests_after(seq) if r["method"] != "GET"] == []


def test_promotion_can_be_switched_off(cli: Cli, tmp_path: Path) -> None:
    directory = mappings_with(tmp_path)
    path = directory / "orphans.yaml"
    path.write_text(path.read_text().replace("enabled: true", "enabled: false"))
    code, document = run(cli, "all", DVCONNECT_MAPPINGS_DIR=str(directory))
    assert code == 0
    assert job_counts(document, "promote-contacts") == {
        "enabled": False, "failed": 0, "failures": [], "interrupted": False,
        "promoted": 0, "qualified": 0,
    }  # fmt: skip


def test_dry_run_lists_every_contact_and_link_and_writes_nothing(cli: Cli) -> None:
    assert cli.run("run", "sync").returncode == 0
    orphans = open_orphans(cli)
    seq = cli.emulator.requests_after(0)[-1]["seq"]

    result = cli.run("run", "link-orphans", "--dry-run", "--json")

    assert result.returncode == 0, result.stderr
    steps = json.loads(result.stdout)["plan"]["link-orphans"]
    links = {s["lead"]: s for s in steps if s["action"] == "link lead"}
    assert set(links) == {o["leadid"] for o in orphans}
    creates = [s for s in steps if s["action"] == "create contact"]
    assert {s["contact"] for s in creates} == {
        s["contact"] for s in links.values() if s["how"] == "new"
    }
    assert all(s["values"]["marketingonly"] is True for s in creates)
    assert [r for r in cli.emulator.requests_after(seq) if r["method"] != "GET"] == []
    assert open_orphans(cli) == orphans

    text = cli.run("run", "link-orphans", "--dry-run")
    assert f"link-orphans: action link lead, lead {orphans[0]['leadid']}" in text.stdout


def test_a_lead_deleted_after_the_sync_is_reported_and_the_others_are_linked(cli: Cli) -> None:
    assert cli.run("run", "sync").returncode == 0
    orphans = open_orphans(cli)
    gone = orphans[0]["leadid"]
    cli.emulator.admin("DELETE", f"/tables/lead/{gone}")

    code, document = run(cli, "link-orphans")

    assert code == 1
    counts = job_counts(document, "link-orphans")
    assert counts["failed"] == 1
    assert counts["linked"] == len(orphans) - 1
    (failure,) = counts["failures"]
    assert failure["record"] == gone
    assert failure["status"] == 404
    assert failure["code"] == "0x80040217"
    assert failure["request_id"]
    assert "deleted since the last sync" in failure["message"]
    assert open_orphans(cli) == []
    assert document["runs"][0]["outcome"] == "partial"


def test_a_duplicate_detected_contact_is_reported_with_the_conflicting_record(cli: Cli) -> None:
    assert cli.run("run", "sync").returncode == 0
    contacts = {normal(c["emailaddress1"]) for c in cli.emulator.rows("contact")}
    orphan = next(o for o in open_orphans(cli) if normal(o["emailaddress1"]) not in contacts)
    rival = "0f0f0f0f-0000-4000-8000-000000000001"
    cli.emulator.admin(
        "POST",
        "/tables/contact",
        {
            "rows": [
                {"contactid": rival, "lastname": "Rival", "emailaddress1": orphan["emailaddress1"]}
            ]
        },
    )

    code, document = run(cli, "link-orphans")

    assert code == 1
    failures = job_counts(document, "link-orphans")["failures"]
    assert [f["record"] for f in failures] == [orphan["leadid"]]
    assert failures[0]["code"] == "0x80040333"
    assert failures[0]["status"] == 500
    assert rival in failures[0]["message"]
    assert [o["leadid"] for o in open_orphans(cli)] == [orphan["leadid"]]


@pytest.mark.parametrize("policy", ["truncate", "reject"])
def test_values_longer_than_the_contact_column_are_truncated_or_rejected(
    cli: Cli, tmp_path: Path, policy: str
) -> None:
    directory = mappings_with(tmp_path, too_long=policy, match="none", duplicate_detection=False)
    path = directory / "orphans.yaml"
    path.write_text(path.read_text().replace("jobtitle: jobtitle", "jobtitle: subject"))
    orphan = open_orphans(cli)[0]
    cli.emulator.admin("PATCH", f"/tables/lead/{orphan['leadid']}", {"subject": "x" * 150})

    code, document = run(cli, "all", DVCONNECT_MAPPINGS_DIR=str(directory))

    assert code == 0
    counts = job_counts(document, "link-orphans")
    lead = next(r for r in cli.emulator.rows("lead") if r["leadid"] == orphan["leadid"])
    if policy == "truncate":
        assert counts["truncated"] == 1
        contact = next(
            c
            for c in cli.emulator.rows("contact")
            if c["contactid"] == lead["_parentcontactid_value"]
        )
        assert contact["jobtitle"] == "x" * 100
    else:
        assert counts["skips"] == [
            {
                "lead_id": orphan["leadid"],
                "reason": "subject has 150 characters; contact.jobtitle allows 100 (too_long: reject)",
            }
        ]
        assert lead["_parentcontactid_value"] is None


@pytest.mark.parametrize("policy", ["create", "skip"])
def test_leads_without_email_or_name_are_created_or_skipped_as_configured(
    cli: Cli, tmp_path: Path, policy: str
) -> None:
    directory = mappings_with(tmp_path, leads_without_email_or_name=policy)
    bare, invalid = open_orphans(cli)[:2]
    empty = {"emailaddress1": None, "firstname": None, "lastname": None, "fullname": None}
    cli.emulator.admin("PATCH", f"/tables/lead/{bare['leadid']}", empty)
    cli.emulator.admin("PATCH", f"/tables/lead/{invalid['leadid']}", {"emailaddress1": "n/a"})

    code, document = run(cli, "all", DVCONNECT_MAPPINGS_DIR=str(directory))

    assert code == 0
    counts = job_counts(document, "link-orphans")
    assert counts["invalid_emails"] == 1
    leads = {r["leadid"]: r for r in cli.emulator.rows("lead")}
    contacts = {c["contactid"]: c for c in cli.emulator.rows("contact")}
    without_email = contacts[leads[invalid["leadid"]]["_parentcontactid_value"]]
    assert without_email["emailaddress1"] is None
    assert without_email["lastname"] == invalid["lastname"].strip()
    if policy == "create":
        contact = contacts[leads[bare["leadid"]]["_parentcontactid_value"]]
        assert contact["marketingonly"]
        assert contact["emailaddress1"] is None
    else:
        assert leads[bare["leadid"]]["_parentcontactid_value"] is None
        assert counts["skips"] == [
            {
                "lead_id": bare["leadid"],
                "reason": "no valid email and no name (leads_without_email_or_name: skip)",
            }
        ]


def test_a_contact_made_for_a_team_owned_lead_is_owned_by_that_team(cli: Cli) -> None:
    teams = {t["teamid"] for t in cli.emulator.rows("team") if t["teamtype"] == 0}
    known = {normal(c["emailaddress1"]) for c in cli.emulator.rows("contact")}
    lead = next(o for o in open_orphans(cli) if normal(o["emailaddress1"]) not in known
                and normal(o["emailaddress1"]))  # fmt: skip
    team = sorted(teams)[0]
    cli.emulator.admin("PATCH", f"/tables/lead/{lead['leadid']}", {"_ownerid_value": team})
    before = {c["contactid"] for c in cli.emulator.rows("contact")}

    code, _ = run(cli, "all")

    assert code == 0
    linked = next(r for r in cli.emulator.rows("lead") if r["leadid"] == lead["leadid"])
    contact = next(
        c
        for c in cli.emulator.rows("contact")
        if c["contactid"] == linked["_parentcontactid_value"]
    )
    assert contact["contactid"] not in before
    assert (contact["_ownerid_value"], contact["_owningteam_value"]) == (team, team)
    with cli.store().engine.connect() as conn:  # the sync keeps whom the owner is
        kind = conn.exec_driver_sql(
            "SELECT owneridtype FROM lead WHERE leadid = ?", (lead["leadid"],)
        ).scalar_one()
    assert kind == "team"
