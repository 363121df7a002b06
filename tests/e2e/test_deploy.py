"""The deployment files name commands and options that exist (`docker build` cannot run here)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess

import yaml

from tests.e2e.conftest import DVCONNECT
from tests.paths import ROOT


def instructions() -> dict[str, list[str]]:
    """The Dockerfile's instructions by keyword, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            found.setdefault(keyword.upper(), []).append(rest.strip())
    return found


def assert_exists(argv: list[str]) -> None:
    """`argv` is a dvconnect command whose `--help` lists each option it uses."""
    assert argv[0].endswith("dvconnect"), argv
    command = argv[1]
    shown = subprocess.run([DVCONNECT, command, "--help"], capture_output=True, text=True,
                           check=False)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    for option in (a for a in argv[2:] if a.startswith("--")):
        assert option in shown.stdout, f"dvconnect {command} has no {option}"


def test_the_dockerfile_runs_the_scheduler_as_a_user_and_checks_its_health() -> None:
    found = instructions()
    (cmd,) = found["CMD"]
    assert json.loads(cmd) == ["dvconnect", "schedule"]
    assert_exists(json.loads(cmd))
    (check,) = found["HEALTHCHECK"]
    probe = json.loads(check[check.index("CMD ") + 4 :])
    assert probe[:2] == ["dvconnect", "health"]
    assert_exists(probe)
    (user,) = found["USER"]
    assert user not in ("root", "0")
    env = dict(pair.split("=", 1) for pair in shlex.split(" ".join(found["ENV"])))
    assert found["EXPOSE"] == [env["DVCONNECT_METRICS_PORT"]]
    assert env["DVCONNECT_METRICS_HOST"] == "0.0.0.0"  # noqa: S104 (reached from outside)


def test_compose_runs_two_instances_on_postgresql_and_systemd_runs_the_scheduler() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    instances = [s for s in compose["services"].values() if s.get("build") == "."]
    assert len(instances) == 2
    for service in instances:
        assert service["environment"]["DVCONNECT_DATABASE_URL"].startswith("postgresql://")
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    unit = (ROOT / "deploy" / "dvconnect.service").read_text()
    (start,) = re.findall(r"^ExecStart=(.+)$", unit, re.MULTILINE)
    assert_exists(shlex.split(start))
    assert "User=dvconnect" in unit
