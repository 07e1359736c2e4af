"""T3.30 Graceful service shutdown (scenarios.md T3.30).

Lane workers W_a (`max_concurrent_tasks: 1`) and W_b, private to the test (tests/helpers/lanes.py).
W_a runs L (`sleeper {seconds: 4}`) with Q1 queued behind it when it gets SIGTERM. Upstream's stop
sequence: mark the worker inactive, stop the heartbeat, drain in-flight work (up to
`worker.shutdown_timeout`), stop consuming so unacked messages are requeued, close MQ and DB, exit 0.
"""
import re
import signal

import pytest

from tests.helpers.lanes import Ledger, lanes  # noqa: F401  (fixture)
from tests.helpers.polling import TERMINAL, wait_for_execution, wait_for_status, wait_until
from tests.helpers.scenario import parse_ts, secs, utcnow

pytestmark = [pytest.mark.tier3, pytest.mark.resilience, pytest.mark.service_control,
              pytest.mark.serial, pytest.mark.xdist_group("services")]

_EXIT_LINE = re.compile(r"^(\S+Z) .*manager: (\S+) \(pid \d+\) exited with code (-?\d+)")
_ERROR = re.compile(r"\b(ERROR|CRITICAL|FATAL)\b|Traceback \(most recent call last\)")


def _exit_record(services, name: str, since) -> tuple[str, int] | None:
    """(timestamp, code) of the service manager's exit line for `name` since `since`."""
    for line in (services.log_slice(name, since) or "").splitlines():
        m = _EXIT_LINE.match(line)
        if m and m.group(2) == name:
            return m.group(1), int(m.group(3))
    return None


def test_sigterm_drains_in_flight_work_and_takes_no_new_work(admin, make, uid, e2e_pack,
                                                             services, lanes):
    """T3.30 Graceful service shutdown: after SIGTERM, W_a reads `inactive` within 1 s and its
    last_heartbeat stops advancing; L completes on W_a with its full output (`done`); N1-N3,
    submitted after the signal, all complete on W_b; W_a exits with code 0 within 3 s after the
    last execution it ran, well inside shutdown_timeout; its log has no ERROR and ends with its
    shutdown line; Q1 completes exactly once (ledger), drained on W_a or requeued and run after
    the restart; no lane execution is left non-terminal."""
    w_a = lanes.start_worker("a", max_concurrent_tasks=1)
    w_b = lanes.start_worker("b")
    trigger, key = make.webhook_trigger(slug="ledger")
    ledger = Ledger(admin, trigger, key)

    long = lanes.execute(f"{e2e_pack}.sleeper", {"seconds": 4, "ledger_key": key}, node="a")
    long = wait_for_execution(admin, long["id"], "running", timeout=20)
    assert long["worker"] == w_a.id, f"expected L on W_a ({w_a.id}), got {long['worker']}"
    queued = lanes.execute(f"{e2e_pack}.sleeper", {"seconds": 0.2, "ledger_key": key}, node="a")
    queued = wait_for_status(lambda: admin.get_execution(queued["id"]), "scheduled", timeout=10,
                             terminal=TERMINAL, description=f"Q1 {queued['id']}")
    assert queued["worker"] == w_a.id, f"expected Q1 queued on W_a, got {queued['worker']}"

    t_sig = utcnow()
    services.signal(w_a.name, signal.SIGTERM)
    inactive = wait_until(w_a.row, timeout=3, done=lambda r: r.get("status") == "inactive",
                          description=f"W_a ({w_a.id}) to read inactive")
    seen_inactive = utcnow()
    assert secs(t_sig, seen_inactive) <= 1.0, (
        f"W_a read inactive only {secs(t_sig, seen_inactive):.2f} s after SIGTERM")
    heartbeat = inactive.get("last_heartbeat")

    news = [lanes.execute(f"{e2e_pack}.post_webhook", {"key": key, "tag": "n"}) for _ in range(3)]
    for ex in news:
        done = wait_for_execution(admin, ex["id"], "completed", timeout=20)
        assert done["worker"] == w_b.id, f"N {ex['id']} ran on {done['worker']}, not W_b ({w_b.id})"

    long = wait_for_execution(admin, long["id"], "completed", timeout=15)
    assert long["worker"] == w_a.id, f"L moved to worker {long['worker']}"
    assert long["result"].get("stdout", "").splitlines()[-1:] == ["done"], (
        f"L's output is not complete: {long['result']}")

    code = services.wait_exit(w_a.name, timeout=30)
    assert code == 0, f"W_a exit code {code}, expected 0"
    record = _exit_record(services, w_a.name, t_sig)
    assert record is not None and record[1] == 0, f"no exit line with code 0 for {w_a.name}"
    exited_at = parse_ts(record[0])
    q_now = admin.get_execution(queued["id"])
    drained = q_now["status"] == "completed"
    last_ran = q_now if drained else long
    gap = secs(last_ran["updated"], exited_at)
    assert 0 <= gap <= 3.0, (
        f"W_a exited {gap:.2f} s after its last execution ({last_ran['id']}) ended; expected 0-3 s")
    assert secs(t_sig, exited_at) < 30, "W_a exited only at its shutdown_timeout"
    assert q_now["status"] in ("completed", "scheduled"), f"Q1 is {q_now['status']}: {q_now}"

    w_a_log = services.log_slice(w_a.name, w_a.started, exited_at)
    problems = [line for line in w_a_log.splitlines() if _ERROR.search(line)]
    assert problems == [], f"W_a logged errors: {problems[:10]}"
    own = [line for line in w_a_log.splitlines() if "manager:" not in line]
    assert own and own[-1].rstrip().endswith(f"worker {w_a.name!r} stopped"), (
        f"W_a's log does not end with its shutdown line: {own[-3:]}")
    assert w_a.row().get("last_heartbeat") == heartbeat, "W_a's heartbeat advanced after SIGTERM"

    if not drained:
        restarted = lanes.restart(w_a)
        assert restarted.id == w_a.id, f"W_a came back as worker {restarted.id}"
    q_done = wait_for_execution(admin, queued["id"], "completed", timeout=20)
    assert q_done["worker"] == w_a.id, f"Q1 ran on {q_done['worker']}, not W_a"

    counts = ledger.wait_for([long["id"], queued["id"]], tag="done", timeout=10)
    assert counts[long["id"]] == 1 and counts[queued["id"]] == 1, (
        f"ledger 'done' entries per execution: {dict(counts)}")
    n_counts = ledger.wait_for([ex["id"] for ex in news], tag="n", timeout=10)
    assert all(n_counts[ex["id"]] == 1 for ex in news), f"ledger 'n' entries: {dict(n_counts)}"
    for ex_id in [long["id"], queued["id"], *[ex["id"] for ex in news]]:
        assert admin.get_execution(ex_id)["status"] in TERMINAL, f"execution {ex_id} not terminal"
