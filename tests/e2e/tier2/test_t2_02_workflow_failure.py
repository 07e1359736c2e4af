"""T2.2 Workflow failure handling (scenarios.md T2.2).

Upstream has no `on_failure` policy keyword: transitions express it. *abort* is a failing task
with only a `succeeded()` transition (its successor never runs, the parent ends `failed` with
"Workflow failed: 1 task(s) failed: b"); *continue* adds a `failed()` transition to the same
successor (the failure counts as handled, the parent ends `completed`; there is no
`succeeded_with_errors`). A failing branch with no failure transition does not stop a parallel
sibling. *retry* is T2.8.
"""
import pytest

from tests.helpers.polling import wait_for_execution
from tests.helpers.scenario import secs, total
from tests.helpers.workflows import (by_task, children, failing_action, lineage, on_failure,
                                     on_success, only_task, step_action, task)

pytestmark = [pytest.mark.tier2, pytest.mark.workflow, pytest.mark.orchestration]


def _abc_workflow(make, e2e_pack, uid, slug, b_next):
    ok = step_action(make, e2e_pack, uid, f"{slug}_ok", prints={"ok": True})
    bad = failing_action(make, e2e_pack, uid, f"{slug}_bad", exit_code=1)
    wf = make.workflow(
        ref=f"{e2e_pack}.{slug}_{uid}", pack_ref=e2e_pack, label=f"{slug} {uid}",
        definition={"version": "1.0.0", "tasks": [
            task("a", ok["ref"], next=[on_success("b")]),
            task("b", bad["ref"], next=b_next),
            task("c", ok["ref"])]})
    return wf, ok, bad


def _assert_failed_b(groups, pid, bad_ref):
    b = only_task(groups, "b")
    assert lineage(b) == ("failed", pid, "b") and b["action_ref"] == bad_ref, f"task b: {b}"
    assert b["result"]["exit_code"] == 1 and b["result"]["succeeded"] is False, \
        f"expected b to fail with exit_code 1, got {b['result']}"
    assert b["workflow_task"]["triggered_by"] == "a", f"b.workflow_task: {b['workflow_task']}"
    return b


def test_abort_policy_stops_after_failed_task(admin, make, uid, e2e_pack):
    """T2.2 Workflow failure handling, abort: a -> b (exit 1) -> c only on success. a completes,
    b fails with exit_code 1, the parent fails with "Workflow failed: 1 task(s) failed: b", and
    after the parent is terminal (P3) no child ran task c."""
    wf, ok, bad = _abc_workflow(make, e2e_pack, uid, "abort", [on_success("c")])

    pid = admin.execute(wf["ref"])["id"]
    parent = wait_for_execution(admin, pid, "failed", timeout=30)
    assert parent["result"] == {"error": "Workflow failed: 1 task(s) failed: b", "succeeded": False}, \
        f"unexpected failed-workflow result: {parent['result']}"

    # P3: the parent is terminal, so the set of children is final
    groups = by_task(children(admin, pid))
    a = only_task(groups, "a")
    assert lineage(a) == ("completed", pid, "a") and a["result"]["exit_code"] == 0, f"task a: {a}"
    _assert_failed_b(groups, pid, bad["ref"])
    assert "c" not in groups, f"task c ran although b failed under abort: {groups['c']}"
    assert sorted(groups) == ["a", "b"], f"expected only tasks a and b, got {sorted(groups)}"
    assert total(admin.list_executions, parent=pid) == 2


def test_continue_policy_runs_successor_and_completes(admin, make, uid, e2e_pack):
    """T2.2 Workflow failure handling, continue: b has failed() and succeeded() transitions to c.
    b fails, c runs (triggered_by b) and completes, the failure counts as handled, so the parent
    is `completed` with `succeeded: true` (no succeeded_with_errors status)."""
    wf, ok, bad = _abc_workflow(make, e2e_pack, uid, "cont", [on_failure("c"), on_success("c")])

    pid = admin.execute(wf["ref"])["id"]
    parent = wait_for_execution(admin, pid, "completed", timeout=30)
    assert parent["result"] == {"succeeded": True}, f"unexpected parent result: {parent['result']}"

    groups = by_task(children(admin, pid))
    assert sorted(groups) == ["a", "b", "c"], f"expected tasks a, b, c, got {sorted(groups)}"
    a = only_task(groups, "a")
    assert lineage(a) == ("completed", pid, "a"), f"task a: {a}"
    _assert_failed_b(groups, pid, bad["ref"])
    c = only_task(groups, "c")
    assert lineage(c) == ("completed", pid, "c") and c["action_ref"] == ok["ref"], f"task c: {c}"
    assert c["workflow_task"]["triggered_by"] == "b", \
        f"expected c triggered_by b (the failure transition), got {c['workflow_task']}"
    assert total(admin.list_executions, parent=pid) == 3


def test_unhandled_branch_failure_does_not_stop_sibling(admin, make, uid, e2e_pack):
    """T2.2 Workflow failure handling, branch isolation: start -> (bad, slow) in parallel; bad
    fails with no failure transition, the sibling branch slow -> after still runs to completion,
    and the parent ends `failed` naming only bad; bad's own success successor never runs (P3)."""
    ok = step_action(make, e2e_pack, uid, "iso_ok", prints={"ok": True})
    slow = step_action(make, e2e_pack, uid, "iso_slow", prints={"slow": True}, sleep=1)
    bad = failing_action(make, e2e_pack, uid, "iso_bad", exit_code=1)
    wf = make.workflow(
        ref=f"{e2e_pack}.iso_{uid}", pack_ref=e2e_pack, label=f"isolation {uid}",
        definition={"version": "1.0.0", "tasks": [
            task("start", ok["ref"], next=[on_success("bad", "slow")]),
            task("bad", bad["ref"], next=[on_success("after_bad")]),
            task("after_bad", ok["ref"]),
            task("slow", slow["ref"], next=[on_success("after_slow")]),
            task("after_slow", ok["ref"])]})

    pid = admin.execute(wf["ref"])["id"]
    parent = wait_for_execution(admin, pid, "failed", timeout=30)
    assert parent["result"] == {"error": "Workflow failed: 1 task(s) failed: bad", "succeeded": False}, \
        f"unexpected failed-workflow result: {parent['result']}"

    groups = by_task(children(admin, pid))
    assert sorted(groups) == ["after_slow", "bad", "slow", "start"], \
        f"expected tasks start, bad, slow, after_slow (and no after_bad), got {sorted(groups)}"
    bad_ex = only_task(groups, "bad")
    assert lineage(bad_ex) == ("failed", pid, "bad") and bad_ex["result"]["exit_code"] == 1, \
        f"task bad: {bad_ex}"
    slow_ex = only_task(groups, "slow")
    after = only_task(groups, "after_slow")
    assert lineage(slow_ex) == ("completed", pid, "slow"), f"task slow: {slow_ex}"
    assert lineage(after) == ("completed", pid, "after_slow"), f"task after_slow: {after}"
    assert (bad_ex["workflow_task"]["triggered_by"], slow_ex["workflow_task"]["triggered_by"],
            after["workflow_task"]["triggered_by"]) == ("start", "start", "slow"), \
        "unexpected triggered_by chain"
    # the sibling branch kept advancing after the failure: after_slow was dispatched later
    gap = secs(bad_ex["updated"], after["created"])
    assert gap >= 0, (f"expected after_slow to be created after bad failed, but it was created "
                      f"{-gap:.3f} s before")
    assert total(admin.list_executions, parent=pid) == 4
