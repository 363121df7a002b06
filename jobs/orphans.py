"""`link-orphans` and `promote-contacts`: marketing-only contacts for leads that have none.

`link-orphans` reads from the store the leads in the configured states that have no parent
contact, and gives each one a contact:

1. an existing contact found by the match rule (the match key of `connector.keys`: email, or
   email and last name) — when several match, the most recently modified active one, reported;
   an inactive one only when no active one matches (also reported), since a new contact would
   duplicate it;
2. otherwise a new contact, made from the lead by `contact_columns`, with `marketingonly = true`
   and the lead's owner (a user or a team). Its id is deterministic — uuid5 of the match key, or
   of the lead id when the lead has no key — so leads sharing an email share one contact, and a
   retry, a re-run after a crash, or another dvconnect writing to the same org finds the same
   contact instead of creating a second one.

Each decision is recorded in `dvc_orphan_links` together with its writes in the outbox
(`connector.outbox`: the contact's create, then the lead's link), `batch_size` leads at a
time, and the outbox sends them: `CreateMultiple` and `UpdateMultiple` (`write: bulk`), or one
request per record in `$batch`es (`write: batch`). Nothing is written into the synced tables:
until a sync reads them back, leads and contacts in flight are known from the outbox.

`promote-contacts` clears `marketingonly` on contacts linked to a qualified lead (statecode 1).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import groupby
from typing import Any

from sqlalchemy import Select, and_, case, func, select

from connector import tables as dvc
from connector.batch import chunked
from connector.clock import parse_stamp, stamp
from connector.errors import DUPLICATE_RECORDS_FOUND, ConfigError, NotRunError
from connector.keys import match_key
from connector.mapping import MATCH_COLUMNS
from connector.mapping.orphans import LinkOrphans
from connector.odata import literal
from connector.outbox import Intent, Outbox, Outcome, in_flight, pending_by_job, record
from connector.store import key_column
from jobs.context import Context

log = logging.getLogger("dvconnect.orphans")

LINK_JOB = "link-orphans"
PROMOTE_JOB = "promote-contacts"
# dvconnect's own uuid5 namespace: the same lead or email gives the same contact id everywhere.
CONTACT_ID_NAMESPACE = uuid.UUID("5b0f1c3e-7d7a-4f43-9a55-2c6d0e4b8a11")
QUALIFIED = 1
ACTIVE = 0
# Deliberately loose: it catches placeholders ("n/a", "-", "none@") and typing slips, not RFC 5322.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
_SUPPRESS_DUPLICATE_DETECTION = "MSCRM.SuppressDuplicateDetection"


@dataclass(frozen=True)
class NewContact:
    """A contact link-orphans creates: its deterministic id and the columns it writes."""

    contact_id: str
    values: dict[str, Any]
    owner_id: str | None
    owner_type: str | None  # systemuser or team


@dataclass(frozen=True)
class Link:
    """One orphan lead and the contact it gets: matched (`new_contact` None) or new."""

    lead_id: str
    contact_id: str
    new_contact: NewContact | None
    candidates: int  # contacts that matched the lead's key (0 for a new contact)
    key: tuple[str, ...] | None
    active: bool = True  # False: the only contacts that matched are inactive


@dataclass(frozen=True)
class Skip:
    """A lead left alone, and why (by configuration: no email and no name, a value too long)."""

    lead_id: str
    reason: str


@dataclass
class LinkCounts:
    """What one link-orphans run did; `run --json` and the run record show it."""

    orphans: int = 0
    matched: int = 0
    created: int = 0
    linked: int = 0
    skipped: int = 0
    failed: int = 0
    resumed: int = 0  # writes an earlier, interrupted run had recorded, sent by this one
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


def link_intent_key(lead_id: str) -> str:
    return f"{LINK_JOB}/link/{lead_id}"


def contact_intent_key(contact_id: str) -> str:
    return f"{LINK_JOB}/contact/{contact_id}"


def _orphan_query(ctx: Context) -> Select[Any]:
    """Orphan leads with their best matching contact, ordered so that keys are contiguous.

    Leads whose link is in flight (recorded, or sent but not yet read back by a sync) are not
    orphans any more.
    """
    config = ctx.mapping.orphans.link_orphans
    lead, contact = ctx.store.tables["lead"], ctx.store.tables["contact"]
    linking = in_flight(LINK_JOB, "lead", ctx.store.load_state("lead").seen_tick)
    orphan = and_(
        lead.c._parentcontactid_value.is_(None),
        lead.c.statecode.in_(config.lead_states),
        lead.c.leadid.not_in(linking),
    )
    match_columns = MATCH_COLUMNS[config.match]
    lead_keys = [lead.c[key_column(name)].label(f"key_{name}") for name in match_columns]
    columns = {"leadid", "createdon", "_ownerid_value", "owneridtype", "firstname", "lastname",
               "emailaddress1", *config.contact_columns.values()}  # fmt: skip
    picked = [lead.c[name] for name in sorted(columns) if name in lead.c]
    if not match_columns:
        return select(*picked).where(orphan).order_by(lead.c.leadid)
    contact_keys = [contact.c[key_column(name)] for name in match_columns]
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
        .where(contact_keys[0].in_(select(lead_keys[0].element).where(orphan)))
        .subquery()
    )
    joined = lead.outerjoin(
        candidates,
        and_(
            candidates.c.rank == 1,
            *(
                candidates.c[f"key_{name}"] == key.element
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
        .order_by(*(key.element for key in lead_keys), lead.c.createdon, lead.c.leadid)
    )


class _Planner:
    """Turns store rows into links and skips, one group of leads sharing a key at a time."""

    def __init__(self, config: LinkOrphans, lengths: dict[str, int], counts: LinkCounts):
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
                    lead["leadid"], first["match_id"], None, int(first["candidates"]), key, active
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
            yield Link(lead["leadid"], contact_id, new_contact, 0, key)

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
        return NewContact(contact_id, values, lead.get("_ownerid_value"), lead.get("owneridtype"))


# -- writing: links become intents -------------------------------------------------------------


def _intents(ctx: Context, link: Link) -> list[Intent]:
    """The writes of one link: the new contact's create (when new), then the lead's link."""
    lead, contact = ctx.mapping.tables["lead"], ctx.mapping.tables["contact"]
    intents: list[Intent] = []
    new = link.new_contact
    if new is not None:
        body: dict[str, Any] = {**new.values, "marketingonly": True}
        if new.owner_id:
            owners = "teams" if new.owner_type == "team" else "systemusers"
            body["ownerid@odata.bind"] = f"/{owners}({new.owner_id})"
        headers = {}
        if ctx.mapping.orphans.link_orphans.duplicate_detection:
            # Off by default in the Web API: asked for, Dataverse refuses a contact duplicating
            # another one (0x80040333).
            headers[_SUPPRESS_DUPLICATE_DETECTION] = "false"
        intents.append(
            Intent(
                contact_intent_key(new.contact_id), LINK_JOB, "create", contact.name,
                contact.entity_set, contact.primary_key, new.contact_id, body, headers,
            )
        )  # fmt: skip
    intents.append(
        Intent(
            link_intent_key(link.lead_id), LINK_JOB, "update", lead.name, lead.entity_set,
            lead.primary_key, link.lead_id,
            {"parentcontactid@odata.bind": f"/{contact.entity_set}({link.contact_id})"},
            after=contact_intent_key(new.contact_id) if new is not None else None,
        )
    )  # fmt: skip
    return intents


def require_synced(ctx: Context, job: str) -> None:
    """Refuse to work from a store that has never held all of lead and contact.

    Before the first full read of contact completes, a lead's contact may simply not be in the
    store yet: matching would miss it and create a duplicate.
    """
    for table in ("lead", "contact"):
        if ctx.store.load_state(table).last_full_sync_at is None:
            raise NotRunError(
                f"{job} works from the store, and {table} has not been synced in full yet: "
                "run `dvconnect run sync` first"
            )


def _links(ctx: Context, counts: LinkCounts) -> Iterator[Link]:
    """Every link to write, in store order; skips and several matches go to `counts`."""
    require_synced(ctx, LINK_JOB)
    lengths = ctx.online().string_lengths(ctx.mapping.tables["contact"].name)
    planner = _Planner(ctx.mapping.orphans.link_orphans, lengths, counts)
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
    config = ctx.mapping.orphans.link_orphans
    with ctx.store.lease(LINK_JOB):
        outbox = Outbox(ctx.store, ctx.online(), chunk=config.batch_size,
                        bulk=config.write == "bulk")  # fmt: skip
        earlier = outbox.drain(LINK_JOB, ctx.stop.is_set)  # what an interrupted run recorded
        counts.resumed = sum(earlier.done.values())
        failures = list(earlier.failed)
        done = 0
        for chunk in chunked(_links(ctx, counts), config.batch_size):
            if ctx.stop.is_set():
                counts.interrupted = True
                break
            _record_links(ctx, chunk)
            failures += outbox.drain(LINK_JOB, ctx.stop.is_set).failed
            done += len(chunk)
            if ctx.progress is not None:
                ctx.progress("link-orphans: leads", done)
        _tally(ctx, counts, failures)
    return counts


def _record_links(ctx: Context, links: list[Link]) -> None:
    """The links' writes and their record, in one transaction."""
    store = ctx.store
    seen = {table: store.load_state(table).seen_tick for table in ("lead", "contact")}
    now = ctx.clock.stamp()
    with store.transaction() as conn:
        created = set(
            record(
                conn,
                (intent for link in links for intent in _intents(ctx, link)),
                now=now,
                run_id=ctx.run_id,
                renew_seen=seen,
            )
        )
        conn.execute(
            dvc.orphan_links.insert(),
            [
                {
                    "leadid": link.lead_id,
                    "contactid": link.contact_id,
                    "how": "matched"
                    if link.new_contact is None
                    or contact_intent_key(link.contact_id) not in created
                    else "created",
                    "match_key": " / ".join(link.key) if link.key else None,
                    "intent": link_intent_key(link.lead_id),
                    "run_id": ctx.run_id,
                    "at": now,
                }
                for link in links
            ],
        )


