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
    for table in SCHEMA.tables:
        assert rows(again, table.name) == rows(org, table.name)
    (tmp_path / "other").mkdir()
    assert rows(seeded(tmp_path / "other", number=7), "lead") != rows(org, "lead")


def test_owners_accounts_and_people(org: Store) -> None:
    users = rows(org, "systemuser")
    assert len(users) == 18
    assert sum(u["applicationid"] is not None for u in users) == 1
    assert sum(u["isdisabled"] for u in users) == 2
    assert [u["accessmode"] for u in users if u["applicationid"] is None].count(4) == 1
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
    assert len({lead["_ownerid_value"] for lead in leads}) == 16  # 15 sales users and a team


def test_an_owner_team_owns_about_two_percent_of_the_leads_that_have_a_contact(org: Store) -> None:
    teams = {t["teamid"]: t for t in rows(org, "team")}
    owned = [lead for lead in rows(org, "lead") if lead["owneridtype"] == "team"]
    assert 0.01 < len(owned) / 3000 < 0.03
    assert {teams[lead["_ownerid_value"]]["teamtype"] for lead in owned} == {0}
    assert all(lead["_parentcontactid_value"] is not None for lead in owned)
    assert all(lead["_owningteam_value"] == lead["_ownerid_value"] for lead in owned)
    assert all(lead["_owninguser_value"] is None for lead in owned)
    assert sorted(t["teamtype"] for t in teams.values()) == [0, 0, 1]


def test_the_organisation_has_a_business_unit_a_queue_and_processes(org: Store) -> None:
    (unit,) = rows(org, "businessunit")
    assert (unit["name"], unit["_parentbusinessunitid_value"]) == ("Contoso", None)
    (queue,) = rows(org, "queue")
    assert (queue["emailrouteraccessapproval"], queue["emailaddress"]) == (
        1,
        "sales@contoso.example",
    )
    processes = {
        (w["name"], w["category"], w["statecode"], w["ondemand"]) for w in rows(org, "workflow")
    }
    assert processes == {
        ("Lead nurture follow-up", 0, 1, 1),
        ("Contact welcome", 0, 1, 1),
        ("Lead re-engagement (draft)", 0, 0, 1),
        ("Route lead", 3, 1, 0),
    }
    assert rows(org, "email") == []
    assert rows(org, "asyncoperation") == []


def test_dates_fall_in_the_year_before_the_anchor(org: Store) -> None:
    year_ago = (ANCHOR - timedelta(days=366)).strftime("%Y-%m-%dT%H:%M:%SZ")
    anchor = ANCHOR.strftime("%Y-%m-%dT%H:%M:%SZ")
    for lead in rows(org, "lead"):
        assert year_ago <= lead["createdon"] <= lead["modifiedon"] <= anchor


def test_versions_are_unique_and_ids_are_lower_case_guids(org: Store) -> None:
    versions = [r["versionnumber"] for t in SCHEMA.tables for r in rows(org, t.name)]
    assert len(versions) == len(set(versions))
    assert max(versions) == org.version
    assert all(lead["leadid"] == lead["leadid"].lower() for lead in rows(org, "lead"))
