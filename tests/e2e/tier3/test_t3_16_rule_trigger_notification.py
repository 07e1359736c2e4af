"""T3.16 Rule trigger notification (scenarios.md T3.16).

Upstream's nearest signal is `enforcement_created` (always on, one per enforcement, payload
`rule, rule_ref, event, trigger_ref`). Extension E11 `rule_notify` adds an opt-in rule field
`notify_on_trigger` and a `rule_triggered` notification (`entity_type "rule"`, payload
`{rule_ref, trigger_ref, event, enforcement, created, suppressed_count}`), throttled per rule to
one per `executor.rule_notify_min_interval_ms` (1000 in the embedded profile), leading edge,
suppressed fires counted into the next notification. E3 scoping hides it from other users.
"""
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers.notifications import (leading_edge, live_listener, noop_probe, of_type,
                                         pause_until, wait_execution_status, wait_notification)
from tests.helpers.polling import wait_for_items
from tests.helpers.scenario import parse_ts

pytestmark = [pytest.mark.tier3, pytest.mark.notifications, pytest.mark.websocket,
              pytest.mark.rules, pytest.mark.webhook]

THROTTLE_S = 1.0  # executor.rule_notify_min_interval_ms of the embedded profile
FLOOD = 20


def _hook_with_rules(make, client, pack_ref, uid, notify_flags):
    """A webhook trigger in `pack_ref` with one rule per flag (running a no-op action)."""
    trigger, key = make.webhook_trigger(client=client, ref=f"{pack_ref}.hook_{uid}",
                                        pack_ref=pack_ref, label=f"hook {uid}")
    action = make.action(client=client, ref=f"{pack_ref}.nop_{uid}", pack_ref=pack_ref,
                         runtime_ref="core.shell", entrypoint="true", param_schema={})
    rules = []
    for i, flag in enumerate(notify_flags):
        body = {"notify_on_trigger": True} if flag else {}
        rules.append(make.rule(client=client, ref=f"{pack_ref}.r{i}_{uid}", pack_ref=pack_ref,
                               trigger_ref=trigger["ref"], action_ref=action["ref"], **body))
    return trigger, key, rules


def test_enforcement_created_once_per_matching_rule(admin, make, notifier, uid, e2e_pack):
    """T3.16 Rule trigger notification, upstream part: subscribed to
    notification_type:enforcement_created, one webhook post to a trigger with two rules gives
    exactly one notification per rule, with payload.rule_ref, payload.rule and payload.event
    right; counted after the notifications of a second, later post arrived (P6)."""
    _, key, rules = _hook_with_rules(make, admin, e2e_pack, uid, [False, False])
    listener, first = live_listener(
        notifier, admin.token, ["notification_type:enforcement_created"],
        lambda: admin.post_webhook(key, {"n": 0}),
        lambda m, posted: m.get("payload", {}).get("event") == posted["event_id"])
    event_id = first["event_id"]
    for rule in rules:
        wait_notification(listener, "enforcement_created",
                          lambda m, r=rule: (m["payload"]["rule_ref"], m["payload"]["event"]) ==
                          (r["ref"], event_id), timeout=10)
    later = admin.post_webhook(key, {"n": 1})["event_id"]
    for rule in rules:  # P6 anchor
        wait_notification(listener, "enforcement_created",
                          lambda m, r=rule: (m["payload"]["rule_ref"], m["payload"]["event"]) ==
                          (r["ref"], later), timeout=10)
    for rule in rules:
        got = of_type(listener, "enforcement_created",
                      lambda m, r=rule: (m["payload"]["rule_ref"], m["payload"]["event"]) ==
                      (r["ref"], event_id))
        assert len(got) == 1, f"expected 1 enforcement_created for {rule['ref']}, got {got}"
        m = got[0]
        assert (m["entity_type"], m["payload"]["rule"], m["payload"]["trigger_ref"]) == \
            ("enforcement", rule["id"], rule["trigger_ref"]), f"unexpected notification: {m}"


