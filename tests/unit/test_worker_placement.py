"""Unit tests of the embedded stack's worker placement (attune_emulator/executor/placement.py) and
of the custom-sensor supervisor's pure helpers (attune_emulator/sensor/custom.py)."""
from attune_emulator.executor.placement import (normalize_labels, normalize_taints, placement_for,
                                                selector_matches, tolerates, worker_admits)
from attune_emulator.sensor.custom import restart_delay, rules_signature, triggers_document

LANE = {"labels": {"e2e_lane": "abc", "e2e_node": "a"},
        "taints": [{"key": "e2e_lane", "value": "abc", "effect": "NoSchedule"}]}


def test_normalize_labels_and_taints():
    assert normalize_labels({"n": 1, "b": True}) == {"n": "1", "b": "true"}
    assert normalize_labels(["x"]) == {}
    assert normalize_taints({"key": "k", "value": "v"}) == [
        {"key": "k", "value": "v", "effect": "NoSchedule"}]
    assert normalize_taints([{"value": "no key"}, "junk"]) == []


def test_selector_requires_every_label():
    labels = {"e2e_lane": "abc", "e2e_node": "a"}
    assert selector_matches(labels, {})
    assert selector_matches(labels, {"e2e_lane": "abc"})
    assert selector_matches(labels, {"e2e_lane": "abc", "e2e_node": "a"})
    assert not selector_matches(labels, {"e2e_lane": "abc", "e2e_node": "b"})
    assert not selector_matches(labels, {"zone": "x"})


def test_tolerations_equal_exists_and_effect():
    taint = {"key": "e2e_lane", "value": "abc", "effect": "NoSchedule"}
    assert tolerates(taint, [{"key": "e2e_lane", "operator": "equal", "value": "abc"}])
    assert tolerates(taint, [{"key": "e2e_lane", "operator": "Equal", "value": "abc",
                              "effect": "no_schedule"}])
    assert tolerates(taint, [{"key": "e2e_lane", "operator": "Exists"}])
    assert tolerates(taint, [{"operator": "exists"}])
    assert not tolerates(taint, [{"key": "e2e_lane", "operator": "equal", "value": "zzz"}])
    assert not tolerates(taint, [{"key": "e2e_lane", "value": "abc", "effect": "NoExecute"}])
    assert not tolerates(taint, [])


def test_tainted_worker_admits_only_tolerating_executions():
    tol = [{"key": "e2e_lane", "operator": "equal", "value": "abc"}]
    assert not worker_admits(LANE, {}, [])                       # other tests' work stays off
    assert worker_admits(LANE, {"e2e_lane": "abc"}, tol)
    assert worker_admits(LANE, {"e2e_lane": "abc", "e2e_node": "a"}, tol)
    assert not worker_admits(LANE, {"e2e_lane": "abc", "e2e_node": "b"}, tol)
    assert worker_admits({"runtimes": ["shell"]}, {}, [])        # a plain worker takes plain work
    assert not worker_admits({"runtimes": ["shell"]}, {"e2e_lane": "abc"}, tol)
    soft = {"taints": [{"key": "k", "value": "v", "effect": "PreferNoSchedule"}]}
    assert worker_admits(soft, {}, [])                           # only NoSchedule blocks


def test_placement_falls_back_to_the_action():
    action = {"worker_selector": {"a": "1"}, "worker_tolerations": [{"key": "a"}]}
    assert placement_for({"worker_selector": None, "worker_tolerations": None}, action) == (
        {"a": "1"}, [{"key": "a"}])
    assert placement_for({"worker_selector": {"b": "2"}, "worker_tolerations": []}, action) == (
        {"b": "2"}, [{"key": "a"}])
    assert placement_for(None, None) == ({}, [])


def test_sensor_restart_backoff_and_triggers_document():
    assert [restart_delay(n) for n in (0, 1, 2, 3, 7, 8, 20)] == [0, 5, 10, 20, 300, 300, 300]
    rules = [{"id": 9, "ref": "p.b", "trigger_ref": "p.t", "trigger_params": {"path": "/b"}},
             {"id": 3, "ref": "p.a", "trigger_ref": "p.t", "trigger_params": None}]
    assert triggers_document(rules) == [
        {"id": 3, "ref": "p.a", "trigger_ref": "p.t", "config": {}},
        {"id": 9, "ref": "p.b", "trigger_ref": "p.t", "config": {"path": "/b"}}]
    assert rules_signature(rules) == rules_signature(list(reversed(rules)))
    assert rules_signature(rules) != rules_signature(rules[:1])
