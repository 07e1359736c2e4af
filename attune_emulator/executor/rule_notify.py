"""Extension E11 `rule_notify`: a `rule_triggered` notification when an opted-in rule fires.

A rule with `notify_on_trigger: true` gets, for each enforcement the executor creates for it, a
`pg_notify('rule_triggered', ...)` with `entity_type "rule"`, `entity_id` = the rule id and the
payload `{entity_type, entity_id, id, rule_ref, trigger_ref, event, enforcement, created,
suppressed_count}` (the notifier LISTENs on that channel and applies its usual filters and, with
E3, owner scoping).

Throttle (leading edge, per rule): the first fire notifies at once; further fires less than
`executor.rule_notify_min_interval_ms` (default 1000) after the last notified one are suppressed
and counted; the next fire at or after the interval notifies with that count in
`suppressed_count`. Fire times are the events' `created` timestamps (when the trigger fired), so
the throttle does not depend on how fast the executor drains its queue. The state lives in the
executor process (upstream runs one executor per deployment for a given queue consumer set).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime
from typing import Any

from ..db import iso

log = logging.getLogger(__name__)

DEFAULT_MIN_INTERVAL_MS = 1000


class RuleThrottle:
    """Leading-edge throttle, one window per rule id (pure logic; thread-safe)."""

    def __init__(self, min_interval_ms: float = DEFAULT_MIN_INTERVAL_MS):
        self.min_interval = max(float(min_interval_ms), 0.0) / 1000.0
        self._last_sent: dict[int, float] = {}
        self._suppressed: dict[int, int] = {}
        self._lock = threading.Lock()

    def fire(self, rule_id: int, at: float) -> int | None:
        """Record a fire of `rule_id` at time `at` (seconds). Returns the suppressed count to send
        when this fire must be notified, else None (suppressed and counted)."""
        with self._lock:
            last = self._last_sent.get(rule_id)
            if last is not None and at - last < self.min_interval:
                self._suppressed[rule_id] = self._suppressed.get(rule_id, 0) + 1
                return None
            self._last_sent[rule_id] = at
            return self._suppressed.pop(rule_id, 0)

    def forget(self, rule_id: int) -> None:
        with self._lock:
            self._last_sent.pop(rule_id, None)
            self._suppressed.pop(rule_id, None)


def notification_payload(rule: dict, event: dict, enforcement_id: int, created: Any,
                         suppressed_count: int) -> dict:
    return {"entity_type": "rule", "entity_id": rule["id"], "id": rule["id"],
            "rule_ref": rule["ref"], "trigger_ref": event.get("trigger_ref"),
            "event": event.get("id"), "enforcement": enforcement_id,
            "created": iso(created) if isinstance(created, datetime) else created,
            "suppressed_count": int(suppressed_count)}


_THROTTLES: dict[float, RuleThrottle] = {}
_THROTTLES_LOCK = threading.Lock()


def _throttle(cfg) -> RuleThrottle:
    interval = float(cfg.get("executor.rule_notify_min_interval_ms", DEFAULT_MIN_INTERVAL_MS))
    with _THROTTLES_LOCK:
        if interval not in _THROTTLES:
            _THROTTLES[interval] = RuleThrottle(interval)
        return _THROTTLES[interval]


def _timestamp(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    return None


def on_enforcement_created(ctx, rule: dict, event: dict, enforcement_id: int) -> None:
    """Called by the event processor after it inserted an enforcement for `rule`."""
    if not rule.get("notify_on_trigger"):
        return
    row = ctx.db.one("SELECT created FROM enforcement WHERE id = %s", (enforcement_id,))
    created = (row or {}).get("created")
    fired_at = _timestamp(event.get("created")) or _timestamp(created)
    if fired_at is None:
        fired_at = time.time()
    suppressed = _throttle(ctx.cfg).fire(rule["id"], fired_at)
    if suppressed is None:
        log.info("rule %s triggered (enforcement %s): notification throttled", rule["ref"],
                 enforcement_id)
        return
    payload = notification_payload(rule, event, enforcement_id, created, suppressed)
    ctx.db.execute("SELECT pg_notify('rule_triggered', %s)", (json.dumps(payload),))
    log.info("rule %s triggered (enforcement %s): rule_triggered sent (suppressed_count %d)",
             rule["ref"], enforcement_id, suppressed)
