"""Timer definitions of the core timer sensor (pure logic: next-fire computation and payloads).

Triggers (upstream `crates/core-timer-sensor`, behaviour.md section 6.2):
  core.intervaltimer  {unit: seconds|minutes|hours, interval: N}   first fire one interval after arming
  core.crontimer      {expression: 6-field cron, seconds first, timezone?}   (timezone: extension E8)
  core.datetimetimer  {fire_at: RFC 3339}                          fires once; a past instant is not armed

Interval timers are scheduled on the monotonic clock at `armed + k * interval` (no drift). Cron and
date timers are computed in wall-clock UTC and converted to a monotonic deadline when scheduled.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

from croniter import croniter

try:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
except ImportError:  # pragma: no cover - Python < 3.9
    ZoneInfo = None  # type: ignore[assignment]
    ZoneInfoNotFoundError = Exception  # type: ignore[assignment,misc]

SENSOR_REF = "core.timer_sensor"
INTERVAL = "core.intervaltimer"
CRON = "core.crontimer"
DATETIME = "core.datetimetimer"
TIMER_TRIGGERS = (INTERVAL, CRON, DATETIME)

UNIT_SECONDS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400}
UTC = _dt.timezone.utc


class TimerConfigError(ValueError):
    """The rule's trigger_params cannot drive this timer; the message says why."""


def rfc3339(ts: _dt.datetime) -> str:
    """RFC 3339 UTC with microseconds and `Z`."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339(text: str) -> _dt.datetime:
    value = _dt.datetime.fromisoformat(str(text).strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _zone(name: str | None):
    if not name or str(name).upper() == "UTC":
        return UTC
    if ZoneInfo is None:
        raise TimerConfigError(f"unknown timezone '{name}'")
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise TimerConfigError(f"unknown timezone '{name}'") from exc


@dataclass
class IntervalTimer:
    interval_seconds: int
    kind: str = "interval"

    def due_offset(self, k: int) -> float:
        """Seconds after arming of the k-th fire (k >= 1)."""
        return float(self.interval_seconds * k)

    def payload(self, fired_at: _dt.datetime, execution_count: int) -> dict:
        return {"type": "interval", "interval_seconds": self.interval_seconds,
                "fired_at": rfc3339(fired_at), "execution_count": execution_count,
                "sensor_ref": SENSOR_REF}


@dataclass
class CronTimer:
    expression: str
    timezone: str = "UTC"
    kind: str = "cron"
    _tz: Any = field(default=None, repr=False)

    def __post_init__(self):
        fields = self.expression.split()
        if len(fields) != 6:
            raise TimerConfigError(
                f"cron expression must have 6 fields (sec min hour day-of-month month "
                f"day-of-week), got {len(fields)}: '{self.expression}'")
        self._tz = _zone(self.timezone)
        try:
            croniter(self.expression, _dt.datetime.now(self._tz), second_at_beginning=True)
        except (ValueError, KeyError, TypeError) as exc:
            raise TimerConfigError(f"invalid cron expression '{self.expression}': {exc}") from exc

    def next_after(self, after: _dt.datetime) -> _dt.datetime:
        """The first mark strictly after `after` (UTC in, UTC out)."""
        start = after
        for _ in range(4):
            it = croniter(self.expression, start.astimezone(self._tz), second_at_beginning=True)
            nxt = it.get_next(_dt.datetime)
            if nxt.tzinfo is None:
                nxt = nxt.replace(tzinfo=self._tz)
            nxt = nxt.astimezone(UTC)
            if nxt > after:
                return nxt
            start = nxt
        raise TimerConfigError(f"cron expression '{self.expression}' has no future mark")

    def payload(self, fired_at: _dt.datetime, scheduled_at: _dt.datetime,
                next_fire_at: _dt.datetime | None, execution_count: int) -> dict:
        return {"type": "cron", "fired_at": rfc3339(fired_at), "scheduled_at": rfc3339(scheduled_at),
                "expression": self.expression, "timezone": self.timezone,
                "next_fire_at": rfc3339(next_fire_at) if next_fire_at else None,
                "execution_count": execution_count, "sensor_ref": SENSOR_REF}


@dataclass
class DateTimeTimer:
    fire_at: _dt.datetime
    fire_at_text: str
    kind: str = "one_shot"

    def is_past(self, now: _dt.datetime) -> bool:
        return self.fire_at <= now

    def payload(self, fired_at: _dt.datetime) -> dict:
        delay_ms = max(int((fired_at - self.fire_at).total_seconds() * 1000), 0)
        return {"type": "one_shot", "fire_at": self.fire_at_text, "fired_at": rfc3339(fired_at),
                "timezone": "UTC", "delay_ms": delay_ms, "sensor_ref": SENSOR_REF}


def build_timer(trigger_ref: str, trigger_params: Any):
    """The timer for a rule on one of the timer triggers; TimerConfigError when unusable."""
    tp = trigger_params if isinstance(trigger_params, dict) else {}
    if trigger_ref == INTERVAL:
        unit = str(tp.get("unit") or "seconds").lower()
        if unit not in UNIT_SECONDS:
            raise TimerConfigError(f"unknown interval unit '{unit}'")
        interval = tp.get("interval")
        if isinstance(interval, bool) or interval is None:
            raise TimerConfigError("interval is required")
        try:
            interval = int(interval)
        except (TypeError, ValueError) as exc:
            raise TimerConfigError(f"interval must be an integer, got {interval!r}") from exc
        seconds = interval * UNIT_SECONDS[unit]
        if seconds <= 0:
            raise TimerConfigError("Interval must be greater than 0")
        return IntervalTimer(seconds)
    if trigger_ref == CRON:
        expression = tp.get("expression")
        if not isinstance(expression, str) or not expression.strip():
            raise TimerConfigError("expression is required")
        return CronTimer(" ".join(expression.split()), str(tp.get("timezone") or "UTC"))
    if trigger_ref == DATETIME:
        fire_at = tp.get("fire_at")
        if not isinstance(fire_at, str) or not fire_at.strip():
            raise TimerConfigError("fire_at is required")
        try:
            when = parse_rfc3339(fire_at)
        except ValueError as exc:
            raise TimerConfigError(f"fire_at is not an RFC 3339 timestamp: '{fire_at}'") from exc
        return DateTimeTimer(when, fire_at)
    raise TimerConfigError(f"'{trigger_ref}' is not a timer trigger")
