"""`dvconnect demo` (what `make demo` runs): the emulator, every job over HTTPS, a summary.

The demo has its own store (`var/demo/dvconnect.sqlite3`) and its own emulator (data under
`var/demo/emulator/`), whatever `.env` says: it never touches the store or the org a user
configured. Both persist, so a second demo sees the same org: before syncing again, the emulator
plays some activity (leads and contacts created, updated and deleted, as sales reps would), and
the sync transfers only that.

The sample journeys run on a simulated week: the emulator's clock and dvconnect's (what
`DVCONNECT_NOW` sets) move together from the journeys' start, Monday 4 January 2027 in Zurich.
Day 0 runs every job (both journeys started first); then some recipients open the launch e-mail,
and the journeys, then the lead scoring, run on day 1 and day 5 (when the launch e-mail's five
days are up) after a sync: a third of the readers also clicked, so their leads turn hot and are
handed to their owners. Last, the HTML report of what every demo so far recorded is written
beside the store. The next demo continues a week later.
"""

from __future__ import annotations

import os
import secrets
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from connector.clock import stamp
from connector.settings import Settings
from connector.store import migrate_store
from emulator.process import EmulatorError, EmulatorProcess
from jobs.context import Context, build_context
from jobs.journeys.inspect import journey_show
from jobs.journeys.lifecycle import change_state, journey_state
from jobs.progress import bars, on_terminal, spinner
from jobs.report import html_report, report_document
from jobs.runner import JOBS, JobResult, run_named
from jobs.scoring import scoring_status

DEMO_DIR = Path("var/demo")
DATA_DIR = DEMO_DIR / "emulator"
STORE = DEMO_DIR / "dvconnect.sqlite3"
REPORT = DEMO_DIR / "report.html"
SEED = 42
ACTIVITY = {"creates": 40, "updates": 120, "deletes": 15}
SUMMARY_LINES = 8  # per job; the rest is in `dvconnect status --json`
OPEN_ORPHANS = "statecode eq 0 and _parentcontactid_value eq null"
CLOCK = DEMO_DIR / "clock"  # the simulated instant the next demo starts at
JOURNEYS_START = datetime(2027, 1, 4, 8, 0, tzinfo=UTC)  # Monday 09:00 in Zurich
LATER_RUNS = (1, 5)  # days after the first: the journeys run again, after a sync
OPENED = 2  # every second launch e-mail gets opened


def _start_emulator(leads: int, contacts: int, secret: str) -> EmulatorProcess:
    """The demo's emulator, on the port of the last demo when it is free.

    Saved delta links carry the org's URL: on the same port the second demo syncs
    incrementally; on another, the sync rightly treats it as another org and reads in full.
    """
    port_file = DATA_DIR / "port"
    ports = [int(port_file.read_text()), 0] if port_file.exists() else [0]
    for port in ports:
        emulator = EmulatorProcess(
            port=port, seed=SEED, leads=leads, contacts=contacts, client_secret=secret,
            data_dir=DATA_DIR,
        )  # fmt: skip
        try:
            emulator.start()
        except EmulatorError:
            if port == 0:
                raise
            continue
        port_file.write_text(str(urlsplit(emulator.base_url).port))
        return emulator
    raise AssertionError("unreachable: port 0 always binds or raises")


def run_demo(settings: Settings, leads: int, contacts: int) -> int:
    """Run the demo; returns 0 when the store holds as many rows as the org, table by table."""
    secret = secrets.token_urlsafe(24)  # this run's emulator secret: never printed
    seeding = f"emulator: seeding {leads:,} leads and {contacts:,} contacts"
    with spinner(seeding, on_terminal()):
        emulator = _start_emulator(leads, contacts, secret)
    try:
        return _demo(settings, emulator, secret)
    finally:
        emulator.stop()


