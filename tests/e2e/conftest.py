"""End-to-end fixtures: the real `dvconnect` CLI pointed at the emulator.

`Cli.run` calls the console script's own entry point (`jobs.cli.main`) in this process, with
the command's environment, folder and captured output — the same code without a Python start-up
per command, which is what keeps the suite fast. `Cli.popen` starts it as a subprocess, for what
needs a process of its own: signals, kill -9, two runs at once.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select

from connector.mapping import load_mapping
from connector.store import Store
from emulator.process import EmulatorProcess
from jobs.cli import main
from tests.paths import MAPPINGS

ROOT = Path(__file__).resolve().parents[2]
DVCONNECT = str(Path(sys.executable).parent / "dvconnect")


@dataclass
class Cli:
    """Runs `dvconnect` with the emulator's settings and a store of its own."""

    emulator: EmulatorProcess
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    postgres_url: str | None = None  # a PostgreSQL store instead of the SQLite file

    @property
    def database(self) -> Path:
        return self.workdir / "store.sqlite3"

    @property
    def database_url(self) -> str:
        return self.postgres_url or f"sqlite:///{self.database}"

    def environment(self, **overrides: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("DVCONNECT_")}
        return {
            **base,
            **self.emulator.env(),
            "DVCONNECT_DATABASE_URL": self.database_url,
            "DVCONNECT_MAPPINGS_DIR": str(MAPPINGS),
            "DVCONNECT_RETRY_BACKOFF": "0.05",  # faults cost retries, not the suite's minutes
            **self.env,
            **overrides,
        }

    def run(self, *args: str, **overrides: str) -> subprocess.CompletedProcess[str]:
        """`dvconnect ARGS` to its end: exit code, stdout and stderr."""
        out, err = io.StringIO(), io.StringIO()
        saved_env, saved_cwd = dict(os.environ), os.getcwd()
        root = logging.getLogger()
        saved_handlers, saved_level = root.handlers[:], root.level
        try:
            os.environ.clear()
            os.environ.update(self.environment(**overrides))
            os.chdir(self.workdir)
            with redirect_stdout(out), redirect_stderr(err):
                try:
                    code = main(list(args))
                except SystemExit as exit_:  # argparse: --help or bad usage
                    code = int(exit_.code or 0)
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
            os.chdir(saved_cwd)
            root.handlers[:] = saved_handlers
            root.setLevel(saved_level)
        return subprocess.CompletedProcess([DVCONNECT, *args], code, out.getvalue(), err.getvalue())

    def schedule_without_ticks(self) -> None:
        """Point the CLI at a copy of the mappings whose jobs never tick while a test runs (each
        at 00:00 on 1 January), for tests of `schedule --now`: a cron tick in the middle of one
        would add runs (the sample schedule ticks six minutes in every fifteen)."""
        mappings = self.workdir / "mappings-without-ticks"
        shutil.copytree(MAPPINGS, mappings)
        never = "".join(f'  {job}: "0 0 1 1 *"\n' for job in load_mapping(MAPPINGS).schedule.jobs)
        (mappings / "schedule.yaml").write_text(f"timezone: UTC\njobs:\n{never}")
        self.env["DVCONNECT_MAPPINGS_DIR"] = str(mappings)

    def popen(self, *args: str, **overrides: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [DVCONNECT, *args],
            cwd=self.workdir,
            env=self.environment(**overrides),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )

    def wait_for(self, condition: Callable[[], bool], seconds: float = 60) -> None:
        """Poll `condition` until it holds; fail the test when it never does."""
        deadline = time.monotonic() + seconds
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {condition.__name__}"
            time.sleep(0.05)

    def wait_until_held(self, process: subprocess.Popen[str]) -> None:
        """Wait until the emulator holds a request of `process` (a `hold` or `commit-hold`
        fault); fail when the process ends first: it never reached that point of its work."""

        def held_or_ended() -> bool:
            holding = bool(self.emulator.admin("GET", "/faults")["holding"])
            return holding or process.poll() is not None

        self.wait_for(held_or_ended)
        assert process.poll() is None, "the process ended before the request it was held at"

    def reading_mid_table(self, table: str = "lead", at_least: int = 1) -> Callable[[], bool]:
        """A condition: a read of `table` has committed `at_least` rows and has pages to go."""

        def mid_read() -> bool:
            if not self.store_ready() or self.store().load_state(table).next_link is None:
                return False
            return len(self.store_rows(table)) >= at_least

        return mid_read

    def store_ready(self) -> bool:
        """Whether the CLI has created the store's tables (the file comes a moment earlier)."""
        if self.postgres_url is None and not self.database.exists():
            return False
        return inspect(self.store().engine).has_table("dvc_runs")

    def store(self) -> Store:
        return Store(self.database_url, load_mapping(MAPPINGS))

    def store_rows(self, table: str) -> dict[str, dict[str, Any]]:
        """Every row of a local table, by primary key, mapped columns only."""
        store = self.store()
        mapping = store.mapping.tables[table]
        columns = [store.tables[table].c[name] for name in mapping.select]
        with store.engine.connect() as conn:
            rows = conn.execute(select(*columns)).mappings()
            return {row[mapping.primary_key]: dict(row) for row in rows}

    def org_rows(self, table: str) -> dict[str, dict[str, Any]]:
        """Every row the emulator holds, by primary key, restricted to the mapped columns."""
        mapping = load_mapping(MAPPINGS).tables[table]
        return {
            row[mapping.primary_key]: {c: row.get(c) for c in mapping.select}
            for row in self.emulator.rows(table)
        }

    def assert_store_matches_org(self) -> None:
        for table in ("lead", "contact"):
            stored, org = self.store_rows(table), self.org_rows(table)
            assert stored.keys() == org.keys(), f"{table}: ids differ"
            assert stored == org, f"{table}: values differ"


@pytest.fixture
def cli(fresh_emulator: EmulatorProcess, tmp_path: Path) -> Cli:
    """A CLI with its own empty store, against the freshly reset shared emulator."""
    return Cli(fresh_emulator, tmp_path)
