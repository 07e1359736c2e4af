"""T2.7 Inquiry timeout handling (scenarios.md T2.7).

Upstream has no inquiry default field and no `expired` status: the executor's 1 s scan sets a
pending inquiry past `timeout_at` to `timeout` and its still-running `core.ask` child to
`timeout` with `workflow_task.timed_out = true` (behavior.md §5), so a `timed_out()` transition
fires; the workflow supplies the default through that transition's `publish`. Without such a
transition the timed-out task is an unhandled failure. A response before `timeout_at` prevents
the timeout; a response after it is 400. Negative checks wait for the system's own deadline,
`timeout_at` + ε (P4).
"""
from datetime import timedelta

import pytest

from tests.helpers.deadlines import holds_until
from tests.helpers.polling import wait_for_execution, wait_for_items, wait_for_status
from tests.helpers.scenario import expect_api_error, parse_ts, secs, total, utcnow
from tests.helpers.workflows import by_task, children, only_task, task

pytestmark = [pytest.mark.tier2, pytest.mark.inquiry, pytest.mark.workflow, pytest.mark.edge_case]

SCAN_BOUND = 1.5  # the timeout scan runs every 1 s (executor.timeout_check_interval)
SCHEMA = {"type": "object", "properties": {"decision": {"type": "string"}}}


def _workflow(make, e2e_pack, uid, slug, timeout, with_default=True):
    ask_next = [{"when": "{{ succeeded() }}",
                 "publish": [{"decision": "{{ result().response.decision }}"}], "do": ["apply"]}]
    if with_default:
        ask_next.insert(0, {"when": "{{ timed_out() }}",
                            "publish": [{"decision": "deny-by-default"}], "do": ["apply"]})
    return make.workflow(
        ref=f"{e2e_pack}.{slug}_{uid}", pack_ref=e2e_pack, label=f"{slug} {uid}",
        definition={"version": "1.0.0", "vars": {"decision": "unset"}, "tasks": [
            task("ask", "core.ask", timeout=timeout, next=ask_next,
                 input={"prompt": f"Deploy {uid}?", "response_schema": SCHEMA}),
            task("apply", "core.echo", input={"message": "{{ workflow.decision }}"})]})


def _start(admin, wf):
    """Run the workflow; return (parent id, ask child id, the pending inquiry)."""
    pid = admin.execute(wf["ref"], {})["id"]
    ask = wait_for_items(lambda: admin.list_executions(parent=pid), 1, timeout=15,
                         description=f"the ask child of workflow {pid}")[0]
    found = wait_for_items(lambda: admin.list_inquiries(execution=ask["id"]), 1, timeout=10,
                           description=f"the inquiry of ask child {ask['id']}")
    inquiry = admin.get_inquiry(found[0]["id"])
    assert inquiry["status"] == "pending" and inquiry["timeout_at"], f"unexpected inquiry: {inquiry}"
    return pid, ask["id"], inquiry


def _wait_timed_out(admin, inquiry):
    """P4: the inquiry must be `timeout` by timeout_at + 1.5 s; returns it."""
    left = secs(utcnow(), inquiry["timeout_at"])
    timed_out = wait_for_status(lambda: admin.get_inquiry(inquiry["id"]), "timeout",
                                timeout=max(left, 0) + SCAN_BOUND, terminal=("responded", "cancelled"),
                                description=f"inquiry {inquiry['id']} (timeout_at {inquiry['timeout_at']})")
    lag = secs(inquiry["timeout_at"], timed_out["updated"])
    assert 0 <= lag <= SCAN_BOUND, \
        f"inquiry went to timeout {lag:.2f} s after timeout_at, expected within [0, {SCAN_BOUND}] s"
    assert timed_out["response"] is None and timed_out["responded_at"] is None, timed_out
    return timed_out


def _assert_ask_timed_out(ask, iid):
    assert ask["status"] == "timeout", f"expected the ask child `timeout`, got {ask}"
    assert ask["result"] == {"error": "inquiry timed out", "__inquiry_id": iid}, \
        f"unexpected ask result: {ask['result']}"
    assert ask["workflow_task"]["timed_out"] is True, f"workflow_task: {ask['workflow_task']}"


