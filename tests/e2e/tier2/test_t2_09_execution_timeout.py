"""T2.9 Execution timeout policy (scenarios.md T2.9).

Upstream's timeout is the workflow task's `timeout` (there is no workflow-wide timeout; the task
level is upstream's workflow-level mechanism). When it expires the worker sends SIGTERM to the
action's process group, waits 5 s (`worker.kill_grace_seconds`), then SIGKILL; the execution ends
`failed` with `exit_code -1` and `error "Execution timed out after N seconds"` (behavior.md §2.5).
The action-level `timeout_seconds` is extension E1 `action_timeout`; the system default
(`worker.task_timeout`, 300 s) is not exercised here. Scaled timings: the plan's 60 s sleep / 5 s
timeout become 30 s / 2 s.

`e2e_core.sleeper` writes its own PID and its `sleep` child's PID to `pid_file`, prints
`tick k` every 0.5 s and, on SIGTERM, `cleanup-ran` (or ignores TERM with `ignore_term`).
"""
import json
import os
from pathlib import Path

import pytest

from tests.helpers.polling import TERMINAL, wait_for_execution, wait_for_items, wait_until
from tests.helpers.scenario import secs
from tests.helpers.workflows import children, task

pytestmark = [pytest.mark.tier2, pytest.mark.runner, pytest.mark.workflow, pytest.mark.limits]

TIMEOUT = 2
GRACE = 5  # worker.kill_grace_seconds of the embedded profile (upstream: 5 s)
# duration_ms bounds: the timeout, plus 1.5 s for the kill and the capture (plus the grace
# period when TERM is ignored)
BOUNDS = {False: (TIMEOUT * 1000, TIMEOUT * 1000 + 1500),
          True: ((TIMEOUT + GRACE) * 1000, (TIMEOUT + GRACE) * 1000 + 1500)}
VARIANTS = [pytest.param(False, id="sigterm"), pytest.param(True, id="ignore_term_sigkill")]


def _sleeper_params(pid_file: Path, ignore_term: bool) -> dict:
    return {"seconds": 30, "tick": 0.5, "ignore_term": ignore_term, "pid_file": str(pid_file)}


def _assert_killed(execution: dict, ignore_term: bool) -> None:
    result = execution["result"]
    assert execution["status"] == "failed", f"expected `failed`, got {execution['status']}: {result}"
    assert (result.get("error"), result.get("exit_code"), result.get("succeeded")) == \
        (f"Execution timed out after {TIMEOUT} seconds", -1, False), f"unexpected result: {result}"
    low, high = BOUNDS[ignore_term]
    assert low <= result["duration_ms"] <= high, \
        f"duration_ms {result['duration_ms']} outside [{low}, {high}] (timeout {TIMEOUT} s" \
        f"{', TERM ignored, SIGKILL after the grace period' if ignore_term else ''})"
    stdout = result.get("stdout") or ""
    assert "tick 1" in stdout and "tick 2" in stdout, f"ticks before the kill were lost: {stdout!r}"
    assert "done" not in stdout.split(), f"the action ran to its end: {stdout!r}"
    if ignore_term:
        assert "cleanup-ran" not in stdout, f"TERM was not ignored: {stdout!r}"
    else:
        assert stdout.rstrip().endswith("cleanup-ran"), f"the TERM handler did not run: {stdout!r}"


def _assert_stream(exec_stream, exec_id: int) -> None:
    exec_stream.wait_for_status(exec_id, "failed", timeout=10)
    chain = exec_stream.statuses_for(exec_id)
    assert chain[-2:] == ["running", "failed"] and \
        [s for s in chain if s in TERMINAL] == ["failed"], \
        f"expected running -> failed and no other terminal status, the stream showed {chain}"


def _assert_no_leftovers(target, pid_file: Path) -> None:
    """Embedded stack only: the recorded PIDs are gone (no /proc entry, hence no zombie)."""
    if not target.embedded:
        return
    pids = json.loads(pid_file.read_text(encoding="utf-8"))
    wanted = [int(pids["pid"]), int(pids["child_pid"])]

    def alive():
        out = {}
        for pid in wanted:
            status = Path(f"/proc/{pid}/status")
            if status.exists():
                try:
                    state = next((line for line in status.read_text().splitlines()
                                  if line.startswith("State:")), "State: ?")
                except OSError:  # reaped between the check and the read: not alive
                    continue
                out[pid] = state
        return out

    left = wait_until(alive, timeout=2, done=lambda found: not found,
                      description=f"action processes {wanted} to be gone (no /proc entry)")
    assert left == {}, left