@pytest.mark.needs_extension("rule_notify")
@pytest.mark.needs_extension("owner_scoping")
def test_opted_in_rule_notifies_once_and_only_its_owner_sees_it(make, notifier, uid):
    """T3.16 Rule trigger notification (E11): user A's rule F (notify_on_trigger true; the
    response echoes it) and rule G (not set: the field is absent, upstream shape) on one trigger.
    One post gives exactly one rule_triggered with entity_type rule, entity_id F.id and payload
    {rule_ref, trigger_ref, event, enforcement = F's enforcement, suppressed_count 0}; none for G.
    A second post after the throttle window gives F's next rule_triggered (suppressed_count 0),
    which anchors the absence checks (P6). User B subscribed to `all` saw no rule_triggered and no
    enforcement of A's rules (E3), checked after B's own later probe completed."""
    a_client, _ = make.user(["core.admin"])
    b_client, _ = make.user(["core.admin"])
    pack = make.pack(client=a_client, slug="notify")["ref"]
    trigger, key, (rule_f, rule_g) = _hook_with_rules(make, a_client, pack, uid, [True, False])
    assert rule_f.get("notify_on_trigger") is True, f"F does not echo notify_on_trigger: {rule_f}"
    assert "notify_on_trigger" not in rule_g, f"G shows the extension field unset: {rule_g}"
    assert a_client.get_rule(rule_f["ref"]).get("notify_on_trigger") is True

    a_listener, _ = live_listener(notifier, a_client.token, ["entity_type:rule",
                                                             "entity_type:execution"],
                                  noop_probe(a_client, uid, "a-probe"))
    b_listener, _ = live_listener(notifier, b_client.token, ["all"],
                                  noop_probe(b_client, uid, "b-probe"))

    event_1 = a_client.post_webhook(key, {"n": 1})["event_id"]
    note = wait_notification(a_listener, "rule_triggered", lambda m: m["payload"]["event"] == event_1,
                             timeout=10, description=f"rule_triggered for event {event_1}")
    [enf_f] = wait_for_items(lambda: a_client.list_enforcements(rule_ref=rule_f["ref"]), 1,
                             timeout=10, description="F's enforcement")
    expected = {"entity_type": "rule", "entity_id": rule_f["id"], "id": rule_f["id"],
                "rule_ref": rule_f["ref"], "trigger_ref": trigger["ref"], "event": event_1,
                "enforcement": enf_f["id"], "suppressed_count": 0}
    assert (note["entity_type"], note["entity_id"], note["user_id"]) == ("rule", rule_f["id"], None) \
        and {k: note["payload"].get(k) for k in expected} == expected, \
        f"unexpected rule_triggered: {note}; expected payload {expected}"
    assert parse_ts(note["payload"]["created"]) == parse_ts(
        a_client.get_enforcement(enf_f["id"])["created"]), f"created is not F's enforcement's: {note}"

    # P4: past the throttle window of F's first notification, a second post notifies again
    first_event = a_client.get_event(event_1)
    pause_until(parse_ts(first_event["created"]).timestamp() + THROTTLE_S + 0.1,
                "F's rule_triggered throttle window")
    event_2 = a_client.post_webhook(key, {"n": 2})["event_id"]
    second = wait_notification(a_listener, "rule_triggered",
                               lambda m: m["payload"]["event"] == event_2, timeout=10)
    assert (second["entity_id"], second["payload"]["suppressed_count"]) == (rule_f["id"], 0), \
        f"unexpected second rule_triggered: {second}"
    mine = of_type(a_listener, "rule_triggered",
                   lambda m: m["entity_id"] in (rule_f["id"], rule_g["id"]))
    assert [(m["entity_id"], m["payload"]["event"]) for m in mine] == \
        [(rule_f["id"], event_1), (rule_f["id"], event_2)], \
        f"expected exactly F's two rule_triggered (none for G {rule_g['id']}), got {mine}"

    # E3: B's own execution, requested after all of the above, arrived in full on B's socket
    anchor = b_client.execute("core.noop", {"message": f"b-anchor-{uid}"})
    wait_execution_status(b_listener, anchor["id"], "completed", timeout=20)
    leaked = [m for m in b_listener.notifications
              if (m.get("entity_type"), m.get("entity_id")) in (("rule", rule_f["id"]),
                                                                ("rule", rule_g["id"]))
              or (m.get("payload") or {}).get("rule_ref") in (rule_f["ref"], rule_g["ref"])
              or (m.get("payload") or {}).get("trigger_ref") == trigger["ref"]]
    assert leaked == [], f"user B received notifications about A's rules: {leaked}"


