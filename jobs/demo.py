"""`dvconnect demo` (what `make demo` runs): the emulator, every job over HTTPS, a summary.

The emulator keeps its data under `var/emulator/` and the store stays in `var/`, so a second
demo sees the same org: before syncing again, the emulator plays some activity (leads and
contacts created, updated and deleted, as sales reps would), and the sync transfers only that.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from pydantic import SecretStr

from connector.settings import Settings
from emulator.process import EmulatorProcess
from jobs.context import build_context
from jobs.runner import run_named

DATA_DIR = Path("var/emulator")
SEED = 42
ACTIVITY = {"creates": 40, "updates": 120, "deletes": 15}


def run_demo(settings: Settings, leads: int, contacts: int) -> int:
    """Run the demo; returns 0 when the store matches the emulator row for row in count."""
    secret = secrets.token_urlsafe(24)  # this run's emulator secret: never printed
    with EmulatorProcess(
        seed=SEED, leads=leads, contacts=contacts, client_secret=secret, data_dir=DATA_DIR
    ) as emulator:
        os.environ["REQUESTS_CA_BUNDLE"] = emulator.ca_bundle
        demo_settings = settings.model_copy(
            update={
                "dataverse_url": emulator.base_url,
                "tenant_id": emulator.tenant_id,
                "authority": emulator.authority,
                "client_id": emulator.client_id,
                "client_secret": SecretStr(secret),
                "client_certificate_path": None,
            }
        )
        ctx = build_context(demo_settings)
        print(f"emulator: {emulator.base_url} (data in {DATA_DIR}/)")
        print(f"store:    {demo_settings.database_url}")
        synced_before = all(ctx.store.load_state(t).mode for t in ctx.mapping.tables)
        if synced_before:
            for table in ctx.mapping.tables:
                emulator.admin("POST", "/activity", {"table": table, **ACTIVITY})
            print(
                "activity in the org since the last demo: per table "
                + ", ".join(f"{n} {kind}" for kind, n in ACTIVITY.items())
            )
        started = time.monotonic()
        results = run_named(ctx, "all")
        seconds = time.monotonic() - started

        print(
            f"\n{'table':<10} {'read':>8} {'upserted':>9} {'deleted':>8} {'in store':>9} "
            f"{'in org':>8}  kind"
        )
        matches = True
        for result in results:
            for table, counts in result.counts.items():
                stored = ctx.store.row_count(table)
                in_org = int(emulator.admin("GET", f"/tables/{table}/count")["count"])
                matches = matches and stored == in_org
                kind = "full" if counts["full"] else "incremental"
                print(
                    f"{table:<10} {counts['read']:>8} {counts['upserted']:>9} "
                    f"{counts['deleted']:>8} {stored:>9} {in_org:>8}  {kind}"
                )
        requests = sum(r.requests for r in results)
        print(f"\n{requests} requests in {seconds:.1f}s over HTTPS with MSAL tokens")
        print("store matches the org" if matches else "MISMATCH between store and org")
        return 0 if matches else 1
