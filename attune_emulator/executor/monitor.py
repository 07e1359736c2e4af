"""The executor's periodic checks (every `executor.timeout_check_interval` seconds).

  - running executions whose worker is not active or whose heartbeat is older than
    `executor.worker_heartbeat_timeout` -> `abandoned` (plus a `core.alert` event);
  - `scheduled` executions older than `executor.scheduled_timeout` -> `failed`;
  - `pending` inquiries past `timeout_at` -> `timeout`, and their still-running execution ->
    `timeout` with `workflow_task.timed_out = true`;
  - `active` workers silent for more than `executor.worker_heartbeat_timeout` -> `inactive`;
  - workflow parents whose children's completions were lost -> advanced (reconcile.py).
Each terminal transition is followed by `execution.completed`.
"""
from __future__ import annotations

import logging
import threading

from .. import audit
from ..db import J
from .common import Ctx
from .reconcile import reconcile_workflows

log = logging.getLogger(__name__)

ABANDONED_ERROR = "Execution abandoned because its worker became unavailable while running"


# A worker stopping gracefully is `inactive` but still finishing its in-flight work; while it does,
# it refreshes `meta.draining.at` (worker/service.py) and its executions are not abandoned. A
# worker killed mid-drain stops refreshing and is treated like a silent one.
_DRAINING = ("(w.status = 'inactive' AND w.meta->'draining'->>'at' IS NOT NULL AND"
             " (w.meta->'draining'->>'at')::timestamptz >= now() - make_interval(secs => %s))")


def check_abandoned(ctx: Ctx) -> None:
    """Running executions on a worker that is inactive/error, silent for more than
    `executor.worker_heartbeat_timeout` s (extension E13; upstream: 90 s) or gone -> `abandoned`,
    with upstream's result (`original_status`, the worker snapshot, `reconciled_at`) and a
    `core.alert` event (failure_type `execution_abandoned_worker_unavailable`)."""
    timeout = float(ctx.cfg.get("executor.worker_heartbeat_timeout", 90))
    rows = ctx.db.all(
        "WITH dead AS (SELECT e.id, w.id AS wid, w.name, w.worker_role, w.status AS wstatus,"
        "   w.last_heartbeat,"
        "   GREATEST(0, floor(extract(epoch FROM now() - w.last_heartbeat)))::bigint AS age"
        "  FROM execution e LEFT JOIN worker w ON w.id = e.worker"
        "  WHERE e.status = 'running' AND e.worker IS NOT NULL AND (w.id IS NULL"
        "   OR w.status = 'error' OR (NOT " + _DRAINING + " AND (w.status = 'inactive'"
        "   OR w.last_heartbeat IS NULL"
        "   OR w.last_heartbeat < now() - make_interval(secs => %s))))"
        "  FOR UPDATE OF e SKIP LOCKED)"
        " UPDATE execution e SET status = 'abandoned', result = jsonb_build_object("
        "  'error', %s::text, 'abandoned_by', 'execution_timeout_monitor',"
        "  'original_status', 'running',"
        "  'worker', CASE WHEN dead.wid IS NULL THEN NULL ELSE jsonb_build_object("
        "    'id', dead.wid, 'name', dead.name, 'role', dead.worker_role, 'status', dead.wstatus,"
        "    'last_heartbeat', attune.ts(dead.last_heartbeat), 'heartbeat_age_seconds', dead.age,"
        "    'cordoned', false) END,"
        "  'reconciled_at', attune.ts(now()))"
        " FROM dead WHERE e.id = dead.id AND e.status = 'running'"
        " RETURNING e.id, e.worker, e.action_ref, e.result, dead.wid, dead.name, dead.worker_role,"
        "  dead.wstatus, dead.last_heartbeat",
        (timeout, timeout, ABANDONED_ERROR))
    for row in rows:
        log.warning("execution %s (%s) abandoned: worker %s inactive or silent for more than %.0fs",
                    row["id"], row["action_ref"], row["worker"], timeout)
        if row["wid"] is not None:
            _alert(ctx, row)
        ctx.execution_completed(row["id"], "abandoned")


def _alert(ctx: Ctx, row: dict) -> None:
    """upstream's SystemAlert as the payload of a `core.alert` event (source_ref attune.system)."""
    try:
        trig = ctx.db.one("SELECT id, ref FROM trigger WHERE ref = 'core.alert'")
        if trig is None:
            log.warning("core.alert trigger not registered; no alert for execution %s", row["id"])
            return
        observed = ctx.db.one("SELECT attune.ts(now()) AS t")["t"]
        role = row.get("worker_role") or "action"
        payload = {
            "severity": "error", "category": "execution_reconciliation",
            "failure_type": "execution_abandoned_worker_unavailable",
            "component_type": "execution", "component_id": row["id"],
            "component_ref": row["action_ref"], "worker_role": role, "observed_at": observed,
            "summary": f"Execution {row['id']} was abandoned because worker '{row['name']}' "
                       f"became unavailable",
            "details": {"execution_id": row["id"], "action_ref": row["action_ref"],
                        "worker_id": row["wid"], "worker_name": row["name"], "worker_role": role,
                        "worker_status": row["wstatus"],
                        "last_heartbeat": (row["result"].get("worker") or {}).get("last_heartbeat"),
                        "reconciliation_result": row["result"]},
            "correlation_id": f"execution:{row['id']}:worker_unavailable",
        }
        ev = ctx.db.one(
            "INSERT INTO event (trigger, trigger_ref, payload, source_ref) VALUES (%s, %s, %s,"
            " 'attune.system') RETURNING id", (trig["id"], trig["ref"], J(payload)))
        ctx.event_created(ev["id"], trig["ref"])
    except Exception:
        log.exception("could not emit core.alert for abandoned execution %s", row["id"])


