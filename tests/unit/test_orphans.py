"""link-orphans planning: which contact each orphan lead gets, on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from connector.clock import Clock
from connector.mapping import load_mapping
from connector.settings import Settings
from connector.store import Store, SyncState
from jobs.context import Context
from jobs.orphans import LinkCounts, _links, contact_id_for
from tests.paths import MAPPINGS

SHIPPED = MAPPINGS
OWNER = "00000000-0000-0000-0000-0000000000f1"


def lead(number: int, email: str | None, **values: Any) -> dict[str, Any]:
    return {
        "leadid": f"00000000-0000-0000-0000-{number:012d}",
        "emailaddress1": email,
        "firstname": "Ada",
        "lastname": f"Lead{number}",
        "statecode": 0,
        "_parentcontactid_value": None,
        "_ownerid_value": OWNER,
        "createdon": f"2024-01-{number:02d}T00:00:00Z",
        "modifiedon": "2024-02-01T00:00:00Z",
        **values,
    }


def contact(number: int, email: str, modified: str, statecode: int = 0) -> dict[str, Any]:
    return {
        "contactid": f"00000000-0000-0000-0000-c{number:011d}",
        "emailaddress1": email,
        "statecode": statecode,
        "modifiedon": modified,
    }


class Lengths:
    """Stands in for Dataverse: only the contact columns' lengths are read while planning."""

    def string_lengths(self, logical_name: str) -> dict[str, int]:
        assert logical_name == "contact"
        return {"firstname": 50, "lastname": 50, "emailaddress1": 100, "jobtitle": 100}


def context(database_url: str, **orphans: Any) -> Context:
    mapping = load_mapping(SHIPPED)
    link = mapping.orphans.link_orphans.model_copy(update=orphans)
    mapping = replace(mapping, orphans=mapping.orphans.model_copy(update={"link_orphans": link}))
    store = Store(database_url, mapping)
    store.prepare()
    settings = Settings()
    ctx = Context(
        settings=settings, mapping=mapping, store=store, clock=Clock(), dataverse=Lengths()
    )  # type: ignore[arg-type]
    with store.transaction() as conn:
        for table in ("lead", "contact"):
            state = SyncState(table, mode="delta", last_full_sync_at="2024-03-01T00:00:00Z")
            store.save_state(conn, state)
    return ctx


def load(ctx: Context, leads: list[dict[str, Any]], contacts: list[dict[str, Any]]) -> None:
    with ctx.store.transaction() as conn:
        ctx.store.upsert_rows(conn, "lead", leads, 1)
        ctx.store.upsert_rows(conn, "contact", contacts, 1)


def plan(ctx: Context) -> tuple[dict[str, Any], LinkCounts]:
    counts = LinkCounts()
    links = {link.lead_id[-2:]: link for link in _links(ctx, counts)}
    return links, counts


def test_the_most_recently_modified_active_contact_wins_over_case_and_spaces(
    database_url: str,
) -> None:
    ctx = context(database_url)
    load(
        ctx,
        [lead(1, "  Ada@Example.com ")],
        [
            contact(1, "ada@example.com", "2024-01-01T00:00:00Z"),
            contact(2, "ADA@example.COM ", "2024-01-05T00:00:00Z"),
            contact(3, "ada@example.com", "2024-01-09T00:00:00Z", statecode=1),
        ],
    )
    links, counts = plan(ctx)
    assert links["01"].contact_id == contact(2, "", "")["contactid"]
    assert links["01"].new_contact is None
    assert counts.several_matches == [
        {
            "lead": lead(1, None)["leadid"],
            "contact": contact(2, "", "")["contactid"],
            "candidates": 3,
        }
    ]


def test_an_inactive_contact_is_used_only_when_no_active_one_matches(database_url: str) -> None:
    ctx = context(database_url)
    load(ctx, [lead(1, "bob@x.example")], [contact(1, "Bob@X.example", "2024-01-01T00:00:00Z", 1)])
    links, counts = plan(ctx)
    assert links["01"].contact_id == contact(1, "", "")["contactid"]
    assert counts.inactive_matches == [
        {"lead": lead(1, None)["leadid"], "contact": contact(1, "", "")["contactid"]}
    ]


