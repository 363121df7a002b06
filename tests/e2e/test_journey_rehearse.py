"""Rehearsals on a twin of the org: the real journey on an emulator seeded from the store.

The org is the 3,000-lead seed synced at the launch's start. The plan is made on the real store;
the rehearsal makes its own twin, and what the twin received must be the plan's records, while
the org (the configured emulator) sees no request at all.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.conftest import Cli
from tests.e2e.journey_org import Org

COMPARED = ("run", "step", "table", "id", "subject", "owner", "regarding", "due")


@pytest.fixture
def org(cli: Cli) -> Org:
    return Org.synced(cli)


def _records(path: Path) -> set[tuple[Any, ...]]:
    lines = path.read_text().splitlines()
    return {tuple(json.loads(line).get(key) for key in COMPARED) for line in lines}


def test_a_rehearsal_creates_in_the_twin_exactly_the_planned_records_and_nothing_in_the_org(
    org: Org, tmp_path: Path
) -> None:
    planned_file, received_file = tmp_path / "planned.jsonl", tmp_path / "received.jsonl"
    planned = org.run("journeys", "plan", "product-launch", "--assume", "opened=50%",
                      "--records", str(planned_file), "--json")  # fmt: skip
    seq = org.last_seq()

    rehearsed = org.run("journeys", "rehearse", "product-launch", "--assume", "opened=50%",
                        "--records", str(received_file), "--json")  # fmt: skip

    assert org.cli.emulator.requests_after(seq) == []  # the org saw nothing
    received = _records(received_file)
    assert received == _records(planned_file)
    steps = {record[1] for record in received}
    assert {"launch-email", "newsletter", "call", "brochure"} <= steps  # both branches
    assert rehearsed["plan"]["matches"] is True
    assert rehearsed["records"] == planned["records"] == len(received)
    assert rehearsed["runs"] == planned["runs"]
    assert rehearsed["days"].keys() == planned["days"].keys()
    for day, entry in rehearsed["days"].items():
        for key in ("by_step", "by_owner", "by_table"):
            assert entry[key] == planned["days"][day][key], (day, key)
    funnel = {k: v for k, v in planned["funnel"].items() if k in ("completed", "converted")}
    assert rehearsed["funnel"]["members"] == funnel
    assert rehearsed["failed"] == 0
    assert org.rows("email") == []  # the journey never ran in the org
    assert org.cli.store_rows("email") == {}


def test_a_twin_serves_masked_contacts_under_their_ids(org: Org) -> None:
    seq = org.last_seq()
    stored = org.cli.store_rows("contact")
    process = org.cli.popen("emulator", "--from-store", "--mask")
    try:
        settings = _ready(process)
        session = requests.Session()
        session.verify = settings["REQUESTS_CA_BUNDLE"]
        session.trust_env = False
        response = session.get(f"{settings['EMULATOR_ADMIN_URL']}/tables/contact", timeout=60)
        twin = {row["contactid"]: row for row in response.json()["rows"]}
    finally:
        process.terminate()
        process.communicate(timeout=30)
    assert twin.keys() == stored.keys()
    originals = {
        str(row[c]).strip().casefold()
        for row in stored.values()
        for c in ("firstname", "lastname", "fullname", "emailaddress1", "telephone1")
        if row[c]
    }
    shown = {
        str(row[c]).strip().casefold()
        for row in twin.values()
        for c in ("firstname", "lastname", "fullname", "emailaddress1", "telephone1")
        if row[c]
    }
    assert not originals & shown, sorted(originals & shown)[:10]
    for contact_id, row in stored.items():  # the same shape: flags and roles kept
        assert twin[contact_id]["accountrolecode"] == row["accountrolecode"]
        assert (twin[contact_id]["emailaddress1"] is None) == (row["emailaddress1"] is None)
    emails = [r["emailaddress1"] for r in twin.values() if r["emailaddress1"]]
    assert all("@" in email for email in emails)
    same = {}  # duplicates stay duplicates, and different addresses stay different
    for contact_id, row in stored.items():
        if row["emailaddress1"]:
            key = row["emailaddress1"].strip().casefold()
            same.setdefault(key, set()).add(twin[contact_id]["emailaddress1"].strip().casefold())
    assert all(len(fakes) == 1 for fakes in same.values())
    assert len({next(iter(fakes)) for fakes in same.values()}) == len(same)
    assert org.cli.emulator.requests_after(seq) == []


def _ready(process: subprocess.Popen[str]) -> dict[str, str]:
    """The settings the emulator printed, once it is ready."""
    assert process.stdout is not None
    settings = {}
    for line in process.stdout:
        if line.strip() == "emulator ready":
            return settings
        key, _, value = line.strip().partition("=")
        settings[key] = value
    raise AssertionError(
        "the twin did not start: " + (process.stderr.read() if process.stderr else "")
    )
