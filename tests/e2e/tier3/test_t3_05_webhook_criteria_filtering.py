"""T3.5 Webhook with rule criteria filtering (scenarios.md T3.5).

Upstream idiom: rule `conditions` are either an expression object
(`{"expression": "event.payload.level == 'info'"}`) or a list of `{field, operator, value}`
items; a rule whose conditions do not hold creates no enforcement. The absence checks use the
P1 catch-all sibling rule: once R0 (`conditions: {}`) has its enforcement for an event, the
executor has evaluated every rule of the trigger for that event.
"""
import pytest

from tests.helpers.chains import enforcements_of, execution_of, trigger_events, wait_enforcement
from tests.helpers.polling import wait_for_execution
from tests.helpers.scenario import all_items

pytestmark = [pytest.mark.tier3, pytest.mark.webhook, pytest.mark.rules, pytest.mark.criteria]


def test_only_rules_whose_criteria_match_fire(admin, make, uid, e2e_pack):
    """T3.5 Webhook with rule criteria filtering: posts with level info, error and debug give
    3 events; after the catch-all R0's enforcement exists for each (P1), the enforcements are
    exactly info -> {R0, A (expression)}, error -> {R0, B (field list)}, debug -> {R0}, all
    `processed`; each has exactly one `core.noop` execution, `completed`, and the rules' executions
    number exactly 3 (R0), 1 (A) and 1 (B)."""
    trigger, key = make.webhook_trigger(ref=f"{e2e_pack}.levels_{uid}", pack_ref=e2e_pack,
                                        label=f"levels {uid}")
    common = dict(pack_ref=e2e_pack, trigger_ref=trigger["ref"], action_ref="core.noop")
    r0 = make.rule(ref=f"{e2e_pack}.lvl_all_{uid}", label=f"catch-all {uid}", conditions={},
                   **common)
    rule_a = make.rule(ref=f"{e2e_pack}.lvl_info_{uid}", label=f"info only {uid}",
                       conditions={"expression": "event.payload.level == 'info'"}, **common)
    rule_b = make.rule(ref=f"{e2e_pack}.lvl_error_{uid}", label=f"error only {uid}",
                       conditions=[{"field": "level", "operator": "equals", "value": "error"}],
                       **common)
    expected = {"info": {r0["ref"], rule_a["ref"]},
                "error": {r0["ref"], rule_b["ref"]},
                "debug": {r0["ref"]}}

    posted = {level: admin.post_webhook(key, {"level": level, "uid": uid})["event_id"]
              for level in ("info", "error", "debug")}

    events = trigger_events(admin, trigger["ref"])
    assert sorted(e["id"] for e in events) == sorted(posted.values()), \
        f"expected exactly the 3 posted events, got {[e['id'] for e in events]}"
    assert {e["id"]: e["payload"]["level"] for e in events} == {v: k for k, v in posted.items()}

    execution_ids = {r0["ref"]: [], rule_a["ref"]: [], rule_b["ref"]: []}
    for level, event_id in posted.items():
        wait_enforcement(admin, event_id, r0["ref"])  # P1: every rule was evaluated for this event
        by_rule = enforcements_of(admin, event_id)
        assert set(by_rule) == expected[level], \
            f"level {level!r}: expected enforcements for {sorted(expected[level])}, got {sorted(by_rule)}"
        for rule_ref, found in by_rule.items():
            assert len(found) == 1 and found[0]["status"] == "processed", \
                f"level {level!r}, rule {rule_ref}: expected one processed enforcement, got {found}"
            execution = execution_of(admin, found[0]["id"])
            execution = wait_for_execution(admin, execution["id"], "completed", timeout=30)
            assert execution["action_ref"] == "core.noop", f"unexpected execution {execution}"
            execution_ids[rule_ref].append(execution["id"])

    # executions exist only for those enforcements
    for rule_ref, ids in execution_ids.items():
        listed = sorted(e["id"] for e in all_items(admin.list_executions, rule_ref=rule_ref))
        assert listed == sorted(ids), \
            f"rule {rule_ref}: executions {listed} differ from those of its enforcements {ids}"
    assert {k: len(v) for k, v in execution_ids.items()} == \
        {r0["ref"]: 3, rule_a["ref"]: 1, rule_b["ref"]: 1}
    for rule in (rule_a, rule_b):
        assert len(all_items(admin.list_enforcements, rule_ref=rule["ref"])) == 1, \
            f"rule {rule['ref']} must have exactly one enforcement over the 3 events"
