"""T2.4 Parameter templating and context (scenarios.md T2.4).

Upstream idiom: rule `action_params` see `event.*`, `pack.config.*`, `system.*`; workflow templates
see `parameters.*`, `task.<name>.*` (the result view, stdout JSON keys merged in), `workflow.*`,
`item`/`index`, functions such as `upper()`. Attune's own expression language: no `|` filters.
A whole-string template keeps the JSON type; embedded templates are interpolated as strings; a
missing rule path renders null; a workflow render error fails the task before a child exists.
Extension E9 `template_context`: `keystore.<name>` (system and pack keys, decrypted; encrypted values
stored redacted and restored for the worker) and `result.task_errors` on the failed parent.
"""
import json

import pytest

from tests.helpers.polling import wait_for_execution
from tests.helpers.scenario import all_items, chain_for_event, secret_value

pytestmark = [pytest.mark.tier2, pytest.mark.workflow, pytest.mark.rules]

PAYLOAD = {"user": {"email": "a@b.c", "name": "Ada"}, "count": 42, "tags": ["x", "y"]}
REDACTED = {"$attune_secret": True, "redacted": True}


def children_by_task(client, parent_id: int) -> dict:
    children = [client.get_execution(c["id"]) for c in all_items(client.list_executions,
                                                                 parent=parent_id)]
    return {c["workflow_task"]["task_name"]: c for c in children}


def json_printer(make, pack: str, uid: str, slug: str, obj: dict) -> dict:
    """An ad-hoc inline-shell action printing `obj` as JSON."""
    return make.action(ref=f"{pack}.{slug}_{uid}", pack_ref=pack, label=f"{slug} {uid}",
                       runtime_ref="core.shell", entrypoint=f"printf '%s' '{json.dumps(obj)}'")


def test_rule_and_workflow_templates_resolve(admin, make, uid, e2e_pack):
    """T2.4 Parameter templating: a webhook rule renders nested payload paths (type kept), the whole
    payload, a missing path (null) and an interpolated `id={{ event.id }}` into the workflow's
    config; in the workflow, task_2's input resolves task_1's output fields, an interpolated
    combination, arithmetic on a parameter (84) and a function call (upper); the parent
    completes."""
    task_1 = json_printer(make, e2e_pack, uid, "emit", {"api_key": f"k-{uid}", "status": "ok"})
    sink = make.action(ref=f"{e2e_pack}.sink_{uid}", pack_ref=e2e_pack, label=f"sink {uid}",
                       runtime_ref="core.shell", entrypoint="true")
    workflow = make.workflow(
        ref=f"{e2e_pack}.templating_{uid}", pack_ref=e2e_pack, label=f"templating {uid}",
        definition={"version": "1.0.0", "tasks": [
            {"name": "task_1", "action": task_1["ref"],
             "next": [{"when": "{{ succeeded() }}", "do": ["task_2"]}]},
            {"name": "task_2", "action": sink["ref"],
             "input": {"key": "{{ task.task_1.api_key }}",
                       "combo": "{{ parameters.email }}:{{ task.task_1.status }}",
                       "double": "{{ parameters.count * 2 }}",
                       "upper": "{{ upper(parameters.email) }}"}}]})
    trigger, hook = make.webhook_trigger(ref=f"{e2e_pack}.tpl_{uid}", pack_ref=e2e_pack,
                                         label=f"templating {uid}")
    make.rule(ref=f"{e2e_pack}.on_tpl_{uid}", pack_ref=e2e_pack, label=f"on tpl {uid}",
              trigger_ref=trigger["ref"], action_ref=workflow["ref"],
              action_params={"email": "{{ event.payload.user.email }}",
                             "count": "{{ event.payload.count }}",
                             "raw": "{{ event.payload }}",
                             "missing": "{{ event.payload.nope }}",
                             "label": "id={{ event.id }}"})

    event_id = admin.post_webhook(hook, PAYLOAD)["event_id"]

    enforcement, parent = chain_for_event(admin, event_id)
    expected = {"email": "a@b.c", "count": 42, "raw": PAYLOAD, "missing": None,
                "label": f"id={event_id}"}
    assert enforcement["config"] == expected, f"enforcement.config: {enforcement['config']}"
    parent = wait_for_execution(admin, parent["id"], "completed", timeout=30)
    assert parent["config"] == expected, f"execution.config: {parent['config']}"
    tasks = children_by_task(admin, parent["id"])
    assert sorted(tasks) == ["task_1", "task_2"], f"children: {sorted(tasks)}"
    assert tasks["task_2"]["config"] == \
        {"key": f"k-{uid}", "combo": "a@b.c:ok", "double": 84, "upper": "A@B.C"}, \
        f"task_2.config: {tasks['task_2']['config']}"
    assert [tasks[t]["status"] for t in ("task_1", "task_2")] == ["completed", "completed"]


