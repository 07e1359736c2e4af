"""Workflow definition parsing and transition logic (no database)."""
import pytest

from attune_emulator.executor.events import evaluate_conditions
from attune_emulator.executor.workflows import (WorkflowParseError, build_context, next_tasks,
                                                outcome_functions, parse_definition, retry_delay,
                                                task_view, transition_kind)

DEF = {
    "version": "1.0.0",
    "vars": {"greeting": None},
    "tasks": [
        {"name": "first", "action": "p.greet", "input": {"name": "{{ parameters.who }}"},
         "next": [{"when": "{{ succeeded() }}", "publish": [{"greeting": "{{ result().greeting }}"}],
                   "do": ["second"]},
                  {"when": "{{ failed() }}", "do": ["cleanup"]}]},
        {"name": "second", "action": "core.echo", "input": {"message": "{{ workflow.greeting }}"}},
        {"name": "cleanup", "action": "core.noop"},
    ],
    "output_map": {"said": "{{ task.second.stdout }}"},
}


def test_parse_basic():
    g = parse_definition(DEF)
    assert g["entry"] == ["first"]
    assert g["order"] == ["first", "second", "cleanup"]
    assert g["tasks"]["first"]["next"][0]["publish"] == [["greeting", "{{ result().greeting }}"]]
    assert g["tasks"]["second"]["concurrency"] == 1


@pytest.mark.parametrize("bad,msg", [
    ({"tasks": [{"name": "a", "action": "x.y"}]}, "version"),
    ({"version": "1", "tasks": []}, "tasks"),
    ({"version": "1", "tasks": {"a": {}}}, "tasks"),
    ({"version": "1", "vars": ["a"], "tasks": [{"name": "a", "action": "x.y"}]}, "vars"),
    ({"version": "1", "tasks": [{"name": "a", "action": "x.y", "next": [{"do": ["zz"]}]}]}, "zz"),
    ({"version": "1", "tasks": [{"name": "a", "action": "x.y"}, {"name": "a", "action": "x.y"}]},
     "duplicate"),
    ({"version": "1", "tasks": [{"name": "a"}]}, "action"),
    ({"version": "1", "tasks": [{"name": "a", "action": "x.y", "retry": {"count": 0}}]}, "retry"),
    ({"version": "1", "tasks": [{"name": "a", "action": "x.y", "on_success": ["b"]}]}, "on_success"),
])
def test_parse_errors(bad, msg):
    with pytest.raises(WorkflowParseError, match=msg):
        parse_definition(bad)


def test_yaml_string_and_legacy_transitions():
    g = parse_definition("""
version: "1"
tasks:
  - name: a
    action: x.y
    on_success: b
    on_failure: c
    on_complete: d
    on_timeout: e
    publish: [{v: "{{ result().x }}"}]
    with_items: "{{ parameters.items }}"
    concurrency: 3
    retry: {count: 2, delay: 1, backoff: exponential, max_delay: 60}
    timeout: 5
  - {name: b, action: x.y, join: 2}
  - {name: c, action: x.y}
  - {name: d, action: x.y}
  - {name: e, action: x.y}
""")
    a = g["tasks"]["a"]
    assert [t["do"] for t in a["next"]] == [["b"], ["c"], ["d"], ["e"]]
    assert [transition_kind(t["when"]) for t in a["next"]] == ["succeeded", "failed", "always",
                                                              "timed_out"]
    assert a["next"][0]["publish"] == [["v", "{{ result().x }}"]]
    assert a["concurrency"] == 3 and a["timeout"] == 5 and a["retry"]["count"] == 2
    assert g["tasks"]["b"]["join"] == 2
    assert g["entry"] == ["a"]


