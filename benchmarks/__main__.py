"""`python -m benchmarks [--quick] [NAME ...]`: run the benchmarks, print tables, write JSON."""

from __future__ import annotations

import argparse
import time

from benchmarks import ceiling, emulator, journeys, orphans, scoring, segments, sync, throttled

BENCHMARKS = {
    "sync": sync.run,
    "yardstick": ceiling.run,
    "throttled": throttled.run,
    "orphans": orphans.run,
    "segments": segments.run,
    "journeys": journeys.run,
    "scoring": scoring.run,
    "emulator": emulator.run,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"which to run (default all): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a quick look")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}: choose from {', '.join(BENCHMARKS)}")
    started = time.monotonic()
    for name in args.names or list(BENCHMARKS):
        BENCHMARKS[name](quick=args.quick)
    print(f"\nresults in benchmarks/results/ ({time.monotonic() - started:.0f}s)")


if __name__ == "__main__":
    main()
