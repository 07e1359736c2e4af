"""Worker liveness (behavior.md §2.7): the executor marks workers that stopped heartbeating
`inactive` every check interval. With E13 `liveness_tuning` a worker is stale after
`executor.worker_heartbeat_timeout` = 3 s and the monitor runs every
`executor.timeout_check_interval` = 1 s (upstream: 90 s / 60 s).

An idle lane worker (tests/helpers/lanes.py, tainted so no other test's work lands on it) is
SIGKILLed with its session. Nothing else writes its row: a killed worker cannot mark itself, so
`inactive` can only come from the executor.
"""
import pytest

from tests.helpers.lanes import lanes  # noqa: F401  (fixture)
from tests.helpers.polling import wait_until
from tests.helpers.scenario import all_items, parse_ts, secs, utcnow

pytestmark = [pytest.mark.resilience, pytest.mark.service_control, pytest.mark.serial,
              pytest.mark.xdist_group("services"), pytest.mark.needs_extension("liveness_tuning")]

STALE_AFTER = 3.0  # executor.worker_heartbeat_timeout
INTERVAL = 1.0     # executor.timeout_check_interval
SLACK = 2.0        # scheduling jitter on a loaded 2-core host
HEARTBEAT = 1.0    # worker.heartbeat_interval


def test_killed_worker_is_marked_inactive_by_the_executor(admin, services, lanes):
    """Worker liveness: a live lane worker reads `active` with a fresh heartbeat; after SIGKILL
    GET /api/v1/workers/{id} (and the list filtered by status=inactive) shows it `inactive`,
    health_state offline, no earlier than 3 s after its last heartbeat (not before it went stale)
    and within 3 + 1 + 2 s of it; its last_heartbeat no longer moves. Restarted under the same
    name it is the same worker id and reads `active` again within 2 heartbeats + slack."""
    w = lanes.start_worker("a")
    live = wait_until(w.row, timeout=5, done=lambda r: r.get("status") == "active"
                      and r.get("heartbeat_stale") is False,
                      description=f"lane worker {w.id} active with a fresh heartbeat")
    assert live["health_state"] == "active", f"live worker: {live}"

    services.kill_session(w.name)
    t_kill = utcnow()
    assert not services.is_running(w.name), "the lane worker still runs after kill_session"

    gone = wait_until(w.row, timeout=STALE_AFTER + INTERVAL + SLACK + HEARTBEAT + 2,
                      done=lambda r: r.get("status") == "inactive",
                      description=f"worker {w.id} marked inactive")
    t_seen = utcnow()
    last = parse_ts(gone["last_heartbeat"])
    assert secs(last, t_kill) <= HEARTBEAT + SLACK, \
        f"last heartbeat {gone['last_heartbeat']} is not from just before the kill ({t_kill})"
    silent_for = secs(last, t_seen)
    assert silent_for >= STALE_AFTER, \
        f"marked inactive after only {silent_for:.2f} s of silence (stale after {STALE_AFTER} s)"
    assert silent_for <= STALE_AFTER + INTERVAL + SLACK + 1.0, \
        f"marked inactive {silent_for:.2f} s after its last heartbeat " \
        f"(bound {STALE_AFTER + INTERVAL + SLACK + 1.0} s: stale age + interval + slack + poll)"
    assert gone["health_state"] == "offline" and gone["heartbeat_stale"] is True, f"row: {gone}"
    items = all_items(lambda page, per_page, **kw: admin.get("/api/v1/workers", page=page,
                                                             page_size=per_page, **kw),
                      status="inactive")
    assert w.id in [x["id"] for x in items], \
        f"worker {w.id} missing from GET /workers?status=inactive: {[x['id'] for x in items]}"
    assert w.row()["last_heartbeat"] == gone["last_heartbeat"], "a killed worker heartbeated"

    back = lanes.restart(w)
    assert back.id == w.id, f"the restarted worker is {back.id}, not {w.id}"
    again = wait_until(back.row, timeout=2 * HEARTBEAT + SLACK,
                       done=lambda r: r.get("status") == "active",
                       description=f"worker {w.id} active again after the restart")
    assert again["heartbeat_stale"] is False and parse_ts(again["last_heartbeat"]) > last, \
        f"restarted worker row: {again}"
