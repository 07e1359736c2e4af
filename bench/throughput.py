"""Sustained throughput: executions completed per second over a fixed window at increasing
offered load (POST /executions/execute of a shell `true` action from a pool of senders), the
point where a backlog starts (executions still active per the API, and RabbitMQ queue depths
sampled with pika), and whether the backlog drains afterwards.

Completion instants are each execution's own `updated` once it is terminal, read from the API
after the drain (the platform's records; no notification listener competes for the cores during
the windows), counted inside each window.

The benchmark shares the machine's cores with the stack, so its senders are lean: one keep-alive
`http.client` connection per sender thread and a body encoded once (`requests` costs several
times more CPU per call). The client's own CPU per level is reported beside the services'.
"""
from __future__ import annotations

import http.client
import json
import resource
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from bench.context import Bench, QueueSampler, executor_and_worker_queues, say
from tests.helpers.scenario import total


class Sender:
    """`POST /api/v1/executions/execute` of one action over a keep-alive connection."""

    PATH = "/api/v1/executions/execute"

    def __init__(self, api_url: str, token: str, action_ref: str, timeout: float = 15):
        parts = urlsplit(api_url)
        self._conn_args = (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        self._https = parts.scheme == "https"
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout
        self._body = json.dumps({"action_ref": action_ref, "parameters": {}}).encode()
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                         "Accept": "application/json"}
        self._conn: http.client.HTTPConnection | None = None

    def execute(self) -> int:
        """The new execution's id; raises on a transport error or a non-2xx answer."""
        for attempt in (1, 2):  # a keep-alive connection the server closed is reopened once
            if self._conn is None:
                cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
                self._conn = cls(*self._conn_args, timeout=self._timeout)
            try:
                self._conn.request("POST", self._prefix + self.PATH, self._body, self._headers)
                resp = self._conn.getresponse()
                data = resp.read()
            except (http.client.HTTPException, OSError):
                self._conn.close()
                self._conn = None
                if attempt == 2:
                    raise
                continue
            if resp.status // 100 != 2:
                raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
            return int(json.loads(data)["data"]["id"])
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def _cpu_seconds() -> float:
    """CPU time of this process (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _send_level(bench: Bench, action_ref: str, rate: float, seconds: float, senders: int,
                sent: list, errors: list) -> tuple[float, float, int]:
    """Offer `rate` executions/s for `seconds`; returns (start, end, number sent)."""
    start = time.time()
    total = int(rate * seconds)
    per = [list(range(k, total, senders)) for k in range(senders)]
    lock = threading.Lock()

    def sender(slots):
        c = Sender(bench.target.api_url, bench.admin.token, action_ref)
        try:
            for k in slots:
                due = start + k / rate
                delay = due - time.time()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -seconds:   # hopelessly behind: the client is the bottleneck
                    return
                try:
                    eid = c.execute()
                    with lock:
                        sent.append((eid, time.time()))
                except Exception as exc:  # counted, never fatal
                    with lock:
                        errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
        finally:
            c.close()

    with ThreadPoolExecutor(max_workers=senders) as pool:
        list(pool.map(sender, per))
    return start, time.time(), total


ACTIVE_STATUSES = ("requested", "scheduling", "scheduled", "running", "canceling")


def _server_active(bench: Bench, action_ref: str) -> dict[str, int] | None:
    """Executions of the action per non-terminal status, from the API (the platform's own
    records, not the notifications); None when the API cannot say."""
    try:
        return {s: total(bench.admin.list_executions, action_ref=action_ref, status=s)
                for s in ACTIVE_STATUSES}
    except Exception as exc:  # reported, never fatal
        say(f"throughput: cannot count active executions: {type(exc).__name__}: {exc}")
        return None


def _tally(row: dict, term: dict) -> None:
    """Completions (and terminal statuses) whose own `updated` falls inside the level's window."""
    w0, w1, window = row["_w0"], row["_w1"], row["window_s"]
    in_window = [t for (_s, t) in term.values() if w0 <= t <= w1]
    completed_ok = [t for (s, t) in term.values() if s == "completed" and w0 <= t <= w1]
    row["completed_per_s"] = round(len(completed_ok) / window, 1) if window else None
    row["terminal_per_s"] = round(len(in_window) / window, 1) if window else None


