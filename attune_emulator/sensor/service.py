"""The sensor service: the core timer sensor (interval, cron and date/time timers).

Start-up: register a `worker` row with role `sensor` (name `<worker.name or host>-sensor`) and keep
its heartbeat; obtain a sensor token from `POST /auth/internal/sensor-token` (retrying until the API
answers); arm a timer for every enabled rule on a timer trigger; follow `rule.*` lifecycle messages
on `attune.rules.lifecycle.queue`, re-reading the rule row on every message (enabled -> (re)arm,
otherwise disarm). Each fire becomes `POST /api/v1/events {"trigger_ref", "payload",
"trigger_instance_id": "rule_<id>"}` with the sensor token (retried with backoff; the token is
re-minted on 401).

One scheduler thread keeps a heap of monotonic deadlines; event posting runs on a small pool so a
slow API never delays another timer.
"""
from __future__ import annotations

import concurrent.futures
import datetime as _dt
import heapq
import itertools
import logging
import os
import shutil
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import requests

from .. import broker
from ..db import J, Database
from . import timers

log = logging.getLogger("attune_emulator.sensor")

LIFECYCLE_QUEUE = "attune.rules.lifecycle.queue"
LIFECYCLE_KEYS = ("rule.created", "rule.enabled", "rule.disabled", "rule.deleted")
POST_ATTEMPTS = 8


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


@dataclass
class Job:
    rule_id: int
    rule_ref: str
    trigger_ref: str
    timer: Any
    signature: tuple
    armed_mono: float
    generation: int
    count: int = 0
    mark: _dt.datetime | None = None          # cron/date: the wall-clock instant being waited for
    extra: dict = field(default_factory=dict)


class EventPoster:
    """Creates events through the API with the sensor token."""

    def __init__(self, api_url: str, sensor_ref: str, trigger_types: list[str],
                 stop: threading.Event):
        self.api_url = api_url.rstrip("/")
        self.sensor_ref = sensor_ref
        self.trigger_types = trigger_types
        self.stop = stop
        self._token: str | None = None
        self._token_lock = threading.Lock()
        self._local = threading.local()

    def _session(self) -> requests.Session:
        sess = getattr(self._local, "session", None)
        if sess is None:
            sess = requests.Session()
            self._local.session = sess
        return sess

    def mint_token(self, wait_forever: bool = True) -> str | None:
        delay = 0.3
        while not self.stop.is_set():
            try:
                resp = self._session().post(
                    f"{self.api_url}/auth/internal/sensor-token",
                    json={"sensor_ref": self.sensor_ref, "trigger_types": self.trigger_types},
                    timeout=10)
                if resp.status_code in (200, 201):
                    token = (resp.json().get("data") or {}).get("token")
                    if token:
                        with self._token_lock:
                            self._token = token
                        log.info("obtained a sensor token for %s", self.sensor_ref)
                        return token
                log.warning("sensor token request answered %s: %s", resp.status_code,
                            resp.text[:200])
            except (requests.RequestException, ValueError) as exc:
                log.info("sensor token request failed (%s); API not ready yet?", exc)
            if not wait_forever:
                return None
            self.stop.wait(delay)
            delay = min(delay * 1.5, 3.0)
        return None

    def token(self) -> str | None:
        with self._token_lock:
            return self._token

    def post_event(self, trigger_ref: str, payload: dict, rule_id: int, rule_ref: str) -> None:
        body = {"trigger_ref": trigger_ref, "payload": payload,
                "trigger_instance_id": f"rule_{rule_id}"}
        delay = 0.2
        for attempt in range(1, POST_ATTEMPTS + 1):
            token = self.token() or self.mint_token(wait_forever=False)
            try:
                resp = self._session().post(f"{self.api_url}/api/v1/events", json=body,
                                            headers={"Authorization": f"Bearer {token}"},
                                            timeout=10)
                if resp.status_code in (200, 201):
                    event_id = (resp.json().get("data") or {}).get("id")
                    log.info("rule %s (%s): created event %s on %s", rule_id, rule_ref, event_id,
                             trigger_ref)
                    return
                if resp.status_code == 401:
                    log.warning("event post for rule %s got 401; re-minting the sensor token",
                                rule_id)
                    self.mint_token(wait_forever=False)
                elif resp.status_code < 500 and resp.status_code != 429:
                    log.error("event post for rule %s (%s) rejected with %s: %s; dropping it",
                              rule_id, rule_ref, resp.status_code, resp.text[:300])
                    return
                else:
                    log.warning("event post for rule %s answered %s (attempt %d/%d)", rule_id,
                                resp.status_code, attempt, POST_ATTEMPTS)
            except (requests.RequestException, ValueError) as exc:
                log.warning("event post for rule %s failed (%s) (attempt %d/%d)", rule_id, exc,
                            attempt, POST_ATTEMPTS)
            if self.stop.wait(delay):
                return
            delay = min(delay * 2, 5.0)
        log.error("rule %s (%s): giving up on an event after %d attempts", rule_id, rule_ref,
                  POST_ATTEMPTS)


