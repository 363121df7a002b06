"""The `dvconnect` command line: the composition root that builds a Context once per command.

Exit codes: 0 success; 1 a job ran but some records failed; 2 bad configuration, mappings or
usage (nothing written); 3 Dataverse or the store unreachable or unusable (a store behind this
release's schema revision: `dvconnect db upgrade`; one made by a newer release), or
authentication refused; 4 the job did not run (another run holds its lease, or a precondition
is unmet); 130 a run stopped by Ctrl-C or SIGTERM (what it saved is kept; the next run
continues from there). `--json` prints one JSON document on stdout, errors included; logs go to
stderr. Read-only commands (`status`, `check`, every `--dry-run`, listings) never create or
change anything in the store.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import IO, Any

from sqlalchemy.exc import SQLAlchemyError

from connector.errors import ConfigError, DvconnectError
from connector.mapping import Segment, load_mapping, named
from connector.settings import Settings, load_settings
from connector.store import store_error
from jobs.context import LOG_FIELDS, Context, build_context

log = logging.getLogger("dvconnect")
INTERRUPTED = 130
UNEXPECTED = 70  # a bug of ours (EX_SOFTWARE): the log at DEBUG level holds the traceback


_RECORD_ATTRIBUTES = {*logging.makeLogRecord({}).__dict__, "message", "asctime", "taskName"}


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the line's fields as keys
    (the run under way — job, run_id — and what the line passed in `extra`: table, counts, …)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(LOG_FIELDS.get())
        entry.update((k, v) for k, v in record.__dict__.items() if k not in _RECORD_ATTRIBUTES)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(settings: Settings) -> None:
    """One stderr handler, text or JSON lines, at the configured level."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    logging.getLogger("msal").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


GRADES = ("hot", "warm", "cold")


def _plain(value: Any) -> str:
    """A plan value on one line: mappings as compact JSON, the rest as text."""
    return (
        json.dumps(value, ensure_ascii=False, sort_keys=True)
        if isinstance(value, dict)
        else str(value)
    )


