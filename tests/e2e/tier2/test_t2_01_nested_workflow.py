"""T2.1 Nested workflow (scenarios.md T2.1).

Upstream idiom: a workflow task whose `action` is itself a workflow action is orchestrated
recursively, the nested parent pointing at the outer execution. The child workflow `c1 -> c2`
prints JSON parts and maps them into its result (`output_map`); the parent runs it as task
`run_child`, then `report` (`core.echo`) prints the joined value, and maps it to `final`.
"""
import pytest

from tests.helpers.polling import TERMINAL, wait_for_execution
from tests.helpers.scenario import first_index, secs, stream_exec_id, total
from tests.helpers.workflows import (by_task, children, descendants, lineage, on_success,
                                     only_task, step_action, task)

pytestmark = [pytest.mark.tier2, pytest.mark.workflow, pytest.mark.orchestration]


def test_nested_workflow_tree_order_and_results(admin, make, uid, e2e_pack, exec_stream):
    """T2.1 Nested workflow: P -> C (task run_child) -> G1 (c1), G2 (c2), then R (report);
    lineage and task names are exact, every execution completes, C's `joined`, P's `final` and
    R's stdout are "alpha-beta", each step starts after its predecessor ended, the stream shows
    G2, C, P completing in that order, and after P is terminal there are exactly 4 descendants."""
    alpha = step_action(make, e2e_pack, uid, "alpha", prints={"part": "alpha"})
    beta = step_action(make, e2e_pack, uid, "beta", prints={"part": "beta"})
    child_wf = make.workflow(
        ref=f"{e2e_pack}.child_{uid}", pack_ref=e2e_pack, label=f"child {uid}",
        definition={"version": "1.0.0", "tasks": [
            task("c1", alpha["ref"], next=[on_success("c2")]),
            task("c2", beta["ref"])],
            "output_map": {"joined": "{{ task.c1.part }}-{{ task.c2.part }}"}})
    parent_wf = make.workflow(
        ref=f"{e2e_pack}.nest_{uid}", pack_ref=e2e_pack, label=f"nested parent {uid}",
        definition={"version": "1.0.0", "tasks": [
            task("run_child", child_wf["ref"], next=[on_success("report")]),
            task("report", "core.echo", input={"message": "{{ task.run_child.joined }}"})],
            "output_map": {"final": "{{ task.run_child.joined }}"}})

    parent = admin.execute(parent_wf["ref"])
    pid = parent["id"]
    parent = wait_for_execution(admin, pid, "completed", timeout=30)
    assert parent["parent"] is None, f"the top-level execution has a parent: {parent}"
    assert parent["result"] == {"final": "alpha-beta", "succeeded": True}, \
        f"expected P.result {{final: alpha-beta, succeeded: true}}, got {parent['result']}"

    # P3: P is terminal, so the tree is final
    top = by_task(children(admin, pid))
    assert sorted(top) == ["report", "run_child"], f"expected P's tasks run_child and report, got {top}"
    c = only_task(top, "run_child")
    r = only_task(top, "report")
    assert lineage(c) == ("completed", pid, "run_child") and c["action_ref"] == child_wf["ref"], \
        f"nested workflow execution C: {c}"
    assert lineage(r) == ("completed", pid, "report") and r["action_ref"] == "core.echo", \
        f"report execution R: {r}"
    assert r["workflow_task"]["triggered_by"] == "run_child", f"R.workflow_task: {r['workflow_task']}"
    assert c["enforcement"] == parent["enforcement"] and c["executor"] == parent["executor"], \
        f"C does not inherit P's enforcement/executor: C={c}, P={parent}"

    nested = by_task(children(admin, c["id"]))
    assert sorted(nested) == ["c1", "c2"], f"expected C's tasks c1 and c2, got {nested}"
    g1 = only_task(nested, "c1")
    g2 = only_task(nested, "c2")
    assert lineage(g1) == ("completed", c["id"], "c1") and g1["action_ref"] == alpha["ref"], f"G1: {g1}"
    assert lineage(g2) == ("completed", c["id"], "c2") and g2["action_ref"] == beta["ref"], f"G2: {g2}"
    assert g2["workflow_task"]["triggered_by"] == "c1", f"G2.workflow_task: {g2['workflow_task']}"
    assert g1["workflow_task"]["workflow_execution"] != c["workflow_task"]["workflow_execution"], \
        "the nested workflow must run as its own workflow_execution"

    # results propagate up: grandchildren -> C -> R and P
    assert (g1["result"]["stdout"], g2["result"]["stdout"]) == ('{"part":"alpha"}', '{"part":"beta"}'), \
        f"grandchild outputs: G1 {g1['result']}, G2 {g2['result']}"
    assert c["result"] == {"joined": "alpha-beta", "succeeded": True}, f"C.result: {c['result']}"
    assert r["config"] == {"message": "alpha-beta"}, f"R.config: {r['config']}"
    assert r["result"]["stdout"] == "alpha-beta", f"R.result: {r['result']}"

    # order: each step starts after its predecessor ended
    for earlier, later, what in [
            (g1["updated"], g2["started_at"], "G2.started_at >= G1.updated"),
            (g2["updated"], c["updated"], "C.updated >= G2.updated"),
            (c["updated"], r["created"], "R.created >= C.updated"),
            (r["updated"], parent["updated"], "P.updated >= R.updated")]:
        gap = secs(earlier, later)
        assert gap >= 0, f"expected {what}, but it is {-gap:.3f} s earlier ({later} < {earlier})"

    # exactly 4 descendants in the whole tree
    tree = descendants(admin, pid)
    assert sorted(e["id"] for e in tree) == sorted([c["id"], r["id"], g1["id"], g2["id"]]), \
        f"expected exactly 4 descendants (C, R, G1, G2), got {[lineage(e) for e in tree]}"
    assert total(admin.list_executions, parent=pid) == 2
    assert total(admin.list_executions, parent=c["id"]) == 2

    # P6: the stream delivers completions in commit order: G2, then C, then P
    exec_stream.wait_for_status(pid, "completed", timeout=10)
    stream = exec_stream.events

    def done(eid):
        return first_index(stream, lambda e: stream_exec_id(e) == eid and e.get("status") in TERMINAL,
                           f"execution {eid} terminal")

    assert done(g1["id"]) < done(g2["id"]) < done(c["id"]) < done(pid), (
        f"expected the stream order G1 < G2 < C < P completions, got indexes "
        f"{[done(x) for x in (g1['id'], g2['id'], c['id'], pid)]}")
    assert done(c["id"]) < first_index(stream, lambda e: stream_exec_id(e) == r["id"],
                                       "R's execution_created"), "R was created before C completed"
    for eid in (g1["id"], g2["id"], c["id"], r["id"], pid):
        assert stream[done(eid)].get("status") == "completed", \
            f"execution {eid} ended {stream[done(eid)]} on the stream"