def _assert_worker_healthy(admin, uid) -> None:
    """A follow-up core.echo completes within 3 s: the worker survived the kill."""
    echo = admin.execute("core.echo", {"message": f"after-timeout-{uid}"})
    echo = wait_for_execution(admin, echo["id"], "completed", timeout=10)
    took = secs(echo["created"], echo["updated"])
    assert echo["result"].get("stdout") == f"after-timeout-{uid}" and took < 3.0, \
        f"follow-up core.echo took {took:.2f} s: {echo}"


@pytest.mark.parametrize("ignore_term", VARIANTS)
def test_workflow_task_timeout_kills_the_process_group(admin, make, uid, e2e_pack, exec_stream,
                                                       target, tmp_path, ignore_term):
    """T2.9 Execution timeout, workflow task (upstream): a task with timeout 2 s runs sleeper
    (30 s); the child ends failed with "Execution timed out after 2 seconds", exit_code -1,
    duration_ms in [2000, 3500] ([7000, 8500] when TERM is ignored and SIGKILL follows the 5 s
    grace), keeps the ticks printed before the kill, runs its TERM handler (or not, when
    ignored); the stream shows running -> failed with no other terminal status; the parent
    fails; the sleeper and its child process are gone; a follow-up core.echo takes < 3 s."""
    pid_file = tmp_path / "sleeper.pids"
    wf = make.workflow(
        ref=f"{e2e_pack}.slow_wf_{uid}", pack_ref=e2e_pack, label=f"slow wf {uid}",
        definition={"version": "1.0.0", "tasks": [
            task("slow", f"{e2e_pack}.sleeper", timeout=TIMEOUT,
                 input=_sleeper_params(pid_file, ignore_term))]})
    pid = admin.execute(wf["ref"], {})["id"]
    parent = wait_for_execution(admin, pid, "failed", timeout=30)
    assert parent["result"]["error"] == "Workflow failed: 1 task(s) failed: slow", parent["result"]

    kids = children(admin, pid)
    assert len(kids) == 1 and kids[0]["workflow_task"]["timeout_seconds"] == TIMEOUT, kids
    child = kids[0]
    _assert_killed(child, ignore_term)
    _assert_stream(exec_stream, child["id"])
    _assert_no_leftovers(target, pid_file)
    _assert_worker_healthy(admin, uid)


@pytest.mark.needs_extension("action_timeout")
@pytest.mark.parametrize("ignore_term", VARIANTS)
def test_action_level_timeout_kills_the_process_group(admin, make, uid, e2e_pack, exec_stream,
                                                      target, tmp_path, ignore_term):
    """T2.9 Execution timeout, action level (extension E1 action_timeout): an action created with
    timeout_seconds 2 (echoed by the API) running sleeper.py (30 s) top level ends failed with
    "Execution timed out after 2 seconds", exit_code -1 and the same duration bounds, keeps its
    ticks; the stream shows running -> failed only; no process is left; the worker stays
    healthy."""
    pid_file = tmp_path / "sleeper.pids"
    action = make.action(
        ref=f"{e2e_pack}.slow_{uid}", pack_ref=e2e_pack, label=f"slow {uid}",
        runtime_ref="core.python", entrypoint="sleeper.py", timeout_seconds=TIMEOUT,
        param_schema={"seconds": {"type": "number", "required": True},
                      "tick": {"type": "number"}, "ignore_term": {"type": "boolean"},
                      "pid_file": {"type": "string"}})
    assert action["timeout_seconds"] == TIMEOUT, action

    execution = admin.execute(action["ref"], _sleeper_params(pid_file, ignore_term))
    execution = wait_for_execution(admin, execution["id"], "failed", timeout=30)
    assert execution["parent"] is None and "workflow_task" not in execution, execution
    _assert_killed(execution, ignore_term)
    _assert_stream(exec_stream, execution["id"])
    _assert_no_leftovers(target, pid_file)
    # the timeout ended the attempt: nothing retried it (no retry policy on the action)
    assert [e["id"] for e in wait_for_items(lambda: admin.list_executions(action_ref=action["ref"]),
                                            1, timeout=5, description="executions of the action")] \
        == [execution["id"]]
    _assert_worker_healthy(admin, uid)