def test_render_error_fails_the_task_before_a_child_exists(admin, make, uid, e2e_pack):
    """T2.4 Parameter templating, render error: W2 `ok` -> task_3 with input `{{ task.ok.nope }}`;
    once the parent is terminal (P3) it is failed with "Workflow failed: 1 task(s) failed: task_3"
    and no task_3 child exists (only `ok`)."""
    ok = json_printer(make, e2e_pack, uid, "ok", {"status": "ok"})
    sink = make.action(ref=f"{e2e_pack}.sink_{uid}", pack_ref=e2e_pack, label=f"sink {uid}",
                       runtime_ref="core.shell", entrypoint="true")
    workflow = make.workflow(
        ref=f"{e2e_pack}.render_err_{uid}", pack_ref=e2e_pack, label=f"render error {uid}",
        definition={"version": "1.0.0", "tasks": [
            {"name": "ok", "action": ok["ref"],
             "next": [{"when": "{{ succeeded() }}", "do": ["task_3"]}]},
            {"name": "task_3", "action": sink["ref"], "input": {"x": "{{ task.ok.nope }}"}}]})

    parent = wait_for_execution(admin, admin.execute(workflow["ref"], {})["id"], "failed", timeout=30)

    assert parent["result"].get("error") == "Workflow failed: 1 task(s) failed: task_3", \
        f"parent result: {parent['result']}"
    tasks = children_by_task(admin, parent["id"])  # P3: the parent is terminal
    assert sorted(tasks) == ["ok"] and tasks["ok"]["status"] == "completed", \
        f"expected only the `ok` child, got {[(n, c['status']) for n, c in tasks.items()]}"


@pytest.mark.needs_extension("template_context")
def test_render_errors_are_reported_in_task_errors(admin, make, uid, e2e_pack):
    """T2.4 Parameter templating, E9 task_errors: the failed parent names the missing field
    (`Template rendering failed for task 'task_3': ...nope...`); a `|` filter is a render error
    too, reported the same way, with no child for that task."""
    ok = json_printer(make, e2e_pack, uid, "ok", {"status": "ok"})
    sink = make.action(ref=f"{e2e_pack}.sink_{uid}", pack_ref=e2e_pack, label=f"sink {uid}",
                       runtime_ref="core.shell", entrypoint="true")
    missing = make.workflow(
        ref=f"{e2e_pack}.render_err_{uid}", pack_ref=e2e_pack, label=f"render error {uid}",
        definition={"version": "1.0.0", "tasks": [
            {"name": "ok", "action": ok["ref"],
             "next": [{"when": "{{ succeeded() }}", "do": ["task_3"]}]},
            {"name": "task_3", "action": sink["ref"], "input": {"x": "{{ task.ok.nope }}"}}]})
    filtered = make.workflow(
        ref=f"{e2e_pack}.filter_err_{uid}", pack_ref=e2e_pack, label=f"filter error {uid}",
        definition={"version": "1.0.0", "tasks": [
            {"name": "shout", "action": sink["ref"],
             "input": {"x": "{{ parameters.email | upper }}"}}]})

    first = wait_for_execution(admin, admin.execute(missing["ref"], {})["id"], "failed", timeout=30)
    second = wait_for_execution(admin, admin.execute(filtered["ref"], {"email": "a@b.c"})["id"],
                                "failed", timeout=30)

    error = (first["result"].get("task_errors") or {}).get("task_3") or ""
    assert error.startswith("Template rendering failed for task 'task_3':") and "nope" in error, \
        f"task_errors of W2: {first['result']}"
    shout = (second["result"].get("task_errors") or {}).get("shout") or ""
    assert shout.startswith("Template rendering failed for task 'shout':"), \
        f"a `|` filter must be a render error: {second['result']}"
    assert second["result"].get("error") == "Workflow failed: 1 task(s) failed: shout"
    assert children_by_task(admin, second["id"]) == {}, "no child may exist for the failed task"


