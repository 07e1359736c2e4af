"""T3.3 Multiple concurrent timers (scenarios.md T3.3).

Three `core.intervaltimer` rules at 1, 2 and 3 s (the plan's 3/5/7 s scaled) are created back to
back. Upstream restarts its timer process on every create, so only the restart after the third
create arms all three together: T0 is the last `execution_count == 1` fire minus the interval, the
same instant for every rule. The embedded sensor arms each rule when it is created, so T0 is taken
per rule (identical to the shared one upstream) and checked to lie between the rule's create and
the third create. Only events fired in [T0, T0 + 12.5 s) are counted: exactly 12, 6 and 4.
"""
from datetime import timedelta

import pytest

from tests.helpers.polling import wait_for_items, wait_until
from tests.helpers.scenario import full_events, iso_ms, parse_ts

pytestmark = [pytest.mark.tier3, pytest.mark.timer, pytest.mark.performance, pytest.mark.serial,
              pytest.mark.xdist_group("timers")]

INTERVALS = (1, 2, 3)
WINDOW = 12.5
TOLERANCE = 0.5


def test_three_interval_timers_fire_independently_without_drift(admin, make):
    """T3.3 Multiple concurrent timers: in [T0, T0 + 12.5 s) (T0 per rule: its last
    execution_count 1 fire minus its interval) the 1, 2 and 3 s rules fire exactly
    12, 6 and 4 times; every fire is within 0.5 s of T0 + k x interval (k = its execution_count,
    so no cumulative drift); execution_count runs 1..n per rule; each event belongs to its own rule
    and has exactly one enforcement, for that rule."""
    rules = {iv: make.timer_rule("core.intervaltimer", {"unit": "seconds", "interval": iv},
                                 "core.noop", slug=f"every{iv}s")
             for iv in INTERVALS}
    third_created = parse_ts(rules[INTERVALS[-1]]["created"])
    fast = rules[1]["ref"]

    def arming(iv: int, rule: dict):
        """T0 of one rule: its last execution_count == 1 fire minus its interval."""
        ones = [e for e in full_events(admin, rule["ref"])
                if e["payload"].get("execution_count") == 1]
        return parse_ts(ones[-1]["payload"]["fired_at"]) - timedelta(seconds=iv) if ones else None

    # Upstream restarts the timer process on each create, so all three share the T0 of the
    # restart after the third create; a sensor that arms each rule when it is created gives each
    # its own T0, no earlier than its create and no later than the third create (+ slack).
    t0s = {iv: wait_until(lambda iv=iv, rule=rule: arming(iv, rule), timeout=iv + 8,
                          description=f"the first fire of the {iv} s rule")
           for iv, rule in rules.items()}
    for iv, rule in rules.items():
        created = parse_ts(rule["created"])
        assert created - timedelta(seconds=TOLERANCE) <= t0s[iv] <= third_created + timedelta(
            seconds=1 + TOLERANCE), (
            f"{iv} s rule: T0 {iso_ms(t0s[iv])} outside [its create {iso_ms(created)} - 0.5 s, "
            f"third create {iso_ms(third_created)} + 1.5 s]")
    end_all = max(t0s.values()) + timedelta(seconds=WINDOW)

    # The 1 s rule firing after every window proves the timer process ran past them; the other
    # rules' fires inside their windows were posted before (each fire is posted when it happens).
    wait_until(lambda: [e for e in full_events(admin, fast)
                        if parse_ts(e["payload"]["fired_at"]) >= end_all + timedelta(seconds=0.5)],
               timeout=WINDOW + 10, description=f"{fast} firing after the last window + 0.5 s")

    for iv, rule in rules.items():
        t0 = t0s[iv]
        end = t0 + timedelta(seconds=WINDOW)
        events = [e for e in full_events(admin, rule["ref"])
                  if t0 <= parse_ts(e["payload"]["fired_at"]) < end]
        expected = int(WINDOW // iv)
        fired = [e["payload"]["fired_at"] for e in events]
        assert len(events) == expected, (
            f"{iv} s rule: expected exactly {expected} fires in [{iso_ms(t0)}, {iso_ms(end)}), "
            f"got {len(events)}: {fired}")
        counts = [e["payload"]["execution_count"] for e in events]
        assert counts == list(range(1, expected + 1)), (
            f"{iv} s rule: expected execution_count 1..{expected} after T0, got {counts}")
        for e in events:
            k = e["payload"]["execution_count"]
            off = (parse_ts(e["payload"]["fired_at"]) - (t0 + timedelta(seconds=k * iv))).total_seconds()
            assert abs(off) <= TOLERANCE, (
                f"{iv} s rule: fire {k} is {off:+.3f} s off T0 + {k * iv} s (tolerance "
                f"{TOLERANCE} s); fires: {fired}")
            assert (e["rule"], e["rule_ref"]) == (rule["id"], rule["ref"]), (
                f"event {e['id']} is bound to {e['rule_ref']}, not {rule['ref']}")
            enfs = wait_for_items(lambda: admin.list_enforcements(event=e["id"]), 1, timeout=10,
                                  description=f"enforcements of event {e['id']}")
            assert enfs[0].get("rule") == rule["id"], (
                f"event {e['id']}: enforcement for rule {enfs[0].get('rule')}, not {rule['id']}")


@pytest.mark.needs_extension("timer_isolation")
def test_changing_another_timer_rule_leaves_a_running_timer_alone(admin, make):
    """T3.3 Multiple concurrent timers, isolation (extension `timer_isolation`; upstream restarts
    every timer when any timer rule changes, behavior.md §15): while a 1 s rule fires, another
    timer rule is created, disabled and enabled again; the running rule's execution_count keeps
    counting up by one per fire (a restart would start it at 1 again) and every gap stays
    1 +- 0.5 s, up to a fire at least 1.5 s after the last change."""
    steady = make.timer_rule("core.intervaltimer", {"unit": "seconds", "interval": 1},
                             "core.noop", slug="steady")
    ref = steady["ref"]

    def fires():
        return sorted((e["payload"]["execution_count"], parse_ts(e["payload"]["fired_at"]))
                      for e in full_events(admin, ref))

    wait_until(lambda: len(fires()) >= 2, timeout=8, description=f"{ref} firing twice")
    other = make.timer_rule("core.intervaltimer", {"unit": "seconds", "interval": 2},
                            "core.noop", slug="other")
    admin.disable_rule(other["ref"])
    changed = admin.enable_rule(other["ref"])
    last_change = parse_ts(changed["updated"])
    wait_until(lambda: [f for f in fires() if f[1] >= last_change + timedelta(seconds=1.5)],
               timeout=8, description=f"{ref} firing 1.5 s after the last change to {other['ref']}")

    seen = fires()
    counts = [count for count, _ in seen]
    assert counts == list(range(1, len(seen) + 1)), \
        f"{ref}: execution_count restarted or skipped while another rule changed: {counts}"
    gaps = [(b - a).total_seconds() for (_, a), (_, b) in zip(seen, seen[1:])]
    assert all(abs(gap - 1) <= TOLERANCE for gap in gaps), \
        f"{ref}: a gap left 1 +- {TOLERANCE} s while another rule changed: " \
        f"{[round(g, 3) for g in gaps]} (last change {iso_ms(last_change)})"
