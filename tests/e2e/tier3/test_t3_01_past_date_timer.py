"""T3.1 Date timer with a past date (scenarios.md T3.1).

Upstream accepts such a rule (201) and its timer sensor silently refuses to arm it; extension E8
`timer_params` turns that into the plan's "fail with a clear error" branch: rule create or update
with a `core.datetimetimer` `fire_at` that is not in the future answers 422 VALIDATION_ERROR, and
no rule is stored. The control (`fire_at` 2 s ahead) fires exactly once, as in T1.2.
"""
from datetime import timedelta

import pytest

from tests.helpers.polling import wait_for_execution
from tests.helpers.scenario import (Clock, chain_for_event, expect_api_error, expect_rule_rejected,
                                    iso_ms, parse_ts, secs, total, utcnow, wait_timer_events)

pytestmark = [pytest.mark.tier3, pytest.mark.timer, pytest.mark.edge_case, pytest.mark.validation,
              pytest.mark.serial, pytest.mark.xdist_group("timers"),
              pytest.mark.needs_extension("timer_params")]

PAST_ERROR = ("Invalid parameters for trigger 'core.datetimetimer': "
              "fire_at must be in the future")
PAST_OFFSETS = {"one hour ago": timedelta(hours=-1), "two seconds ago": timedelta(seconds=-2),
                "one year ago": timedelta(days=-365)}
CONTROL_LEAD = 2.0


def test_past_fire_at_is_rejected_and_control_fires_once(admin, make, uid):
    """T3.1 Date timer with a past date: fire_at now-1h, now-2s and now-1y are each rejected at
    rule create with 422 {"error": "...fire_at must be in the future", "code": "VALIDATION_ERROR"}
    and leave no rule behind (GET -> 404); the control rule (now+2s) fires exactly once, giving one
    completed execution, and stays at one after the P2 clock ticks twice; an update of it to a
    past fire_at is rejected the same way and leaves its trigger_params unchanged."""
    for what, offset in PAST_OFFSETS.items():
        ref = make.ref("past")
        exc = expect_rule_rejected(
            admin, 422, f"fire_at {what}", ref=ref, pack_ref=make.pack_ref, label=ref,
            trigger_ref="core.datetimetimer", trigger_params={"fire_at": iso_ms(utcnow() + offset)},
            action_ref="core.echo", action_params={"message": f"never-{uid}"})
        assert exc.body == {"error": PAST_ERROR, "code": "VALIDATION_ERROR"}, (
            f"fire_at {what}: expected the E8 error body, got {exc.body}")
        expect_api_error(lambda: admin.get_rule(ref), 404, f"rule {ref} after a rejected create")

    fire_at = parse_ts(iso_ms(utcnow() + timedelta(seconds=CONTROL_LEAD)))
    control = make.timer_rule("core.datetimetimer", {"fire_at": iso_ms(fire_at)}, "core.echo",
                              slug="control", action_params={"message": f"control-{uid}"})
    [event] = wait_timer_events(admin, control["ref"], 1, timeout=CONTROL_LEAD + 10)
    payload = event["payload"]
    assert payload.get("type") == "one_shot", f"expected a one_shot payload, got {payload}"
    lateness = secs(fire_at, payload["fired_at"])
    assert 0 <= lateness <= 1.0, f"expected fired_at within [0, 1] s of fire_at, got {lateness:.3f} s"
    enforcement, execution = chain_for_event(admin, event["id"])
    execution = wait_for_execution(admin, execution["id"], "completed", timeout=20)
    assert execution["result"].get("stdout") == f"control-{uid}", f"result: {execution['result']}"

    # An update to a past instant is rejected too, and changes nothing.
    exc = expect_api_error(
        lambda: admin.update_rule(control["ref"], trigger_params={
            "fire_at": iso_ms(utcnow() - timedelta(minutes=5))}),
        422, "update of the control rule to a past fire_at")
    assert exc.body == {"error": PAST_ERROR, "code": "VALIDATION_ERROR"}, f"got {exc.body}"
    stored = admin.get_rule(control["ref"])
    assert parse_ts(stored["trigger_params"]["fire_at"]) == fire_at, (
        f"trigger_params changed by a rejected update: {stored['trigger_params']}")

    # P2: two clock ticks later the control still fired exactly once.
    clock = Clock.start(admin, make, uid)
    clock.wait_ticks_after(clock.created, n=2, timeout=15)
    assert total(admin.list_events, rule_ref=control["ref"]) == 1, "control fired more than once"
    assert total(admin.list_enforcements, rule_ref=control["ref"]) == 1, "expected 1 enforcement"
    assert total(admin.list_executions, rule_ref=control["ref"]) == 1, "expected 1 execution"
    assert enforcement["status"] == "processed", f"enforcement: {enforcement}"
