"""dvconnect's full sync against the yardstick, on SQLite and PostgreSQL (`yardstick`).

The yardstick (benchmarks/yardstick.py) is the cheapest honest sync: `requests`, the stdlib JSON
parser and one `executemany` per page. For each size one emulator is seeded; in it, dvconnect's
`run sync` into a fresh store and the yardstick into a fresh database take turns (ABBA order,
`REPEATS` of each), on SQLite and, when PostgreSQL's binaries are found, on a throwaway
PostgreSQL server started here. Each is a child process of its own, measured alone (wall, CPU,
peak RSS, process start included); the PostgreSQL server's own CPU is in neither. The best of
the repeats (least wall time) is kept for each. dvconnect's rows per connector CPU-second leave
out its start-up (`status --json` on an empty store), as in the sync benchmark.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Measured,
    cli_env,
    contacts_for,
    print_table,
    run_cli,
    run_measured,
    scratch_org,
    write_result,
)
from tests import postgres_server

SIZES = (100_000, 1_000_000)
QUICK_SIZES = (20_000, 200_000)
REPEATS = 2
QUICK_REPEATS = 1


class _Database:
    """Fresh, empty databases of one kind: a URL for dvconnect, arguments for the yardstick."""

    def __init__(
        self, name: str, tmp: Path, server: postgres_server.PostgresServer | None, leads: int
    ):
        self.name = name
        self._leads = leads  # one PostgreSQL server serves every size: names must differ
        self._tmp = tmp
        self._server = server
        self._count = 0

    def fresh(self) -> tuple[str, list[str]]:
        self._count += 1
        label = f"{self.name}_{self._leads}_{self._count}"
        if self._server is None:
            path = self._tmp / f"{label}.sqlite3"
            return f"sqlite:///{path}", ["--sqlite", str(path)]
        url = self._server.create_database(label)
        conninfo = f"host={self._server.socket_dir} user=postgres dbname={label}"
        return url, ["--postgres", conninfo]


def _dvconnect(env: dict[str, str], url: str) -> tuple[Measured, int, int]:
    measured = run_cli(["run", "sync", "--json"], {**env, "DVCONNECT_DATABASE_URL": url})
    run = measured.json()["runs"][0]
    assert run["outcome"] == "succeeded", run
    return measured, sum(c["read"] for c in run["counts"].values()), run["requests"]


def _yardstick(env: dict[str, str], args: list[str]) -> tuple[Measured, int, int]:
    measured = run_measured([sys.executable, "-m", "benchmarks.yardstick", *args], env)
    result = measured.json()
    return measured, result["rows"], result["requests"]


def _best(
    runs: list[tuple[Measured, int, int]],
) -> tuple[Measured, int, int]:
    return min(runs, key=lambda r: r[0].wall_s)


def measure(
    leads: int, databases: list[tuple[str, postgres_server.PostgresServer | None]], repeats: int
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    contacts = contacts_for(leads)
    with scratch_org(leads, contacts) as (tmp, emulator):
        env = cli_env(emulator, tmp / "unused.sqlite3")
        for name, server in databases:
            database = _Database(name, tmp, server, leads)
            startup_url, _ = database.fresh()
            startup = run_cli(["status", "--json"], {**env, "DVCONNECT_DATABASE_URL": startup_url})
            ours: list[tuple[Measured, int, int]] = []
            theirs: list[tuple[Measured, int, int]] = []
            for repeat in range(repeats):
                for ours_first in (repeat % 2 == 0, repeat % 2 == 1):  # ABBA: AB, then BA
                    if ours_first:
                        ours.append(_dvconnect(env, database.fresh()[0]))
                    else:
                        theirs.append(_yardstick(env, database.fresh()[1]))
            (mine, rows, requests), (stick, stick_rows, stick_requests) = (
                _best(ours),
                _best(theirs),
            )
            assert stick_rows == rows, (stick_rows, rows)
            sync_cpu = max(mine.cpu_s - startup.cpu_s, 1e-9)
            rows_per_s = round(rows / mine.wall_s)
            stick_per_s = round(rows / stick.wall_s)
            results.append(
                {
                    "database": name,
                    "leads": leads,
                    "contacts": contacts,
                    "rows": rows,
                    "repeats": repeats,
                    "dvconnect_wall_s": mine.wall_s,
                    "dvconnect_rows_per_s": rows_per_s,
                    "dvconnect_cpu_s": mine.cpu_s,
                    "dvconnect_startup_cpu_s": startup.cpu_s,
                    "dvconnect_rows_per_cpu_s": round(rows / sync_cpu),
                    "dvconnect_peak_rss_mb": mine.peak_rss_mb,
                    "dvconnect_requests": requests,
                    "dvconnect_walls_s": [m.wall_s for m, _, _ in ours],
                    "yardstick_wall_s": stick.wall_s,
                    "yardstick_rows_per_s": stick_per_s,
                    "yardstick_cpu_s": stick.cpu_s,
                    "yardstick_rows_per_cpu_s": round(rows / max(stick.cpu_s, 1e-9)),
                    "yardstick_peak_rss_mb": stick.peak_rss_mb,
                    "yardstick_requests": stick_requests,
                    "yardstick_walls_s": [m.wall_s for m, _, _ in theirs],
                    "ratio": round(rows_per_s / stick_per_s, 3),
                }
            )
            print(f"  {name} {leads:,} leads: ratio {results[-1]['ratio']}", flush=True)
    return results


def run(quick: bool = False) -> dict[str, Any]:
    sizes = QUICK_SIZES if quick else SIZES
    repeats = QUICK_REPEATS if quick else REPEATS
    server: postgres_server.PostgresServer | None = None
    databases: list[tuple[str, postgres_server.PostgresServer | None]] = [("sqlite", None)]
    skipped = None
    if postgres_server.available():
        server = postgres_server.PostgresServer().start()
        databases.append(("postgresql", server))
    else:
        skipped = "PostgreSQL not measured: initdb/pg_ctl not found (PATH, /usr/lib/postgresql)"
        print(skipped)
    try:
        results = [r for n in sizes for r in measure(n, databases, repeats)]
    finally:
        if server is not None:
            server.stop()
    figures: dict[str, Any] = {"sizes": results, "postgresql_skipped": skipped}
    for name, _ in databases:
        mine = [r for r in results if r["database"] == name]
        figures[f"{name}_peak_rss_growth"] = round(
            mine[-1]["dvconnect_peak_rss_mb"] / mine[0]["dvconnect_peak_rss_mb"], 3
        )
    print_table(
        f"yardstick: dvconnect's full sync vs the minimal client (best of {repeats}, alternating)",
        [
            {
                "database": r["database"],
                "leads": r["leads"],
                "rows": r["rows"],
                "dvc rows/s": r["dvconnect_rows_per_s"],
                "yard rows/s": r["yardstick_rows_per_s"],
                "ratio": r["ratio"],
                "dvc rows/cpu-s": r["dvconnect_rows_per_cpu_s"],
                "yard rows/cpu-s": r["yardstick_rows_per_cpu_s"],
                "dvc peak MB": r["dvconnect_peak_rss_mb"],
                "yard peak MB": r["yardstick_peak_rss_mb"],
            }
            for r in results
        ],
    )
    for name, _ in databases:
        growth = figures[f"{name}_peak_rss_growth"]
        print(f"{name}: dvconnect peak RSS at {sizes[-1]:,} / at {sizes[0]:,} leads: {growth}")
    write_result("yardstick", figures)
    return figures
