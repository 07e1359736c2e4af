"""T3.14 Execution completion notification over the notifier WebSocket (scenarios.md T3.14).

Upstream's notifier forwards the `execution_created` / `execution_status_changed` NOTIFYs of the
execution table: one message per transition, in commit order, with `user_id` null and a payload
without `result` (fetched over REST instead). Per-user scoping is extension E3 `owner_scoping`,
reused by the notifier: a connection gets nothing about executions of packs hidden from it.
"""
import pytest

from tests.helpers.notifications import (about, latencies_ms, live_listener, noop_probe,
                                         percentile, transitions, wait_execution_status)
from tests.helpers.polling import wait_for_execution

pytestmark = [pytest.mark.tier3, pytest.mark.notifications, pytest.mark.websocket]

HAPPY_CHAIN = [
    ("execution_created", None, "requested"),
    ("execution_status_changed", "requested", "scheduling"),
    ("execution_status_changed", "scheduling", "scheduled"),
    ("execution_status_changed", "scheduled", "running"),
]
LATENCY_RUNS = 4  # 4 executions x 5 notifications: 20 latency samples
PAYLOAD_KEYS = {"action_ref", "parent", "created", "updated", "status", "id"}


def _check_envelopes(msgs: list[dict], exec_id: int, action_ref: str) -> None:
    for m in msgs:
        payload = m.get("payload") or {}
        assert (m["entity_type"], m["entity_id"], m["user_id"]) == ("execution", exec_id, None), \
            f"unexpected envelope: {m}"
        missing = PAYLOAD_KEYS - set(payload)
        assert not missing, f"payload lacks {sorted(missing)}: {payload}"
        assert (payload["action_ref"], payload["parent"], payload["id"]) == \
            (action_ref, None, exec_id), f"unexpected payload: {payload}"
        assert "result" not in payload, f"the payload carries a result (upstream has none): {payload}"


@pytest.mark.xdist_group("t3_heavy")  # not beside T3.21/T3.22's bursts, which skew latencies
def test_every_transition_is_notified_in_order(admin, notifier, uid, target):
    """T3.14 Execution completion notification: subscribed to entity_type:execution (P7 probe),
    each of 4 core.echo executions produces exactly execution_created(requested), then
    requested->scheduling->scheduled->running->completed status changes, each with entity_type
    execution, entity_id X, user_id null and a payload holding action_ref, parent null, created
    and updated but no result; the last one matches REST's status and updated, and the result
    comes over REST (stdout = the message). Embedded: over the 20 notifications, latency
    (timestamp - payload.updated) p95 < 100 ms and max < 500 ms."""
    listener, _ = live_listener(notifier, admin.token, ["entity_type:execution"],
                                noop_probe(admin, uid))
    every: list[dict] = []
    for n in range(LATENCY_RUNS):
        ex = admin.execute("core.echo", {"message": f"hello-{n}-{uid}"})
        xid = ex["id"]
        wait_execution_status(listener, xid, "completed", timeout=20)
        rest = wait_for_execution(admin, xid, "completed", timeout=10)

        msgs = about(listener, "execution", xid)
        assert transitions(msgs) == HAPPY_CHAIN + [("execution_status_changed", "running", "completed")], \
            f"unexpected notification chain for execution {xid}: {transitions(msgs)}"
        _check_envelopes(msgs, xid, "core.echo")
        # reconcile with REST: the last notification is the final state, the result is fetched
        assert (msgs[-1]["payload"]["status"], msgs[-1]["payload"]["updated"]) == \
            (rest["status"], rest["updated"]), f"last notification {msgs[-1]} vs REST {rest}"
        assert rest["result"].get("stdout") == f"hello-{n}-{uid}", f"unexpected result over REST: {rest}"
        every.extend(msgs)

    lat = latencies_ms(every)
    if target.embedded:  # clock skew makes this meaningless on live targets
        assert percentile(lat, 95) < 100 and max(lat) < 500, \
            f"notification latency too high: p95 {percentile(lat, 95):.1f} ms, max {max(lat):.1f} ms ({lat})"


