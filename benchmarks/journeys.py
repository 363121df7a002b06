"""Journeys at scale: 100,000 members through e-mail → if opened → phone call, and one if-step
over 1,000,000 waiting members.

**The flow.** The emulator is seeded with enough contacts for a segment of 100,000 (a `limit`
on all active contacts who accept e-mail); the journey sends each a launch e-mail from the
Sales Inbox queue, waits up to five days for an open, and has the contact's owner call those
who opened. Day 0: the e-mails (created, then sent with `SendEmail`). Opens are recorded on half
of them; day 1: a sync reads them back and the openers get their call; day 6: the others time
out. For each journeys run: the HTTP requests it sent (per 100 writes, target ≤ 1), the
operations Dataverse's service protection counts (every inner request of a `$batch`, a bulk
action once; read from the emulator, whose limits are set out of reach so nothing waits) and the
time the real limit — 6,000 per 5 minutes per user — would impose on them, the connector's CPU
seconds and peak RSS. The yardstick is one request per write.

**The if-step.** A store is filled directly with 1,000,000 members waiting at the same if-step,
each with its e-mail, and `run journeys --dry-run` evaluates the step: once with 1% of the
e-mails opened (the step also plans the openers' calls: 10,000 members acting), once with none
(the evaluation alone). The process's wall time, start-up included (target under 10 s), is set
against the yardstick of one SQLite query counting the members whose condition holds, run on
the same store in the same session.
"""

from __future__ import annotations

import math
import shutil
import sqlite3
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import Measured, cli_env, print_table, run_cli, write_result
from emulator.process import EmulatorProcess
from tests.paths import MAPPINGS

MEMBERS, QUICK_MEMBERS = 100_000, 10_000
WAITING, QUICK_WAITING = 1_000_000, 100_000
PLAN_DAYS = 90
REAL_LIMIT, REAL_WINDOW_S = 6_000, 300  # service protection: requests per 5 minutes (§12.1)
QUEUE = "e31ef1a9-5059-5854-9795-f1b458fe5292"  # the seed's Sales Inbox
START = datetime(2027, 1, 4, 8, 0, tzinfo=UTC)  # a Monday, 09:00 in Zurich
OUT_OF_REACH = "requests=1000000000,window=100000000,execution-ms=1000000000,concurrency=1000"

SEGMENT = """name: everyone
description: Active contacts who accept e-mail, up to the benchmark's size
contact: "statecode eq 0"
channel: email
limit: {limit}
"""
JOURNEY = f"""name: launch
audience:
  segment: everyone
schedule:
  start: 2027-01-04T08:00
  end: 2027-06-30T18:00
  timezone: Europe/Zurich
owner: contact_owner
steps:
  - id: hello
    email:
      from: {{queue: {QUEUE}}}
      subject: "{{{{ contact.firstname or 'Hello' }}}}, meet the new Contoso toolkit"
      body: "<p>Dear {{{{ contact.fullname }}}},</p><p>the toolkit is here.</p>"
  - id: opened
    if:
      condition:
        email: {{step: hello, filter: "opencount gt 0"}}
      timeout: 5d
    then: call
    else: done
  - id: call
    phonecall:
      subject: "Call {{{{ contact.fullname }}}} about the toolkit"
      due: {{business_days: 1}}
  - id: done
    end: true
"""


def _mappings(tmp: Path, members: int) -> Path:
    directory = tmp / "mappings"
    shutil.copytree(MAPPINGS, directory)
    for sub in ("segments", "journeys"):
        shutil.rmtree(directory / sub)
        (directory / sub).mkdir()
    (directory / "segments" / "everyone.yaml").write_text(SEGMENT.format(limit=members))
    (directory / "journeys" / "launch.yaml").write_text(JOURNEY)
    return directory


