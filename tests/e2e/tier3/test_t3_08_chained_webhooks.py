"""T3.8 Chained webhook triggers (scenarios.md T3.8).

Upstream idiom: an action posts `{"payload": ...}` to another trigger's webhook receiver
(`$ATTUNE_API_URL/api/v1/webhooks/<key>`, no auth); the resulting event fires that trigger's
rule. Upstream has no cycle guard, so "no infinite loop" is asserted as the bounded fan-out of an
acyclic chain: after the downstream execution completed (the marker), A ran once and B has one
event.
"""
import pytest

from tests.helpers.chains import execution_of, trigger_events, wait_enforcement
from tests.helpers.polling import wait_for_execution
from tests.helpers.scenario import all_items, secs

pytestmark = [pytest.mark.tier3, pytest.mark.webhook, pytest.mark.orchestration]


def test_action_posts_to_second_webhook_whose_rule_runs_once(admin, make, uid, e2e_pack):
    """T3.8 Chained webhook triggers: action A (post_webhook) completes after posting
    {origin: A.id, n: 1} to trigger B's webhook; B then has exactly 1 event with that payload and
    `config.source == "webhook"`, created while A ran; rule B's one enforcement is `processed`
    and its echo_params execution completes with result.data {origin: A.id, n: 1}. After that
    marker, A's action has exactly 1 execution (the only post_webhook execution of this worker's
    pack since A), trigger B still has exactly 1 event and rule B exactly 1 execution."""
    trigger_b, key_b = make.webhook_trigger(ref=f"{e2e_pack}.chain_b_{uid}", pack_ref=e2e_pack,
                                            label=f"chain B {uid}")
    rule_b = make.rule(ref=f"{e2e_pack}.chain_rule_b_{uid}", pack_ref=e2e_pack,
                       label=f"chain rule B {uid}", trigger_ref=trigger_b["ref"],
                       action_ref=f"{e2e_pack}.echo_params",
                       action_params={"origin": "{{ event.payload.origin }}",
                                      "n": "{{ event.payload.n }}"})
    action_a = f"{e2e_pack}.post_webhook"

    a = admin.execute(action_a, {"key": key_b, "payload": {"origin": "$ATTUNE_EXEC_ID", "n": 1}})
    a = wait_for_execution(admin, a["id"], "completed", timeout=30)

    assert a["result"]["data"]["status"] == 200, f"A's post was not accepted: {a['result']}"
    events = trigger_events(admin, trigger_b["ref"])
    assert [e["id"] for e in events] == [a["result"]["data"]["event_id"]], \
        f"expected exactly A's event on trigger B, got {[e['id'] for e in events]}"
    event = events[0]
    assert event["payload"] == {"origin": a["id"], "n": 1}, f"B's event payload: {event['payload']}"
    assert (event.get("config") or {}).get("source") == "webhook", f"B's event config: {event.get('config')}"
    assert (event["source_ref"], event["rule"]) == ("webhook", None), f"B's event: {event}"
    assert secs(a["started_at"], event["created"]) >= 0 and secs(event["created"], a["updated"]) >= 0, \
        f"B's event ({event['created']}) must be created while A ran ({a['started_at']} .. {a['updated']})"

    enforcement = wait_enforcement(admin, event["id"], rule_b["ref"])
    assert (enforcement["status"], enforcement["config"]) == ("processed", {"origin": a["id"], "n": 1}), \
        f"rule B's enforcement: {enforcement}"
    b = execution_of(admin, enforcement["id"])
    b = wait_for_execution(admin, b["id"], "completed", timeout=30)
    assert b["action_ref"] == f"{e2e_pack}.echo_params"
    assert b["result"]["data"] == {"origin": a["id"], "n": 1}, f"B's output: {b['result']}"

    # marker: B completed, so the chain is over; it must not have looped back or fanned out
    since_a = [e["id"] for e in all_items(admin.list_executions, action_ref=action_a) if e["id"] >= a["id"]]
    assert since_a == [a["id"]], f"expected A to run exactly once, got post_webhook executions {since_a}"
    assert [e["id"] for e in trigger_events(admin, trigger_b["ref"])] == [event["id"]], \
        "trigger B gained events after the chain ended"
    assert [e["id"] for e in all_items(admin.list_executions, rule_ref=rule_b["ref"])] == [b["id"]], \
        "rule B must have exactly one execution"
