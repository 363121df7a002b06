"""Several instances on one PostgreSQL store: advisory locks decide who runs, and a holder's
locks end with its session (a process killed, a host gone), never by a clock."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text

from connector import tables as dvc
from connector.clock import Clock
from connector.errors import NotRunError
from connector.mapping import load_mapping
from connector.settings import Settings
from connector.store import Store
from jobs import scheduler
from jobs.context import Context
from tests.paths import MAPPINGS
from tests.postgres_server import PostgresServer

pytestmark = pytest.mark.postgres


@pytest.fixture
def url(postgres: PostgresServer, request: pytest.FixtureRequest) -> str:
    return postgres.create_database(f"instances_{request.node.name[5:40].lower()}")


def instance(url: str) -> Store:
    """A Store of its own: what another `dvconnect` process (or host) has."""
    store = Store(url, load_mapping(MAPPINGS))
    store.prepare()
    return store


def _terminate_other_sessions(store: Store) -> None:
    """What the server does when a holder's process is killed or its host vanishes."""
    with store.engine.connect() as conn:
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    store.engine.dispose()


def test_a_lease_held_by_another_instance_is_refused_with_its_pid_and_host(url: str) -> None:
    first, second = instance(url), instance(url)
    with (
        first.lease("sync lead"),
        pytest.raises(NotRunError, match=r"^sync lead is already running \(pid \d+ on "),
        second.lease("sync lead"),
    ):
        pass
    with second.lease("sync lead"):  # released at the end of the block
        pass


def test_a_dead_holders_lease_is_taken_at_once_whatever_its_row_says(url: str) -> None:
    first, second = instance(url), instance(url)
    taken = threading.Event()
    with first.lease("journeys"):
        with first.transaction() as conn:  # a live pid on another host, valid for years
            conn.execute(dvc.leases.update().values(host="another-host", pid=1,
                                                    expires_at="2999-01-01T00:00:00Z"))  # fmt: skip
        _terminate_other_sessions(second)  # the holder's session ends (kill -9, host gone)
        with second.lease("journeys"):
            taken.set()
            with second.engine.connect() as conn:
                holder = conn.execute(select(dvc.leases.c.host, dvc.leases.c.pid)).one()
            assert holder.host != "another-host"
    assert taken.is_set()


def test_a_lock_whose_session_ended_says_so(url: str) -> None:
    first, second = instance(url), instance(url)
    with first.lock("journeys/outbox") as lock:
        assert lock.held
        assert lock.alive()
        _terminate_other_sessions(second)
        assert not lock.alive()


def test_a_shared_lease_is_held_by_several_and_keeps_an_exclusive_holder_out(url: str) -> None:
    first, second, third = instance(url), instance(url), instance(url)
    with (
        first.lease("journeys", shared=True),
        second.lease("journeys", shared=True),
        pytest.raises(NotRunError, match="already running on another instance"),
        third.lease("journeys"),
    ):
        pass
    with (
        third.lease("journeys"),
        pytest.raises(NotRunError, match=r"pid \d+ on "),
        first.lease("journeys", shared=True),
    ):
        pass


def test_a_lock_waited_for_is_held_once_its_holder_lets_go(url: str) -> None:
    first, second = instance(url), instance(url)
    released_at: list[float] = []

    def hold() -> None:
        with first.lock("journeys/outbox") as lock:
            assert lock.held
            ready.set()
            time.sleep(0.5)
            released_at.append(time.monotonic())

    ready = threading.Event()
    holder = threading.Thread(target=hold)
    holder.start()
    ready.wait()
    with second.lock("journeys/outbox") as busy:
        assert not busy.held  # tried once: not waited for
    with second.lock("journeys/outbox", wait=lambda: False) as lock:
        assert lock.held
        assert released_at, "held before the holder let go"
    holder.join()
    with first.lock("journeys/outbox") as lock, second.lock("x", wait=lambda: True) as other:
        assert lock.held  # different names do not exclude each other
        assert other.held


def test_a_waiter_told_to_stop_gives_up(url: str) -> None:
    first, second = instance(url), instance(url)
    with first.lock("journeys/outbox"), second.lock("journeys/outbox", wait=lambda: True) as lock:
        assert not lock.held


def test_sqlite_leases_stay_rows_and_locks_are_always_held(tmp_path: object) -> None:
    store = instance(f"sqlite:///{tmp_path}/store.sqlite3")
    assert not store.coordinated
    with store.lock("journeys/outbox") as lock:
        assert lock.held
        assert lock.alive()
    with (
        store.lease("journeys", shared=True),  # exclusive on SQLite
        pytest.raises(NotRunError, match="lease until"),
        store.lease("journeys", shared=True),
    ):
        pass


def test_instances_claiming_one_tick_at_once_leave_it_to_exactly_one(url: str) -> None:
    stores = [instance(url) for _ in range(6)]
    tick = datetime(2026, 12, 7, 14, 5, tzinfo=UTC)
    start = threading.Barrier(len(stores))
    holders: list[str | None] = []

    def claim(store: Store) -> None:
        start.wait()
        holders.append(store.claim_tick("sync", tick))

    threads = [threading.Thread(target=claim, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert holders.count(None) == 1
    assert len(set(holders) - {None}) == 1  # the others name the one that claimed it


def test_a_tick_runs_on_the_instance_that_claimed_it_and_every_instance_runs_a_shared_job(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    contexts = [
        Context(settings=Settings(), mapping=s.mapping, store=s, clock=Clock())
        for s in (instance(url), instance(url))
    ]
    ran: list[tuple[int, str]] = []
    tick = datetime(2026, 12, 7, 14, 5, tzinfo=UTC)
    monkeypatch.setattr(scheduler, "_this_minute", lambda: tick)
    monkeypatch.setattr(scheduler, "_run", lambda ctx, job: ran.append((contexts.index(ctx), job)))
    for ctx in contexts:  # both fire the tick
        scheduler._on_tick(ctx, "segments")
        scheduler._on_tick(ctx, "journeys")
    assert ran == [(0, "segments"), (0, "journeys"), (1, "journeys")]
    with contexts[0].store.engine.connect() as conn:
        claimed = conn.execute(select(dvc.tick_claims.c.job)).scalars().all()
    assert claimed == ["segments"]  # journeys' ticks are never claimed


def test_an_instance_stopping_claims_no_tick(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = instance(url)
    ctx = Context(settings=Settings(), mapping=store.mapping, store=store, clock=Clock())
    monkeypatch.setattr(scheduler, "_run", lambda ctx, job: pytest.fail("ran while stopping"))
    ctx.stop.set()  # SIGTERM: its claim would keep the others from running the tick
    scheduler._on_tick(ctx, "segments")
    with store.engine.connect() as conn:
        assert conn.execute(select(dvc.tick_claims)).all() == []
