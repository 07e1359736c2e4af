"""Shared plumbing for the executor modules: database, publisher, delayed work, status sets."""
from __future__ import annotations

import logging
import threading
from typing import Callable

from .. import broker
from .definitions import DefinitionCache

log = logging.getLogger(__name__)

TERMINAL = ("completed", "failed", "timeout", "cancelled", "abandoned")
ACTIVE = ("scheduling", "scheduled", "running", "canceling")


class Ctx:
    """What every handler needs: config, database, publisher, and a timer facility."""

    def __init__(self, cfg, db, publisher: broker.Publisher | None):
        self.cfg = cfg
        self.db = db
        self.publisher = publisher
        self._timers: set[threading.Timer] = set()
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self.rr_counter = 0
        self.definitions = DefinitionCache(db)

    # -- messages (always published after the transaction that wrote the rows has committed)
    def publish(self, exchange: str, routing_key: str, body: dict) -> None:
        if self.publisher is None:
            log.warning("no message queue; dropping %s %s", routing_key, body)
            return
        self.publisher.publish(exchange, routing_key, body)

    def execution_requested(self, execution_id: int) -> None:
        self.publish(broker.EXECUTIONS, "execution.requested", {"execution_id": execution_id})

    def execution_completed(self, execution_id: int, status: str) -> None:
        self.publish(broker.EXECUTIONS, "execution.completed",
                     {"execution_id": execution_id, "status": status})

    def dispatch_to_worker(self, worker_id: int, execution_id: int) -> None:
        self.publish(broker.EXECUTIONS, f"execution.dispatch.worker.{worker_id}",
                     {"execution_id": execution_id})

    def enforcement_created(self, enforcement_id: int) -> None:
        self.publish(broker.EVENTS, "enforcement.created", {"enforcement_id": enforcement_id})

    def event_created(self, event_id: int, trigger_ref: str) -> None:
        self.publish(broker.EVENTS, "event.created", {"event_id": event_id, "trigger_ref": trigger_ref})

    def flush(self, messages: list[tuple]) -> None:
        """Publish a list of (kind, args...) collected inside a transaction."""
        for msg in messages:
            kind, args = msg[0], msg[1:]
            try:
                getattr(self, kind)(*args)
            except Exception:  # a lost message is logged; recovery on restart re-publishes
                log.exception("publishing %s%r failed", kind, args)

    # -- delayed work
    def after(self, delay: float, fn: Callable[[], None], name: str = "delayed") -> None:
        def run():
            with self._lock:
                self._timers.discard(timer)
            if self.stopping.is_set():
                return
            try:
                fn()
            except Exception:
                log.exception("delayed task %s failed", name)

        timer = threading.Timer(max(0.0, delay), run)
        timer.daemon = True
        timer.name = name
        with self._lock:
            self._timers.add(timer)
        timer.start()

    def cancel_timers(self) -> None:
        with self._lock:
            timers = list(self._timers)
            self._timers.clear()
        for t in timers:
            t.cancel()
