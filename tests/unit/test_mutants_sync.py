"""What a sync records beside the rows: the ticks that order it against writes, its times,
its counts and its progress.

Written for `make mutate`: these survived the sync state-machine tests.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from connector.clock import Clock
from connector.dataverse import Dataverse
from connector.mapping import load_mapping
from connector.settings import Settings
from connector.store import Store
from jobs.context import Context
from tests.unit.test_sync import API, FULL, SHIPPED, ScriptedTransport, deleted, lead, sync_lead

NOW = datetime(2024, 3, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
def transport() -> ScriptedTransport:
    return ScriptedTransport()


@pytest.fixture
def ctx(database_url: str, transport: ScriptedTransport) -> Context:
    mapping = load_mapping(SHIPPED)
    store = Store(database_url, mapping)
    store.prepare()
    dataverse = Dataverse(transport, page_size=2)  # type: ignore[arg-type]
    return Context(
        settings=Settings(), mapping=mapping, store=store, clock=Clock(), dataverse=dataverse
    )


def test_a_completed_read_is_seen_from_the_tick_it_began_at_and_stamped_with_the_clock(
    ctx: Context, transport: ScriptedTransport
) -> None:
    ctx.clock = Clock(NOW)
    with ctx.store.transaction() as conn:
        before = ctx.store.next_tick(conn)
    transport.page(FULL, [lead(1)], delta_link=API + "leads?$deltatoken=10")
    sync_lead(ctx)
    state = ctx.store.load_state("lead")
    assert state.seen_tick == state.read_tick == before + 1
    assert (state.last_sync_at, state.last_full_sync_at) == ("2024-03-02T12:00:00Z",) * 2
    with ctx.store.transaction() as conn:
        ctx.store.next_tick(conn)
    transport.page(API + "leads?$deltatoken=10", [lead(2)], delta_link=API + "leads?$deltatoken=11")
    sync_lead(ctx)
    assert ctx.store.load_state("lead").seen_tick == before + 3


def test_counts_and_progress_add_up_over_pages_with_deletions(
    ctx: Context, transport: ScriptedTransport
) -> None:
    transport.page(FULL, [lead(1), lead(2), lead(3)], delta_link=API + "leads?$deltatoken=10")
    sync_lead(ctx)
    transport.page(
        API + "leads?$deltatoken=10", [lead(4), deleted(1)], next_link=API + "leads?$d=p2"
    )
    transport.page(API + "leads?$d=p2", [deleted(2), deleted(3)], delta_link=API + "l?$d=11")
    seen: list[tuple[str, int]] = []
    ctx.progress = lambda table, read: seen.append((table, read))
    counts = sync_lead(ctx)
    assert (counts.read, counts.deleted, counts.upserted, counts.pages) == (4, 3, 1, 2)
    assert seen == [("sync lead", 2), ("sync lead", 4)]
