"""The Context every job runs over: settings, clock, mapping, store, and the Dataverse client.

Built once by the composition roots (the CLI and the scheduler). Jobs are plain functions of a
Context; they never read the environment or build clients themselves, and they read the time
from `ctx.clock` only.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from connector.auth import DataverseAuth
from connector.clock import Clock
from connector.dataverse import Dataverse
from connector.http import Transport
from connector.mapping import Mapping, load_mapping
from connector.settings import Settings
from connector.store import Store


class Progress(Protocol):
    """Where a job reports progress: `done` of `total` (None: unknown) for a task label."""

    def __call__(self, task: str, done: int, total: int | None = None) -> None: ...


# The run under way in this thread (`job`, `run_id`): JSON log lines carry them as keys. The
# default is never mutated: a run sets a new dict.
LOG_FIELDS: ContextVar[dict[str, Any]] = ContextVar("log_fields", default={})  # noqa: B039


@dataclass
class Context:
    """What a job needs; `stop` asks a running job to finish its current page and return."""

    settings: Settings
    mapping: Mapping
    store: Store
    clock: Clock
    dataverse: Dataverse | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    progress: Progress | None = None
    run_id: int | None = None  # the run under way (`dvc_runs`), set by the runner

    def online(self) -> Dataverse:
        """The Dataverse client, built on first use (offline commands never build it)."""
        if self.dataverse is None:
            connection = self.settings.connection()
            transport = Transport(connection, DataverseAuth(connection))
            self.dataverse = Dataverse(transport, self.settings.page_size)
        return self.dataverse


def build_context(settings: Settings, *, online: bool = False, prepare: bool = False) -> Context:
    """Load and validate the mapping and open the store.

    `online` also builds the Dataverse client first, so that bad connection settings or an
    unreadable certificate stop the command before the store is touched. `prepare` creates and
    updates the store's tables: runs do, read-only commands (status, check, dry runs) never.
    Either way a store whose `dvc_` tables are behind or ahead of this release is refused
    (`dvconnect db upgrade` moves it forward).
    """
    mapping = load_mapping(settings.mappings_dir)
    clock = settings.clock
    store = Store(settings.database_url, mapping, clock)
    ctx = Context(settings=settings, mapping=mapping, store=store, clock=clock)
    if online:
        ctx.online()
    if prepare:
        store.prepare()
    else:
        store.check_schema()
    return ctx