def run(bench: Bench, levels=(25, 50, 100, 125, 150), seconds: float = 6.0, senders: int = 16,
        drain_timeout: float = 45.0) -> dict:
    """Each level offers `rate`/s for `seconds`. Half a second after its window closes, the
    executions still active per the API (and the RabbitMQ queue depths) decide whether a backlog
    started: more than one second of offered load (at least 20) still active ends the ramp.
    Completions are tallied once their notifications have arrived (after the drain), so a
    notification that is still in flight when a window closes is not miscounted as missing."""
    action = bench.action("tp", "true")
    sampler = None
    queues = executor_and_worker_queues(bench.admin)
    if bench.target.amqp_url:
        sampler = QueueSampler(bench.target.amqp_url, queues, interval=0.5)
        sampler.start()
    sent: list[tuple[int, float]] = []
    errors: list[str] = []
    results = []
    backlog_at = None
    for rate in levels:
        say(f"throughput: offering {rate}/s for {seconds:.0f} s ...")
        base_sent = len(sent)
        cpu0 = _cpu_seconds()
        w0, w1, planned = _send_level(bench, action["ref"], rate, seconds, senders, sent, errors)
        client_cpu = _cpu_seconds() - cpu0
        time.sleep(0.5)  # the window's tail finishes
        active = _server_active(bench, action["ref"])
        outstanding = sum(active.values()) if active is not None else None
        n_sent = len(sent) - base_sent
        window = w1 - w0
        qdepth = sampler.latest().get("total") if sampler and sampler.latest() else None
        row = {"offered_per_s": rate, "planned": planned, "sent": n_sent,
               "window_s": round(window, 2), "_w0": w0, "_w1": w1,
               "sent_per_s": round(n_sent / window, 1) if window else None,
               "outstanding_after": outstanding, "active_by_status_after": active,
               "queue_depth_after": qdepth,
               "client_cpu_s": round(client_cpu, 2),
               "client_cpu_ms_per_sent": round(1000 * client_cpu / n_sent, 2) if n_sent else None}
        row["backlog"] = bool(outstanding is not None and outstanding > max(20, rate * 1.0))
        results.append(row)
        say(f"throughput: offered {rate}/s, sent {row['sent_per_s']}/s, still active "
            f"{outstanding} {active or ''}, queue depth {qdepth}; client CPU "
            f"{row['client_cpu_ms_per_sent']} ms per execution sent")
        if row["backlog"]:
            backlog_at = rate
            break
    say(f"throughput: draining {outstanding} active execution(s) ...")
    t_drain = time.time()
    drained = False
    while time.time() - t_drain < drain_timeout:
        active = _server_active(bench, action["ref"])
        if active is not None and sum(active.values()) == 0:
            drained = True
            break
        time.sleep(0.25)
    drain_s = time.time() - t_drain
    time.sleep(0.6)
    q_after = sampler.latest().get("total") if sampler and sampler.latest() else None
    if sampler:
        sampler.stop()
    term = bench.terminal_records(action["ref"])
    for row in results:
        _tally(row, term)
        del row["_w0"], row["_w1"]
        say(f"throughput: offered {row['offered_per_s']}/s: completed {row['completed_per_s']}/s "
            f"in the window")
    statuses: dict[str, int] = {}
    for s, _t in term.values():
        statuses[s] = statuses.get(s, 0) + 1
    best = max((r["completed_per_s"] or 0 for r in results), default=None)
    out = {
        "levels": results, "sustained_per_s": best, "backlog_started_at_offered_per_s": backlog_at,
        "sent_total": len(sent), "terminal_total": len(term), "statuses": statuses,
        "drained": drained, "drain_seconds": round(drain_s, 2), "queue_depth_after_drain": q_after,
        "not_terminal_after_drain": len(sent) - len(term),
        "send_errors": len(errors), "send_error_samples": errors[:5],
        "queues_sampled": sampler.queues if sampler else [],
        "queue_sampler_error": sampler.error if sampler else "no AMQP URL known for the target",
        "queue_depth_samples": sampler.samples if sampler else [],
        "senders": senders, "window_seconds": seconds,
        "completion_source": "`updated` of each terminal execution, read from "
                             "GET /api/v1/executions?action_ref= after the drain",
        "backlog_source": "executions still active per the API (status filters) 0.5 s after "
                          "each window, and RabbitMQ queue depths"}
    say(f"throughput: best {best}/s completed; backlog from {backlog_at}/s offered; drained "
        f"{drained} in {drain_s:.1f} s; queue depth after {q_after}")
    return out
