"""Workflow reconciliation after a lost `execution.completed` (executor monitor,
attune_emulator/executor/reconcile.py).

A workflow advances on its children's `execution.completed` messages. The test leaves exactly the
state a crashed handler or a dropped broker message leaves: a `core.ask` task's child is written
`completed` (with the response the inquiry handler would store) straight into the database, and
no message is published. The executor's monitor must notice within the reconcile grace
(3 x timeout_check_interval = 3 s here) plus one interval and advance the workflow through the
normal handler path, exactly once.
"""
import pytest

from tests.helpers.polling import wait_for_execution, wait_for_items
from tests.helpers.reliability import simulate_lost_completion, workflow_execution_status
from tests.helpers.scenario import all_items, parse_ts, secs, utcnow
from tests.helpers.workflows import by_task, children, on_success, task

pytestmark = [pytest.mark.resilience, pytest.mark.workflow, pytest.mark.inquiry, pytest.mark.db]

GRACE = 3.0     # default executor.workflow_reconcile_grace: 3 x timeout_check_interval (1 s)
INTERVAL = 1.0  # executor.timeout_check_interval
SLACK = 3.0     # loaded 2-core host


def test_lost_child_completion_is_reconciled_exactly_once(admin, make, uid, e2e_pack, db_probe):
    """Reconciliation: ask -> after (core.echo). The ask child is set `completed` in the
    database without `execution.completed`; the parent is still `running` with no successor 1 s
    later (the message handler really saw nothing), then within grace + interval + slack the
    child's workflow_task.completed_at is set (no earlier than the grace after its status
    change), exactly one `after` child runs and the parent ends `completed` with its output_map
    rendered from the response; the workflow_execution row reads `completed` with
    completed_tasks [ask, after]."""
    from tests.helpers.lanes import expect_absent_for

    wf = make.workflow(ref=f"{e2e_pack}.lost_{uid}", pack_ref=e2e_pack, definition={
        "version": "1.0.0",
        "tasks": [task("ask", "core.ask", input={"prompt": f"lost-{uid}"},
                       next=[on_success("after")]),
                  task("after", "core.echo", input={"message": f"after-{uid}"})],
        "output_map": {"answer": "{{ task.ask.response.ok }}"}})
    parent = admin.execute(wf["ref"], {})
    pid = parent["id"]
    [ask] = wait_for_items(lambda: admin.list_executions(parent=pid), 1, timeout=20,
                           description=f"the ask child of {pid}")
    ask = wait_for_execution(admin, ask["id"], "running", timeout=10)
    assert ask["result"].get("status") == "pending", f"ask child: {ask}"

    simulate_lost_completion(db_probe, ask["id"], "completed",
                             {"response": {"ok": f"yes-{uid}"}, "__inquiry_id": ask["result"]["inquiry_id"]})
    t_lost = utcnow()
    # Bounded 1 s window (< the 3 s grace): nothing advances the workflow without the message.
    expect_absent_for(lambda: [c for c in all_items(admin.list_executions, parent=pid)
                               if c["id"] != ask["id"]],
                      1.0, "a successor created although no completion message was sent")
    assert admin.get_execution(pid)["status"] == "running", "parent left running too early"

    done = wait_for_execution(admin, pid, "completed", timeout=GRACE + INTERVAL + SLACK + 10)
    took = secs(t_lost, utcnow())
    assert done["result"] == {"answer": f"yes-{uid}", "succeeded": True}, f"parent: {done}"
    ask_after = admin.get_execution(ask["id"])
    completed_at = parse_ts(ask_after["workflow_task"]["completed_at"])
    claim_delay = secs(t_lost, completed_at)
    assert claim_delay >= GRACE - 0.5, \
        f"reconciled {claim_delay:.2f} s after the lost completion, before the {GRACE} s grace"
    assert claim_delay <= GRACE + INTERVAL + SLACK, \
        f"reconciled {claim_delay:.2f} s after the lost completion " \
        f"(bound {GRACE + INTERVAL + SLACK} s; parent done after {took:.2f} s)"
    groups = by_task(children(admin, pid))  # P3: the parent is terminal
    assert sorted(groups) == ["after", "ask"] and len(groups["after"]) == 1, \
        f"children by task: { {k: [c['id'] for c in v] for k, v in groups.items()} }"
    assert groups["after"][0]["status"] == "completed", f"after: {groups['after'][0]}"
    assert workflow_execution_status(db_probe, pid) == "completed"
    with db_probe.cursor() as cur:
        cur.execute("SELECT completed_tasks FROM workflow_execution WHERE execution = %s", (pid,))
        assert cur.fetchone()[0] == ["ask", "after"]