def _tally(ctx: Context, counts: LinkCounts, failures: list[Outcome]) -> None:
    """Counts of this run's links from their record, and each failed lead with its reason."""
    links, o = dvc.orphan_links.c, dvc.outbox.c
    with ctx.store.engine.connect() as conn:
        rows = conn.execute(
            select(links.how, o.status, func.count())
            .select_from(dvc.orphan_links.join(dvc.outbox, o.key == links.intent))
            .where(links.run_id == ctx.run_id)
            .group_by(links.how, o.status)
        ).all()
        created = conn.execute(
            select(func.count()).where(
                o.job == LINK_JOB, o.kind == "create", o.run_id == ctx.run_id, o.status == "done"
            )
        ).scalar_one()
    for how, status, count in rows:
        if status == "done":
            counts.linked += count
            counts.matched += count if how == "matched" else 0
    counts.created = int(created)
    by_key = {failure.key: failure for failure in failures}
    for failure in failures:
        if not failure.key.startswith(f"{LINK_JOB}/link/"):
            continue
        cause = by_key.get(failure.after or "") if failure.status == 424 else None
        shown = cause or failure
        message = shown.message
        if shown.status == 404:
            message = (
                f"the lead no longer exists in Dataverse (deleted since the last sync): {message}"
            )
        elif cause is not None:
            message = f"its new contact {cause.record_id} was refused: {message}"
            if cause.code == DUPLICATE_RECORDS_FOUND:
                message += _conflicts(ctx, cause.key)
        counts.failed += 1
        counts.failures.append(
            {"record": failure.record_id, "status": shown.status, "code": shown.code,
             "request_id": shown.request_id, "message": message}
        )  # fmt: skip
        log.warning("lead %s not linked: %s %s", failure.record_id, shown.code, message)


