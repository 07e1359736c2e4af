"""execution.requested -> claim -> workflow orchestration or worker selection.

Claim: `UPDATE execution SET status='scheduling' WHERE id=%s AND status='requested'`; a second
delivery finds nothing to claim. Top-level executions whose messages arrive together are claimed,
scheduled and audited in one transaction (`handle_execution_requested_batch`). Workflow actions
(`action.workflow_def`) go to the workflow engine. Other actions get a worker: role `action`,
status `active`, heartbeat younger than `executor.worker_heartbeat_timeout`, runtime supported
(runtime name lower-cased, `node.js` -> `node`, or an alias, in the worker's
`capabilities.runtimes`), round-robin. The execution becomes `scheduled` with `worker` set and
`execution.dispatch.worker.<id>` is published. Without a compatible worker it fails at once
("Execution is unschedulable").

Workflow children are gated before the claim, under the workflow_execution row lock: a with_items
item waits in `requested` while `concurrency` siblings of its batch are active, and a task retry
waits until its `next_retry_at`.
"""
from __future__ import annotations

import logging

from .. import audit
from ..db import J, dumps, parse_ts, utcnow
from .common import ACTIVE, Ctx
from . import param_validation
from . import placement
from . import prepared

log = logging.getLogger(__name__)

_RUNTIME_NAME_MAP = {"node.js": "node", "nodejs": "node"}


def runtime_keys(runtime: dict | None) -> set[str]:
    if runtime is None:
        return set()
    name = str(runtime.get("name") or "").lower()
    keys = {name, _RUNTIME_NAME_MAP.get(name, name)}
    for alias in runtime.get("aliases") or []:
        keys.add(str(alias).lower())
    keys.discard("")
    return keys


def worker_supports(worker: dict, runtime: dict | None) -> bool:
    if runtime is None:
        return True
    caps = worker.get("capabilities") or {}
    runtimes = {str(r).lower() for r in (caps.get("runtimes") or [])}
    return bool(runtimes & runtime_keys(runtime))


def _gate_workflow_child(ctx: Ctx, cur, execution: dict) -> str | None:
    """Return a reason to leave a workflow child in `requested` for now, else None.

    Runs inside the caller's transaction after locking the workflow_execution row.
    """
    wt = execution.get("workflow_task") or {}
    nra = wt.get("next_retry_at")
    if nra:
        try:
            due = parse_ts(nra)
        except ValueError:
            due = None
        if due is not None and due > utcnow():
            delay = (due - utcnow()).total_seconds()
            eid = execution["id"]
            ctx.after(delay, lambda: ctx.execution_requested(eid), name=f"retry-{eid}")
            return f"retry not due until {nra} (re-queued in {delay:.2f}s)"
    if wt.get("task_index") is None:
        return None
    cur.execute("SELECT task_graph FROM workflow_execution WHERE id = %s",
                (wt.get("workflow_execution"),))
    wf = cur.fetchone()
    task = ((wf or {}).get("task_graph") or {}).get("tasks", {}).get(wt.get("task_name")) or {}
    concurrency = max(1, int(task.get("concurrency") or 1))
    cur.execute(
        "SELECT id, status FROM execution WHERE parent = %s"
        " AND workflow_task->>'task_name' = %s"
        " AND COALESCE(workflow_task->>'task_batch', '') = COALESCE(%s, '')"
        " AND status IN ('requested', 'scheduling', 'scheduled', 'running', 'canceling')"
        " ORDER BY (workflow_task->>'task_index')::int, id",
        (execution["parent"], wt.get("task_name"),
         None if wt.get("task_batch") is None else str(wt.get("task_batch"))))
    rows = cur.fetchall()
    active = sum(1 for r in rows if r["status"] in ACTIVE)
    waiting = [r["id"] for r in rows if r["status"] == "requested"]
    free = concurrency - active
    if free <= 0:
        return f"with_items concurrency {concurrency} reached ({active} active)"
    if execution["id"] not in waiting[:free]:
        return f"with_items: earlier items are first in line ({free} free slot(s))"
    return None