def test_next_tasks_by_outcome():
    g = parse_definition(DEF)
    ctx = build_context({"who": "x"}, {"greeting": None}, {})
    fns = outcome_functions("succeeded", {"greeting": "hi"})
    fired = next_tasks(g, "first", "succeeded", ctx, fns)
    assert [t["do"] for t in fired] == [["second"]]
    assert [t["do"] for t in next_tasks(g, "first", "failed", ctx, outcome_functions("failed", {}))] \
        == [["cleanup"]]
    assert next_tasks(g, "first", "timed_out", ctx, outcome_functions("timed_out", {})) == []
    assert next_tasks(g, "second", "succeeded", ctx, fns) == []


def test_substring_rule_and_expression_transitions():
    g = parse_definition({"version": "1", "tasks": [
        {"name": "a", "action": "x.y", "next": [
            {"when": "{{ succeeded() and false }}", "do": ["b"]},
            {"when": "{{ result().code == 200 }}", "do": ["c"]},
            {"when": "{{ result().missing.x }}", "do": ["d"]},
            {"do": ["e"]}]},
        {"name": "b", "action": "x.y"}, {"name": "c", "action": "x.y"},
        {"name": "d", "action": "x.y"}, {"name": "e", "action": "x.y"}]})
    ctx = build_context({}, {}, {})
    ok = next_tasks(g, "a", "succeeded", ctx, outcome_functions("succeeded", {"code": 200}))
    assert [t["do"][0] for t in ok] == ["b", "c", "d", "e"]
    bad = next_tasks(g, "a", "failed", ctx, outcome_functions("failed", {"code": 500}))
    assert [t["do"][0] for t in bad] == ["e"]


def test_task_view_and_context():
    assert task_view({"stdout": '{"api_key": "k", "status": "ok"}', "exit_code": 0})["api_key"] == "k"
    assert task_view({"data": {"step": 1}, "stdout": "x"})["step"] == 1
    assert task_view({"stdout": "plain"}) == {"stdout": "plain"}
    ctx = build_context({"p": 1}, {"v": 2}, {"t": {"x": 3}}, item="i", index=0, with_item=True)
    assert ctx["v"] == 2 and ctx["workflow"]["v"] == 2 and ctx["vars"] is ctx["variables"]
    assert ctx["tasks"]["t"]["x"] == 3 and ctx["item"] == "i" and ctx["index"] == 0


def test_retry_delay():
    assert [retry_delay({"delay": 1, "backoff": "exponential"}, n) for n in (1, 2, 3)] == [1, 2, 4]
    assert [retry_delay({"delay": 2, "backoff": "linear"}, n) for n in (1, 2)] == [2, 4]
    assert retry_delay({"delay": 5, "backoff": "constant", "max_delay": 3}, 4) == 3


@pytest.mark.parametrize("conditions,payload,expected", [
    ({}, {"a": 1}, True), ([], {"a": 1}, True), (None, {"a": 1}, True),
    ({"expression": "event.payload.status == 'critical'"}, {"status": "critical"}, True),
    ({"expression": "{{ event.payload.status == 'critical' }}"}, {"status": "info"}, False),
    ({"expression": "event.payload.nope == 1"}, {"status": "info"}, False),
    ({"expression": "event.payload.count > 100"}, {"count": 150}, True),
    ([{"field": "severity", "operator": "equals", "value": "high"}], {"severity": "high"}, True),
    ([{"field": "severity", "operator": "equals", "value": "high"}], {"severity": "low"}, False),
    ([{"field": "severity", "operator": "equals", "value": "high"}], {"other": 1}, False),
    ([{"field": "a.b", "operator": "contains", "value": "ell"}], {"a": {"b": "hello"}}, True),
    ([{"field": "a", "operator": "not_equals", "value": 1}], {"a": 2}, True),
    ([{"field": "a", "operator": "bogus", "value": 1}], {"a": 1}, False),
    ({"and": []}, {"a": 1}, False),
    ({"expression": "false"}, None, True),
])
def test_rule_conditions(conditions, payload, expected):
    event = {"id": 1, "trigger_ref": "p.t", "payload": payload, "created": None}
    assert evaluate_conditions(conditions, event)[0] is expected
