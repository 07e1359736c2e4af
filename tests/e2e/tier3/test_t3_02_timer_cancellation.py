"""T3.2 Timer cancellation (scenarios.md T3.2).

A 1 s `core.intervaltimer` rule runs `sleeper {seconds: 0.5}`. Disabling it stops its timer (in-flight
executions still finish), which is checked with the P2 clock rule; re-enabling restarts the timer,
whose `execution_count` starts again at 1 (upstream semantics: the count is per timer job).
"""
from datetime import timedelta

import pytest

from tests.helpers.polling import wait_for_execution, wait_for_items, wait_until
from tests.helpers.scenario import (Clock, all_items, chain_for_event, full_events, parse_ts, secs,
                                    total, utcnow)

pytestmark = [pytest.mark.tier3, pytest.mark.timer, pytest.mark.rules, pytest.mark.serial,
              pytest.mark.xdist_group("timers")]

INTERVAL = 1
SETTLE = 0.3  # an event fired at most this long after the disable returned is still "before" it


def test_disable_stops_the_timer_and_enable_resumes_it(admin, make, uid, e2e_pack):
    """T3.2 Timer cancellation: two executions before the disable; disable answers 200 with
    enabled false; once the P2 clock has fired 3 times after the disable (and those ticks are
    enforced), the rule has no event fired later than t_d + 0.3 s, every one of its executions ends
    completed and comes from an earlier event, and the count stays unchanged over a further clock
    tick; after re-enabling, a new event arrives within interval + 2 s with execution_count 1 and
    its execution completes."""
    clock = Clock.start(admin, make, uid)
    rule = make.timer_rule("core.intervaltimer", {"unit": "seconds", "interval": INTERVAL},
                           f"{e2e_pack}.sleeper", action_params={"seconds": 0.5})
    ref = rule["ref"]

    wait_for_items(lambda: admin.list_executions(rule_ref=ref), 2, timeout=15, exact=False,
                   description=f"two executions of {ref} before the disable")

    disabled = admin.disable_rule(ref)
    t_d = utcnow()
    assert disabled["enabled"] is False, f"disable answered {disabled}"

    # P2: three clock events fired after t_d prove the timer process ran on, armed; once their
    # enforcements exist, the executor has also handled every earlier event of the rule.
    for tick in clock.wait_ticks_after(t_d, n=3, timeout=15):
        chain_for_event(admin, tick["id"])
    late = [e for e in full_events(admin, ref)
            if parse_ts(e["payload"]["fired_at"]) > t_d + timedelta(seconds=SETTLE)]
    assert late == [], f"disabled rule still fired: {[e['payload'] for e in late]}"

    # In-flight work finishes normally, and every execution comes from an event before t_d.
    execs = all_items(admin.list_executions, rule_ref=ref)
    assert len(execs) >= 2, f"expected at least the 2 executions seen before, got {len(execs)}"
    for ex in execs:
        done = wait_for_execution(admin, ex["id"], "completed", timeout=15)
        event = admin.get_event(admin.get_enforcement(done["enforcement"])["event"])
        assert parse_ts(event["payload"]["fired_at"]) <= t_d + timedelta(seconds=SETTLE), (
            f"execution {ex['id']} comes from an event fired after the disable: {event['payload']}")
    n_exec = len(execs)
    n_events = total(admin.list_events, rule_ref=ref)
    clock.wait_ticks_after(utcnow(), n=1, timeout=10)
    assert total(admin.list_executions, rule_ref=ref) == n_exec, (
        f"execution count changed while the rule was disabled (was {n_exec})")

    enabled = admin.enable_rule(ref)
    t_e = utcnow()
    assert enabled["enabled"] is True, f"enable answered {enabled}"
    fresh = wait_until(
        lambda: [e for e in full_events(admin, ref)[n_events:]
                 if parse_ts(e["payload"]["fired_at"]) > t_d + timedelta(seconds=SETTLE)],
        timeout=INTERVAL + 2 + 1, description=f"a new event of {ref} after re-enabling")
    first = fresh[0]
    delay = secs(t_e, first["payload"]["fired_at"])
    assert delay <= INTERVAL + 2, f"first event after enable came {delay:.2f} s later"
    assert first["payload"]["execution_count"] == 1, (
        f"expected the restarted timer to count from 1, got {first['payload']}")
    execs = wait_for_items(lambda: admin.list_executions(rule_ref=ref), n_exec + 1, timeout=10,
                           exact=False, description=f"an execution of {ref} after re-enabling")
    newest = max(execs, key=lambda e: e["id"])
    wait_for_execution(admin, newest["id"], "completed", timeout=15)
