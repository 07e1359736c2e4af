"""Workflow machinery for the orchestration scenarios (T2.1, T2.2, T2.10, T2.11 and friends).

- ad-hoc task actions: `step_action` (inline shell printing a JSON object or the `$item`
  parameter, after an optional sleep), `failing_action` (`exit N`);
- a workflow's children: `children` (full executions, `GET /executions?parent=`, oldest first),
  `by_task` (grouped by `workflow_task.task_name`), `only_task` (the single child of a task),
  `descendants` (the whole tree below an execution);
- timings: `run_window` (`[started_at, started_at + duration_ms)` of a terminal execution), `elapsed`
  (`updated - created` of a workflow parent); overlaps use `scenario.max_overlap`.

Every listing here is meant to be called after the parent is terminal (P3), when the set of
children can no longer change.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from tests.helpers.scenario import all_items, parse_ts, secs


# ------------------------------------------------------------------ ad-hoc task actions
def step_action(make, pack: str, uid: str, slug: str, *, prints: Any = None, sleep: float = 0,
                params: dict | None = None, echo_item: bool = False) -> dict:
    """An inline `core.shell` action `<pack>.<slug>_<uid>` that sleeps `sleep` s, then prints
    `prints` as JSON (a task's result view merges a JSON-object stdout into `task.<name>.*`),
    or the `$item` parameter when `echo_item`. `params` is its parameter schema."""
    parts = [f"sleep {sleep}"] if sleep else []
    if echo_item:
        parts.append("printf '%s' \"$item\"")
        params = {"item": {"type": "string", "required": True}, **(params or {})}
    else:
        text = json.dumps(prints, separators=(",", ":"))
        assert "'" not in text, f"step output must not contain a single quote: {text}"
        parts.append(f"printf '%s' '{text}'")
    return make.action(ref=f"{pack}.{slug}_{uid}", pack_ref=pack, label=f"{slug} {uid}",
                       runtime_ref="core.shell", entrypoint="; ".join(parts),
                       param_schema=params or {})


def failing_action(make, pack: str, uid: str, slug: str, *, exit_code: int = 1,
                   params: dict | None = None) -> dict:
    """An inline `core.shell` action that writes to stderr and exits `exit_code`."""
    return make.action(ref=f"{pack}.{slug}_{uid}", pack_ref=pack, label=f"{slug} {uid}",
                       runtime_ref="core.shell",
                       entrypoint=f"echo '{slug} fails on purpose' >&2; exit {exit_code}",
                       param_schema=params or {})


def task(name: str, action_ref: str, *, input: dict | None = None, next: list | None = None,
         **extra) -> dict:
    """One task of a workflow definition (`input` and `next` only when given)."""
    out: dict = {"name": name, "action": action_ref}
    if input is not None:
        out["input"] = input
    if next is not None:
        out["next"] = next
    out.update(extra)
    return out


def on_success(*targets: str) -> dict:
    return {"when": "{{ succeeded() }}", "do": list(targets)}


def on_failure(*targets: str) -> dict:
    return {"when": "{{ failed() }}", "do": list(targets)}


# ------------------------------------------------------------------ children and trees
def task_name(execution: dict) -> str | None:
    return (execution.get("workflow_task") or {}).get("task_name")


def children(client, parent_id: int) -> list[dict]:
    """Every child execution of `parent_id` (full objects), oldest first."""
    found = all_items(client.list_executions, parent=parent_id)
    return [client.get_execution(c["id"]) for c in sorted(found, key=lambda c: c["id"])]


def by_task(execs: list[dict]) -> dict[str, list[dict]]:
    """Children grouped by `workflow_task.task_name`, each group ordered by (task_index, id)."""
    groups: dict[str, list[dict]] = {}
    for ex in execs:
        groups.setdefault(task_name(ex), []).append(ex)
    for group in groups.values():
        group.sort(key=lambda e: ((e.get("workflow_task") or {}).get("task_index") or 0, e["id"]))
    return groups


def only_task(groups: dict[str, list[dict]], name: str) -> dict:
    """The single child that ran task `name`; fails unless there is exactly one."""
    found = groups.get(name, [])
    assert len(found) == 1, (f"expected exactly 1 child for task {name!r}, got {len(found)}: "
                             f"{[(e['id'], e['status']) for e in found]}; tasks seen: "
                             f"{ {k: len(v) for k, v in groups.items()} }")
    return found[0]


def descendants(client, root_id: int) -> list[dict]:
    """Every execution below `root_id` (children, grandchildren, ...), breadth first."""
    out: list[dict] = []
    frontier = [root_id]
    while frontier:
        level = [c for pid in frontier for c in children(client, pid)]
        out.extend(level)
        frontier = [c["id"] for c in level]
    return out


def lineage(execution: dict) -> tuple:
    """(status, parent, task_name): the three fields a tree assertion checks."""
    return execution.get("status"), execution.get("parent"), task_name(execution)


# ------------------------------------------------------------------ timings
def run_window(execution: dict) -> tuple[datetime, datetime]:
    """`[started_at, started_at + result.duration_ms)` of a terminal execution: the span its action
    process ran, by the worker's own clock.

    `updated` is not the end of the run: the executor writes `workflow_task.completed_at` on a
    workflow child when it processes the completion, which can be after the next with_items item
    was released by another child's completion. `duration_ms` is measured from after the
    `running` write to the process's exit, so the window never extends past the moment the slot
    was freed."""
    eid = execution.get("id")
    assert execution.get("started_at"), f"execution {eid} has no started_at: {execution}"
    duration = (execution.get("result") or {}).get("duration_ms")
    assert isinstance(duration, int) and duration >= 0, \
        f"execution {eid} has no result.duration_ms to end its run window: {execution.get('result')}"
    start = parse_ts(execution["started_at"])
    return start, start + timedelta(milliseconds=duration)


def elapsed(execution: dict) -> float:
    """`updated - created` in seconds (a terminal workflow parent's wall time)."""
    return secs(execution["created"], execution["updated"])


__all__ = ["step_action", "failing_action", "task", "on_success", "on_failure", "task_name",
           "children", "by_task", "only_task", "descendants", "lineage", "run_window", "elapsed"]
