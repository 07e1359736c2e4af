"""execution.requested -> claim -> workflow orchestration or worker selection.

Claim: `UPDATE execution SET status='scheduling' WHERE id=%s AND status='requested'`; a second
delivery finds nothing to claim. Workflow actions (`action.workflow_def`) go to the workflow
engine. Other actions get a worker: role `action`, status `active`, heartbeat younger than
`executor.worker_heartbeat_timeout`, runtime supported (runtime name lower-cased, `node.js` ->
`node`, or an alias, in the worker's `capabilities.runtimes`), round-robin. The execution becomes
`scheduled` with `worker` set and `execution.dispatch.worker.<id>` is published. Without a
compatible worker it fails at once ("Execution is unschedulable").

Workflow children are gated before the claim, under the workflow_execution row lock: a with_items
item waits in `requested` while `concurrency` siblings of its batch are active, and a task retry
waits until its `next_retry_at`.
"""
from __future__ import annotations

import logging

from .. import audit
from ..db import J, parse_ts, utcnow
from .common import ACTIVE, Ctx
from . import param_validation
from . import placement

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


def handle_execution_requested(ctx: Ctx, body: dict) -> None:
    eid = body.get("execution_id")
    after_commit: list[tuple] = []
    workflow_start = None
    with ctx.db.tx() as cur:
        cur.execute("SELECT * FROM execution WHERE id = %s", (eid,))
        execution = cur.fetchone()
        if execution is None:
            log.warning("execution %s not found; ignoring execution.requested", eid)
            return
        if execution["status"] != "requested":
            log.info("execution %s is %s, not requested (duplicate delivery); skipped",
                     eid, execution["status"])
            return
        wt = execution.get("workflow_task")
        if execution.get("parent") is not None and wt and wt.get("workflow_execution"):
            cur.execute("SELECT id FROM workflow_execution WHERE id = %s FOR UPDATE",
                        (wt["workflow_execution"],))
            reason = _gate_workflow_child(ctx, cur, execution)
            if reason:
                log.info("execution %s (task %s) stays requested: %s", eid, wt.get("task_name"), reason)
                return
        cur.execute("UPDATE execution SET status = 'scheduling' WHERE id = %s AND status = 'requested'"
                    " RETURNING *", (eid,))
        execution = cur.fetchone()
        if execution is None:
            log.info("execution %s was claimed elsewhere; skipped", eid)
            return
        action = None
        if execution.get("action") is not None:
            cur.execute("SELECT * FROM action WHERE id = %s", (execution["action"],))
            action = cur.fetchone()
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
            workflow_start = execution
        elif action is None:
            _fail_unschedulable(cur, eid, f"Action '{execution['action_ref']}' not found")
            after_commit.append(("execution_completed", eid, "failed"))
            log.warning("execution %s failed: action %s not found", eid, execution["action_ref"])
        else:
            runtime = None
            if action.get("runtime") is not None:
                cur.execute("SELECT * FROM runtime WHERE id = %s", (action["runtime"],))
                runtime = cur.fetchone()
            worker = select_worker(ctx, cur, runtime, execution, action)
            if worker is None:
                rt = runtime["name"] if runtime else "any"
                message = (f"No compatible workers found for action: {action['ref']} "
                           f"(requires runtime: {rt})")
                _fail_unschedulable(cur, eid, message)
                after_commit.append(("execution_completed", eid, "failed"))
                log.warning("execution %s unschedulable: %s", eid, message)
            else:
                cur.execute("UPDATE execution SET status = 'scheduled', worker = %s"
                            " WHERE id = %s AND status = 'scheduling'", (worker["id"], eid))
                # E6 execution_audit: committed with the status change, before the dispatch.
                audit.record_execution(cur.execute, execution, audit.EXECUTION_SCHEDULED,
                                       actor_login="executor", actor_token_type="service",
                                       details={"worker_id": worker["id"],
                                                "worker_name": worker["name"],
                                                "status": "scheduled", "old_status": "requested"})
                after_commit.append(("dispatch_to_worker", worker["id"], eid))
                log.info("execution %s (%s) scheduled on worker %s (%s)", eid, action["ref"],
                         worker["id"], worker["name"])
    ctx.flush(after_commit)
    if workflow_start is not None:
        from . import workflows
        workflows.start_workflow(ctx, workflow_start["id"])


def _fail_unschedulable(cur, eid: int, message: str) -> None:
    cur.execute("UPDATE execution SET status = 'failed', result = %s WHERE id = %s"
                " AND status IN ('requested', 'scheduling')",
                (J({"error": "Execution is unschedulable", "message": message,
                    "succeeded": False}), eid))


def select_worker(ctx: Ctx, cur, runtime: dict | None, execution: dict | None = None,
                  action: dict | None = None) -> dict | None:
    timeout = float(ctx.cfg.get("executor.worker_heartbeat_timeout", 90))
    cur.execute("SELECT * FROM worker WHERE status = 'active' AND worker_role = 'action'"
                " AND last_heartbeat IS NOT NULL"
                " AND last_heartbeat >= now() - make_interval(secs => %s) ORDER BY id", (timeout,))
    # worker placement: selector vs labels, tolerations vs NoSchedule taints (placement.py)
    selector, tolerations = placement.placement_for(execution, action)
    candidates = [w for w in cur.fetchall() if worker_supports(w, runtime)
                  and placement.worker_admits(w.get("capabilities"), selector, tolerations)]
    if not candidates:
        return None
    ctx.rr_counter += 1
    return candidates[ctx.rr_counter % len(candidates)]
