"""T3.25 Large workflow, 100 tasks (scenarios.md T3.25).

A workflow of 100 `core.echo` tasks `t001 -> t002 -> ... -> t100` is built programmatically
(`next: [{when: succeeded(), do: [t<n+1>]}]`, `output_map: {last: task.t100.stdout}`) and run
once. Every child must exist exactly once, in order, with the right output; the run must finish
within a generous wall-time bound and the executor's memory and CPU must stay bounded.

Bounds (generous for a loaded 2-core machine; the plan's targets are benchmark material):
- wall time of the parent (`updated - created`) <= WALL_BOUND s (about 25 s warm and idle);
- dispatch latency per task (`handoff`: from the end of t<n-1>'s process, `started_at +
  result.duration_ms`, to `started_at` of t<n>: completion message, transition, child creation,
  scheduling, worker pick-up): p95 <= DISPATCH_P95 s, every one <= DISPATCH_MAX s (the plan's
  target is p95 < 500 ms; `updated(n-1)` cannot serve, the executor stamps it when it records the
  task's completion, in the transaction that creates t<n>);
- embedded: executor RSS growth during the run < RSS_GROWTH_KB, executor CPU time
  <= CPU_PER_TASK s per task (catches per-completion work that grows with the workflow).
"""
import pytest

from tests.helpers.broker_probe import (ResourceSampler, chain_definition, chain_task_name,
                                        handoff, percentile, usage)
from tests.helpers.polling import wait_for_execution
from tests.helpers.scenario import secs, stream_exec_id, total
from tests.helpers.workflows import children, elapsed, task_name

pytestmark = [pytest.mark.tier3, pytest.mark.performance, pytest.mark.workflow,
              pytest.mark.serial, pytest.mark.slow, pytest.mark.xdist_group("perf")]

N = 100
WALL_BOUND = 150.0
DISPATCH_P95 = 2.0
DISPATCH_MAX = 10.0
RSS_GROWTH_KB = 50 * 1024
CPU_PER_TASK = 0.3


@pytest.mark.timeout(WALL_BOUND + 120)
def test_hundred_task_chain_runs_each_task_once_in_order(admin, make, uid, e2e_pack, exec_stream,
                                                         target):
    """T3.25 Large workflow: a 100-task sequential chain completes with exactly 100 children
    (t001..t100, each once, stdout = its number, parent = the workflow, triggered_by its
    predecessor, started only after the predecessor ended), P.result.last == "100", the SSE
    stream shows exactly 100 child creations in chain order, the wall time and per-task dispatch
    latency stay bounded and (embedded) the executor's RSS growth and CPU time stay bounded."""
    wf = make.workflow(ref=f"{e2e_pack}.chain{N}_{uid}", pack_ref=e2e_pack,
                       label=f"{N}-task chain {uid}", definition=chain_definition(N))
    svc = target.services if target.embedded else None
    sampler = ResourceSampler(svc, ["executor"], interval=1.0).start() if svc else None
    before = usage(svc, ["executor"]) if svc else None

    pid = admin.execute(wf["ref"])["id"]
    try:
        parent = wait_for_execution(admin, pid, "completed", timeout=WALL_BOUND)
    finally:
        after = usage(svc, ["executor"]) if svc else None
        if sampler is not None:
            sampler.stop()

    assert parent["result"] == {"last": str(N), "succeeded": True}, \
        f"expected the parent result {{last: '{N}', succeeded: true}}, got {parent['result']}"
    took = elapsed(parent)
    assert took <= WALL_BOUND, f"the {N}-task chain took {took:.1f} s, bound {WALL_BOUND} s"

    # P3: the parent is terminal, so its children are final
    kids = children(admin, pid)
    names = [task_name(k) for k in kids]
    assert len(kids) == N and total(admin.list_executions, parent=pid) == N, \
        f"expected exactly {N} children, got {len(kids)}: {names}"
    assert names == [chain_task_name(n) for n in range(1, N + 1)], \
        f"children (by id) are not t001..t{N:03d} each once and in order: {names}"
    outputs = sorted(int((k.get("result") or {}).get("stdout", "-1")) for k in kids)
    assert outputs == list(range(1, N + 1)), f"stdout values are not exactly 1..{N}: {outputs}"

    dispatch = []
    for n, kid in enumerate(kids, start=1):
        wt = kid.get("workflow_task") or {}
        assert (kid["status"], kid["parent"], kid["action_ref"]) == ("completed", pid, "core.echo"), \
            f"{chain_task_name(n)}: expected a completed core.echo child of {pid}, got {kid}"
        assert kid["config"] == {"message": str(n)} and kid["result"].get("stdout") == str(n), \
            f"{chain_task_name(n)}: expected message/stdout {n!r}, got config {kid['config']} result {kid['result']}"
        if n == 1:
            assert wt.get("triggered_by") is None, f"t001 is an entry task, got {wt}"
            continue
        prev = kids[n - 2]
        assert wt.get("triggered_by") == chain_task_name(n - 1), \
            f"{chain_task_name(n)}: triggered_by {wt.get('triggered_by')!r}, expected {chain_task_name(n - 1)!r}"
        gap = secs(prev["updated"], kid["started_at"])
        assert gap >= 0, f"{chain_task_name(n)} started {-gap:.3f} s before {chain_task_name(n - 1)} ended"
        dispatch.append(handoff(prev, kid))
    p95 = percentile(dispatch, 95)
    assert p95 <= DISPATCH_P95 and max(dispatch) <= DISPATCH_MAX, (
        f"per-task dispatch latency (started_at(n) - end of t(n-1)'s process): p95 {p95:.3f} s (bound "
        f"{DISPATCH_P95}), max {max(dispatch):.3f} s (bound {DISPATCH_MAX})")

    # P6: the parent's terminal notification comes after every child's creation
    exec_stream.wait_for_status(pid, "completed", timeout=15)
    created = [stream_exec_id(e) for e in exec_stream.events
               if e.get("parent") == pid and "old_status" not in e]
    assert created == [k["id"] for k in kids], (
        f"expected exactly {N} execution_created notifications with parent {pid}, in chain "
        f"order; got {len(created)}: {created}")

    if svc is not None:
        assert before.rss_kb["executor"] and after.rss_kb["executor"], \
            f"executor RSS not readable: before {before}, after {after}"
        peak = max(sampler.peak_rss_kb("executor") or 0, after.rss_kb["executor"])
        growth = peak - before.rss_kb["executor"]
        assert growth < RSS_GROWTH_KB, \
            f"executor RSS grew by {growth} kB during the {N}-task run (bound {RSS_GROWTH_KB} kB)"
        cpu = after.cpu_seconds["executor"] - before.cpu_seconds["executor"]
        assert cpu <= CPU_PER_TASK * N, (
            f"the executor used {cpu:.1f} s CPU for {N} tasks in {took:.1f} s (bound "
            f"{CPU_PER_TASK} s per task)")
