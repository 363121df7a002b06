"""Full and incremental sync: records per second, connector CPU and peak RSS, requests.

For each size the emulator is seeded in its own process; the connector syncs into an empty
SQLite store (full read), then 1% of the leads change and it syncs again (incremental). The
naive alternative to an incremental sync is reading everything again, so the incremental run is
reported as a ratio of the full one. Peak RSS is compared between the sizes: it must be flat.
"""

from __future__ import annotations

from typing import Any

from benchmarks.common import (
    cli_env,
    contacts_for,
    print_table,
    run_cli,
    scratch_org,
    write_result,
)

SIZES = (100_000, 1_000_000)
QUICK_SIZES = (20_000, 200_000)


def _sync(env: dict[str, str]) -> tuple[dict[str, Any], Any]:
    measured = run_cli(["run", "sync", "--json"], env)
    run = measured.json()["runs"][0]
    assert run["outcome"] == "succeeded", run
    return run, measured


def measure(leads: int) -> dict[str, Any]:
    """Full then incremental sync of `leads` leads (and leads/20 contacts)."""
    contacts = contacts_for(leads)
    with scratch_org(leads, contacts) as (tmp, emulator):
        env = cli_env(emulator, tmp / "store.sqlite3")
        startup = run_cli(["status", "--json"], env)  # imports and start-up, no sync
        full_run, full = _sync(env)
        rows = sum(c["read"] for c in full_run["counts"].values())

        changed = leads // 100
        emulator.admin("POST", "/activity", {"table": "lead", "updates": changed, "seed": 1})
        incremental_run, incremental = _sync(env)
        assert incremental_run["counts"]["lead"]["full"] is False

    sync_cpu = max(full.cpu_s - startup.cpu_s, 1e-9)
    return {
        "leads": leads,
        "contacts": contacts,
        "rows": rows,
        "full_wall_s": full.wall_s,
        "full_rows_per_s": round(rows / full.wall_s),
        "full_cpu_s": full.cpu_s,
        "startup_cpu_s": startup.cpu_s,
        "rows_per_cpu_s": round(rows / sync_cpu),
        "peak_rss_mb": full.peak_rss_mb,
        "full_requests": full_run["requests"],
        "changed_leads": changed,
        "incremental_rows": incremental_run["counts"]["lead"]["read"],
        "incremental_wall_s": incremental.wall_s,
        "incremental_requests": incremental_run["requests"],
        "incremental_time_vs_full": round(incremental.wall_s / full.wall_s, 3),
        "incremental_requests_vs_full": round(
            incremental_run["requests"] / full_run["requests"], 3
        ),
    }


def run(quick: bool = False) -> dict[str, Any]:
    sizes = QUICK_SIZES if quick else SIZES
    results = [measure(n) for n in sizes]
    figures = {
        "sizes": results,
        "peak_rss_growth": round(results[-1]["peak_rss_mb"] / results[0]["peak_rss_mb"], 3),
    }
    print_table(
        "sync: full read, then 1% of leads changed (connector measured alone)",
        [
            {
                "leads": r["leads"],
                "rows/s": r["full_rows_per_s"],
                "rows/cpu-s": r["rows_per_cpu_s"],
                "peak MB": r["peak_rss_mb"],
                "requests": r["full_requests"],
                "incr rows": r["incremental_rows"],
                "incr requests": r["incremental_requests"],
                "incr time/full": r["incremental_time_vs_full"],
            }
            for r in results
        ],
    )
    print(f"peak RSS at {sizes[-1]:,} / at {sizes[0]:,} leads: {figures['peak_rss_growth']}")
    write_result("sync", figures)
    return figures