def test_leads_sharing_a_new_email_share_one_contact_made_from_the_earliest(
    database_url: str,
) -> None:
    ctx = context(database_url)
    load(ctx, [lead(4, "New@x.example", lastname="Later"), lead(3, " new@x.example ")], [])
    links, _ = plan(ctx)
    expected = contact_id_for("email", ("new@x.example",), "")
    assert links["03"].contact_id == links["04"].contact_id == expected
    assert links["03"].new_contact is links["04"].new_contact
    new = links["03"].new_contact
    assert new is not None
    assert new.values == {"firstname": "Ada", "lastname": "Lead3", "emailaddress1": "new@x.example"}
    assert new.owner_id == OWNER


def test_an_invalid_email_is_left_out_and_the_lead_gets_a_contact_of_its_own(
    database_url: str,
) -> None:
    ctx = context(database_url)
    load(ctx, [lead(5, "n/a"), lead(6, "n/a")], [contact(1, "n/a", "2024-01-01T00:00:00Z")])
    links, counts = plan(ctx)
    assert links["05"].contact_id == contact_id_for("email", None, lead(5, None)["leadid"])
    assert links["05"].contact_id != links["06"].contact_id
    assert links["05"].new_contact is not None
    assert "emailaddress1" not in links["05"].new_contact.values
    assert counts.invalid_emails == 2


@pytest.mark.parametrize("policy", ["create", "skip"])
def test_a_lead_without_email_or_name_is_created_or_skipped(database_url: str, policy: str) -> None:
    ctx = context(database_url, leads_without_email_or_name=policy)
    load(ctx, [lead(7, None, firstname=None, lastname="  ")], [])
    links, counts = plan(ctx)
    if policy == "create":
        assert links["07"].new_contact is not None
        assert links["07"].new_contact.values == {}
    else:
        assert links == {}
        assert counts.skips == [
            {
                "lead_id": lead(7, None)["leadid"],
                "reason": "no valid email and no name (leads_without_email_or_name: skip)",
            }
        ]


@pytest.mark.parametrize("policy", ["truncate", "reject"])
def test_a_value_longer_than_the_contact_column(database_url: str, policy: str) -> None:
    ctx = context(database_url, too_long=policy)
    load(ctx, [lead(8, "long@x.example", lastname="L" * 60)], [])
    links, counts = plan(ctx)
    if policy == "truncate":
        assert links["08"].new_contact is not None
        assert links["08"].new_contact.values["lastname"] == "L" * 50
        assert counts.truncated == 1
    else:
        assert links == {}
        assert [s["reason"] for s in counts.skips] == [
            "lastname has 60 characters; contact.lastname allows 50 (too_long: reject)"
        ]


def test_only_open_leads_without_a_parent_contact_are_orphans(database_url: str) -> None:
    ctx = context(database_url)
    parent = contact(1, "p@x.example", "2024-01-01T00:00:00Z")
    load(
        ctx,
        [
            lead(1, "a@x.example"),
            lead(2, "b@x.example", statecode=1),
            lead(3, "c@x.example", _parentcontactid_value=parent["contactid"]),
        ],
        [parent],
    )
    links, counts = plan(ctx)
    assert set(links) == {"01"}
    assert counts.orphans == 1


def test_email_and_lastname_needs_both_to_match(database_url: str) -> None:
    ctx = context(database_url, match="email_and_lastname")
    load(
        ctx,
        [lead(1, "a@x.example", lastname="Smith"), lead(2, "a@x.example", lastname="Jones")],
        [{**contact(1, "A@x.example", "2024-01-01T00:00:00Z"), "lastname": " smith"}],
    )
    links, _ = plan(ctx)
    assert links["01"].contact_id == contact(1, "", "")["contactid"]
    assert links["02"].new_contact is not None
    assert links["02"].contact_id == contact_id_for(
        "email_and_lastname", ("a@x.example", "jones"), ""
    )


def test_a_store_never_synced_in_full_is_refused(database_url: str) -> None:
    ctx = context(database_url)
    with ctx.store.transaction() as conn:
        ctx.store.save_state(conn, SyncState("contact"))
    with pytest.raises(Exception, match="contact has not been synced in full yet"):
        plan(ctx)
