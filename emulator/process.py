"""Start the emulator as a subprocess (`python -m emulator`) and talk to its admin API.

Used by the demo, the tests and the benchmarks: the emulator always runs in a process of its
own, so what the connector costs is measured apart from what the emulator costs.

    with EmulatorProcess(leads=300, contacts=150) as emu:
        emu.admin("GET", "/status")
        subprocess.run([...], env={**os.environ, **emu.env()})

The emulator prints its connection settings on start; they become attributes here. `env()` gives
the DVCONNECT_* variables (secret included) and REQUESTS_CA_BUNDLE for child processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests

READY = "emulator ready"
START_TIMEOUT = 60.0  # plus the time seeding takes: SEED_ROWS_PER_SECOND on this 2-core machine
SEED_ROWS_PER_SECOND = 5_000
ROW_BYTES = 300  # about one row of a rows file (`--rows`), to scale the start timeout


class EmulatorError(RuntimeError):
    """The emulator did not start, or an admin call failed."""


class EmulatorProcess:
    """One running emulator; use as a context manager or call `start()` / `stop()`."""

    def __init__(
        self,
        *,
        port: int = 0,
        seed: int = 42,
        leads: int = 300,
        contacts: int = 150,
        client_id: str = "emulator-client",
        client_secret: str = "emulator-secret",  # noqa: S107 - the emulator's default
        data_dir: Path | None = None,
        reseed: bool = False,
        faults: str | None = None,
        fault_seed: int | None = None,
        no_change_tracking: Sequence[str] = (),
        token_lifetime: int | None = None,
        retention_days: int | None = None,
        client_certificate: Path | None = None,
        now: str | None = None,
        service_protection: str | None = None,
        rows: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        seeded = (leads + contacts) if rows is None else rows.stat().st_size // ROW_BYTES
        self.start_timeout = START_TIMEOUT + seeded / SEED_ROWS_PER_SECOND
        args = [
            "--port", str(port), "--seed", str(seed), "--leads", str(leads),
            "--contacts", str(contacts), "--client-id", client_id,
        ]  # fmt: skip
        options: list[tuple[str, object]] = [
            ("--data-dir", data_dir),
            ("--faults", faults),
            ("--fault-seed", fault_seed),
            ("--token-lifetime", token_lifetime),
            ("--retention-days", retention_days),
            ("--client-certificate", client_certificate),
            ("--now", now),
            ("--service-protection", service_protection),
            ("--rows", rows),
            ("--no-change-tracking", ",".join(no_change_tracking) or None),
        ]
        for flag, value in options:
            if value is not None:
                args += [flag, str(value)]
        if reseed:
            args.append("--reseed")
        self.args = [*args, *extra_args]
        self.process: subprocess.Popen[str] | None = None
        self.settings: dict[str, str] = {}
        self.stderr_lines: list[str] = []
        self._stderr_reader: threading.Thread | None = None
        self._session = requests.Session()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> EmulatorProcess:
        env = {**os.environ, "EMULATOR_CLIENT_SECRET": self.client_secret}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "emulator", *self.args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._stderr_reader = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_reader.start()
        lines = self._read_settings()
        if READY not in lines:
            self.stop()
            raise EmulatorError(
                "the emulator did not start:\n" + "\n".join(lines + self.stderr_lines)
            )
        self._session.verify = self.ca_bundle
        self._session.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would win
        return self

    def _read_settings(self) -> list[str]:
        assert self.process is not None
        assert self.process.stdout is not None
        stdout = self.process.stdout
        lines: list[str] = []
        timer = threading.Timer(self.start_timeout, self.process.kill)
        timer.start()
        try:
            for raw in stdout:
                line = raw.rstrip("\n")
                lines.append(line)
                if line == READY:
                    break
                key, equals, value = line.partition("=")
                if equals:
                    self.settings[key] = value
        finally:
            timer.cancel()
        return lines

    def _drain_stderr(self) -> None:
        assert self.process is not None
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr_lines.append(line.rstrip("\n"))

    def stop(self) -> int | None:
        """Stop with SIGTERM (then kill after 10 s); returns the exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._session.close()
        if self._stderr_reader is not None:
            self._stderr_reader.join(timeout=5)
        return process.returncode

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- connection settings -----------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self.settings["DVCONNECT_DATAVERSE_URL"]

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/data/v9.2"

    @property
    def authority(self) -> str:
        return self.settings["DVCONNECT_AUTHORITY"]

    @property
    def tenant_id(self) -> str:
        return self.settings["DVCONNECT_TENANT_ID"]

    @property
    def ca_bundle(self) -> str:
        return self.settings["REQUESTS_CA_BUNDLE"]

    @property
    def admin_url(self) -> str:
        return self.settings["EMULATOR_ADMIN_URL"]

    @property
    def token_url(self) -> str:
        return f"{self.authority}/oauth2/v2.0/token"

    def env(self) -> dict[str, str]:
        """Environment for a child process (the connector CLI) pointed at this emulator."""
        return {
            "DVCONNECT_DATAVERSE_URL": self.base_url,
            "DVCONNECT_TENANT_ID": self.tenant_id,
            "DVCONNECT_AUTHORITY": self.authority,
            "DVCONNECT_CLIENT_ID": self.client_id,
            "DVCONNECT_CLIENT_SECRET": self.client_secret,
            "REQUESTS_CA_BUNDLE": self.ca_bundle,
        }

    # -- admin API -------------------------------------------------------------------------

    def admin(self, method: str, path: str, json: Any = None) -> Any:
        """Call `/_emulator{path}`; returns the decoded JSON, raises EmulatorError on 4xx/5xx."""
        response = self._session.request(method, f"{self.admin_url}{path}", json=json, timeout=60)
        if response.status_code >= 400:
            raise EmulatorError(f"{method} {path} -> {response.status_code}: {response.text}")
        return response.json()

    def token(self) -> str:
        """A fresh access token via the client-credentials grant (plain HTTP, no MSAL cache)."""
        response = self._session.post(
            self.token_url,
            data={
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": self.client_secret,
                "scope": f"{self.base_url}/.default",
            },
            timeout=30,
        )
        response.raise_for_status()
        token: str = response.json()["access_token"]
        return token

    def reset(self, **sizes: int) -> Any:
        """Reseed (`seed`, `leads`, `contacts` default to the start options) and clear the rest."""
        return self.admin("POST", "/reset", sizes)

    def rows(self, table: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.admin("GET", f"/tables/{table}")["rows"]
        return rows

    def requests_after(self, seq: int = 0) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self.admin("GET", f"/requests?after={seq}")["requests"]
        return entries
