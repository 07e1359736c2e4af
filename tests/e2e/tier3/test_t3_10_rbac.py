"""T3.10 RBAC permission checks (scenarios.md T3.10).

Roles are upstream's built-in permission sets: `core.viewer` (read only), `core.executor` (read
and execute), `core.editor` (create and update, no delete), `core.admin` (everything). The viewer
gets its set through a role label (`e2e_viewer_<uid>` linked to `core.viewer`), the others by
direct assignment. Targets live in the session's uploaded `e2e_core` pack, which has no owner and
is visible to everyone. Denials are 403 `{"error": "Insufficient permissions: <resource>:<action>",
"code": "FORBIDDEN"}` and leave nothing behind. Refs are always fresh: a duplicate ref answers 409
before the RBAC check.

Upstream leaves trigger, workflow, rule enable/disable, execution cancel and inquiry mutations
without a check; extension E4 `mutation_rbac` applies upstream's own grants there.
"""
import pytest

from tests.helpers.polling import wait_for_execution
from tests.helpers.scenario import expect_api_error, total
from tests.helpers.security import expect_forbidden, grant_role, pack_refs

pytestmark = [pytest.mark.tier3, pytest.mark.rbac, pytest.mark.security]


def _action_body(pack: str, ref: str) -> dict:
    return {"ref": ref, "pack_ref": pack, "label": ref, "runtime_ref": "core.shell",
            "entrypoint": "printf rbac"}


def test_viewer_reads_but_every_write_and_execute_is_forbidden(admin, make, uid, e2e_pack):
    """T3.10 RBAC, viewer (role label -> core.viewer): GET packs, action, rule and the admin's
    execution answer 200; POST/PUT/DELETE /actions, POST /executions/execute and POST /keys answer
    403 with the exact denial body, and the denied action does not exist afterwards; an
    encrypted key reads as value null."""
    viewer, ident = make.user([])
    grant_role(admin, make, ident["id"], "core.viewer", f"e2e_viewer_{uid}")
    action = make.action(entrypoint=f"printf 'admin-{uid}'")
    trigger, _ = make.webhook_trigger()
    rule = make.rule(trigger_ref=trigger["ref"], action_ref=action["ref"])
    admin_exec = wait_for_execution(admin, admin.execute(action["ref"])["id"], "completed")
    key = make.key(value=f"top-secret-{uid}", encrypted=True)

    assert e2e_pack in pack_refs(viewer), "the viewer's pack list lacks the fixture pack"
    assert viewer.get_pack(e2e_pack)["ref"] == e2e_pack
    assert viewer.get_action(action["ref"])["ref"] == action["ref"]
    assert viewer.get_rule(rule["ref"])["ref"] == rule["ref"]
    assert viewer.get_execution(admin_exec["id"])["status"] == "completed"

    new_ref = f"{e2e_pack}.viewer_made_{uid}"
    expect_forbidden(lambda: viewer.create_action(**_action_body(e2e_pack, new_ref)),
                     "actions", "create", "viewer POST /actions")
    expect_api_error(lambda: admin.get_action(new_ref), 404, "the denied action afterwards")
    expect_forbidden(lambda: viewer.execute(action["ref"]), "actions", "execute",
                     "viewer POST /executions/execute")
    assert total(admin.list_executions, action_ref=action["ref"]) == 1, \
        "the viewer's denied execute created an execution"
    expect_forbidden(lambda: viewer.update_action(action["ref"], label="changed"),
                     "actions", "update", "viewer PUT /actions/<ref>")
    expect_forbidden(lambda: viewer.delete_action(action["ref"]), "actions", "delete",
                     "viewer DELETE /actions/<ref>")
    assert admin.get_action(action["ref"])["label"] == action["label"], "denied PUT changed the action"
    key_ref = f"{e2e_pack}.viewer_key_{uid}"
    expect_forbidden(lambda: viewer.create_key(ref=key_ref, name=f"viewer_key_{uid}",
                                               owner_type="pack", owner_pack_ref=e2e_pack,
                                               value="x"),
                     "keys", "create", "viewer POST /keys")
    expect_api_error(lambda: admin.get_key(key_ref), 404, "the denied key afterwards")
    seen = viewer.get_key(key["ref"])
    assert (seen["value"], seen["encrypted"]) == (None, True), \
        f"viewer must read an encrypted key as value null, got {seen}"


