"""Fault: RabbitMQ restarted while executions are in flight (issue 7, faults; scenarios.md §0.3 P5).

On the dedicated fault stack (tests/e2e/faults/conftest.py): standalone executions, sleepers and a
workflow are in flight when RabbitMQ is stopped; the sleepers and the workflow's first task finish
while the broker is down (their `execution.completed` messages are published during the outage),
more work is submitted during the outage, then RabbitMQ starts again on the same data. Every
service reconnects by itself (same pids), every execution reaches a terminal status, and a
webhook ledger counts each execution's side effect exactly once (none lost, none run twice).
"""
import pytest

from tests.helpers.faults import service_pids, wait_all_terminal
from tests.helpers.polling import wait_for_execution, wait_until
from tests.helpers.scenario import parse_ts, utcnow, wait_timer_events
from tests.helpers.workflows import children, on_success, task, task_name

pytestmark = [pytest.mark.resilience, pytest.mark.service_control, pytest.mark.slow,
              pytest.mark.xdist_group("faults")]

SLEEP = 6  # s: long enough for every sleeper to be running when the broker stop completes


def _workflow(client, faults, uid: str, slug: str, ledger_key: str) -> str:
    ref = faults.ref(slug, uid)
    client.create_workflow(ref=ref, label=ref, pack_ref=faults.pack, version="1.0.0", definition={
        "version": "1.0.0", "tasks": [
            task("a", faults.action("sleeper"), input={"seconds": SLEEP},
                 next=[on_success("b")]),
            task("b", faults.action("post_webhook"), input={"key": ledger_key, "tag": "wf"})]})
    return ref


def test_rabbitmq_restart_loses_and_duplicates_nothing(faults, uid):
    """Broker restart with executions in flight: every service reconnects by itself (pids
    unchanged), the sleepers and workflow tasks that finished during the outage are `completed`
    with `updated` inside the outage window, work submitted before and during the outage
    completes, both workflows complete (their task-a completion messages were published during
    the outage), the ledger holds exactly one entry per execution, and after the restart new
    work runs and the sensor fires a timer rule created after the restart."""
    c = faults.client
    ledger = faults.ledger(uid)
    pids = service_pids(faults.services)
    assert all(pids.values()), f"fault stack not fully running: {pids}"
    wf_ref = _workflow(c, faults, uid, "wf", ledger.key)

    sleepers = [c.execute(faults.action("sleeper"), {"seconds": SLEEP, "ledger_key": ledger.key})
                for _ in range(3)]
    wf1 = c.execute(wf_ref)
    quick = [c.execute(faults.action("post_webhook"), {"key": ledger.key, "tag": "n"})
             for _ in range(3)]
    for ex in sleepers:
        wait_for_execution(c, ex["id"], "running", timeout=20)
    wf1_a = wait_until(lambda: [ch for ch in children(c, wf1["id"])
                                if task_name(ch) == "a" and ch["status"] == "running"],
                       timeout=20, description="workflow 1 task a running")[0]

    faults.stop_rabbitmq()
    t_down = utcnow()
    during = [c.execute(faults.action("post_webhook"), {"key": ledger.key, "tag": "n"})
              for _ in range(3)]
    wf2 = c.execute(wf_ref)
    # the sleepers finish while the broker is down (the database is up: the worker records them)
    for ex in sleepers + [wf1_a]:
        wait_for_execution(c, ex["id"], "completed", timeout=SLEEP + 10)
    faults.start_rabbitmq()
    t_up = utcnow()

    for ex in sleepers + [wf1_a]:
        done = c.get_execution(ex["id"])
        assert t_down < parse_ts(done["updated"]) < t_up, (
            f"execution {ex['id']} completed at {done['updated']}, not during the outage "
            f"({t_down.isoformat()} .. {t_up.isoformat()})")

    plain = sleepers + quick + during
    final = wait_all_terminal(c, [e["id"] for e in plain + [wf1, wf2]], timeout=60)
    bad = {i: e["status"] for i, e in final.items() if e["status"] != "completed"}
    assert not bad, f"executions not completed after the broker restart: {bad}"

    wf_b = []
    for wf in (wf1, wf2):
        kids = children(c, wf["id"])
        assert sorted(task_name(k) for k in kids) == ["a", "b"], (
            f"workflow {wf['id']} children: {[(task_name(k), k['status']) for k in kids]}")
        wf_b += [k["id"] for k in kids if task_name(k) == "b"]

    counts = ledger.wait_for([e["id"] for e in plain] + wf_b, timeout=20)
    for ex in sleepers:
        assert ledger.counts("done")[ex["id"]] == 1, f"sleeper {ex['id']}: {dict(counts)}"
    n_counts = ledger.counts("n")
    assert {e["id"]: n_counts[e["id"]] for e in quick + during} == \
        {e["id"]: 1 for e in quick + during}, f"ledger (tag n): {dict(n_counts)}"
    wf_counts = ledger.counts("wf")
    assert {i: wf_counts[i] for i in wf_b} == {i: 1 for i in wf_b}, f"ledger (wf): {dict(wf_counts)}"
    assert sum(counts.values()) == len(plain) + len(wf_b), (
        f"unexpected extra ledger entries: {dict(counts)}")

    assert service_pids(faults.services) == pids, "a service was restarted instead of reconnecting"

    after = c.execute(faults.action("post_webhook"), {"key": ledger.key, "tag": "after"})
    wait_for_execution(c, after["id"], "completed", timeout=20)
    assert ledger.wait_for([after["id"]], tag="after", timeout=10)[after["id"]] == 1

    # the sensor's rule-lifecycle consumer reconnected: a timer rule created now fires
    rule_ref = faults.ref("tick", uid)
    c.create_rule(ref=rule_ref, label=rule_ref, pack_ref=faults.pack,
                  trigger_ref="core.intervaltimer", trigger_params={"unit": "seconds", "interval": 1},
                  action_ref="core.noop", enabled=True)
    try:
        events = wait_timer_events(c, rule_ref, 2, timeout=15)
        assert [e["rule_ref"] for e in events] == [rule_ref, rule_ref], f"events: {events}"
    finally:
        c.disable_rule(rule_ref)
        c.delete_rule(rule_ref)
