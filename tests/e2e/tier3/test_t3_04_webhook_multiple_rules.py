"""T3.4 Webhook with multiple rules (scenarios.md T3.4).

Upstream idiom: webhook events carry `rule: null`, so every enabled rule whose `trigger_ref` is the
webhook's trigger is evaluated independently and gets its own enforcement (unique per rule and
event) and execution. Each rule renders `{{ event.payload.msg }}|{{ system.rule.ref }}` into
`core.echo`, which shows that every rule saw the same payload.
"""
import pytest

from tests.helpers.chains import enforcements_of, execution_of, trigger_events, wait_enforcement
from tests.helpers.polling import wait_for_execution
from tests.helpers.scenario import all_items, total

pytestmark = [pytest.mark.tier3, pytest.mark.webhook, pytest.mark.rules]

ECHO = {"message": "{{ event.payload.msg }}|{{ system.rule.ref }}"}


def test_one_event_fires_three_rules_with_the_same_payload(admin, make, uid, e2e_pack):
    """T3.4 Webhook with multiple rules: one post creates exactly 1 event; that event has exactly
    3 enforcements, one per rule (distinct rule refs), all `processed`; each enforcement has one
    `core.echo` execution, all 3 `completed`, each printing "<msg>|<its own rule ref>"."""
    trigger, key = make.webhook_trigger(ref=f"{e2e_pack}.fan_{uid}", pack_ref=e2e_pack,
                                        label=f"fan-out {uid}")
    rules = [make.rule(ref=f"{e2e_pack}.fan_r{i}_{uid}", pack_ref=e2e_pack,
                       label=f"fan-out rule {i} {uid}", trigger_ref=trigger["ref"],
                       action_ref="core.echo", action_params=ECHO) for i in (1, 2, 3)]
    msg = f"hello-{uid}"

    received = admin.post_webhook(key, {"msg": msg})

    enforcements = {r["ref"]: wait_enforcement(admin, received["event_id"], r["ref"]) for r in rules}
    events = trigger_events(admin, trigger["ref"])
    assert [e["id"] for e in events] == [received["event_id"]], \
        f"expected exactly the one posted event on {trigger['ref']}, got {[e['id'] for e in events]}"
    assert total(admin.list_events, trigger_ref=trigger["ref"]) == 1
    assert events[0]["payload"] == {"msg": msg} and events[0]["rule"] is None, \
        f"unexpected webhook event: {events[0]}"

    by_rule = enforcements_of(admin, received["event_id"])
    assert sorted(by_rule) == sorted(r["ref"] for r in rules), \
        f"expected one enforcement per rule {[r['ref'] for r in rules]}, got {sorted(by_rule)}"
    for rule in rules:
        found = by_rule[rule["ref"]]
        assert len(found) == 1, f"rule {rule['ref']} has {len(found)} enforcements: {found}"
        enf = found[0]
        assert (enf["rule"], enf["status"], enf["event"]) == (rule["id"], "processed", received["event_id"]), \
            f"unexpected enforcement for {rule['ref']}: {enf}"
        assert enf["config"] == {"message": f"{msg}|{rule['ref']}"}, \
            f"rule {rule['ref']} rendered {enf['config']}"
        assert enforcements[rule["ref"]]["id"] == enf["id"]

    outputs = {}
    for rule in rules:
        execution = execution_of(admin, by_rule[rule["ref"]][0]["id"])
        execution = wait_for_execution(admin, execution["id"], "completed", timeout=30)
        assert execution["action_ref"] == "core.echo", f"unexpected execution: {execution}"
        outputs[rule["ref"]] = execution["result"]["stdout"]
    assert outputs == {r["ref"]: f"{msg}|{r['ref']}" for r in rules}, \
        f"each rule's execution must print the shared payload and its own ref, got {outputs}"
    executions = all_items(admin.list_executions, rule_ref=f"{e2e_pack}.fan_r*_{uid}")
    assert len(executions) == 3, \
        f"expected exactly 3 executions for the 3 rules, got {[(e['id'], e['status']) for e in executions]}"


def test_three_posts_two_rules_give_six_executions(admin, make, uid, e2e_pack):
    """T3.4 Webhook with multiple rules, count check: 3 posts x 2 rules give 3 events, exactly
    2 processed enforcements per event (one per rule), and exactly 6 `completed` executions,
    each printing its event's msg and its rule's ref."""
    trigger, key = make.webhook_trigger(ref=f"{e2e_pack}.grid_{uid}", pack_ref=e2e_pack,
                                        label=f"grid {uid}")
    rules = [make.rule(ref=f"{e2e_pack}.grid_r{i}_{uid}", pack_ref=e2e_pack,
                       label=f"grid rule {i} {uid}", trigger_ref=trigger["ref"],
                       action_ref="core.echo", action_params=ECHO) for i in (1, 2)]

    posted = [(n, admin.post_webhook(key, {"msg": f"m{n}-{uid}"})["event_id"]) for n in (1, 2, 3)]

    expected_out = {}
    for n, event_id in posted:
        for rule in rules:
            enf = wait_enforcement(admin, event_id, rule["ref"])
            assert enf["status"] == "processed", f"enforcement not processed: {enf}"
            execution = execution_of(admin, enf["id"])
            expected_out[execution["id"]] = f"m{n}-{uid}|{rule['ref']}"
        by_rule = enforcements_of(admin, event_id)
        assert {k: len(v) for k, v in by_rule.items()} == {r["ref"]: 1 for r in rules}, \
            f"event {event_id}: expected one enforcement per rule, got {by_rule}"

    assert [e["id"] for e in trigger_events(admin, trigger["ref"])] == [e for _, e in posted], \
        "expected exactly the 3 posted events on the trigger"
    outputs = {eid: wait_for_execution(admin, eid, "completed", timeout=30)["result"]["stdout"]
               for eid in expected_out}
    assert outputs == expected_out, f"execution outputs {outputs} != {expected_out}"
    assert len(expected_out) == 6
    assert total(admin.list_executions, rule_ref=f"{e2e_pack}.grid_r*_{uid}") == 6, \
        "expected exactly 6 executions for 3 posts x 2 rules"
