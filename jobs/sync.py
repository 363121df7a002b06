"""The sync job: copy each mapped Dataverse table into the local store, incrementally.

Per table: a full read on the first run (asking for change tracking), then delta reads from the
saved `@odata.deltaLink`, or a `modifiedon` watermark (with overlap) where the table has no
change tracking — with a full read every `full_read_every` then, since only a full read sees
deletions. Every page is written together with the cursor that follows it, so a crash or a
stop resumes from the next page and a replayed page only upserts the same rows again. A full
read ends by removing the rows it did not see, which is how deletions made while a delta token
had expired still reach the store. Rows the store cannot hold are reported by id and skipped;
the table goes on. On a table some journey triggers on, an incremental read also records the
real value changes of each page, in the page's transaction (`connector.changes`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from connector.changes import Watch, capture, watches
from connector.clock import parse_stamp, stamp
from connector.dataverse import Dataverse
from connector.errors import BadRequestError, ExpiredDeltaTokenError, SyncError
from connector.mapping import TableMapping
from connector.paging import Page
from connector.store import Reject, SyncState
from jobs.context import Context

log = logging.getLogger("dvconnect.sync")


def sync_lease(table: str) -> str:
    """The lease of a table's sync: two syncs of one table would undo each other's work."""
    return f"sync {table}"


@dataclass
class TableCounts:
    """What one table's sync did in this run."""

    read: int = 0
    upserted: int = 0
    deleted: int = 0
    pages: int = 0
    full: bool = False
    how: str = ""  # the first read's kind (`ReadPlan.kind`); `resyncs`: a full one followed
    resyncs: int = 0
    failed: int = 0  # rows the store could not hold, each in `rejects`
    changes: int = 0  # real value changes recorded for journeys' triggers
    interrupted: bool = False
    rejects: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class ReadPlan:
    """The read a table's sync starts with, derived from its saved state."""

    kind: str  # "full", "periodic-full", "delta", "watermark", "resume-full", "resume-incremental"
    url: str
    track_changes: bool
    state: SyncState


def plan_read(
    dataverse: Dataverse, table: TableMapping, state: SyncState, now: datetime
) -> ReadPlan:
    """Choose where this run reads from: resume, delta link, watermark, or a new full read.

    Saved links that point at another environment (the settings now name another org) are
    not followed: the table is read in full from the configured one. A table followed by
    watermark is read in full again once `full_read_every` has passed since its last full read.
    """
    saved = [link for link in (state.next_link, state.delta_link) if link]
    if any(not dataverse.is_own_link(link) for link in saved):
        log.warning(
            "%s: the saved cursor belongs to another environment; reading in full", table.name
        )
        state = state.start_full()
    if state.next_link is not None:
        tracking = table.change_tracking if state.phase == "full" else state.mode == "delta"
        return ReadPlan(f"resume-{state.phase}", state.next_link, tracking, state)
    if state.phase != "full":
        if state.mode == "delta" and state.delta_link:
            return ReadPlan("delta", state.delta_link, True, replace(state, phase="incremental"))
        if state.mode == "watermark" and state.watermark:
            if _full_read_due(table, state, now):
                url = dataverse.full_read_url(table)
                return ReadPlan("periodic-full", url, table.change_tracking, state.start_full())
            since = _minus_seconds(state.watermark, table.watermark_overlap_seconds)
            url = dataverse.watermark_url(table, since)
            return ReadPlan("watermark", url, False, replace(state, phase="incremental"))
        state = state.start_full()
    return ReadPlan("full", dataverse.full_read_url(table), table.change_tracking, state)


def _full_read_due(table: TableMapping, state: SyncState, now: datetime) -> bool:
    if table.full_read_every is None or state.last_full_sync_at is None:
        return False
    return parse_stamp(state.last_full_sync_at) + table.full_read_every <= now


def sync_table(ctx: Context, table: TableMapping) -> TableCounts:
    """Bring one table of the store up to date with Dataverse (one sync of a table at a time)."""
    with ctx.store.lease(sync_lease(table.name)):
        return _sync_table(ctx, table)


def _sync_table(ctx: Context, table: TableMapping) -> TableCounts:
    dataverse = ctx.online()
    counts = TableCounts()
    while True:
        plan = plan_read(dataverse, table, ctx.store.load_state(table.name), ctx.clock.now())
        counts.full = counts.full or plan.state.phase == "full"
        counts.how = counts.how or plan.kind
        log.info("%s: %s read", table.name, plan.kind,
                 extra={"table": table.name, "read_kind": plan.kind})  # fmt: skip
        try:
            _read(ctx, dataverse, table, plan, counts)
        except BadRequestError as exc:
            if plan.kind in ("full", "periodic-full"):
                raise
            raise SyncError(
                f"{table.name}: Dataverse refused the saved cursor ({exc}); "
                f"`dvconnect state reset {table.name}` makes the next sync read it in full"
            ) from None
        except ExpiredDeltaTokenError:
            if counts.resyncs:  # the full read itself was refused: do not loop
                raise
            log.warning("%s: change-tracking token expired; starting a full resync", table.name)
            with ctx.store.transaction() as conn:
                ctx.store.save_state(conn, ctx.store.load_state(table.name).start_full())
            counts.resyncs += 1
            continue
        return counts