def _wire(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class Flow:
    """The connector and the emulator at one instant, each journeys run measured."""

    def __init__(self, emulator: EmulatorProcess, tmp: Path, members: int) -> None:
        self.emulator = emulator
        self.store = tmp / "store.sqlite3"
        self.env = cli_env(emulator, self.store,
                           DVCONNECT_MAPPINGS_DIR=str(_mappings(tmp, members)))  # fmt: skip
        self.now = START

    def at(self, moment: datetime) -> None:
        self.now = moment
        self.emulator.admin("POST", "/clock", {"now": _wire(moment)})

    def cli(self, *args: str) -> Measured:
        measured = run_cli(list(args), {**self.env, "DVCONNECT_NOW": _wire(self.now)})
        if measured.returncode != 0:
            raise RuntimeError(f"dvconnect {' '.join(args)} exited {measured.returncode}:\n"
                               f"{measured.stderr[-2000:]}")  # fmt: skip
        return measured

    def operations(self) -> int:
        """What service protection has counted so far (every caller)."""
        windows = self.emulator.admin("GET", "/status")["service_protection"]
        return sum(int(w["requests"]) for w in windows.values())

    def journeys(self, phase: str) -> dict[str, Any]:
        seq = self._last_seq()
        operations = self.operations()
        measured = self.cli("run", "journeys", "--json")
        counts = measured.json()["runs"][0]["counts"]["launch"]
        calls = self.emulator.requests_after(seq)
        operations = self.operations() - operations
        writes = self._writes(counts)
        return {
            "phase": phase,
            "acted": counts["acted"],
            "writes": writes,
            "requests": len(calls),
            "requests_per_100_writes": round(100 * len(calls) / writes, 3) if writes else None,
            "vs_one_request_per_write": f"{writes / len(calls):.0f}x fewer" if writes else "",
            "protection_ops": operations,
            "real_limit_min": round(operations / REAL_LIMIT * REAL_WINDOW_S / 60, 1),
            "journey_s": counts["seconds"],
            "wall_s": measured.wall_s,
            "cpu_s": measured.cpu_s,
            "peak_rss_mb": measured.peak_rss_mb,
        }

    def _writes(self, counts: dict[str, Any]) -> int:
        """Writes the run made: from the outbox, what it finished in this run."""
        with sqlite3.connect(self.store) as db:
            (done,) = db.execute(
                "SELECT count(*) FROM dvc_outbox WHERE job = 'journeys' AND status = 'done' "
                "AND done_at >= ?", (_wire(self.now),)
            ).fetchone()  # fmt: skip
        return int(done)

    def open_half(self) -> int:
        """Record one open on every other launch e-mail (the admin endpoint, in chunks)."""
        with sqlite3.connect(self.store) as db:
            ids = [row[0] for row in db.execute(
                "SELECT record_id FROM dvc_journey_records WHERE step = 'hello' "
                "ORDER BY member_id"
            )][::2]  # fmt: skip
        for start in range(0, len(ids), 5_000):
            rows = [{"activityid": i, "opencount": 1, "lastopenedtime": _wire(self.now)}
                    for i in ids[start : start + 5_000]]  # fmt: skip
            self.emulator.admin("POST", "/tables/email", {"rows": rows})
        return len(ids)

    def _last_seq(self) -> int:
        log = self.emulator.requests_after(0)
        return int(log[-1]["seq"]) if log else 0


def flow(members: int) -> dict[str, Any]:
    contacts = math.ceil(members * 1.4)  # some inactive, some refuse e-mail
    with (
        tempfile.TemporaryDirectory(prefix="dvconnect-bench-") as name,
        EmulatorProcess(leads=3_000, contacts=contacts, data_dir=Path(name) / "emulator",
                        extra_args=["--service-protection", OUT_OF_REACH]) as emulator,
    ):  # fmt: skip
        run = Flow(emulator, Path(name), members)
        run.at(START)
        run.cli("run", "sync")
        segment = run.cli("run", "segments", "--json").json()["runs"][0]["counts"]["everyone"]
        if segment["size"] != members:
            raise RuntimeError(f"the segment has {segment['size']:,} members, not {members:,}")
        run.cli("journeys", "start", "launch")
        rows = [run.journeys("day 0: launch e-mails")]
        opened = run.open_half()
        run.at(START + timedelta(days=1))
        sync = run.cli("run", "sync", "--json")
        rows.append(run.journeys("day 1: openers' calls"))
        run.at(START + timedelta(days=6))
        run.cli("run", "sync")
        rows.append(run.journeys("day 6: time-outs"))
    writes = sum(r["writes"] for r in rows)
    requests = sum(r["requests"] for r in rows)
    operations = sum(r["protection_ops"] for r in rows)
    total = {
        "phase": "all",
        "acted": sum(r["acted"] for r in rows),
        "writes": writes,
        "requests": requests,
        "requests_per_100_writes": round(100 * requests / writes, 3),
        "vs_one_request_per_write": f"{writes / requests:.0f}x fewer",
        "protection_ops": operations,
        "real_limit_min": round(operations / REAL_LIMIT * REAL_WINDOW_S / 60, 1),
        "journey_s": round(sum(r["journey_s"] for r in rows), 1),
        "wall_s": round(sum(r["wall_s"] for r in rows), 1),
        "cpu_s": round(sum(r["cpu_s"] for r in rows), 1),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in rows),
    }
    print_table(f"journeys: {members:,} members, e-mail → if opened (half) → phone call",
                [*rows, total])  # fmt: skip
    return {"members": members, "opened": opened, "day_1_sync_wall_s": sync.wall_s,
            "runs": rows, "total": total}  # fmt: skip


