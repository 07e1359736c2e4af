"""Self-tests of tests/helpers/workflows.py (pure parts: grouping, windows, step scripts)."""
import pytest

from tests.helpers.scenario import max_overlap
from tests.helpers.workflows import (by_task, elapsed, lineage, on_failure, on_success, only_task,
                                     run_window, step_action, task)


def _ex(eid, name, index=None, status="completed", parent=1, **times):
    return {"id": eid, "status": status, "parent": parent,
            "workflow_task": {"task_name": name, "task_index": index}, **times}


def test_by_task_groups_and_orders_by_index_then_id():
    groups = by_task([_ex(5, "fan", 1), _ex(3, "fan", 0), _ex(4, "a"), _ex(6, "fan", 0)])
    assert [e["id"] for e in groups["fan"]] == [3, 6, 5]
    assert only_task(groups, "a")["id"] == 4
    with pytest.raises(AssertionError, match="exactly 1 child for task 'fan', got 3"):
        only_task(groups, "fan")
    with pytest.raises(AssertionError, match="got 0"):
        only_task(groups, "c")
    assert lineage(_ex(9, "b", status="failed", parent=7)) == ("failed", 7, "b")


def test_windows_end_with_the_process_not_with_updated():
    # b's `updated` was bumped later (the executor's completion bookkeeping); its run ended at 2 s
    a = _ex(1, "x", started_at="2026-01-01T00:00:00Z", updated="2026-01-01T00:00:02.5Z",
            created="2025-12-31T23:59:59.5Z", result={"duration_ms": 2000})
    b = _ex(2, "x", started_at="2026-01-01T00:00:02Z", updated="2026-01-01T00:00:04Z",
            result={"duration_ms": 1500})
    assert max_overlap([run_window(a), run_window(b)]) == 1  # touching windows do not overlap
    assert [w.isoformat() for w in run_window(b)] == ["2026-01-01T00:00:02+00:00",
                                                     "2026-01-01T00:00:03.500000+00:00"]
    assert elapsed(a) == pytest.approx(3.0)
    with pytest.raises(AssertionError, match="no started_at"):
        run_window(_ex(3, "x", updated="2026-01-01T00:00:04Z"))
    with pytest.raises(AssertionError, match="no result.duration_ms"):
        run_window(_ex(4, "x", started_at="2026-01-01T00:00:02Z", result={"succeeded": True}))


def test_task_builders_and_step_script():
    assert task("b", "p.x", next=[on_failure("c"), on_success("c")]) == {
        "name": "b", "action": "p.x",
        "next": [{"when": "{{ failed() }}", "do": ["c"]}, {"when": "{{ succeeded() }}", "do": ["c"]}]}

    class Make:
        def action(self, **body):
            return body

    body = step_action(Make(), "pk", "u1", "s", prints={"step": 1}, sleep=1)
    assert body["ref"] == "pk.s_u1" and body["entrypoint"] == "sleep 1; printf '%s' '{\"step\":1}'"
    item = step_action(Make(), "pk", "u1", "it", echo_item=True)
    assert item["param_schema"]["item"]["type"] == "string" and "$item" in item["entrypoint"]