class TimerScheduler(threading.Thread):
    """One thread, a heap of (monotonic deadline, seq, rule id, generation)."""

    def __init__(self, fire_callback):
        super().__init__(name="timer-scheduler", daemon=True)
        self.fire_callback = fire_callback
        self.jobs: dict[int, Job] = {}
        self._heap: list[tuple[float, int, int, int]] = []
        self._seq = itertools.count()
        self._gen = itertools.count(1)
        self._cv = threading.Condition()
        self._stopping = False

    # -- arming ------------------------------------------------------------------------------
    def arm(self, rule: dict) -> None:
        rule_id = int(rule["id"])
        trigger_ref = rule["trigger_ref"]
        params = rule.get("trigger_params") or {}
        signature = (trigger_ref, repr(params), str(rule.get("updated")))
        with self._cv:
            current = self.jobs.get(rule_id)
            if current is not None and current.signature == signature:
                log.info("rule %s (%s): timer already armed with these parameters; unchanged",
                         rule_id, rule["ref"])
                return
        try:
            timer = timers.build_timer(trigger_ref, params)
        except timers.TimerConfigError as exc:
            log.error("rule %s (%s): timer not armed: %s", rule_id, rule["ref"], exc)
            self.disarm(rule_id, quiet=True)
            return
        now_mono, now_wall = time.monotonic(), _utcnow()
        job = Job(rule_id, rule["ref"], trigger_ref, timer, signature, now_mono, next(self._gen))
        if isinstance(timer, timers.IntervalTimer):
            due = now_mono + timer.due_offset(1)
            log.info("rule %s (%s): interval timer armed, every %ss, first fire at %s", rule_id,
                     rule["ref"], timer.interval_seconds,
                     timers.rfc3339(now_wall + _dt.timedelta(seconds=timer.interval_seconds)))
        elif isinstance(timer, timers.CronTimer):
            job.mark = timer.next_after(now_wall)
            due = now_mono + (job.mark - now_wall).total_seconds()
            log.info("rule %s (%s): cron timer armed, '%s' (%s), next fire at %s", rule_id,
                     rule["ref"], timer.expression, timer.timezone, timers.rfc3339(job.mark))
        else:
            if timer.is_past(now_wall):
                log.warning("rule %s (%s): date/time timer not armed: fire_at %s is in the past",
                            rule_id, rule["ref"], timer.fire_at_text)
                self.disarm(rule_id, quiet=True)
                return
            job.mark = timer.fire_at
            due = now_mono + (timer.fire_at - now_wall).total_seconds()
            log.info("rule %s (%s): date/time timer armed for %s", rule_id, rule["ref"],
                     timers.rfc3339(timer.fire_at))
        with self._cv:
            if rule_id in self.jobs:
                log.info("rule %s (%s): replacing its previous timer", rule_id, rule["ref"])
            self.jobs[rule_id] = job
            heapq.heappush(self._heap, (due, next(self._seq), rule_id, job.generation))
            self._cv.notify()

    def disarm(self, rule_id: int, quiet: bool = False) -> None:
        with self._cv:
            job = self.jobs.pop(rule_id, None)
            self._cv.notify()
        if job is not None:
            log.info("rule %s (%s): timer stopped", rule_id, job.rule_ref)
        elif not quiet:
            log.info("rule %s: no timer armed; nothing to stop", rule_id)

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()

    # -- loop --------------------------------------------------------------------------------
    def run(self) -> None:
        while True:
            with self._cv:
                while not self._stopping:
                    # Drop entries of replaced or stopped jobs.
                    while self._heap:
                        _, _, rid, gen = self._heap[0]
                        job = self.jobs.get(rid)
                        if job is None or job.generation != gen:
                            heapq.heappop(self._heap)
                            continue
                        break
                    if not self._heap:
                        self._cv.wait()
                        continue
                    wait = self._heap[0][0] - time.monotonic()
                    if wait <= 0:
                        break
                    self._cv.wait(timeout=wait)
                if self._stopping:
                    return
                due, _, rid, gen = heapq.heappop(self._heap)
                job = self.jobs[rid]
            self._fire(job, due)

    def _fire(self, job: Job, due: float) -> None:
        timer = job.timer
        if job.mark is not None:
            # Never report a wall-clock fire before the mark (monotonic/wall rounding).
            ahead = (job.mark - _utcnow()).total_seconds()
            if 0 < ahead < 0.5:
                time.sleep(ahead)
        fired_at = _utcnow()
        job.count += 1
        next_due: float | None = None
        if isinstance(timer, timers.IntervalTimer):
            payload = timer.payload(fired_at, job.count)
            k = job.count + 1
            next_due = job.armed_mono + timer.due_offset(k)
            now = time.monotonic()
            if next_due <= now:  # we fell behind (suspended?): skip missed marks, keep the grid
                missed = int((now - job.armed_mono) // timer.interval_seconds) + 1
                log.warning("rule %s: interval timer fell behind; skipping to mark %d",
                            job.rule_id, missed)
                next_due = job.armed_mono + timer.due_offset(missed)
        elif isinstance(timer, timers.CronTimer):
            scheduled = job.mark
            nxt = timer.next_after(max(scheduled, fired_at))
            payload = timer.payload(fired_at, scheduled, nxt, job.count)
            job.mark = nxt
            next_due = time.monotonic() + (nxt - _utcnow()).total_seconds()
        else:
            payload = timer.payload(fired_at)
        lateness_ms = (time.monotonic() - due) * 1000
        log.info("rule %s (%s): %s timer fired (#%d, %.1f ms after its deadline)", job.rule_id,
                 job.rule_ref, timer.kind, job.count, lateness_ms)
        with self._cv:
            if self.jobs.get(job.rule_id) is job:
                if next_due is None:
                    self.jobs.pop(job.rule_id, None)
                    log.info("rule %s (%s): one-shot timer done", job.rule_id, job.rule_ref)
                else:
                    heapq.heappush(self._heap, (next_due, next(self._seq), job.rule_id,
                                                job.generation))
        self.fire_callback(job, payload)


class SensorService:
    def __init__(self, cfg):
        self.cfg = cfg
        base = cfg.get("worker.name") or socket.gethostname()
        self.name = f"{base}-sensor"
        self.heartbeat_interval = float(cfg.get("sensor.heartbeat_interval", 30))
        self.db = Database.from_config(cfg, maxconn=4)
        self.stop_event = threading.Event()
        self.poster = EventPoster(cfg.api_url, timers.SENSOR_REF, list(timers.TIMER_TRIGGERS),
                                  self.stop_event)
        self.senders = concurrent.futures.ThreadPoolExecutor(max_workers=8,
                                                             thread_name_prefix="event-post")
        self.scheduler = TimerScheduler(self._on_fire)
        from .custom import CustomSensorManager  # pack sensors run as subprocesses
        self.custom = CustomSensorManager(cfg, self.db, cfg.api_url, self.stop_event)
        self.consumer: broker.Consumer | None = None
        self.worker_id: int | None = None

    def _on_fire(self, job: Job, payload: dict) -> None:
        self.senders.submit(self.poster.post_event, job.trigger_ref, payload, job.rule_id,
                            job.rule_ref)

    def register(self) -> None:
        runtimes = ["native"] + [name for name, binary in (("shell", "bash"), ("python", "python3"),
                                                           ("node", "node"))
                                 if shutil.which(binary)]
        row = self.db.one(
            """INSERT INTO worker (name, worker_type, worker_role, host, status, capabilities, pid,
                                   last_heartbeat)
               VALUES (%s, 'local', 'sensor', %s, 'active', %s, %s, now())
               ON CONFLICT (name) DO UPDATE SET worker_role = 'sensor', host = EXCLUDED.host,
                   status = 'active', capabilities = EXCLUDED.capabilities, pid = EXCLUDED.pid,
                   last_heartbeat = now()
               RETURNING id""",
            (self.name, socket.gethostname(),
             J({"runtimes": runtimes, "sensors": [timers.SENSOR_REF]}), os.getpid()))
        self.worker_id = int(row["id"])
        log.info("registered sensor worker %r as id %s", self.name, self.worker_id)

    def heartbeat_loop(self) -> None:
        while not self.stop_event.wait(self.heartbeat_interval):
            try:
                self.db.execute("UPDATE worker SET last_heartbeat = now(), status = 'active' "
                                "WHERE id = %s", (self.worker_id,))
            except psycopg2.Error as exc:
                log.warning("heartbeat failed: %s", exc)

    def _rule(self, rule_id: int) -> dict | None:
        return self.db.one("SELECT id, ref, trigger_ref, trigger_params, enabled, updated "
                           "FROM rule WHERE id = %s", (rule_id,))

    def load_rules(self) -> None:
        rows = self.db.all(
            "SELECT id, ref, trigger_ref, trigger_params, enabled, updated FROM rule "
            "WHERE enabled AND trigger_ref = ANY(%s) ORDER BY id", (list(timers.TIMER_TRIGGERS),))
        log.info("loaded %d enabled timer rule(s)", len(rows))
        for row in rows:
            self.scheduler.arm(row)

    def on_rule_message(self, routing_key: str, body: dict) -> None:
        try:
            rule_id = int(body.get("rule_id"))
        except (TypeError, ValueError):
            log.warning("%s message without a rule_id: %s", routing_key, body)
            return
        trigger_ref = body.get("trigger_ref")
        rule = self._rule(rule_id)
        if trigger_ref not in timers.TIMER_TRIGGERS or (
                rule is not None and rule["trigger_ref"] not in timers.TIMER_TRIGGERS):
            try:
                self.custom.on_rule_change(None if rule is None or rule["trigger_ref"] != trigger_ref
                                           else trigger_ref)
            except Exception:
                log.exception("%s for rule %s: custom sensor update failed", routing_key, rule_id)
        if rule is None:
            log.info("%s for rule %s (%s): rule no longer exists", routing_key, rule_id,
                     body.get("rule_ref"))
            self.scheduler.disarm(rule_id, quiet=True)
            return
        if rule["trigger_ref"] not in timers.TIMER_TRIGGERS:
            if rule_id in self.scheduler.jobs:
                log.info("%s for rule %s: trigger is now %s; stopping its timer", routing_key,
                         rule_id, rule["trigger_ref"])
                self.scheduler.disarm(rule_id)
            elif trigger_ref in timers.TIMER_TRIGGERS:
                log.debug("%s for rule %s: not a timer rule", routing_key, rule_id)
            return
        if rule["enabled"]:
            log.info("%s for rule %s (%s): arming its timer", routing_key, rule_id, rule["ref"])
            self.scheduler.arm(rule)
        else:
            log.info("%s for rule %s (%s): rule disabled; stopping its timer", routing_key,
                     rule_id, rule["ref"])
            self.scheduler.disarm(rule_id)

    def start(self) -> None:
        self.register()
        threading.Thread(target=self.heartbeat_loop, name="heartbeat", daemon=True).start()
        self.consumer = broker.Consumer(
            self.cfg.amqp_url, LIFECYCLE_QUEUE, [(broker.EVENTS, key) for key in LIFECYCLE_KEYS],
            self.on_rule_message, prefetch=1, name="sensor-rules")
        self.poster.mint_token(wait_forever=True)
        if self.stop_event.is_set():
            return
        self.scheduler.start()
        # Load rules before consuming so queued lifecycle messages are applied on top.
        self.load_rules()
        self.custom.start()
        self.consumer.start()
        if not self.consumer.ready.wait(timeout=30):
            log.warning("rule lifecycle consumer not ready after 30s")
        log.info("sensor service %r running (%d timer(s) armed)", self.name,
                 len(self.scheduler.jobs))

    def shutdown(self) -> None:
        log.info("shutting down the sensor service")
        self.stop_event.set()
        if self.consumer is not None:
            self.consumer.stop()
        self.scheduler.stop()
        self.custom.shutdown()
        try:
            self.db.execute("UPDATE worker SET status = 'inactive' WHERE id = %s",
                            (self.worker_id,))
        except psycopg2.Error as exc:
            log.warning("cannot mark the sensor worker inactive: %s", exc)
        self.senders.shutdown(wait=False, cancel_futures=True)
        if self.consumer is not None:
            self.consumer.join(timeout=5)
        self.db.close()
        log.info("sensor service stopped")


def main(cfg) -> int:
    if not cfg.has_section("message_queue") or not cfg.amqp_url:
        log.error("the sensor service requires a message_queue section with a url "
                  "(message_queue.url / ATTUNE__MESSAGE_QUEUE__URL); refusing to start")
        return 1
    service = SensorService(cfg)

    def _on_signal(signum, _frame):
        log.info("received %s", signal.Signals(signum).name)
        service.stop_event.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    deadline = time.monotonic() + 60
    while not service.db.ping():
        if time.monotonic() > deadline or service.stop_event.is_set():
            log.error("cannot start: database not reachable")
            return 1
        time.sleep(0.5)
    try:
        broker.wait_for_broker(cfg.amqp_url, timeout=60)
    except RuntimeError as exc:
        log.error("cannot start: %s", exc)
        return 1
    if service.worker_id is None:
        service.start()
    while not service.stop_event.wait(1.0):
        pass
    service.shutdown()
    return 0
