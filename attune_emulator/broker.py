"""RabbitMQ messaging shared by the services (pika).

Topology (exchange names as upstream; every message body is a JSON object):

  attune.events (topic)
    event.created          {"event_id", "trigger_ref"}                      -> executor.events
    enforcement.created    {"enforcement_id"}                               -> executor.enforcements
    rule.created|enabled|disabled|deleted  {"rule_id", "rule_ref", "trigger_ref"}
                                                                            -> attune.rules.lifecycle.queue (sensor)
    inquiry.responded      {"inquiry_id", "execution_id"}                   -> executor.inquiries
    pack.registered|deleted {"pack_ref"}
  attune.executions (topic)
    execution.requested    {"execution_id"}                                 -> executor.requests
    execution.dispatch.worker.<id>  {"execution_id"}                        -> worker.<id>.executions
    execution.cancel.worker.<id>    {"execution_id"}                        -> worker.<id>.cancel
    execution.completed    {"execution_id", "status"}                       -> executor.completions
  attune.notifications (topic)  reserved; the notifier reads PostgreSQL LISTEN/NOTIFY

Queues and exchanges are durable, messages persistent, so a restarted service picks up what was
published while it was down. Consumers ack after their handler returns.
"""
from __future__ import annotations

import collections
import json
import logging
import threading
import time
from typing import Callable

import pika
import pika.exceptions

from .db import is_transient_conflict

log = logging.getLogger(__name__)

EVENTS = "attune.events"
EXECUTIONS = "attune.executions"
NOTIFICATIONS = "attune.notifications"
DLX = "attune.dlx"
EXCHANGES = (EVENTS, EXECUTIONS, NOTIFICATIONS)

_CONNECTION_ERRORS = (pika.exceptions.AMQPError, OSError)
CONNECTION_ERRORS = _CONNECTION_ERRORS  # for services that talk to the broker directly
# every message's properties (pika only reads them), made once
_PERSISTENT_JSON = pika.BasicProperties(content_type="application/json", delivery_mode=2)


def _params(url: str) -> pika.URLParameters:
    params = pika.URLParameters(url)
    params.heartbeat = 30
    params.blocked_connection_timeout = 30
    params.connection_attempts = 1
    params.socket_timeout = 5
    return params


def declare_exchanges(channel) -> None:
    for name in EXCHANGES:
        channel.exchange_declare(exchange=name, exchange_type="topic", durable=True)
    channel.exchange_declare(exchange=DLX, exchange_type="fanout", durable=True)


class Publisher:
    """Thread-safe publisher that reconnects on failure.

    Publishes use publisher confirms, so a message counts as sent only once the broker has taken
    it. When the broker stays unreachable through `attempts` tries, the message is kept in an
    in-process backlog (`spool=True`, the default) that a background thread delivers, in order,
    as soon as the broker is back; later publishes queue behind it, so order is kept. A broker
    restart thus loses no message of a running service (an `execution.completed` finishing a
    workflow task, an `execution.requested` accepted by the API).
    """

    def __init__(self, url: str, spool: bool = True):
        self.url = url
        self.spool = spool
        self._lock = threading.Lock()
        self._conn: pika.BlockingConnection | None = None
        self._channel = None
        self._backlog: collections.deque = collections.deque()
        self._flusher: threading.Thread | None = None
        self._closed = False

    def _ensure(self):
        if self._conn is None or self._conn.is_closed or self._channel is None or self._channel.is_closed:
            self._conn = pika.BlockingConnection(_params(self.url))
            self._channel = self._conn.channel()
            declare_exchanges(self._channel)
            self._channel.confirm_delivery()
        return self._channel

    def _send(self, exchange: str, routing_key: str, payload: bytes) -> None:
        self._ensure().basic_publish(exchange=exchange, routing_key=routing_key, body=payload,
                                     properties=_PERSISTENT_JSON)

    def publish(self, exchange: str, routing_key: str, body: dict, attempts: int = 5) -> None:
        payload = json.dumps(body, default=str).encode()
        with self._lock:
            if self._backlog:  # the broker was away: keep the order, the flusher sends it
                self._backlog.append((exchange, routing_key, payload))
                return
            for attempt in range(attempts):
                try:
                    self._send(exchange, routing_key, payload)
                    return
                except _CONNECTION_ERRORS as exc:
                    log.warning("publish %s/%s failed (%s); reconnecting", exchange, routing_key, exc)
                    self._reset()
                    if attempt == attempts - 1:
                        if not self.spool or self._closed:
                            raise
                        self._backlog.append((exchange, routing_key, payload))
                        log.warning("broker unreachable: %s/%s kept for delivery when it is back",
                                    exchange, routing_key)
                        self._start_flusher()
                        return
                    time.sleep(min(0.2 * (2 ** attempt), 2.0))

    def _start_flusher(self) -> None:
        if self._flusher is None or not self._flusher.is_alive():
            self._flusher = threading.Thread(target=self._flush_loop, daemon=True,
                                             name="publisher-backlog")
            self._flusher.start()

    def _flush_loop(self) -> None:
        delay = 0.2
        while True:
            with self._lock:
                if not self._backlog or self._closed:
                    return
                try:
                    while self._backlog:
                        self._send(*self._backlog[0])
                        self._backlog.popleft()
                    log.info("broker back: backlog delivered")
                    return
                except _CONNECTION_ERRORS as exc:
                    log.debug("backlog delivery failed (%s); %d message(s) waiting", exc,
                              len(self._backlog))
                    self._reset()
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    @property
    def backlog(self) -> int:
        """Messages waiting for the broker to come back."""
        return len(self._backlog)

    def _reset(self):
        try:
            if self._conn is not None and self._conn.is_open:
                self._conn.close()
        except Exception:  # closing a broken connection may raise anything pika has
            log.debug("closing a broken AMQP connection failed", exc_info=True)
        self._conn = None
        self._channel = None

    def close(self) -> None:
        with self._lock:
            if self._backlog:
                try:
                    while self._backlog:
                        self._send(*self._backlog[0])
                        self._backlog.popleft()
                except _CONNECTION_ERRORS as exc:
                    log.error("closing with %d undelivered message(s): broker unreachable (%s)",
                              len(self._backlog), exc)
            self._closed = True
            self._reset()


