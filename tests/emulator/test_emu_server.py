"""The program: start-up lines, keep-alive, persistence of the data dir, clean stops, secrecy."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import ssl
from pathlib import Path

import pytest
import requests

from emulator.process import EmulatorProcess
from emulator.server import main
from tests.emulator.conftest import Api

LINES = [
    r"DVCONNECT_DATAVERSE_URL=https://127\.0\.0\.1:(\d+)",
    r"DVCONNECT_TENANT_ID=00000000-0000-0000-0000-0000000000aa",
    r"DVCONNECT_AUTHORITY=https://127\.0\.0\.1:\1/00000000-0000-0000-0000-0000000000aa",
    r"DVCONNECT_CLIENT_ID=my-client",
    r"REQUESTS_CA_BUNDLE=(/.+)/ca\.pem",
    r"EMULATOR_ADMIN_URL=https://127\.0\.0\.1:\1/_emulator",
    r"emulator ready",
]


def test_it_prints_its_settings_then_serves_until_sigterm() -> None:
    emulator = EmulatorProcess(
        leads=10,
        contacts=5,
        client_id="my-client",
        no_change_tracking=["contact"],
        now="2026-01-02T03:04:05Z",
        token_lifetime=120,
        faults="503:first=1",
        fault_seed=3,
    ).start()
    try:
        assert emulator.process is not None
        printed = "\n".join(f"{k}={v}" for k, v in emulator.settings.items()) + "\nemulator ready"
        assert re.fullmatch("\n".join(LINES), printed), printed
        data_dir = Path(emulator.ca_bundle).parent
        assert data_dir.is_dir()
        status = emulator.admin("GET", "/status")
        assert status["tables"]["lead"]["rows"] == 10
        assert status["tables"]["contact"]["change_tracking"] is False
        assert status["now"].startswith("2026-01-02T03:0")
        assert emulator.admin("GET", "/config")["token_lifetime"] == 120
        assert emulator.admin("GET", "/faults")["seed"] == 3
        headers = {"Authorization": f"Bearer {emulator.token()}"}
        whoami = f"{emulator.api_url}/WhoAmI"
        first, second = (
            requests.get(whoami, headers=headers, verify=emulator.ca_bundle, timeout=30)
            for _ in range(2)
        )
        assert (first.status_code, second.status_code) == (503, 200)
    finally:
        assert emulator.stop() == 0
    assert not data_dir.exists()


def test_connections_are_kept_alive_over_tls(emulator: EmulatorProcess) -> None:
    context = ssl.create_default_context(cafile=emulator.ca_bundle)
    port = int(emulator.base_url.rsplit(":", 1)[1])
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    token = emulator.token()
    sockets = set()
    for _ in range(3):
        connection.request(
            "GET", "/api/data/v9.2/WhoAmI", headers={"Authorization": f"Bearer {token}"}
        )
        response = connection.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["UserId"]
        sockets.add(id(connection.sock))
    assert len(sockets) == 1
    connection.close()


def test_a_data_dir_keeps_the_org_between_runs(tmp_path: Path) -> None:
    data_dir = tmp_path / "org"
    with EmulatorProcess(leads=30, contacts=10, data_dir=data_dir) as first:
        new_id = first.admin("POST", "/tables/lead", {"rows": [{"lastname": "Kept"}]})["ids"][0]
        ca = Path(first.ca_bundle).read_bytes()
    again = EmulatorProcess(leads=99, contacts=10, data_dir=data_dir).start()
    try:
        assert again.admin("GET", "/tables/lead/count") == {"count": 31}
        assert again.admin("GET", f"/tables/lead/{new_id}")["row"]["lastname"] == "Kept"
        assert Path(again.ca_bundle).read_bytes() == ca
        assert again.process is not None
        again.process.send_signal(signal.SIGINT)
        assert again.process.wait(timeout=10) == 0
    finally:
        again.stop()
    with EmulatorProcess(leads=12, contacts=10, data_dir=data_dir, reseed=True) as reseeded:
        assert reseeded.admin("GET", "/tables/lead/count") == {"count": 12}


def test_the_client_secret_never_appears_in_the_output(tmp_path: Path) -> None:
    secret = "s3cr3t-" + os.urandom(6).hex()
    emulator = EmulatorProcess(
        leads=5, contacts=5, client_secret=secret, extra_args=["--log-level", "DEBUG"]
    ).start()
    try:
        token_url = emulator.token_url
        for candidate in (secret, "wrong-" + secret):
            requests.post(
                token_url,
                data={
                    "grant_type": "client_credentials",
                    "client_id": emulator.client_id,
                    "client_secret": candidate,
                    "scope": f"{emulator.base_url}/.default",
                },
                verify=emulator.ca_bundle,
                timeout=30,
            )
        headers = {"Authorization": f"Bearer {emulator.token()}"}
        requests.get(
            f"{emulator.api_url}/leads", headers=headers, verify=emulator.ca_bundle, timeout=30
        )
    finally:
        assert emulator.stop() == 0
    assert emulator.process is not None
    assert emulator.process.stdout is not None
    rest = emulator.process.stdout.read()
    output = "\n".join([*emulator.settings.values(), rest, *emulator.stderr_lines])
    assert secret not in output
    assert emulator.stderr_lines  # DEBUG logging did write something


def test_bad_options_return_2_without_serving(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--no-change-tracking", "campaign"]) == 2
    assert main(["--faults", "drop:every=x"]) == 2
    assert main(["--now", "yesterday"]) == 2
    assert main(["--port", "many"]) == 2
    assert main(["--service-protection", "requests=lots"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "campaign" in captured.err
    assert "'drop:every=x'" in captured.err
    assert "--service-protection: 'requests=lots'" in captured.err


def test_responses_carry_a_date_from_the_emulator_clock(web: Api) -> None:
    web.admin("POST", "/clock", {"now": "2031-05-06T07:08:09Z"})
    web.renew()
    response = web.get("WhoAmI")
    assert response.headers["Date"].startswith("Tue, 06 May 2031 07:08:")
    assert response.headers["Date"].endswith(" GMT")