def _conflicts(ctx: Context, contact_key: str) -> str:
    """Which existing contacts share a refused new contact's email (what duplicate detection
    saw), found with a `contains` read narrowed in Python to the same match key."""
    o = dvc.outbox.c
    with ctx.store.engine.connect() as conn:
        body = conn.execute(select(o.body).where(o.key == contact_key)).scalar()
    email = json.loads(body or "{}").get("emailaddress1")
    if not email:
        return ""
    contact = ctx.mapping.tables["contact"]
    found = ctx.online().first_rows(
        contact.entity_set,
        [contact.primary_key, "emailaddress1"],
        f"contains(emailaddress1,{literal(email)})",
        top=20,
    )
    accents = ctx.mapping.accents
    key = match_key(email, accents)
    ids = [str(row[contact.primary_key]) for row in found
           if match_key(row.get("emailaddress1"), accents) == key]  # fmt: skip
    return f"; conflicting contact(s) with the same email: {', '.join(ids)}" if ids else ""


def plan_link_orphans(ctx: Context) -> list[dict[str, Any]]:
    """Every contact link-orphans would create and every link it would make; nothing written."""
    counts = LinkCounts()
    steps: list[dict[str, Any]] = []
    pending = pending_by_job(ctx.store).get(LINK_JOB, 0)
    if pending:
        steps.append(
            {"action": "send first", "writes": pending, "why": "recorded by an interrupted run"}
        )
    for link in _links(ctx, counts):
        for intent in _intents(ctx, link):
            if intent.kind == "create":
                steps.append({"action": "create contact", "contact": intent.record_id,
                              "values": intent.body})  # fmt: skip
            else:
                how = "new" if link.new_contact is not None else "matched"
                steps.append({"action": "link lead", "lead": link.lead_id,
                              "contact": link.contact_id, "how": how})  # fmt: skip
    steps.extend({"action": "skip lead", **skip} for skip in counts.skips)
    return _unique(steps)


