"""The sync state machine over a scripted Web API: full, delta, resume, resync, watermark."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
import requests

from connector.clock import Clock
from connector.dataverse import Dataverse
from connector.errors import BadRequestError, ExpiredDeltaTokenError, SyncError
from connector.mapping import load_mapping
from connector.settings import Settings
from connector.store import Store
from jobs.context import Context
from jobs.sync import run_sync, sync_table
from tests.paths import MAPPINGS

SHIPPED = MAPPINGS
API = "https://org.example.crm.dynamics.com/api/data/v9.2/"
FULL = API + "leads?$select=" + ",".join(load_mapping(SHIPPED).tables["lead"].select)
OWNER_TYPES = 'odata.include-annotations="Microsoft.Dynamics.CRM.lookuplogicalname"'  # owneridtype


def lead(n: int, modified: str = "2024-01-01T00:00:00Z", subject: str = "s") -> dict[str, Any]:
    return {
        "@odata.etag": f'W/"{n}"',
        "leadid": f"00000000-0000-0000-0000-{n:012d}",
        "subject": subject,
        "modifiedon": modified,
    }


def deleted(n: int) -> dict[str, Any]:
    return {
        "@odata.context": API + "$metadata#leads/$deletedEntity",
        "id": f"00000000-0000-0000-0000-{n:012d}",
        "reason": "deleted",
    }


Reply = dict[str, Any] | Exception


class ScriptedTransport:
    """Answers GETs from a URL → reply table, and records what was asked."""

    api_url = API

    def __init__(self) -> None:
        self.replies: dict[str, Reply] = {}
        self.sent: list[tuple[str, str]] = []
        self.date = "Sat, 02 Mar 2024 12:00:00 GMT"  # the server's clock

    @property
    def requests_sent(self) -> int:
        return len(self.sent)

    def page(
        self,
        url: str,
        rows: list[dict[str, Any]],
        next_link: str | None = None,
        delta_link: str | None = None,
    ) -> None:
        body: dict[str, Any] = {"value": rows}
        if next_link:
            body["@odata.nextLink"] = next_link
        if delta_link:
            body["@odata.deltaLink"] = delta_link
        self.replies[url] = body

    def send(
        self, method: str, url: str, *, headers: dict[str, str] | None = None, **_: Any
    ) -> requests.Response:
        prefer = (headers or {}).get("Prefer", "")
        url = url if url.startswith("https://") else API + url  # relative to the API root
        self.sent.append((url, prefer))
        reply = self.replies[url]
        if isinstance(reply, Exception):
            raise reply
        response = requests.Response()
        response.status_code = 200
        response._content = json.dumps(reply).encode()
        response.headers["Content-Type"] = "application/json; odata.metadata=minimal"
        response.headers["x-ms-service-request-id"] = f"req-{len(self.sent)}"
        response.headers["Date"] = self.date
        return response


@pytest.fixture
def transport() -> ScriptedTransport:
    return ScriptedTransport()


@pytest.fixture
def ctx(database_url: str, transport: ScriptedTransport) -> Context:
    mapping = load_mapping(SHIPPED)
    store = Store(database_url, mapping)
    store.prepare()
    return Context(
        settings=Settings(),
        mapping=mapping,
        store=store,
        clock=Clock(),
        dataverse=Dataverse(transport, page_size=2),
    )  # type: ignore[arg-type]


def lead_ids(ctx: Context) -> list[str]:
    with ctx.store.engine.connect() as conn:
        return [r[0][-3:] for r in conn.exec_driver_sql("SELECT leadid FROM lead ORDER BY leadid")]


def sync_lead(ctx: Context) -> Any:
    return sync_table(ctx, ctx.mapping.tables["lead"])


def test_full_read_follows_next_links_and_keeps_the_last_pages_delta_link(
    ctx: Context, transport: ScriptedTransport
) -> None:
    transport.page(FULL, [lead(1), lead(2)], next_link=API + "leads?$skiptoken=p2")
    transport.page(API + "leads?$skiptoken=p2", [lead(3)], delta_link=API + "leads?$deltatoken=10")
    counts = sync_lead(ctx)
    assert (counts.read, counts.upserted, counts.pages, counts.full) == (3, 3, 2, True)
    assert lead_ids(ctx) == ["001", "002", "003"]
    assert transport.sent == [
        (FULL, f"odata.track-changes,odata.maxpagesize=2,{OWNER_TYPES}"),
        (API + "leads?$skiptoken=p2", f"odata.track-changes,odata.maxpagesize=2,{OWNER_TYPES}"),
    ]
    state = ctx.store.load_state("lead")
    assert (state.phase, state.mode, state.delta_link, state.next_link) == (
        "idle",
        "delta",
        API + "leads?$deltatoken=10",
        None,
    )


def test_incremental_read_applies_changes_and_deletions_then_stores_the_new_link(
    ctx: Context, transport: ScriptedTransport
) -> None:
    transport.page(FULL, [lead(1), lead(2)], delta_link=API + "leads?$deltatoken=10")
    sync_lead(ctx)
    transport.page(
        API + "leads?$deltatoken=10",
        [lead(2, subject="changed"), lead(4), deleted(1)],
        delta_link=API + "leads?$deltatoken=11",
    )
    counts = sync_lead(ctx)
    assert (counts.full, counts.upserted, counts.deleted) == (False, 2, 1)
    assert lead_ids(ctx) == ["002", "004"]
    assert ctx.store.load_state("lead").delta_link == API + "leads?$deltatoken=11"


def test_an_empty_delta_without_a_new_link_keeps_the_old_one(
    ctx: Context, transport: ScriptedTransport
) -> None:
    transport.page(FULL, [lead(1)], delta_link=API + "leads?$deltatoken=10")
    sync_lead(ctx)
    transport.page(API + "leads?$deltatoken=10", [])
    sync_lead(ctx)
    assert ctx.store.load_state("lead").delta_link == API + "leads?$deltatoken=10"


def test_a_crash_between_pages_resumes_from_the_saved_page(
    ctx: Context, transport: ScriptedTransport
) -> None:
    transport.page(FULL, [lead(1), lead(2)], next_link=API + "leads?$skiptoken=p2")
    transport.replies[API + "leads?$skiptoken=p2"] = ConnectionError("killed")
    with pytest.raises(ConnectionError):
        sync_lead(ctx)
    assert lead_ids(ctx) == ["001", "002"]
    assert ctx.store.load_state("lead").next_link == API + "leads?$skiptoken=p2"
    transport.page(API + "leads?$skiptoken=p2", [lead(3)], delta_link=API + "leads?$deltatoken=10")
    transport.sent.clear()
    counts = sync_lead(ctx)
    assert [url for url, _ in transport.sent] == [API + "leads?$skiptoken=p2"]
    assert counts.full
    assert lead_ids(ctx) == ["001", "002", "003"]
    assert ctx.store.load_state("lead").mode == "delta"


def test_an_expired_delta_token_resyncs_in_full_and_removes_rows_deleted_meanwhile(
    ctx: Context, transport: ScriptedTransport
) -> None:
    transport.page(FULL, [lead(1), lead(2), lead(3)], delta_link=API + "leads?$deltatoken=10")
    sync_lead(ctx)
    transport.replies[API + "leads?$deltatoken=10"] = ExpiredDeltaTokenError(
        400,
        "0x80044352",
        "Version stamp associated with the client has expired. Please perform a full sync.",
    )
    transport.page(FULL, [lead(1), lead(3)], delta_link=API + "leads?$deltatoken=20")
    counts = sync_lead(ctx)
    assert (counts.resyncs, counts.full, counts.deleted) == (1, True, 1)
    assert lead_ids(ctx) == ["001", "003"]
    state = ctx.store.load_state("lead")
    assert (state.generation, state.delta_link) == (2, API + "leads?$deltatoken=20")


def test_without_change_tracking_the_table_follows_modifiedon_with_overlap(
    ctx: Context, transport: ScriptedTransport
) -> None:
    transport.page(FULL, [lead(1, "2024-03-01T10:00:00Z"), lead(2, "2024-03-02T10:00:00Z")])
    sync_lead(ctx)  # no delta link came: the table has no change tracking
    state = ctx.store.load_state("lead")
    assert (state.mode, state.delta_link) == ("watermark", None)
    assert state.watermark == "2024-03-02T12:00:00Z"  # when the full read started, server time
    since = ctx.dataverse.watermark_url(ctx.mapping.tables["lead"], "2024-03-02T11:55:00Z")  # type: ignore[union-attr]
    assert (
        "$filter=modifiedon%20ge%202024-03-02T11:55:00Z&$orderby=modifiedon%20asc,leadid%20asc"
        in since
    )
    transport.page(API + since, [lead(2, "2024-03-02T12:30:00Z"), lead(5, "2024-03-03T08:00:00Z")])
    counts = sync_lead(ctx)
    assert (counts.full, counts.upserted) == (False, 2)
    assert transport.sent[-1] == (API + since, f"odata.maxpagesize=2,{OWNER_TYPES}")
    assert ctx.store.load_state("lead").watermark == "2024-03-03T08:00:00Z"


def test_rows_changed_behind_a_full_reads_cursor_are_read_by_the_next_run(
    ctx: Context, transport: ScriptedTransport
) -> None:
    transport.date = "Sat, 02 Mar 2024 10:05:00 GMT"  # the full read starts at 10:05
    transport.page(FULL, [lead(1, "2024-03-02T10:00:00Z")], next_link=API + "leads?$skiptoken=p2")
    # lead 1 is edited at 10:06, after its page was read; lead 9 at 10:20, before its page was
    transport.page(API + "leads?$skiptoken=p2", [lead(9, "2024-03-02T10:20:00Z")])
    sync_lead(ctx)
    assert ctx.store.load_state("lead").watermark == "2024-03-02T10:05:00Z"
    since = ctx.dataverse.watermark_url(ctx.mapping.tables["lead"], "2024-03-02T10:00:00Z")  # type: ignore[union-attr]
    transport.page(
        API + since,
        [lead(1, "2024-03-02T10:06:00Z", subject="edited"), lead(9, "2024-03-02T10:20:00Z")],
    )
    sync_lead(ctx)
    assert transport.sent[-1][0] == API + since
    with ctx.store.engine.connect() as conn:
        subject = conn.exec_driver_sql(
            f"SELECT subject FROM lead WHERE leadid = '{lead(1)['leadid']}'"
        ).scalar()
    assert subject == "edited"


def test_a_page_of_unexpected_shape_fails_without_advancing_the_state(
    ctx: Context, transport: ScriptedTransport
) -> None:
    transport.page(FULL, [lead(1)], delta_link=API + "leads?$deltatoken=10")
    sync_lead(ctx)
    transport.replies[API + "leads?$deltatoken=10"] = {"value": [{"subject": "no id"}]}
    with pytest.raises(
        SyncError,
        match=r"lead: page of unexpected shape: row 0 has no 'leadid' \(request id req-2\)",
    ):
        sync_lead(ctx)
    assert ctx.store.load_state("lead").delta_link == API + "leads?$deltatoken=10"


def test_a_stop_request_ends_the_run_after_the_current_page(
    ctx: Context, transport: ScriptedTransport
) -> None:
    transport.page(FULL, [lead(1), lead(2)], next_link=API + "leads?$skiptoken=p2")
    transport.page(API + "leads?$skiptoken=p2", [lead(3)], delta_link=API + "leads?$deltatoken=10")
    progress: Callable[[str, int], None] = lambda table, rows: ctx.stop.set()  # noqa: E731
    ctx.progress = progress
    results = run_sync(ctx)
    assert results["lead"].interrupted
    assert "contact" not in results
    assert lead_ids(ctx) == ["001", "002"]
    assert ctx.store.load_state("lead").next_link == API + "leads?$skiptoken=p2"
    assert isinstance(ctx.stop, threading.Event)


def test_a_cursor_saved_for_another_environment_is_not_followed(
    ctx: Context, transport: ScriptedTransport
) -> None:
    transport.page(FULL, [lead(1), lead(2)], delta_link=API + "leads?$deltatoken=10")
    sync_lead(ctx)
    with ctx.store.transaction() as conn:
        moved = ctx.store.load_state("lead")
        other = "https://other-org.crm4.dynamics.com/api/data/v9.2/leads?$deltatoken=10"
        ctx.store.save_state(conn, replace(moved, delta_link=other))
    transport.page(FULL, [lead(2)], delta_link=API + "leads?$deltatoken=20")
    counts = sync_lead(ctx)
    assert counts.full
    assert counts.deleted == 1
    assert transport.sent[-1][0] == FULL
    assert ctx.store.load_state("lead").delta_link == API + "leads?$deltatoken=20"


def test_a_server_that_repeats_a_next_link_is_stopped_not_followed_forever(
    ctx: Context, transport: ScriptedTransport
) -> None:
    transport.page(FULL, [lead(1)], next_link=API + "leads?$skiptoken=p2")
    transport.page(API + "leads?$skiptoken=p2", [lead(2)], next_link=API + "leads?$skiptoken=p2")
    with pytest.raises(SyncError, match=r"lead: the server repeated a next link"):
        sync_lead(ctx)
    assert len(transport.sent) == 2
    assert ctx.store.load_state("lead").next_link == API + "leads?$skiptoken=p2"


def test_a_server_that_refuses_even_the_full_read_as_expired_fails_instead_of_looping(
    ctx: Context, transport: ScriptedTransport
) -> None:
    expired = ExpiredDeltaTokenError(
        400, "0x80044352", "Version stamp associated with the client has expired."
    )
    transport.page(FULL, [lead(1)], delta_link=API + "leads?$deltatoken=10")
    sync_lead(ctx)
    transport.replies[API + "leads?$deltatoken=10"] = expired
    transport.replies[FULL] = expired
    with pytest.raises(ExpiredDeltaTokenError):
        sync_lead(ctx)
    assert [url for url, _ in transport.sent[-2:]] == [API + "leads?$deltatoken=10", FULL]


def test_a_saved_cursor_dataverse_refuses_names_the_remedy(
    ctx: Context, transport: ScriptedTransport
) -> None:
    transport.page(FULL, [lead(1)], delta_link=API + "leads?$deltatoken=10")
    sync_lead(ctx)
    transport.replies[API + "leads?$deltatoken=10"] = BadRequestError(
        400, "0x8004112A", "Invalid paging cookie."
    )
    with pytest.raises(SyncError) as caught:
        sync_lead(ctx)
    assert str(caught.value) == (
        "lead: Dataverse refused the saved cursor (Dataverse 400 0x8004112A: Invalid paging cookie.); "
        "`dvconnect state reset lead` makes the next sync read it in full"
    )


def test_a_failed_store_write_between_a_page_and_its_cursor_commits_neither(
    ctx: Context, transport: ScriptedTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport.page(FULL, [lead(1), lead(2)], next_link=API + "leads?$skiptoken=p2")
    transport.page(API + "leads?$skiptoken=p2", [lead(3)], delta_link=API + "leads?$deltatoken=10")
    save_state = ctx.store.save_state
    saves: list[str | None] = []

    def failing_save(conn: Any, state: Any) -> None:
        saves.append(state.next_link)
        if state.delta_link is not None:  # the last page's cursor: the database fails here
            raise OSError("disk full")
        save_state(conn, state)

    monkeypatch.setattr(ctx.store, "save_state", failing_save)
    with pytest.raises(OSError, match="disk full"):
        sync_lead(ctx)
    assert lead_ids(ctx) == ["001", "002"]  # page 2's rows went with its cursor
    state = ctx.store.load_state("lead")
    assert (state.next_link, state.delta_link, state.phase) == (
        API + "leads?$skiptoken=p2", None, "full"
    )  # fmt: skip
    monkeypatch.setattr(ctx.store, "save_state", save_state)
    sync_lead(ctx)
    assert lead_ids(ctx) == ["001", "002", "003"]
    assert ctx.store.load_state("lead").delta_link == API + "leads?$deltatoken=10"


def test_an_incremental_read_resumed_after_a_crash_keeps_following_change_tracking(
    ctx: Context, transport: ScriptedTransport
) -> None:
    transport.page(FULL, [lead(1), lead(2), lead(3)], delta_link=API + "leads?$deltatoken=10")
    sync_lead(ctx)
    delta, page2 = API + "leads?$deltatoken=10", API + "leads?$deltatoken=10&$skiptoken=2"
    transport.page(delta, [lead(4)], next_link=page2)
    transport.replies[page2] = ConnectionError("killed")
    with pytest.raises(ConnectionError):
        sync_lead(ctx)
    state = ctx.store.load_state("lead")
    assert (state.phase, state.mode, state.next_link) == ("incremental", "delta", page2)
    transport.page(page2, [deleted(2)], delta_link=API + "leads?$deltatoken=20")
    transport.sent.clear()
    sync_lead(ctx)
    tracked = f"odata.track-changes,odata.maxpagesize=2,{OWNER_TYPES}"
    assert transport.sent == [(page2, tracked)]  # the same Prefer on every page of the delta
    state = ctx.store.load_state("lead")
    assert (state.mode, state.delta_link, state.next_link) == (
        "delta", API + "leads?$deltatoken=20", None
    )  # fmt: skip
    assert lead_ids(ctx) == ["001", "003", "004"]  # the deletion on the resumed page applied


def test_a_row_twice_in_a_page_is_stored_once_as_its_later_copy_and_rows_change_in_place(
    ctx: Context, transport: ScriptedTransport
) -> None:
    transport.page(FULL, [lead(1, subject="first"), lead(2), lead(1, subject="later")],
                   delta_link=API + "leads?$deltatoken=10")  # fmt: skip
    sync_lead(ctx)
    transport.page(API + "leads?$deltatoken=10", [lead(2, subject="changed")],
                   delta_link=API + "leads?$deltatoken=20")  # fmt: skip
    sync_lead(ctx)
    with ctx.store.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT leadid, subject FROM lead ORDER BY leadid").all()
    assert [(r[0][-3:], r[1]) for r in rows] == [("001", "later"), ("002", "changed")]


def test_a_value_the_database_cannot_hold_is_reported_by_id_and_the_table_goes_on(
    ctx: Context, transport: ScriptedTransport, caplog: pytest.LogCaptureFixture
) -> None:
    postgres = ctx.store.engine.dialect.name == "postgresql"
    secret = "Ada Lovelace <ada@example.com>"
    nul = lead(2, subject=f"{secret}\x00")
    surrogate = lead(3, subject=f"{secret}\ud800")
    transport.page(FULL, [lead(1), nul, surrogate, lead(4)], next_link=API + "leads?$skiptoken=p2")
    transport.page(API + "leads?$skiptoken=p2", [lead(5)], delta_link=API + "leads?$deltatoken=10")
    counts = sync_lead(ctx)
    expected_ids = ["001", "004", "005"] if postgres else ["001", "002", "004", "005"]
    assert lead_ids(ctx) == expected_ids
    rejected = [nul["leadid"], surrogate["leadid"]] if postgres else [surrogate["leadid"]]
    assert [r["record"] for r in counts.rejects] == rejected
    assert counts.failed == len(rejected)
    assert ctx.store.load_state("lead").delta_link == API + "leads?$deltatoken=10"
    assert [r.record_id for r in ctx.store.rejects("lead")] == rejected
    assert counts.rejects[-1]["reason"] == (
        "subject: text that is not valid Unicode (an unpaired surrogate)"
    )
    assert secret not in caplog.text
    assert secret not in str(counts.rejects)
    # changed in Dataverse and readable now: stored, and no longer listed as rejected
    transport.page(
        API + "leads?$deltatoken=10", [lead(3, subject="fixed")],
        delta_link=API + "leads?$deltatoken=20",
    )  # fmt: skip
    sync_lead(ctx)
    assert "003" in lead_ids(ctx)
    assert [r.record_id for r in ctx.store.rejects("lead")] == rejected[:-1]


def test_a_table_without_change_tracking_is_read_in_full_again_to_see_deletions(
    ctx: Context, transport: ScriptedTransport
) -> None:
    transport.page(FULL, [lead(1, "2024-03-01T10:00:00Z"), lead(2, "2024-03-02T10:00:00Z")])
    sync_lead(replace(ctx, clock=Clock(datetime(2024, 3, 2, 12, tzinfo=UTC))))
    assert ctx.store.load_state("lead").mode == "watermark"
    since = ctx.dataverse.watermark_url(ctx.mapping.tables["lead"], "2024-03-02T11:55:00Z")  # type: ignore[union-attr]
    transport.page(API + since, [])
    counts = sync_lead(replace(ctx, clock=Clock(datetime(2024, 3, 9, 11, tzinfo=UTC))))
    assert (counts.full, transport.sent[-1][0]) == (False, API + since)  # not 7 days yet
    transport.page(FULL, [lead(1, "2024-03-01T10:00:00Z")])  # lead 2 was deleted meanwhile
    counts = sync_lead(replace(ctx, clock=Clock(datetime(2024, 3, 9, 12, tzinfo=UTC))))
    assert (counts.full, counts.deleted) == (True, 1)
    assert transport.sent[-1][0] == FULL
    assert lead_ids(ctx) == ["001"]
