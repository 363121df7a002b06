"""`dvconnect demo` (what `make demo` runs): the emulator, every job over HTTPS, a summary.

The demo has its own store (`var/demo/dvconnect.sqlite3`) and its own emulator (data under
`var/demo/emulator/`), whatever `.env` says: it never touches the store or the org a user
configured. Both persist, so a second demo sees the same org: before syncing again, the emulator
plays some activity (leads and contacts created, updated and deleted, as sales reps would), and
the sync transfers only that.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import SecretStr

from connector.settings import Settings
from emulator.process import EmulatorError, EmulatorProcess
from jobs.context import build_context
from jobs.runner import JOBS, run_named

DEMO_DIR = Path("var/demo")
DATA_DIR = DEMO_DIR / "emulator"
STORE = DEMO_DIR / "dvconnect.sqlite3"
SEED = 42
ACTIVITY = {"creates": 40, "updates": 120, "deletes": 15}
SUMMARY_LINES = 8  # per job; the rest is in `dvconnect status --json`
OPEN_ORPHANS = "statecode eq 0 and _parentcontactid_value eq null"


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
    ctx = build_context(demo_settings, online=True, prepare=True)
    print(f"emulator: {emulator.base_url} (data in {DATA_DIR}/)")
    print(f"store:    {STORE}")
    if all(ctx.store.load_state(table).mode for table in ctx.mapping.tables):
        for table in ctx.mapping.tables:
            emulator.admin("POST", "/activity", {"table": table, **ACTIVITY})
        done = ", ".join(f"{n} {kind}" for kind, n in ACTIVITY.items())
        print(f"activity in the org since the last demo, per table: {done}")
    started = time.monotonic()
    results = run_named(ctx, "all")
    seconds = time.monotonic() - started

    header = ("table", "read", "upserted", "deleted", "in store", "in org")
    print("\n{:<10} {:>8} {:>9} {:>8} {:>9} {:>8}  kind".format(*header))
    syncs = [result for result in results if result.job == "sync"]
    matches = True
    for number, result in enumerate(syncs):
        last = number == len(syncs) - 1
        for table, counts in result.counts.items():
            kind = "full" if counts["full"] else "incremental"
            stored = in_org = ""
            if last:  # after the read-back: the store holds what the jobs wrote
                stored_rows = ctx.store.row_count(table)
                org_rows = int(emulator.admin("GET", f"/tables/{table}/count")["count"])
                matches = matches and stored_rows == org_rows
                stored, in_org = str(stored_rows), str(org_rows)
            else:
                kind += ", then read back after the writes"
            print(
                f"{table:<10} {counts['read']:>8} {counts['upserted']:>9} "
                f"{counts['deleted']:>8} {stored:>9} {in_org:>8}  {kind}"
            )
    for result in results:
        if result.job != "sync":
            print(f"\n{result.job} ({result.requests} requests):")
            for line in JOBS[result.job].summary(result.counts)[:SUMMARY_LINES]:
                print(f"  {line}")
    orphans = emulator.admin("GET", f"/tables/lead?$filter={OPEN_ORPHANS}")["rows"]
    print(f"\nopen leads without a contact left in the org: {len(orphans)}")
    requests = sum(r.requests for r in results)
    print(f"\n{requests} requests in {seconds:.1f}s over HTTPS with MSAL tokens")
    print("row counts match the org" if matches else "MISMATCH: the store and the org differ")
    return 0 if matches and not orphans else 1