# -- the if-step over a million waiting members -------------------------------------------------


def _fill(store: Path, waiting: int, text: str) -> None:
    """`waiting` members at the if-step, each with its contact and launch e-mail (1% opened)."""
    arrived = _wire(START)
    due = _wire(START + timedelta(days=5))
    with sqlite3.connect(store) as db:
        db.execute("UPDATE dvc_journeys SET version = 1, admitted_at = ?", (arrived,))
        db.execute("INSERT INTO dvc_journey_versions VALUES ('launch', 1, ?, ?)", (text, arrived))
        for start in range(0, waiting, 50_000):
            numbers = range(start + 1, min(start + 50_001, waiting + 1))
            ids = [(n, str(uuid.UUID(int=n)), str(uuid.UUID(int=(1 << 64) + n))) for n in numbers]
            db.executemany(
                "INSERT INTO contact (contactid, firstname, lastname, fullname, statecode) "
                "VALUES (?, 'Ada', ?, 'Ada ' || ?, 0)",
                [(contact, str(n), str(n)) for n, contact, _ in ids],
            )
            db.executemany(
                "INSERT INTO email (activityid, subject, statecode, statuscode, opencount) "
                "VALUES (?, 'Meet the toolkit', 1, 6, ?)",
                [(email, 1 if n % 100 == 0 else 0) for n, _, email in ids],
            )
            db.executemany(
                "INSERT INTO dvc_journey_members (member_id, journey, version, contactid, entry, "
                "step, status, arrived_at, due_at, entered_at) "
                "VALUES (?, 'launch', 1, ?, 1, 'opened', 'active', ?, ?, ?)",
                [(n, contact, arrived, due, arrived) for n, contact, _ in ids],
            )
            db.executemany(
                "INSERT INTO dvc_journey_records (member_id, step, table_name, record_id, "
                "journey) VALUES (?, 'hello', 'email', ?, 'launch')",
                [(n, email) for n, _, email in ids],
            )
        db.execute("ANALYZE")


YARDSTICK = """SELECT count(*) FROM dvc_journey_members m
WHERE m.journey = 'launch' AND m.status = 'active' AND m.step = 'opened'
  AND EXISTS (SELECT 1 FROM dvc_journey_records r JOIN email e ON e.activityid = r.record_id
              WHERE r.member_id = m.member_id AND r.step = 'hello' AND e.opencount > 0)"""


