"""Seed data (in process): deterministic for a seed and sizes, and shaped like a real org."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from emulator import seed
from emulator.schema import SCHEMA
from emulator.storage import Store

ANCHOR = datetime(2026, 3, 1, tzinfo=UTC)


def seeded(path: Path, leads: int = 3000, contacts: int = 600, number: int = 42) -> Store:
    store = Store(path / "org.sqlite3", SCHEMA)
    with store.write("2026-03-01T00:00:00Z") as tx:
        seed.seed(tx, seed=number, leads=leads, contacts=contacts, anchor=ANCHOR, client_id="c")
    return store


def rows(store: Store, table: str) -> list[dict[str, Any]]:
    connection = store.connection()
    cursor = connection.execute(f'SELECT * FROM "{table}" ORDER BY 1')
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]


@pytest.fixture(scope="module")
def org(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return seeded(tmp_path_factory.mktemp("org"))


def test_the_same_seed_and_sizes_give_the_same_rows(org: Store, tmp_path: Path) -> None:
    again = seeded(tmp_path)
    for table in ("systemuser", "account", "contact", "lead"):
        assert rows(again, table) == rows(org, table)
    (tmp_path / "other").mkdir()
    assert rows(seeded(tmp_path / "other", number=7), "lead") != rows(org, "lead")


def test_owners_accounts_and_people(org: Store) -> None:
    users = rows(org, "systemuser")
    assert len(users) == 16
    assert sum(u["applicationid"] is not None for u in users) == 1
    contacts = rows(org, "contact")
    names = {c["fullname"] for c in contacts}
    assert {"Zoë Ångström", "Seán O'Brien"} <= names
    assert {c["accountrolecode"] for c in contacts} == {1, 2, 3, None}
    assert all(c["marketingonly"] == 0 for c in contacts)
    assert 0.9 < sum(c["statecode"] == 0 for c in contacts) / len(contacts) < 1
    emails = [c["emailaddress1"] for c in contacts]
    assert any(e != e.strip() for e in emails)
    assert any(e.strip() != e.strip().lower() for e in emails)
    assert all("@" in e and e.strip().split("@")[0].count(".") >= 1 for e in emails)
    assert rows(org, "account")


def test_leads_look_like_a_sales_pipeline(org: Store) -> None:
    leads = rows(org, "lead")
    contacts = {c["contactid"]: c for c in rows(org, "contact")}
    orphans = [lead for lead in leads if lead["_parentcontactid_value"] is None]
    assert 0.28 < len(orphans) / len(leads) < 0.38
    assert all(lead["_parentcontactid_value"] in contacts for lead in leads if lead not in orphans)
    contact_emails = {c["emailaddress1"].strip().lower() for c in contacts.values()}
    sharing = [o for o in orphans if o["emailaddress1"].strip().lower() in contact_emails]
    assert len(sharing) > 50
    assert any(
        o["emailaddress1"] not in {c["emailaddress1"] for c in contacts.values()} for o in sharing
    )
    conference = sum(lead["subject"] == "Contoso Ltd Conference" for lead in leads) / len(leads)
    assert 0.07 < conference < 0.13
    pairs = {(lead["statecode"], lead["statuscode"]) for lead in leads}
    assert pairs <= {(0, 1), (0, 2), (1, 3), (2, 4), (2, 5), (2, 6), (2, 7)}
    assert 0.75 < sum(lead["statecode"] == 0 for lead in leads) / len(leads) < 0.85
    assert {lead["leadsourcecode"] for lead in leads} == {*range(1, 11), None}
    assert 0.02 < sum(lead["donotphone"] for lead in leads) / len(leads) < 0.2
    assert len({lead["_ownerid_value"] for lead in leads}) == 15


def test_dates_fall_in_the_year_before_the_anchor(org: Store) -> None:
    year_ago = (ANCHOR - timedelta(days=366)).strftime("%Y-%m-%dT%H:%M:%SZ")
    anchor = ANCHOR.strftime("%Y-%m-%dT%H:%M:%SZ")
    for lead in rows(org, "lead"):
        assert year_ago <= lead["createdon"] <= lead["modifiedon"] <= anchor


def test_versions_are_unique_and_ids_are_lower_case_guids(org: Store) -> None:
    versions = [
        r["versionnumber"]
        for t in ("lead", "contact", "account", "systemuser", "savedquery")
        for r in rows(org, t)
    ]
    assert len(versions) == len(set(versions))
    assert max(versions) == org.version
    assert all(lead["leadid"] == lead["leadid"].lower() for lead in rows(org, "lead"))