def test_executor_runs_actions_but_cannot_create(admin, make, uid, e2e_pack):
    """T3.10 RBAC, executor (core.executor): POST /executions/execute answers 201 and the run
    completes under the executor's identity; POST /actions and POST /rules answer 403
    actions:create / rules:create and create nothing."""
    runner, ident = make.user(["core.executor"])
    action = make.action(entrypoint=f"printf 'exec-{uid}'")
    trigger, _ = make.webhook_trigger()

    created = runner.execute(action["ref"])
    done = wait_for_execution(runner, created["id"], "completed")
    assert (done["executor"], done["result"].get("stdout")) == (ident["id"], f"exec-{uid}"), \
        f"executor's run: {done}"

    new_ref = f"{e2e_pack}.executor_made_{uid}"
    expect_forbidden(lambda: runner.create_action(**_action_body(e2e_pack, new_ref)),
                     "actions", "create", "executor POST /actions")
    expect_api_error(lambda: admin.get_action(new_ref), 404, "the denied action afterwards")
    rule_ref = f"{e2e_pack}.executor_rule_{uid}"
    expect_forbidden(lambda: runner.create_rule(ref=rule_ref, pack_ref=e2e_pack, label=rule_ref,
                                                trigger_ref=trigger["ref"],
                                                action_ref=action["ref"]),
                     "rules", "create", "executor POST /rules")
    expect_api_error(lambda: admin.get_rule(rule_ref), 404, "the denied rule afterwards")


def test_editor_creates_and_updates_but_cannot_delete(admin, make, uid, e2e_pack):
    """T3.10 RBAC, editor (core.editor): POST /actions 201, PUT 200, DELETE 403 actions:delete
    (the action stays); POST /rules 201, DELETE 403 rules:delete (the rule stays); POST /keys 403
    keys:create."""
    editor, _ = make.user(["core.editor"])
    trigger, _ = make.webhook_trigger()
    ref = f"{e2e_pack}.editor_made_{uid}"

    action = editor.create_action(**_action_body(e2e_pack, ref))
    make.defer(f"delete action {ref}", lambda: admin.delete_action(ref))
    assert action["ref"] == ref
    assert editor.update_action(ref, label=f"edited {uid}")["label"] == f"edited {uid}"
    expect_forbidden(lambda: editor.delete_action(ref), "actions", "delete", "editor DELETE action")
    assert admin.get_action(ref)["label"] == f"edited {uid}", "the denied delete removed the action"

    rule_ref = f"{e2e_pack}.editor_rule_{uid}"
    rule = editor.create_rule(ref=rule_ref, pack_ref=e2e_pack, label=rule_ref,
                              trigger_ref=trigger["ref"], action_ref=ref)
    make.defer(f"delete rule {rule_ref}", lambda: admin.delete_rule(rule_ref))
    make.defer(f"disable rule {rule_ref}", lambda: admin.disable_rule(rule_ref))
    assert (rule["ref"], rule["enabled"]) == (rule_ref, True)
    expect_forbidden(lambda: editor.delete_rule(rule_ref), "rules", "delete", "editor DELETE rule")
    assert admin.get_rule(rule_ref)["ref"] == rule_ref, "the denied delete removed the rule"

    key_ref = f"{e2e_pack}.editor_key_{uid}"
    expect_forbidden(lambda: editor.create_key(ref=key_ref, name=f"editor_key_{uid}",
                                               owner_type="pack", owner_pack_ref=e2e_pack,
                                               value="x"),
                     "keys", "create", "editor POST /keys")
    expect_api_error(lambda: admin.get_key(key_ref), 404, "the denied key afterwards")


