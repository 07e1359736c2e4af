"""Extension E11 `rule_notify`: the executor's per-rule leading-edge throttle and payload shape,
and the suite's model of it (tests/helpers/notifications.leading_edge)."""
from datetime import datetime, timezone

from attune_emulator.executor.rule_notify import RuleThrottle, notification_payload
from tests.helpers.notifications import leading_edge, percentile


def test_first_fire_notifies_and_later_fires_in_the_window_are_counted():
    t = RuleThrottle(1000)
    assert t.fire(1, 100.0) == 0
    assert [t.fire(1, 100.0 + d) for d in (0.1, 0.5, 0.999)] == [None, None, None]
    assert t.fire(1, 101.0) == 3          # at the interval: notifies with the suppressed count
    assert t.fire(1, 101.5) is None
    assert t.fire(1, 102.2) == 1


def test_rules_are_throttled_independently_and_zero_interval_never_suppresses():
    t = RuleThrottle(1000)
    assert (t.fire(1, 10.0), t.fire(2, 10.1), t.fire(1, 10.2), t.fire(2, 10.3)) == (0, 0, None, None)
    free = RuleThrottle(0)
    assert [free.fire(1, 5.0) for _ in range(3)] == [0, 0, 0]


def test_forget_resets_a_rule():
    t = RuleThrottle(1000)
    t.fire(7, 1.0)
    assert t.fire(7, 1.2) is None
    t.forget(7)
    assert t.fire(7, 1.3) == 0


def test_payload_shape():
    created = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)
    p = notification_payload({"id": 4, "ref": "p.r"}, {"id": 9, "trigger_ref": "p.t"}, 11, created, 2)
    assert p == {"entity_type": "rule", "entity_id": 4, "id": 4, "rule_ref": "p.r",
                 "trigger_ref": "p.t", "event": 9, "enforcement": 11,
                 "created": "2026-01-02T03:04:05.123456Z", "suppressed_count": 2}


def test_suite_model_matches_the_executor_throttle():
    fires = [("a", 0.0), ("b", 0.3), ("c", 0.9), ("d", 1.0), ("e", 1.4), ("f", 2.5)]
    t = RuleThrottle(1000)
    executor = [(k, n) for k, at in fires if (n := t.fire(1, at)) is not None]
    assert leading_edge(fires, 1.0) == executor == [("a", 0), ("d", 2), ("f", 1)]
    assert leading_edge([], 1.0) == []


def test_percentile_nearest_rank():
    assert percentile([5, 1, 3, 2, 4], 95) == 5
    assert percentile(list(range(1, 101)), 95) == 95
    assert percentile([7.0], 50) == 7.0
