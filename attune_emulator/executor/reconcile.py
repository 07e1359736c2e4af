"""Workflow reconciliation (run by the executor's monitor, monitor.py).

A workflow advances only on its children's `execution.completed` messages. If such a message is
lost (a handler crashed before publishing, a broker hiccup), the parent would stay `running`
forever. Every monitor interval this check finds workflow parents in `running` (or `canceling`)
that have
  - a terminal child whose completion was never processed (`workflow_task.completed_at` missing)
    for longer than the grace period -> that child's completion is processed now, through the
    very code path of the message handler (`workflows.handle_execution_completed`: workflow row
    lock, claim of `completed_at`, so a late or duplicate message is a no-op), or
  - no child left active or unprocessed (nothing left to schedule) for longer than the grace ->
    the completion check runs under the same row locks (`finalize`), which completes, fails or
    cancels the parent exactly once.

The grace (`executor.workflow_reconcile_grace`, default 3 x `executor.timeout_check_interval`,
at least 2 s) leaves the normal message path time to do the work first.

`plan` is the pure selection logic; `reconcile_workflows` applies it to the database.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .common import TERMINAL, Ctx

log = logging.getLogger(__name__)

ADVANCING = ("running", "canceling")
BATCH = 100


@dataclass
class Plan:
    """What reconciliation does for one workflow parent."""
    claim: list[int] = field(default_factory=list)  # children whose completion is processed now
    finalize: bool = False                          # run the completion check on the parent

    def __bool__(self) -> bool:
        return bool(self.claim) or self.finalize


def _unprocessed(child: dict) -> bool:
    wt = child.get("workflow_task")
    return isinstance(wt, dict) and not wt.get("completed_at")


def plan(parent_status: str, parent_age: float, children: list[dict], grace: float) -> Plan:
    """Decide what to reconcile for one parent.

    `children`: dicts with `id`, `status`, `workflow_task` and `age` (seconds since the child's
    last status change); `parent_age`: seconds since the parent's last change."""
    if parent_status not in ADVANCING:
        return Plan()
    stale = sorted(c["id"] for c in children
                   if c["status"] in TERMINAL and _unprocessed(c) and float(c["age"]) >= grace)
    if stale:
        return Plan(claim=stale)
    pending = [c for c in children if c["status"] not in TERMINAL or _unprocessed(c)]
    if pending:
        return Plan()
    return Plan(finalize=float(parent_age) >= grace)


def grace_seconds(cfg) -> float:
    interval = float(cfg.get("executor.timeout_check_interval", 60))
    configured = cfg.get("executor.workflow_reconcile_grace")
    if configured is not None:
        return max(0.0, float(configured))
    return max(2.0, 3 * interval)


def _candidates(ctx: Ctx, grace: float) -> list[dict]:
    return ctx.db.all(
        "SELECT p.id, p.status::text AS status,"
        "  extract(epoch FROM now() - p.updated)::float8 AS age"
        " FROM execution p JOIN workflow_execution w ON w.execution = p.id"
        " WHERE p.status = ANY(%s::execution_status_enum[]) AND ("
        "  EXISTS (SELECT 1 FROM execution c WHERE c.parent = p.id"
        "   AND c.status = ANY(%s::execution_status_enum[]) AND c.workflow_task IS NOT NULL"
        "   AND c.workflow_task->>'completed_at' IS NULL"
        "   AND c.updated < now() - make_interval(secs => %s))"
        "  OR (p.updated < now() - make_interval(secs => %s) AND NOT EXISTS ("
        "   SELECT 1 FROM execution c WHERE c.parent = p.id"
        "    AND (NOT (c.status = ANY(%s::execution_status_enum[]))"
        "     OR (c.workflow_task IS NOT NULL AND c.workflow_task->>'completed_at' IS NULL)))))"
        " ORDER BY p.id LIMIT %s",
        (list(ADVANCING), list(TERMINAL), grace, grace, list(TERMINAL), BATCH))


def _children(ctx: Ctx, parent_id: int) -> list[dict]:
    return ctx.db.all(
        "SELECT id, status::text AS status, workflow_task,"
        "  extract(epoch FROM now() - updated)::float8 AS age"
        " FROM execution WHERE parent = %s ORDER BY id", (parent_id,))


def finalize(ctx: Ctx, parent_id: int) -> None:
    """The workflow's completion check under its row locks (workflow_execution, then parent)."""
    from .workflows import _flush, _Run

    messages: list[tuple] = []
    with ctx.db.tx() as cur:
        cur.execute("SELECT * FROM workflow_execution WHERE execution = %s FOR UPDATE",
                    (parent_id,))
        wf = cur.fetchone()
        if wf is None:
            return
        cur.execute("SELECT * FROM execution WHERE id = %s FOR UPDATE", (parent_id,))
        parent = cur.fetchone()
        if parent is None or parent["status"] not in ADVANCING:
            return
        run = _Run(ctx, cur, wf, parent)
        run.check_completion()
        run.save()
        messages.extend(run.messages)
    _flush(ctx, messages)


def reconcile_workflows(ctx: Ctx) -> int:
    """One reconciliation pass; returns the number of parents acted on."""
    from .workflows import handle_execution_completed

    grace = grace_seconds(ctx.cfg)
    acted = 0
    for parent in _candidates(ctx, grace):
        decided = plan(parent["status"], parent["age"], _children(ctx, parent["id"]), grace)
        if not decided:
            continue
        acted += 1
        for child_id in decided.claim:
            log.warning("workflow %s: completion of child %s was never processed (lost "
                        "execution.completed?); processing it now", parent["id"], child_id)
            handle_execution_completed(ctx, {"execution_id": child_id})
        if decided.finalize:
            log.warning("workflow %s: %s with no child left to run; running its completion "
                        "check", parent["id"], parent["status"])
            finalize(ctx, parent["id"])
    return acted


__all__ = ["Plan", "plan", "grace_seconds", "reconcile_workflows", "finalize"]
