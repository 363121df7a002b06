"""What every benchmark shares: machine info, running the CLI as a measured child, results.

The connector runs as a child process of its own, spawned by a small launcher
(`benchmarks/launch.py`) that measures it with `wait4`: its wall time, CPU seconds and peak RSS
are its alone (the emulator runs in another process, and the runner's own size does not leak
into the child's peak RSS).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emulator.process import EmulatorProcess
from tests.paths import MAPPINGS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DVCONNECT = str(Path(sys.executable).parent / "dvconnect")
LAUNCH = Path(__file__).with_name("launch.py")


def machine() -> dict[str, Any]:
    """Where the figures were measured."""
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        model = next(
            (line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")),
            "",
        )  # fmt: skip
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory / 2**30, 1),
    }


@dataclass(frozen=True)
class Measured:
    """One CLI run: its output and what it cost."""

    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    cpu_s: float
    peak_rss_mb: float

    def json(self) -> Any:
        if self.returncode != 0:
            raise RuntimeError(f"the child exited {self.returncode}:\n{self.stderr[-2000:]}")
        return json.loads(self.stdout)


def run_cli(args: list[str], env: dict[str, str]) -> Measured:
    """Run `dvconnect ARGS` and measure it alone (rusage of that child only)."""
    return run_measured([DVCONNECT, *args], env)


def run_measured(command: list[str], env: dict[str, str]) -> Measured:
    """Run `command` as a child and measure it alone: its wall time and rusage, taken by a small
    launcher it is spawned from (`benchmarks/launch.py`: why its peak RSS needs one)."""
    with (
        tempfile.TemporaryFile("w+") as out,
        tempfile.TemporaryFile("w+") as err,
        tempfile.NamedTemporaryFile("r", suffix=".json") as result,
    ):
        launched = [sys.executable, str(LAUNCH), result.name, *command]
        child = subprocess.run(launched, env=env, stdout=out, stderr=err, check=False)
        usage = json.load(result)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    return Measured(
        returncode=child.returncode,
        stdout=stdout,
        stderr=stderr,
        wall_s=round(usage["wall_s"], 3),
        cpu_s=round(usage["cpu_s"], 3),
        peak_rss_mb=round(usage["peak_rss_kb"] / 1024, 1),
    )


def contacts_for(leads: int) -> int:
    """The contacts the sync benchmarks seed beside `leads` leads: one per twenty, at least 100."""
    return max(leads // 20, 100)


@contextmanager
def scratch_org(
    leads: int, contacts: int, extra_args: Sequence[str] = ()
) -> Iterator[tuple[Path, EmulatorProcess]]:
    """A scratch folder (removed after) and an emulator in it seeded with `leads` leads and
    `contacts` contacts."""
    with (
        tempfile.TemporaryDirectory(prefix="dvconnect-bench-") as name,
        EmulatorProcess(leads=leads, contacts=contacts, data_dir=Path(name) / "emulator",
                        extra_args=extra_args) as emulator,
    ):  # fmt: skip
        yield Path(name), emulator


def cli_env(emulator: EmulatorProcess, database: Path, **extra: str) -> dict[str, str]:
    """The environment of a connector pointed at the emulator, with its own store."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DVCONNECT_")}
    return {
        **base,
        **emulator.env(),
        "DVCONNECT_DATABASE_URL": f"sqlite:///{database}",
        "DVCONNECT_MAPPINGS_DIR": str(MAPPINGS),
        "DVCONNECT_LOG_LEVEL": "WARNING",
        **extra,
    }


def write_result(name: str, figures: dict[str, Any]) -> Path:
    """benchmarks/results/NAME.json with the machine and the time of the run."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    document = {
        "benchmark": name,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "figures": figures,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    """A plain aligned table on stdout."""
    print(f"\n{title}")
    if not rows:
        return
    headers = list(rows[0])
    cells = [[_cell(row.get(h)) for h in headers] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    for line in cells:
        print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