def test_unanswered_inquiry_times_out_and_workflow_uses_default(admin, make, uid, e2e_pack):
    """T2.7 Inquiry timeout, default via timed_out(): an ask task with timeout 2 s is not
    answered; the inquiry becomes `timeout` (never `expired`) within 1.5 s of timeout_at, the ask
    child ends `timeout` with error "inquiry timed out" and workflow_task.timed_out true, the
    timed_out() transition publishes decision "deny-by-default", `apply` prints it and the parent
    completes; a late response is 400 and the inquiry stays `timeout`."""
    wf = _workflow(make, e2e_pack, uid, "ask_default", timeout=2)
    pid, ask_id, inquiry = _start(admin, wf)
    ttl = secs(inquiry["created"], inquiry["timeout_at"])
    assert abs(ttl - 2) <= 1.0, f"timeout_at - created = {ttl:.2f} s, expected 2 ± 1 s"

    timed_out = _wait_timed_out(admin, inquiry)
    parent = wait_for_execution(admin, pid, "completed", timeout=15)
    groups = by_task(children(admin, pid))
    assert sorted(groups) == ["apply", "ask"] and total(admin.list_executions, parent=pid) == 2, \
        f"expected exactly the ask and apply children, got {groups}"
    _assert_ask_timed_out(only_task(groups, "ask"), inquiry["id"])
    apply = only_task(groups, "apply")
    assert (apply["status"], apply["result"].get("stdout"), apply["workflow_task"]["triggered_by"]) \
        == ("completed", "deny-by-default", "ask"), f"the default did not reach apply: {apply}"
    assert parent["result"].get("succeeded") is True, f"parent: {parent}"

    late = expect_api_error(lambda: admin.respond_inquiry(inquiry["id"], {"decision": "approve"}),
                            400, "a response after the inquiry timed out")
    assert "not pending" in late.message and "timeout" in late.message, late.message
    after = admin.get_inquiry(inquiry["id"])
    assert (after["status"], after["response"], after["updated"]) == \
        ("timeout", None, timed_out["updated"]), f"the late response changed the inquiry: {after}"
    assert admin.get_execution(ask_id)["status"] == "timeout"


def test_unanswered_inquiry_without_default_fails_the_workflow(admin, make, uid, e2e_pack):
    """T2.7 Inquiry timeout without a default: with only a succeeded() transition the timed-out
    ask is an unhandled failure: the parent ends failed with "Workflow failed: 1 task(s) failed:
    ask", and (P3, the parent is terminal) no `apply` child was ever created."""
    wf = _workflow(make, e2e_pack, uid, "ask_nodefault", timeout=2, with_default=False)
    pid, ask_id, inquiry = _start(admin, wf)

    _wait_timed_out(admin, inquiry)
    parent = wait_for_execution(admin, pid, "failed", timeout=15)
    assert parent["result"] == {"error": "Workflow failed: 1 task(s) failed: ask",
                                "succeeded": False}, f"unexpected parent result: {parent['result']}"
    kids = children(admin, pid)
    assert [c["id"] for c in kids] == [ask_id], f"expected only the ask child, got {kids}"
    _assert_ask_timed_out(kids[0], inquiry["id"])


def test_response_before_timeout_prevents_it(admin, make, uid, e2e_pack):
    """T2.7 A response in time wins: answering an ask (timeout 4 s) before timeout_at completes it
    with the response, `apply` prints the responded decision, the parent completes, and through
    timeout_at + 1.5 s (P4) the inquiry stays `responded` and the ask child `completed`."""
    wf = _workflow(make, e2e_pack, uid, "ask_answered", timeout=4)
    pid, ask_id, inquiry = _start(admin, wf)
    answered = admin.respond_inquiry(inquiry["id"], {"decision": f"approve-{uid}"})
    assert answered["status"] == "responded" and \
        parse_ts(answered["responded_at"]) < parse_ts(inquiry["timeout_at"]), \
        f"the response was not accepted before timeout_at: {answered}"

    parent = wait_for_execution(admin, pid, "completed", timeout=15)
    groups = by_task(children(admin, pid))
    apply = only_task(groups, "apply")
    assert (apply["status"], apply["result"].get("stdout")) == ("completed", f"approve-{uid}"), \
        f"apply did not get the responded decision: {apply}"
    assert parent["result"].get("succeeded") is True

    deadline = parse_ts(inquiry["timeout_at"]) + timedelta(seconds=SCAN_BOUND)
    final = holds_until(
        lambda: (admin.get_inquiry(inquiry["id"]), admin.get_execution(ask_id)), deadline,
        lambda pair: pair[0]["status"] == "responded" and pair[1]["status"] == "completed",
        f"inquiry {inquiry['id']} stays responded and ask {ask_id} completed")
    inq, ask = final
    assert inq["response"] == {"decision": f"approve-{uid}"} and ask["workflow_task"]["timed_out"] \
        is False, f"after the deadline: inquiry {inq}, ask {ask}"
    assert total(admin.list_executions, parent=pid) == 2
