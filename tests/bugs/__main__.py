"""`python -m tests.bugs [NAME ...]`: plant each known deliberate bug and check the suite sees it.

Each `*.patch` here is a bug that once passed the suite, or would be costly if it ever did:

- `id-namespace`: the contacts' uuid5 namespace changes (every contact duplicated on upgrade);
- `cursor-lost-on-resume`: a resumed full read stops asking for change tracking, so the table
  silently falls back to the `modifiedon` watermark and stops seeing deletions;
- `page-and-cursor-apart`: a page's rows and the cursor after it commit in two transactions;
- `actions-resent-unguarded`: an action whose answer was lost is sent again without reading its
  guard (an e-mail sent twice under a commit-then-drop fault).

For each, the patch is applied to a clean worktree of HEAD and the tests named for it run there
(`PYTHONPATH` points every process, the CLI's children included, at the patched code). A bug
is caught when those tests fail; the command exits 1 when any bug goes unseen, or its patch no
longer applies (then update the patch: the code it plants into has moved).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

CATCHERS = {
    "id-namespace": ["tests/unit/test_keys.py"],
    "cursor-lost-on-resume": [
        "tests/unit/test_sync.py",
        "tests/resilience/test_sync_resilience.py",
    ],
    "page-and-cursor-apart": ["tests/unit/test_sync.py"],
    "actions-resent-unguarded": [
        "tests/resilience/test_journeys_resilience.py::"
        "test_faults_on_journey_writes_change_nothing_in_the_outcome",
    ],
}


def planted(name: str) -> tuple[bool, str]:
    """Whether the tests named for bug `name` fail with it planted, and what they said."""
    with tempfile.TemporaryDirectory(prefix=f"dvconnect-bug-{name}-") as tmp:
        tree = Path(tmp) / "tree"
        git = [shutil.which("git") or "git", "-C", str(ROOT)]
        subprocess.run([*git, "worktree", "add", "--detach", str(tree), "HEAD"], check=True,
                       capture_output=True)  # fmt: skip
        try:
            patch = str(HERE / f"{name}.patch")
            applied = subprocess.run([*git[:1], "-C", str(tree), "apply", patch],
                                     capture_output=True, text=True)  # fmt: skip
            if applied.returncode != 0:
                return False, f"the patch no longer applies: {applied.stderr.strip()}"
            env = {**os.environ, "PYTHONPATH": str(tree)}
            tests = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                 "-n", "2", *CATCHERS[name]],
                cwd=tree, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            summary = (tests.stdout.strip().splitlines() or ["(no output)"])[-1]
            return tests.returncode != 0 and " failed" in summary, summary
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", str(tree)], check=False,
                           capture_output=True)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bugs")
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(CATCHERS))
    names = parser.parse_args().names or list(CATCHERS)
    unseen = 0
    for name in names:
        caught, summary = planted(name)
        unseen += not caught
        print(f"{name:<26} {'caught' if caught else 'NOT CAUGHT'}: {summary}")
    return 1 if unseen else 0


if __name__ == "__main__":
    sys.exit(main())
