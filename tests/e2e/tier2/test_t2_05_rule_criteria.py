"""T2.5 Rule criteria evaluation (scenarios.md T2.5).

Upstream idiom: rule `conditions` is `{"expression": "<expr>"}` (Attune's expression language over
`event`) or a list of `{field, operator, value}` (AND; a missing field creates no enforcement).
Negatives are anchored with P1: a catch-all sibling rule (`conditions: {}`) on the same trigger,
created LAST. The executor evaluates an event's rules in rule-id order, so once the catch-all's
enforcement for event E exists, every other rule has been evaluated for E; only then are absences
asserted. Extension E9 `template_context` exposes `keystore` to condition expressions.
"""
import pytest

from tests.helpers.polling import wait_for_execution, wait_for_items
from tests.helpers.scenario import all_items

pytestmark = [pytest.mark.tier2, pytest.mark.rules, pytest.mark.criteria, pytest.mark.webhook]


def make_rules(make, pack: str, uid: str, trigger_ref: str, conditions: dict) -> dict:
    """One core.noop rule per entry of `conditions`, then the P1 catch-all `r0` (created last)."""
    rules = {}
    for name, cond in list(conditions.items()) + [("r0", {})]:
        rules[name] = make.rule(ref=f"{pack}.{name}_{uid}", pack_ref=pack, label=f"{name} {uid}",
                                trigger_ref=trigger_ref, action_ref="core.noop", conditions=cond)
    return rules


def enforced_rules(client, rules: dict, event_id: int) -> tuple[set, list]:
    """P1: wait for the catch-all's enforcement of `event_id`; then the names of the rules that
    have an enforcement for it, and those enforcements."""
    by_id = {r["id"]: name for name, r in rules.items()}
    catch_all = rules["r0"]["id"]
    enfs = wait_for_items(
        lambda: [e for e in all_items(client.list_enforcements, event=event_id)
                 if e["rule"] == catch_all], 1, timeout=15,
        description=f"the catch-all rule's enforcement of event {event_id} (P1)")
    enfs = all_items(client.list_enforcements, event=event_id)
    names = [by_id.get(e["rule"], f"<foreign rule {e['rule']}>") for e in enfs]
    assert len(names) == len(set(names)), f"a rule enforced event {event_id} twice: {names}"
    return set(names), enfs


def test_rules_fire_only_when_their_criteria_match(admin, make, uid, e2e_pack):
    """T2.5 Rule criteria evaluation: four posts on one webhook each create an event; after the
    catch-all's enforcement exists (P1), exactly the rules whose criteria match have enforcements
    (expression ==, >, `in` list, list form equals; a missing list-form field or an expression on a
    missing field matches nothing), and each enforcement has exactly one completed execution."""
    trigger, hook = make.webhook_trigger(ref=f"{e2e_pack}.crit_{uid}", pack_ref=e2e_pack,
                                         label=f"criteria {uid}")
    rules = make_rules(make, e2e_pack, uid, trigger["ref"], {
        "r1": {"expression": "event.payload.status == 'critical'"},
        "r2": {"expression": "event.payload.count > 100"},
        "r3": {"expression": "event.payload.environment in ['prod', 'staging']"},
        "r4": [{"field": "severity", "operator": "equals", "value": "high"}],
    })
    posts = [
        ({"status": "info", "count": 50, "environment": "dev", "severity": "low"}, {"r0"}),
        ({"status": "critical", "count": 150, "environment": "prod", "severity": "high"},
         {"r0", "r1", "r2", "r3", "r4"}),
        ({"status": "critical", "count": 50, "environment": "staging"}, {"r0", "r1", "r3"}),
        ({"count": 101, "environment": "production", "severity": "high"}, {"r0", "r2", "r4"}),
    ]

    event_ids = [admin.post_webhook(hook, payload)["event_id"] for payload, _ in posts]

    events = all_items(admin.list_events, trigger_ref=trigger["ref"])
    assert sorted(e["id"] for e in events) == sorted(event_ids), \
        f"every post must create an event: posted {event_ids}, listed {[e['id'] for e in events]}"
    for event_id, (payload, expected) in zip(event_ids, posts):
        names, enfs = enforced_rules(admin, rules, event_id)
        assert names == expected, \
            f"payload {payload}: expected enforcements for {sorted(expected)}, got {sorted(names)}"
        for enf in enfs:
            execs = wait_for_items(lambda: admin.list_executions(enforcement=enf["id"]), 1,
                                   timeout=15, description=f"executions of enforcement {enf['id']}")
            wait_for_execution(admin, execs[0]["id"], "completed", timeout=20)


@pytest.mark.needs_extension("template_context")
def test_condition_compares_with_a_keystore_value(admin, make, uid, e2e_pack):
    """T2.5 Rule criteria evaluation, keystore (E9): `event.payload.value > keystore.threshold_<uid>`
    with a pack key threshold_<uid> = 100 fires for 120 and not for 80 (P1)."""
    key = make.key(ref=f"{e2e_pack}.threshold_{uid}", name=f"threshold_{uid}", value=100)
    trigger, hook = make.webhook_trigger(ref=f"{e2e_pack}.thr_{uid}", pack_ref=e2e_pack,
                                         label=f"threshold {uid}")
    rules = make_rules(make, e2e_pack, uid, trigger["ref"], {
        "rk": {"expression": f"event.payload.value > keystore.{key['name']}"}})

    high = admin.post_webhook(hook, {"value": 120})["event_id"]
    low = admin.post_webhook(hook, {"value": 80})["event_id"]

    assert enforced_rules(admin, rules, high)[0] == {"r0", "rk"}, "120 > 100 must fire rk"
    assert enforced_rules(admin, rules, low)[0] == {"r0"}, "80 > 100 must not fire rk"
