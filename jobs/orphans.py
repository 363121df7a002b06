"""`link-orphans` and `promote-contacts`: marketing-only contacts for leads that have none.

`link-orphans` reads from the store the leads in the configured states that have no parent
contact, and gives each one a contact:

1. an existing contact found by the match rule (normalised email: trimmed, lower case; or email
   and last name) — when several match, the most recently modified active one, reported; an
   inactive one only when no active one matches (also reported), since a new contact would
   duplicate it;
2. otherwise a new contact, made from the lead by `contact_columns`, with `marketingonly = true`
   and the lead's owner. Its id is deterministic — uuid5 of the match key, or of the lead id when
   the lead has no key — so leads sharing an email share one contact, and a retry after a lost
   response, a re-run after a crash, or another dvconnect writing to the same org upserts the
   same contact instead of creating a second one.

Writes go `batch_size` leads at a time: new contacts with one `UpsertMultiple`, links with one
`UpdateMultiple` (`write: bulk`), or one `$batch` change set per lead — upsert the contact,
then link the lead through `$1` (`write: batch`). A bulk request is all-or-nothing, so when one
fails because of a record, its leads are written again as change sets and each lead gets its own
outcome. What succeeded is written to the store at once, so a re-run before the next sync does
not repeat it.

`promote-contacts` clears `marketingonly` on contacts linked to a qualified lead (statecode 1).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import groupby
from typing import Any

from sqlalchemy import Select, and_, case, func, select

from connector.batch import MAX_OPERATIONS, ChangeSet, Operation, Part, chunked, operation_count
from connector.dataverse import Dataverse
from connector.errors import DataverseError, SyncError, ThrottledError
from connector.mapping import MATCH_COLUMNS, OrphansMapping, TableMapping
from connector.odata import entity_path, literal
from jobs.context import Context

log = logging.getLogger("dvconnect.orphans")

# dvconnect's own uuid5 namespace: the same lead or email gives the same contact id everywhere.
CONTACT_ID_NAMESPACE = uuid.UUID("5b0f1c3e-7d7a-4f43-9a55-2c6d0e4b8a11")
QUALIFIED = 1
ACTIVE = 0
LINK_LEASE = "link-orphans"
PROMOTE_LEASE = "promote-contacts"
# Deliberately loose: it catches placeholders ("n/a", "-", "none@") and typing slips, not RFC 5322.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
_SUPPRESS_DUPLICATE_DETECTION = "MSCRM.SuppressDuplicateDetection"


@dataclass(frozen=True)
class NewContact:
    """A contact link-orphans creates: its deterministic id and the columns it writes."""

    contact_id: str
    values: dict[str, Any]
    owner_id: str | None


@dataclass(frozen=True)
class Link:
    """One orphan lead and the contact it gets: matched (`new_contact` None) or new."""

    lead_id: str
    contact_id: str
    new_contact: NewContact | None
    candidates: int  # contacts that matched the lead's key (0 for a new contact)
    active: bool = True  # False: the only contacts that matched are inactive


@dataclass(frozen=True)
class Skip:
    """A lead left alone, and why (by configuration: no email and no name, a value too long)."""

    lead_id: str
    reason: str


@dataclass(frozen=True)
class Failure:
    """A record Dataverse refused: the record's id, the error code and the request id."""

    record: str
    status: int
    code: str
    request_id: str
    message: str


