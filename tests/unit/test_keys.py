"""Match keys: one normal form for emails and names, the same on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from connector.keys import match_key
from jobs.orphans import contact_id_for
from tests.unit.test_orphans import context, lead, load, plan


@pytest.mark.parametrize(
    ("value", "ignore", "keep"),
    [
        ("bob@x.com", "bob@x.com", "bob@x.com"),
        ("  Bob@X.com\n", "bob@x.com", "bob@x.com"),
        ("bob@x.com\t", "bob@x.com", "bob@x.com"),
        ("\u00a0bob@x.com\u2003", "bob@x.com", "bob@x.com"),  # no-break and em spaces
        ("\u200bbob@x.com\ufeff", "bob@x.com", "bob@x.com"),  # zero-width space, BOM
        ("ANDRÉ.DUPONT@x.fr", "andre.dupont@x.fr", "andré.dupont@x.fr"),
        ("andre\u0301.dupont@x.fr", "andre.dupont@x.fr", "andré.dupont@x.fr"),  # decomposed é
        ("Straße@x.de", "strasse@x.de", "strasse@x.de"),  # case folding, not lower()
        ("ΣΊΣΥΦΟΣ@x.gr", "σισυφοσ@x.gr", "σίσυφοσ@x.gr"),
        ("Van  Der\tBerg", "van der berg", "van der berg"),
        ("   ", None, None),
        ("", None, None),
        (None, None, None),
        (42, None, None),
    ],
)
def test_one_normal_form_for_case_whitespace_composition_and_accents(
    value: object, ignore: str | None, keep: str | None
) -> None:
    assert match_key(value, "ignore") == ignore
    assert match_key(value, "keep") == keep


def test_contact_ids_are_pinned_literals_so_an_upgrade_never_renames_a_contact() -> None:
    # A change here would give every org a second contact for every person on upgrade.
    assert contact_id_for("email", ("bob@x.com",), "any") == "28f89364-3142-5ae7-be59-585ddc5bcc70"
    assert (
        contact_id_for("email_and_lastname", ("bob@x.com", "smith"), "any")
        == "fbce86a3-e976-5c6e-9e83-b1eca51f3618"
    )
    assert (
        contact_id_for("email", None, "00000000-0000-0000-0000-0000000000A1")
        == "d79aa94f-70e4-51e8-8216-0f661685a433"
    )


def test_unicode_and_whitespace_variants_give_the_same_keys_and_ids_on_both_databases(
    database_url: str,
) -> None:
    ctx = context(database_url)
    load(
        ctx,
        [
            lead(1, "bob@x.com\n"),
            lead(2, "  BOB@X.COM"),
            lead(3, "ANDRÉ.DUPONT@x.fr"),
            lead(4, "andre\u0301.dupont@x.fr"),
            lead(5, "andré.dupont@X.FR\u00a0"),
            lead(6, "Straße@x.de"),
            lead(7, "strasse@x.de"),
        ],
        [],
    )
    links, counts = plan(ctx)
    by_lead = {number: links[number].contact_id for number in links}
    bob = contact_id_for("email", ("bob@x.com",), "")
    andre = contact_id_for("email", ("andre.dupont@x.fr",), "")
    strasse = contact_id_for("email", ("strasse@x.de",), "")
    assert by_lead == {
        "01": bob, "02": bob, "03": andre, "04": andre, "05": andre, "06": strasse, "07": strasse,
    }  # fmt: skip
    assert {link.key for link in links.values()} == {
        ("bob@x.com",), ("andre.dupont@x.fr",), ("strasse@x.de",)
    }  # fmt: skip
    assert counts.orphans == 7
