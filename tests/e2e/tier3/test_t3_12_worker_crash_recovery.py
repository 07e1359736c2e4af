"""T3.12 Worker crash recovery (scenarios.md T3.12).

Two lane workers private to the test (tests/helpers/lanes.py): W_a (`e2e_node: a`) and W_b
(`e2e_node: b`), both tainted `e2e_lane=<uid>:NoSchedule`, so only this test's executions (which
carry the lane's `worker_selector` and `worker_tolerations`) run there. W_a is SIGKILLed, with its
whole session, while it runs a 30 s sleeper. With E13 `liveness_tuning` (stale after 3 s, checked
every 1 s) the executor marks the execution `abandoned` within 6 s and raises a `core.alert`; new
work goes to W_b; work stuck on W_a's queue runs once W_a is back. A webhook ledger counts side
effects per execution (P5): nothing lost, nothing run twice.
"""
import os

import pytest

from tests.helpers.lanes import lanes, pid_alive, read_pid_file  # noqa: F401  (fixture)
from tests.helpers.lanes import Ledger
from tests.helpers.polling import TERMINAL, wait_for_execution, wait_for_status, wait_until
from tests.helpers.scenario import all_items, parse_ts, secs, utcnow

pytestmark = [pytest.mark.tier3, pytest.mark.resilience, pytest.mark.service_control,
              pytest.mark.serial, pytest.mark.xdist_group("services"),
              pytest.mark.needs_extension("liveness_tuning")]

ABANDONED_ERROR = "Execution abandoned because its worker became unavailable while running"
ABANDON_BOUND = 3 + 1 + 2  # heartbeat timeout + check interval + slack (scenarios.md T3.12)


def _alert_for(admin, execution_id: int, since) -> list[dict]:
    """core.alert events created since `since` about `execution_id` (newest first page)."""
    page = admin.list_events(trigger_ref="core.alert", per_page=100)
    out = []
    for summary in page.get("items") or []:
        if parse_ts(summary["created"]) < since:
            continue
        ev = admin.get_event(summary["id"])
        if (ev.get("payload") or {}).get("component_id") == execution_id:
            out.append(ev)
    return out


def test_killed_worker_execution_is_abandoned_and_work_resumes(admin, make, uid, e2e_pack,
                                                               services, lanes, tmp_path):
    """T3.12 Worker crash recovery: a sleeper running on W_a becomes `abandoned` within 6 s of
    SIGKILL (upstream's result: error, abandoned_by, original_status running, worker.id W_a) with
    a core.alert (failure_type execution_abandoned_worker_unavailable, component_id = it); W_a
    reads inactive or heartbeat_stale; executions submitted after the abandon run on W_b;
    executions submitted right after the kill either ran on W_b or waited on W_a's queue and ran
    once W_a was restarted (same worker id); every submitted execution ends terminal, each N is in
    the ledger exactly once, the killed sleeper's processes are gone and its completion marker was
    never written, and it stays abandoned."""
    w_a = lanes.start_worker("a")
    w_b = lanes.start_worker("b")
    trigger, key = make.webhook_trigger(slug="ledger")
    ledger = Ledger(admin, trigger, key)
    pid_file = str(tmp_path / "l.pid")

    long = lanes.execute(f"{e2e_pack}.sleeper",
                         {"seconds": 30, "pid_file": pid_file, "ledger_key": key}, node="a")
    long = wait_for_execution(admin, long["id"], "running", timeout=20)
    assert long["worker"] == w_a.id, f"expected L on W_a ({w_a.id}), got worker {long['worker']}"
    pids = wait_until(lambda: read_pid_file(pid_file), timeout=10,
                      description="the sleeper's pid file")

    t_kill = utcnow()
    services.kill_session(w_a.name)
    assert not services.is_running(w_a.name), "W_a still runs after kill_session"
    early = [lanes.execute(f"{e2e_pack}.post_webhook", {"key": key, "tag": "n"})
             for _ in range(3)]

    abandoned = wait_for_execution(admin, long["id"], "abandoned", timeout=ABANDON_BOUND + 2)
    took = secs(t_kill, abandoned["updated"])
    assert took <= ABANDON_BOUND, f"abandoned {took:.2f} s after the kill (bound {ABANDON_BOUND} s)"
    res = abandoned["result"]
    assert res.get("error") == ABANDONED_ERROR, f"result: {res}"
    assert res.get("abandoned_by") == "execution_timeout_monitor", f"result: {res}"
    assert res.get("original_status") == "running", f"result: {res}"
    assert (res.get("worker") or {}).get("id") == w_a.id, f"result.worker: {res.get('worker')}"

    alerts = wait_until(lambda: _alert_for(admin, long["id"], t_kill), timeout=5,
                        description=f"a core.alert about execution {long['id']}")
    assert len(alerts) == 1, f"expected one alert about execution {long['id']}, got {alerts}"
    assert alerts[0]["payload"].get("failure_type") == "execution_abandoned_worker_unavailable", (
        f"alert payload: {alerts[0]['payload']}")

    # heartbeat_age_seconds is whole seconds and stale means age > 3, so the API may lag the
    # monitor's exact comparison by up to 1 s.
    wait_until(w_a.row, timeout=2,
               done=lambda r: r.get("status") == "inactive" or r.get("heartbeat_stale") is True,
               description=f"W_a ({w_a.id}) to read inactive or heartbeat_stale")

    late = [lanes.execute(f"{e2e_pack}.post_webhook", {"key": key, "tag": "n"}) for _ in range(2)]
    for ex in late:
        done = wait_for_execution(admin, ex["id"], "completed", timeout=20)
        assert done["worker"] == w_b.id, f"execution {ex['id']} ran on {done['worker']}, not W_b"

    placed = {}
    for ex in early:
        cur = wait_for_status(lambda ex=ex: admin.get_execution(ex["id"]),
                              {"completed", "scheduled"}, timeout=20, terminal=TERMINAL,
                              description=f"early execution {ex['id']}")
        if cur["status"] == "completed":
            assert cur["worker"] == w_b.id, f"execution {ex['id']} completed on {cur['worker']}"
        else:
            assert cur["worker"] == w_a.id, f"execution {ex['id']} waits on {cur['worker']}"
        placed[ex["id"]] = cur["status"]

    restarted = lanes.restart(w_a)
    assert restarted.id == w_a.id, f"W_a came back as worker {restarted.id}, not {w_a.id}"
    for ex in early:
        done = wait_for_execution(admin, ex["id"], "completed", timeout=20)
        want = w_a.id if placed[ex["id"]] == "scheduled" else w_b.id
        assert done["worker"] == want, f"execution {ex['id']}: worker {done['worker']}, want {want}"

    n_ids = [ex["id"] for ex in early + late]
    counts = ledger.wait_for(n_ids, tag="n", timeout=15)
    assert all(counts[i] == 1 for i in n_ids), f"ledger counts per execution: {dict(counts)}"
    assert long["id"] not in ledger.counts(), "the killed sleeper wrote its completion marker"
    for ex_id in [long["id"], *n_ids]:
        assert admin.get_execution(ex_id)["status"] in TERMINAL, f"execution {ex_id} not terminal"
    assert admin.get_execution(long["id"])["status"] == "abandoned", "L left `abandoned`"
    assert not pid_alive(pids.get("pid")) and not pid_alive(pids.get("child_pid")), (
        f"the killed sleeper's processes survive: {pids}")


