"""T3.23 Execution cancellation (scenarios.md T3.23).

`POST /api/v1/executions/{id}/cancel` (no body): a `requested`/`scheduling`/`scheduled` execution
becomes `cancelled` at once (`result {"error": "Cancelled by user before execution started"}`); a
`running` one becomes `canceling`, the worker sends SIGTERM to the process group, waits 5 s
(`worker.kill_grace_seconds`), sends SIGKILL, and the execution ends `cancelled` with
`{succeeded false, cancelled true, exit_code, error "Execution cancelled by user", stdout}`; a
repeat cancel while `canceling` is 200 unchanged; a terminal execution answers 409. Workflow
parents follow the definition's `cancellation_policy` (`allow_finish` default, `cancel_running`).
The `sleeper` fixture prints `tick k` every `tick` s and on TERM prints `cleanup-ran`, exit 143.
"""
import json

import pytest

from tests.helpers.infra import pid_alive
from tests.helpers.notifications import status_event, wait_for_log_text
from tests.helpers.polling import wait_for_execution, wait_for_items, wait_until
from tests.helpers.scenario import expect_api_error, secs
from tests.helpers.workflows import by_task, children, task

pytestmark = [pytest.mark.tier3, pytest.mark.runner]

GRACE = 5.0  # worker.kill_grace_seconds (upstream's fixed 5 s)


def _start_sleeper(admin, e2e_pack, tmp_path, **params):
    pid_file = tmp_path / "sleeper.json"
    ex = admin.execute(f"{e2e_pack}.sleeper", {"seconds": 60, "tick": 0.5,
                                                "pid_file": str(pid_file), **params})
    wait_for_log_text(admin, ex["id"], "tick 2", timeout=30)
    return ex, pid_file


def _expect_terminal_409(admin, exec_id, status):
    err = expect_api_error(lambda: admin.cancel_execution(exec_id), 409,
                           f"cancel of a {status} execution")
    assert err.message == f"Execution {exec_id} is in status '{status}' and cannot be cancelled", \
        f"unexpected 409 message: {err.message!r}"


def test_running_execution_gets_sigterm_and_keeps_partial_output(admin, uid, e2e_pack, exec_stream,
                                                                  tmp_path, target):
    """T3.23 Execution cancellation: after >= 2 ticks of sleeper, cancel answers 200 with status
    canceling; the stream shows running -> canceling -> cancelled; the result has cancelled true,
    succeeded false, error "Execution cancelled by user", exit_code 143 and stdout with tick 1,
    tick 2 and cleanup-ran; cancel -> cancelled takes under 2 s (the rows' `updated` at
    canceling and at cancelled); embedded: the action's process
    and its child are gone; a second cancel is 409 for status cancelled."""
    ex, pid_file = _start_sleeper(admin, e2e_pack, tmp_path)
    xid = ex["id"]
    answer = admin.cancel_execution(xid)
    assert (answer["id"], answer["status"]) == (xid, "canceling"), f"cancel answered {answer}"
    exec_stream.wait_for_status(xid, "cancelled", timeout=15)
    took = secs(answer["updated"], status_event(exec_stream, xid, "cancelled")["updated"])
    assert exec_stream.statuses_for(xid) == ["requested", "scheduling", "scheduled", "running",
                                             "canceling", "cancelled"], \
        f"unexpected status chain: {exec_stream.statuses_for(xid)}"
    final = wait_for_execution(admin, xid, "cancelled", timeout=5)
    result = final["result"]
    assert (result.get("cancelled"), result.get("succeeded"), result.get("error"),
            result.get("exit_code")) == (True, False, "Execution cancelled by user", 143), \
        f"unexpected result: {result}"
    lines = (result.get("stdout") or "").splitlines()
    assert {"tick 1", "tick 2", "cleanup-ran"} <= set(lines) and "done" not in lines, \
        f"partial output not kept: {result.get('stdout')!r}"
    assert took < 2.0, f"cancel -> cancelled took {took:.2f} s"
    if target.embedded:
        pids = json.loads(pid_file.read_text())
        wait_until(lambda: not any(pid_alive(p) for p in pids.values()), timeout=3,
                   description=f"the sleeper's processes {pids} to be gone")
    _expect_terminal_409(admin, xid, "cancelled")


