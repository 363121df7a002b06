""" "Test the flow": what can be known about a journey before it writes anything.

Each problem is a `MappingError` naming the file, the key (`steps[3]`, `steps[1].email.subject`)
and its line:

* every step can be reached from the first, and from every step an end can be reached;
* no loop made only of steps that do not wait (a member would go round within one run), and no
  action inside a loop (an action writes one record per entry);
* the segments it names exist; the users and queues it names exist in the store and are enabled;
* every template renders against a sample member (a field that is not synced is an error);
* timing: a wait or a timeout longer than 90 days; under `hard_stop`, an action that a member
  entering at the start could reach only after the end; a recurrence that does not fit between
  start and end.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from connector.errors import MappingError
from connector.mapping.journeys import (
    MAX_WAIT,
    CreateLeadAction,
    EmailAction,
    FixedUser,
    Journey,
    RoundRobin,
    RunWorkflowAction,
    Sender,
    Step,
    UpdateAction,
)
from jobs.context import Context
from jobs.journeys.templates import check

WAITS = ("wait", "wait_until")


def validate(ctx: Context, journey: Journey) -> list[MappingError]:
    """Every problem found in `journey`, in the order of its file."""
    problems: list[MappingError] = []
    problems += _flow(journey)
    problems += _references(ctx, journey)
    problems += _templates(ctx, journey)
    problems += _timing(journey)
    return problems


def _at(journey: Journey, step: Step, *key: str | int) -> tuple[str | int, ...]:
    return ("steps", journey.index(step.id), *key)


def _flow(journey: Journey) -> list[MappingError]:
    problems = []
    graph = {step.id: journey.successors(step) for step in journey.steps}
    reachable = _reach(graph, [journey.steps[0].id])
    for step in journey.steps:
        if step.id not in reachable:
            problems.append(journey.error(_at(journey, step), f"step {step.id!r} is never reached"))
    terminals = [s.id for s in journey.steps if not graph[s.id]]
    reverse: dict[str, list[str]] = {s.id: [] for s in journey.steps}
    for source, targets in graph.items():
        for target in targets:
            reverse[target].append(source)
    can_end = _reach(reverse, terminals)
    for step in journey.steps:
        if step.id in reachable and step.id not in can_end:
            problems.append(journey.error(
                _at(journey, step), f"members at {step.id!r} can never reach an end"))  # fmt: skip
    for cycle in _cycles(graph):
        kinds = {journey.step(s).kind for s in cycle}
        first = journey.step(cycle[0])
        loop = " -> ".join([*cycle, cycle[0]])
        if not kinds & set(WAITS):
            problems.append(journey.error(
                _at(journey, first), f"a loop without a wait: {loop}"))  # fmt: skip
        for step_id in cycle:
            step = journey.step(step_id)
            if step.is_action:
                problems.append(journey.error(
                    _at(journey, step), f"action {step.id!r} is inside a loop ({loop}); "
                    "an action writes one record per entry"))  # fmt: skip
    return problems


def _reach(graph: dict[str, list[str]], starts: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(starts)
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        todo += graph.get(node, [])
    return seen


def _cycles(graph: dict[str, list[str]]) -> Iterator[list[str]]:
    """One cycle per strongly connected group of steps (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    counter = 0
    for root in graph:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, position = work.pop()
            if position == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            targets = graph[node]
            if position < len(targets):
                work.append((node, position + 1))
                target = targets[position]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1 or node in graph[node]:
                    yield list(reversed(group))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])


def _references(ctx: Context, journey: Journey) -> list[MappingError]:
    problems = []
    segments = ctx.mapping.segments
    names: list[tuple[tuple[str | int, ...], str]] = []
    if journey.segment is not None:
        names.append((("audience", "segment"), journey.segment))
    names += [(("audience", "exclude", i), name) for i, name in enumerate(journey.excluded)]
    for loc, condition in _all_conditions(journey):
        names += [(loc, name) for name in condition.segments()]
    for loc, name in names:
        if name not in segments:
            problems.append(journey.error(loc, f"segment {name!r} is missing or not valid"))
    users: list[tuple[tuple[str | int, ...], str]] = []
    queues: list[tuple[tuple[str | int, ...], str]] = []
    if isinstance(journey.owner, FixedUser):
        users.append((("owner", "user"), journey.owner.user))
    if isinstance(journey.owner, RoundRobin):
        users += [(("owner", "round_robin", i), u) for i, u in enumerate(journey.owner.round_robin)]
    for step in journey.steps:
        action = step.email
        if action is not None and isinstance(action.sender, Sender):
            loc = _at(journey, step, "email", "from")
            if action.sender.user:
                users.append(((*loc, "user"), action.sender.user))
            if action.sender.queue:
                queues.append(((*loc, "queue"), action.sender.queue))
    problems += _exist(ctx, journey, users, "systemuser", "systemuserid", "isdisabled")
    problems += _exist(ctx, journey, queues, "queue", "queueid", None)
    return problems


def _exist(ctx: Context, journey: Journey, wanted: list[tuple[tuple[str | int, ...], str]],
           table: str, key: str, disabled: str | None) -> list[MappingError]:  # fmt: skip
    if not wanted:
        return []
    if table not in ctx.mapping.tables:
        loc = wanted[0][0]
        return [journey.error(loc, f"needs tables.yaml to sync {table} to check it exists")]
    if ctx.store.load_state(table).last_full_sync_at is None:
        return []  # not synced yet: checked once the store holds the org's users and queues
    stored = ctx.store.tables[table]
    columns = [stored.c[key]]
    if disabled is not None and disabled in stored.c:
        columns.append(stored.c[disabled])
    try:
        with ctx.store.engine.connect() as conn:
            rows = conn.execute(
                select(*columns).where(stored.c[key].in_([i for _, i in wanted]))
            ).all()
    except SQLAlchemyError:
        return []
    found = {row[0]: (row[1] if len(row) > 1 else False) for row in rows}
    problems = []
    for loc, identifier in wanted:
        if identifier not in found:
            problems.append(journey.error(loc, f"no {table} {identifier} in the store"))
        elif found[identifier]:
            problems.append(journey.error(loc, f"{table} {identifier} is disabled"))
    return problems


