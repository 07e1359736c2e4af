"""The executor's periodic checks (every `executor.timeout_check_interval` seconds).

  - running executions whose worker is not active or whose heartbeat is older than
    `executor.worker_heartbeat_timeout` -> `abandoned` (plus a `core.alert` event);
  - `scheduled` executions older than `executor.scheduled_timeout` -> `failed`;
  - `pending` inquiries past `timeout_at` -> `timeout`, and their still-running execution ->
    `timeout` with `workflow_task.timed_out = true`.
Each terminal transition is followed by `execution.completed`.
"""
from __future__ import annotations

import logging
import threading

from ..db import J
from .common import Ctx

log = logging.getLogger(__name__)

ABANDONED_ERROR = "Execution abandoned because its worker became unavailable while running"


def check_abandoned(ctx: Ctx) -> None:
    timeout = float(ctx.cfg.get("executor.worker_heartbeat_timeout", 90))
    rows = ctx.db.all(
        "UPDATE execution e SET status = 'abandoned',"
        " result = COALESCE(CASE WHEN jsonb_typeof(e.result) = 'object' THEN e.result END,"
        "  '{}'::jsonb) || jsonb_build_object('error', %s::text, 'abandoned_by',"
        "  'execution_timeout_monitor', 'worker_id', e.worker, 'succeeded', false)"
        " WHERE e.status = 'running' AND e.worker IS NOT NULL AND NOT EXISTS ("
        "  SELECT 1 FROM worker w WHERE w.id = e.worker AND w.status = 'active'"
        "  AND w.last_heartbeat >= now() - make_interval(secs => %s))"
        " RETURNING e.id, e.worker, e.action_ref",
        (ABANDONED_ERROR, timeout))
    for row in rows:
        log.warning("execution %s (%s) abandoned: worker %s inactive or silent for more than %.0fs",
                    row["id"], row["action_ref"], row["worker"], timeout)
        _alert(ctx, row)
        ctx.execution_completed(row["id"], "abandoned")


def _alert(ctx: Ctx, row: dict) -> None:
    try:
        trig = ctx.db.one("SELECT id, ref FROM trigger WHERE ref = 'core.alert'")
        if trig is None:
            return
        ev = ctx.db.one(
            "INSERT INTO event (trigger, trigger_ref, payload, source_ref) VALUES (%s, %s, %s,"
            " 'executor') RETURNING id",
            (trig["id"], trig["ref"], J({"type": "execution_abandoned", "severity": "warning",
                                         "execution_id": row["id"], "worker_id": row["worker"],
                                         "action_ref": row["action_ref"],
                                         "message": ABANDONED_ERROR})))
        ctx.event_created(ev["id"], trig["ref"])
    except Exception:
        log.exception("could not emit core.alert for abandoned execution %s", row["id"])


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
            for check in (check_abandoned, check_scheduled, check_inquiries):
                try:
                    check(self.ctx)
                except Exception:
                    log.exception("timeout monitor: %s failed", check.__name__)
