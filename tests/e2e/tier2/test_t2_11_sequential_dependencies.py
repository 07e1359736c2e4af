"""T2.11 Sequential workflow with dependencies (scenarios.md T2.11).

Upstream has no `depends_on`: a dependency is a `next: [{when: succeeded(), do: [...]}]`
transition, and a task with several inbound transitions waits for them with `join: N`. Each step
reads its predecessor's result through `task.<name>.<field>` (a JSON-object stdout is merged into
the task's result view); an exact `{{ ... }}` template keeps the JSON type.
"""
import pytest

from tests.helpers.polling import TERMINAL, wait_for_execution
from tests.helpers.scenario import first_index, secs, stream_exec_id, total
from tests.helpers.workflows import (by_task, children, elapsed, failing_action, lineage,
                                     on_success, only_task, step_action, task)

pytestmark = [pytest.mark.tier2, pytest.mark.workflow]

PREV = {"prev": {"type": "integer"}}


def _after(earlier: str, later: str, what: str) -> None:
    gap = secs(earlier, later)
    assert gap >= 0, f"expected {what}, but it is {-gap:.3f} s earlier ({later} < {earlier})"


def test_chain_runs_in_order_and_passes_results(admin, make, uid, e2e_pack, exec_stream):
    """T2.11 Sequential workflow: task_a -> task_b -> task_c (1 s each). b gets {"prev": 1} from
    a's output and c gets {"prev": 2} from b's; each is created only after its predecessor ended,
    the workflow takes >= 3 s (the sum), its output maps c's step 3, and on the stream the parent
    is running before a exists and stays non-terminal until c has completed."""
    a_act = step_action(make, e2e_pack, uid, "step_a", prints={"step": 1}, sleep=1)
    b_act = step_action(make, e2e_pack, uid, "step_b", prints={"step": 2}, sleep=1, params=PREV)
    c_act = step_action(make, e2e_pack, uid, "step_c", prints={"step": 3}, sleep=1, params=PREV)
    wf = make.workflow(
        ref=f"{e2e_pack}.seq_{uid}", pack_ref=e2e_pack, label=f"sequential {uid}",
        definition={"version": "1.0.0", "tasks": [
            task("task_a", a_act["ref"], next=[on_success("task_b")]),
            task("task_b", b_act["ref"], input={"prev": "{{ task.task_a.step }}"},
                 next=[on_success("task_c")]),
            task("task_c", c_act["ref"], input={"prev": "{{ task.task_b.step }}"})],
            "output_map": {"last": "{{ task.task_c.step }}"}})

    pid = admin.execute(wf["ref"])["id"]
    parent = wait_for_execution(admin, pid, "completed", timeout=30)
    assert parent["result"] == {"last": 3, "succeeded": True}, f"unexpected parent result: {parent['result']}"

    # P3: the parent is terminal, so the children are final
    groups = by_task(children(admin, pid))
    assert sorted(groups) == ["task_a", "task_b", "task_c"], f"tasks seen: {sorted(groups)}"
    a, b, c = (only_task(groups, n) for n in ("task_a", "task_b", "task_c"))
    for ex, name in ((a, "task_a"), (b, "task_b"), (c, "task_c")):
        assert lineage(ex) == ("completed", pid, name), f"{name}: {ex}"
    assert (b["workflow_task"]["triggered_by"], c["workflow_task"]["triggered_by"]) == ("task_a", "task_b")
    assert b["config"] == {"prev": 1}, f"task_b should receive a's step as an integer, got {b['config']}"
    assert c["config"] == {"prev": 2}, f"task_c should receive b's step as an integer, got {c['config']}"
    _after(a["updated"], b["created"], "task_b.created >= task_a.updated")
    _after(b["updated"], c["created"], "task_c.created >= task_b.updated")
    took = elapsed(parent)
    assert took >= 3.0, f"three sequential 1 s steps took {took:.2f} s in total, expected >= 3.0 s"
    assert total(admin.list_executions, parent=pid) == 3

    # P6: the parent's status on the stream follows the chain
    exec_stream.wait_for_status(pid, "completed", timeout=10)
    stream = exec_stream.events
    running = first_index(stream, lambda e: stream_exec_id(e) == pid and e.get("status") == "running",
                          f"parent {pid} -> running")
    a_created = first_index(stream, lambda e: stream_exec_id(e) == a["id"], "task_a created")
    c_done = first_index(stream, lambda e: stream_exec_id(e) == c["id"] and e.get("status") == "completed",
                         "task_c -> completed")
    p_terminal = first_index(stream, lambda e: stream_exec_id(e) == pid and e.get("status") in TERMINAL,
                             f"parent {pid} terminal")
    assert running < a_created, "the parent was not running before task_a was created"
    assert c_done < p_terminal, "the parent became terminal before task_c completed"
    assert stream[p_terminal]["status"] == "completed", f"parent ended {stream[p_terminal]}"


