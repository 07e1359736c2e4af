"""The executor service: `python -m attune_emulator executor --config FILE`.

Consumers (durable queues, as upstream):
  executor.events        <- event.created        rule matching, enforcements   (events.py)
  executor.enforcements  <- enforcement.created  executions                    (enforcements.py)
  executor.requests      <- execution.requested  scheduling, workflow start    (scheduler.py)
  executor.completions   <- execution.completed  workflow advancement          (workflows.py)
                                                 and action retries (E2)       (retries.py)
  executor.inquiries     <- inquiry.responded    inquiry task completion       (workflows.py)
plus the timeout monitor (monitor.py). On start, executions left in `requested` (and enforcements
left in `created`) are re-published; claims make a duplicate harmless. SIGTERM/SIGINT stop the
consumers gracefully.
"""
from __future__ import annotations

import logging
import signal
import sys
import threading

from .. import broker
from ..db import Database
from . import enforcements, events, prepared, retries, scheduler, workflows
from .common import Ctx
from .monitor import TimeoutMonitor

log = logging.getLogger(__name__)

QUEUES = [
    ("executor.events", broker.EVENTS, "event.created", events.handle_event_created),
    ("executor.enforcements", broker.EVENTS, "enforcement.created",
     enforcements.handle_enforcement_created),
    ("executor.requests", broker.EXECUTIONS, "execution.requested",
     scheduler.handle_execution_requested),
    ("executor.completions", broker.EXECUTIONS, "execution.completed",
     lambda ctx, body: handle_execution_completed(ctx, body)),
    ("executor.inquiries", broker.EVENTS, "inquiry.responded", workflows.handle_inquiry_responded),
]


_PEEK = prepared.Statement("executor_completed_peek", (
    "SELECT e.id, e.parent, e.status, e.workflow_task, a.retry_policy FROM execution e"
    " LEFT JOIN action a ON a.id = e.action WHERE e.id = ANY(%(ids)s)"), {"ids": "bigint[]"})


def handle_execution_completed(ctx: Ctx, body: dict) -> None:
    """`execution.completed`: advance the workflow of a child, then (extension E2) retry a failed
    top-level execution whose action has a retry policy. One failing step does not stop the other.
    Both start from the same row, read once."""
    _completed(ctx, [body], raise_errors=True)


def handle_execution_completed_batch(ctx: Ctx, bodies: list[dict]) -> None:
    """`execution.completed` messages that arrived together: their rows are read with one
    statement, then each is handled as `handle_execution_completed`, in order (a failure is
    logged and does not stop the others)."""
    _completed(ctx, bodies, raise_errors=False)


def _completed(ctx: Ctx, bodies: list[dict], raise_errors: bool) -> None:
    ids = []
    for body in bodies:
        try:
            ids.append(int(body.get("execution_id")))
        except (TypeError, ValueError):
            pass
    rows = prepared.run(ctx.db, _PEEK, {"ids": ids}, fetch="all") if ids else []
    peeks = {row["id"]: row for row in rows}
    for body in bodies:
        try:
            peek = peeks.get(int(body.get("execution_id")))
        except (TypeError, ValueError):
            peek = None
        if peek is None:
            log.warning("execution.completed for unknown execution %s", body.get("execution_id"))
            continue
        try:
            try:
                workflows.handle_execution_completed(ctx, body, peek)
            finally:
                retries.handle_execution_completed(ctx, body, peek)
        except Exception:
            if raise_errors:
                raise
            log.exception("execution.completed handling failed for %s", body)


# queues whose messages are handled together when several arrive at once
BATCH_HANDLERS = {
    "executor.requests": scheduler.handle_execution_requested_batch,
    "executor.completions": handle_execution_completed_batch,
}


def recover(ctx: Ctx) -> None:
    """Re-drive work left behind by a previous executor process."""
    reset = ctx.db.all(
        "UPDATE execution e SET status = 'requested' WHERE e.status = 'scheduling'"
        " AND NOT EXISTS (SELECT 1 FROM workflow_execution w WHERE w.execution = e.id)"
        " RETURNING id")
    if reset:
        log.info("recovery: %d execution(s) left in 'scheduling' reset to 'requested': %s",
                 len(reset), [r["id"] for r in reset])
    enfs = ctx.db.all("SELECT id FROM enforcement WHERE status = 'created' ORDER BY id")
    for row in enfs:
        ctx.enforcement_created(row["id"])
    rows = ctx.db.all("SELECT id FROM execution WHERE status = 'requested' ORDER BY id")
    for row in rows:
        ctx.execution_requested(row["id"])
    # An executor killed between committing `scheduled` and publishing the dispatch leaves the
    # execution stranded until scheduled_timeout. Dispatch again: the worker claims with
    # `WHERE status = 'scheduled'`, so a second delivery of the same execution is skipped.
    sched = ctx.db.all("SELECT id, worker FROM execution WHERE status = 'scheduled'"
                       " AND worker IS NOT NULL ORDER BY id")
    for row in sched:
        ctx.dispatch_to_worker(row["worker"], row["id"])
    if enfs or rows or sched:
        log.info("recovery: re-published %d enforcement(s), %d requested and %d scheduled "
                 "execution(s)", len(enfs), len(rows), len(sched))


def main(cfg) -> int:
    if not cfg.has_section("message_queue") or not cfg.amqp_url:
        print("attune executor: configuration has no 'message_queue' section (message_queue.url); "
              "the executor cannot run without RabbitMQ", file=sys.stderr)
        log.error("message_queue configuration missing; executor exiting")
        return 1
    url = cfg.amqp_url
    db = Database.from_config(cfg)
    try:
        broker.wait_for_broker(url, timeout=30)
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    publisher = broker.Publisher(url)
    ctx = Ctx(cfg, db, publisher)
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("received %s; shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    consumers = []
    for queue, exchange, key, handler in QUEUES:
        def wrapped(_rk, body, handler=handler):
            handler(ctx, body)
        batch = BATCH_HANDLERS.get(queue)
        # several deliveries in flight per queue: the next one is already here when a handler
        # returns (handled in order; redelivered if the executor dies)
        consumer = broker.Consumer(
            url, queue, [(exchange, key)], wrapped, prefetch=32 if batch else 10,
            name=f"executor-{queue}",
            batch_handler=(lambda items, batch=batch: batch(ctx, [b for _rk, b in items]))
            if batch else None)
        consumer.start()
        consumers.append(consumer)
    for consumer in consumers:
        consumer.ready.wait(timeout=15)
    monitor = TimeoutMonitor(ctx)
    if cfg.get("executor.enable_timeout_monitor", True):
        monitor.start()
    try:
        recover(ctx)
    except Exception:
        log.exception("recovery of pending work failed")
    log.info("executor ready (%d consumers, worker heartbeat timeout %ss)", len(consumers),
             cfg.get("executor.worker_heartbeat_timeout", 90))
    while not stop.wait(0.5):
        pass
    ctx.stopping.set()
    monitor.stop()
    for consumer in consumers:
        consumer.stop()
    for consumer in consumers:
        consumer.join(timeout=10)
    ctx.cancel_timers()
    publisher.close()
    db.close()
    log.info("executor stopped")
    return 0