def check_stale_workers(ctx: Ctx) -> None:
    """Workers `active` but silent for more than `executor.worker_heartbeat_timeout` s (extension
    E13; upstream: 90 s) -> `inactive`, as upstream's executor does every interval. A worker that
    heartbeats again sets itself `active` (worker/service.py)."""
    timeout = float(ctx.cfg.get("executor.worker_heartbeat_timeout", 90))
    rows = ctx.db.all(
        "UPDATE worker SET status = 'inactive' WHERE status = 'active'"
        " AND (last_heartbeat IS NULL OR last_heartbeat < now() - make_interval(secs => %s))"
        " RETURNING id, name, attune.ts(last_heartbeat) AS last_heartbeat", (timeout,))
    for row in rows:
        log.warning("worker %s (%s) marked inactive: no heartbeat for more than %.0fs (last %s)",
                    row["id"], row["name"], timeout, row["last_heartbeat"])


def check_scheduled(ctx: Ctx) -> None:
    timeout = int(ctx.cfg.get("executor.scheduled_timeout", 300))
    rows = ctx.db.all(
        "WITH stale AS (SELECT id, floor(extract(epoch FROM now() - updated))::int AS age"
        "  FROM execution WHERE status = 'scheduled' AND updated < now() - make_interval(secs => %s)"
        "  FOR UPDATE SKIP LOCKED)"
        " UPDATE execution e SET status = 'failed', result = jsonb_build_object("
        "  'error', format('Execution timeout: worker did not pick up task within %%s seconds"
        " (scheduled for %%s seconds)', %s::int, stale.age),"
        "  'failed_by', 'execution_timeout_monitor', 'timeout_seconds', %s::int,"
        "  'age_seconds', stale.age, 'original_status', 'scheduled', 'succeeded', false)"
        " FROM stale WHERE e.id = stale.id AND e.status = 'scheduled' RETURNING e.id, stale.age",
        (timeout, timeout, timeout))
    for row in rows:
        log.warning("execution %s failed: worker did not pick it up within %ss (scheduled %ss)",
                    row["id"], timeout, row["age"])
        ctx.execution_completed(row["id"], "failed")


def check_inquiries(ctx: Ctx) -> None:
    expired = ctx.db.all(
        "UPDATE inquiry SET status = 'timeout' WHERE status = 'pending' AND timeout_at IS NOT NULL"
        " AND timeout_at <= now() RETURNING id, execution")
    for row in expired:
        log.info("inquiry %s timed out (execution %s)", row["id"], row["execution"])
    # Also covers inquiries the API marked `timeout` when a late response arrived.
    rows = ctx.db.all(
        "SELECT i.id, i.execution FROM inquiry i JOIN execution e ON e.id = i.execution"
        " WHERE i.status = 'timeout' AND e.status = 'running'"
        " AND e.result->>'inquiry_id' = i.id::text")
    for row in rows:
        updated = ctx.db.one(
            "UPDATE execution SET status = 'timeout', result = %s,"
            " workflow_task = CASE WHEN workflow_task IS NULL THEN NULL"
            "  ELSE workflow_task || '{\"timed_out\": true}'::jsonb END"
            " WHERE id = %s AND status = 'running' RETURNING id",
            (J({"error": "inquiry timed out", "__inquiry_id": row["id"]}), row["execution"]))
        if updated:
            log.info("execution %s timed out waiting for inquiry %s", row["execution"], row["id"])
            ctx.execution_completed(row["execution"], "timeout")


class TimeoutMonitor(threading.Thread):
    def __init__(self, ctx: Ctx):
        super().__init__(name="executor-timeout-monitor", daemon=True)
        self.ctx = ctx
        self.interval = max(0.2, float(ctx.cfg.get("executor.timeout_check_interval", 60)))
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        log.info("timeout monitor started (every %.1fs; heartbeat timeout %ss, scheduled timeout %ss)",
                 self.interval, self.ctx.cfg.get("executor.worker_heartbeat_timeout", 90),
                 self.ctx.cfg.get("executor.scheduled_timeout", 300))
        while not self._stop_event.wait(self.interval):
            for check in (check_abandoned, check_scheduled, check_inquiries, check_stale_workers,
                          reconcile_workflows):
                try:
                    check(self.ctx)
                except Exception:
                    log.exception("timeout monitor: %s failed", check.__name__)
