"""T1.2 Date timer, one shot (scenarios.md T1.2).

The plan's 5 s lead is scaled to 3 s. Upstream has no "expired" flag: the rule stays enabled, and
"expired" is asserted through behaviour (no second fire after the timer process re-arms it).
The past-date edge case is T3.1.
"""
from datetime import timedelta

import pytest

from tests.helpers.polling import wait_for_execution
from tests.helpers.scenario import (Clock, chain_for_event, iso_ms, parse_ts, secs, total, utcnow,
                                    wait_timer_events)

pytestmark = [pytest.mark.tier1, pytest.mark.timer, pytest.mark.serial,
              pytest.mark.xdist_group("timers")]

LEAD = 3.0


def test_date_timer_fires_exactly_once(admin, make, uid):
    """T1.2 Date timer (one shot): a core.datetimetimer rule fires once within 1 s of fire_at,
    giving one processed enforcement and one completed execution; after the timer process restarts
    and re-arms it (P2 clock rule), it has still fired exactly once and the rule stays enabled."""
    fire_at = parse_ts(iso_ms(utcnow() + timedelta(seconds=LEAD)))  # millisecond precision
    rule = make.timer_rule("core.datetimetimer", {"fire_at": iso_ms(fire_at)}, "core.echo",
                           action_params={"message": f"once-{uid}"})

    [event] = wait_timer_events(admin, rule["ref"], 1, timeout=LEAD + 10)
    p = event["payload"]
    assert p.get("type") == "one_shot", f"expected payload.type one_shot, got {p}"
    assert parse_ts(p["fire_at"]) == fire_at, f"payload.fire_at {p['fire_at']} != requested {iso_ms(fire_at)}"
    lateness = secs(fire_at, p["fired_at"])
    assert 0 <= lateness <= 1.0, f"expected fired_at within [0, 1.0] s after fire_at, got {lateness:.3f} s"
    assert 0 <= p.get("delay_ms", -1) <= 1000, f"expected 0 <= delay_ms <= 1000, got {p.get('delay_ms')}"
    assert (event["rule"], event["rule_ref"]) == (rule["id"], rule["ref"]), f"event not bound to the rule: {event}"

    enforcement, execution = chain_for_event(admin, event["id"])
    execution = wait_for_execution(admin, execution["id"], "completed", timeout=20)
    assert enforcement["status"] == "processed", f"enforcement: {enforcement}"
    assert execution["result"].get("stdout") == f"once-{uid}", f"execution result: {execution['result']}"

    # P2: creating the clock rule restarts the timer process, which re-arms the (now past) date
    # rule. Two clock ticks after that restart prove the process was running and armed.
    clock = Clock.start(admin, make, uid)
    clock.wait_ticks_after(clock.created, n=2, timeout=15)
    assert total(admin.list_events, rule_ref=rule["ref"]) == 1, "the date timer fired again after re-arming"
    assert total(admin.list_enforcements, rule_ref=rule["ref"]) == 1, "expected exactly 1 enforcement"
    assert total(admin.list_executions, rule_ref=rule["ref"]) == 1, "expected exactly 1 execution"
    assert admin.get_rule(rule["ref"])["enabled"] is True, "upstream keeps a fired date rule enabled"
