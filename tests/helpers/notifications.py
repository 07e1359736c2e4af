"""Notifier scenario machinery (T3.14 execution, T3.15 inquiry, T3.16 rule notifications).

- `live_listener`: connect a notifier WebSocket with a token, subscribe to filters, and prove the
  subscription live with a probe (P7) before the test acts;
- probes: `noop_probe` (a `core.noop` execution; matched by its id), `inquiry_probe` (a throwaway
  inquiry on an existing execution, deleted through `make`);
- reading: `about` (notifications about one entity, in arrival order), `transitions` (the
  (notification_type, old_status, status) chain of an execution), `wait_notification`;
- latency: `latencies_ms` (notifier `timestamp` minus `payload.updated`) and `percentile`;
- logs and the execution stream: `wait_for_log_text` (follow an execution's log stream until a
  text shows), `read_whole_log` (a finished log stream, read fast), `status_event` (one status
  event of an ExecutionStream);
- `leading_edge`: the model of E11's per-rule throttle, to predict which fires notify;
- `pause_until`: wait for a deadline the system itself defines (P4), e.g. a throttle window.

The notifier sends messages of one entity in commit order (P6), so "nothing about X" is asserted
only after a later notification (an anchor) has arrived on the same connection.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable

from tests.helpers.notifier import NotifierListener
from tests.helpers.polling import wait_until
from tests.helpers.scenario import parse_ts


# ------------------------------------------------------------------ connecting
def live_listener(notifier, token: str, filters: Iterable[str], probe: Callable[[], Any],
                  predicate: Callable[..., bool] | None = None, timeout: float = 15
                  ) -> tuple[NotifierListener, Any]:
    """A listener subscribed to `filters`, proven live by `probe()`'s notification (P7).

    `notifier` is the conftest factory; returns (listener, probe result)."""
    listener = notifier(token)
    for f in filters:
        listener.subscribe(f)
    result = listener.prove_live(probe, predicate, timeout=timeout)
    return listener, result


def noop_probe(client, uid: str, tag: str = "probe") -> Callable[[], dict]:
    """A probe that runs `core.noop` (visible to every identity: the core pack is standard)."""
    return lambda: client.execute("core.noop", {"message": f"{tag}-{uid}"})


def inquiry_probe(client, make, execution_id: int, uid: str) -> Callable[[], dict]:
    """A probe that creates a throwaway inquiry on `execution_id` (deleted at cleanup)."""
    def create():
        inquiry = client.create_inquiry(execution=execution_id, prompt=f"probe {uid}")
        make.defer(f"delete probe inquiry {inquiry['id']}",
                   lambda: client.delete(f"/api/v1/inquiries/{inquiry['id']}"))
        return inquiry
    return create


# ------------------------------------------------------------------ reading
def about(listener: NotifierListener, entity_type: str, entity_id: Any,
          notification_type: str | None = None) -> list[dict]:
    """Notifications about one entity, in arrival order (optionally of one channel)."""
    return [m for m in listener.notifications
            if m.get("entity_type") == entity_type and m.get("entity_id") == entity_id
            and (notification_type is None or m.get("notification_type") == notification_type)]


def of_type(listener: NotifierListener, notification_type: str,
            where: Callable[[dict], bool] = lambda m: True) -> list[dict]:
    """Notifications of one channel matching `where`, in arrival order."""
    out = []
    for m in listener.notifications:
        if m.get("notification_type") != notification_type:
            continue
        try:
            if where(m):
                out.append(m)
        except (KeyError, TypeError, AttributeError):
            continue
    return out


def transitions(notifications: list[dict]) -> list[tuple]:
    """`(notification_type, old_status, status)` for each execution notification, in order."""
    return [(m.get("notification_type"), (m.get("payload") or {}).get("old_status"),
             (m.get("payload") or {}).get("status")) for m in notifications]


def wait_notification(listener: NotifierListener, notification_type: str,
                      where: Callable[[dict], bool] = lambda m: True, timeout: float = 15,
                      description: str | None = None) -> dict:
    """Wait for a notification of channel `notification_type` matching `where`; return it."""
    return listener.wait_for(
        lambda m: m.get("type") == "notification"
        and m.get("notification_type") == notification_type and where(m),
        timeout=timeout, description=description or f"a {notification_type} notification")


def wait_execution_status(listener: NotifierListener, execution_id: int, status: str,
                          timeout: float = 20) -> dict:
    """Wait for the notification that moves execution `execution_id` to `status`."""
    return listener.wait_for(
        lambda m: m.get("type") == "notification" and m.get("entity_type") == "execution"
        and m.get("entity_id") == execution_id and (m.get("payload") or {}).get("status") == status,
        timeout=timeout, description=f"a notification of execution {execution_id} -> {status}")


# ------------------------------------------------------------------ latency
def latencies_ms(notifications: list[dict]) -> list[float]:
    """Per notification: the notifier's `timestamp` minus `payload.updated` (or `created`), in ms."""
    out = []
    for m in notifications:
        payload = m.get("payload") or {}
        stamp = payload.get("updated") or payload.get("created")
        out.append((parse_ts(m["timestamp"]) - parse_ts(stamp)).total_seconds() * 1000.0)
    return out


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100) of a non-empty list."""
    assert values, "percentile of an empty list"
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[rank - 1]


# ------------------------------------------------------------------ live log stream
def wait_for_log_text(client, execution_id: int, text: str, stream: str = "stdout",
                      timeout: float = 20) -> str:
    """Follow `GET /executions/{id}/logs/{stream}/stream` until the content holds `text`; return
    the content seen so far. Fails if the stream ends (`done`) or the deadline passes first."""
    from tests.helpers.sse import iter_sse

    path = f"/api/v1/executions/{execution_id}/logs/{stream}/stream"
    deadline = time.monotonic() + timeout
    seen = ""
    resp = client.raw("GET", path, stream=True, timeout=(5, timeout),
                      headers={"Accept": "text/event-stream"})
    try:
        assert 200 <= resp.status_code < 300, f"GET {path}: HTTP {resp.status_code}"
        for name, _, data in iter_sse(_BigChunks(resp)):
            if name in ("content", "append"):
                seen += data
                if text in seen:
                    return seen
            if name == "done" or time.monotonic() > deadline:
                break
    finally:
        resp.close()
    raise AssertionError(f"the {stream} log of execution {execution_id} did not show {text!r} "
                         f"within {timeout:.0f} s; content so far: {seen[-300:]!r}")


def status_event(stream, exec_id: int, status: str) -> dict:
    """Execution `exec_id`'s `status` event on an ExecutionStream (its payload carries the row's
    `updated`, the server's commit-side time of the transition)."""
    for event in stream.events:
        if event.get("entity_id", event.get("id")) == exec_id and event.get("status") == status:
            return event
    raise AssertionError(f"no `{status}` event for execution {exec_id} on the stream")


