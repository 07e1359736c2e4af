"""T3.7 Complex workflow orchestration (scenarios.md T3.7).

webhook -> rule -> workflow `pipeline_<uid>`: `check` (threshold_check against the ambient pack
key `threshold_<uid>` = 100) branches on `result().exceeded` to `approve` (core.ask) or `skip`;
an approval runs `deploy` (nested workflow s1 -> s2), then `record` (kv_put of `result_<uid>`,
task permission sets core.admin) and `notify` (core.http_request POST to a ledger webhook).
Built from upstream building blocks only; the machinery is in tests/helpers/chains.py.
"""
import pytest

from tests.helpers.chains import Ledger, pipeline_workflow, tree_order, wait_child, wait_pending_inquiry
from tests.helpers.client import ApiError
from tests.helpers.polling import TERMINAL, wait_for_execution
from tests.helpers.scenario import chain_for_event, secs
from tests.helpers.workflows import children

pytestmark = [pytest.mark.tier3, pytest.mark.orchestration, pytest.mark.workflow,
              pytest.mark.inquiry, pytest.mark.datastore, pytest.mark.webhook]


def _setup(admin, make, uid, pack):
    """Threshold key, ledger, pipeline workflow, webhook trigger and its rule -> (key, ledger)."""
    make.key(name=f"threshold_{uid}", value=100)
    result_ref = f"{pack}.result_{uid}"
    make.defer(f"delete key {result_ref}", lambda: admin.delete_key(result_ref))
    ledger = Ledger(admin, make, pack, uid)
    pipeline = pipeline_workflow(make, pack, uid)
    trigger, key = make.webhook_trigger(ref=f"{pack}.metrics_{uid}", pack_ref=pack,
                                        label=f"metrics {uid}")
    make.rule(ref=f"{pack}.on_metric_{uid}", pack_ref=pack, label=f"on metric {uid}",
              trigger_ref=trigger["ref"], action_ref=pipeline["ref"],
              action_params={"request_id": "{{ event.payload.request_id }}",
                             "value": "{{ event.payload.value }}",
                             "ledger_url": ledger.url})
    return key, ledger, result_ref