def _read(
    ctx: Context, dataverse: Dataverse, table: TableMapping, plan: ReadPlan, counts: TableCounts
) -> None:
    store = ctx.store
    state = plan.state
    if not plan.kind.startswith("resume"):  # a read that starts now: writes before it are seen
        with store.transaction() as conn:
            state = replace(state, read_tick=store.next_tick(conn))
            store.save_state(conn, state)
    had_rejects = bool(store.rejects(table.name))
    watch = watches(ctx.mapping.journeys.values()).get(table.name)
    pages = dataverse.pages(
        table, plan.url, track_changes=plan.track_changes, lookup_types=bool(table.lookup_types)
    )
    for page in pages:
        try:
            state = _save_page(ctx, table, state, page, page.rows, [], had_rejects, counts, watch)
        except (SQLAlchemyError, ValueError, OverflowError):  # the database refused a value
            good, rejected = store.storable(table.name, page.rows)
            if not rejected:
                raise
            state = _save_page(ctx, table, state, page, good, rejected, True, counts, watch)
            for reject in rejected:
                log.warning("%s %s not stored: %s", table.name, reject.record_id, reject.reason,
                            extra={"table": table.name, "record": reject.record_id})  # fmt: skip
                counts.rejects.append({"record": reject.record_id, "reason": reject.reason})
            counts.failed += len(rejected)
        counts.read += len(page.rows) + len(page.deleted_ids)
        counts.pages += 1
        if ctx.progress is not None:
            ctx.progress(f"sync {table.name}", counts.read)
        if ctx.stop.is_set() and not page.is_last:
            counts.interrupted = True
            log.info("%s: stop requested; the next run resumes from the saved page", table.name)
            return


def _save_page(
    ctx: Context,
    table: TableMapping,
    state: SyncState,
    page: Page,
    rows: list[dict[str, Any]],
    rejected: list[Reject],
    had_rejects: bool,
    counts: TableCounts,
    watch: Watch | None,
) -> SyncState:
    """Write a page's rows and deletions with the state that follows it, in one transaction;
    returns that state. `had_rejects`: rows stored or deleted now are no longer rejected.
    `watch`: what journeys' triggers want captured (incremental reads only)."""
    store = ctx.store
    with store.transaction() as conn:
        if watch is not None and state.phase == "incremental" and rows:
            counts.changes += capture(
                conn, table, store.tables[table.name], watch, rows,
                seen_tick=state.seen_tick, run_id=ctx.run_id, at=ctx.clock.stamp(),
            )  # fmt: skip
        counts.upserted += store.upsert_rows(conn, table.name, rows, state.generation)
        if rejected:
            store.record_rejects(conn, table.name, rejected)
        if had_rejects:
            stored = [str(row.get(table.primary_key)) for row in rows]
            store.forget_rejects(conn, table.name, stored + list(page.deleted_ids))
        counts.deleted += store.delete_rows(conn, table.name, page.deleted_ids)
        state = _after_page(state, page, ctx.clock.stamp())
        if page.is_last and state.phase == "full":
            counts.deleted += store.sweep(conn, table.name, state.generation)
            state = replace(state, last_full_sync_at=ctx.clock.stamp())
        if page.is_last:
            state = replace(
                state, phase="idle", last_sync_at=ctx.clock.stamp(), seen_tick=state.read_tick
            )
        store.save_state(conn, state)
        store.renew_lease(conn, sync_lease(table.name))
    return state


def _after_page(state: SyncState, page: Page, now: str) -> SyncState:
    """The state that follows a page: its next link, and on the last page the new cursor.

    A full read is not ordered by `modifiedon`, so its watermark is when it started (the
    server's time on its first page): rows changed behind its cursor are read again by the
    next run. Only incremental watermark reads, ordered by `modifiedon`, advance it by the rows
    they saw. Whether the table follows change tracking is decided by the last page of the full
    read: a delta link came, or it did not.
    """
    if state.phase == "full":
        started = state.watermark or page.server_time or now
        mode = ("delta" if page.delta_link else "watermark") if page.is_last else state.mode
        return replace(
            state,
            mode=mode,
            next_link=page.next_link,
            delta_link=page.delta_link,
            watermark=started,
        )
    if state.mode == "delta":
        delta_link = page.delta_link or state.delta_link  # no new link: keep the old one (U9)
        return replace(state, next_link=page.next_link, delta_link=delta_link)
    newest = max((str(r["modifiedon"]) for r in page.rows if r.get("modifiedon")), default=None)
    watermark = max(filter(None, (state.watermark, newest)), default=None)
    return replace(state, next_link=page.next_link, watermark=watermark)


def _minus_seconds(moment: str, seconds: int) -> str:
    return stamp(parse_stamp(moment) - timedelta(seconds=seconds))


def run_sync(ctx: Context) -> dict[str, TableCounts]:
    """Sync every mapped table, in mapping order; stops early when asked to."""
    results: dict[str, TableCounts] = {}
    for table in ctx.mapping.tables.values():
        results[table.name] = sync_table(ctx, table)
        if ctx.stop.is_set():
            break
    return results


_PLAN_TEXT = {
    "full": "full read, then remove local rows Dataverse no longer has",
    "periodic-full": "full read (full_read_every has passed), then remove rows Dataverse no "
    "longer has",
    "delta": "changes since the last sync (change tracking)",
    "watermark": "rows modified since {since} (watermark, {overlap} s overlap)",
    "resume-full": "resume the full read from its saved page",
    "resume-incremental": "resume the incremental read from its saved page",
}


def describe_plan(ctx: Context) -> list[dict[str, str]]:
    """What `run sync` would read for each table, without sending anything (the dry run)."""
    plans = []
    for table in ctx.mapping.tables.values():
        plan = plan_read(ctx.online(), table, ctx.store.load_state(table.name), ctx.clock.now())
        text = _PLAN_TEXT[plan.kind].format(
            since=plan.state.watermark, overlap=table.watermark_overlap_seconds
        )
        plans.append({"table": table.name, "read": text})
    return plans
