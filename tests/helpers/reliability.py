"""Machinery for the stack-reliability checks (cancel/completion race, lost workflow completions,
worker liveness).

- `CancelOnChildEnd`: its own connection to `GET /api/v1/executions/stream`; the moment a child
  of one of the watched workflow parents is reported with a given status (per parent), it sends
  `POST /api/v1/executions/{parent}/cancel` from a separate thread (one cancel per parent) and
  records the answer. On `completed` this lands the cancel in the window where the executor is
  completing the parent because of that very child; on `running` of a short child, around it.
- `simulate_lost_completion`: writes a terminal status on an execution straight into the database
  without publishing `execution.completed`, i.e. exactly the state a crashed handler or a dropped
  broker message leaves behind.
- `workflow_execution_status`: the `workflow_execution` row's status for a parent (database).
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests

from tests.helpers.sse import iter_sse


@dataclass
class CancelAnswer:
    parent: int
    child: int
    http_status: int
    body: Any
    sent_at: float
    answered_at: float


@dataclass
class CancelOnChildEnd:
    api_url: str
    token: str
    child_status: str = "completed"
    answers: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self._parents: dict[int, str] = {}
        self._fired: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._resp = requests.get(self.api_url.rstrip("/") + "/api/v1/executions/stream",
                                  stream=True, timeout=(10, None),
                                  headers={"Authorization": f"Bearer {self.token}",
                                           "Accept": "text/event-stream"})
        assert self._resp.status_code == 200, \
            f"execution stream answered {self._resp.status_code}: {self._resp.text[:300]}"
        self._reader = threading.Thread(target=self._run, name="cancel-on-child-end", daemon=True)
        self._reader.start()

    def watch(self, parent_id: int, on_status: str | None = None) -> None:
        """Cancel `parent_id` when one of its children is reported `on_status` (default:
        `child_status`)."""
        with self._lock:
            self._parents[parent_id] = on_status or self.child_status

    def _run(self) -> None:
        try:
            for _name, _id, data in iter_sse(self._resp):
                if self._stop.is_set():
                    return
                try:
                    ev = json.loads(data)
                except ValueError:
                    continue
                parent = ev.get("parent")
                if parent is None:
                    continue
                with self._lock:
                    if self._parents.get(parent) != ev.get("status") or parent in self._fired:
                        continue
                    # fired, started and listed together: whoever sees it fired can join it
                    self._fired.add(parent)
                    t = threading.Thread(target=self._cancel, args=(parent, ev.get("id")),
                                         daemon=True)
                    t.start()
                    self._threads.append(t)
        except Exception as exc:  # stream closed by close() or by the server
            if not self._stop.is_set():
                self.errors.append(repr(exc))

    def _cancel(self, parent: int, child: int) -> None:
        sent = time.time()
        try:
            resp = requests.post(f"{self.api_url.rstrip('/')}/api/v1/executions/{parent}/cancel",
                                 headers={"Authorization": f"Bearer {self.token}"}, timeout=30)
            body = resp.json() if resp.content else None
            with self._lock:
                self.answers[parent] = CancelAnswer(parent, child, resp.status_code, body, sent,
                                                    time.time())
        except Exception as exc:
            with self._lock:
                self.errors.append(f"cancel of {parent}: {exc!r}")

    def fired(self) -> set[int]:
        with self._lock:
            return set(self._fired)

    def join(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        self._stop.set()
        try:
            self._resp.close()
        except Exception as exc:  # noqa: BLE001 - closing a dead stream is not a test failure
            self.errors.append(f"close: {exc!r}")
        self._reader.join(timeout=3)


def workflow_execution_status(db_probe, parent_id: int) -> str | None:
    with db_probe.cursor() as cur:
        cur.execute("SELECT status::text FROM workflow_execution WHERE execution = %s", (parent_id,))
        row = cur.fetchone()
    return row[0] if row else None


def simulate_lost_completion(db_probe, execution_id: int, status: str, result: Any) -> None:
    """Write `status`/`result` on a running execution without any `execution.completed`."""
    with db_probe.cursor() as cur:
        cur.execute("UPDATE execution SET status = %s, result = %s::jsonb WHERE id = %s"
                    " AND status = 'running' RETURNING id", (status, json.dumps(result),
                                                              execution_id))
        assert cur.fetchone() is not None, f"execution {execution_id} was not running"


__all__ = ["CancelAnswer", "CancelOnChildEnd", "simulate_lost_completion",
           "workflow_execution_status"]