def if_step(waiting: int) -> list[dict[str, Any]]:
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="dvconnect-bench-") as name,
        EmulatorProcess(leads=300, contacts=150, data_dir=Path(name) / "emulator") as emulator,
    ):  # fmt: skip
        tmp = Path(name)
        store = tmp / "store.sqlite3"
        env = cli_env(emulator, store, DVCONNECT_MAPPINGS_DIR=str(_mappings(tmp, waiting)))
        env["DVCONNECT_NOW"] = _wire(START + timedelta(days=1))
        run_cli(["run", "sync", "--json"], env).json()
        emulator.reset(leads=0, contacts=0)
        run_cli(["journeys", "start", "launch"], env)
        started = time.perf_counter()
        _fill(store, waiting, JOURNEY)
        fill_s = time.perf_counter() - started
        for opened in ("1%", "none"):
            if opened == "none":
                with sqlite3.connect(store) as db:
                    db.execute("UPDATE email SET opencount = 0")
            with sqlite3.connect(store) as db:
                started = time.perf_counter()
                (holding,) = db.execute(YARDSTICK).fetchone()
                yardstick_s = time.perf_counter() - started
            measured = run_cli(["run", "journeys", "--dry-run", "--json"], env)
            plan = measured.json()["plan"]["journeys"]
            calls = [step for step in plan if step.get("table") == "phonecall"]
            if len(calls) != holding:
                raise RuntimeError(f"the dry run plans {len(calls):,} calls; {holding:,} opened")
            rows.append({
                "waiting": waiting,
                "opened": opened,
                "calls_planned": len(calls),
                "dry_run_wall_s": measured.wall_s,
                "yardstick_query_s": round(yardstick_s, 3),
                "vs_yardstick": f"{measured.wall_s / yardstick_s:.1f}x",
                "cpu_s": measured.cpu_s,
                "peak_rss_mb": measured.peak_rss_mb,
                "fill_s": round(fill_s, 1),
            })  # fmt: skip
    print_table(f"journeys: one if-step over {waiting:,} waiting members (dry run, SQLite)", rows)
    return rows


# -- the plan of 100,000 members over 90 days ----------------------------------------------------


def plan(members: int, days: int = PLAN_DAYS) -> dict[str, Any]:
    """`journeys plan launch --days 90 --assume opened=30%` on a store synced from the emulator:
    the whole flow for every member on the simulated clock, nothing sent."""
    contacts = math.ceil(members * 1.4)
    with (
        tempfile.TemporaryDirectory(prefix="dvconnect-bench-") as name,
        EmulatorProcess(leads=3_000, contacts=contacts, data_dir=Path(name) / "emulator") as emu,
    ):  # fmt: skip
        run = Flow(emu, Path(name), members)
        run.at(START)
        run.cli("run", "sync")
        run.cli("run", "segments")
        seq = run._last_seq()
        measured = run.cli("journeys", "plan", "launch", "--days", str(days),
                           "--assume", "opened=30%", "--json")  # fmt: skip
        if run.emulator.requests_after(seq):
            raise RuntimeError("the plan sent requests to the org")
        planned = measured.json()
    row = {
        "members": members,
        "days": days,
        "runs": len(planned["runs"]),
        "records": planned["records"],
        "wall_s": measured.wall_s,
        "cpu_s": measured.cpu_s,
        "peak_rss_mb": measured.peak_rss_mb,
        "us_per_record": round(1e6 * measured.cpu_s / max(planned["records"], 1)),
    }
    print_table(f"journeys plan: {members:,} members over {days} days (target under 30 s)", [row])
    return row


def run(quick: bool = False) -> dict[str, Any]:
    figures = {
        "flow": flow(QUICK_MEMBERS if quick else MEMBERS),
        "if_step": if_step(QUICK_WAITING if quick else WAITING),
        "plan": plan(QUICK_MEMBERS if quick else MEMBERS),
    }
    write_result("journeys", figures)
    return figures
