"""`orphans.yaml`: how `link-orphans` gives orphan leads a contact; whether promotion runs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from connector.keys import Accents
from connector.mapping.document import Document, Strict
from connector.mapping.tables import LOGICAL_NAME, TableMapping

MatchRule = Literal["email", "email_and_lastname", "none"]
# What link-orphans reads from the store: the columns it needs on each table.
ORPHAN_LEAD_COLUMNS = ("leadid", "statecode", "_parentcontactid_value", "_ownerid_value",
                       "owneridtype", "createdon")  # fmt: skip
ORPHAN_CONTACT_COLUMNS = ("contactid", "statecode", "marketingonly", "modifiedon")
MATCH_COLUMNS: dict[MatchRule, tuple[str, ...]] = {
    "email": ("emailaddress1",),
    "email_and_lastname": ("emailaddress1", "lastname"),
    "none": (),
}
SET_BY_LINK_ORPHANS = ("contactid", "marketingonly", "ownerid", "statecode", "statuscode")


class LinkOrphans(Strict):
    """How orphan leads are matched to contacts, and how new contacts are made and written."""

    lead_states: list[Literal[0, 1, 2]] = Field(default=[0], min_length=1, max_length=3)
    match: MatchRule = "email"
    accents: Accents = "ignore"
    leads_without_email_or_name: Literal["create", "skip"] = "create"
    too_long: Literal["truncate", "reject"] = "truncate"
    duplicate_detection: bool = True
    write: Literal["bulk", "batch"] = "bulk"
    batch_size: int = Field(default=1000, ge=1, le=1000)
    contact_columns: dict[str, str]  # contact column: the lead column it is copied from


class PromoteContacts(Strict):
    enabled: bool = True


class Orphans(Strict):
    link_orphans: LinkOrphans
    promote_contacts: PromoteContacts = PromoteContacts()


def load_orphans(document: Document, tables: dict[str, TableMapping]) -> Orphans:
    """The orphans configuration, checked against what tables.yaml syncs of lead and contact."""
    orphans = document.parse(Orphans)
    link = orphans.link_orphans
    needs = {
        "lead": (*ORPHAN_LEAD_COLUMNS, *MATCH_COLUMNS[link.match]),
        "contact": (*ORPHAN_CONTACT_COLUMNS, *MATCH_COLUMNS[link.match]),
    }
    for table, columns in needs.items():
        synced = tables[table].columns if table in tables else {}
        missing = [c for c in columns if c not in synced]
        if missing:
            raise document.error(
                ("link_orphans",),
                f"needs tables.yaml to sync {table} column(s) {', '.join(missing)}",
            )
    lead_columns = tables["lead"].columns
    for contact_column, lead_column in link.contact_columns.items():
        where = ("link_orphans", "contact_columns", contact_column)
        if not LOGICAL_NAME.match(contact_column) or contact_column.startswith("_"):
            raise document.error(where, "a contact column's logical name")
        if contact_column in SET_BY_LINK_ORPHANS:
            raise document.error(where, "set by link-orphans itself; remove it")
        if lead_column not in lead_columns or lead_columns[lead_column] == "lookuptype":
            raise document.error(where, f"lead column {lead_column!r} is not synced (tables.yaml)")
    return orphans