@pytest.mark.needs_extension("template_context")
def test_keystore_values_in_rule_and_workflow_templates(admin, make, uid, e2e_pack):
    """T2.4 Parameter templating, keystore (E9): a pack key cfg_<uid> = {"api_url": ...} resolves
    as `{{ keystore.cfg_<uid>.api_url }}` in rule action_params and in workflow task input; an
    encrypted pack key's value is stored redacted in enforcement and execution config (rule) and
    in the child's config (workflow), while the action itself receives the plaintext."""
    api_url = "https://api.example.com"
    secret = secret_value("test_password", uid)
    cfg = make.key(ref=f"{e2e_pack}.cfg_{uid}", name=f"cfg_{uid}", value={"api_url": api_url})
    sec = make.key(ref=f"{e2e_pack}.sec_{uid}", name=f"sec_{uid}", value=secret, encrypted=True)
    workflow = make.workflow(
        ref=f"{e2e_pack}.ks_wf_{uid}", pack_ref=e2e_pack, label=f"keystore wf {uid}",
        definition={"version": "1.0.0", "tasks": [
            {"name": "use", "action": f"{e2e_pack}.echo_params",
             "input": {"value": f"{{{{ keystore.{cfg['name']}.api_url }}}}",
                       "data": f"{{{{ keystore.{sec['name']} }}}}",
                       "only": ["value", "data"]}}]})
    trigger, hook = make.webhook_trigger(ref=f"{e2e_pack}.ks_{uid}", pack_ref=e2e_pack,
                                         label=f"keystore {uid}")
    make.rule(ref=f"{e2e_pack}.on_ks_{uid}", pack_ref=e2e_pack, label=f"on keystore {uid}",
              trigger_ref=trigger["ref"], action_ref=f"{e2e_pack}.echo_params",
              action_params={"value": f"{{{{ keystore.{cfg['name']}.api_url }}}}",
                             "data": f"token={{{{ keystore.{sec['name']} }}}}",
                             "only": ["value", "data"]})

    event_id = admin.post_webhook(hook, {"go": True})["event_id"]
    wf_parent = wait_for_execution(admin, admin.execute(workflow["ref"], {})["id"], "completed",
                                   timeout=30)

    enforcement, execution = chain_for_event(admin, event_id)
    redacted_config = {"value": api_url, "data": REDACTED, "only": ["value", "data"]}
    assert enforcement["config"] == redacted_config, f"enforcement.config: {enforcement['config']}"
    execution = wait_for_execution(admin, execution["id"], "completed", timeout=20)
    assert execution["config"] == redacted_config, f"execution.config: {execution['config']}"
    assert execution["result"].get("data") == {"value": api_url, "data": f"token={secret}"}, \
        f"the rule's action must receive the plaintext: {execution['result']}"
    child = children_by_task(admin, wf_parent["id"])["use"]
    assert child["config"] == redacted_config, f"workflow child config: {child['config']}"
    assert child["result"].get("data") == {"value": api_url, "data": secret}, \
        f"the workflow's action must receive the plaintext: {child['result']}"
    for stored in (enforcement, execution, child, wf_parent):
        assert secret not in json.dumps(stored.get("config")), f"plaintext stored: {stored['config']}"
