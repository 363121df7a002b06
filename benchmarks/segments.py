"""Segment evaluation over 1,000,000 leads and 500,000 contacts in SQLite.

The emulator is seeded with that many leads and contacts and the connector syncs them into an
empty SQLite store; then `dvconnect run segments` evaluates the shipped segments (the Contoso
conference decision makers, and recent web leads excluding them) twice: the first evaluation
saves every member as entered, the second finds no change. Each evaluation's own time (SQL and
saving, in one transaction) is what the run reports; the wall time adds the process start-up.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import cli_env, print_table, run_cli, write_result
from emulator.process import EmulatorProcess

LEADS, CONTACTS = 1_000_000, 500_000
QUICK_LEADS, QUICK_CONTACTS = 100_000, 50_000


def run(quick: bool = False) -> dict[str, Any]:
    leads, contacts = (QUICK_LEADS, QUICK_CONTACTS) if quick else (LEADS, CONTACTS)
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="dvconnect-bench-") as tmp,
        EmulatorProcess(
            leads=leads,
            contacts=contacts,
            data_dir=Path(tmp) / "emulator",
            extra_args=["--service-protection", "off"],
        ) as emulator,
    ):
        env = cli_env(emulator, Path(tmp) / "store.sqlite3")
        run_cli(["run", "sync", "--json"], env).json()
        for evaluation in ("first", "second"):
            measured = run_cli(["run", "segments", "--json"], env)
            counts = measured.json()["runs"][0]["counts"]
            for name, result in counts.items():
                rows.append(
                    {
                        "evaluation": evaluation,
                        "segment": name,
                        "members": result["size"],
                        "entered": result["entered"],
                        "exited": result["exited"],
                        "seconds": result["seconds"],
                        "run_wall_s": measured.wall_s,
                    }
                )
    print_table(f"segments ({leads:,} leads, {contacts:,} contacts, SQLite)", rows)
    figures = {"leads": leads, "contacts": contacts, "evaluations": rows}
    write_result("segments", figures)
    return figures
