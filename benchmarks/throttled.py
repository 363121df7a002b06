"""A sync against an org whose service protection limit is set low: time against the floor.

The emulator allows REQUESTS requests per WINDOW seconds per caller and answers the rest with
429 and `Retry-After`. A sync that needs N requests cannot finish sooner than the limit allows:
the first REQUESTS go at once, and each further REQUESTS wait for the window to slide, so the
floor is ceil(N / REQUESTS - 1) windows. The connector's overhead is how far above that floor
it finishes, counted without the process start-up (measured apart); errors must be zero. The
emulator's `Retry-After` is in whole seconds, rounded up, so each throttled window can cost up
to a second above the floor.
"""

from __future__ import annotations

import math
from typing import Any

from benchmarks.common import cli_env, print_table, run_cli, scratch_org, write_result

LEADS = 20_000
CONTACTS = 5_000
PAGE_SIZE = 250
REQUESTS = 20
WINDOW = 5


def run(quick: bool = False) -> dict[str, Any]:
    del quick  # one size: the floor is what matters
    limits = ["--service-protection", f"requests={REQUESTS},window={WINDOW}"]
    with scratch_org(LEADS, CONTACTS, limits) as (tmp, emulator):
        env = cli_env(emulator, tmp / "store.sqlite3", DVCONNECT_PAGE_SIZE=str(PAGE_SIZE))
        startup = run_cli(["status", "--json"], env)
        measured = run_cli(["run", "sync", "--json"], env)
        result = measured.json()["runs"][0]
        calls = emulator.requests_after(0)
    answered = [c for c in calls if c["status"] == 200]
    throttled = [c for c in calls if c["status"] == 429]
    floor = math.ceil(len(answered) / REQUESTS - 1) * WINDOW
    figures = {
        "leads": LEADS,
        "contacts": CONTACTS,
        "limit": f"{REQUESTS} requests per {WINDOW} s",
        "requests_answered": len(answered),
        "requests_throttled": len(throttled),
        "errors": 0 if result["outcome"] == "succeeded" else 1,
        "wall_s": measured.wall_s,
        "startup_s": startup.wall_s,
        "floor_s": floor,
        "overhead_above_floor": round((measured.wall_s - startup.wall_s) / floor - 1, 3),
    }
    print_table(
        f"throttled sync ({figures['limit']}; the floor is what the limit allows)",
        [
            {
                k: figures[k]
                for k in (
                    "requests_answered",
                    "requests_throttled",
                    "errors",
                    "wall_s",
                    "startup_s",
                    "floor_s",
                    "overhead_above_floor",
                )
            }
        ],
    )
    write_result("throttled", figures)
    return figures
