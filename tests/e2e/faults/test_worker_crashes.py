"""Fault: worker SIGKILL and SIGTERM beyond T3.12 / T3.30 (issue 7, faults; scenarios.md §0.3 P5).

On the dedicated fault stack, whose only worker is killed (no lane needed: nothing else runs
there). With E13 `liveness_tuning` (stale after 3 s, checked every 1 s) an execution whose worker
died is `abandoned` within 6 s.

- SIGKILL with several executions in flight, more queued on the dead worker's queue, a restart,
  and a second SIGKILL while the restarted worker recovers that queue; then a final restart.
- SIGTERM with several executions in flight (the worker drains them), then SIGKILL during the
  drain; then a restart.

A webhook ledger counts side effects per execution: none lost, none run twice.
"""
import pytest

from tests.helpers.faults import wait_all_terminal
from tests.helpers.lanes import pid_alive, read_pid_file
from tests.helpers.polling import wait_for_execution, wait_until
from tests.helpers.scenario import all_items, secs, utcnow

pytestmark = [pytest.mark.resilience, pytest.mark.service_control, pytest.mark.slow,
              pytest.mark.xdist_group("faults"), pytest.mark.needs_extension("liveness_tuning")]

ABANDON_BOUND = 3 + 1 + 2  # heartbeat timeout + check interval + slack (as T3.12)
ABANDONED_ERROR = "Execution abandoned because its worker became unavailable while running"


def _assert_abandoned(c, exec_ids, t_kill, worker_id):
    for i in exec_ids:
        ex = wait_for_execution(c, i, "abandoned", timeout=ABANDON_BOUND + 4)
        took = secs(t_kill, ex["updated"])
        assert took <= ABANDON_BOUND, f"execution {i} abandoned {took:.2f} s after the kill"
        res = ex["result"]
        assert (res.get("error"), res.get("original_status"), (res.get("worker") or {}).get("id")) \
            == (ABANDONED_ERROR, "running", worker_id), f"execution {i} result: {res}"


def _row(c, wid: int) -> dict:
    body = c.get(f"/api/v1/workers/{wid}")
    return body["data"] if isinstance(body, dict) and "data" in body else body


def _worker_id(faults) -> int:
    name = faults.cfg.get("worker.name")
    rows = [w for w in all_items(faults.client.list_workers) if w.get("name") == name]
    assert len(rows) == 1, f"expected one worker row named {name}: {rows}"
    return int(rows[0]["id"])