@pytest.mark.needs_extension("action_retry")
def test_abandoned_execution_is_retried_on_another_worker(admin, make, uid, services, lanes,
                                                          tmp_path):
    """T3.12 Worker crash recovery, retry part (E2 action_retry): an action with retry {count: 1,
    delay: 0} whose only lane worker is killed mid-run is abandoned, and its retry
    (original_execution = it, retry_reason "abandoned") completes on the other lane worker."""
    marker = str(tmp_path / "attempted")
    action = make.action(
        slug="crashy", runtime_ref="core.shell", retry={"count": 1, "delay": 0},
        param_schema={"marker": {"type": "string", "required": True}},
        entrypoint='if [ -e "$marker" ]; then echo "retried-ok"; else touch "$marker"; sleep 30; fi')
    w_a = lanes.start_worker("a")
    first = lanes.execute(action["ref"], {"marker": marker})
    first = wait_for_execution(admin, first["id"], "running", timeout=20)
    assert first["worker"] == w_a.id, f"only W_a is in the lane yet, got worker {first['worker']}"
    wait_until(lambda: os.path.exists(marker), timeout=10, description="the first attempt's marker")
    w_b = lanes.start_worker("b")

    services.kill_session(w_a.name)
    wait_for_execution(admin, first["id"], "abandoned", timeout=ABANDON_BOUND + 2)
    retries = wait_until(
        lambda: [e for e in all_items(admin.list_executions, action_ref=action["ref"])
                 if e["id"] != first["id"]],
        timeout=10, description=f"a retry of execution {first['id']}")
    assert len(retries) == 1, f"expected exactly one retry, got {retries}"
    retry = wait_for_execution(admin, retries[0]["id"], "completed", timeout=20)
    assert retry.get("original_execution") == first["id"], f"retry: {retry}"
    assert retry.get("retry_reason") == "abandoned", f"retry: {retry}"
    assert retry["worker"] == w_b.id, f"retry ran on {retry['worker']}, not W_b ({w_b.id})"
    assert retry["result"].get("stdout", "").strip() == "retried-ok", f"retry result: {retry['result']}"
    assert admin.get_execution(first["id"])["status"] == "abandoned", "the first attempt changed"
