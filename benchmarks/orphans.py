"""Linking 10,000 orphan leads: requests and wall time, bulk actions against `$batch`.

The org is seeded so that about 10,000 open leads have no parent contact (a third of them share
an email with an existing contact or with another orphan). The store is synced first; then
`link-orphans` runs once with `write: bulk` (UpsertMultiple + UpdateMultiple, the default) and,
on the same org reset to its seed, once with `write: batch` (one change set per lead). Both must
leave the same contacts. Service protection counts every inner request of a `$batch` but a bulk
request once (dataverse-webapi.md §12.1), so the table also shows what each mode costs against
the real limit of 6,000 requests per 5 minutes; the batch run is measured with the emulator's
limits off, or it would mostly wait. The last column compares with one request per write.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import cli_env, print_table, run_cli, write_result
from emulator.process import EmulatorProcess
from tests.paths import MAPPINGS

LEADS = 37_500  # a third orphans, 80% of them open: about 10,000 open orphans
CONTACTS = 15_000
QUICK_LEADS = 7_500
REAL_LIMIT = 6_000  # requests per 5-minute window (§12.1)


def _mappings(tmp: Path, write: str) -> Path:
    directory = tmp / f"mappings-{write}"
    shutil.copytree(MAPPINGS, directory)
    path = directory / "orphans.yaml"
    path.write_text(path.read_text().replace("  write: bulk", f"  write: {write}"))
    return directory


def _created(emulator: EmulatorProcess, before: set[str]) -> set[str]:
    return {c["contactid"] for c in emulator.rows("contact")} - before


def _measure(emulator: EmulatorProcess, tmp: Path, write: str) -> dict[str, Any]:
    store = tmp / f"store-{write}.sqlite3"
    env = cli_env(emulator, store, DVCONNECT_MAPPINGS_DIR=str(_mappings(tmp, write)))
    run_cli(["run", "sync", "--json"], env).json()
    before = {c["contactid"] for c in emulator.rows("contact")}
    seq = emulator.requests_after(0)[-1]["seq"]
    measured = run_cli(["run", "link-orphans", "--json"], env)
    counts = measured.json()["runs"][0]["counts"]
    calls = [c for c in emulator.requests_after(seq) if c["method"] == "POST"]
    writes = counts["created"] + counts["linked"]
    # a change set per lead: the contact upsert (new contacts only) and the link
    inner = 2 * counts["linked"] - counts["matched"] if write == "batch" else len(calls)
    return {
        "write": write,
        "orphans": counts["orphans"],
        "contacts_created": counts["created"],
        "failed": counts["failed"],
        "requests": len(calls),
        "requests_per_100_leads": round(100 * len(calls) / counts["orphans"], 3),
        "service_protection_count": inner,
        "windows_at_real_limit": math.ceil(inner / REAL_LIMIT),
        "wall_s": measured.wall_s,
        "leads_per_s": round(counts["orphans"] / measured.wall_s),
        "vs_one_request_per_write": f"{writes / len(calls):.0f}x fewer",
        "created_ids": sorted(_created(emulator, before)),
    }


def run(quick: bool = False) -> dict[str, Any]:
    leads = QUICK_LEADS if quick else LEADS
    results = []
    with tempfile.TemporaryDirectory(prefix="dvconnect-bench-") as name:
        tmp = Path(name)
        with EmulatorProcess(
            leads=leads,
            contacts=CONTACTS,
            data_dir=tmp / "emulator",
            extra_args=["--service-protection", "off"],
        ) as emulator:
            for write in ("bulk", "batch"):
                emulator.reset(leads=leads, contacts=CONTACTS)
                results.append(_measure(emulator, tmp, write))
    bulk, batch = results
    assert bulk["created_ids"] == batch["created_ids"], "bulk and batch made different contacts"
    for result in results:
        del result["created_ids"]
    print_table(f"link-orphans ({leads:,} leads seeded, {CONTACTS:,} contacts)", results)
    figures = {"leads_seeded": leads, "contacts_seeded": CONTACTS, "runs": results}
    write_result("orphans", figures)
    return figures
