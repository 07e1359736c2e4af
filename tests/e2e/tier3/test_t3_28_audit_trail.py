"""T3.28 Execution audit trail (scenarios.md T3.28).

`GET /api/v1/audit-events?resource_type=executions&resource_id=<id>` (needs `audit_log:read`; the
admin has it). Upstream emits only `execution.requested` (from the execute route, with the actor's
identity, login and token type). Extension E6 `execution_audit` emits the lifecycle constants
upstream defines but never uses: `execution.scheduled` by the executor (actor_login `executor`,
token type `service`), `execution.started` and the terminal `execution.completed|failed|...` by
the worker (actor_login `worker:<name>`, `details.worker_id` = execution.worker). The trail is
append-only: there is no route to change or delete an audit event.
"""
import pytest

from tests.helpers.polling import wait_for_execution, wait_until
from tests.helpers.scenario import parse_ts, secs
from tests.helpers.security import audit_trail

pytestmark = [pytest.mark.tier3, pytest.mark.audit, pytest.mark.security]

LIFECYCLE = ["execution.requested", "execution.scheduled", "execution.started"]


def _trail_until(client, execution_id: int, last_type: str) -> list[dict]:
    """The execution's audit trail once `last_type` is in it (the worker writes it right after
    the terminal status, so it can trail the status by a few milliseconds)."""
    return wait_until(lambda: audit_trail(client, "executions", execution_id), timeout=10,
                      done=lambda trail: any(e["event_type"] == last_type for e in trail),
                      description=f"audit event {last_type} of execution {execution_id}")


def test_requested_event_names_the_actor(admin):
    """T3.28 Audit trail (upstream): execution.requested has category execution, actor_login the
    admin's login, resource_ref the action ref and details.action_ref, and it is found by
    resource_type=executions & resource_id=<id> with include_total."""
    execution = admin.execute("core.echo", {"message": "audit"})
    login = admin.me()["login"]

    page = admin.list_audit_events(resource_type="executions", resource_id=str(execution["id"]),
                                   event_type="execution.requested", include_total=True)
    assert page["pagination"].get("total_items") == 1, f"requested events: {page}"
    event = admin._data("GET", f"/api/v1/audit-events/{page['items'][0]['id']}")
    assert (event["category"], event["actor_login"], event["resource_ref"],
            event["details"].get("action_ref")) == ("execution", login, "core.echo", "core.echo"), \
        f"unexpected execution.requested event: {event}"
    wait_for_execution(admin, execution["id"], "completed")


@pytest.mark.needs_extension("execution_audit")
def test_lifecycle_is_audited_once_each_with_actors(admin):
    """T3.28 Audit trail (extension E6): a completed core.echo run has exactly
    requested -> scheduled -> started -> completed, once each, with non-decreasing `created`;
    scheduled is by actor `executor` (token type service); started and completed by
    `worker:<name of execution.worker>` with details.worker_id == execution.worker; started.created
    is within 1 s of execution.started_at; every event carries resource_ref core.echo."""
    execution = wait_for_execution(admin, admin.execute("core.echo", {"message": "trail"})["id"],
                                   "completed")
    worker = admin._data("GET", f"/api/v1/workers/{execution['worker']}")

    trail = _trail_until(admin, execution["id"], "execution.completed")

    types = [e["event_type"] for e in trail]
    assert types == LIFECYCLE + ["execution.completed"], f"audit sequence: {types}"
    created = [parse_ts(e["created"]) for e in trail]
    assert created == sorted(created), f"timestamps go backwards: {[e['created'] for e in trail]}"
    by_type = {e["event_type"]: e for e in trail}
    scheduled = by_type["execution.scheduled"]
    assert (scheduled["actor_login"], scheduled["actor_token_type"]) == ("executor", "service")
    for kind in ("execution.started", "execution.completed"):
        event = by_type[kind]
        assert event["actor_login"] == f"worker:{worker['name']}", f"{kind} actor: {event}"
        assert event["details"].get("worker_id") == execution["worker"], f"{kind} details: {event}"
    assert by_type["execution.completed"]["outcome"] == "success"
    assert abs(secs(execution["started_at"], by_type["execution.started"]["created"])) <= 1.0, \
        f"started event at {by_type['execution.started']['created']}, execution started_at " \
        f"{execution['started_at']}"
    assert {e["resource_ref"] for e in trail} == {"core.echo"}
    assert {(e["category"], e["resource_type"], e["resource_id"]) for e in trail} == \
        {("execution", "executions", str(execution["id"]))}


@pytest.mark.needs_extension("execution_audit")
def test_failed_run_ends_with_failure_event(admin, e2e_pack):
    """T3.28 Audit trail (extension E6): a failing fail_stderr run ends with execution.failed,
    outcome failure, details.status failed, after requested/scheduled/started."""
    execution = wait_for_execution(admin, admin.execute(f"{e2e_pack}.fail_stderr")["id"], "failed")

    trail = _trail_until(admin, execution["id"], "execution.failed")

    assert [e["event_type"] for e in trail] == LIFECYCLE + ["execution.failed"]
    last = trail[-1]
    assert (last["outcome"], last["details"].get("status")) == ("failure", "failed"), last


def test_audit_events_are_immutable(admin):
    """T3.28 Audit trail immutability: PUT and DELETE on /audit-events/{id} answer 405, and a
    re-query returns identical rows."""
    execution = wait_for_execution(admin, admin.execute("core.noop")["id"], "completed")
    before = audit_trail(admin, "executions", execution["id"])
    assert before, "no audit events for the execution"
    target = before[0]["id"]

    for method in ("PUT", "DELETE"):
        kwargs = {"json": {"event_type": "tampered", "outcome": "success"}} if method == "PUT" else {}
        resp = admin.raw(method, f"/api/v1/audit-events/{target}", **kwargs)
        assert resp.status_code == 405, f"{method} /audit-events/{target} -> {resp.status_code}"

    after = audit_trail(admin, "executions", execution["id"])
    assert [e for e in after if e["id"] in {b["id"] for b in before}] == before, \
        "audit events changed after PUT/DELETE attempts"
