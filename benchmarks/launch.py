"""`python benchmarks/launch.py RESULT COMMAND...`: run COMMAND and write its wall time and
rusage to the file RESULT, as JSON; exits with COMMAND's exit code.

A child's peak RSS (`ru_maxrss`) counts the memory of the process it was forked from, up to its
`exec`: forked from the benchmark runner, which grows as it reads emulator rows and results, a
measured command would carry the runner's size. Spawned from this small process, it carries a
fresh interpreter's few megabytes at most, and its own peak beyond that.
"""

import json
import os
import sys
import time


def main() -> int:
    result, command = sys.argv[1], sys.argv[2:]
    started = time.perf_counter()
    pid = os.posix_spawnp(command[0], command, os.environ)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    with open(result, "w", encoding="utf-8") as file:
        json.dump({"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
                   "peak_rss_kb": usage.ru_maxrss}, file)  # fmt: skip
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