def test_chain_stops_at_failed_dependency(admin, make, uid, e2e_pack):
    """T2.11 Sequential workflow, failure propagation: task_b fails, so task_c (its success
    successor) never exists once the parent is terminal (P3); the parent fails naming task_b."""
    a_act = step_action(make, e2e_pack, uid, "fstep_a", prints={"step": 1})
    b_act = failing_action(make, e2e_pack, uid, "fstep_b", params=PREV)
    c_act = step_action(make, e2e_pack, uid, "fstep_c", prints={"step": 3}, params=PREV)
    wf = make.workflow(
        ref=f"{e2e_pack}.seqf_{uid}", pack_ref=e2e_pack, label=f"sequential failure {uid}",
        definition={"version": "1.0.0", "tasks": [
            task("task_a", a_act["ref"], next=[on_success("task_b")]),
            task("task_b", b_act["ref"], input={"prev": "{{ task.task_a.step }}"},
                 next=[on_success("task_c")]),
            task("task_c", c_act["ref"], input={"prev": "{{ task.task_b.step }}"})]})

    pid = admin.execute(wf["ref"])["id"]
    parent = wait_for_execution(admin, pid, "failed", timeout=30)
    assert parent["result"] == {"error": "Workflow failed: 1 task(s) failed: task_b", "succeeded": False}, \
        f"unexpected parent result: {parent['result']}"

    groups = by_task(children(admin, pid))
    assert sorted(groups) == ["task_a", "task_b"], \
        f"expected only task_a and task_b (no task_c after the failure), got {sorted(groups)}"
    assert lineage(only_task(groups, "task_a")) == ("completed", pid, "task_a")
    b = only_task(groups, "task_b")
    assert lineage(b) == ("failed", pid, "task_b") and b["config"] == {"prev": 1}, f"task_b: {b}"
    assert total(admin.list_executions, parent=pid) == 2


def _diamond(make, e2e_pack, uid, slug, b2_fails: bool):
    a_act = step_action(make, e2e_pack, uid, f"{slug}_a", prints={"step": 1})
    b1_act = step_action(make, e2e_pack, uid, f"{slug}_b1", prints={"step": 21}, sleep=1)
    b2_act = (failing_action(make, e2e_pack, uid, f"{slug}_b2") if b2_fails
              else step_action(make, e2e_pack, uid, f"{slug}_b2", prints={"step": 22}, sleep=2))
    c_act = step_action(make, e2e_pack, uid, f"{slug}_c", prints={"step": 3},
                        params={"left": {"type": "integer"}, "right": {"type": "integer"}})
    return make.workflow(
        ref=f"{e2e_pack}.{slug}_{uid}", pack_ref=e2e_pack, label=f"{slug} {uid}",
        definition={"version": "1.0.0", "tasks": [
            task("a", a_act["ref"], next=[on_success("b1", "b2")]),
            task("b1", b1_act["ref"], next=[on_success("c")]),
            task("b2", b2_act["ref"], next=[on_success("c")]),
            task("c", c_act["ref"], join=2,
                 input={"left": "{{ task.b1.step }}", "right": "{{ task.b2.step }}"})]})


def test_diamond_joins_once_after_both_branches(admin, make, uid, e2e_pack):
    """T2.11 Diamond: a -> (b1 1 s, b2 2 s) -> c with join 2. b1 and b2 run in parallel after a;
    exactly one c runs, triggered by the later branch, starting only after both ended, and it
    sees both branch results."""
    wf = _diamond(make, e2e_pack, uid, "diamond", b2_fails=False)

    pid = admin.execute(wf["ref"])["id"]
    parent = wait_for_execution(admin, pid, "completed", timeout=30)
    assert parent["result"] == {"succeeded": True}, f"unexpected parent result: {parent['result']}"

    groups = by_task(children(admin, pid))
    assert sorted(groups) == ["a", "b1", "b2", "c"], f"tasks seen: {sorted(groups)}"
    a, b1, b2, c = (only_task(groups, n) for n in ("a", "b1", "b2", "c"))
    for ex, name in ((a, "a"), (b1, "b1"), (b2, "b2"), (c, "c")):
        assert lineage(ex) == ("completed", pid, name), f"{name}: {ex}"
    assert (b1["workflow_task"]["triggered_by"], b2["workflow_task"]["triggered_by"]) == ("a", "a")
    _after(a["updated"], b1["created"], "b1.created >= a.updated")
    _after(a["updated"], b2["created"], "b2.created >= a.updated")
    # the branches ran side by side: b2 started before b1 ended
    _after(b2["started_at"], b1["updated"], "b1.updated >= b2.started_at (parallel branches)")
    _after(b1["updated"], c["started_at"], "c.started_at >= b1.updated")
    _after(b2["updated"], c["started_at"], "c.started_at >= b2.updated")
    assert c["workflow_task"]["triggered_by"] == "b2", \
        f"the join should be completed by the slower branch b2, got {c['workflow_task']}"
    assert c["config"] == {"left": 21, "right": 22}, f"c should see both branch results, got {c['config']}"
    assert total(admin.list_executions, parent=pid) == 4


def test_diamond_join_never_fires_after_branch_failure(admin, make, uid, e2e_pack):
    """T2.11 Diamond, failure propagation: b2 fails, so the join of c (2 inbound) is never
    satisfied; once the parent is terminal (P3) no c exists, b1 still completed, and the parent
    fails naming b2."""
    wf = _diamond(make, e2e_pack, uid, "diamondf", b2_fails=True)

    pid = admin.execute(wf["ref"])["id"]
    parent = wait_for_execution(admin, pid, "failed", timeout=30)
    assert parent["result"] == {"error": "Workflow failed: 1 task(s) failed: b2", "succeeded": False}, \
        f"unexpected parent result: {parent['result']}"

    groups = by_task(children(admin, pid))
    assert sorted(groups) == ["a", "b1", "b2"], \
        f"expected a, b1, b2 and no c after b2 failed, got {sorted(groups)}"
    assert lineage(only_task(groups, "b1")) == ("completed", pid, "b1")
    assert lineage(only_task(groups, "b2")) == ("failed", pid, "b2")
    assert total(admin.list_executions, parent=pid) == 3