@dataclass
class LinkCounts:
    """What one link-orphans run did; `run --json` and the run record show it."""

    orphans: int = 0
    matched: int = 0
    created: int = 0
    linked: int = 0
    skipped: int = 0
    failed: int = 0
    truncated: int = 0
    invalid_emails: int = 0
    interrupted: bool = False
    several_matches: list[dict[str, Any]] = field(default_factory=list)
    inactive_matches: list[dict[str, str]] = field(default_factory=list)
    skips: list[dict[str, str]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class PromoteCounts:
    """What one promote-contacts run did."""

    qualified: int = 0
    promoted: int = 0
    failed: int = 0
    enabled: bool = True
    interrupted: bool = False
    failures: list[dict[str, Any]] = field(default_factory=list)


# -- planning: from the store to links ---------------------------------------------------------


def contact_id_for(match: str, key: Sequence[str] | None, lead_id: str) -> str:
    """The deterministic id of the contact made for a match key, or for one lead without key."""
    name = f"contact/{match}/{'/'.join(key)}" if key else f"contact/lead/{lead_id.lower()}"
    return str(uuid.uuid5(CONTACT_ID_NAMESPACE, name))


def _normal(column: Any) -> Any:
    """The SQL normal form of a matched text column: spaces trimmed, lower case."""
    return func.lower(func.trim(column))


def _orphan_query(ctx: Context) -> Select[Any]:
    """Orphan leads with their best matching contact, ordered so that keys are contiguous."""
    config = ctx.mapping.orphans
    lead, contact = ctx.store.tables["lead"], ctx.store.tables["contact"]
    orphan = and_(lead.c._parentcontactid_value.is_(None), lead.c.statecode.in_(config.lead_states))
    match_columns = MATCH_COLUMNS[config.match]
    lead_keys = [_normal(lead.c[name]).label(f"key_{name}") for name in match_columns]
    columns = {"leadid", "createdon", "_ownerid_value", "firstname", "lastname", "emailaddress1"}
    columns |= set(config.contact_columns.values())
    picked = [lead.c[name] for name in sorted(columns) if name in lead.c]
    if not match_columns:
        return select(*picked).where(orphan).order_by(lead.c.leadid)
    contact_keys = [_normal(contact.c[name]) for name in match_columns]
    inactive_last = case((contact.c.statecode == ACTIVE, 0), else_=1)
    candidates = (
        select(
            contact.c.contactid,
            contact.c.statecode,
            *(
                key.label(f"key_{name}")
                for key, name in zip(contact_keys, match_columns, strict=True)
            ),
            func.count().over(partition_by=contact_keys).label("candidates"),
            func.row_number()
            .over(
                partition_by=contact_keys,
                order_by=(inactive_last, contact.c.modifiedon.desc(), contact.c.contactid),
            )
            .label("rank"),
        )
        .where(contact_keys[0].in_(select(_normal(lead.c[match_columns[0]])).where(orphan)))
        .subquery()
    )
    joined = lead.outerjoin(
        candidates,
        and_(
            candidates.c.rank == 1,
            *(
                candidates.c[f"key_{name}"] == key
                for name, key in zip(match_columns, lead_keys, strict=True)
            ),
        ),
    )
    return (
        select(
            *picked,
            *lead_keys,
            candidates.c.contactid.label("match_id"),
            candidates.c.statecode.label("match_state"),
            candidates.c.candidates,
        )
        .select_from(joined)
        .where(orphan)
        .order_by(*lead_keys, lead.c.createdon, lead.c.leadid)
    )


class _Planner:
    """Turns store rows into links and skips, one group of leads sharing a key at a time."""

    def __init__(self, config: OrphansMapping, lengths: dict[str, int], counts: LinkCounts):
        self.config = config
        self.lengths = lengths
        self.counts = counts

    def key(self, row: dict[str, Any]) -> tuple[str, ...] | None:
        """The lead's match key, or None when it has none (no rule, missing or invalid email)."""
        names = MATCH_COLUMNS[self.config.match]
        key = tuple(row[f"key_{name}"] for name in names)
        if not key or any(not part for part in key) or not _EMAIL.match(key[0]):
            return None
        return key

    def plan(self, rows: Iterable[dict[str, Any]]) -> Iterator[Link | Skip]:
        def group_of(row: dict[str, Any]) -> tuple[str, ...]:
            return self.key(row) or ("lead", row["leadid"])

        for _, group in groupby(rows, key=group_of):
            leads = list(group)
            self.counts.orphans += len(leads)
            yield from self._group(self.key(leads[0]), leads)

    def _group(
        self, key: tuple[str, ...] | None, leads: list[dict[str, Any]]
    ) -> Iterator[Link | Skip]:
        first = leads[0]
        if key is not None and first.get("match_id"):
            active = first["match_state"] == ACTIVE
            for lead in leads:
                yield Link(
                    lead["leadid"], first["match_id"], None, int(first["candidates"]), active
                )
            return
        contact_id = contact_id_for(self.config.match, key, first["leadid"])
        new_contact: NewContact | None = None
        for lead in leads:
            if new_contact is None:
                made = self._contact(contact_id, lead)
                if isinstance(made, str):
                    yield Skip(lead["leadid"], made)
                    continue
                new_contact = made
            yield Link(lead["leadid"], contact_id, new_contact, 0)

    def _contact(self, contact_id: str, lead: dict[str, Any]) -> NewContact | str:
        """The contact made from `lead`, or the reason it cannot be made (the lead is skipped)."""
        values: dict[str, Any] = {}
        for contact_column, lead_column in self.config.contact_columns.items():
            value = lead.get(lead_column)
            if isinstance(value, str):
                value = value.strip()
            if value is None or value == "":
                continue
            if contact_column == "emailaddress1" and not _EMAIL.match(value):
                self.counts.invalid_emails += 1
                continue
            limit = self.lengths.get(contact_column)
            if isinstance(value, str) and limit is not None and len(value) > limit:
                if self.config.too_long == "reject":
                    return (
                        f"{lead_column} has {len(value)} characters; "
                        f"contact.{contact_column} allows {limit} (too_long: reject)"
                    )
                self.counts.truncated += 1
                value = value[:limit]
            values[contact_column] = value
        has_email = bool(values.get("emailaddress1"))
        has_name = bool(values.get("firstname") or values.get("lastname"))
        if not (has_email or has_name) and self.config.leads_without_email_or_name == "skip":
            return "no valid email and no name (leads_without_email_or_name: skip)"
        return NewContact(contact_id, values, lead.get("_ownerid_value"))


# -- writing: links to Dataverse and the store -------------------------------------------------


class _LinkWriter:
    """Writes links `batch_size` leads at a time and records each outcome in the store."""

    def __init__(self, ctx: Context, counts: LinkCounts) -> None:
        self.ctx = ctx
        self.dataverse = ctx.online()
        self.config = ctx.mapping.orphans
        self.lead = ctx.mapping.tables["lead"]
        self.contact = ctx.mapping.tables["contact"]
        self.counts = counts
        self.created: set[str] = set()

    def contact_fields(self, new: NewContact) -> dict[str, Any]:
        fields = {**new.values, "marketingonly": True}
        if new.owner_id:
            fields["ownerid@odata.bind"] = f"/systemusers({new.owner_id})"
        return fields

    def contact_headers(self) -> dict[str, str]:
        # Off by default in the Web API: asked for, Dataverse refuses a contact duplicating another.
        return {_SUPPRESS_DUPLICATE_DETECTION: "false"} if self.config.duplicate_detection else {}

    def write(self, links: list[Link]) -> None:
        if self.config.write == "bulk":
            try:
                self._bulk(links)
            except DataverseError as exc:
                if not _record_level(exc):
                    raise
                log.warning(
                    "a bulk write of %d leads failed (%s): writing them one change set each",
                    len(links),
                    exc,
                )
            else:
                self._done(links, {})
                return
        by_lead = {link.lead_id: link for link in links}
        parts: list[tuple[str, Part]] = [(link.lead_id, self._change_set(link)) for link in links]
        errors = _one_by_one(self.dataverse, parts)
        failures = {lead: self._failure(by_lead[lead], error) for lead, error in errors.items()}
        self._done(links, failures)

    def _bulk(self, links: list[Link]) -> None:
        contacts = {link.contact_id: link.new_contact for link in links if link.new_contact}
        if contacts:
            self.dataverse.bulk(
                self.contact,
                "UpsertMultiple",
                [
                    {self.contact.primary_key: contact_id, **self.contact_fields(new)}
                    for contact_id, new in contacts.items()
                ],
                headers=self.contact_headers(),
            )
        self.dataverse.bulk(
            self.lead,
            "UpdateMultiple",
            [
                {
                    self.lead.primary_key: link.lead_id,
                    "parentcontactid@odata.bind": f"/{self.contact.entity_set}({link.contact_id})",
                }
                for link in links
            ],
        )

    def _change_set(self, link: Link) -> ChangeSet:
        """Upsert the new contact (Content-ID 1), then link the lead to `$1`; or link only."""
        link_to = f"/{self.contact.entity_set}({link.contact_id})"
        operations = []
        if link.new_contact is not None:
            operations.append(
                Operation(
                    "PATCH",
                    entity_path(self.contact.entity_set, link.contact_id),
                    self.contact_fields(link.new_contact),
                    headers=tuple(self.contact_headers().items()),
                    content_id="1",
                )
            )
            link_to = "$1"
        operations.append(
            Operation(
                "PATCH",
                entity_path(self.lead.entity_set, link.lead_id),
                {"parentcontactid@odata.bind": link_to},
                headers=(("If-Match", "*"),),  # update only: a deleted lead is not re-created
                content_id=str(len(operations) + 1),
            )
        )
        return ChangeSet(tuple(operations))

    def _failure(self, link: Link, error: DataverseError) -> Failure:
        message = error.message
        if error.status == 404 and link.lead_id.lower() in message.lower():
            message = (
                f"the lead no longer exists in Dataverse (deleted since the last sync): {message}"
            )
        elif error.code == "0x80040333" and link.new_contact is not None:
            message += self._conflicts(link.new_contact)
        return Failure(link.lead_id, error.status, error.code, error.request_id, message)

    def _conflicts(self, new: NewContact) -> str:
        """Which existing contacts share the new contact's email (what duplicate detection saw)."""
        email = new.values.get("emailaddress1")
        if not email:
            return ""
        found = self.dataverse.first_rows(
            self.contact.entity_set,
            [self.contact.primary_key, "emailaddress1"],
            f"contains(emailaddress1,{literal(email)})",
            top=20,
        )
        key = email.strip().lower()
        ids = [
            str(row[self.contact.primary_key])
            for row in found
            if str(row.get("emailaddress1") or "").strip().lower() == key
        ]
        return f"; conflicting contact(s) with the same email: {', '.join(ids)}" if ids else ""

    def _done(self, links: list[Link], failures: dict[str, Failure]) -> None:
        """Count the outcomes and record what succeeded in the store."""
        succeeded = [link for link in links if link.lead_id not in failures]
        new_rows = {}
        for link in succeeded:
            if link.new_contact is None:
                self.counts.matched += 1
            elif link.contact_id not in self.created:
                self.created.add(link.contact_id)
                new_rows[link.contact_id] = link.new_contact
        self.counts.created = len(self.created)
        self.counts.linked += len(succeeded)
        for failure in failures.values():
            self.counts.failed += 1
            self.counts.failures.append(asdict(failure))
            log.warning("lead %s not linked: %s %s", failure.record, failure.code, failure.message)
        store = self.ctx.store
        generation = store.load_state("contact").generation
        with store.transaction() as conn:
            store.upsert_rows(
                conn,
                "contact",
                [self._contact_row(contact_id, new) for contact_id, new in new_rows.items()],
                generation,
            )
            store.set_column(
                conn,
                "lead",
                "_parentcontactid_value",
                [(link.lead_id, link.contact_id) for link in succeeded],
            )

    def _contact_row(self, contact_id: str, new: NewContact) -> dict[str, Any]:
        row = {c: new.values.get(c) for c in self.contact.columns}
        return {
            **row,
            self.contact.primary_key: contact_id,
            "marketingonly": True,
            "statecode": ACTIVE,
            "_ownerid_value": new.owner_id,
        }


def _record_level(exc: DataverseError) -> bool:
    """A refusal caused by some record of a request (not auth, throttling or an outage)."""
    return exc.exit_code == 1 and not isinstance(exc, ThrottledError)


def _one_by_one(dataverse: Dataverse, parts: list[tuple[str, Part]]) -> dict[str, DataverseError]:
    """Send keyed parts in `$batch`es of at most MAX_OPERATIONS operations, continuing on error;
    returns the error of each part that failed, by key."""
    errors: dict[str, DataverseError] = {}

    def send(chunk: list[tuple[str, Part]]) -> None:
        outcomes = dataverse.batch([part for _, part in chunk], safe=True)
        for (key, _), outcome in zip(chunk, outcomes, strict=True):
            if outcome.error is not None:
                errors[key] = outcome.error

    chunk: list[tuple[str, Part]] = []
    used = 0
    for key, part in parts:
        cost = operation_count([part])
        if chunk and used + cost > MAX_OPERATIONS:
            send(chunk)
            chunk, used = [], 0
        chunk.append((key, part))
        used += cost
    if chunk:
        send(chunk)
    return errors


# -- the jobs ----------------------------------------------------------------------------------


def require_synced(ctx: Context, job: str) -> None:
    """Refuse to work from a store that has never held all of lead and contact.

    Before the first full read of contact completes, a lead's contact may simply not be in the
    store yet: matching would miss it and create a duplicate.
    """
    for table in ("lead", "contact"):
        if ctx.store.load_state(table).last_full_sync_at is None:
            raise SyncError(
                f"{job} works from the store, and {table} has not been synced in full yet: "
                "run `dvconnect run sync` first"
            )


def _planner(ctx: Context, counts: LinkCounts) -> _Planner:
    require_synced(ctx, "link-orphans")
    lengths = ctx.online().string_lengths(ctx.mapping.tables["contact"].name)
    return _Planner(ctx.mapping.orphans, lengths, counts)


def _links(ctx: Context, counts: LinkCounts) -> Iterator[Link]:
    """Every link to write, in store order; skips and several matches go to `counts`."""
    planner = _planner(ctx, counts)
    for item in planner.plan(ctx.store.stream(_orphan_query(ctx))):
        if isinstance(item, Skip):
            counts.skipped += 1
            counts.skips.append(asdict(item))
            continue
        if item.candidates > 1:
            counts.several_matches.append(
                {"lead": item.lead_id, "contact": item.contact_id, "candidates": item.candidates}
            )
        if not item.active:
            counts.inactive_matches.append({"lead": item.lead_id, "contact": item.contact_id})
        yield item


def run_link_orphans(ctx: Context) -> LinkCounts:
    """Give every orphan lead a contact, matched or new, `batch_size` leads per request."""
    counts = LinkCounts()
    with ctx.store.lease(LINK_LEASE):
        writer = _LinkWriter(ctx, counts)
        for chunk in chunked(_links(ctx, counts), ctx.mapping.orphans.batch_size):
            if ctx.stop.is_set():
                counts.interrupted = True
                break
            writer.write(chunk)
    return counts


def plan_link_orphans(ctx: Context) -> list[dict[str, Any]]:
    """Every contact link-orphans would create and every link it would make; nothing written."""
    counts = LinkCounts()
    steps: list[dict[str, Any]] = []
    planned: set[str] = set()
    for link in _links(ctx, counts):
        new = link.new_contact
        if new is not None and link.contact_id not in planned:
            planned.add(link.contact_id)
            steps.append(
                {
                    "action": "create contact",
                    "contact": link.contact_id,
                    "values": {**new.values, "marketingonly": True},
                    "owner": new.owner_id,
                }
            )
        steps.append(
            {
                "action": "link lead",
                "lead": link.lead_id,
                "contact": link.contact_id,
                "how": "new" if new is not None else "matched",
            }
        )
    steps.extend({"action": "skip lead", **skip} for skip in counts.skips)
    return steps


def _promotion_query(ctx: Context) -> Select[Any]:
    """Marketing-only contacts linked to at least one qualified lead."""
    lead, contact = ctx.store.tables["lead"], ctx.store.tables["contact"]
    qualified_parents = select(lead.c._parentcontactid_value).where(lead.c.statecode == QUALIFIED)
    return (
        select(contact.c.contactid)
        .where(contact.c.marketingonly.is_(True), contact.c.contactid.in_(qualified_parents))
        .order_by(contact.c.contactid)
    )


def run_promote_contacts(ctx: Context) -> PromoteCounts:
    """Clear `marketingonly` on contacts whose lead was qualified (when enabled)."""
    counts = PromoteCounts(enabled=ctx.mapping.orphans.promote_contacts)
    if not counts.enabled:
        return counts
    require_synced(ctx, "promote-contacts")
    contact = ctx.mapping.tables["contact"]
    dataverse = ctx.online()
    with ctx.store.lease(PROMOTE_LEASE):
        ids = (row["contactid"] for row in ctx.store.stream(_promotion_query(ctx)))
        for chunk in chunked(ids, ctx.mapping.orphans.batch_size):
            if ctx.stop.is_set():
                counts.interrupted = True
                break
            counts.qualified += len(chunk)
            failures = _promote(dataverse, contact, chunk)
            for failure in failures.values():
                counts.failures.append(asdict(failure))
                log.warning("contact %s not promoted: %s %s", failure.record, failure.code,
                            failure.message)  # fmt: skip
            done = [contact_id for contact_id in chunk if contact_id not in failures]
            counts.promoted += len(done)
            counts.failed += len(failures)
            with ctx.store.transaction() as conn:
                ctx.store.set_column(conn, "contact", "marketingonly", [(i, False) for i in done])
    return counts


def _promote(dataverse: Dataverse, contact: TableMapping, ids: list[str]) -> dict[str, Failure]:
    """UpdateMultiple; when a record fails it, one PATCH per contact in a $batch instead."""
    try:
        dataverse.bulk(
            contact,
            "UpdateMultiple",
            [{contact.primary_key: contact_id, "marketingonly": False} for contact_id in ids],
        )
    except DataverseError as exc:
        if not _record_level(exc):
            raise
        log.warning("a bulk update of %d contacts failed (%s): one by one", len(ids), exc)
    else:
        return {}
    parts = [
        Operation(
            "PATCH",
            entity_path(contact.entity_set, contact_id),
            {"marketingonly": False},
            headers=(("If-Match", "*"),),
        )
        for contact_id in ids
    ]
    errors = _one_by_one(dataverse, list(zip(ids, parts, strict=True)))
    return {
        contact_id: Failure(contact_id, error.status, error.code, error.request_id, error.message)
        for contact_id, error in errors.items()
    }


def plan_promote_contacts(ctx: Context) -> list[dict[str, Any]]:
    """Every contact whose marketing-only flag promote-contacts would clear."""
    if not ctx.mapping.orphans.promote_contacts:
        return []
    require_synced(ctx, "promote-contacts")
    return [
        {"action": "clear marketingonly", "contact": row["contactid"]}
        for row in ctx.store.stream(_promotion_query(ctx))
    ]
