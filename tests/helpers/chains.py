"""Machinery of the webhook-chain, pipeline and approval scenarios (T3.4, T3.5, T3.7, T3.8, T3.9,
T3.13), kept out of the test bodies.

- events and their fan-out: `trigger_events` (full events of one trigger, oldest first),
  `enforcements_of` (full enforcements of one event, by rule ref), `wait_enforcement` (the one
  enforcement of a rule for an event; with the catch-all rule it is the P1 anchor),
  `execution_of` (the one execution of an enforcement);
- `Ledger`: a webhook trigger used as a side-effect counter (scenarios.md §0.2); actions post to
  its `url`, the test counts its events by payload field;
- workflows: `wait_child` (a parent's child for a task), `wait_pending_inquiry` (the pending
  inquiry of a `core.ask` child), `tree_order` (children of a workflow, oldest first, with their
  task names);
- builders: `pipeline_workflow` (T3.7's check -> approve -> deploy -> record -> notify),
  `approval_workflow` (T3.9's manager -> security -> final);
- `stream_statuses` (every status one execution had on the SSE stream).

Every waiting function goes through polling.wait_until and fails naming what it expected.
"""
from __future__ import annotations

from typing import Any

from tests.helpers.client import AttuneClient
from tests.helpers.polling import WaitAborted, wait_for_items, wait_until
from tests.helpers.scenario import all_items, stream_exec_id
from tests.helpers.workflows import children, step_action, task, task_name


# ------------------------------------------------------------------ events and their fan-out
def trigger_events(client, trigger_ref: str) -> list[dict]:
    """Every event of `trigger_ref` (full objects with payload), oldest first."""
    summaries = all_items(client.list_events, trigger_ref=trigger_ref)
    return [client.get_event(s["id"]) for s in sorted(summaries, key=lambda s: s["id"])]


def enforcements_of(client, event_id: int) -> dict[str, list[dict]]:
    """Every enforcement of `event_id` (full objects) grouped by rule ref."""
    out: dict[str, list[dict]] = {}
    for summary in sorted(all_items(client.list_enforcements, event=event_id), key=lambda s: s["id"]):
        full = client.get_enforcement(summary["id"])
        out.setdefault(full["rule_ref"], []).append(full)
    return out


def wait_enforcement(client, event_id: int, rule_ref: str, timeout: float = 30) -> dict:
    """The single enforcement of rule `rule_ref` for event `event_id` once it is `processed`
    (full object). A second one for the same pair fails at once."""
    def probe():
        found = all_items(client.list_enforcements, event=event_id, rule_ref=rule_ref)
        if len(found) > 1:
            raise WaitAborted(f"rule {rule_ref} has {len(found)} enforcements for event "
                              f"{event_id}: {found}")
        if not found:
            return None
        full = client.get_enforcement(found[0]["id"])
        return full if full["status"] != "created" else None

    return wait_until(probe, timeout=timeout,
                      description=f"the resolved enforcement of rule {rule_ref} for event {event_id}")


def execution_of(client, enforcement_id: int, timeout: float = 30) -> dict:
    """The one top-level execution created for an enforcement (full object)."""
    found = wait_for_items(lambda: client.list_executions(enforcement=enforcement_id,
                                                          top_level_only=True), 1,
                           timeout=timeout, description=f"executions of enforcement {enforcement_id}")
    return client.get_execution(found[0]["id"])


# ------------------------------------------------------------------ ledger (§0.2)
class Ledger:
    """A webhook trigger counting side effects: actions POST {"payload": {...}} to `url`."""

    def __init__(self, client: AttuneClient, make, pack: str, uid: str):
        self.client = client
        self.trigger, self.key = make.webhook_trigger(ref=f"{pack}.ledger_{uid}", pack_ref=pack,
                                                      label=f"ledger {uid}")
        self.ref = self.trigger["ref"]
        self.url = f"{client.base_url}/api/v1/webhooks/{self.key}"

    def events(self) -> list[dict]:
        return trigger_events(self.client, self.ref)

    def matching(self, **fields) -> list[dict]:
        """Ledger events whose payload has every given field value."""
        return [e for e in self.events()
                if all((e.get("payload") or {}).get(k) == v for k, v in fields.items())]


# ------------------------------------------------------------------ workflow children, inquiries
def wait_child(client, parent_id: int, name: str, timeout: float = 30) -> dict:
    """The child of `parent_id` that runs task `name`, once it exists (full object)."""
    def probe():
        found = [c for c in children(client, parent_id) if task_name(c) == name]
        if len(found) > 1:
            raise WaitAborted(f"workflow {parent_id} has {len(found)} children for task {name!r}")
        return found[0] if found else None

    return wait_until(probe, timeout=timeout,
                      description=f"workflow {parent_id}'s child for task {name!r}")


def wait_pending_inquiry(client, execution_id: int, timeout: float = 30) -> dict:
    """The single inquiry of `execution_id` once it exists (full object); it must be `pending`."""
    found = wait_for_items(lambda: client.list_inquiries(execution=execution_id), 1,
                           timeout=timeout, description=f"inquiries of execution {execution_id}")
    inquiry = client.get_inquiry(found[0]["id"])
    assert inquiry["status"] == "pending", f"expected a pending inquiry, got {inquiry}"
    return inquiry