def _print_json(document: Any) -> None:
    json.dump(document, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


@contextmanager
def _output(path: str) -> Iterator[IO[str]]:
    """A file written whole or not at all: a failed command leaves what was there."""
    target = Path(path)
    partial = target.with_name(f".{target.name}.partial")
    try:
        out = partial.open("w", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write: {exc.strerror}") from None
    try:
        with out:
            yield out
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


@contextmanager
def _stop_on_signals(ctx: Context) -> Iterator[None]:
    """SIGINT/SIGTERM ask the running job to finish its page and stop; a second one aborts."""

    def stop(signum: int, _frame: FrameType | None) -> None:
        if ctx.stop.is_set():
            raise KeyboardInterrupt
        log.warning("%s: finishing the current page, then stopping", signal.Signals(signum).name)
        ctx.stop.set()

    if threading.current_thread() is not threading.main_thread():  # signals reach main only
        yield
        return
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.check import check_online
    from jobs.journeys.validate import validate

    ctx = build_context(settings)
    mapping = ctx.mapping
    errors = [*mapping.segment_errors.values(), *mapping.journey_errors.values(),
              *mapping.model_errors.values()]  # fmt: skip
    for journey in mapping.journeys.values():
        errors += validate(ctx, journey)
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if errors:
        return 2
    segments = f", {len(mapping.segments)} segments" if mapping.segments else ""
    journeys = f", {len(mapping.journeys)} journeys" if mapping.journeys else ""
    n = len(mapping.models)
    models = f", {n} scoring model{'s' if n != 1 else ''}" if n else ""
    print(f"mappings ok: {', '.join(mapping.tables)}{segments}{journeys}{models} "
          f"({settings.mappings_dir})")  # fmt: skip
    for table in mapping.tables.values():
        if not table.change_tracking and table.full_read_every is not None:
            print(
                f"note: {table.name} follows modifiedon, which cannot see deletions: it is read "
                f"in full every {table.full_read_every} (full_read_every)"
            )
    if args.offline:
        return 0
    ctx.online()
    problems, notes = check_online(ctx)
    for note in notes:
        print(f"note: {note}")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 2
    print(f"dataverse ok: every mapped column exists ({settings.dataverse_url})")
    return 0


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.progress import bars, on_terminal
    from jobs.runner import JOBS, plan_named, run_named

    ctx = build_context(settings, online=True, prepare=not args.dry_run)
    if args.dry_run:
        plan = plan_named(ctx, args.job)
        if args.json:
            _print_json({"dry_run": True, "plan": plan})
        else:
            for job, steps in plan.items():
                for step in steps:
                    print(f"{job}: " + ", ".join(f"{k} {_plain(v)}" for k, v in step.items()))
        return 0
    with _stop_on_signals(ctx), bars(on_terminal() and not args.json) as progress:
        ctx.progress = progress
        results = run_named(ctx, args.job)
    if args.json:
        _print_json({"runs": [asdict(r) for r in results]})
    else:
        for result in results:
            took = f"{result.seconds:.1f}s, {result.requests} requests"
            print(f"{result.job}: {result.outcome} in {took}")
            for line in JOBS[result.job].summary(result.counts):
                print(f"  {line}")
        if ctx.stop.is_set():
            print("stopped: what is listed above is saved; the next run continues from there")
    if ctx.stop.is_set():
        return INTERRUPTED
    return 1 if any(r.outcome == "partial" for r in results) else 0


def status_document(ctx: Context) -> dict[str, Any]:
    """Each job's latest run, next run and health; the sync state, lag and latest read of each
    table; segment sizes and their change; journeys' states, members per step and failed;
    scoring; recent runs; writes waiting to be sent."""
    from connector.outbox import pending_by_job
    from jobs.journeys.inspect import journey_list
    from jobs.runner import JOBS
    from jobs.scoring import scoring_status
    from jobs.segments import last_evaluation
    from jobs.status import jobs_status, journey_steps, lag_seconds, last_reads, previous_size

    reads = last_reads(ctx)
    tables = {}
    for name in ctx.mapping.tables:
        state = ctx.store.load_state(name)
        tables[name] = {
            "rows": ctx.store.row_count(name),
            "phase": state.phase,
            "mode": state.mode,
            "resumable": state.next_link is not None,
            "last_sync_at": state.last_sync_at,
            "last_full_sync_at": state.last_full_sync_at,
            "watermark": state.watermark,
            "rejected": [asdict(r) for r in ctx.store.rejects(name)],
            "lag_seconds": lag_seconds(ctx, state.last_sync_at),
            "last_read": reads.get(name),
        }
    runs = [asdict(r) for r in ctx.store.recent_runs()]
    segments = {}
    for name in ctx.mapping.segments:
        last = last_evaluation(ctx, name)
        if last is not None:
            before = previous_size(ctx, name)
            last = {**last, "change": None if before is None else last["size"] - before}
        segments[name] = last
    journeys = journey_list(ctx)
    for entry in journeys:
        if entry["state"] != "invalid":
            entry["steps"] = journey_steps(ctx, entry["journey"])
            entry["failed"] = entry["members"].get("failed", 0)
    return {
        "store": "empty" if not ctx.store.exists else "ready",
        "jobs": jobs_status(ctx, list(JOBS)),
        "tables": tables,
        "runs": runs,
        "segments": segments,
        "journeys": journeys,
        "scoring": scoring_status(ctx),
        "pending_writes": pending_by_job(ctx.store),
    }


def _span(seconds: float) -> str:
    """A duration in words, to the minute: `42s`, `15m`, `3h05m`, `2d04h`."""
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m"
    if minutes < 24 * 60:
        return f"{minutes // 60}h{minutes % 60:02d}m"
    return f"{minutes // 1440}d{minutes % 1440 // 60:02d}h"


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.runner import JOBS

    document = status_document(build_context(settings))
    if args.json:
        _print_json(document)
        return 0
    if document["store"] == "empty":
        print(f"the store is empty: nothing synced yet ({settings.database_url})")
    print("jobs:")
    for job, j in document["jobs"].items():
        last = j["last_run"]
        ran = "never run"
        if last:
            took = f", {last['seconds']:.0f}s" if last["seconds"] is not None else ""
            ran = (f"#{last['run_id']} {last['outcome']} {last['started_at']}{took}, "
                   f"{last['requests']} requests")  # fmt: skip
        nxt = f"; next {j['next_run']} ({j['cron']})" if j["next_run"] else "; not scheduled"
        print(f"  {job}: {ran}{nxt}")
        if last and last["counts"] and last["outcome"] in ("succeeded", "partial"):
            for line in JOBS[job].summary(last["counts"]):
                print(f"    {line}")
        if j["problem"]:
            print(f"    unhealthy: {j['problem']}")
    follows = {"delta": "follows change tracking", "watermark": "follows modifiedon"}
    print("tables:")
    for name, t in document["tables"].items():
        follow = follows.get(t["mode"], "not synced yet")
        extra = ", next run resumes a read under way" if t["resumable"] else ""
        when = t["last_sync_at"] or "never"
        lag = f" (lag {_span(t['lag_seconds'])})" if t["lag_seconds"] is not None else ""
        print(f"  {name}: {t['rows']:,} rows, {follow}, last sync {when}{lag}{extra}")
        if t["last_read"]:
            print(f"    last read: {t['last_read']['why']}")
        for reject in t["rejected"]:
            print(f"    not stored: {reject['record_id']}: {reject['reason']}")
    if document["segments"]:
        print("segments:")
        for name, last in document["segments"].items():
            size = "not evaluated yet"
            if last:
                size = f"{last['size']:,} members at {last['evaluated_at']}"
                if last["change"] is not None:
                    size += (f" ({last['change']:+,} since the previous evaluation: "
                             f"{last['entered']:,} in, {last['exited']:,} out)")  # fmt: skip
            print(f"  {name}: {size}")
    if document["journeys"]:
        print("journeys:")
        for entry in document["journeys"]:
            if entry["state"] == "invalid":
                print(f"  {entry['journey']}: invalid: {entry['error']}")
                continue
            members = ", ".join(f"{n:,} {k}" for k, n in sorted(entry["members"].items()))
            version = f" (version {entry['version']})" if entry["version"] else ""
            print(f"  {entry['journey']}: {entry['state']}{version}"
                  + (f", members {members}" if members else ""))  # fmt: skip
            if entry["steps"]:
                steps = ", ".join(f"{step} {n:,}" for step, n in entry["steps"].items())
                print(f"    active at: {steps}")
    if document["scoring"]:
        print("scoring:")
        for name, model in document["scoring"].items():
            grades = ", ".join(
                f"{model['grades'].get(g, 0):,} {g}" for g in ("hot", "warm", "cold")
            )
            per_day = ", ".join(f"{d}: {n}" for d, n in model["hand_offs_per_day"].items())
            print(f"  {name}: {grades}; {model['sales_ready']:,} sales-ready; hand-offs "
                  f"{per_day or 'none in the last 7 days'}")  # fmt: skip
    for job, count in document["pending_writes"].items():
        print(f"writes waiting to be sent: {job}: {count} (the next run sends them first)")
    print("recent runs:")
    for run in document["runs"]:
        print(
            f"  #{run['run_id']} {run['job']} {run['outcome']} started {run['started_at']}, "
            f"{run['requests']} requests" + (f": {run['error']}" if run["error"] else "")
        )
    return 0


def cmd_state_reset(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.sync import sync_lease

    tables = load_mapping(settings.mappings_dir).tables
    if args.table not in tables:  # before the store is touched
        raise ConfigError(
            f"unknown table {args.table!r}: the mapping has {', '.join(sorted(tables))}"
        )
    ctx = build_context(settings, prepare=True)
    with ctx.store.lease(sync_lease(args.table)):  # never under a running sync of the table
        ctx.store.reset_state(args.table)
    print(f"{args.table}: cursor forgotten; the next sync reads the whole table")
    return 0


def _segment(ctx: Context, name: str) -> Segment:
    return named("segment", name, ctx.mapping.segments, ctx.mapping.segment_errors)


def cmd_segments_list(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.segments import last_evaluation

    ctx = build_context(settings)
    document: dict[str, dict[str, Any]] = {
        name: {"description": s.description, "last": last_evaluation(ctx, name)}
        for name, s in ctx.mapping.segments.items()
    }
    invalid = {file: str(error) for file, error in ctx.mapping.segment_errors.items()}
    if args.json:
        _print_json({"segments": document, "invalid": invalid})
    else:
        for name, entry in document.items():
            last = entry["last"]
            size = f"{last['size']:,} members ({last['evaluated_at']})" if last else "not evaluated"
            about = f" - {entry['description']}" if entry["description"] else ""
            print(f"{name}: {size}{about}")
        for error in invalid.values():
            print(f"invalid: {error}", file=sys.stderr)
    return 2 if invalid else 0


def cmd_segments_preview(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.segments import preview_segment

    ctx = build_context(settings)
    segment = _segment(ctx, args.name)
    if not ctx.store.exists:
        raise ConfigError("the store is empty: run `dvconnect run sync` first")
    preview = preview_segment(ctx, segment, sample=args.sample)
    if args.json:
        _print_json(preview)
        return 0
    print(f"{args.name}: {preview['size']:,} members ({preview['seconds']:.2f}s, nothing saved)")
    for row in preview["sample"]:
        print("  " + ", ".join(f"{k} {v}" for k, v in row.items()))
    if args.sql:
        print(preview["sql"])
    return 0


def cmd_segments_history(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.segments import segment_history

    ctx = build_context(settings)
    _segment(ctx, args.name)
    history = segment_history(ctx, args.name, limit=args.limit)
    if args.json:
        _print_json({"segment": args.name, "evaluations": history})
        return 0
    print(f"{args.name}: {len(history)} evaluations, latest first")
    for entry in history:
        print(
            f"  {entry['evaluated_at']}: {entry['size']:,} members, "
            f"+{entry['entered']} entered, -{entry['exited']} exited ({entry['seconds']:.2f}s)"
        )
    return 0


def _table_out(rows: Iterator[dict[str, Any]], columns: list[str], as_csv: bool) -> int:
    """Rows as CSV (with a header) or as aligned text; returns how many."""
    count = 0
    if as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            count += 1
        return count
    for row in rows:
        print("  ".join(f"{row[c] if row[c] is not None else '-'}" for c in columns))
        count += 1
    return count


def cmd_segments_members(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.segments import MEMBER_COLUMNS, segment_members

    ctx = build_context(settings)
    _segment(ctx, args.name)
    count = _table_out(segment_members(ctx, args.name), list(MEMBER_COLUMNS), args.csv)
    if not args.csv:
        print(f"{args.name}: {count:,} members", file=sys.stderr)
    return 0


def cmd_orphans_links(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.orphans import LINK_COLUMNS, orphan_links

    ctx = build_context(settings)
    rows = orphan_links(ctx, lead=args.lead, since=args.since)
    count = _table_out(rows, list(LINK_COLUMNS), args.csv)
    if not args.csv:
        print(f"{count:,} links", file=sys.stderr)
    return 0


def cmd_views_install(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.views import install_views

    ctx = build_context(settings, online=True)
    for line in install_views(ctx):
        print(line)
    return 0


def cmd_journeys_list(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.journeys.inspect import journey_list

    listed = journey_list(build_context(settings))
    if args.json:
        _print_json({"journeys": listed})
        return 0
    for entry in listed:
        if entry["state"] == "invalid":
            print(f"invalid: {entry['error']}", file=sys.stderr)
            continue
        members = ", ".join(f"{n:,} {status}" for status, n in sorted(entry["members"].items()))
        by = [f"segment {entry['segment']}"] if entry["segment"] else []
        by += [f"trigger {entry['trigger']}"] if entry["trigger"] else []
        print(f"{entry['journey']}: {entry['state']}, {', '.join(by)}"
              + (f", members {members}" if members else ""))  # fmt: skip
    return 2 if any(e["state"] == "invalid" for e in listed) else 0


def cmd_journeys_show(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.journeys.inspect import journey_show

    shown = journey_show(build_context(settings), args.name)
    if args.json:
        _print_json(shown)
        return 0
    since = shown["paused_at"] or shown["stopped_at"]
    print(f"{shown['journey']}: {shown['state']}" + (f" since {since}" if since else "")
          + f" (version {shown['version'] or '-'})")  # fmt: skip
    for step, count in shown["active"].items():
        print(f"  {step}: {count:,} active")
    for status, count in sorted(shown["members"].items()):
        if status != "active":
            print(f"  {status}: {count:,}")
    for failure in shown["failures"]:
        print(f"  failed member {failure['member']} (contact {failure['contact']}) at "
              f"{failure.get('step')}: {failure.get('code') or ''} {failure.get('message')} "
              f"(request id {failure.get('request_id') or '-'})")  # fmt: skip
    if shown["watchdog"]:
        from jobs.journeys.watchdog import describe

        for line in describe(shown["watchdog"]):
            print(f"  {line}")
    return 0


def cmd_journeys_retry(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.journeys.rescue import retry

    done = retry(build_context(settings), args.name, args.step)
    if args.json:
        _print_json(asdict(done))
        return 0
    where = f" at step {args.step}" if args.step else ""
    if not done.retried:
        print(f"{args.name}: nothing to retry (no failed member{where})"
              + (f"; {done.superseded:,} left alone: their contact entered again since"
                 if done.superseded else ""))  # fmt: skip
        return 0
    print(f"{args.name}: {done.retried:,} failed members{where} retried, due now "
          f"({done.repended:,} writes pending again, {done.dropped:,} later ones dropped); "
          "the next `dvconnect run journeys` moves them on")  # fmt: skip
    if done.superseded:
        print(f"{done.superseded:,} left alone: their contact entered the journey again since")
    return 0


def cmd_journeys_skip(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.journeys.rescue import skip

    done = skip(build_context(settings), args.name, args.contact)
    if args.json:
        _print_json(done)
        return 0
    where = f"now at {done['to']}" if done["to"] else f"{done['status']}"
    print(f"{args.name}: member {done['member']} (contact {done['contact']}) skipped "
          f"{done['from']}: {where}; the next `dvconnect run journeys` acts")  # fmt: skip
    return 0


def cmd_journeys_validate(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.journeys.inspect import journey_named
    from jobs.journeys.validate import validate

    ctx = build_context(settings)
    problems = validate(ctx, journey_named(ctx, args.name))
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 2
    print(f"{args.name}: the flow is valid")
    return 0


def cmd_journeys_explain(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.journeys.inspect import explain

    entries = explain(build_context(settings), args.name, args.contact)
    if args.json:
        _print_json({"journey": args.name, "contact": args.contact, "entries": entries})
        return 0
    if not entries:
        print(f"{args.contact} has not entered {args.name}")
    for entry in entries:
        print(f"entry {entry['entry']} (version {entry['version']}, lead {entry['lead'] or '-'}): "
              f"{entry['status']}" + (f" at {entry['step']}, due {entry['due_at']}"
                                      if entry["status"] == "active" else ""))  # fmt: skip
        for event in entry["path"]:
            detail = f" {_plain(event['detail'])}" if event["detail"] else ""
            where = f" -> {event['to_step']}" if event["to_step"] else ""
            print(f"  {event['at']} {event['step'] or '(entry)'}: {event['event']}{where}{detail}")
        for created in entry["records"]:
            print(f"  created {created['table_name']} {created['record_id']} at {created['step']}")
    return 0


def cmd_journeys_state(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.journeys.inspect import journey_named
    from jobs.journeys.lifecycle import change_state
    from jobs.journeys.validate import validate

    ctx = build_context(settings, prepare=True)
    command = args.journeys_command
    if command in ("start", "resume"):
        problems = validate(ctx, journey_named(ctx, args.name))
        if problems:
            for problem in problems:
                print(f"error: {problem}", file=sys.stderr)
            done = "started" if command == "start" else "resumed"
            raise ConfigError(f"journey {args.name!r} is not valid: not {done}")
    print(change_state(ctx, args.name, command))
    return 0


def cmd_journeys_plan(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.journeys.plan import plan

    ctx = build_context(settings)
    if args.records is None:
        planned = plan(ctx, args.name, args.days, args.assume)
    else:
        with _output(args.records) as out:
            planned = plan(ctx, args.name, args.days, args.assume, out)
    if args.json:
        _print_json(planned)
        return 0
    assumed = ", ".join(f"{step} {rate}" for step, rate in planned["assumed"].items())
    print(
        f"{planned['journey']} from {planned['from']} to {planned['to']}: "
        f"{planned['records']:,} records in {len(planned['runs']):,} runs"
        + (f" (assuming {assumed})" if assumed else " (assuming no condition changes)")
    )
    for day, entry in planned["days"].items():
        tables = ", ".join(f"{n:,} {table}" for table, n in sorted(entry["by_table"].items()))
        print(f"{day}: {tables or 'nothing created'}")
        for label, key in (("step", "by_step"), ("owner", "by_owner")):
            for name, n in sorted(entry[key].items()):
                print(f"  {label} {name}: {n:,}")
        for owner, n in sorted(entry["reassigned_to"].items()):
            print(f"  capped, handed to owner {owner} instead: {n:,}")
        for owner, n in sorted(entry["spill"].items()):
            print(f"  capped, held to the next business day: {n:,} for owner {owner}")
        if entry["entries_deferred"]:
            print(
                f"  entries kept for another day (entries_per_day): {entry['entries_deferred']:,}"
            )
    funnel = planned["funnel"]
    ended = ", ".join(f"{n:,} {k}" for k, n in funnel.items() if k != "active")
    waiting = ", ".join(f"{n:,} at {step}" for step, n in sorted(funnel["active"].items()))
    print(f"at the end: {ended or 'nobody left'}; {waiting or 'nobody waiting'}")
    if planned["first"]:
        print(f"first {len(planned['first'])} records:")
        for item in planned["first"]:
            fields = " ".join(f"{k}={v}" for k, v in item.items() if k != "run")
            print(f"  {item['run']} {fields}")
    return 0


def cmd_journeys_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.journeys.migrate import migrate

    done = migrate(build_context(settings), args.name, args.dry_run)
    if args.json:
        _print_json(done)
        return 0
    verb = "would move" if args.dry_run else "moved"
    print(f"{done['journey']}: {verb} {done['moved']:,} members onto version {done['version']}"
          f"; {done['staying']:,} stay on their version")  # fmt: skip
    for move in done["moves"]:
        where = f"version {move['from_version']} {move['from_step']}"
        if move["to_step"] is None:
            print(f"  {where}: {move['members']:,} stay (version {done['version']} has no step "
                  f"{move['from_step']!r} and the migrate map does not name it)")  # fmt: skip
            continue
        shown = ", ".join(move["contacts"])
        more = "" if len(move["contacts"]) == move["members"] else ", …"
        print(f"  {where} -> {move['to_step']}: {move['members']:,} ({shown}{more})")
    return 0


def cmd_journeys_rehearse(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.journeys.rehearse import rehearse

    if args.records is None:
        done = rehearse(settings, args.name, args.days, args.assume, args.mask)
    else:
        with _output(args.records) as out:
            done = rehearse(settings, args.name, args.days, args.assume, args.mask, out)
    code = 0 if done["plan"]["matches"] and not done["failed"] else 1
    if args.json:
        _print_json(done)
        return code
    rows = ", ".join(f"{n:,} {table}" for table, n in done["twin"]["rows"].items())
    print(f"twin of the store{' (masked)' if done['twin']['masked'] else ''}: {rows}")
    print(f"{done['journey']} rehearsed from {done['from']} in {len(done['runs']):,} runs: "
          f"the twin received {done['records']:,} records")  # fmt: skip
    for day, entry in done["days"].items():
        tables = ", ".join(f"{n:,} {table}" for table, n in sorted(entry["by_table"].items()))
        print(f"{day}: {tables}")
        for label, key in (("step", "by_step"), ("owner", "by_owner")):
            for name, n in sorted(entry[key].items()):
                print(f"  {label} {name}: {n:,}")
    members = done["funnel"]["members"]
    print("funnel: " + (", ".join(f"{n:,} {status}" for status, n in sorted(members.items()))
                        or "nobody entered"))  # fmt: skip
    compared = done["plan"]
    if compared["matches"]:
        print(f"as planned: the {compared['records']:,} planned records, no other")
    else:
        missing, unexpected = len(compared["missing"]), len(compared["unexpected"])
        print(f"NOT as planned: {missing} planned records missing, {unexpected} not planned "
              "(the first of each in --json)")  # fmt: skip
    return code


def cmd_scoring_show(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.scoring import lead_scores

    shown = lead_scores(build_context(settings), args.lead)
    if args.json:
        _print_json({"lead": args.lead, "models": shown})
        return 0
    if not shown:
        print(f"lead {args.lead} has no score (not scored by any model, or not scored yet)")
    for entry in shown:
        ready = f", sales-ready since {entry['ready_since']}" if entry["ready_since"] else ""
        print(f"{entry['model']}: {entry['score']:g} ({entry['grade']}){ready}")
        for c in entry["contributions"]:
            record = f" ({c['record']})" if c["record"] else ""
            print(f"  {c['points']:+} {c['rule']}: {c['reason']}{record}, since {c['since']}")
        for handed in entry["hand_offs"]:
            print(f"  handed off {handed['at']}: {handed['table_name']} {handed['record_id']} "
                  f"for owner {handed['owner_id'] or '-'}")  # fmt: skip
    return 0


def cmd_scoring_top(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.scoring import top

    if args.limit < 1:
        raise ConfigError(f"--limit {args.limit}: at least 1")
    leads = top(build_context(settings), args.name, args.grade, args.limit)
    if args.json:
        _print_json({"model": args.name, "leads": leads})
        return 0
    for lead in leads:
        print(f"{lead['score']:>7g} {lead['grade']:<4} {lead['leadid']} {lead['subject'] or ''} "
              f"(owner {lead['_ownerid_value'] or '-'})")  # fmt: skip
    return 0


def cmd_scoring_preview(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.scoring import model_named, preview

    ctx = build_context(settings)
    model_named(ctx, args.name)  # the name first: a misspelling is said before the store
    if not ctx.store.exists:
        raise ConfigError("the store is empty: run `dvconnect run sync` first")
    shown = preview(ctx, args.name)
    if args.json:
        _print_json(shown)
        return 0
    grades = ", ".join(f"{shown['grades'].get(g, 0):,} {g}" for g in GRADES)
    print(f"{shown['model']}: {shown['leads']:,} leads ({grades}), {shown['sales_ready']:,} "
          f"sales-ready, {shown['would_hand_off']:,} hand-offs owed (nothing saved)")  # fmt: skip
    for bucket, n in shown["scores"].items():
        print(f"  {bucket:>12}: {n:,}")
    return 0


def cmd_report(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.report import html_report, parse_since, report_document, text_lines

    ctx = build_context(settings)
    document = report_document(ctx, parse_since(args.since, ctx.clock.now()))
    if args.html:
        with _output(args.html) as out:
            out.write(html_report(document))
        print(f"report written to {args.html}", file=sys.stderr)
    if args.json:
        _print_json(document)
    elif not args.html:
        print("\n".join(text_lines(document)))
    return 0


def cmd_db_current(settings: Settings, args: argparse.Namespace) -> int:
    from connector.store import masked, schema_state

    state = schema_state(settings.database_url)
    if args.json:
        _print_json({"store": masked(settings.database_url), **asdict(state)})
    else:
        print(f"{masked(settings.database_url)}: {state.describe()}")
    return 0


def cmd_db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    from connector.schema import BASELINE, BASELINE_RELEASE
    from connector.store import masked, migrate_store

    done = migrate_store(settings.database_url, upgrade=True)
    store = masked(settings.database_url)
    if args.json:
        _print_json({"store": store, **asdict(done)})
        return 0
    if done.created:
        print(f"{store}: created at revision {done.after.revision}")
    elif done.before.state == "unversioned":
        print(f"{store}: made by dvconnect {BASELINE_RELEASE} before schema versions; "
              f"stamped with its revision {BASELINE}")  # fmt: skip
        if done.adopted:
            print(f"  added what that release's tables lacked: {', '.join(done.adopted)}")
    elif not done.ran:
        print(f"{store}: at revision {done.after.revision}, the newest; nothing to do")
    if done.ran:
        print(f"{store}: ran revisions {', '.join(done.ran)}; now at revision "
              f"{done.after.revision}")  # fmt: skip
    return 0


def cmd_schedule(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.scheduler import serve
    from jobs.service import Service

    service = Service(settings) if settings.metrics_port else None  # a port in use: exit 2 now
    try:
        serve(build_context(settings, online=True, prepare=True), run_now=args.now, service=service)
    finally:
        if service is not None:
            service.stop()
    return 0


def cmd_health(settings: Settings, args: argparse.Namespace) -> int:
    """Ask a running `dvconnect schedule` for its /healthz (the container's health check)."""
    import requests

    url = args.url
    if url is None:
        if settings.metrics_port is None:
            raise ConfigError(
                "DVCONNECT_METRICS_PORT is not set: `dvconnect schedule` serves no /healthz "
                "(or give --url)"
            )
        host = "127.0.0.1" if settings.metrics_host in ("0.0.0.0", "") else settings.metrics_host  # noqa: S104
        url = f"http://{host}:{settings.metrics_port}/healthz"
    session = requests.Session()
    session.trust_env = False  # a local endpoint: no proxy from the environment
    try:
        response = session.get(url, timeout=args.timeout)
    except requests.RequestException as exc:
        print(f"dvconnect: {url} unreachable: {type(exc).__name__}", file=sys.stderr)
        return 3
    sys.stdout.write(response.text)
    return 0 if response.status_code == 200 else 1


def cmd_emulator_twin(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.twin import serve_twin

    return serve_twin(settings, args.emulator_args)


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.demo import run_demo

    return run_demo(settings, leads=args.leads, contacts=args.contacts)


def _parser() -> argparse.ArgumentParser:
    from jobs.runner import JOB_CHOICES

    parser = argparse.ArgumentParser(
        prog="dvconnect", description="Dataverse leads and contacts, synced and marketed."
    )
    parser.add_argument("--version", action="version", version=f"dvconnect {version('dvconnect')}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser("check", help="validate settings and mappings (and Dataverse)")
    check.add_argument("--offline", action="store_true", help="do not contact Dataverse")
    check.set_defaults(handler=cmd_check)

    run = commands.add_parser("run", help="run one job now")
    run.add_argument("job", choices=JOB_CHOICES)
    run.add_argument("--dry-run", action="store_true", help="show what would be done, send nothing")
    run.add_argument("--json", action="store_true", help="print one JSON document")
    run.set_defaults(handler=cmd_run)

    schedule = commands.add_parser("schedule", help="run every job on its cron until stopped")
    schedule.add_argument("--now", action="store_true", help="also run every job once at start")
    schedule.set_defaults(handler=cmd_schedule)

    health = commands.add_parser(
        "health", help="ask the running `schedule` for /healthz: exit 0 healthy, 1 not, 3 no answer"
    )
    health.add_argument("--url", help="default: http://127.0.0.1:$DVCONNECT_METRICS_PORT/healthz")
    health.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    health.set_defaults(handler=cmd_health)

    status = commands.add_parser("status", help="last runs and the sync state of each table")
    status.add_argument("--json", action="store_true", help="print one JSON document")
    status.set_defaults(handler=cmd_status)

    state = commands.add_parser("state", help="manage sync state")
    state_commands = state.add_subparsers(dest="state_command", required=True, metavar="ACTION")
    reset = state_commands.add_parser("reset", help="forget a table's cursor: next sync is full")
    reset.add_argument("table")
    reset.set_defaults(handler=cmd_state_reset)

    db = commands.add_parser("db", help="the version of the store's dvc_ tables (migrations)")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade = db_commands.add_parser(
        "upgrade", help="migrate the dvc_ tables to this release's revision, keeping every row"
    )
    upgrade.add_argument("--json", action="store_true", help="print one JSON document")
    upgrade.set_defaults(handler=cmd_db_upgrade)
    current = db_commands.add_parser("current", help="the store's revision and what it needs")
    current.add_argument("--json", action="store_true", help="print one JSON document")
    current.set_defaults(handler=cmd_db_current)

    segments = commands.add_parser("segments", help="list, preview and follow segments")
    segment_commands = segments.add_subparsers(
        dest="segments_command", required=True, metavar="ACTION"
    )
    listing = segment_commands.add_parser("list", help="every segment, its last size")
    listing.add_argument("--json", action="store_true", help="print one JSON document")
    listing.set_defaults(handler=cmd_segments_list)
    preview = segment_commands.add_parser("preview", help="size and a sample now, nothing saved")
    preview.add_argument("name")
    preview.add_argument("--sample", type=int, default=10, help="how many members to show")
    preview.add_argument("--sql", action="store_true", help="also print the SQL")
    preview.add_argument("--json", action="store_true", help="print one JSON document")
    preview.set_defaults(handler=cmd_segments_preview)
    history = segment_commands.add_parser("history", help="sizes over time, entered and exited")
    history.add_argument("name")
    history.add_argument("--limit", type=int, default=30, help="how many evaluations")
    history.add_argument("--json", action="store_true", help="print one JSON document")
    history.set_defaults(handler=cmd_segments_history)
    members = segment_commands.add_parser("members", help="the saved members of a segment")
    members.add_argument("name")
    members.add_argument("--csv", action="store_true", help="CSV with a header row")
    members.set_defaults(handler=cmd_segments_members)

    orphans = commands.add_parser("orphans", help="what link-orphans linked")
    orphan_commands = orphans.add_subparsers(
        dest="orphans_command", required=True, metavar="ACTION"
    )
    links = orphan_commands.add_parser("links", help="each lead linked: contact, matched or new")
    links.add_argument("--lead", help="only this lead id")
    links.add_argument("--since", help="only links made at or after this ISO-8601 time")
    links.add_argument("--csv", action="store_true", help="CSV with a header row")
    links.set_defaults(handler=cmd_orphans_links)

    journeys = commands.add_parser("journeys", help="list, check, start and follow journeys")
    journey_commands = journeys.add_subparsers(
        dest="journeys_command", required=True, metavar="ACTION"
    )
    jlist = journey_commands.add_parser("list", help="every journey, its state and members")
    jlist.add_argument("--json", action="store_true", help="print one JSON document")
    jlist.set_defaults(handler=cmd_journeys_list)
    show = journey_commands.add_parser("show", help="members per step, goal, exited, failed")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print one JSON document")
    show.set_defaults(handler=cmd_journeys_show)
    check_flow = journey_commands.add_parser("validate", help='"test the flow"')
    check_flow.add_argument("name")
    check_flow.set_defaults(handler=cmd_journeys_validate)
    why = journey_commands.add_parser("explain", help="one member's path and what decided it")
    why.add_argument("name")
    why.add_argument("contact", help="the contact's id")
    why.add_argument("--json", action="store_true", help="print one JSON document")
    why.set_defaults(handler=cmd_journeys_explain)
    for action, text in (
        ("start", "validate, then let it write"),
        ("pause", "hold every member where it is"),
        ("resume", "validate, then go on after a pause"),
        ("stop", "end it for good"),
    ):
        lifecycle = journey_commands.add_parser(action, help=text)
        lifecycle.add_argument("name")
        lifecycle.set_defaults(handler=cmd_journeys_state)
    again = journey_commands.add_parser("retry", help="failed members back to their step")
    again.add_argument("name")
    again.add_argument("--step", help="only the members failed at this step")
    again.add_argument("--json", action="store_true", help="print one JSON document")
    again.set_defaults(handler=cmd_journeys_retry)
    past = journey_commands.add_parser("skip", help="move one member past its current step")
    past.add_argument("name")
    past.add_argument("contact", help="the contact's id")
    past.add_argument("--json", action="store_true", help="print one JSON document")
    past.set_defaults(handler=cmd_journeys_skip)
    forward = journey_commands.add_parser("plan", help="day by day, what it would create")
    forward.add_argument("name")
    forward.add_argument("--days", type=int, help="how far ahead (default: to the end date)")
    forward.add_argument("--assume", action="append", default=[], metavar="STEP=P%",
                         help="an if-step's condition holds for P%% of its members")  # fmt: skip
    forward.add_argument("--records", metavar="FILE",
                         help="write every planned record to FILE, one JSON line each")  # fmt: skip
    forward.add_argument("--json", action="store_true", help="print one JSON document")
    forward.set_defaults(handler=cmd_journeys_plan)
    move = journey_commands.add_parser("migrate", help="members in flight onto the new version")
    move.add_argument("name")
    move.add_argument("--dry-run", action="store_true", help="show who lands where; move nobody")
    move.add_argument("--json", action="store_true", help="print one JSON document")
    move.set_defaults(handler=cmd_journeys_migrate)
    rehearsal = journey_commands.add_parser(
        "rehearse", help="run it for real on a twin of the org made from the store"
    )
    rehearsal.add_argument("name")
    rehearsal.add_argument("--days", type=int, help="how far ahead (default: to the end date)")
    rehearsal.add_argument("--assume", action="append", default=[], metavar="STEP=P%",
                           help="an if-step's condition holds for P%% of its members: their "
                           "e-mail is opened, their call completed in the twin")  # fmt: skip
    rehearsal.add_argument("--mask", action="store_true", help="mask personal data in the twin")
    rehearsal.add_argument("--records", metavar="FILE",
                           help="write every record the twin received to FILE, one JSON line "
                           "each")  # fmt: skip
    rehearsal.add_argument("--json", action="store_true", help="print one JSON document")
    rehearsal.set_defaults(handler=cmd_journeys_rehearse)

    scoring = commands.add_parser("scoring", help="lead scores, grades and hand-offs")
    scoring_commands = scoring.add_subparsers(
        dest="scoring_command", required=True, metavar="ACTION"
    )
    lead_score = scoring_commands.add_parser("show", help="a lead's score and what made it")
    lead_score.add_argument("lead", help="the lead's id")
    lead_score.add_argument("--json", action="store_true", help="print one JSON document")
    lead_score.set_defaults(handler=cmd_scoring_show)
    best = scoring_commands.add_parser("top", help="a model's best-scored leads")
    best.add_argument("name")
    best.add_argument("--grade", choices=("hot", "warm", "cold"))
    best.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    best.add_argument("--json", action="store_true", help="print one JSON document")
    best.set_defaults(handler=cmd_scoring_top)
    look = scoring_commands.add_parser("preview", help="scores and grades now, nothing saved")
    look.add_argument("name")
    look.add_argument("--json", action="store_true", help="print one JSON document")
    look.set_defaults(handler=cmd_scoring_preview)

    insights = commands.add_parser(
        "report", help="sync, segments, journeys, activities, API use, scores: tables or charts"
    )
    insights.add_argument("--html", metavar="FILE", help="write the charts to FILE (one page, "
                          "no network needed to view it)")  # fmt: skip
    insights.add_argument("--since", help="only what happened since: a date or time (ISO-8601), "
                          "or 7d, 12h before now")  # fmt: skip
    insights.add_argument("--json", action="store_true", help="print one JSON document")
    insights.set_defaults(handler=cmd_report)

    views = commands.add_parser("views", help="contact views for sales and marketing in Dataverse")
    view_commands = views.add_subparsers(dest="views_command", required=True, metavar="ACTION")
    install = view_commands.add_parser("install", help="create or update both views")
    install.set_defaults(handler=cmd_views_install)

    commands.add_parser(
        "emulator",
        help="serve the local Dataverse emulator; --from-store [--mask]: a twin of the synced "
        "store (options: dvconnect emulator --help)",
        add_help=False,
    )

    demo = commands.add_parser("demo", help="emulator + all jobs + summary (what `make demo` runs)")
    demo.add_argument("--leads", type=int, default=20_000)
    demo.add_argument("--contacts", type=int, default=10_000)
    demo.set_defaults(handler=cmd_demo)
    return parser


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    """Report a fatal error: one line on stderr, and with --json a JSON document on stdout."""
    print(f"dvconnect: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        _print_json({"error": {"message": message, "exit_code": code}})
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dvconnect` console script."""
    if argv is None:  # the process is this command's own, not a call from other Python code
        # What start-up loaded (modules, classes) lives to the end: the collector stops walking
        # it at every full collection, which a sync's pages of new rows trigger again and again.
        gc.freeze()
        argv = sys.argv[1:]
    if argv[:1] == ["emulator"] and "--from-store" not in argv:
        from emulator.server import main as emulator_main

        return emulator_main(argv[1:])
    if argv[:1] == ["emulator"]:  # a twin: the store is read first, then the emulator serves it
        args = argparse.Namespace(handler=cmd_emulator_twin, emulator_args=argv[1:])
    else:
        args = _parser().parse_args(argv)
    settings: Settings | None = None
    try:
        settings = load_settings()
        configure_logging(settings)
        code: int = args.handler(settings, args)
        return code
    except DvconnectError as exc:
        return _fail(args, str(exc), exc.exit_code)
    except SQLAlchemyError as exc:
        error = store_error(exc, settings.database_url if settings else "")
        return _fail(args, str(error), error.exit_code)
    except KeyboardInterrupt:
        return INTERRUPTED
    except BrokenPipeError:  # the reader went away (`dvconnect status | head`): leave quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:  # a folder or file of the store or the mappings that cannot be used
        return _fail(args, f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "), 3)
    except Exception as exc:  # a bug of ours: one line here, the traceback in the debug log
        log.debug("unexpected error", exc_info=True)
        return _fail(args, f"unexpected error: {type(exc).__name__}: {exc}", UNEXPECTED)


if __name__ == "__main__":
    sys.exit(main())
