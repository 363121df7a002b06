"""`dvconnect journeys rehearse NAME`: the real journey run on a twin of the org, day by day.

The twin is the emulator seeded from the synced store (`jobs.twin`, personal data masked on
request), started as a process of its own on loopback. The rehearsal never uses the configured
org: it works on a store of its own, new, in a temporary folder, filled by a sync from the twin,
so its sync state, runs, segments and journey state all belong to the twin (a copy of the real
store would carry delta links and leases of the org, and cannot be made of a PostgreSQL store by
copying a file); the settings it runs with are the twin's URL, tenant, client and CA, checked
before the first request.

Then it follows the plan: `journeys plan` on the twin's store gives the instants the journeys job
would run at; the journey is made live in the twin's store; at each instant both clocks (the
emulator's and dvconnect's) move there, the assumed events happen in the twin — for a member whose
assumed if-step `holds` (the plan's hash), the e-mail of the condition is opened (and clicked when
the filter reads clicks), a phone call, task or appointment completed — then sync and the
journeys job run. At the end it reads back from the twin every record created there since the
start, by day, step, owner and table, compares them with the plan (table, id, subject, owner,
regarding, due), and shows the funnel. Nothing touches the real org or the real store.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlsplit

from pydantic import SecretStr
from sqlalchemy import select

from connector import tables as dvc
from connector.clock import parse_stamp, stamp
from connector.errors import ConfigError
from connector.mapping.journeys import ACTIVITIES, Condition, Journey
from connector.settings import Settings
from emulator.process import EmulatorProcess
from jobs.context import Context, build_context
from jobs.journeys.inspect import journey_named, journey_show
from jobs.journeys.lifecycle import change_state
from jobs.journeys.machine import Member
from jobs.journeys.plan import holds, parse_assumptions, plan
from jobs.journeys.validate import validate
from jobs.runner import run_named
from jobs.twin import Masker, export_rows

COMPLETED = {"phonecall": 2, "task": 5, "appointment": 3}  # statuscode of statecode 1
CREATES = (*ACTIVITIES, "lead")  # the tables journeys create records in
COMPARED = ("table", "id", "subject", "owner", "regarding", "due")
SHOWN = 20


def assumed_events(journey: Journey, assume: dict[str, int]) -> dict[str, tuple[str, str, str]]:
    """If-step id → (activity table, step that made it, filter) of the event that makes its
    assumed condition hold in the twin; ConfigError when the twin cannot be made to."""
    events = {}
    for step_id in assume:
        step = journey.step(step_id)
        assert step.if_ is not None
        parts = _parts(step.if_.condition)
        if len(parts) != 1:
            raise ConfigError(f"--assume {step_id}: a rehearsal makes an if-step hold by an "
                              "event on one activity of the journey (an e-mail opened, a call "
                              f"completed); the condition of {step_id!r} is not one such "
                              "part")  # fmt: skip
        events[step_id] = parts[0]
    return events


def _parts(condition: Condition) -> list[tuple[str, str, str]]:
    """The activity parts of a condition made only of them (any other part: none)."""
    if any(getattr(condition, k) for k in ("contact", "lead", "in_segment", "not_in_segment")):
        return []
    found = [(kind, part.step, part.filter) for kind, part in condition.activities()]
    nested = (condition.any or []) + (condition.all or [])
    return [] if nested else found


def rehearse(
    settings: Settings,
    name: str,
    days: int | None,
    assume: list[str],
    mask: bool = False,
    out: IO[str] | None = None,
) -> dict[str, Any]:
    """Rehearse journey `name` on a twin of the store's org; with `out`, every record the twin
    received is written there as a line of JSON (the plan's keys)."""
    real = build_context(settings)
    journey = journey_named(real, name)
    assumed = parse_assumptions(journey, assume)
    events = assumed_events(journey, assumed)
    if days is not None and days < 1:
        raise ConfigError(f"--days {days}: at least one day")
    start = real.clock.now()
    with tempfile.TemporaryDirectory(prefix="dvconnect-rehearsal-") as folder:
        rows = Path(folder) / "rows.jsonl"
        with rows.open("w", encoding="utf-8") as file:
            exported, late = export_rows(real, file, Masker() if mask else None, since=start)
        secret = secrets.token_urlsafe(24)
        twin = EmulatorProcess(rows=rows, now=stamp(start), client_secret=secret,
                               data_dir=Path(folder) / "emulator")  # fmt: skip
        with twin, _trusting(twin.ca_bundle):
            twin_settings = _twin_settings(settings, twin, secret, Path(folder) / "store.sqlite3")
            rehearsal = _Rehearsal(twin, twin_settings, journey, assumed, events)
            result = rehearsal.run(start, days, assume, late, Path(folder) / "plan.jsonl", out)
    return {"twin": {"rows": exported, "masked": mask}, **result}


def _twin_settings(settings: Settings, twin: EmulatorProcess, secret: str, store: Path) -> Settings:
    """The configured settings pointed at the twin and a store of its own; refuses anything
    else (the org's URL must never be reached from a rehearsal)."""
    pointed = settings.model_copy(update={
        "dataverse_url": twin.base_url, "tenant_id": twin.tenant_id, "authority": twin.authority,
        "client_id": twin.client_id, "client_secret": SecretStr(secret),
        "client_certificate_path": None, "client_certificate_thumbprint": None,
        "requests_ca_bundle": Path(twin.ca_bundle), "database_url": f"sqlite:///{store}",
    })  # fmt: skip
    if str(settings.dataverse_url or "").rstrip("/") == twin.base_url.rstrip("/"):
        raise ConfigError("the configured org is at the twin's address: not rehearsed")
    return pointed


@contextmanager
def _trusting(bundle: str) -> Iterator[None]:
    """requests prefers REQUESTS_CA_BUNDLE to a session's own bundle: the twin's, meanwhile."""
    saved = os.environ.get("REQUESTS_CA_BUNDLE")
    os.environ["REQUESTS_CA_BUNDLE"] = bundle
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("REQUESTS_CA_BUNDLE", None)
        else:
            os.environ["REQUESTS_CA_BUNDLE"] = saved


class _Rehearsal:
    """The twin, the settings pointed at it, the journey and what is assumed of it."""

    def __init__(
        self,
        twin: EmulatorProcess,
        settings: Settings,
        journey: Journey,
        assumed: dict[str, int],
        events: dict[str, tuple[str, str, str]],
    ) -> None:
        self.twin = twin
        self.settings = settings
        self.journey = journey
        self.assumed = assumed
        self.events = events
        self.done: set[int] = set()  # members whose assumed event happened

    def at(self, moment: datetime) -> Context:
        """Both clocks at `moment`: the twin's, and a context of the twin's store."""
        self.twin.admin("POST", "/clock", {"now": stamp(moment)})
        ctx = build_context(self.settings.model_copy(update={"now": moment}), online=True,
                            prepare=True)  # fmt: skip
        url = ctx.settings.connection().dataverse_url.rstrip("/")
        if url != self.twin.base_url.rstrip("/") or urlsplit(url).hostname != "127.0.0.1":
            raise ConfigError(f"the rehearsal would reach {url}, not its twin: stopped")
        return ctx

    def run(self, start: datetime, days: int | None, assume: list[str],
            late: set[tuple[str, str]], plan_file: Path,
            out: IO[str] | None) -> dict[str, Any]:  # fmt: skip
        name = self.journey.name
        ctx = self.at(start)
        run_named(ctx, "sync")
        run_named(ctx, "segments")
        problems = validate(ctx, self.journey)
        if problems:
            raise ConfigError(
                f"journey {name!r} is not valid in the twin: " + "; ".join(map(str, problems))
            )
        with plan_file.open("w", encoding="utf-8") as file:
            planned = plan(ctx, name, days, assume, file)
        change_state(ctx, name, "start")
        failed = 0
        for instant in planned["runs"]:
            ctx = self.at(parse_stamp(instant))
            self._events(ctx)
            run_named(ctx, "sync")
            (result,) = run_named(ctx, "journeys")
            failed += int(result.counts.get(name, {}).get("failed", 0))
        received = self._received(ctx, start, planned["runs"], late)
        if out is not None:
            for record in received:
                out.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        shown = journey_show(ctx, name)
        return {
            "journey": name,
            "from": planned["from"],
            "to": planned["to"],
            "assumed": planned["assumed"],
            "runs": planned["runs"],
            "records": len(received),
            "days": _days(received, self.journey),
            "funnel": {
                "members": shown["members"],
                "active": shown["active"],
                "failures": shown["failures"],
            },
            "plan": _compare(plan_file, received, self.journey),
            "failed": failed,
            "first": received[:SHOWN],
        }

    def _events(self, ctx: Context) -> None:
        """The assumed events due now: members who arrived at an assumed if-step in an earlier
        run and for whom it holds get the event on the activity its condition reads."""
        m, r = dvc.journey_members.c, dvc.journey_records.c
        now = ctx.clock.stamp()
        for step_id, (table, made_by, text) in self.events.items():
            step = self.journey.step(step_id)
            with ctx.store.engine.connect() as conn:
                rows = conn.execute(
                    select(m.member_id, m.contactid, m.entry, m.arrived_at, m.due_at, r.record_id)
                    .join(dvc.journey_records, (r.member_id == m.member_id) & (r.step == made_by))
                    .where(m.journey == self.journey.name, m.status == "active",
                           m.step == step_id, m.arrived_at < now)
                    .order_by(m.member_id)
                ).all()  # fmt: skip
            for member_id, contact, entry, arrived, due, record_id in rows:
                if member_id in self.done:
                    continue
                self.done.add(member_id)
                member = Member(f"{contact}/{entry}", step_id, parse_stamp(arrived),
                                parse_stamp(due))  # fmt: skip
                if holds(self.journey, member, step, self.assumed[step_id]):
                    self._happen(table, record_id, text)

    def _happen(self, table: str, record_id: str, text: str) -> None:
        if table == "email":
            engagement = {"opens": 1, **({"clicks": 1} if "linksclicked" in text else {})}
            self.twin.admin("POST", f"/emails/{record_id}/engagement", engagement)
        else:
            self.twin.admin("PATCH", f"/tables/{table}/{record_id}",
                            {"statecode": 1, "statuscode": COMPLETED[table]})  # fmt: skip

    def _received(self, ctx: Context, start: datetime, runs: list[str],
                  late: set[tuple[str, str]]) -> list[dict[str, Any]]:  # fmt: skip
        """Every record created in the twin since `start`, as the plan lists records."""
        r = dvc.journey_records.c
        with ctx.store.engine.connect() as conn:
            steps = dict(conn.execute(
                select(r.record_id, r.step).where(r.journey == self.journey.name)
            ).all())  # fmt: skip
        since = quote(f"createdon ge {stamp(start)}")
        created = []
        for table in CREATES:
            key = "leadid" if table == "lead" else "activityid"
            for row in self.twin.admin("GET", f"/tables/{table}?$filter={since}")["rows"]:
                if (table, row[key]) not in late:
                    created.append((table, key, row))
        leads = _leads(ctx, {row.get("_regardingobjectid_value") for _, _, row in created})
        received = []
        for table, key, row in created:
            run = max((t for t in runs if t <= row["createdon"]), default=runs[0])
            received.append({"run": run, "step": steps.get(row[key], "-"),
                             **_record(table, key, row, leads)})  # fmt: skip
        return sorted(received, key=lambda item: (item["run"], item["table"], item["id"]))


def _leads(ctx: Context, ids: set[str | None]) -> set[str]:
    """Which of `ids` are leads (the twin's rows read by the admin API carry no lookup type)."""
    lead = ctx.store.tables["lead"]
    wanted = sorted(i for i in ids if i)
    found: set[str] = set()
    with ctx.store.engine.connect() as conn:
        for at in range(0, len(wanted), 500):
            chunk = wanted[at : at + 500]
            found.update(conn.execute(select(lead.c.leadid).where(lead.c.leadid.in_(chunk)))
                         .scalars())  # fmt: skip
    return found


def _record(table: str, key: str, row: dict[str, Any], leads: set[str]) -> dict[str, Any]:
    """A twin row with the keys of a planned record."""
    if table == "lead":
        regarding = f"contact {row['_parentcontactid_value']}"
    else:
        about = row["_regardingobjectid_value"]
        regarding = f"{'lead' if about in leads else 'contact'} {about}"
    due = row.get("scheduledstart") if table == "appointment" else row.get("scheduledend")
    return {"table": table, "id": row[key], "owner": row["_ownerid_value"],
            "regarding": regarding, "subject": row["subject"],
            "due": None if table == "email" else due}  # fmt: skip


def _days(received: list[dict[str, Any]], journey: Journey) -> dict[str, dict[str, Any]]:
    """Records by day of their run (in the journey's zone, as the plan counts), step, owner
    and table."""
    days: dict[str, dict[str, Counter[str]]] = {}
    for item in received:
        day = parse_stamp(item["run"]).astimezone(journey.schedule.zone).date().isoformat()
        entry = days.setdefault(day, {"by_step": Counter(), "by_owner": Counter(),
                                      "by_table": Counter()})  # fmt: skip
        entry["by_step"][item["step"]] += 1
        entry["by_owner"][item["owner"] or "-"] += 1
        entry["by_table"][item["table"]] += 1
    return {
        day: {"records": sum(entry["by_table"].values()),
              **{key: dict(counter) for key, counter in entry.items()}}
        for day, entry in sorted(days.items())
    }  # fmt: skip


def _compare(plan_file: Path, received: list[dict[str, Any]], journey: Journey) -> dict[str, Any]:
    """The plan's records of creates against the twin's: what is missing, what is extra."""
    creating = {s.id for s in journey.steps if s.kind in (*ACTIVITIES, "create_lead")}
    expected = set()
    with plan_file.open(encoding="utf-8") as file:
        for line in file:
            item = json.loads(line)
            if item["step"] in creating and not item.get("reused"):
                expected.add(_key(item))
    got = {_key(item) for item in received}
    missing, extra = sorted(expected - got), sorted(got - expected)
    return {
        "records": len(expected),
        "matches": not missing and not extra,
        "missing": [dict(zip(COMPARED, k, strict=True)) for k in missing[:SHOWN]],
        "unexpected": [dict(zip(COMPARED, k, strict=True)) for k in extra[:SHOWN]],
    }


def _key(item: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(item.get(k) for k in COMPARED)
