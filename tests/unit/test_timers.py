"""Unit tests of the timer sensor's pure logic (attune_emulator.sensor.timers): configuration,
next-fire computation and payload shapes."""
import datetime as dt

import pytest

from attune_emulator.sensor import timers
from attune_emulator.sensor.timers import TimerConfigError, build_timer

UTC = dt.timezone.utc


def at(h, m, s, us=0, day=1):
    return dt.datetime(2026, 1, day, h, m, s, us, tzinfo=UTC)


# ------------------------------------------------------------------ interval
@pytest.mark.parametrize("unit,interval,seconds", [("seconds", 2, 2), ("minutes", 3, 180),
                                                   ("hours", 1, 3600)])
def test_interval_units(unit, interval, seconds):
    timer = build_timer(timers.INTERVAL, {"unit": unit, "interval": interval})
    assert timer.interval_seconds == seconds
    # First fire one interval after arming, then on a fixed grid (no drift).
    assert [timer.due_offset(k) for k in (1, 2, 3)] == [seconds, 2 * seconds, 3 * seconds]


@pytest.mark.parametrize("params", [{"unit": "seconds", "interval": 0},
                                    {"unit": "weeks", "interval": 1},
                                    {"unit": "seconds"},
                                    {"unit": "seconds", "interval": "x"}])
def test_interval_rejects_bad_params(params):
    with pytest.raises(TimerConfigError):
        build_timer(timers.INTERVAL, params)


def test_interval_payload():
    timer = build_timer(timers.INTERVAL, {"unit": "seconds", "interval": 2})
    payload = timer.payload(at(1, 2, 3, 456789), 3)
    assert payload == {"type": "interval", "interval_seconds": 2,
                       "fired_at": "2026-01-01T01:02:03.456789Z", "execution_count": 3,
                       "sensor_ref": "core.timer_sensor"}


# ------------------------------------------------------------------ cron
def test_cron_list_marks_and_strictly_after():
    timer = build_timer(timers.CRON, {"expression": "5,8,11,17 * * * * *"})
    assert timer.next_after(at(0, 0, 4, 999999)) == at(0, 0, 5)
    assert timer.next_after(at(0, 0, 5)) == at(0, 0, 8)
    assert timer.next_after(at(0, 0, 5, 1)) == at(0, 0, 8)
    assert timer.next_after(at(0, 0, 17)) == at(0, 1, 5)


def test_cron_step_seconds():
    timer = build_timer(timers.CRON, {"expression": "*/2 * * * * *"})
    marks, t = [], at(0, 0, 0, 500000)
    for _ in range(5):
        t = timer.next_after(t)
        marks.append(t.second)
    assert marks == [2, 4, 6, 8, 10]


def test_cron_timezone_extension():
    timer = build_timer(timers.CRON, {"expression": "0 30 12 * * *", "timezone": "Asia/Kathmandu"})
    assert timer.next_after(at(0, 0, 0)) == at(6, 45, 0)  # 12:30 at UTC+05:45
    assert timer.timezone == "Asia/Kathmandu"


@pytest.mark.parametrize("params", [{"expression": "* * * * *"}, {"expression": "61 * * * * *"},
                                    {"expression": ""}, {},
                                    {"expression": "* * * * * *", "timezone": "Mars/Olympus"}])
def test_cron_rejects_bad_params(params):
    with pytest.raises(TimerConfigError):
        build_timer(timers.CRON, params)


def test_cron_payload():
    timer = build_timer(timers.CRON, {"expression": "*/5 * * * * *"})
    payload = timer.payload(at(0, 0, 5, 1200), at(0, 0, 5), at(0, 0, 10), 1)
    assert payload == {"type": "cron", "fired_at": "2026-01-01T00:00:05.001200Z",
                       "scheduled_at": "2026-01-01T00:00:05.000000Z", "expression": "*/5 * * * * *",
                       "timezone": "UTC", "next_fire_at": "2026-01-01T00:00:10.000000Z",
                       "execution_count": 1, "sensor_ref": "core.timer_sensor"}


# ------------------------------------------------------------------ date/time
def test_datetime_future_and_past():
    timer = build_timer(timers.DATETIME, {"fire_at": "2026-01-01T00:00:10.250Z"})
    assert timer.fire_at == at(0, 0, 10, 250000)
    assert not timer.is_past(at(0, 0, 10))
    assert timer.is_past(at(0, 0, 10, 250000))
    offset = build_timer(timers.DATETIME, {"fire_at": "2026-01-01T05:45:10+05:45"})
    assert offset.fire_at == at(0, 0, 10)


def test_datetime_payload_echoes_fire_at():
    timer = build_timer(timers.DATETIME, {"fire_at": "2026-01-01T00:00:10.250Z"})
    payload = timer.payload(at(0, 0, 10, 262000))
    assert payload == {"type": "one_shot", "fire_at": "2026-01-01T00:00:10.250Z",
                       "fired_at": "2026-01-01T00:00:10.262000Z", "timezone": "UTC",
                       "delay_ms": 12, "sensor_ref": "core.timer_sensor"}


@pytest.mark.parametrize("params", [{}, {"fire_at": "tomorrow"}, {"fire_at": 12}])
def test_datetime_rejects_bad_params(params):
    with pytest.raises(TimerConfigError):
        build_timer(timers.DATETIME, params)


def test_non_timer_trigger():
    with pytest.raises(TimerConfigError):
        build_timer("core.alert", {})
