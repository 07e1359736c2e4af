"""T2.10 Parallel execution with `with_items` (scenarios.md T2.10).

Upstream idiom: `with_items: "{{ parameters.items }}"` + `concurrency`; every item's child is
created up front but only `concurrency` run at once (the default is 1; "unlimited" cannot be
written, so it is concurrency = the number of items). Concurrency is proven by the maximum overlap
of the children's run windows, `[started_at, started_at + result.duration_ms)` (scenarios.md says
`[started_at, updated)`, but the executor's completion bookkeeping bumps a child's `updated` after
the next item may already have been released, so `updated` over-counts; see
`workflows.run_window`), and the limit by that overlap being exactly the concurrency and by the
parent's wall time. The plan's 5 s sleep is scaled to 2 s.

The three cases share one xdist group: run side by side they would ask 9 of the worker's 10 slots
at once, and a saturated worker would make the measured overlap depend on other tests.
"""
import pytest

from tests.helpers.polling import wait_for_execution
from tests.helpers.scenario import max_overlap, secs, total
from tests.helpers.workflows import children, elapsed, lineage, run_window, step_action, task

pytestmark = [pytest.mark.tier2, pytest.mark.workflow, pytest.mark.orchestration,
              pytest.mark.xdist_group("t2_10_with_items")]

CASES = [
    # concurrency, items, sleep (s), elapsed lower bound, elapsed upper bound
    pytest.param(5, 5, 2, 2.0, 4.5, id="unlimited-5-of-5"),
    pytest.param(3, 5, 2, 4.0, None, id="limited-3-of-5"),
    pytest.param(1, 3, 1, 3.0, None, id="sequential-1-of-3"),
]


@pytest.mark.parametrize("concurrency, n_items, sleep, min_elapsed, max_elapsed", CASES)
def test_with_items_overlap_is_limited_by_concurrency(admin, make, uid, e2e_pack, concurrency,
                                                      n_items, sleep, min_elapsed, max_elapsed):
    """T2.10 Parallel execution: a with_items workflow over N items with concurrency C (5/5, 3/5,
    1/3, each item sleeping then printing itself) completes; after the parent is terminal there
    are exactly N children, all completed, task_index a permutation of 0..N-1, each printing its
    item; the maximum overlap of their run windows is exactly C, and the parent's wall time shows
    the waves (5/5 in [2.0, 4.5] s, 3/5 >= 4.0 s, 1/3 >= 3.0 s)."""
    items = [f"it{i}-{uid}" for i in range(n_items)]
    item_action = step_action(make, e2e_pack, uid, "par_item", sleep=sleep, echo_item=True)
    wf = make.workflow(
        ref=f"{e2e_pack}.par_{uid}", pack_ref=e2e_pack, label=f"parallel {concurrency} {uid}",
        param_schema={"items": {"type": "array", "required": True}},
        definition={"version": "1.0.0", "tasks": [
            task("fan", item_action["ref"], input={"item": "{{ item }}"},
                 with_items="{{ parameters.items }}", concurrency=concurrency)]})

    pid = admin.execute(wf["ref"], {"items": items})["id"]
    parent = wait_for_execution(admin, pid, "completed", timeout=45)
    assert parent["result"] == {"succeeded": True}, f"unexpected parent result: {parent['result']}"

    # P3: the parent is terminal, so the children are final
    kids = children(admin, pid)
    assert len(kids) == n_items, f"expected exactly {n_items} children, got {len(kids)}"
    assert total(admin.list_executions, parent=pid) == n_items
    indexes = sorted(k["workflow_task"]["task_index"] for k in kids)
    assert indexes == list(range(n_items)), f"task_index is not a permutation of 0..{n_items - 1}: {indexes}"
    for kid in kids:
        index = kid["workflow_task"]["task_index"]
        assert lineage(kid) == ("completed", pid, "fan"), f"child {index}: {kid}"
        assert (kid["config"], kid["result"]["stdout"]) == ({"item": items[index]}, items[index]), \
            f"child {index} should get and print {items[index]!r}: config {kid['config']}, " \
            f"result {kid['result']}"

    windows = [run_window(k) for k in kids]
    overlap = max_overlap(windows)
    assert overlap == concurrency, (
        f"expected a maximum overlap of exactly {concurrency} (concurrency {concurrency}, "
        f"{n_items} items), got {overlap}; windows: "
        f"{[(start.isoformat(), end.isoformat()) for start, end in windows]}")
    took = elapsed(parent)
    assert took >= min_elapsed, f"the workflow took {took:.2f} s, expected >= {min_elapsed} s"
    if max_elapsed is not None:
        assert took <= max_elapsed, (f"the workflow took {took:.2f} s, expected <= {max_elapsed} s "
                                     f"(parallel, not {n_items * sleep} s sequential)")
    if concurrency == 1:
        ordered = sorted(kids, key=lambda k: k["workflow_task"]["task_index"])
        for prev, nxt in zip(ordered, ordered[1:]):
            gap = secs(prev["updated"], nxt["started_at"])
            assert gap >= 0, (f"with concurrency 1, item {nxt['workflow_task']['task_index']} "
                              f"started {-gap:.3f} s before item {prev['workflow_task']['task_index']} "
                              f"ended")