def _demo(settings: Settings, emulator: EmulatorProcess, secret: str) -> int:
    os.environ["REQUESTS_CA_BUNDLE"] = emulator.ca_bundle
    demo_settings = settings.model_copy(
        update={
            "dataverse_url": emulator.base_url,
            "tenant_id": emulator.tenant_id,
            "authority": emulator.authority,
            "client_id": emulator.client_id,
            "client_secret": SecretStr(secret),
            "client_certificate_path": None,
            "client_certificate_thumbprint": None,
            "requests_ca_bundle": Path(emulator.ca_bundle),
            "database_url": f"sqlite:///{STORE}",
        }
    )
    upgraded = migrate_store(demo_settings.database_url, upgrade=True)  # the demo's own store
    day0 = datetime.fromisoformat(CLOCK.read_text().strip()) if CLOCK.exists() else JOURNEYS_START
    ctx = _at(demo_settings, emulator, day0)
    print(f"emulator: {emulator.base_url} (data in {DATA_DIR}/)")
    print(f"store:    {STORE}")
    if upgraded.ran or upgraded.before.state == "unversioned":
        print(f"          upgraded to schema revision {upgraded.after.revision}, every row kept")
    print(f"clock:    {stamp(day0)} (simulated; the emulator's and dvconnect's together)")
    if all(ctx.store.load_state(table).mode for table in ctx.mapping.tables):
        for table in ("lead", "contact"):
            emulator.admin("POST", "/activity", {"table": table, **ACTIVITY})
        done = ", ".join(f"{n} {kind}" for kind, n in ACTIVITY.items())
        print(f"activity in the org since the last demo, leads and contacts: {done}")
    for name in ctx.mapping.journeys:
        with ctx.store.engine.connect() as conn:
            state = journey_state(conn, name)
        if state is None or state["state"] == "draft":
            change_state(ctx, name, "start")
    started = time.monotonic()
    with bars(on_terminal()) as progress:
        ctx.progress = progress
        results = run_named(ctx, "all")
    ctx.progress = None
    seconds = time.monotonic() - started

    _print_syncs(results)
    for result in results:
        if result.job != "sync":
            print(f"\n{result.job} ({result.requests} requests):")
            for line in JOBS[result.job].summary(result.counts)[:SUMMARY_LINES]:
                print(f"  {line}")
    orphans = emulator.admin("GET", f"/tables/lead?$filter={OPEN_ORPHANS}")["rows"]
    print(f"\nopen leads without a contact left in the org: {len(orphans)}")
    requests = sum(r.requests for r in results)
    print(f"\n{requests} requests in {seconds:.1f}s over HTTPS with MSAL tokens")

    failed = _journeys_week(demo_settings, emulator, day0)
    CLOCK.write_text(stamp(day0 + timedelta(days=7)))
    final = _at(demo_settings, emulator, day0 + timedelta(days=LATER_RUNS[-1]))
    matches = _matches_org(final, emulator)
    _write_report(final)
    return 0 if matches and not orphans and not failed else 1


def _write_report(ctx: Context) -> None:
    """The HTML report of everything the demos recorded, and where it is."""
    REPORT.write_text(html_report(report_document(ctx)), encoding="utf-8")
    print(f"\nreport:   {REPORT} (charts, viewable offline; the same numbers as tables: "
          f"DVCONNECT_DATABASE_URL=sqlite:///{STORE} dvconnect report)")  # fmt: skip


def _at(settings: Settings, emulator: EmulatorProcess, moment: datetime) -> Context:
    """A context whose clock, and the emulator's, read `moment`."""
    emulator.admin("POST", "/clock", {"now": stamp(moment)})
    return build_context(settings.model_copy(update={"now": moment}), online=True, prepare=True)


def _print_syncs(results: list[JobResult]) -> None:
    """What each sync of `run all` read and wrote, table by table."""
    print("\n{:<10} {:>8} {:>9} {:>8}  kind".format("table", "read", "upserted", "deleted"))
    syncs = [result for result in results if result.job == "sync"]
    for number, result in enumerate(syncs):
        for table, counts in result.counts.items():
            kind = "full" if counts["full"] else "incremental"
            if number < len(syncs) - 1:
                kind += ", then read back after the writes"
            print(f"{table:<10} {counts['read']:>8} {counts['upserted']:>9} "
                  f"{counts['deleted']:>8}  {kind}")  # fmt: skip