class _BigChunks:
    """Let `sse.iter_sse` read a large response in 64 KiB chunks instead of byte by byte."""

    def __init__(self, resp):
        self._resp = resp

    def iter_lines(self, chunk_size=1, decode_unicode=False):
        return self._resp.iter_lines(chunk_size=65536, decode_unicode=decode_unicode)


def read_whole_log(client, execution_id: int, stream: str = "stdout",
                   timeout: float = 60) -> tuple[str, int]:
    """Read a terminal execution's `GET /executions/{id}/logs/{stream}/stream` up to `done`;
    return (content, the `done` event's byte offset)."""
    from tests.helpers.sse import iter_sse

    path = f"/api/v1/executions/{execution_id}/logs/{stream}/stream"
    deadline = time.monotonic() + timeout
    content: list[str] = []
    resp = client.raw("GET", path, stream=True, timeout=(5, timeout),
                      headers={"Accept": "text/event-stream"})
    try:
        assert 200 <= resp.status_code < 300, f"GET {path}: HTTP {resp.status_code}"
        for name, ev_id, data in iter_sse(_BigChunks(resp)):
            if name in ("content", "append"):
                content.append(data)
            elif name == "done":
                return "".join(content), int(ev_id)
            if time.monotonic() > deadline:
                break
    finally:
        resp.close()
    raise AssertionError(f"the {stream} log stream of execution {execution_id} sent no `done` "
                         f"within {timeout:.0f} s ({sum(map(len, content))} characters read)")


# ------------------------------------------------------------------ throttle model (E11)
def leading_edge(fires: list[tuple[Any, float]], interval: float) -> list[tuple[Any, int]]:
    """The notifications a leading-edge throttle sends for `fires` [(key, time s)] in processing
    order: [(key, suppressed_count)]. A fire notifies when it is at least `interval` after the
    last notified one; the others are suppressed and counted into the next notification."""
    out: list[tuple[Any, int]] = []
    last: float | None = None
    suppressed = 0
    for key, at in fires:
        if last is not None and at - last < interval:
            suppressed += 1
            continue
        out.append((key, suppressed))
        last, suppressed = at, 0
    return out


# ------------------------------------------------------------------ system deadlines (P4)
def pause_until(deadline: float, reason: str) -> None:
    """Return once `time.time()` >= `deadline`, a deadline the system defines (P4: a throttle
    window, a timeout). `reason` names it in the failure message should the clock misbehave."""
    remaining = deadline - time.time()
    wait_until(lambda: time.time() >= deadline, timeout=max(remaining, 0) + 5,
               interval=min(0.05, max(remaining, 0.01)), max_interval=0.1,
               description=f"the system deadline: {reason}")


__all__ = ["live_listener", "noop_probe", "inquiry_probe", "about", "of_type", "transitions",
           "wait_notification", "wait_execution_status", "latencies_ms", "percentile",
           "wait_for_log_text", "status_event", "read_whole_log", "leading_edge",
           "pause_until"]
