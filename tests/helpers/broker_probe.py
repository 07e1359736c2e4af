"""Probes of the performance scenarios (T3.24, T3.25): broker queue depths and other samplers.

- `QueueDepthProbe`: the ready-message count of RabbitMQ queues through pika's passive
  `queue_declare` (`method.message_count`; messages delivered to a consumer but not yet acked
  are not counted). A queue that does not exist reads as `None` (the channel closed by the
  broker's 404 is reopened).
- `broker_queues`: which of the known executor / worker queue names exist on a broker: the
  embedded stack's (`executor.events|enforcements|requests|completions`) and upstream's defaults
  (`attune.events.queue`, `attune.enforcements.queue`, `attune.execution.requests.queue`,
  `attune.execution.completed.queue`, `attune.execution.status.queue`); workers consume
  `worker.<id>.executions` on both.
- `Sampler`: a background thread that calls a function every `interval` s and records
  `(monotonic, value)` or the exception it raised; `QueueDepthSampler`, `ApiLatencySampler`
  and `ResourceSampler` are the samplers the scenarios use.
- Pure evaluation: `percentile` (nearest rank), `undrained_spans`, `grid_offsets`.
- T3.25's workflow: `chain_definition(n)` (`t001 -> ... -> t<n>`, each `core.echo` of its
  number) and `handoff` (from the end of one task's process to the next task's start).

A sampler's cadence is a fixed period (`Event.wait(interval)`), never a wait for a condition;
conditions are awaited with tests.helpers.polling.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Sequence

log = logging.getLogger(__name__)
# pika logs every connection step at INFO; the samplers open and close connections routinely.
logging.getLogger("pika").setLevel(logging.WARNING)

EMBEDDED_EXECUTOR_QUEUES = ("executor.events", "executor.enforcements", "executor.requests",
                            "executor.completions")
UPSTREAM_EXECUTOR_QUEUES = ("attune.events.queue", "attune.enforcements.queue",
                            "attune.execution.requests.queue", "attune.execution.completed.queue",
                            "attune.execution.status.queue")


def worker_queue(worker_id: int) -> str:
    """The execution queue a worker consumes (upstream and embedded)."""
    return f"worker.{worker_id}.executions"


# ------------------------------------------------------------------ pure evaluation
def percentile(values: Iterable[float], p: float) -> float:
    """Nearest-rank percentile `p` (0 < p <= 100) of a non-empty sequence."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of an empty sequence")
    if not 0 < p <= 100:
        raise ValueError(f"percentile rank must be in (0, 100], got {p}")
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def undrained_spans(samples: Sequence[tuple[float, dict[str, int | None]]],
                    window: float) -> list[tuple[str, float, float, int]]:
    """(queue, start, end, lowest depth) of every span longer than `window` s in which a queue
    never read 0: a backlog that does not drain. Bursts that drain within the window pass, so a
    queue shared with concurrent tests is judged by whether it keeps up, not by its peaks."""
    out = []
    queues = sorted({q for _, depths in samples for q in depths})
    for queue in queues:
        points = [(t, d[queue]) for t, d in samples if d.get(queue) is not None]
        start = None
        lowest = 0
        for t, depth in points:
            if depth == 0:
                if start is not None and t - start > window:
                    out.append((queue, start, t, lowest))
                start = None
            elif start is None:
                start, lowest = t, depth
            else:
                lowest = min(lowest, depth)
        if start is not None and points and points[-1][0] - start > window:
            out.append((queue, start, points[-1][0], lowest))
    return out


def grid_offsets(fires: Sequence[datetime], t0: datetime, interval: float,
                 first_k: int = 1) -> list[float]:
    """Seconds between fire k (k = first_k, first_k + 1, ...) and its mark `t0 + k*interval`."""
    return [(fired - (t0 + timedelta(seconds=(first_k + i) * interval))).total_seconds()
            for i, fired in enumerate(fires)]


# ------------------------------------------------------------------ T3.25 chain
def chain_task_name(n: int) -> str:
    return f"t{n:03d}"