# Top-level executions (no workflow gate applies) are claimed in the first statement, several at
# once when their messages arrived together; it also returns the row versions of each one's
# action and runtime for the definition cache.
_CLAIM_TOP_LEVEL = prepared.Statement("executor_claim", (
    "UPDATE execution SET status = 'scheduling' WHERE id = ANY(%(ids)s) AND status = 'requested'"
    " AND parent IS NULL RETURNING *,"
    " (SELECT a.xmin::text FROM action a WHERE a.id = execution.action) AS _hint_action_version,"
    " (SELECT a.runtime FROM action a WHERE a.id = execution.action) AS _hint_runtime_id,"
    " (SELECT r.xmin::text FROM action a JOIN runtime r ON r.id = a.runtime"
    "  WHERE a.id = execution.action) AS _hint_runtime_version"), {"ids": "bigint[]"})


def _claim(ctx: Ctx, cur, eid) -> dict | None:
    """`requested -> scheduling` (a workflow child only once its gate lets it through); None when
    there is nothing to claim (logged)."""
    try:
        ids = [int(eid)]
    except (TypeError, ValueError):
        ids = []
    claimed = _CLAIM_TOP_LEVEL.all(cur, {"ids": ids}) if ids else []
    if claimed:
        return claimed[0]
    cur.execute("SELECT * FROM execution WHERE id = %s", (eid,))
    execution = cur.fetchone()
    if execution is None:
        log.warning("execution %s not found; ignoring execution.requested", eid)
        return None
    if execution["status"] != "requested":
        log.info("execution %s is %s, not requested (duplicate delivery); skipped",
                 eid, execution["status"])
        return None
    wt = execution.get("workflow_task")
    if execution.get("parent") is not None and wt and wt.get("workflow_execution"):
        cur.execute("SELECT id FROM workflow_execution WHERE id = %s FOR UPDATE",
                    (wt["workflow_execution"],))
        reason = _gate_workflow_child(ctx, cur, execution)
        if reason:
            log.info("execution %s (task %s) stays requested: %s", eid, wt.get("task_name"), reason)
            return None
    cur.execute("UPDATE execution SET status = 'scheduling' WHERE id = %s AND status = 'requested'"
                " RETURNING *", (eid,))
    execution = cur.fetchone()
    if execution is None:
        log.info("execution %s was claimed elsewhere; skipped", eid)
    return execution


# `scheduling -> scheduled` on the chosen workers plus the E6 `execution.scheduled` rows, committed
# with the claim, before the dispatch; one statement for every execution of a batch.
_SCHEDULE = prepared.Statement("executor_schedule", (
    "WITH input AS (SELECT * FROM unnest(%(ids)s, %(workers)s, %(refs)s, %(details)s)"
    "  AS t(id, worker, ref, details)),"
    " scheduled AS (UPDATE execution e SET status = 'scheduled', worker = i.worker FROM input i"
    "  WHERE e.id = i.id AND e.status = 'scheduling' RETURNING e.id)"
    " INSERT INTO audit_event (category, event_type, outcome, actor_login, actor_token_type,"
    "  resource_type, resource_id, resource_ref, details)"
    " SELECT 'execution', %(event)s, %(outcome)s, 'executor', 'service', 'executions',"
    "  i.id::text, i.ref, i.details::jsonb FROM input i ORDER BY i.id"),
    {"ids": "bigint[]", "workers": "bigint[]", "refs": "text[]", "details": "text[]",
     "event": "text", "outcome": "text"})

_ACTIVE_WORKERS = prepared.Statement("executor_workers", (
    "SELECT * FROM worker WHERE status = 'active' AND worker_role = 'action'"
    " AND last_heartbeat IS NOT NULL"
    " AND last_heartbeat >= now() - make_interval(secs => %(timeout)s) ORDER BY id"),
    {"timeout": "double precision"})


