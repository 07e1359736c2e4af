"""T1.1 Interval timer automation (scenarios.md T1.1).

The plan's 5 s interval is scaled to 2 s; its absolute ±0.5 s tolerance is kept.
"""
import pytest

from tests.helpers.polling import wait_for_execution
from tests.helpers.scenario import (chain_for_event, secs, service_log_problems, total, utcnow,
                                    wait_timer_events)

pytestmark = [pytest.mark.tier1, pytest.mark.timer, pytest.mark.rules, pytest.mark.serial,
              pytest.mark.xdist_group("timers")]

INTERVAL = 2
FIRES = 3
TOLERANCE = 0.5


def test_interval_timer_fires_each_interval_with_one_execution_per_event(admin, make, uid, target):
    """T1.1 Interval timer automation: a 2 s core.intervaltimer rule fires events 2.0 ± 0.5 s
    apart; each event has exactly one processed enforcement and one completed core.echo execution
    whose output is the templated message; the services log no errors meanwhile."""
    since = utcnow()
    rule = make.timer_rule(
        "core.intervaltimer", {"unit": "seconds", "interval": INTERVAL}, "core.echo",
        action_params={"message": "tick-{{ event.payload.execution_count }}-" + uid})

    events = wait_timer_events(admin, rule["ref"], FIRES, timeout=INTERVAL * FIRES + 10)

    counts = [e["payload"].get("execution_count") for e in events]
    assert counts == [1, 2, 3], f"expected execution_count [1, 2, 3] for the first events, got {counts}"
    for ev in events:
        p = ev["payload"]
        assert (p.get("type"), p.get("interval_seconds"), p.get("sensor_ref")) == \
            ("interval", INTERVAL, "core.timer_sensor"), f"unexpected interval payload: {p}"
        assert (ev["rule"], ev["rule_ref"], ev["trigger_ref"]) == \
            (rule["id"], rule["ref"], "core.intervaltimer"), f"event not bound to the rule: {ev}"
    gaps = [secs(a["payload"]["fired_at"], b["payload"]["fired_at"]) for a, b in zip(events, events[1:])]
    assert all(abs(g - INTERVAL) <= TOLERANCE for g in gaps), \
        f"expected fired_at gaps of {INTERVAL} ± {TOLERANCE} s, got {[round(g, 3) for g in gaps]}"

    for k, ev in enumerate(events, start=1):
        message = f"tick-{k}-{uid}"
        enforcement, execution = chain_for_event(admin, ev["id"])
        execution = wait_for_execution(admin, execution["id"], "completed", timeout=20)
        assert (enforcement["status"], enforcement["rule"], enforcement["config"]) == \
            ("processed", rule["id"], {"message": message}), f"enforcement of event {k}: {enforcement}"
        assert enforcement.get("resolved_at"), f"enforcement of event {k} has no resolved_at: {enforcement}"
        result = execution["result"]
        assert (result.get("exit_code"), result.get("succeeded"), result.get("stdout")) == \
            (0, True, message), f"execution of event {k}: expected exit 0 and stdout {message!r}, got {result}"
        assert execution["action_ref"] == "core.echo" and execution["config"] == {"message": message}, \
            f"execution of event {k}: {execution}"
        assert execution["executor"] == rule["owner_identity"], \
            f"executor {execution['executor']} is not the rule owner {rule['owner_identity']}"
        # counted once the execution is terminal: exact, not "at least"
        assert total(admin.list_enforcements, event=ev["id"]) == 1, f"event {k}: enforcement count != 1"
        assert total(admin.list_executions, enforcement=enforcement["id"]) == 1, \
            f"event {k}: execution count != 1"

    if target.embedded and target.services is not None:
        problems = service_log_problems(target.services, since, mentions=[rule["ref"], uid, "timer"])
        assert not problems, f"expected no ERROR/panic lines about this flow in the service logs, found: {problems}"