def test_failing_action_ends_with_running_to_failed(admin, notifier, uid, e2e_pack):
    """T3.14 Execution completion notification, failure: fail_stderr notifies the same chain
    ending running->failed; REST shows failed with exit_code 1."""
    listener, _ = live_listener(notifier, admin.token, ["entity_type:execution"],
                                noop_probe(admin, uid))
    action = f"{e2e_pack}.fail_stderr"
    ex = admin.execute(action, {"message": f"boom-{uid}"})
    xid = ex["id"]
    wait_execution_status(listener, xid, "failed", timeout=20)
    rest = wait_for_execution(admin, xid, "failed", timeout=10)
    msgs = about(listener, "execution", xid)
    assert transitions(msgs) == HAPPY_CHAIN + [("execution_status_changed", "running", "failed")], \
        f"unexpected notification chain for execution {xid}: {transitions(msgs)}"
    _check_envelopes(msgs, xid, action)
    assert (rest["result"].get("exit_code"), (rest["result"].get("error") or "").strip()) == \
        (1, f"boom-{uid}"), \
        f"unexpected REST result: {rest['result']}"


@pytest.mark.needs_extension("action_timeout")
def test_timed_out_action_ends_with_running_to_failed(admin, make, notifier, uid, e2e_pack):
    """T3.14 Execution completion notification, timeout (E1): a sleeper action with
    timeout_seconds 1 notifies running->failed; REST shows exit_code -1 and
    "Execution timed out after 1 seconds"."""
    listener, _ = live_listener(notifier, admin.token, ["entity_type:execution"],
                                noop_probe(admin, uid))
    action = make.action(ref=f"{e2e_pack}.slow_{uid}", pack_ref=e2e_pack, label=f"slow {uid}",
                         runtime_ref="core.shell", entrypoint="sleep 30", timeout_seconds=1,
                         param_schema={})
    assert action.get("timeout_seconds") == 1, f"timeout not stored: {action}"
    ex = admin.execute(action["ref"], {})
    xid = ex["id"]
    wait_execution_status(listener, xid, "failed", timeout=20)
    rest = wait_for_execution(admin, xid, "failed", timeout=10)
    msgs = about(listener, "execution", xid)
    assert transitions(msgs) == HAPPY_CHAIN + [("execution_status_changed", "running", "failed")], \
        f"unexpected notification chain for execution {xid}: {transitions(msgs)}"
    _check_envelopes(msgs, xid, action["ref"])
    assert (rest["result"].get("exit_code"), rest["result"].get("error")) == \
        (-1, "Execution timed out after 1 seconds"), f"unexpected REST result: {rest['result']}"


@pytest.mark.needs_extension("owner_scoping")
def test_other_users_connection_gets_nothing_about_private_executions(make, notifier, uid):
    """T3.14 Execution completion notification, E3 scoping: user A runs an action of a pack A
    created (POST /packs, so owned by A); user B (core.admin too) subscribed to `all` receives no
    notification about that execution, checked after B's own later probe execution completed on
    B's socket (P6); A's socket got the full chain."""
    a_client, _ = make.user(["core.admin"])
    b_client, _ = make.user(["core.admin"])
    pack = make.pack(client=a_client, slug="private")
    action = make.action(client=a_client, ref=f"{pack['ref']}.secret_job_{uid}",
                         pack_ref=pack["ref"], runtime_ref="core.shell",
                         entrypoint=f"printf private-{uid}", param_schema={})
    a_listener, _ = live_listener(notifier, a_client.token, ["entity_type:execution"],
                                  noop_probe(a_client, uid, "a-probe"))
    b_listener, _ = live_listener(notifier, b_client.token, ["all"],
                                  noop_probe(b_client, uid, "b-probe"))
    ex = a_client.execute(action["ref"], {})
    xid = ex["id"]
    wait_execution_status(a_listener, xid, "completed", timeout=20)
    assert transitions(about(a_listener, "execution", xid)) == \
        HAPPY_CHAIN + [("execution_status_changed", "running", "completed")], \
        f"the owner's socket lacks transitions: {transitions(about(a_listener, 'execution', xid))}"

    # P6 anchor: B's own execution, requested after A's completed, reached B's socket in full
    anchor = b_client.execute("core.noop", {"message": f"b-anchor-{uid}"})
    wait_execution_status(b_listener, anchor["id"], "completed", timeout=20)
    leaked = [m for m in b_listener.notifications
              if (m.get("entity_type"), m.get("entity_id")) == ("execution", xid)
              or (m.get("payload") or {}).get("action_ref") == action["ref"]]
    assert leaked == [], f"user B received notifications about A's private execution: {leaked}"
    assert len(about(b_listener, "execution", anchor["id"])) == 5, \
        f"B's anchor chain incomplete: {transitions(about(b_listener, 'execution', anchor['id']))}"
