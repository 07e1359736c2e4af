"""Fault: executor killed while it holds scheduled work (issue 7, faults; scenarios.md §0.3 P5).

On the dedicated fault stack the executor is frozen (SIGSTOP) so it holds the messages delivered
to it unacknowledged, work piles up (executions requested through the API, webhook events of a
rule), and then it is SIGKILLed. While it is gone nothing is scheduled. On restart every
execution is scheduled exactly once (one `execution.scheduled` audit event each, E6), runs once
(ledger, P5), and every event of the rule gets exactly one enforcement and one execution.
"""
import signal

import pytest

from tests.helpers.faults import wait_all_terminal
from tests.helpers.polling import wait_until
from tests.helpers.scenario import all_items

pytestmark = [pytest.mark.resilience, pytest.mark.service_control, pytest.mark.audit,
              pytest.mark.xdist_group("faults"), pytest.mark.needs_extension("execution_audit")]


def _scheduled_audits(c, exec_id: int) -> list[dict]:
    return all_items(c.list_audit_events, event_type="execution.scheduled",
                     resource_type="executions", resource_id=str(exec_id))


def test_executor_killed_holding_work_schedules_it_exactly_once(faults, uid):
    """Executor SIGSTOPped, then SIGKILLed with 6 requested executions and 3 webhook events
    pending: while it is down all 6 stay `requested` and no event has an enforcement; after the
    restart all 6 and the 3 rule executions complete, each with exactly one
    `execution.scheduled` audit event and exactly one ledger entry; each event has exactly one
    enforcement with exactly one execution."""
    c = faults.client
    svc = faults.services
    ledger = faults.ledger(uid)
    quick = faults.action("post_webhook")
    hook_ref = faults.ref("hook", uid)
    c.create_trigger(ref=hook_ref, label=hook_ref, pack_ref=faults.pack)
    hook_key = c.enable_webhook(hook_ref)["webhook_key"]
    rule_ref = faults.ref("rule", uid)
    c.create_rule(ref=rule_ref, label=rule_ref, pack_ref=faults.pack, trigger_ref=hook_ref,
                  action_ref=quick, action_params={"key": ledger.key, "tag": "r"}, enabled=True)
    try:
        svc.signal("executor", signal.SIGSTOP)
        try:
            direct = [c.execute(quick, {"key": ledger.key, "tag": "n"}) for _ in range(6)]
            events = [c.post_webhook(hook_key, {"k": k}) for k in range(3)]
        finally:
            svc.kill_session("executor")  # SIGKILL while stopped: its unacked deliveries go back
        assert not svc.is_running("executor")
        event_ids = [e.get("event_id") or e.get("id") for e in events]
        assert all(event_ids), f"webhook answers: {events}"
        pending = {e["id"]: c.get_execution(e["id"])["status"] for e in direct}
        assert set(pending.values()) == {"requested"}, f"scheduled without an executor: {pending}"
        for ev in event_ids:
            assert all_items(c.list_enforcements, event=ev) == [], f"event {ev} enforced"

        faults.start_service("executor")

        per_event = {}
        for ev in event_ids:
            enfs = wait_until(lambda ev=ev: all_items(c.list_enforcements, event=ev), timeout=20,
                              description=f"the enforcement of event {ev}")
            assert len(enfs) == 1, f"event {ev}: enforcements {enfs}"
            execs = wait_until(lambda e=enfs[0]: all_items(c.list_executions, enforcement=e["id"]),
                               timeout=20, description=f"the execution of enforcement {enfs[0]['id']}")
            assert len(execs) == 1, f"enforcement {enfs[0]['id']}: executions {execs}"
            per_event[ev] = execs[0]["id"]
        ids = [e["id"] for e in direct] + list(per_event.values())
        final = wait_all_terminal(c, ids, timeout=30)
        assert {i: e["status"] for i, e in final.items()} == {i: "completed" for i in ids}

        counts = ledger.wait_for(ids, timeout=15)
        assert {i: counts[i] for i in ids} == {i: 1 for i in ids}, f"ledger: {dict(counts)}"
        assert sum(counts.values()) == len(ids), f"extra ledger entries: {dict(counts)}"
        audits = {i: len(_scheduled_audits(c, i)) for i in ids}
        assert audits == {i: 1 for i in ids}, f"execution.scheduled audit events: {audits}"
        # the same events again after everything settled: still one enforcement each (P3-like:
        # every execution above is terminal, so a late duplicate would already exist)
        assert {ev: len(enforcements_of_all(c, ev)) for ev in event_ids} == \
            {ev: 1 for ev in event_ids}
    finally:
        c.disable_rule(rule_ref)
        c.delete_rule(rule_ref)


def enforcements_of_all(c, event_id: int) -> list[dict]:
    return all_items(c.list_enforcements, event=event_id)
