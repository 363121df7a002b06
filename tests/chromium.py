"""A real headless Chromium for the tests: Debian's `chromium` package, started by the test.

Found through PATH; when missing and the tests run as root on a machine with apt-get (CI's clean
machine), installed once (a lock keeps the xdist workers from installing it together). Each run
gets a fresh profile in a temp dir and no network of its own (no background networking, sync,
component updates or QUIC).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

NAMES = ("chromium", "chromium-browser")
INSTALL_LOCK = Path(tempfile.gettempdir()) / "dvconnect-chromium-install.lock"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--disable-dev-shm-usage",
)  # fmt: skip
VIRTUAL_TIME_MS = 10_000  # plotly draws once the page has loaded: let it finish first


def binary() -> str | None:
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def ensure() -> tuple[str | None, str]:
    """Chromium's path, installing Debian's package when missing; else None and why not."""
    found = binary()
    if found:
        return found, ""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None, "chromium is not installed, and installing it needs root and apt-get"
    with INSTALL_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be installing it right now
        found = binary()
        if found:
            return found, ""
        environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update", "-qq"],
                        ["apt-get", "install", "-y", "-qq", "chromium"]):  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, env=environment,
                                  timeout=600, stdin=subprocess.DEVNULL)  # fmt: skip
            if done.returncode != 0:
                return None, f"`{' '.join(command)}` failed: {done.stderr.strip()[-500:]}"
    found = binary()
    return (found, "") if found else (None, "apt-get installed chromium, but it is not on PATH")


def _run(chromium: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="dvconnect-chromium-") as profile:
        return subprocess.run(
            [chromium, *FLAGS, f"--user-data-dir={profile}",
             f"--virtual-time-budget={VIRTUAL_TIME_MS}", *arguments],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )  # fmt: skip


def dump_dom(chromium: str, page: Path) -> str:
    """The page's DOM once its scripts have run (the charts drawn as SVG)."""
    done = _run(chromium, "--dump-dom", page.resolve().as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def screenshot(chromium: str, page: Path, target: Path, size: tuple[int, int]) -> None:
    """A PNG of the page's top `size` (width, height) pixels."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    done = _run(chromium, f"--screenshot={target}", f"--window-size={size[0]},{size[1]}",
                page.resolve().as_uri())  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert target.exists(), done.stderr[-2000:]
