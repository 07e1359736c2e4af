"""T1.3 Cron timer (scenarios.md T1.3).

Cron expressions have 6 fields, seconds first. The plan's marks "0,3,6,12" are reproduced as
now+5, +8, +11, +17 s (the same irregular 3/3/6 s gaps) so the test does not wait for a full minute.
Timezone handling and 422 validation need extension E8 `timer_params`.
"""
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest

from tests.helpers.polling import wait_for_execution
from tests.helpers.scenario import (Clock, chain_for_event, expect_rule_rejected, full_events,
                                    parse_ts, secs, utcnow, wait_timer_events, whole_second_after)

pytestmark = [pytest.mark.tier1, pytest.mark.timer, pytest.mark.serial, pytest.mark.slow,
              pytest.mark.xdist_group("timers")]

TOLERANCE = 0.5
OFFSETS = (5, 8, 11, 17)


def test_cron_fires_at_listed_seconds_only(admin, make, uid):
    """T1.3 Cron timer: a "<a>,<b>,<c>,<d> * * * * *" rule fires exactly 4 times, each within
    ±0.5 s of its mark, echoing its expression and the next mark, each with one completed
    execution, and never outside the marks (window closed by P2 clock ticks); a "*/2 * * * * *"
    rule in the same window fires only on even seconds, exactly 5 times in a 10 s sub-window."""
    clock = Clock.start(admin, make, uid)
    step_rule = make.timer_rule("core.crontimer", {"expression": "*/2 * * * * *"}, "core.noop")
    marks = [whole_second_after(utcnow(), off) for off in OFFSETS]
    expression = ",".join(str(m.second) for m in marks) + " * * * * *"
    rule = make.timer_rule("core.crontimer", {"expression": expression}, "core.echo",
                           action_params={"message": f"cron-{uid}"})
    armed = parse_ts(rule["created"])
    assert secs(armed, marks[0]) >= 2, f"rule armed too late for its first mark: {rule['created']}"

    events = wait_timer_events(admin, rule["ref"], len(marks), timeout=OFFSETS[-1] + 10)
    clock.wait_ticks_after(marks[-1] + timedelta(seconds=1.5), n=2, timeout=15)
    events = full_events(admin, rule["ref"])
    fired = [parse_ts(e["payload"]["fired_at"]) for e in events]
    assert len(events) == len(marks), \
        f"expected exactly {len(marks)} events at {[m.isoformat() for m in marks]}, got fired_at {[f.isoformat() for f in fired]}"
    for k, (ev, mark) in enumerate(zip(events, marks), start=1):
        p = ev["payload"]
        off = secs(mark, p["fired_at"])
        assert abs(off) <= TOLERANCE, f"event {k} fired {off:+.3f} s from its mark {mark.isoformat()}"
        assert (p.get("type"), p.get("expression"), p.get("execution_count")) == ("cron", expression, k), \
            f"event {k}: unexpected payload {p}"
        if k < len(marks):
            assert parse_ts(p["next_fire_at"]) == marks[k], \
                f"event {k}: next_fire_at {p.get('next_fire_at')} != next mark {marks[k].isoformat()}"
        _, execution = chain_for_event(admin, ev["id"])
        execution = wait_for_execution(admin, execution["id"], "completed", timeout=20)
        assert execution["result"].get("stdout") == f"cron-{uid}", f"event {k}: {execution['result']}"

    # the */2 rule: even seconds only, exactly 5 fires in a 10 s sub-window after the last restart
    window_start = whole_second_after(armed, 2)
    window_start += timedelta(seconds=window_start.second % 2)
    window_end = window_start + timedelta(seconds=10)
    step_fired = [parse_ts(e["payload"]["fired_at"]) for e in full_events(admin, step_rule["ref"])]
    for f in step_fired:
        nearest = (f + timedelta(seconds=TOLERANCE)).replace(microsecond=0)
        assert nearest.second % 2 == 0 and abs((f - nearest).total_seconds()) <= TOLERANCE, \
            f"*/2 rule fired at {f.isoformat()}, not within {TOLERANCE} s of an even second"
    in_window = [f for f in step_fired if window_start - timedelta(seconds=TOLERANCE) <= f
                 < window_end - timedelta(seconds=TOLERANCE)]
    assert len(in_window) == 5, \
        f"expected 5 */2 fires in [{window_start.isoformat()}, {window_end.isoformat()}), got {[f.isoformat() for f in in_window]}"


@pytest.mark.needs_extension("timer_params")
def test_cron_honours_timezone(admin, make, uid):
    """T1.3 Cron timer, timezone (extension E8 timer_params): an "<s> <m> <h> * * *" expression in
    Asia/Kathmandu (UTC+05:45, so a UTC-evaluating sensor cannot match by accident) fires exactly
    once, within ±0.5 s of the target instant, with payload.timezone echoed."""
    zone = "Asia/Kathmandu"
    clock = Clock.start(admin, make, uid)
    target = whole_second_after(utcnow(), 6)
    local = target.astimezone(ZoneInfo(zone))
    expression = f"{local.second} {local.minute} {local.hour} * * *"
    rule = make.timer_rule("core.crontimer", {"expression": expression, "timezone": zone},
                           "core.noop")

    [event] = wait_timer_events(admin, rule["ref"], 1, timeout=15)
    clock.wait_ticks_after(target + timedelta(seconds=1.5), n=2, timeout=15)
    events = full_events(admin, rule["ref"])
    assert len(events) == 1, f"expected exactly 1 event, got {[e['payload'] for e in events]}"
    p = event["payload"]
    off = secs(target, p["fired_at"])
    assert abs(off) <= TOLERANCE, f"fired {off:+.3f} s from the target {target.isoformat()} ({local.isoformat()})"
    assert (p.get("timezone"), p.get("expression")) == (zone, expression), f"unexpected payload {p}"


@pytest.mark.needs_extension("timer_params")
@pytest.mark.parametrize("params, reason", [
    ({"expression": "*/5 * * * *"}, "a 5-field expression"),
    ({"expression": "*/5 * * * * *", "timezone": "Mars/Olympus_Mons"}, "an unknown timezone"),
], ids=["five_fields", "unknown_timezone"])
def test_cron_rule_rejects_invalid_trigger_params(admin, e2e_pack, uid, params, reason):
    """T1.3 Cron timer, validation (extension E8 timer_params): rule create with an unparsable
    cron expression or an unknown timezone is rejected with 422 VALIDATION_ERROR naming the
    trigger."""
    err = expect_rule_rejected(
        admin, 422, f"core.crontimer rule with {reason}",
        ref=f"{e2e_pack}.badcron_{uid}", pack_ref=e2e_pack, label=f"bad cron {uid}",
        trigger_ref="core.crontimer", trigger_params=params, action_ref="core.noop")
    assert err.code == "VALIDATION_ERROR", f"expected code VALIDATION_ERROR, got {err.body}"
    assert err.message.startswith("Invalid parameters for trigger 'core.crontimer':"), \
        f"unexpected message: {err.message!r}"