def test_process_ignoring_sigterm_is_killed_after_the_grace(admin, uid, e2e_pack, exec_stream,
                                                            tmp_path, target):
    """T3.23 Execution cancellation, TERM ignored: cancel answers canceling; a repeat cancel while
    canceling is 200 with the execution unchanged; after the 5 s grace SIGKILL ends it: cancelled
    with exit_code -1, no cleanup-ran, the ticks kept, cancel -> cancelled in [5, 8] s; embedded:
    both processes are gone."""
    ex, pid_file = _start_sleeper(admin, e2e_pack, tmp_path, ignore_term=True)
    xid = ex["id"]
    first = admin.cancel_execution(xid)
    assert first["status"] == "canceling", f"cancel answered {first}"
    again = admin.cancel_execution(xid)
    assert (again["status"], again["updated"]) == ("canceling", first["updated"]), \
        f"a repeat cancel while canceling changed the execution: {first} -> {again}"
    exec_stream.wait_for_status(xid, "cancelled", timeout=GRACE + 10)
    took = secs(first["updated"], status_event(exec_stream, xid, "cancelled")["updated"])
    result = wait_for_execution(admin, xid, "cancelled", timeout=5)["result"]
    assert (result.get("cancelled"), result.get("exit_code"), result.get("error")) == \
        (True, -1, "Execution cancelled by user"), f"unexpected result: {result}"
    stdout = result.get("stdout") or ""
    assert "tick 2" in stdout and "cleanup-ran" not in stdout, f"unexpected stdout: {stdout!r}"
    assert GRACE <= took <= GRACE + 3, f"cancel -> cancelled took {took:.2f} s, expected [5, 8] s"
    assert exec_stream.statuses_for(xid)[-3:] == ["running", "canceling", "cancelled"], \
        f"unexpected status chain: {exec_stream.statuses_for(xid)}"
    if target.embedded:
        pids = json.loads(pid_file.read_text())
        wait_until(lambda: not any(pid_alive(p) for p in pids.values()), timeout=3,
                   description=f"the sleeper's processes {pids} to be gone")


def test_completed_execution_cannot_be_cancelled(admin, uid):
    """T3.23 Execution cancellation, terminal: cancelling a completed execution is 409
    "Execution <id> is in status 'completed' and cannot be cancelled" and changes nothing."""
    ex = wait_for_execution(admin, admin.execute("core.echo", {"message": f"done-{uid}"})["id"],
                            "completed", timeout=20)
    _expect_terminal_409(admin, ex["id"], "completed")
    after = admin.get_execution(ex["id"])
    assert (after["status"], after["updated"]) == ("completed", ex["updated"]), \
        f"the 409 cancel changed the execution: {after}"


def test_cancel_before_start(admin, make, uid, e2e_pack, exec_stream):
    """T3.23 Execution cancellation, before start: the second item of a with_items task with
    concurrency 1 waits in `requested` while the first runs; cancelling it answers 200 with status
    cancelled and result {"error": "Cancelled by user before execution started"}, no started_at,
    and the stream never shows it scheduled or running (checked after the parent is terminal, P3)."""
    wf = make.workflow(ref=f"{e2e_pack}.queue_{uid}", pack_ref=e2e_pack, definition={
        "version": "1.0.0", "cancellation_policy": "cancel_running", "tasks": [
            task("each", f"{e2e_pack}.sleeper", with_items="{{ parameters.items }}", concurrency=1,
                 input={"seconds": 30, "tick": 0.5})]},
        param_schema={"items": {"type": "array", "required": True}})
    parent = admin.execute(wf["ref"], {"items": [1, 2]})
    pid = parent["id"]
    kids = wait_for_items(lambda: admin.list_executions(parent=pid), 2, timeout=20,
                          description=f"both with_items children of {pid}")
    by_index = {admin.get_execution(k["id"])["workflow_task"]["task_index"]: k["id"] for k in kids}
    waiting = by_index[1]
    exec_stream.wait_for_status(by_index[0], "running", timeout=20)
    assert admin.get_execution(waiting)["status"] == "requested", "item 2 is not waiting"
    answer = admin.cancel_execution(waiting)
    assert (answer["status"], answer["result"]) == \
        ("cancelled", {"error": "Cancelled by user before execution started"}), \
        f"unexpected cancel answer: {answer}"
    # clean up: cancel the parent (cancel_running stops item 1), then check item 2 never ran
    admin.cancel_execution(pid)
    wait_for_execution(admin, pid, "cancelled", timeout=20)
    item2 = admin.get_execution(waiting)
    assert (item2["status"], item2.get("started_at")) == ("cancelled", None), f"item 2: {item2}"
    # the stream may lag REST: wait for its `cancelled`, then the whole sequence must be exact
    exec_stream.wait_for_status(waiting, "cancelled", timeout=10)
    assert exec_stream.statuses_for(waiting) == ["requested", "cancelled"], \
        f"item 2's stream: {exec_stream.statuses_for(waiting)}"


