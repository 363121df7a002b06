"""Progress is drawn on stderr when it is a terminal, and nowhere otherwise."""

from __future__ import annotations

import os
import pty
import subprocess

from tests.e2e.conftest import DVCONNECT, Cli


def test_a_run_on_a_terminal_shows_progress_per_table_and_job(cli: Cli) -> None:
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [DVCONNECT, "run", "all"], cwd=cli.workdir, env=cli.environment(TERM="xterm"),
        stdout=subprocess.PIPE, stderr=follower, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    os.close(follower)
    drawn = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the process closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    os.close(leader)
    stdout, _ = process.communicate(timeout=120)
    assert process.returncode == 0
    shown = drawn.decode(errors="replace")
    for task in ("sync lead", "sync contact", "link-orphans: leads", "journeys"):
        assert task in shown, task
    assert "sync lead" not in stdout  # stdout stays the command's own output
    assert stdout.startswith("sync: succeeded in ")


def test_without_a_terminal_nothing_is_drawn(cli: Cli) -> None:
    result = cli.popen("run", "sync")
    _, stderr = result.communicate(timeout=120)
    assert result.returncode == 0
    assert "sync lead" not in stderr
    assert "\x1b[" not in stderr