def test_admin_role_has_full_crud(make, uid, e2e_pack):
    """T3.10 RBAC, admin (a fresh identity holding core.admin): create, update, execute and delete
    an action, create/disable/delete a rule, create/read/delete an encrypted key: all 2xx, and the
    deletes really remove the objects."""
    boss, _ = make.user(["core.admin"])
    trigger, _ = make.webhook_trigger()
    ref = f"{e2e_pack}.admin_made_{uid}"

    assert boss.create_action(**_action_body(e2e_pack, ref))["ref"] == ref
    assert boss.update_action(ref, label=f"admin {uid}")["label"] == f"admin {uid}"
    run = wait_for_execution(boss, boss.execute(ref)["id"], "completed")
    assert run["result"].get("stdout") == "rbac", f"admin's run: {run['result']}"
    rule_ref = f"{e2e_pack}.admin_rule_{uid}"
    assert boss.create_rule(ref=rule_ref, pack_ref=e2e_pack, label=rule_ref,
                            trigger_ref=trigger["ref"], action_ref=ref)["enabled"] is True
    assert boss.disable_rule(rule_ref)["enabled"] is False
    boss.delete_rule(rule_ref)
    expect_api_error(lambda: boss.get_rule(rule_ref), 404, "the deleted rule")
    boss.delete_action(ref)
    expect_api_error(lambda: boss.get_action(ref), 404, "the deleted action")
    key_ref = f"{e2e_pack}.admin_key_{uid}"
    boss.create_key(ref=key_ref, name=f"admin_key_{uid}", owner_type="pack",
                    owner_pack_ref=e2e_pack, value=f"v-{uid}", encrypted=True)
    assert boss.get_key(key_ref)["value"] == f"v-{uid}", "admin must read its key decrypted"
    boss.delete_key(key_ref)
    expect_api_error(lambda: boss.get_key(key_ref), 404, "the deleted key")


@pytest.mark.needs_extension("mutation_rbac")
def test_viewer_is_denied_on_routes_upstream_leaves_open(admin, make, uid, e2e_pack):
    """T3.10 RBAC, extension E4 mutation_rbac, viewer: POST /triggers 403 triggers:create (nothing
    created); POST /rules/<r>/disable 403 rules:update (the rule stays enabled); cancel of a
    running execution 403 executions:cancel (it completes normally); POST /workflows 403
    actions:create; inquiry respond 403 inquiries:respond (it stays pending); each denial is
    audited as rbac.denied for the viewer."""
    viewer, ident = make.user(["core.viewer"])
    trigger, _ = make.webhook_trigger()
    rule = make.rule(trigger_ref=trigger["ref"], action_ref="core.noop")
    running = admin.execute(f"{e2e_pack}.sleeper", {"seconds": 2})
    wait_for_execution(admin, running["id"], "running", timeout=20)
    inquiry = admin.create_inquiry(execution=running["id"], prompt=f"approve {uid}?")
    make.defer(f"delete inquiry {inquiry['id']}",
               lambda: admin.delete(f"/api/v1/inquiries/{inquiry['id']}"))

    trig_ref = f"{e2e_pack}.viewer_trigger_{uid}"
    expect_forbidden(lambda: viewer.create_trigger(ref=trig_ref, pack_ref=e2e_pack, label=trig_ref),
                     "triggers", "create", "viewer POST /triggers")
    expect_api_error(lambda: admin.get_trigger(trig_ref), 404, "the denied trigger afterwards")
    expect_forbidden(lambda: viewer.disable_rule(rule["ref"]), "rules", "update",
                     "viewer disabling a rule")
    expect_forbidden(lambda: viewer.cancel_execution(running["id"]), "executions", "cancel",
                     "viewer cancelling a running execution")
    wf_ref = f"{e2e_pack}.viewer_wf_{uid}"
    expect_forbidden(lambda: viewer.create_workflow(
        ref=wf_ref, pack_ref=e2e_pack, label=wf_ref, version="1.0.0",
        definition={"version": "1.0.0", "tasks": [{"name": "only", "action": "core.noop"}]}),
        "actions", "create", "viewer POST /workflows")
    expect_api_error(lambda: admin.get_action(wf_ref), 404, "the denied workflow's action")
    expect_forbidden(lambda: viewer.respond_inquiry(inquiry["id"], {"approved": True}),
                     "inquiries", "respond", "viewer responding to an inquiry")

    assert admin.get_rule(rule["ref"])["enabled"] is True, "the denied disable took effect"
    assert admin.get_inquiry(inquiry["id"])["status"] == "pending", "the denied respond took effect"
    done = wait_for_execution(admin, running["id"], "completed", timeout=20)
    assert "done" in (done["result"].get("stdout") or ""), \
        f"the sleeper must finish normally after the denied cancel: {done['result']}"
    denied = admin.list_audit_events(event_type="rbac.denied", actor_identity=ident["id"],
                                     per_page=100)["items"]
    seen = {e["resource_type"] for e in denied}
    assert {"triggers", "rules", "executions", "actions", "inquiries"} <= seen, \
        f"rbac.denied audit events of the viewer cover only {sorted(seen)}: {denied}"