def _all_conditions(journey: Journey) -> list[tuple[tuple[str | int, ...], Any]]:
    found: list[tuple[tuple[str | int, ...], Any]] = []
    if journey.goal is not None:
        found.append((("goal",), journey.goal))
    if journey.exit is not None:
        found.append((("exit",), journey.exit))
    for step in journey.steps:
        if step.if_ is not None:
            found.append((_at(journey, step, "if", "condition"), step.if_.condition))
        for i, case in enumerate(step.branch or []):
            found.append((_at(journey, step, "branch", i, "when"), case.when))
    return found


def _templates(ctx: Context, journey: Journey) -> list[MappingError]:
    columns = {
        name: list(ctx.mapping.tables[table].columns) if table in ctx.mapping.tables else []
        for name, table in (("contact", "contact"), ("lead", "lead"), ("owner", "systemuser"))
    }
    problems = []
    for step in journey.steps:
        action = step.action() if step.is_action else None
        texts: list[tuple[tuple[str | int, ...], str, bool]] = []
        if action is not None:
            kind = step.kind
            for name in ("subject", "description", "location"):
                text = getattr(action, name, None)
                if isinstance(text, str) and text:
                    texts.append(((kind, name), text, False))
            if isinstance(action, EmailAction):
                texts.append((("email", "body"), action.body, True))
            values: dict[tuple[str, str], object] = {}
            if isinstance(action, CreateLeadAction | UpdateAction):
                values = {("values", column): value for column, value in action.values.items()}
            if isinstance(action, RunWorkflowAction):
                values = {("parameters", name): value for name, value in action.parameters.items()}
            for (field, name), value in values.items():
                if isinstance(value, str):
                    texts.append(((kind, field, name), value, False))
        for key, text, html in texts:
            problem = check(text, columns, html=html)
            if problem is not None:
                problems.append(journey.error(_at(journey, step, *key), problem))
    return problems


def _timing(journey: Journey) -> list[MappingError]:
    problems = []
    window = journey.schedule
    length = window.ends - window.starts
    for step in journey.steps:
        longest = _step_delay(journey, step)
        if longest > MAX_WAIT:
            key = "wait" if step.kind == "wait" else "if"
            message = f"waits up to {_days(longest)}; at most 90 days"
            problems.append(journey.error(_at(journey, step, key), message))
    if journey.repeat is not None and journey.repeat.every.longest() > length:
        problems.append(journey.error(
            ("repeat", "every"), f"{_days(journey.repeat.every.longest())} does not fit between "
            f"start and end ({_days(length)})"))  # fmt: skip
    if window.end_policy != "hard_stop":
        return problems
    latest = _latest_arrival(journey)
    for step in journey.steps:
        if not step.is_action or step.id not in latest:
            continue
        delay = latest[step.id]
        if delay is None or window.starts + delay >= window.ends:
            how = "after a loop" if delay is None else f"up to {_days(delay)} after entering"
            problems.append(journey.error(
                _at(journey, step), f"action {step.id!r} could fall after the end under "
                f"hard_stop ({how}; the journey lasts {_days(length)})"))  # fmt: skip
    return problems


def _step_delay(journey: Journey, step: Step) -> timedelta:
    """The longest a member can stay at `step` (a wait_until from the start of the journey)."""
    if step.wait is not None:
        return step.wait.longest()
    if step.if_ is not None:
        return step.if_.timeout.longest()
    if step.wait_until is not None:
        return max(timedelta(0), journey.schedule.moment(step.wait_until) - journey.schedule.starts)
    return timedelta(0)


def _latest_arrival(journey: Journey) -> dict[str, timedelta | None]:
    """For each reachable step, the longest time after entering a member can arrive there;
    None when a loop comes before it (a member may go round as long as it likes)."""
    graph = {step.id: journey.successors(step) for step in journey.steps}
    looping = _reach(graph, [node for cycle in _cycles(graph) for node in cycle])
    acyclic = {node: [t for t in targets if t not in looping]
               for node, targets in graph.items() if node not in looping}  # fmt: skip
    incoming = dict.fromkeys(acyclic, 0)
    for targets in acyclic.values():
        for target in targets:
            incoming[target] += 1
    ready = [node for node, count in incoming.items() if count == 0]
    first = journey.steps[0].id
    latest: dict[str, timedelta | None] = {first: timedelta(0)} if first in acyclic else {}
    while ready:  # Kahn's order: every way into a step is counted before it is left
        node = ready.pop()
        arrived = latest.get(node)
        for target in acyclic[node]:
            if arrived is not None:
                leave = arrived + _step_delay(journey, journey.step(node))
                latest[target] = max(leave, latest.get(target) or timedelta(0))
            incoming[target] -= 1
            if incoming[target] == 0:
                ready.append(target)
    reachable = _reach(graph, [first])
    latest.update({node: None for node in looping if node in reachable})
    return latest


def _days(span: timedelta) -> str:
    days = span.total_seconds() / 86400
    return f"{days:g} days" if days >= 1 else f"{span.total_seconds() / 3600:g} hours"