def chain_definition(n_tasks: int) -> dict:
    """`t001 -> ... -> t<n>`, each `core.echo` of its own number (`next` on success), output
    `last` = the last task's stdout."""
    from tests.helpers.workflows import on_success, task

    tasks = [task(chain_task_name(n), "core.echo", input={"message": str(n)},
                  next=[on_success(chain_task_name(n + 1))] if n < n_tasks else None)
             for n in range(1, n_tasks + 1)]
    return {"version": "1.0.0", "tasks": tasks,
            "output_map": {"last": "{{ task.%s.stdout }}" % chain_task_name(n_tasks)}}


def handoff(prev: dict, nxt: dict) -> float:
    """Seconds from the end of `prev`'s process (`started_at + result.duration_ms`) to `nxt`'s
    `started_at`."""
    from tests.helpers.scenario import secs

    duration = (prev.get("result") or {}).get("duration_ms")
    assert isinstance(duration, int), f"execution {prev['id']} has no result.duration_ms: {prev}"
    return secs(prev["started_at"], nxt["started_at"]) - duration / 1000


# ------------------------------------------------------------------ broker
class QueueDepthProbe:
    """Ready-message counts of RabbitMQ queues (passive declare; never creates a queue).

    Not thread-safe: use one probe per thread.
    """

    def __init__(self, amqp_url: str, connect_timeout: float = 5):
        import pika

        self._pika = pika
        params = pika.URLParameters(amqp_url)
        params.connection_attempts = 1
        params.socket_timeout = connect_timeout
        params.blocked_connection_timeout = connect_timeout
        self._params = params
        self._conn = None
        self._channel = None

    def _chan(self):
        if self._conn is None or self._conn.is_closed:
            self._conn = self._pika.BlockingConnection(self._params)
            self._channel = None
        if self._channel is None or self._channel.is_closed:
            self._channel = self._conn.channel()
        return self._channel

    def depth(self, queue: str) -> int | None:
        """Messages ready in `queue`; None when the queue does not exist."""
        try:
            ok = self._chan().queue_declare(queue=queue, passive=True)
        except self._pika.exceptions.ChannelClosedByBroker as exc:
            self._channel = None
            if exc.reply_code == 404:
                return None
            raise
        return int(ok.method.message_count)

    def depths(self, queues: Iterable[str]) -> dict[str, int | None]:
        return {q: self.depth(q) for q in queues}

    def close(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None and conn.is_open:
            conn.close()


def broker_queues(amqp_url: str, worker_ids: Iterable[int]) -> dict[str, list[str]]:
    """The known executor and worker queue names that exist on the broker:
    `{"executor": [...], "worker": [...]}`."""
    probe = QueueDepthProbe(amqp_url)
    try:
        executor = [q for q in EMBEDDED_EXECUTOR_QUEUES + UPSTREAM_EXECUTOR_QUEUES
                    if probe.depth(q) is not None]
        worker = [worker_queue(w) for w in worker_ids if probe.depth(worker_queue(w)) is not None]
    finally:
        probe.close()
    return {"executor": executor, "worker": worker}


# ------------------------------------------------------------------ samplers
@dataclass
class Sample:
    t: float                # time.monotonic() when the sample was taken
    value: Any = None
    error: str | None = None


class Sampler:
    """Calls `fn()` every `interval` s in a daemon thread until `stop()`; keeps every sample.

    `setup()` (optional) runs first inside the thread and its result is passed to `fn`;
    `teardown(state)` runs when the thread ends. An exception from `fn` is recorded as the
    sample's `error` and sampling continues.
    """

    def __init__(self, fn: Callable[..., Any], interval: float, *, name: str = "sampler",
                 setup: Callable[[], Any] | None = None,
                 teardown: Callable[[Any], None] | None = None):
        self.fn = fn
        self.interval = interval
        self.name = name
        self._setup = setup
        self._teardown = teardown
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._samples: list[Sample] = []
        self._thread: threading.Thread | None = None
        self.setup_error: str | None = None

    def start(self) -> "Sampler":
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        state = None
        if self._setup is not None:
            try:
                state = self._setup()
            except Exception as exc:  # recorded; the test asserts on it
                self.setup_error = f"{type(exc).__name__}: {exc}"
                return
        try:
            while True:
                t = time.monotonic()
                try:
                    value = self.fn(state) if self._setup is not None else self.fn()
                    sample = Sample(t, value)
                except Exception as exc:  # one failed sample is data, not a crash
                    sample = Sample(t, None, f"{type(exc).__name__}: {exc}")
                with self._lock:
                    self._samples.append(sample)
                if self._stop.wait(max(0.0, self.interval - (time.monotonic() - t))):
                    return
        finally:
            if self._teardown is not None and state is not None:
                try:
                    self._teardown(state)
                except Exception as exc:  # closing a probe must never mask the test outcome
                    log.debug("%s: teardown failed: %s", self.name, exc)

    def stop(self) -> list[Sample]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        return self.samples

    @property
    def samples(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)

    def errors(self) -> list[str]:
        return [s.error for s in self.samples if s.error]

    def __enter__(self) -> "Sampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class QueueDepthSampler(Sampler):
    """Samples `{queue: ready messages}` of `queues` every `interval` s."""

    def __init__(self, amqp_url: str, queues: Sequence[str], interval: float = 0.5):
        self.queues = list(queues)
        super().__init__(lambda probe: probe.depths(self.queues), interval, name="queue-depths",
                         setup=lambda: QueueDepthProbe(amqp_url), teardown=lambda p: p.close())

    def series(self) -> list[tuple[float, dict[str, int | None]]]:
        return [(s.t, s.value) for s in self.samples if s.value is not None]


class ApiLatencySampler(Sampler):
    """Every `interval` s, GETs each path with its own client and records
    `{path: (status, seconds)}`."""

    def __init__(self, client, paths: Sequence[str], interval: float = 0.5):
        self.client = client  # its own session: not shared with the test thread
        self.paths = list(paths)
        super().__init__(self._probe, interval, name="api-latency")

    def _probe(self) -> dict[str, tuple[int, float]]:
        out = {}
        for path in self.paths:
            start = time.perf_counter()
            resp = self.client.raw("GET", path, timeout=10)
            out[path] = (resp.status_code, time.perf_counter() - start)
        return out

    def latencies(self, path: str) -> list[float]:
        return [s.value[path][1] for s in self.samples if s.value is not None]

    def statuses(self, path: str) -> list[int]:
        return [s.value[path][0] for s in self.samples if s.value is not None]


@dataclass
class Usage:
    rss_kb: dict[str, int | None] = field(default_factory=dict)
    cpu_seconds: dict[str, float | None] = field(default_factory=dict)
    t: float = 0.0


def usage(services, names: Iterable[str]) -> Usage:
    """VmRSS and CPU time (user + system) of the embedded services `names`, now."""
    names = list(names)
    return Usage({n: services.rss_kb(n) for n in names},
                 {n: services.cpu_seconds(n) for n in names}, time.monotonic())


class ResourceSampler(Sampler):
    """Samples `usage(services, names)` every `interval` s (embedded stack only)."""

    def __init__(self, services, names: Sequence[str], interval: float = 1.0):
        self.names = list(names)
        super().__init__(lambda: usage(services, self.names), interval, name="resources")

    def peak_rss_kb(self, name: str) -> int | None:
        values = [s.value.rss_kb.get(name) for s in self.samples if s.value is not None]
        values = [v for v in values if v is not None]
        return max(values) if values else None


__all__ = ["chain_task_name", "chain_definition", "handoff", "EMBEDDED_EXECUTOR_QUEUES", "UPSTREAM_EXECUTOR_QUEUES", "worker_queue", "percentile",
           "undrained_spans", "grid_offsets", "QueueDepthProbe", "broker_queues", "Sample",
           "Sampler", "QueueDepthSampler", "ApiLatencySampler", "Usage", "usage",
           "ResourceSampler"]