@pytest.mark.parametrize("policy", ["cancel_running", "allow_finish"])
def test_workflow_parent_cancellation_policy(admin, make, uid, e2e_pack, exec_stream, policy):
    """T3.23 Execution cancellation, workflow parent: the first task runs sleeper; cancelling the
    parent with cancel_running signals the running child, which ends cancelled (exit 143); with
    allow_finish (the default) the child runs to completion (completed). The cancel answers 200
    with the parent cancelled. Either way the successor
    task is never created (counted after the parent is terminal, P3) and the parent ends
    cancelled."""
    seconds = 60 if policy == "cancel_running" else 6  # allow_finish: 5 s margin after tick 1
    definition = {"version": "1.0.0", "tasks": [
        task("first", f"{e2e_pack}.sleeper", input={"seconds": seconds, "tick": 0.5},
             next=[{"when": "{{ succeeded() }}", "do": ["second"]},
                   {"when": "{{ failed() }}", "do": ["second"]}]),
        task("second", "core.echo", input={"message": f"after-{uid}"})]}
    if policy == "cancel_running":
        definition["cancellation_policy"] = policy
    wf = make.workflow(ref=f"{e2e_pack}.cancel_{policy}_{uid}", pack_ref=e2e_pack,
                       definition=definition)
    parent = admin.execute(wf["ref"], {})
    pid = parent["id"]
    [first] = wait_for_items(lambda: admin.list_executions(parent=pid), 1, timeout=20,
                             description=f"the first child of {pid}")
    exec_stream.wait_for_status(first["id"], "running", timeout=20)
    wait_for_log_text(admin, first["id"], "tick 1", timeout=20)
    answer = admin.cancel_execution(pid)
    assert (answer["id"], answer["status"]) == (pid, "cancelled"), f"cancel answered {answer}"
    child_status = "cancelled" if policy == "cancel_running" else "completed"
    child = wait_for_execution(admin, first["id"], child_status, timeout=20)
    wait_for_execution(admin, pid, "cancelled", timeout=20)
    groups = by_task(children(admin, pid))
    assert sorted(groups) == ["first"] and len(groups["first"]) == 1, \
        f"expected only the first child after cancelling the parent, got {groups}"
    if policy == "cancel_running":
        assert (child["result"].get("exit_code"), child["result"].get("cancelled")) == (143, True), \
            f"the running child was not signalled: {child['result']}"
    else:
        assert child["result"].get("exit_code") == 0 and "done" in (child["result"].get("stdout") or ""), \
            f"the running child did not finish: {child['result']}"


RACE_RUNS = 20


@pytest.mark.workflow
@pytest.mark.db
def test_cancel_racing_the_last_child_agrees_with_the_final_state(admin, make, uid, e2e_pack,
                                                                   target, db_probe):
    """T3.23 Execution cancellation, race with completion: 20 one-task workflows (allow_finish);
    each parent is cancelled the instant the stream reports its only child `completed` (odd runs:
    while the executor is completing the parent) or `running` (even runs: around the child's
    end, the echo lasts milliseconds). For every one the answer agrees with the final
    state: 200 with status `cancelled` and the parent ends `cancelled` (result error "Workflow
    cancelled by user"), or 409 "... is in status 'completed' and cannot be cancelled" and the
    parent ends `completed` ({"succeeded": true}); its workflow_execution row has the same
    status, and (P3, checked 1 s after it is terminal) the parent's status does not change."""
    from tests.helpers.lanes import expect_absent_for
    from tests.helpers.reliability import CancelOnChildEnd, workflow_execution_status

    wf = make.workflow(ref=f"{e2e_pack}.race_{uid}", pack_ref=e2e_pack, definition={
        "version": "1.0.0",
        "tasks": [task("only", "core.echo", input={"message": f"race-{uid}"})]})
    watcher = CancelOnChildEnd(target.api_url, admin.token)
    try:
        parents = []
        for i in range(RACE_RUNS):
            pid = admin.execute(wf["ref"], {})["id"]
            watcher.watch(pid, "completed" if i % 2 else "running")
            parents.append(pid)
        finals = {pid: wait_for_execution(admin, pid, {"completed", "cancelled"}, timeout=60)
                  for pid in parents}
        wait_until(lambda: watcher.fired() == set(parents), timeout=10,
                   description="a cancel sent for every parent")
        watcher.join(timeout=30)
    finally:
        watcher.close()
    assert not watcher.errors, f"cancel watcher errors: {watcher.errors}"
    assert set(watcher.answers) == set(parents), \
        f"no cancel answer for {sorted(set(parents) - set(watcher.answers))}"
    disagreements = []
    outcomes = {"cancelled": 0, "completed": 0}
    for pid in parents:
        ans, final = watcher.answers[pid], finals[pid]
        wf_status = workflow_execution_status(db_probe, pid)
        if ans.http_status == 200:
            body = (ans.body or {}).get("data") or {}
            ok = (body.get("status") == "cancelled" and final["status"] == "cancelled"
                  and final["result"] == {"error": "Workflow cancelled by user",
                                          "succeeded": False})
        elif ans.http_status == 409:
            msg = json.dumps(ans.body)
            ok = (final["status"] == "completed" and final["result"] == {"succeeded": True}
                  and f"Execution {pid} is in status 'completed' and cannot be cancelled" in msg)
        else:
            ok = False
        if not ok or wf_status != final["status"]:
            disagreements.append({"parent": pid, "answer": ans.http_status, "body": ans.body,
                                  "final": final["status"], "result": final["result"],
                                  "workflow_execution": wf_status})
        else:
            outcomes[final["status"]] += 1
    assert not disagreements, f"cancel answer and final state disagree: {disagreements}"
    # P3: every parent is terminal and every cancel answered; for a bounded 1 s window (well
    # above the executor's per-message handling time) no parent may change its decided status.
    expect_absent_for(lambda: {pid: s for pid in parents
                               if (s := admin.get_execution(pid)["status"]) != finals[pid]["status"]},
                      1.0, "a parent changing status after being terminal")
    assert sum(outcomes.values()) == RACE_RUNS, f"outcomes (final status counts): {outcomes}"
