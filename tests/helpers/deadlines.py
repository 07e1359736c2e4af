"""Negative checks anchored on a deadline the system defines (scenarios.md §0.3, P4).

`holds_until(probe, deadline, ok, description)` keeps probing until the wall-clock `deadline`
(an aware datetime: an inquiry's `timeout_at` + ε, a failed attempt's end + the longest retry
delay + ε) and fails at once when `ok(value)` stops holding, naming what changed. It is a
continuous observation through the deadline, not a sleep: it returns the last value seen, which
the caller still asserts on.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Callable

from tests.helpers.polling import WaitAborted, trim, wait_until
from tests.helpers.scenario import iso_ms, utcnow


def holds_until(probe: Callable[[], Any], deadline: datetime, ok: Callable[[Any], bool],
                description: str, *, interval: float = 0.1) -> Any:
    """Probe until `deadline`; `ok(value)` must hold at every probe. Returns the last value."""
    def check():
        value = probe()
        if not ok(value):
            raise WaitAborted(f"{description}: broken before {iso_ms(deadline)} "
                              f"(now {iso_ms(utcnow())}): {trim(value, 800)}")
        return value, utcnow() >= deadline

    remaining = max(0.0, (deadline - utcnow()).total_seconds())
    value, _ = wait_until(check, timeout=remaining + 10, interval=interval, max_interval=interval,
                          done=lambda pair: pair[1],
                          description=f"{description} (held until {iso_ms(deadline)})")
    return value


__all__ = ["holds_until"]