Handler = Callable[[str, dict], None]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Consumer(threading.Thread):
    """Consumes one queue in a thread of its own, reconnecting until `stop()`.

    `handler(routing_key, body)` runs in the consumer thread; the message is acked after it
    returns. A handler that raises is logged and the message is rejected without requeue (it
    would fail the same way again), except when PostgreSQL aborted it for a lock conflict with a
    concurrent transaction (deadlock, serialization failure): that is run again, up to
    `TRANSIENT_ATTEMPTS` times, and logged as a warning. With `manual_ack=True` the handler receives a third argument,
    an `ack()` callable that is safe to call from any thread (for work handed to a pool).

    With `batch_handler` (not with `manual_ack`), the messages that arrive together (at most
    `prefetch`) go to `batch_handler([(routing_key, body), ...])` in one call, in delivery order,
    and are acked after it returns; when it raises, each of them goes to `handler` on its own.
    """

    def __init__(self, url: str, queue: str, bindings: list[tuple[str, str]], handler,
                 prefetch: int = 1, durable: bool = True, exclusive: bool = False,
                 auto_delete: bool = False, manual_ack: bool = False, name: str | None = None,
                 queue_arguments: dict | None = None, batch_handler=None):
        super().__init__(name=name or f"consumer-{queue}", daemon=True)
        self.url = url
        self.queue = queue
        self.bindings = bindings
        self.handler = handler
        self.prefetch = prefetch
        self.durable = durable
        self.exclusive = exclusive
        self.auto_delete = auto_delete
        self.manual_ack = manual_ack
        self.queue_arguments = queue_arguments
        self.batch_handler = None if manual_ack else batch_handler
        self._stop_event = threading.Event()
        self._conn: pika.BlockingConnection | None = None
        self.ready = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        conn = self._conn
        if conn is not None:
            try:
                conn.add_callback_threadsafe(conn.close)
            except Exception:  # the connection may already be gone
                log.debug("consumer %s: close on stop failed", self.queue, exc_info=True)

    def run(self) -> None:
        backoff = 0.2
        while not self._stop_event.is_set():
            try:
                self._consume()
                backoff = 0.2
            except _CONNECTION_ERRORS as exc:
                if self._stop_event.is_set():
                    break
                log.warning("consumer %s lost its connection (%s); retrying in %.1fs",
                            self.queue, exc, backoff)
                self.ready.clear()
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _declare(self, channel) -> None:
        declare_exchanges(channel)
        channel.queue_declare(queue=self.queue, durable=self.durable, exclusive=self.exclusive,
                              auto_delete=self.auto_delete, arguments=self.queue_arguments)
        for exchange, key in self.bindings:
            channel.queue_bind(queue=self.queue, exchange=exchange, routing_key=key)

    def declare(self) -> None:
        """Declare the queue and its bindings now, without consuming (durable queues only: an
        exclusive one would die with this short connection). Raises on broker errors."""
        if self.exclusive:
            raise ValueError(f"{self.queue}: an exclusive queue cannot be declared ahead")
        conn = pika.BlockingConnection(_params(self.url))
        try:
            self._declare(conn.channel())
        finally:
            conn.close()

    def _consume(self) -> None:
        conn = pika.BlockingConnection(_params(self.url))
        self._conn = conn
        try:
            channel = conn.channel()
            self._declare(channel)
            channel.basic_qos(prefetch_count=self.prefetch)
            batch: list[tuple[int, str, dict]] = []

            def on_message(ch, method, _props, body):
                try:
                    message = json.loads(body or b"{}")
                except ValueError:
                    log.error("queue %s: dropping a message that is not JSON: %r", self.queue, body[:200])
                    ch.basic_reject(method.delivery_tag, requeue=False)
                    return
                tag = method.delivery_tag
                if self.batch_handler is not None:  # handled after this round of deliveries
                    batch.append((tag, method.routing_key, message))
                    return
                if self.manual_ack:
                    def ack(tag=tag):
                        conn.add_callback_threadsafe(lambda: ch.is_open and ch.basic_ack(tag))
                    try:
                        self.handler(method.routing_key, message, ack)
                    except Exception:
                        log.exception("queue %s: handler failed for %s", self.queue, message)
                        ack()
                    return
                try:
                    self._handle_retrying(method.routing_key, message)
                except Exception:
                    log.exception("queue %s: handler failed for %s", self.queue, message)
                    ch.basic_reject(tag, requeue=False)
                    return
                ch.basic_ack(tag)

            channel.basic_consume(queue=self.queue, on_message_callback=on_message)
            self.ready.set()
            # no time limit: a limit costs a timer per call; stop() wakes the loop by closing
            while not self._stop_event.is_set() and conn.is_open:
                conn.process_data_events(time_limit=None)
                if batch:
                    self._run_batch(channel, batch)
                    batch.clear()
        finally:
            self.ready.clear()
            self._conn = None
            if conn.is_open:
                try:
                    conn.close()
                except _CONNECTION_ERRORS:
                    pass

    TRANSIENT_ATTEMPTS = 3

    def _handle_retrying(self, key: str, message: dict) -> None:
        """`handler(key, message)`, again (up to TRANSIENT_ATTEMPTS) when the database aborted it
        for a lock conflict with a concurrent transaction: nothing was written, and the next
        attempt usually finds the other side committed."""
        for attempt in range(1, self.TRANSIENT_ATTEMPTS + 1):
            try:
                self.handler(key, message)
                return
            except Exception as exc:
                if not is_transient_conflict(exc) or attempt == self.TRANSIENT_ATTEMPTS:
                    raise
                log.warning("queue %s: %s for %s (attempt %d of %d); retrying", self.queue,
                            _first_line(exc), message, attempt, self.TRANSIENT_ATTEMPTS)
                time.sleep(0.05 * attempt)

    def _run_batch(self, channel, batch: list[tuple[int, str, dict]]) -> None:
        try:
            self.batch_handler([(key, message) for _tag, key, message in batch])
        except Exception as exc:
            if is_transient_conflict(exc):  # expected under concurrent deletes: no traceback
                log.warning("queue %s: batch of %d message(s) aborted (%s); handling them one by "
                            "one", self.queue, len(batch), _first_line(exc))
            else:
                log.exception("queue %s: batch handler failed for %d message(s); handling them "
                              "one by one", self.queue, len(batch))
        else:
            channel.basic_ack(batch[-1][0], multiple=True)
            return
        for tag, key, message in batch:
            try:
                self._handle_retrying(key, message)
            except Exception:
                log.exception("queue %s: handler failed for %s", self.queue, message)
                channel.basic_reject(tag, requeue=False)
                continue
            channel.basic_ack(tag)


def wait_for_broker(url: str, timeout: float = 30.0) -> None:
    """Block until RabbitMQ accepts a connection, or raise with the last error."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            conn = pika.BlockingConnection(_params(url))
            ch = conn.channel()
            declare_exchanges(ch)
            conn.close()
            return
        except _CONNECTION_ERRORS as exc:
            last = exc
            time.sleep(0.3)
    raise RuntimeError(f"RabbitMQ at {url} not reachable after {timeout:.0f}s: {last!r}")