def test_sigkill_in_flight_then_second_crash_during_recovery(faults, uid, tmp_path):
    """SIGKILL with three sleepers running: each is `abandoned` within 6 s (error, original_status
    running, worker id) and its process is gone; four executions submitted right after the kill
    wait on the dead worker's queue (`scheduled`), the worker restarts (same id) and claims
    them, and is SIGKILLed again while they run: the recovered sleepers are abandoned, the
    recovered quick ones completed before the second kill; after the final restart new work
    completes; every execution is terminal and the ledger has exactly one `done` entry per
    completed sleeper, none for abandoned ones, one per quick execution."""
    c = faults.client
    svc = faults.services
    ledger = faults.ledger(uid)
    wid = _worker_id(faults)
    sleeper, quick = faults.action("sleeper"), faults.action("post_webhook")

    pid_files = [str(tmp_path / f"s{k}.pid") for k in range(3)]
    first = [c.execute(sleeper, {"seconds": 30, "ledger_key": ledger.key, "pid_file": f})
             for f in pid_files]
    for ex in first:
        wait_for_execution(c, ex["id"], "running", timeout=20)
    procs = [wait_until(lambda f=f: read_pid_file(f), timeout=10, description=f"pid file {f}")
             for f in pid_files]

    t_kill = utcnow()
    svc.kill_session("worker")
    # submitted while the dead worker's heartbeat is still fresh: they go to its durable queue
    queued_sleepers = [c.execute(sleeper, {"seconds": 30, "ledger_key": ledger.key})
                       for _ in range(2)]
    queued_quick = [c.execute(quick, {"key": ledger.key, "tag": "q"}) for _ in range(2)]
    for ex in queued_sleepers + queued_quick:
        got = wait_until(lambda ex=ex: c.get_execution(ex["id"]), timeout=10,
                         done=lambda e: e["status"] == "scheduled",
                         description=f"execution {ex['id']} scheduled on the dead worker")
        assert got["worker"] == wid, f"execution {ex['id']} placed on {got['worker']}"
    _assert_abandoned(c, [e["id"] for e in first], t_kill, wid)
    for p in procs:
        assert not pid_alive(p["pid"]) and not pid_alive(p["child_pid"]), f"survivors: {p}"

    # recovery: restart, it consumes its queue; crash again while the recovered sleepers run
    faults.start_service("worker")
    assert _worker_id(faults) == wid, "the restarted worker got another id"
    for ex in queued_quick:
        wait_for_execution(c, ex["id"], "completed", timeout=20)
    for ex in queued_sleepers:
        wait_for_execution(c, ex["id"], "running", timeout=20)
    t_kill2 = utcnow()
    svc.kill_session("worker")
    _assert_abandoned(c, [e["id"] for e in queued_sleepers], t_kill2, wid)

    faults.start_service("worker")
    after = [c.execute(quick, {"key": ledger.key, "tag": "after"}) for _ in range(2)]
    everything = first + queued_sleepers + queued_quick + after
    final = wait_all_terminal(c, [e["id"] for e in everything], timeout=30)
    want = {**{e["id"]: "abandoned" for e in first + queued_sleepers},
            **{e["id"]: "completed" for e in queued_quick + after}}
    assert {i: e["status"] for i, e in final.items()} == want

    counts = ledger.wait_for([e["id"] for e in queued_quick + after], timeout=15)
    assert {i: counts[i] for i in want} == \
        {i: (1 if s == "completed" else 0) for i, s in want.items()}, f"ledger: {dict(counts)}"
    assert sum(counts.values()) == len(queued_quick + after), f"extra entries: {dict(counts)}"


def test_sigterm_drain_then_sigkill_during_drain(faults, uid):
    """SIGTERM with four sleepers in flight (two of 2 s, two of 20 s): the worker turns
    `inactive` and drains; the short ones complete during the drain (exactly once in the
    ledger); a SIGKILL during the drain crashes it: the long ones are `abandoned` within 6 s of
    the kill (not earlier: a fresh drain marker keeps them), the restarted worker (same id) runs
    new work, every execution is terminal, and nothing ran twice."""
    c = faults.client
    svc = faults.services
    ledger = faults.ledger(uid)
    wid = _worker_id(faults)
    sleeper = faults.action("sleeper")

    short = [c.execute(sleeper, {"seconds": 2, "ledger_key": ledger.key}) for _ in range(2)]
    long = [c.execute(sleeper, {"seconds": 20, "ledger_key": ledger.key}) for _ in range(2)]
    for ex in short + long:
        wait_for_execution(c, ex["id"], "running", timeout=20)

    svc.signal("worker", 15)
    wait_until(lambda: _row(c, wid), timeout=2,
               done=lambda w: w.get("status") == "inactive",
               description="the worker to read inactive after SIGTERM")
    for ex in short:
        wait_for_execution(c, ex["id"], "completed", timeout=10)
    assert svc.is_running("worker"), "the worker exited while it still had work to drain"
    for ex in long:
        assert c.get_execution(ex["id"])["status"] == "running", "a draining execution changed"

    t_kill = utcnow()
    svc.kill_session("worker")
    _assert_abandoned(c, [e["id"] for e in long], t_kill, wid)

    faults.start_service("worker")
    assert _worker_id(faults) == wid, "the restarted worker got another id"
    after = c.execute(faults.action("post_webhook"), {"key": ledger.key, "tag": "after"})
    wait_for_execution(c, after["id"], "completed", timeout=20)

    final = wait_all_terminal(c, [e["id"] for e in short + long + [after]], timeout=20)
    want = {**{e["id"]: "completed" for e in short + [after]},
            **{e["id"]: "abandoned" for e in long}}
    assert {i: e["status"] for i, e in final.items()} == want
    counts = ledger.wait_for([e["id"] for e in short + [after]], timeout=15)
    assert {i: counts[i] for i in want} == \
        {i: (1 if s == "completed" else 0) for i, s in want.items()}, f"ledger: {dict(counts)}"