@pytest.mark.needs_extension("rule_notify")
def test_flood_is_throttled_and_suppressed_fires_are_counted(admin, make, notifier, uid, e2e_pack):
    """T3.16 Rule trigger notification, throttle (E11): a flood of 20 concurrent posts gives F 20
    enforcements but rule_triggered only for the fires a leading-edge 1 s throttle lets through:
    the notified events and their suppressed_count equal the throttle model applied to F's
    enforcements in creation order with their events' times; the first post always notifies and
    a flood spanning S seconds notifies at most floor(S) + 1 times (the plan's "at most 2 for 20
    posts in under 1 s"). A post after the window (last event + 1.1 s) notifies once more with
    every fire since the previous notification counted (>= 18 when the flood spans under 1 s);
    notifications plus suppressed counts account for all 21 fires."""
    _, key, (rule_f,) = _hook_with_rules(make, admin, e2e_pack, uid, [True])
    listener, _ = live_listener(notifier, admin.token, ["entity_type:rule", "entity_type:execution"],
                                noop_probe(admin, uid))

    with ThreadPoolExecutor(max_workers=10) as pool:
        posted = list(pool.map(lambda n: admin.post_webhook(key, {"n": n}), range(FLOOD)))
    flood_events = {p["event_id"] for p in posted}
    enfs = wait_for_items(lambda: admin.list_enforcements(rule_ref=rule_f["ref"], per_page=100),
                          FLOOD, timeout=30, description=f"F's {FLOOD} enforcements")
    assert {e["event"] for e in enfs} == flood_events, "F's enforcements are not one per flood event"
    fired = {e: parse_ts(admin.get_event(e)["created"]).timestamp() for e in flood_events}
    span = max(fired.values()) - min(fired.values())

    pause_until(max(fired.values()) + THROTTLE_S + 0.1,
                "F's rule_triggered throttle window after the flood")
    after = admin.post_webhook(key, {"n": "after"})["event_id"]
    final = wait_notification(listener, "rule_triggered", lambda m: m["payload"]["event"] == after,
                              timeout=10, description="rule_triggered for the post after the flood")
    fired[after] = parse_ts(admin.get_event(after)["created"]).timestamp()
    order = [e["event"] for e in sorted(enfs, key=lambda e: e["id"])] + [after]
    expected = leading_edge([(ev, fired[ev]) for ev in order], THROTTLE_S)

    notes = of_type(listener, "rule_triggered", lambda m: m["entity_id"] == rule_f["id"])
    seen = [(m["payload"]["event"], m["payload"]["suppressed_count"]) for m in notes]
    assert seen == expected, (f"rule_triggered (event, suppressed_count) {seen} differ from the "
                              f"1 s leading-edge throttle over the fires {expected}")
    in_flood = [m for m in notes if m["payload"]["event"] in flood_events]
    assert in_flood and in_flood[0]["payload"]["event"] == order[0], \
        f"the flood's first fire (event {order[0]}) did not notify: {in_flood}"
    assert len(in_flood) <= int(span // THROTTLE_S) + 1, \
        f"{len(in_flood)} rule_triggered for a flood spanning {span:.3f} s"
    assert notes[-1] == final and final["payload"]["suppressed_count"] == \
        FLOOD - (order.index(in_flood[-1]["payload"]["event"]) + 1), \
        f"the post after the flood does not count every fire since the last notification: {final}"
    if span < THROTTLE_S:
        assert len(in_flood) <= 2 and final["payload"]["suppressed_count"] >= FLOOD - 2, \
            f"flood under 1 s: {len(in_flood)} notifications, final {final['payload']}"
    accounted = sum(1 + m["payload"]["suppressed_count"] for m in notes)
    assert accounted == FLOOD + 1, \
        f"notifications + suppressed counts = {accounted}, expected {FLOOD + 1} fires: {seen}"
