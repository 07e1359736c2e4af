"""Unit tests of the workflow reconciliation selection (attune_emulator/executor/reconcile.py)."""
from attune_emulator.executor.reconcile import Plan, grace_seconds, plan

GRACE = 3.0


def child(cid, status, age=10.0, completed_at=None, wt=True):
    return {"id": cid, "status": status, "age": age,
            "workflow_task": ({"task_name": f"t{cid}", "completed_at": completed_at}
                              if wt else None)}


DONE = "2026-01-01T00:00:00Z"


def test_terminal_child_never_processed_is_claimed():
    got = plan("running", 20, [child(1, "completed", completed_at=DONE), child(2, "failed")], GRACE)
    assert got == Plan(claim=[2], finalize=False)


def test_several_lost_completions_are_claimed_in_id_order():
    got = plan("running", 20, [child(7, "completed"), child(3, "timeout"), child(5, "running")],
               GRACE)
    assert got == Plan(claim=[3, 7])


def test_recent_completion_is_left_to_the_message_handler():
    assert not plan("running", 20, [child(1, "completed", age=GRACE - 0.1)], GRACE)
    assert plan("running", 20, [child(1, "completed", age=GRACE)], GRACE) == Plan(claim=[1])


def test_active_children_only_means_nothing_to_do():
    for status in ("requested", "scheduling", "scheduled", "running", "canceling"):
        assert not plan("running", 99, [child(1, "completed", completed_at=DONE),
                                        child(2, status)], GRACE), status


def test_all_children_processed_and_parent_still_running_is_finalized():
    kids = [child(1, "completed", completed_at=DONE), child(2, "failed", completed_at=DONE)]
    assert plan("running", GRACE + 1, kids, GRACE) == Plan(finalize=True)
    assert not plan("running", GRACE - 1, kids, GRACE), "a fresh parent is left alone"


def test_canceling_parent_is_reconciled_too():
    assert plan("canceling", 30, [child(4, "cancelled")], GRACE) == Plan(claim=[4])
    assert plan("canceling", 30, [child(4, "cancelled", completed_at=DONE)], GRACE) == \
        Plan(finalize=True)


def test_terminal_or_pending_parents_are_never_touched():
    for status in ("completed", "failed", "cancelled", "abandoned", "timeout", "requested",
                   "scheduling", "scheduled"):
        assert not plan(status, 99, [child(1, "completed")], GRACE), status


def test_children_without_workflow_task_are_not_claimed():
    assert not plan("running", 5, [child(1, "completed", wt=False),
                                   child(2, "running")], GRACE)
    assert plan("running", 5, [child(1, "completed", wt=False)], GRACE) == Plan(finalize=True)


def test_grace_defaults_to_three_intervals_at_least_two_seconds():
    assert grace_seconds({"executor.timeout_check_interval": 1}) == 3.0
    assert grace_seconds({"executor.timeout_check_interval": 0.2}) == 2.0
    assert grace_seconds({"executor.timeout_check_interval": 60}) == 180.0
    assert grace_seconds({}) == 180.0
    assert grace_seconds({"executor.timeout_check_interval": 1,
                          "executor.workflow_reconcile_grace": 0.5}) == 0.5
