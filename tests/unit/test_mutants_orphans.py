"""link-orphans and promote-contacts end to end over a scripted Dataverse: the writes they
record, what they count, and what they report.

Written for `make mutate`: only the planning of link-orphans had unit tests.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import select

from connector import tables as dvc
from connector.errors import (
    DUPLICATE_RECORDS_FOUND,
    BadRequestError,
    ConfigError,
    NotFoundError,
    NotRunError,
)
from connector.outbox import Intent, record
from connector.store import Store, SyncState
from jobs.context import Context
from jobs.orphans import (
    LINK_JOB,
    PROMOTE_JOB,
    contact_id_for,
    orphan_links,
    plan_link_orphans,
    plan_promote_contacts,
    run_link_orphans,
    run_promote_contacts,
)
from tests.unit.test_mutants_outbox import ScriptedDataverse
from tests.unit.test_orphans import OWNER, contact, context, lead, load

NEW = contact_id_for("email", ("new@x.example",), "")


class Org(ScriptedDataverse):
    """A scripted Dataverse that also answers the metadata and lookup reads of the jobs."""

    def __init__(self, bulk_tables: tuple[str, ...] = ("contact", "lead")) -> None:
        super().__init__(bulk_tables)
        self.lookups: list[tuple[str, list[str], str, int]] = []
        self.rows: list[dict[str, Any]] = []

    def string_lengths(self, logical_name: str) -> dict[str, int]:
        return {"firstname": 50, "lastname": 50, "emailaddress1": 100}

    def first_rows(
        self, entity_set: str, select: list[str], filter: str, top: int
    ) -> list[dict[str, Any]]:
        self.lookups.append((entity_set, select, filter, top))
        return self.rows


def online(database_url: str, org: Org, **orphans: Any) -> Context:
    ctx = context(database_url, **orphans)
    ctx.dataverse = org  # type: ignore[assignment]
    ctx.run_id = ctx.store.start_run(LINK_JOB)
    return ctx


def leadid(n: int) -> str:
    return str(lead(n, None)["leadid"])


def contactid(n: int) -> str:
    return str(contact(n, "", "")["contactid"])


def links(store: Store) -> list[tuple[str, str, str, str | None]]:
    c = dvc.orphan_links.c
    with store.engine.connect() as conn:
        rows = conn.execute(select(c.leadid, c.contactid, c.how, c.match_key).order_by(c.link_id))
        return [tuple(row) for row in rows]  # type: ignore[misc]


def test_an_orphan_gets_a_new_marketing_only_contact_owned_like_it_then_its_link(
    database_url: str,
) -> None:
    org = Org()
    ctx = online(database_url, org)
    load(ctx, [lead(1, " New@x.example ")], [])
    counts = run_link_orphans(ctx)
    assert org.bulk_calls == [
        ("contact", "contacts", "CreateMultiple",
         [{"firstname": "Ada", "lastname": "Lead1", "emailaddress1": "New@x.example",
           "marketingonly": True, "ownerid@odata.bind": f"/systemusers({OWNER})",
           "contactid": NEW}],
         {"MSCRM.SuppressDuplicateDetection": "false"}),
        ("lead", "leads", "UpdateMultiple",
         [{"parentcontactid@odata.bind": f"/contacts({NEW})", "leadid": leadid(1)}], {}),
    ]  # fmt: skip
    assert (counts.orphans, counts.created, counts.linked, counts.matched, counts.failed) == (
        1, 1, 1, 0, 0,
    )  # fmt: skip
    assert links(ctx.store) == [(leadid(1), NEW, "created", "new@x.example")]


def test_a_team_owned_lead_gives_a_team_owned_contact_without_duplicate_detection(
    database_url: str,
) -> None:
    org = Org(bulk_tables=())
    ctx = online(database_url, org, duplicate_detection=False)
    team = {"_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname": "team"}
    load(ctx, [lead(1, "new@x.example", **team)], [])
    run_link_orphans(ctx)
    (create, _), (update, _) = org.batches
    assert create[0].body is not None
    assert create[0].body["ownerid@odata.bind"] == f"/teams({OWNER})"
    assert create[0].headers == ()
    assert update[0].url == f"leads({leadid(1)})"


def test_a_lead_without_owner_gives_a_contact_without_owner(database_url: str) -> None:
    org = Org()
    ctx = online(database_url, org)
    load(ctx, [lead(1, "new@x.example", _ownerid_value=None)], [])
    run_link_orphans(ctx)
    assert "ownerid@odata.bind" not in org.bulk_calls[0][3][0]


def test_a_matched_orphan_is_only_linked_and_counted_as_matched(database_url: str) -> None:
    org = Org()
    ctx = online(database_url, org)
    load(ctx, [lead(1, "ada@x.example")], [contact(1, "ada@x.example", "2024-01-01T00:00:00Z")])
    counts = run_link_orphans(ctx)
    assert [call[2] for call in org.bulk_calls] == ["UpdateMultiple"]
    assert (counts.created, counts.linked, counts.matched) == (0, 1, 1)
    assert links(ctx.store) == [(leadid(1), contactid(1), "matched", "ada@x.example")]


def test_leads_sharing_a_new_contact_create_it_once_and_a_lead_without_key_gets_its_own(
    database_url: str,
) -> None:
    org = Org()
    ctx = online(database_url, org)
    load(ctx, [lead(1, "new@x.example"), lead(2, "new@x.example"), lead(3, None)], [])
    counts = run_link_orphans(ctx)
    assert (counts.created, counts.linked, counts.matched) == (2, 3, 0)
    own = contact_id_for("email", None, leadid(3))
    assert sorted(links(ctx.store)) == [
        (leadid(1), NEW, "created", "new@x.example"),
        (leadid(2), NEW, "created", "new@x.example"),
        (leadid(3), own, "created", None),
    ]


def test_a_refused_duplicate_contact_fails_its_lead_and_names_the_conflicting_contacts(
    database_url: str,
) -> None:
    org = Org()
    org.bulk_error = BadRequestError(400, DUPLICATE_RECORDS_FOUND, "duplicate")
    org.errors[NEW] = BadRequestError(400, DUPLICATE_RECORDS_FOUND, "duplicate", "req-1")
    org.rows = [
        {"contactid": contactid(7), "emailaddress1": " NEW@x.example"},
        {"contactid": contactid(8), "emailaddress1": "renew@x.example"},
    ]
    ctx = online(database_url, org)
    load(ctx, [lead(1, "new@x.example")], [])
    counts = run_link_orphans(ctx)
    assert org.lookups == [
        ("contacts", ["contactid", "emailaddress1"], "contains(emailaddress1,'new@x.example')", 20)
    ]
    assert (counts.failed, counts.created, counts.linked) == (1, 0, 0)
    assert counts.failures == [
        {"record": leadid(1), "status": 400, "code": DUPLICATE_RECORDS_FOUND,
         "request_id": "req-1",
         "message": f"its new contact {NEW} was refused: duplicate; conflicting contact(s) "
                    f"with the same email: {contactid(7)}"},
    ]  # fmt: skip


def test_a_refused_contact_for_another_reason_names_no_conflicts(database_url: str) -> None:
    org = Org(bulk_tables=())
    org.errors[NEW] = BadRequestError(400, "0x1", "bad value")
    ctx = online(database_url, org)
    load(ctx, [lead(1, "new@x.example")], [])
    counts = run_link_orphans(ctx)
    assert org.lookups == []
    assert [f["message"] for f in counts.failures] == [
        f"its new contact {NEW} was refused: bad value"
    ]


def test_a_lead_deleted_since_the_last_sync_is_reported_as_gone(database_url: str) -> None:
    org = Org(bulk_tables=())
    org.errors[f"leads({leadid(1)})"] = NotFoundError(404, "0x2", "not found", "req-9")
    ctx = online(database_url, org)
    load(ctx, [lead(1, "ada@x.example")], [contact(1, "ada@x.example", "2024-01-01T00:00:00Z")])
    counts = run_link_orphans(ctx)
    assert counts.failures == [
        {"record": leadid(1), "status": 404, "code": "0x2", "request_id": "req-9",
         "message": "the lead no longer exists in Dataverse (deleted since the last sync): "
                    "not found"},
    ]  # fmt: skip
    assert (counts.failed, counts.linked) == (1, 0)


def test_a_stopped_link_run_records_nothing_and_says_it_was_interrupted(
    database_url: str,
) -> None:
    org = Org()
    ctx = online(database_url, org)
    load(ctx, [lead(1, "new@x.example")], [])
    ctx.stop.set()
    counts = run_link_orphans(ctx)
    assert (counts.interrupted, org.bulk_calls, links(ctx.store)) == (True, [], [])


def test_writes_an_interrupted_run_recorded_are_sent_first_and_counted_as_resumed(
    database_url: str,
) -> None:
    org = Org()
    ctx = online(database_url, org)
    earlier = Intent(f"{LINK_JOB}/x", LINK_JOB, "update", "lead", "leads", "leadid", leadid(9), {})
    with ctx.store.transaction() as conn:
        record(conn, [earlier], now="2024-03-01T00:00:00Z", run_id=None)
    assert plan_link_orphans(ctx) == [
        {"action": "send first", "writes": 1, "why": "recorded by an interrupted run"}
    ]
    counts = run_link_orphans(ctx)
    assert counts.resumed == 1


def test_the_plan_lists_each_create_once_then_links_and_skips_without_writing(
    database_url: str,
) -> None:
    org = Org()
    ctx = online(database_url, org, leads_without_email_or_name="skip")
    load(
        ctx,
        [lead(1, "new@x.example"), lead(2, "new@x.example"), lead(3, "ada@x.example"),
         lead(4, None, firstname=None, lastname=None)],
        [contact(1, "ada@x.example", "2024-01-01T00:00:00Z")],
    )  # fmt: skip
    values = {"firstname": "Ada", "lastname": "Lead1", "emailaddress1": "new@x.example",
              "marketingonly": True, "ownerid@odata.bind": f"/systemusers({OWNER})"}  # fmt: skip
    assert plan_link_orphans(ctx) == [
        {"action": "link lead", "lead": leadid(3), "contact": contactid(1), "how": "matched"},
        {"action": "create contact", "contact": NEW, "values": values},
        {"action": "link lead", "lead": leadid(1), "contact": NEW, "how": "new"},
        {"action": "link lead", "lead": leadid(2), "contact": NEW, "how": "new"},
        {"action": "skip lead", "lead_id": leadid(4),
         "reason": "no valid email and no name (leads_without_email_or_name: skip)"},
    ]  # fmt: skip
    assert (org.bulk_calls, org.batches, links(ctx.store)) == ([], [], [])


def test_orphan_links_shows_each_decision_with_its_outcome_filtered_by_lead_and_time(
    database_url: str,
) -> None:
    org = Org()
    ctx = online(database_url, org)
    load(ctx, [lead(1, "new@x.example"), lead(2, "ada@x.example")], [])
    run_link_orphans(ctx)
    shown = list(orphan_links(ctx, None, None))
    assert [(r["leadid"], r["how"], r["status"]) for r in shown] == [
        (leadid(2), "created", "done"), (leadid(1), "created", "done")
    ]  # fmt: skip
    assert set(shown[0]) == {"at", "leadid", "contactid", "how", "status", "match_key", "run_id"}
    braced = "{" + leadid(1).upper() + "} "
    assert [r["leadid"] for r in orphan_links(ctx, braced, None)] == [leadid(1)]
    at = shown[0]["at"]
    assert len(list(orphan_links(ctx, None, at))) == 2
    assert list(orphan_links(ctx, None, "2999-01-01T00:00:00+00:00")) == []
    with pytest.raises(ConfigError, match=r"--since: not an ISO-8601 time: 'yesterday'"):
        list(orphan_links(ctx, None, "yesterday"))


def test_orphan_links_of_a_store_never_prepared_is_empty(database_url: str, tmp_path: Any) -> None:
    ctx = context(database_url)
    missing = replace(ctx, store=Store(f"sqlite:///{tmp_path / 'none.sqlite3'}", ctx.mapping))
    assert list(orphan_links(missing, None, None)) == []


def _qualified(ctx: Context) -> None:
    marketing = {**contact(1, "a@x.example", "2024-01-01T00:00:00Z"), "marketingonly": True}
    plain = {**contact(2, "b@x.example", "2024-01-01T00:00:00Z"), "marketingonly": False}
    open_lead = {**contact(3, "c@x.example", "2024-01-01T00:00:00Z"), "marketingonly": True}
    load(
        ctx,
        [lead(1, None, statecode=1, _parentcontactid_value=contactid(1)),
         lead(2, None, statecode=1, _parentcontactid_value=contactid(2)),
         lead(3, None, statecode=0, _parentcontactid_value=contactid(3))],
        [marketing, plain, open_lead],
    )  # fmt: skip


def test_a_marketing_only_contact_of_a_qualified_lead_is_promoted(database_url: str) -> None:
    org = Org()
    ctx = online(database_url, org)
    _qualified(ctx)
    assert plan_promote_contacts(ctx) == [
        {"action": "clear marketingonly", "contact": contactid(1)}
    ]
    counts = run_promote_contacts(ctx)
    assert org.bulk_calls == [
        ("contact", "contacts", "UpdateMultiple",
         [{"marketingonly": False, "contactid": contactid(1)}], {}),
    ]  # fmt: skip
    assert (counts.qualified, counts.promoted, counts.failed, counts.interrupted) == (
        1,
        1,
        0,
        False,
    )
    assert plan_promote_contacts(ctx) == []
    assert run_promote_contacts(ctx).qualified == 0


def test_a_refused_promotion_is_reported_by_contact(database_url: str) -> None:
    org = Org(bulk_tables=())
    org.errors[contactid(1)] = BadRequestError(400, "0x3", "locked", "req-3")
    ctx = online(database_url, org)
    _qualified(ctx)
    counts = run_promote_contacts(ctx)
    assert (counts.promoted, counts.failed) == (0, 1)
    assert counts.failures == [
        {"record": contactid(1), "status": 400, "code": "0x3", "request_id": "req-3",
         "message": "locked"}
    ]  # fmt: skip


def test_promotion_switched_off_does_nothing(database_url: str) -> None:
    org = Org()
    ctx = online(database_url, org)
    off = ctx.mapping.orphans.promote_contacts.model_copy(update={"enabled": False})
    orphans = ctx.mapping.orphans.model_copy(update={"promote_contacts": off})
    ctx = replace(ctx, mapping=replace(ctx.mapping, orphans=orphans))
    _qualified(ctx)
    counts = run_promote_contacts(ctx)
    assert (counts.enabled, counts.qualified, org.bulk_calls) == (False, 0, [])
    assert plan_promote_contacts(ctx) == []


def test_a_stopped_promotion_says_it_was_interrupted(database_url: str) -> None:
    org = Org()
    ctx = online(database_url, org)
    _qualified(ctx)
    ctx.stop.set()
    counts = run_promote_contacts(ctx)
    assert (counts.interrupted, counts.qualified, org.bulk_calls) == (True, 0, [])


def test_promotion_needs_a_store_synced_in_full(database_url: str) -> None:
    org = Org()
    ctx = online(database_url, org)
    with ctx.store.transaction() as conn:
        ctx.store.save_state(conn, SyncState("contact"))
    with pytest.raises(NotRunError, match=f"{PROMOTE_JOB} works from the store, and contact "):
        run_promote_contacts(ctx)
    with pytest.raises(NotRunError):
        plan_promote_contacts(ctx)
