"""Fault: notifier restarted (issue 7, faults).

On the dedicated fault stack a WebSocket client is subscribed (P7 probe) and a sleeper runs; the
notifier is stopped (SIGTERM, or SIGKILL as a crash) and started again. The client sees its
connection end; while the notifier is down the API answers and executions run; a client that
reconnects after the restart gets notifications again. API, executor, worker and sensor are
untouched (same pids).
"""
import pytest

from tests.helpers.faults import service_pids
from tests.helpers.notifier import NotifierListener
from tests.helpers.polling import wait_for_execution, wait_until
from tests.helpers.scenario import parse_ts, utcnow

pytestmark = [pytest.mark.resilience, pytest.mark.service_control, pytest.mark.websocket,
              pytest.mark.notifications, pytest.mark.xdist_group("faults")]

SLEEP = 4  # s: the sleeper runs across the notifier's downtime


def _completed(exec_id):
    return lambda m: (m.get("type") == "notification" and m.get("entity_id") == exec_id
                      and (m.get("payload") or {}).get("status") == "completed")


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_notifier_restart_clients_reconnect_executions_unaffected(faults, uid, how):
    """Notifier restart (SIGTERM / SIGKILL): the subscribed client's connection closes; during the
    downtime /health and POST /executions/execute answer and that execution completes with an
    `updated` inside the downtime; the sleeper running across the restart completes; a client
    connecting after the restart receives the `completed` notification of new work; the other
    services keep their pids."""
    c = faults.client
    svc = faults.services
    others = {k: v for k, v in service_pids(svc).items() if k != "notifier"}
    ws = NotifierListener(faults.ws_url, c.token)
    ws2 = None
    try:
        ws.subscribe("entity_type:execution")
        ws.prove_live(lambda: c.execute("core.noop", {}))
        sleeper = c.execute(faults.action("sleeper"), {"seconds": SLEEP})
        wait_for_execution(c, sleeper["id"], "running", timeout=20)

        t_down = utcnow()
        if how == "sigkill":
            svc.kill_session("notifier")
        else:
            assert svc.stop("notifier", grace=10) == 0, "notifier did not exit 0 on SIGTERM"
        assert not svc.is_running("notifier")
        assert ws.closed.wait(5), "the WebSocket client was not disconnected by the notifier stop"

        assert c.raw("GET", "/health", auth=False).status_code == 200
        during = c.execute("core.noop", {})
        during = wait_for_execution(c, during["id"], "completed", timeout=20)
        faults.start_service("notifier")
        t_up = utcnow()
        assert t_down < parse_ts(during["updated"]) < t_up, (
            f"execution {during['id']} did not complete while the notifier was down")

        ws2 = wait_until(lambda: NotifierListener(faults.ws_url, c.token), timeout=10,
                         description="a WebSocket client to reconnect to the restarted notifier")
        ws2.subscribe("entity_type:execution")
        ws2.prove_live(lambda: c.execute("core.noop", {}))
        fresh = c.execute("core.noop", {"message": uid})
        ws2.wait_for(_completed(fresh["id"]), timeout=10,
                     description=f"notification of execution {fresh['id']} completed")
        done = wait_for_execution(c, sleeper["id"], "completed", timeout=SLEEP + 15)
        assert "done" in (done["result"].get("stdout") or ""), f"sleeper result: {done['result']}"
        if parse_ts(done["updated"]) > t_up:
            ws2.wait_for(_completed(sleeper["id"]), timeout=10,
                         description=f"notification of sleeper {sleeper['id']} completed")
    finally:
        ws.close()
        if ws2 is not None:
            ws2.close()
    assert {k: v for k, v in service_pids(svc).items() if k != "notifier"} == others, (
        "a service other than the notifier was restarted")