def _unique(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Steps in order, each once (leads sharing a new contact plan its create each)."""
    seen: set[str] = set()
    kept = []
    for step in steps:
        marker = repr(sorted(step.items()))
        if marker not in seen:
            seen.add(marker)
            kept.append(step)
    return kept


LINK_COLUMNS = ("at", "leadid", "contactid", "how", "status", "match_key", "run_id")


def orphan_links(ctx: Context, lead: str | None, since: str | None) -> Iterator[dict[str, Any]]:
    """What link-orphans decided for each lead, oldest first, with the outcome of its write."""
    if not ctx.store.exists:
        return
    links, o = dvc.orphan_links.c, dvc.outbox.c
    columns = [o.status if name == "status" else links[name] for name in LINK_COLUMNS]
    query = (
        select(*columns)
        .select_from(dvc.orphan_links.join(dvc.outbox, o.key == links.intent))
        .order_by(links.link_id)
    )
    if lead is not None:
        query = query.where(links.leadid == lead.strip().strip("{}").lower())
    if since is not None:
        try:
            moment = stamp(parse_stamp(since))
        except ValueError:
            raise ConfigError(f"--since: not an ISO-8601 time: {since!r}") from None
        query = query.where(links.at >= moment)
    yield from ctx.store.stream(query)


# -- promote-contacts --------------------------------------------------------------------------


def _promotion_query(ctx: Context) -> Select[Any]:
    """Marketing-only contacts linked to at least one qualified lead, not being promoted."""
    lead, contact = ctx.store.tables["lead"], ctx.store.tables["contact"]
    qualified_parents = select(lead.c._parentcontactid_value).where(lead.c.statecode == QUALIFIED)
    promoting = in_flight(PROMOTE_JOB, "contact", ctx.store.load_state("contact").seen_tick)
    return (
        select(contact.c.contactid)
        .where(
            contact.c.marketingonly.is_(True),
            contact.c.contactid.in_(qualified_parents),
            contact.c.contactid.not_in(promoting),
        )
        .order_by(contact.c.contactid)
    )


def _promotion(ctx: Context, contact_id: str) -> Intent:
    contact = ctx.mapping.tables["contact"]
    return Intent(
        f"{PROMOTE_JOB}/{contact_id}", PROMOTE_JOB, "update", contact.name, contact.entity_set,
        contact.primary_key, contact_id, {"marketingonly": False},
    )  # fmt: skip


def run_promote_contacts(ctx: Context) -> PromoteCounts:
    """Clear `marketingonly` on contacts whose lead was qualified (when enabled)."""
    counts = PromoteCounts(enabled=ctx.mapping.orphans.promote_contacts.enabled)
    if not counts.enabled:
        return counts
    require_synced(ctx, PROMOTE_JOB)
    config = ctx.mapping.orphans.link_orphans
    with ctx.store.lease(PROMOTE_JOB):
        outbox = Outbox(ctx.store, ctx.online(), chunk=config.batch_size,
                        bulk=config.write == "bulk")  # fmt: skip
        results = [outbox.drain(PROMOTE_JOB, ctx.stop.is_set)]
        ids = (row["contactid"] for row in ctx.store.stream(_promotion_query(ctx)))
        seen = {"contact": ctx.store.load_state("contact").seen_tick}
        for chunk in chunked(ids, config.batch_size):
            if ctx.stop.is_set():
                counts.interrupted = True
                break
            counts.qualified += len(chunk)
            with ctx.store.transaction() as conn:
                record(conn, [_promotion(ctx, i) for i in chunk], now=ctx.clock.stamp(),
                       run_id=ctx.run_id, renew_seen=seen)  # fmt: skip
            results.append(outbox.drain(PROMOTE_JOB, ctx.stop.is_set))
    for result in results:
        counts.promoted += result.done["update"]
        for failure in result.failed:
            counts.failed += 1
            counts.failures.append(
                {"record": failure.record_id, "status": failure.status, "code": failure.code,
                 "request_id": failure.request_id, "message": failure.message}
            )  # fmt: skip
            log.warning("contact %s not promoted: %s %s", failure.record_id, failure.code,
                        failure.message)  # fmt: skip
    return counts


def plan_promote_contacts(ctx: Context) -> list[dict[str, Any]]:
    """Every contact whose marketing-only flag promote-contacts would clear."""
    if not ctx.mapping.orphans.promote_contacts.enabled:
        return []
    require_synced(ctx, PROMOTE_JOB)
    return [
        {"action": "clear marketingonly", "contact": row["contactid"]}
        for row in ctx.store.stream(_promotion_query(ctx))
    ]
