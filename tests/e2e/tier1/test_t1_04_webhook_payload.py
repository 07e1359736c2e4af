"""T1.4 Webhook trigger with payload (scenarios.md T1.4).

Upstream idiom: any trigger becomes a webhook trigger with POST /triggers/{ref}/webhooks/enable,
which returns `webhook_key` (`wh_` + 32 hex); the receiver POST /api/v1/webhooks/{key} takes
{"payload": {...}} without auth.
"""
import re
import secrets

import pytest

from tests.helpers.polling import wait_for_execution
from tests.helpers.scenario import chain_for_event, expect_api_error, ids, secs, all_items

pytestmark = [pytest.mark.tier1, pytest.mark.webhook, pytest.mark.rules]

KEY_FORMAT = re.compile(r"^wh_[0-9a-f]{32}$")

PAYLOAD = {
    "event_type": "user.signup",
    "user_id": 12345,
    "email": "test@example.com",
    "metadata": {"source": "web", "campaign": "spring2024"},
}


def test_webhook_payload_reaches_action_parameters(admin, make, uid, e2e_pack):
    """T1.4 Webhook trigger with payload: the receiver answers 200 with the event id; the event
    holds the posted payload (source webhook, no rule); the one enforcement renders the payload
    fields into the action parameters (types kept); the one echo_params execution completes in
    under 3 s and outputs those parameters."""
    trigger, key = make.webhook_trigger(ref=f"{e2e_pack}.signup_{uid}", pack_ref=e2e_pack,
                                        label=f"signup {uid}")
    _, other_key = make.webhook_trigger(ref=f"{e2e_pack}.other_{uid}", pack_ref=e2e_pack,
                                        label=f"other {uid}")
    assert KEY_FORMAT.match(key) and KEY_FORMAT.match(other_key), \
        f"expected keys matching {KEY_FORMAT.pattern}, got {key!r} and {other_key!r}"
    assert key != other_key, "two triggers got the same webhook key"
    rule = make.rule(
        ref=f"{e2e_pack}.on_signup_{uid}", pack_ref=e2e_pack, label=f"on signup {uid}",
        trigger_ref=trigger["ref"], action_ref=f"{e2e_pack}.echo_params",
        action_params={"user_id": "{{ event.payload.user_id }}",
                       "email": "{{ event.payload.email }}",
                       "campaign": "{{ event.payload.metadata.campaign }}",
                       "whole": "{{ event.payload }}"})

    received = admin.post_webhook(key, PAYLOAD)

    assert set(received) == {"event_id", "trigger_ref", "received_at", "message"}, \
        f"unexpected receiver answer: {received}"
    assert (received["trigger_ref"], received["message"]) == \
        (trigger["ref"], "Webhook received successfully"), f"unexpected receiver answer: {received}"
    event = admin.get_event(received["event_id"])
    assert event["payload"] == PAYLOAD, f"event payload differs from the posted one: {event['payload']}"
    assert (event["source_ref"], event["rule"], event["trigger_ref"]) == ("webhook", None, trigger["ref"]), \
        f"unexpected event: {event}"
    assert (event.get("config") or {}).get("source") == "webhook", f"event.config: {event.get('config')}"
    lag = secs(received["received_at"], event["created"])
    assert abs(lag) <= 0.05, f"expected the event within 50 ms of receipt, got {lag * 1000:.0f} ms"

    enforcement, execution = chain_for_event(admin, event["id"])
    expected = {"user_id": 12345, "email": "test@example.com", "campaign": "spring2024", "whole": PAYLOAD}
    assert (enforcement["rule"], enforcement["status"], enforcement["config"]) == \
        (rule["id"], "processed", expected), f"unexpected enforcement: {enforcement}"
    execution = wait_for_execution(admin, execution["id"], "completed", timeout=15)
    assert execution["config"] == expected, f"execution.config {execution['config']} != {expected}"
    data = execution["result"].get("data") or {}
    assert {k: data.get(k) for k in expected} == expected, f"action output {data} lacks {expected}"
    took = secs(received["received_at"], execution["updated"])
    assert took < 3.0, f"expected webhook -> completed in under 3 s, took {took:.2f} s"


def test_webhook_rejects_bad_body_and_unknown_key(admin, make, uid, e2e_pack):
    """T1.4 Webhook trigger, negatives: a body without `payload` gets 400 and an unknown key 404
    "Invalid webhook key"; neither creates an event (checked once a later valid post's event
    exists: the trigger then has exactly that one event)."""
    trigger, key = make.webhook_trigger(ref=f"{e2e_pack}.strict_{uid}", pack_ref=e2e_pack,
                                        label=f"strict {uid}")

    expect_api_error(lambda: admin.post_webhook(key, body={"user_id": 1}), 400,
                     "webhook body without a `payload` field")
    unknown = "wh_" + secrets.token_hex(16)
    err = expect_api_error(lambda: admin.post_webhook(unknown, {"x": 1}), 404, "unknown webhook key")
    assert err.message == "Invalid webhook key", f"unexpected error message {err.message!r}"

    marker = admin.post_webhook(key, {"marker": uid})
    events = all_items(admin.list_events, trigger_ref=trigger["ref"])
    assert ids(events) == [marker["event_id"]], \
        f"expected only the marker event {marker['event_id']} on {trigger['ref']}, got {ids(events)}"


def test_webhook_disable_revokes_key_and_reenable_issues_new_one(admin, make, uid, e2e_pack):
    """T1.4 Webhook trigger, key lifecycle: after webhooks/disable the old key gets 404; enabling
    again issues a new key that works, while the old one stays dead; only the new key's post
    created an event."""
    trigger, old_key = make.webhook_trigger(ref=f"{e2e_pack}.rotate_{uid}", pack_ref=e2e_pack,
                                            label=f"rotate {uid}")

    disabled = admin.disable_webhook(trigger["ref"])
    assert disabled["webhook_enabled"] is False and not disabled.get("webhook_key"), \
        f"expected webhook disabled without a key, got {disabled}"
    err = expect_api_error(lambda: admin.post_webhook(old_key, {"n": 1}), 404, "post to a disabled key")
    assert err.message == "Invalid webhook key", f"unexpected error message {err.message!r}"

    new_key = admin.enable_webhook(trigger["ref"])["webhook_key"]
    assert KEY_FORMAT.match(new_key) and new_key != old_key, \
        f"expected a new key after re-enabling, got {new_key!r} (old {old_key!r})"
    expect_api_error(lambda: admin.post_webhook(old_key, {"n": 2}), 404, "post to the revoked old key")
    accepted = admin.post_webhook(new_key, {"n": 3})

    events = all_items(admin.list_events, trigger_ref=trigger["ref"])
    assert ids(events) == [accepted["event_id"]], \
        f"expected only the new key's event {accepted['event_id']}, got {ids(events)}"
    assert admin.get_event(accepted["event_id"])["payload"] == {"n": 3}
