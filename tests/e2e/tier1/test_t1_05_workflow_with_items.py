"""T1.5 Workflow with array iteration, `with_items` (scenarios.md T1.5).

Upstream idiom: a workflow created with POST /api/v1/workflows whose task has
`with_items: "{{ parameters.items }}"` and `concurrency: 3` (the default is 1, i.e. sequential).
The item action is an ad-hoc inline-shell action: parameters arrive as shell variables.
"""
import pytest

from tests.helpers.polling import TERMINAL, wait_for_execution
from tests.helpers.scenario import (all_items, chain_for_event, first_index, max_overlap,
                                    stream_exec_id, total)
from tests.helpers.workflows import run_window

pytestmark = [pytest.mark.tier1, pytest.mark.workflow, pytest.mark.webhook]

ITEMS = ["apple", "banana", "cherry"]


def test_with_items_runs_one_child_per_item_in_parallel(admin, make, uid, e2e_pack, exec_stream):
    """T1.5 Workflow with array iteration: a webhook rule starts a with_items workflow over
    ["apple", "banana", "cherry"]; exactly 3 children run (task_index -> item, output = item),
    all 3 overlap, the parent is running before the first child exists, stays non-terminal until
    every child is completed, and ends completed; no 4th child after the parent is terminal."""
    item_action = make.action(
        ref=f"{e2e_pack}.item_{uid}", pack_ref=e2e_pack, label=f"item {uid}",
        runtime_ref="core.shell", entrypoint="sleep 1; printf '%s' \"$item\"",
        param_schema={"item": {"type": "string", "required": True}})
    workflow = make.workflow(
        ref=f"{e2e_pack}.fanout_{uid}", pack_ref=e2e_pack, label=f"fan-out {uid}", version="1.0.0",
        param_schema={"items": {"type": "array", "required": True}},
        definition={"version": "1.0.0", "tasks": [{
            "name": "process_items", "action": item_action["ref"],
            "with_items": "{{ parameters.items }}", "concurrency": 3,
            "input": {"item": "{{ item }}"}}]})
    trigger, key = make.webhook_trigger(ref=f"{e2e_pack}.fruit_{uid}", pack_ref=e2e_pack,
                                        label=f"fruit {uid}")
    make.rule(ref=f"{e2e_pack}.on_fruit_{uid}", pack_ref=e2e_pack, label=f"on fruit {uid}",
              trigger_ref=trigger["ref"], action_ref=workflow["ref"],
              action_params={"items": "{{ event.payload.items }}"})

    event_id = admin.post_webhook(key, {"items": ITEMS})["event_id"]

    enforcement, parent = chain_for_event(admin, event_id)
    assert enforcement["config"] == {"items": ITEMS}, f"array type lost in the enforcement: {enforcement}"
    parent = wait_for_execution(admin, parent["id"], "completed", timeout=30)
    assert parent["action_ref"] == workflow["ref"] and parent["result"].get("succeeded") is True, \
        f"unexpected parent execution: {parent}"

    # P3: the parent is terminal, so no further child can appear
    children = [admin.get_execution(c["id"]) for c in all_items(admin.list_executions, parent=parent["id"])]
    assert len(children) == len(ITEMS), f"expected exactly {len(ITEMS)} children, got {len(children)}"
    assert total(admin.list_executions, parent=parent["id"]) == len(ITEMS)
    by_index = {c["workflow_task"]["task_index"]: c for c in children}
    assert sorted(by_index) == [0, 1, 2], f"expected task_index 0..2, got {sorted(by_index)}"
    for index, item in enumerate(ITEMS):
        child = by_index[index]
        assert child["workflow_task"]["task_name"] == "process_items", f"child {index}: {child['workflow_task']}"
        assert (child["status"], child["config"], child["result"].get("stdout")) == \
            ("completed", {"item": item}, item), f"child {index} ({item}): {child}"
        assert (child["parent"], child["enforcement"], child["action_ref"]) == \
            (parent["id"], parent["enforcement"], item_action["ref"]), f"child {index} lineage: {child}"
    overlap = max_overlap(run_window(c) for c in children)
    assert overlap == 3, f"expected all 3 children to run at once (concurrency 3), max overlap was {overlap}"

    # P6: the stream delivers each execution's changes in commit order
    child_ids = {c["id"] for c in children}
    pid = parent["id"]
    exec_stream.wait_for_status(pid, "completed", timeout=10)
    stream = exec_stream.events
    is_parent = lambda e: stream_exec_id(e) == pid  # noqa: E731
    parent_running = first_index(stream, lambda e: is_parent(e) and e.get("status") == "running",
                                 f"parent {pid} -> running")
    first_child = first_index(stream, lambda e: stream_exec_id(e) in child_ids,
                              "the first child's execution_created")
    assert parent_running < first_child, "the parent was not running before its first child was created"
    parent_terminal = first_index(stream, lambda e: is_parent(e) and e.get("status") in TERMINAL,
                                  f"parent {pid} terminal")
    assert stream[parent_terminal].get("status") == "completed", f"parent ended {stream[parent_terminal]}"
    for cid in child_ids:
        done = first_index(stream, lambda e: stream_exec_id(e) == cid and e.get("status") == "completed",
                           f"child {cid} -> completed")
        assert done < parent_terminal, f"the parent became terminal before child {cid} completed"
