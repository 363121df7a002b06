"""The sync job: copy each mapped Dataverse table into the local store, incrementally.

Per table: a full read on the first run (asking for change tracking), then delta reads from the
saved `@odata.deltaLink`, or a `modifiedon` watermark (with overlap) where the table has no
change tracking. Every page is written together with the cursor that follows it, so a crash or a
stop resumes from the next page and a replayed page only upserts the same rows again. A full
read ends by removing the rows it did not see, which is how deletions made while a delta token
had expired still reach the store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from connector.dataverse import Dataverse
from connector.errors import BadRequestError, ExpiredDeltaTokenError, SyncError
from connector.mapping import TableMapping
from connector.paging import Page
from connector.store import SyncState, utc_now
from jobs.context import Context

log = logging.getLogger("dvconnect.sync")

_ISO = "%Y-%m-%dT%H:%M:%SZ"


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
    resyncs: int = 0
    interrupted: bool = False


@dataclass(frozen=True)
class ReadPlan:
    """The read a table's sync starts with, derived from its saved state."""

    kind: str  # "full", "delta", "watermark", "resume-full" or "resume-incremental"
    url: str
    track_changes: bool
    state: SyncState


def plan_read(dataverse: Dataverse, table: TableMapping, state: SyncState) -> ReadPlan:
    """Choose where this run reads from: resume, delta link, watermark, or a new full read.

    Saved links that point at another environment (the settings now name another org) are
    not followed: the table is read in full from the configured one.
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
            since = _minus_seconds(state.watermark, table.watermark_overlap_seconds)
            url = dataverse.watermark_url(table, since)
            return ReadPlan("watermark", url, False, replace(state, phase="incremental"))
        state = state.start_full()
    return ReadPlan("full", dataverse.full_read_url(table), table.change_tracking, state)


def sync_table(ctx: Context, table: TableMapping) -> TableCounts:
    """Bring one table of the store up to date with Dataverse (one sync of a table at a time)."""
    with ctx.store.lease(sync_lease(table.name)):
        return _sync_table(ctx, table)


def _sync_table(ctx: Context, table: TableMapping) -> TableCounts:
    dataverse = ctx.online()
    counts = TableCounts()
    while True:
        plan = plan_read(dataverse, table, ctx.store.load_state(table.name))
        counts.full = counts.full or plan.state.phase == "full"
        log.info("%s: %s read", table.name, plan.kind)
        try:
            _read(ctx, dataverse, table, plan, counts)
        except BadRequestError as exc:
            if plan.kind == "full":
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
    state = plan.state
    for page in dataverse.pages(table, plan.url, track_changes=plan.track_changes):
        with ctx.store.transaction() as conn:
            counts.upserted += ctx.store.upsert_rows(conn, table.name, page.rows, state.generation)
            counts.deleted += ctx.store.delete_rows(conn, table.name, page.deleted_ids)
            state = _after_page(state, page)
            if page.is_last and state.phase == "full":
                counts.deleted += ctx.store.sweep(conn, table.name, state.generation)
                state = replace(state, last_full_sync_at=utc_now())
            if page.is_last:
                state = replace(state, phase="idle", last_sync_at=utc_now())
            ctx.store.save_state(conn, state)
            ctx.store.renew_lease(conn, sync_lease(table.name))
        counts.read += len(page.rows) + len(page.deleted_ids)
        counts.pages += 1
        if ctx.progress is not None:
            ctx.progress(table.name, counts.read)
        if ctx.stop.is_set() and not page.is_last:
            counts.interrupted = True
            log.info("%s: stop requested; the next run resumes from the saved page", table.name)
            return


def _after_page(state: SyncState, page: Page) -> SyncState:
    """The state that follows a page: its next link, and on the last page the new cursor.

    A full read is not ordered by `modifiedon`, so its watermark is when it started (the
    server's time on its first page): rows changed behind its cursor are read again by the
    next run. Only incremental watermark reads, ordered by `modifiedon`, advance it by the rows
    they saw. Whether the table follows change tracking is decided by the last page of the full
    read: a delta link came, or it did not.
    """
    if state.phase == "full":
        started = state.watermark or page.server_time or utc_now()
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


def _minus_seconds(stamp: str, seconds: int) -> str:
    moment = datetime.fromisoformat(stamp) - timedelta(seconds=seconds)
    return moment.astimezone(UTC).strftime(_ISO)


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
    "delta": "changes since the last sync (change tracking)",
    "watermark": "rows modified since {since} (watermark, {overlap} s overlap)",
    "resume-full": "resume the full read from its saved page",
    "resume-incremental": "resume the incremental read from its saved page",
}


def describe_plan(ctx: Context) -> list[dict[str, str]]:
    """What `run sync` would read for each table, without sending anything (the dry run)."""
    plans = []
    for table in ctx.mapping.tables.values():
        plan = plan_read(ctx.online(), table, ctx.store.load_state(table.name))
        text = _PLAN_TEXT[plan.kind].format(
            since=plan.state.watermark, overlap=table.watermark_overlap_seconds
        )
        plans.append({"table": table.name, "read": text})
    return plans