def tree_order(client, parent_id: int) -> list[tuple[str | None, dict]]:
    """(task name, execution) of every child of `parent_id`, oldest first (call after P3)."""
    return [(task_name(c), c) for c in children(client, parent_id)]


def stream_statuses(stream_events: list[dict], exec_id: int) -> list[str]:
    """Every status that execution `exec_id` showed on a recorded SSE stream, in order."""
    return [e.get("status") for e in stream_events if stream_exec_id(e) == exec_id]


# ------------------------------------------------------------------ T3.7 pipeline
def pipeline_workflow(make, pack: str, uid: str) -> dict:
    """T3.7's workflow `pipeline_<uid>` and its nested `deploy_<uid>`; returns the pipeline.

    Parameters: `request_id`, `value`, `ledger_url`. Tasks:
    - `check` (threshold_check against the ambient key `threshold_<uid>`), branching on
      `result().exceeded` to `approve` (true) or `skip` (false) - never combined with
      `succeeded()`;
    - `approve` (`core.ask`) -> `deploy` when the response has `approved == true`;
    - `deploy`: nested workflow with steps `s1` -> `s2`;
    - `record`: kv_put of `<pack>.result_<uid>` = {request_id, value, approved}, task
      permission sets `core.admin` (the action writes through the API);
    - `notify`: core.http_request POST of {"payload": {request_id, tag: "notify"}} to the ledger;
    - `skip`: core.echo "below threshold <value>".
    """
    s1 = step_action(make, pack, uid, "s1", prints={"step": "s1"})
    s2 = step_action(make, pack, uid, "s2", prints={"step": "s2"})
    deploy = make.workflow(
        ref=f"{pack}.deploy_{uid}", pack_ref=pack, label=f"deploy {uid}",
        definition={"version": "1.0.0", "tasks": [
            task("s1", s1["ref"], next=[{"when": "{{ succeeded() }}", "do": ["s2"]}]),
            task("s2", s2["ref"])],
            "output_map": {"steps": "{{ task.s1.step }}+{{ task.s2.step }}"}})
    body = ('{"payload": {"request_id": "{{ parameters.request_id }}", "tag": "notify", '
            '"value": {{ parameters.value }}}}')
    return make.workflow(
        ref=f"{pack}.pipeline_{uid}", pack_ref=pack, label=f"pipeline {uid}",
        param_schema={"request_id": {"type": "string", "required": True},
                      "value": {"type": "number", "required": True},
                      "ledger_url": {"type": "string", "required": True}},
        definition={"version": "1.0.0", "tasks": [
            task("check", f"{pack}.threshold_check",
                 input={"value": "{{ parameters.value }}", "threshold_key": f"threshold_{uid}"},
                 next=[{"when": "{{ result().exceeded == true }}", "do": ["approve"]},
                       {"when": "{{ result().exceeded == false }}", "do": ["skip"]}]),
            task("approve", "core.ask",
                 input={"prompt": "Deploy {{ parameters.request_id }} "
                                  "(value {{ parameters.value }})?",
                        "response_schema": {"type": "object",
                                            "properties": {"approved": {"type": "boolean"}}}},
                 next=[{"when": "{{ result().response.approved == true }}", "do": ["deploy"]}]),
            task("deploy", deploy["ref"], next=[{"when": "{{ succeeded() }}", "do": ["record"]}]),
            task("record", f"{pack}.kv_put",
                 input={"ref": f"{pack}.result_{uid}",
                        "value": {"request_id": "{{ parameters.request_id }}",
                                  "value": "{{ parameters.value }}",
                                  "approved": "{{ task.approve.response.approved }}"}},
                 permission_set_refs=["core.admin"],
                 next=[{"when": "{{ succeeded() }}", "do": ["notify"]}]),
            task("notify", "core.http_request",
                 input={"url": "{{ parameters.ledger_url }}", "method": "POST",
                        "headers": {"Content-Type": "application/json"}, "body": body}),
            task("skip", "core.echo", input={"message": "below threshold {{ parameters.value }}"}),
        ]})


# ------------------------------------------------------------------ T3.9 approvals
def approval_workflow(make, pack: str, uid: str, manager_id: int) -> dict:
    """T3.9's workflow: `manager` (core.ask assigned to identity `manager_id`) -> `security`
    (core.ask) -> `final` (core.echo "<manager comment>/<security comment>"), each transition
    taken only when the response has `approved == true`."""
    approved = "{{ result().response.approved == true }}"
    return make.workflow(
        ref=f"{pack}.approvals_{uid}", pack_ref=pack, label=f"approvals {uid}",
        definition={"version": "1.0.0", "tasks": [
            task("manager", "core.ask",
                 input={"prompt": f"Manager approval {uid}", "assigned_to": manager_id},
                 next=[{"when": approved, "do": ["security"]}]),
            task("security", "core.ask", input={"prompt": f"Security approval {uid}"},
                 next=[{"when": approved, "do": ["final"]}]),
            task("final", "core.echo",
                 input={"message": "{{ task.manager.response.comment }}/"
                                   "{{ task.security.response.comment }}"}),
        ]})


__all__ = ["trigger_events", "enforcements_of", "wait_enforcement", "execution_of", "Ledger",
           "wait_child", "wait_pending_inquiry", "tree_order", "stream_statuses",
           "pipeline_workflow", "approval_workflow"]
