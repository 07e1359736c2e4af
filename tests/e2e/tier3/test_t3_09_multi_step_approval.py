"""T3.9 Multi-step approval workflow (scenarios.md T3.9).

Upstream idiom: each approval is a `core.ask` task; while its inquiry is `pending` the ask child
stays `running` (there is no `paused` status). `manager` is assigned to identity M
(`assigned_to`), so anyone else - the admin included - gets 403 when responding. Each transition
is `when: "{{ result().response.approved == true }}"`; `final` reads both responses as
`task.<ask>.response.comment`. A denial has no transition to follow, which ends the workflow
`completed` (not failed).
"""
import pytest

from tests.helpers.chains import approval_workflow, tree_order, wait_child, wait_pending_inquiry
from tests.helpers.polling import TERMINAL, wait_for_execution
from tests.helpers.scenario import expect_api_error, secs
from tests.helpers.workflows import by_task, children, only_task

pytestmark = [pytest.mark.tier3, pytest.mark.inquiry, pytest.mark.workflow, pytest.mark.orchestration]


def test_workflow_pauses_at_manager_then_security_approval(admin, make, uid, e2e_pack):
    """T3.9 Multi-step approval workflow: at the first pause the parent is running, exactly one
    inquiry is pending - the `manager` child's, assigned to M - and no `security` child exists;
    the admin responding gets 403 and the inquiry stays pending; M responding gets 200. Then the
    `security` child appears (created after the manager child ended) with its own pending
    inquiry; responding to it completes it; `final` prints "mgr-ok/sec-ok"; the parent completes
    with exactly the three children manager, security, final, all `completed`."""
    m_client, m_ident = make.user(["core.admin"])
    wf = approval_workflow(make, e2e_pack, uid, m_ident["id"])

    parent = admin.execute(wf["ref"], {})
    pid = parent["id"]
    manager = wait_child(admin, pid, "manager")
    inquiry_m = wait_pending_inquiry(admin, manager["id"])

    # first pause
    assert admin.get_execution(pid)["status"] == "running"
    assert admin.get_execution(manager["id"])["status"] == "running"
    assert inquiry_m["assigned_to"] == m_ident["id"], f"manager inquiry: {inquiry_m}"
    assert inquiry_m["prompt"] == f"Manager approval {uid}"
    assert [(name, c["id"]) for name, c in tree_order(admin, pid)] == [("manager", manager["id"])], \
        "at the first pause only the manager child may exist"
    pending_here = [i["id"] for c in children(admin, pid)
                    for i in admin.list_inquiries(execution=c["id"], status="pending")["items"]]
    assert pending_here == [inquiry_m["id"]], f"expected one pending inquiry, got {pending_here}"

    err = expect_api_error(lambda: admin.respond_inquiry(inquiry_m["id"], {"approved": True,
                                                                          "comment": "admin"}),
                           403, "admin responding to the manager's assigned inquiry")
    assert admin.get_inquiry(inquiry_m["id"])["status"] == "pending", \
        f"the refused response changed the inquiry ({err.message})"
    answered = m_client.respond_inquiry(inquiry_m["id"], {"approved": True, "comment": "mgr-ok"})
    assert (answered["status"], answered["response"]) == \
        ("responded", {"approved": True, "comment": "mgr-ok"}), f"M's response: {answered}"

    # second pause
    security = wait_child(admin, pid, "security")
    inquiry_s = wait_pending_inquiry(admin, security["id"])
    manager = wait_for_execution(admin, manager["id"], "completed", timeout=10)
    assert secs(manager["updated"], security["created"]) >= 0, \
        "the security child must be created after the manager approval completed"
    assert inquiry_s["id"] != inquiry_m["id"] and inquiry_s["assigned_to"] is None, f"security inquiry: {inquiry_s}"
    assert admin.get_execution(pid)["status"] == "running"
    assert sorted(name for name, _ in tree_order(admin, pid)) == ["manager", "security"], \
        "at the second pause only manager and security may exist"
    admin.respond_inquiry(inquiry_s["id"], {"approved": True, "comment": "sec-ok"})

    parent = wait_for_execution(admin, pid, "completed", timeout=30)
    groups = by_task(children(admin, pid))  # P3: the parent is terminal
    assert sorted(groups) == ["final", "manager", "security"], f"children: {sorted(groups)}"
    final = only_task(groups, "final")
    assert final["status"] == "completed" and final["result"]["stdout"] == "mgr-ok/sec-ok", \
        f"final: {final['status']} {final['result']}"
    security = only_task(groups, "security")
    assert security["status"] == "completed" and security["result"]["response"] == \
        {"approved": True, "comment": "sec-ok"}, f"security child: {security}"
    assert only_task(groups, "manager")["result"]["response"] == {"approved": True, "comment": "mgr-ok"}
    assert secs(security["updated"], final["created"]) >= 0, "final must start after the security approval"


def test_manager_denial_ends_the_workflow_without_later_steps(admin, make, uid, e2e_pack):
    """T3.9 Multi-step approval workflow, denial: M responds approved=false; the manager child
    completes with that response and, after the parent is terminal (P3), the parent is
    `completed` (no transition is not a failure) with only the manager child - no `security`, no
    `final` - and no inquiry other than the manager's."""
    m_client, m_ident = make.user(["core.admin"])
    wf = approval_workflow(make, e2e_pack, uid, m_ident["id"])

    pid = admin.execute(wf["ref"], {})["id"]
    manager = wait_child(admin, pid, "manager")
    inquiry_m = wait_pending_inquiry(admin, manager["id"])
    m_client.respond_inquiry(inquiry_m["id"], {"approved": False, "comment": "no"})

    parent = wait_for_execution(admin, pid, TERMINAL, timeout=30)
    assert parent["status"] == "completed", f"a denial must end the workflow completed: {parent}"
    kids = children(admin, pid)
    assert [(c["workflow_task"]["task_name"], c["status"]) for c in kids] == [("manager", "completed")], \
        f"after the denial only the manager child may exist, got {[(c['id'], c['status']) for c in kids]}"
    assert kids[0]["result"]["response"] == {"approved": False, "comment": "no"}
    assert [i["id"] for i in admin.list_inquiries(execution=manager["id"])["items"]] == [inquiry_m["id"]]