def test_value_over_threshold_runs_the_approved_pipeline(admin, make, uid, e2e_pack, notifier):
    """T3.7 Complex workflow orchestration, run 1 (value 120 > 100): the webhook's rule starts P;
    `check` outputs {exceeded: true, value: 120, threshold: 100}; `approve` pauses with a pending
    inquiry and no `deploy` child exists yet; after responding {approved: true} the children are
    exactly check, approve, deploy, record, notify in that order, each created no earlier than its
    predecessor's end; deploy ran s1 then s2; the key `result_<uid>` holds exactly
    {request_id, value: 120, approved: true}; the ledger has exactly 1 event for the request id
    (payload {request_id, tag: notify, value: 120}); the WebSocket saw inquiry_created then
    inquiry_responded for the inquiry; P is `completed`."""
    key, ledger, result_ref = _setup(admin, make, uid, e2e_pack)
    ws = notifier()
    ws.subscribe("entity_type:inquiry")
    ws.subscribe("notification_type:execution_created")
    ws.prove_live(lambda: admin.execute("core.noop"),
                  lambda m, r: m.get("notification_type") == "execution_created" and m.get("entity_id") == r["id"])
    request_id = f"req-{uid}"

    received = admin.post_webhook(key, {"request_id": request_id, "value": 120})
    _, parent = chain_for_event(admin, received["event_id"])
    pid = parent["id"]
    assert parent["config"] == {"request_id": request_id, "value": 120, "ledger_url": ledger.url}

    approve = wait_child(admin, pid, "approve")
    inquiry = wait_pending_inquiry(admin, approve["id"])
    check = wait_for_execution(admin, wait_child(admin, pid, "check")["id"], "completed", timeout=10)
    assert check["result"]["data"] == {"exceeded": True, "value": 120, "threshold": 100}, \
        f"check output: {check['result']}"
    assert inquiry["prompt"] == f"Deploy {request_id} (value 120)?", f"inquiry: {inquiry}"
    # paused: the approve child runs with a pending inquiry; deploy only follows an approval
    assert [name for name, _ in tree_order(admin, pid)] == ["check", "approve"], \
        "while the approval is pending only check and approve may exist"
    assert admin.get_execution(pid)["status"] == "running"

    admin.respond_inquiry(inquiry["id"], {"approved": True})
    parent = wait_for_execution(admin, pid, "completed", timeout=60)

    order = tree_order(admin, pid)  # P3: P is terminal
    assert [name for name, _ in order] == ["check", "approve", "deploy", "record", "notify"], \
        f"children in order: {[(n, c['id'], c['status']) for n, c in order]}"
    for (prev_name, prev), (name, cur) in zip(order, order[1:]):
        assert cur["status"] == "completed", f"{name}: {cur['status']} {cur.get('result')}"
        assert secs(prev["updated"], cur["created"]) >= 0, \
            f"{name} created {cur['created']} before {prev_name} ended {prev['updated']}"
    deploy = dict(order)["deploy"]
    steps = tree_order(admin, deploy["id"])
    assert [(n, c["status"]) for n, c in steps] == [("s1", "completed"), ("s2", "completed")], \
        f"deploy steps: {[(n, c['status']) for n, c in steps]}"
    assert secs(steps[0][1]["updated"], steps[1][1]["created"]) >= 0
    assert deploy["result"] == {"steps": "s1+s2", "succeeded": True}, f"deploy result: {deploy['result']}"

    stored = admin.get_key(result_ref)
    assert stored["value"] == {"request_id": request_id, "value": 120, "approved": True}, \
        f"datastore result: {stored}"
    record = dict(order)["record"]
    assert record["result"]["data"]["ref"] == result_ref

    notes = ledger.matching(request_id=request_id)
    assert len(notes) == 1, f"expected exactly 1 ledger event for {request_id}, got {len(notes)}"
    assert notes[0]["payload"] == {"request_id": request_id, "tag": "notify", "value": 120}
    assert len(ledger.events()) == 1
    notify = dict(order)["notify"]
    assert notify["result"]["data"]["status_code"] == 200, f"notify: {notify['result']}"

    created = ws.wait_for(lambda m: m.get("notification_type") == "inquiry_created"
                          and m.get("entity_id") == inquiry["id"], timeout=5,
                          description=f"inquiry_created for inquiry {inquiry['id']}")
    responded = ws.wait_for(lambda m: m.get("notification_type") == "inquiry_responded"
                            and m.get("entity_id") == inquiry["id"], timeout=5,
                            description=f"inquiry_responded for inquiry {inquiry['id']}")
    msgs = ws.messages
    assert msgs.index(created) < msgs.index(responded), "inquiry_responded arrived before inquiry_created"
    assert created["payload"]["execution"] == approve["id"]


def test_value_under_threshold_skips_approval_and_side_effects(admin, make, uid, e2e_pack):
    """T3.7 Complex workflow orchestration, run 2 (value 50 <= 100): `check` outputs
    exceeded=false and `skip` runs ("below threshold 50"); after P is terminal (P3) P is
    `completed` with exactly the children check and skip - no core.ask child, no deploy, record or
    notify - no inquiry exists for P's children, the key `result_<uid>` does not exist and the
    ledger has no event."""
    key, ledger, result_ref = _setup(admin, make, uid, e2e_pack)
    request_id = f"req-{uid}"

    received = admin.post_webhook(key, {"request_id": request_id, "value": 50})
    _, parent = chain_for_event(admin, received["event_id"])
    parent = wait_for_execution(admin, parent["id"], TERMINAL, timeout=60)
    assert parent["status"] == "completed", f"P: {parent['status']} {parent.get('result')}"

    kids = children(admin, parent["id"])
    assert [(c["workflow_task"]["task_name"], c["action_ref"], c["status"]) for c in kids] == \
        [("check", f"{e2e_pack}.threshold_check", "completed"), ("skip", "core.echo", "completed")], \
        f"children: {[(c['id'], c['action_ref'], c['status']) for c in kids]}"
    assert kids[0]["result"]["data"] == {"exceeded": False, "value": 50, "threshold": 100}
    assert kids[1]["result"]["stdout"] == "below threshold 50"
    for child in kids:
        assert admin.list_inquiries(execution=child["id"])["items"] == [], \
            f"no inquiry expected for child {child['id']}"
    with pytest.raises(ApiError) as missing:
        admin.get_key(result_ref)
    assert missing.value.status == 404, f"result key must not exist: {missing.value}"
    assert ledger.events() == [], "the ledger must have no event when the approval branch is skipped"