def _active_workers(ctx: Ctx, cur) -> list[dict]:
    timeout = float(ctx.cfg.get("executor.worker_heartbeat_timeout", 90))
    return _ACTIVE_WORKERS.all(cur, {"timeout": timeout})


def _again_if_stale(fn, what):
    try:
        return fn()
    except prepared.Stale as exc:  # rolled back: nothing happened yet, so run it again
        log.warning("%s: %s; scheduling again", what, exc)
        return fn()


def handle_execution_requested(ctx: Ctx, body: dict) -> None:
    eid = body.get("execution_id")
    _again_if_stale(lambda: _schedule_one(ctx, eid), f"execution {eid}")


def handle_execution_requested_batch(ctx: Ctx, bodies: list[dict]) -> None:
    """`execution.requested` messages that arrived together: their top-level executions are
    claimed and scheduled in one transaction, one statement for all; the others (workflow
    children, duplicates, unknown ids) go through `handle_execution_requested` one by one."""
    ids, others = [], []
    for body in bodies:
        try:
            ids.append(int(body.get("execution_id")))
        except (TypeError, ValueError):
            others.append(body)
    rest = _again_if_stale(lambda: _schedule_many(ctx, ids), f"executions {ids}") if ids else []
    for body in [{"execution_id": eid} for eid in rest] + others:
        try:
            handle_execution_requested(ctx, body)
        except Exception:  # as for a single message: logged, the others still run
            log.exception("execution.requested handling failed for %s", body)


def _schedule_one(ctx: Ctx, eid) -> None:
    after_commit: list[tuple] = []
    with ctx.db.tx() as cur:
        execution = _claim(ctx, cur, eid)
        if execution is None:
            return
        workflow_start, schedules = _decide(ctx, cur, [execution], after_commit)
        _schedule(cur, schedules, after_commit)
    _after(ctx, after_commit, workflow_start)


def _schedule_many(ctx: Ctx, ids: list[int]) -> list[int]:
    """Schedule the top-level executions among `ids`; returns the ids it did not claim."""
    after_commit: list[tuple] = []
    with ctx.db.tx() as cur:
        claimed = sorted(_CLAIM_TOP_LEVEL.all(cur, {"ids": ids}), key=lambda e: e["id"])
        workflow_starts, schedules = _decide(ctx, cur, claimed, after_commit)
        _schedule(cur, schedules, after_commit)
    _after(ctx, after_commit, workflow_starts)
    rest = list(ids)
    for execution in claimed:
        rest.remove(execution["id"])
    return rest


def _after(ctx: Ctx, after_commit: list[tuple], workflow_starts: list[dict]) -> None:
    ctx.flush(after_commit)
    if workflow_starts:
        from . import workflows
        for execution in workflow_starts:
            workflows.start_workflow(ctx, execution["id"])


