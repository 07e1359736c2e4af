"""T3.15 Inquiry creation notification (scenarios.md T3.15).

Upstream's notifier forwards `inquiry_created`, `inquiry_responded` and `inquiry_timeout`
(payload `{entity_type, entity_id, id, execution, status, timeout_at|updated, created}`); the
prompt is not pushed, it is fetched with `GET /api/v1/inquiries/{id}`. A `core.ask` workflow task
creates the inquiry; its `timeout` becomes `timeout_at`.
"""
import time

import pytest

from tests.helpers.notifications import (about, inquiry_probe, live_listener, wait_notification)
from tests.helpers.polling import wait_for_execution, wait_for_items
from tests.helpers.scenario import expect_api_error, parse_ts
from tests.helpers.workflows import task

pytestmark = [pytest.mark.tier3, pytest.mark.notifications, pytest.mark.websocket,
              pytest.mark.inquiry]


def _ask_workflow(make, e2e_pack, uid, slug, prompt, timeout):
    return make.workflow(
        ref=f"{e2e_pack}.{slug}_{uid}", pack_ref=e2e_pack, label=f"{slug} {uid}",
        definition={"version": "1.0.0", "tasks": [
            task("ask", "core.ask", timeout=timeout, input={"prompt": prompt})]})


def _subscribed(admin, make, notifier, uid):
    """A listener on entity_type:inquiry, proven live by a throwaway inquiry (P7)."""
    host = admin.execute("core.noop", {"message": f"inquiry-host-{uid}"})
    listener, _ = live_listener(notifier, admin.token, ["entity_type:inquiry"],
                                    inquiry_probe(admin, make, host["id"], uid))
    return listener


def _ask_child_and_inquiry(admin, parent_id):
    child = wait_for_items(lambda: admin.list_executions(parent=parent_id), 1, timeout=15,
                           description=f"the ask child of workflow {parent_id}")[0]
    pending = wait_for_items(lambda: admin.list_inquiries(execution=child["id"]), 1, timeout=10,
                             description=f"the inquiry of ask child {child['id']}")
    return child, admin.get_inquiry(pending[0]["id"])


def test_created_and_responded_are_notified(admin, make, notifier, uid, e2e_pack):
    """T3.15 Inquiry creation notification: a core.ask task's inquiry I produces inquiry_created
    with entity_id I, payload.execution = the ask child, status pending and timeout_at equal to
    the inquiry's; GET /inquiries/I holds the prompt (not pushed). After POST .../respond,
    inquiry_responded with status responded arrives within 500 ms of the call's return; exactly
    one notification of each kind for I; the workflow completes."""
    listener = _subscribed(admin, make, notifier, uid)
    prompt = f"Deploy {uid}?"
    wf = _ask_workflow(make, e2e_pack, uid, "notify_ask", prompt, 30)
    parent = admin.execute(wf["ref"], {})
    child, inquiry = _ask_child_and_inquiry(admin, parent["id"])
    iid = inquiry["id"]

    created = wait_notification(listener, "inquiry_created", lambda m: m["entity_id"] == iid,
                                timeout=10, description=f"inquiry_created for inquiry {iid}")
    payload = created["payload"]
    assert (created["entity_type"], payload["execution"], payload["status"]) == \
        ("inquiry", child["id"], "pending"), f"unexpected inquiry_created: {created}"
    assert parse_ts(payload["timeout_at"]) == parse_ts(inquiry["timeout_at"]), \
        f"timeout_at {payload['timeout_at']} differs from the inquiry's {inquiry['timeout_at']}"
    assert "prompt" not in payload, f"the prompt is pushed (upstream fetches it): {payload}"
    assert inquiry["prompt"] == prompt, f"GET /inquiries/{iid} lacks the prompt: {inquiry}"

    admin.respond_inquiry(iid, {"approved": True})
    answered_at = time.time()
    responded = wait_notification(listener, "inquiry_responded", lambda m: m["entity_id"] == iid,
                                  timeout=5, description=f"inquiry_responded for inquiry {iid}")
    delay = responded["_received_at"] - answered_at
    assert responded["payload"]["status"] == "responded" and delay < 0.5, \
        f"inquiry_responded {responded} arrived {delay * 1000:.0f} ms after the respond call"
    wait_for_execution(admin, parent["id"], "completed", timeout=20)
    kinds = [m["notification_type"] for m in about(listener, "inquiry", iid)]
    assert kinds == ["inquiry_created", "inquiry_responded"], f"notifications for {iid}: {kinds}"


def test_timeout_is_notified_and_late_response_rejected(admin, make, notifier, uid, e2e_pack):
    """T3.15 Inquiry creation notification, timeout variant: a core.ask task with timeout 1 s
    produces inquiry_created, then inquiry_timeout with status timeout (no inquiry_responded);
    a response after that is rejected with 400 and the inquiry stays timeout."""
    listener = _subscribed(admin, make, notifier, uid)
    wf = _ask_workflow(make, e2e_pack, uid, "notify_ask_to", f"Quick {uid}?", 1)
    parent = admin.execute(wf["ref"], {})
    child, inquiry = _ask_child_and_inquiry(admin, parent["id"])
    iid = inquiry["id"]
    timed_out = wait_notification(listener, "inquiry_timeout", lambda m: m["entity_id"] == iid,
                                  timeout=10, description=f"inquiry_timeout for inquiry {iid}")
    assert (timed_out["payload"]["status"], timed_out["payload"]["execution"]) == \
        ("timeout", child["id"]), f"unexpected inquiry_timeout: {timed_out}"
    late = expect_api_error(lambda: admin.respond_inquiry(iid, {"approved": True}), 400,
                            "a response to a timed-out inquiry")
    assert admin.get_inquiry(iid)["status"] == "timeout", f"late response changed it: {late}"
    kinds = [m["notification_type"] for m in about(listener, "inquiry", iid)]
    assert kinds == ["inquiry_created", "inquiry_timeout"], f"notifications for {iid}: {kinds}"
