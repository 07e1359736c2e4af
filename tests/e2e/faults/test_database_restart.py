"""Fault: PostgreSQL restarted (issue 7, faults).

On the dedicated fault stack: data is written (a key, a completed execution, its ledger event), a
sleeper runs and a notifier WebSocket is subscribed; then PostgreSQL is stopped. During the
outage every API request that needs the database fails fast with 503 (never hangs); liveness
stays up. PostgreSQL starts again on the same data: the services reconnect by themselves (same
pids), nothing written before the outage is lost, the sleeper that ran across the outage is
recorded `completed`, new work runs, and the already-connected WebSocket client gets the new
work's notifications (the notifier listens again).
"""
import pytest

from tests.helpers.faults import service_pids, timed
from tests.helpers.notifier import NotifierListener
from tests.helpers.polling import wait_for_execution, wait_until
from tests.helpers.scenario import utcnow

pytestmark = [pytest.mark.resilience, pytest.mark.service_control, pytest.mark.slow,
              pytest.mark.db, pytest.mark.xdist_group("faults")]

FAST = 2.0     # s: "fails fast": a refused database connection answers at once (connect_timeout 5)
SLEEP = 8      # s: the sleeper outlives the outage's start


def test_postgres_restart_fails_fast_and_loses_nothing(faults, uid):
    """PostgreSQL restart: during the outage GET/POST API requests and /health/ready answer 503
    (`/health/detailed`: database `disconnected`) within 2 s each and /health/live 200; after
    the restart the same requests succeed, the key, the completed execution and its ledger event
    written before are unchanged, the sleeper running across the outage ends `completed` with
    its `done` output, a new execution completes and its notification reaches the WebSocket
    client connected before the outage; no service was restarted."""
    c = faults.client
    ledger = faults.ledger(uid)
    key_ref = f"{faults.pack}.dbkey_{uid}"
    key = c.create_key(ref=key_ref, name=f"dbkey_{uid}", owner_type="pack",
                       owner_pack_ref=faults.pack, value=f"value-{uid}")
    before = c.execute(faults.action("post_webhook"), {"key": ledger.key, "tag": "before"})
    before = wait_for_execution(c, before["id"], "completed", timeout=20)
    entries_before = ledger.wait_for([before["id"]], timeout=10)
    pids = service_pids(faults.services)

    ws = NotifierListener(faults.ws_url, c.token)
    try:
        ws.subscribe("entity_type:execution")
        ws.prove_live(lambda: c.execute("core.noop", {}))
        sleeper = c.execute(faults.action("sleeper"), {"seconds": SLEEP})
        wait_for_execution(c, sleeper["id"], "running", timeout=20)

        faults.stop_postgres()
        t_down = utcnow()
        calls = {
            "GET /api/v1/executions/{id}": lambda: c.raw("GET", f"/api/v1/executions/{before['id']}"),
            "POST /api/v1/executions/execute": lambda: c.raw(
                "POST", "/api/v1/executions/execute",
                json={"action_ref": faults.action("post_webhook"),
                      "parameters": {"key": ledger.key, "tag": "outage"}}),
            "GET /api/v1/keys/{ref}": lambda: c.raw("GET", f"/api/v1/keys/{key_ref}"),
            "POST /auth/login": lambda: c.raw("POST", "/auth/login", auth=False,
                                              json={"login": "test@attune.local",
                                                    "password": "TestPass123!"}),
            "GET /health/ready": lambda: c.raw("GET", "/health/ready", auth=False),
            "GET /health/detailed": lambda: c.raw("GET", "/health/detailed", auth=False),
        }
        for what, call in calls.items():
            took, resp = timed(call)
            assert not isinstance(resp, Exception), f"{what} during the outage raised {resp!r}"
            assert resp.status_code == 503, (
                f"{what} during the outage: HTTP {resp.status_code} {resp.text[:300]}")
            assert took <= FAST, f"{what} took {took:.2f} s during the outage (bound {FAST} s)"
        detail = c.raw("GET", "/health/detailed", auth=False).json()
        assert detail.get("database") == "disconnected", f"/health/detailed: {detail}"
        took, live = timed(lambda: c.raw("GET", "/health/live", auth=False))
        assert live.status_code == 200 and took <= FAST, f"/health/live: {live} in {took:.2f} s"

        faults.start_postgres()
        t_up = utcnow()
        # reconnection: the API answers again, and then keeps answering (no stale pooled connection)
        wait_until(lambda: c.raw("GET", f"/api/v1/executions/{before['id']}").status_code == 200,
                   timeout=15, description="the API to answer after PostgreSQL is back")
        statuses = [c.raw("GET", f"/api/v1/executions/{before['id']}").status_code
                    for _ in range(25)]
        assert statuses == [200] * 25, f"requests after the restart: {statuses}"

        assert c.get_key(key_ref)["value"] == key["value"], "the key written before changed"
        again = c.get_execution(before["id"])
        assert (again["status"], again["result"]) == (before["status"], before["result"]), (
            f"execution {before['id']} changed: {again}")
        assert ledger.counts() == entries_before, "ledger events written before changed"

        done = wait_for_execution(c, sleeper["id"], "completed", timeout=SLEEP + 20)
        assert "done" in (done["result"].get("stdout") or ""), f"sleeper result: {done['result']}"

        start = len(ws.messages)
        after = c.execute(faults.action("post_webhook"), {"key": ledger.key, "tag": "after"})
        wait_for_execution(c, after["id"], "completed", timeout=30)
        assert ledger.wait_for([after["id"]], tag="after", timeout=10)[after["id"]] == 1
        ws.wait_for(lambda m: m.get("type") == "notification" and m.get("entity_id") == after["id"]
                    and (m.get("payload") or {}).get("status") == "completed",
                    since=start, timeout=10,
                    description=f"notification of execution {after['id']} completed after the restart")
        assert not ws.closed.is_set(), "the notifier dropped the WebSocket client"
    finally:
        ws.close()
    assert ledger.counts("outage") == {}, "a request refused with 503 still created work"
    assert service_pids(faults.services) == pids, "a service was restarted instead of reconnecting"
    assert t_up > t_down
    faults.services.wait_healthy(10)  # worker heartbeats again, sensor runs
