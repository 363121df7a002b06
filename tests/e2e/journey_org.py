"""The org a journeys test runs against: the emulator and the CLI at one instant.

Time moves by setting the emulator's clock and `DVCONNECT_NOW` to the same instant: nothing
sleeps for a wait.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from tests.e2e.conftest import Cli

START = datetime(2027, 1, 4, 8, 0, tzinfo=UTC)  # Monday 09:00 in Zurich: the launch starts
ZURICH = ZoneInfo("Europe/Zurich")
QUEUE = "e31ef1a9-5059-5854-9795-f1b458fe5292"
SENDER, TO = 1, 2


class Org:
    """The emulator and the CLI at one instant."""

    def __init__(self, cli: Cli) -> None:
        self.cli = cli
        self.now = START

    @classmethod
    def synced(cls, cli: Cli) -> Org:
        """The 3,000-lead seed (the shared 300-lead one holds no conference decision maker),
        both clocks at START, every job run once: where the journeys tests begin."""
        cli.emulator.reset(leads=3000, contacts=1500)
        org = cls(cli)
        org.at(START)
        org.run("run", "all")
        return org

    def at(self, moment: datetime) -> None:
        self.now = moment
        self.cli.emulator.admin("POST", "/clock", {"now": moment.strftime("%Y-%m-%dT%H:%M:%SZ")})

    def advance(self, **delta: float) -> None:
        self.at(self.now + timedelta(**delta))

    def run(self, *args: str, code: int = 0) -> dict[str, Any]:
        result = self.cli.run(*args, DVCONNECT_NOW=self.now.strftime("%Y-%m-%dT%H:%M:%SZ"))
        assert result.returncode == code, result.stderr[-3000:]
        return json.loads(result.stdout) if "--json" in args else {"stdout": result.stdout}

    def rows(self, table: str) -> list[dict[str, Any]]:
        return self.cli.emulator.rows(table)

    def parties(self, activity: str) -> list[tuple[int, str | None]]:
        """(participation type, party id) of an activity's parties."""
        return sorted(
            (p["participationtypemask"], p["_partyid_value"])
            for p in self.rows("activityparty")
            if p["_activityid_value"] == activity
        )

    def writes_since(self, seq: int) -> list[dict[str, Any]]:
        return [r for r in self.cli.emulator.requests_after(seq) if r["method"] != "GET"]

    def last_seq(self) -> int:
        log = self.cli.emulator.requests_after(0)
        return log[-1]["seq"] if log else 0

    def members(self, segment: str = "contoso-decision-makers") -> dict[str, list[str]]:
        """Segment members by contact, with their leads, as the store saved them."""
        store = self.cli.store()
        with store.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT contactid, lead_ids FROM dvc_segment_members WHERE segment = ?",
                (segment,),
            ).all()
        return {contact: (leads or "").split(",") for contact, leads in rows}
