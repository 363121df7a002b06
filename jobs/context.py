"""The Context every job runs over: settings, mapping, store, and the Dataverse client.

Built once by the composition roots (the CLI and the scheduler). Jobs are plain functions of a
Context; they never read the environment or build clients themselves.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from connector.auth import DataverseAuth
from connector.dataverse import Dataverse
from connector.http import Transport
from connector.mapping import Mapping, load_mapping
from connector.settings import Settings
from connector.store import Store

Progress = Callable[[str, int], None]


@dataclass
class Context:
    """What a job needs; `stop` asks a running job to finish its current page and return."""

    settings: Settings
    mapping: Mapping
    store: Store
    dataverse: Dataverse | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    progress: Progress | None = None

    def online(self) -> Dataverse:
        """The Dataverse client, built on first use (offline commands never build it)."""
        if self.dataverse is None:
            connection = self.settings.connection()
            transport = Transport(connection, DataverseAuth(connection))
            self.dataverse = Dataverse(transport, self.settings.page_size)
        return self.dataverse


def build_context(settings: Settings, online: bool = False) -> Context:
    """Load and validate the mapping, open the store and create its tables.

    `online` also builds the Dataverse client first, so that bad connection settings or an
    unreadable certificate stop the command before the store is touched.
    """
    mapping = load_mapping(settings.mappings_dir)
    ctx = Context(settings=settings, mapping=mapping, store=Store(settings.database_url, mapping))
    if online:
        ctx.online()
    ctx.store.create()
    return ctx