def _matches_org(ctx: Context, emulator: EmulatorProcess) -> bool:
    """A last sync, then whether the store holds as many rows as the org, table by table."""
    run_named(ctx, "sync")
    mismatched = []
    for table in ctx.mapping.tables:
        stored = ctx.store.row_count(table)
        in_org = int(emulator.admin("GET", f"/tables/{table}/count")["count"])
        if stored != in_org:
            mismatched.append(f"{table} {stored} in the store, {in_org} in the org")
    if mismatched:
        print("\nMISMATCH after a last sync: " + "; ".join(mismatched))
        return False
    print("\nafter a last sync the store holds every row of the org, table by table")
    return True


def _journeys_week(settings: Settings, emulator: EmulatorProcess, day0: datetime) -> int:
    """Opens on some launch e-mails, then the journeys on the later days; prints what they
    made. Returns how many members failed."""
    ctx = _at(settings, emulator, day0)
    opened = _open_launch_emails(ctx, emulator)
    print(f"\njourneys over the week (recipients opened {opened} launch e-mails on day 0):")
    for days in LATER_RUNS:
        ctx = _at(settings, emulator, day0 + timedelta(days=days))
        run_named(ctx, "sync")
        for job in ("journeys", "scoring"):
            (result,) = run_named(ctx, job)
            for line in JOBS[job].summary(result.counts)[:SUMMARY_LINES]:
                print(f"  day {days}: {line}")
    failed = 0
    for name in ctx.mapping.journeys:
        shown = journey_show(ctx, name)
        members = ", ".join(f"{n} {status}" for status, n in sorted(shown["members"].items()))
        print(f"  {name}: {members or 'no members'}")
        failed += shown["members"].get("failed", 0)
    for name, model in scoring_status(ctx).items():
        grades = ", ".join(f"{n} {grade}" for grade, n in sorted(model["grades"].items()))
        handed = sum(model["hand_offs_per_day"].values())
        print(f"  scoring {name}: {grades}; {model['sales_ready']} sales-ready, {handed} handed "
              "to their owners in the last 7 days")  # fmt: skip
    made = _made_by_journeys(ctx, emulator)
    print("records the journeys made in the org:")
    for (table, state), count in sorted(made.items()):
        print(f"  {table:<10} {count:>5}  {state}")
    return failed


def _open_launch_emails(ctx: Context, emulator: EmulatorProcess) -> int:
    """Record an open on every second launch e-mail not opened yet (recipients reading it)."""
    with ctx.store.engine.connect() as conn:
        ids = list(conn.exec_driver_sql(
            "SELECT record_id FROM dvc_journey_records WHERE journey = 'product-launch' "
            "AND step = 'launch-email' ORDER BY member_id"
        ).scalars())  # fmt: skip
    opened = 0
    for email in ids[::OPENED]:
        row = emulator.admin("GET", f"/tables/email/{email}")["row"]
        if not row.get("opencount"):  # a third of the readers also click: hot leads to score
            clicks = 1 if opened % 3 == 0 else 0
            emulator.admin("POST", f"/emails/{email}/engagement", {"opens": 1, "clicks": clicks})
            opened += 1
    return opened


def _made_by_journeys(ctx: Context, emulator: EmulatorProcess) -> Counter[tuple[str, str]]:
    """The org's records the journeys made, by table and status."""
    with ctx.store.engine.connect() as conn:
        made = conn.exec_driver_sql(
            "SELECT table_name, record_id FROM dvc_journey_records WHERE intent IS NOT NULL"
        ).all()
    states = {0: "open", 1: "completed", 2: "canceled", 3: "scheduled"}
    email_statuses = {1: "draft", 3: "sent", 6: "pending send", 8: "failed"}
    counts: Counter[tuple[str, str]] = Counter()
    by_table: dict[str, set[str]] = {}
    for table, record_id in made:
        by_table.setdefault(table, set()).add(record_id)
    for table, ids in by_table.items():
        rows: list[dict[str, Any]] = emulator.admin("GET", f"/tables/{table}")["rows"]
        for row in rows:
            if row["activityid"] in ids:
                if table == "email":
                    label = email_statuses.get(row["statuscode"], str(row["statuscode"]))
                else:
                    label = states.get(row["statecode"], str(row["statecode"]))
                counts[(table, label)] += 1
    return counts