def _decide(ctx: Ctx, cur, claimed: list[dict], after_commit: list[tuple]
            ) -> tuple[list[dict], list[tuple[dict, dict, dict]]]:
    """For each claimed (`scheduling`) execution, in order: fail it (E10 parameters, unknown
    action, no compatible worker), or leave it to the workflow engine, or pick its worker.
    Returns (workflow parents to start, [(execution, action, worker)] to schedule)."""
    workflow_starts: list[dict] = []
    schedules: list[tuple[dict, dict, dict]] = []
    workers: list[dict] | None = None
    for execution in claimed:
        eid = execution["id"]
        hints = {k: execution.pop(k) for k in list(execution) if k.startswith("_hint_")}
        action, _ = ctx.definitions.get("action", execution.get("action"),
                                        hints.get("_hint_action_version"), cur)
        if action is None:
            cur.execute("SELECT * FROM action WHERE ref = %s", (execution["action_ref"],))
            action = cur.fetchone()
        wf_def = execution.get("workflow_def") or (action or {}).get("workflow_def")
        # E10 param_validation: a top-level execution whose config fails the action's schema
        # fails here, before any worker is chosen (param_validation.py).
        invalid = param_validation.invalid_config(execution, action)
        if invalid is not None:
            if param_validation.fail_execution(cur, eid, invalid):
                after_commit.append(("execution_completed", eid, "failed"))
            log.warning("execution %s failed parameter validation: %s", eid, invalid)
        elif wf_def is not None:
            if execution.get("workflow_def") is None:
                cur.execute("UPDATE execution SET workflow_def = %s WHERE id = %s", (wf_def, eid))
                execution["workflow_def"] = wf_def
            workflow_starts.append(execution)
        elif action is None:
            _fail_unschedulable(cur, eid, f"Action '{execution['action_ref']}' not found")
            after_commit.append(("execution_completed", eid, "failed"))
            log.warning("execution %s failed: action %s not found", eid, execution["action_ref"])
        else:
            runtime_id = action.get("runtime")
            runtime, _ = ctx.definitions.get(
                "runtime", runtime_id, hints.get("_hint_runtime_version")
                if runtime_id is not None and runtime_id == hints.get("_hint_runtime_id") else None,
                cur)
            if workers is None:
                workers = _active_workers(ctx, cur)
            worker = select_worker(ctx, cur, runtime, execution, action, workers)
            if worker is None:
                rt = runtime["name"] if runtime else "any"
                message = (f"No compatible workers found for action: {action['ref']} "
                           f"(requires runtime: {rt})")
                _fail_unschedulable(cur, eid, message)
                after_commit.append(("execution_completed", eid, "failed"))
                log.warning("execution %s unschedulable: %s", eid, message)
            else:
                schedules.append((execution, action, worker))
    return workflow_starts, schedules


def _schedule(cur, schedules: list[tuple[dict, dict, dict]], after_commit: list[tuple]) -> None:
    if not schedules:
        return
    _SCHEDULE.execute(cur, {
        "ids": [e["id"] for e, _a, _w in schedules],
        "workers": [w["id"] for _e, _a, w in schedules],
        "refs": [e.get("action_ref") for e, _a, _w in schedules],
        "details": [dumps({"worker_id": w["id"], "worker_name": w["name"], "status": "scheduled",
                           "old_status": "requested"}) for _e, _a, w in schedules],
        "event": audit.EXECUTION_SCHEDULED,
        "outcome": audit.execution_outcome(audit.EXECUTION_SCHEDULED)})
    for execution, action, worker in schedules:
        after_commit.append(("dispatch_to_worker", worker["id"], execution["id"]))
        log.info("execution %s (%s) scheduled on worker %s (%s)", execution["id"], action["ref"],
                 worker["id"], worker["name"])


def _fail_unschedulable(cur, eid: int, message: str) -> None:
    cur.execute("UPDATE execution SET status = 'failed', result = %s WHERE id = %s"
                " AND status IN ('requested', 'scheduling')",
                (J({"error": "Execution is unschedulable", "message": message,
                    "succeeded": False}), eid))


def select_worker(ctx: Ctx, cur, runtime: dict | None, execution: dict | None = None,
                  action: dict | None = None, workers: list[dict] | None = None) -> dict | None:
    """`workers`: the active workers when already read in this transaction."""
    if workers is None:
        workers = _active_workers(ctx, cur)
    # worker placement: selector vs labels, tolerations vs NoSchedule taints (placement.py)
    selector, tolerations = placement.placement_for(execution, action)
    candidates = [w for w in workers if worker_supports(w, runtime)
                  and placement.worker_admits(w.get("capabilities"), selector, tolerations)]
    if not candidates:
        return None
    ctx.rr_counter += 1
    return candidates[ctx.rr_counter % len(candidates)]
