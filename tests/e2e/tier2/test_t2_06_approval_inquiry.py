"""T2.6 Approval workflow, inquiry (scenarios.md T2.6).

Upstream has no `paused` status: a workflow task running `core.ask` creates an inquiry, and while
it is `pending` the ask child stays `running` with `result {"inquiry_id", "status": "pending"}`
(behavior.md §5). `POST /api/v1/inquiries/{id}/respond` completes the child with
`result.response`, which later tasks read as `task.ask.response.<field>`. Three response shapes:
yes/no, a form and a multiple choice. `response_schema` is not validated upstream, so it is only
checked to be stored as sent. The denial branch is T3.9; the timeout default is T2.7.
"""
import pytest

from tests.helpers.polling import wait_for_execution, wait_for_items
from tests.helpers.scenario import expect_api_error, secs, total
from tests.helpers.workflows import by_task, children, only_task, task

pytestmark = [pytest.mark.tier2, pytest.mark.inquiry, pytest.mark.workflow]

ASK_TIMEOUT = 30

SHAPES = {
    "yes_no": ({"type": "object", "properties": {"approved": {"type": "boolean"},
                                                  "comment": {"type": "string"}},
                "required": ["approved"]},
               lambda uid: {"approved": True, "comment": f"ship it {uid}"},
               "{{ task.ask.response.comment }}",
               lambda uid: f"ship it {uid}"),
    "form": ({"type": "object", "properties": {"name": {"type": "string"},
                                                "count": {"type": "integer"}},
              "required": ["name", "count"]},
             lambda uid: {"name": f"web-{uid}", "count": 3},
             "{{ task.ask.response.name }} x{{ task.ask.response.count }}",
             lambda uid: f"web-{uid} x3"),
    "choice": ({"type": "object", "properties": {"choice": {"type": "string",
                                                             "enum": ["a", "b", "c"]}},
                "required": ["choice"]},
               lambda uid: {"choice": "b"},
               "{{ task.ask.response.choice }}",
               lambda uid: "b"),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_ask_task_waits_for_response_and_passes_it_on(admin, make, uid, e2e_pack, shape):
    """T2.6 Approval workflow: a `core.ask` task (timeout 30 s) pauses the workflow; while the
    inquiry is pending the parent and the ask child are `running`, the child's result is
    {inquiry_id, status: pending}, the inquiry holds the prompt and response_schema as sent,
    assigned_to null and timeout_at = created + 30 s (±1 s), and no later task exists. Responding
    returns 200 {data: responded, responded_at, response}; the ask child completes with
    result.response and __inquiry_id; the next task prints the response field; the parent
    completes. A second response is 400 (not 409); responding to an unknown inquiry is 404."""
    schema, make_response, message, make_expected = SHAPES[shape]
    response, expected = make_response(uid), make_expected(uid)
    prompt = f"Approve deploy {uid} ({shape})?"
    wf = make.workflow(
        ref=f"{e2e_pack}.approve_{shape}_{uid}", pack_ref=e2e_pack, label=f"approve {shape} {uid}",
        definition={"version": "1.0.0", "tasks": [
            task("ask", "core.ask", timeout=ASK_TIMEOUT,
                 input={"prompt": prompt, "response_schema": schema},
                 next=[{"when": "{{ succeeded() }}", "do": ["use"]}]),
            task("use", "core.echo", input={"message": message})]})

    parent = admin.execute(wf["ref"], {})
    pid = parent["id"]
    ask_summary = wait_for_items(lambda: admin.list_executions(parent=pid), 1, timeout=15,
                                 description=f"the ask child of workflow {pid}")[0]
    pending = wait_for_items(lambda: admin.list_inquiries(execution=ask_summary["id"],
                                                          status="pending"), 1, timeout=10,
                             description=f"the pending inquiry of ask child {ask_summary['id']}")
    inquiry = admin.get_inquiry(pending[0]["id"])
    iid = inquiry["id"]

    # "paused": the upstream pair (child running with a pending result, inquiry pending)
    ask = admin.get_execution(ask_summary["id"])
    assert (ask["status"], ask["action_ref"], ask["workflow_task"]["task_name"]) == \
        ("running", "core.ask", "ask"), f"unexpected ask child while pending: {ask}"
    assert ask["result"] == {"inquiry_id": iid, "status": "pending"}, \
        f"expected the pending-inquiry result, got {ask['result']}"
    assert admin.get_execution(pid)["status"] == "running", "the parent is not running while paused"
    assert (inquiry["status"], inquiry["execution"], inquiry["prompt"], inquiry["response_schema"],
            inquiry["assigned_to"], inquiry["response"], inquiry["responded_at"]) == \
        ("pending", ask["id"], prompt, schema, None, None, None), f"unexpected inquiry: {inquiry}"
    ttl = secs(inquiry["created"], inquiry["timeout_at"])
    assert abs(ttl - ASK_TIMEOUT) <= 1.0, f"timeout_at - created = {ttl:.2f} s, expected 30 ± 1 s"
    waiting = children(admin, pid)
    assert [c["id"] for c in waiting] == [ask["id"]], \
        f"expected only the ask child while the inquiry is pending, got {waiting}"

    answer = admin.post(f"/api/v1/inquiries/{iid}/respond", {"response": response})
    data = answer["data"]
    assert (data["id"], data["status"], data["response"]) == (iid, "responded", response), \
        f"unexpected respond answer: {answer}"
    assert data["responded_at"] and secs(inquiry["created"], data["responded_at"]) >= 0, \
        f"responded_at missing or before created: {data}"

    parent = wait_for_execution(admin, pid, "completed", timeout=20)
    groups = by_task(children(admin, pid))
    assert sorted(groups) == ["ask", "use"] and total(admin.list_executions, parent=pid) == 2, \
        f"expected exactly the ask and use children, got {groups}"
    ask = only_task(groups, "ask")
    assert ask["status"] == "completed" and ask["result"]["response"] == response \
        and ask["result"]["__inquiry_id"] == iid, f"ask child after the response: {ask}"
    use = only_task(groups, "use")
    assert (use["status"], use["result"].get("stdout"), use["workflow_task"]["triggered_by"]) == \
        ("completed", expected, "ask"), f"the response did not reach the next task: {use}"
    assert secs(data["responded_at"], use["created"]) >= 0, "use started before the response"
    assert admin.get_inquiry(iid)["status"] == "responded"

    second = expect_api_error(lambda: admin.respond_inquiry(iid, response), 400,
                              "a second response to the same inquiry")
    assert "not pending" in second.message, f"unexpected message: {second.message}"
    expect_api_error(lambda: admin.respond_inquiry(2_000_000_000, response), 404,
                     "a response to an unknown inquiry")
