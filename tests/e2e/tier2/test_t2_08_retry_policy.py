"""T2.8 Retry policy (scenarios.md T2.8).

Upstream retries **workflow tasks** only: a task with `retry: {count, delay, backoff,
max_delay}` whose child fails gets a new child at once (`workflow_task.retry_count + 1`,
`max_retries`, `next_retry_at`, `original_execution` = the first attempt), dispatched after the
delay (`delay × 2^(n−1)` for exponential). Action-level retries are extension E2
`action_retry` (action `retry` field; top-level `retry_count`, `max_retries`, `retry_reason`).

The flaky action is `e2e_core.attempt_counter`: it counts its runs in the pack key
`attempts_<token>` through the API and fails until the count reaches `succeed_on`.
Scaled timings: the plan's 2 s / 4 s backoff becomes 1 s / 2 s.
"""
from datetime import timedelta

import pytest

from tests.helpers.deadlines import holds_until
from tests.helpers.polling import wait_for_execution, wait_for_items, wait_until
from tests.helpers.scenario import all_items, expect_api_error, parse_ts, secs, total
from tests.helpers.workflows import children, task

pytestmark = [pytest.mark.tier2, pytest.mark.workflow, pytest.mark.runner]

RETRY = {"count": 2, "delay": 1, "backoff": "exponential", "max_delay": 60}
DELAYS = [1.0, 2.0]  # exponential: delay × 2^(n−1) for retries n = 1, 2
TOL = 0.5  # tolerance on each backoff gap (s)


def _counter_key(make, admin, pack, token):
    ref = f"{pack}.attempts_{token}"
    make.defer(f"delete key {ref}", lambda: admin.delete_key(ref))
    return ref


def _flaky_workflow(make, admin, e2e_pack, uid, slug, succeed_on):
    _counter_key(make, admin, e2e_pack, uid)
    return make.workflow(
        ref=f"{e2e_pack}.{slug}_{uid}", pack_ref=e2e_pack, label=f"{slug} {uid}",
        definition={"version": "1.0.0", "tasks": [
            task("flaky", f"{e2e_pack}.attempt_counter",
                 input={"token": uid, "succeed_on": succeed_on}, retry=RETRY)]})


def _assert_chain(attempts, statuses):
    """Workflow attempts (oldest first): statuses, retry_count 0..n, max_retries, lineage."""
    assert [a["status"] for a in attempts] == statuses, \
        f"expected attempt statuses {statuses}, got {[(a['id'], a['status']) for a in attempts]}"
    wts = [a["workflow_task"] for a in attempts]
    assert {w["task_name"] for w in wts} == {"flaky"}, wts
    assert [w["retry_count"] for w in wts] == list(range(len(attempts))), \
        f"retry_count per attempt: {[w['retry_count'] for w in wts]}"
    first = attempts[0]
    assert first.get("original_execution") is None, f"first attempt: {first}"
    for a in attempts[1:]:
        assert (a["workflow_task"]["max_retries"], a["original_execution"], a["config"]) == \
            (RETRY["count"], first["id"], first["config"]), f"retry attempt {a['id']}: {a}"
    for k, (prev, nxt) in enumerate(zip(attempts, attempts[1:])):
        due = nxt["workflow_task"]["next_retry_at"]
        gap = secs(prev["updated"], due)
        assert abs(gap - DELAYS[k]) <= TOL, \
            f"retry {k + 1}: next_retry_at - failed attempt's end = {gap:.2f} s, " \
            f"expected {DELAYS[k]} ± {TOL} s (exponential backoff)"
        early = secs(nxt["started_at"], due)
        assert early <= 0.2, f"retry {k + 1} started {early:.2f} s before next_retry_at {due}"


def test_workflow_task_retries_with_exponential_backoff(admin, make, uid, e2e_pack):
    """T2.8 Retry policy, workflow task (upstream): a task with retry {count 2, delay 1,
    exponential} running attempt_counter (succeed_on 3) runs 3 attempts, failed, failed,
    completed, with retry_count 0/1/2, max_retries 2 and original_execution = attempt 1 on the
    retries; next_retry_at is 1 s then 2 s (±0.5 s) after the failed attempt ended and no retry
    starts before it; the third attempt reports attempt 3 and the parent completes."""
    wf = _flaky_workflow(make, admin, e2e_pack, uid, "retry_wf", succeed_on=3)
    pid = admin.execute(wf["ref"], {})["id"]
    parent = wait_for_execution(admin, pid, "completed", timeout=30)

    attempts = children(admin, pid)  # P3: the parent is terminal
    _assert_chain(attempts, ["failed", "failed", "completed"])
    for n, a in enumerate(attempts[:2], start=1):
        assert a["result"]["exit_code"] == 1 and \
            a["result"].get("error", "").strip() == f"attempt {n} of 3: failing", \
            f"attempt {n} result: {a['result']}"
    assert attempts[2]["result"]["data"] == {"attempt": 3, "token": uid}, attempts[2]["result"]
    assert parent["result"].get("succeeded") is True, parent


def test_workflow_task_retries_stop_at_the_limit(admin, make, uid, e2e_pack):
    """T2.8 Retry limit honoured: attempt_counter with succeed_on 9 fails every time; exactly 3
    attempts exist (count 2 = two retries), all failed, the parent ends failed with
    "Workflow failed: 1 task(s) failed: flaky", and (P3) no 4th attempt after it is terminal."""
    wf = _flaky_workflow(make, admin, e2e_pack, uid, "retry_wf_max", succeed_on=9)
    pid = admin.execute(wf["ref"], {})["id"]
    parent = wait_for_execution(admin, pid, "failed", timeout=30)
    assert parent["result"]["error"] == "Workflow failed: 1 task(s) failed: flaky", parent["result"]

    attempts = children(admin, pid)
    _assert_chain(attempts, ["failed", "failed", "failed"])
    assert total(admin.list_executions, parent=pid) == 3
    assert admin.get_key(f"{e2e_pack}.attempts_{uid}")["value"] == "3", \
        "the action ran a number of times other than 3"


def test_no_retry_when_the_first_attempt_succeeds(admin, make, uid, e2e_pack):
    """T2.8 No retry on success: with the same retry policy and succeed_on 1 the task runs once,
    completes with attempt 1, and (P3) the completed parent has exactly one child."""
    wf = _flaky_workflow(make, admin, e2e_pack, uid, "retry_wf_ok", succeed_on=1)
    pid = admin.execute(wf["ref"], {})["id"]
    wait_for_execution(admin, pid, "completed", timeout=20)
    attempts = children(admin, pid)
    assert len(attempts) == 1 and attempts[0]["status"] == "completed" and \
        attempts[0]["workflow_task"]["retry_count"] == 0 and \
        attempts[0]["result"]["data"] == {"attempt": 1, "token": uid}, attempts
    assert total(admin.list_executions, parent=pid) == 1


# ------------------------------------------------------------------ extension E2 action_retry
def _retrying_action(make, admin, e2e_pack, uid, retry):
    """An ad-hoc copy of attempt_counter with an action-level retry policy."""
    _counter_key(make, admin, e2e_pack, uid)
    return make.action(
        ref=f"{e2e_pack}.flaky_{uid}", pack_ref=e2e_pack, label=f"flaky {uid}",
        runtime_ref="core.python", entrypoint="attempt_counter.py",
        param_schema={"token": {"type": "string", "required": True},
                      "succeed_on": {"type": "integer", "default": 3}},
        default_execution_permission_set_refs=["core.admin"], retry=retry)


def _top_level_attempts(admin, action_ref, count, last_status, timeout=30):
    """The `count` executions of our ad-hoc action (oldest first) once the last one is terminal."""
    found = wait_for_items(lambda: admin.list_executions(action_ref=action_ref, per_page=100),
                           count, timeout=timeout, description=f"executions of {action_ref}")
    last = max(found, key=lambda e: e["id"])
    wait_for_execution(admin, last["id"], last_status, timeout=timeout)
    return [admin.get_execution(e["id"]) for e in sorted(found, key=lambda e: e["id"])]


@pytest.mark.needs_extension("action_retry")
def test_action_level_retry_policy(admin, make, uid, e2e_pack):
    """T2.8 Retry policy, action level (extension E2 action_retry): an action created with
    retry {count 2, delay 1, exponential} (echoed by the API) run top level with succeed_on 3
    gives 3 executions linked by original_execution, retry_count omitted/1/2, max_retries 2 and
    retry_reason "failed" on the retries, statuses failed, failed, completed; each retry exists as
    soon as the previous attempt failed and starts 1 s then 2 s (±0.5 s) after it ended."""
    retry = {"count": 2, "delay": 1, "backoff": "exponential"}
    action = _retrying_action(make, admin, e2e_pack, uid, retry)
    assert action["retry"] == retry and admin.get_action(action["ref"])["retry"] == retry, action

    first = admin.execute(action["ref"], {"token": uid, "succeed_on": 3})
    attempts = _top_level_attempts(admin, action["ref"], 3, "completed")
    assert attempts[0]["id"] == first["id"]
    assert [a["status"] for a in attempts] == ["failed", "failed", "completed"], \
        [(a["id"], a["status"], a["result"]) for a in attempts]
    head = attempts[0]
    assert all(k not in head for k in ("retry_count", "original_execution", "retry_reason")), \
        f"the first attempt carries retry fields: {head}"
    for n, a in enumerate(attempts[1:], start=1):
        assert (a.get("retry_count"), a.get("max_retries"), a.get("retry_reason"),
                a.get("original_execution"), a["parent"], a["config"], a["executor"]) == \
            (n, 2, "failed", head["id"], None, head["config"], head["executor"]), f"retry {n}: {a}"
    assert attempts[2]["result"]["stdout"].strip().endswith('"attempt":3,"token":"%s"}' % uid), \
        attempts[2]["result"]
    for k, (prev, nxt) in enumerate(zip(attempts, attempts[1:])):
        created_lag = secs(prev["updated"], nxt["created"])
        assert -0.05 <= created_lag <= 0.5, \
            f"retry {k + 1} was created {created_lag:.2f} s after attempt {k + 1} failed (expected at once)"
        gap = secs(prev["updated"], nxt["started_at"])
        assert DELAYS[k] - 0.1 <= gap <= DELAYS[k] + TOL, \
            f"retry {k + 1} started {gap:.2f} s after the failure, expected {DELAYS[k]} s " \
            f"(+{TOL} s) of exponential backoff"
    assert total(admin.list_executions, action_ref=action["ref"]) == 3

    # the API contract of the field: malformed -> 422; null clears it (then omitted)
    expect_api_error(lambda: admin.update_action(action["ref"], retry={"count": 0}), 422,
                     "a retry policy with count 0")
    cleared = admin.update_action(action["ref"], retry=None)
    assert "retry" not in cleared, f"a cleared retry policy is still returned: {cleared}"


@pytest.mark.needs_extension("action_retry")
def test_action_level_retries_stop_at_the_limit(admin, make, uid, e2e_pack):
    """T2.8 Action-level retry limit (extension E2): retry {count 2, delay 1, exponential,
    max_delay 1} and succeed_on 9 give exactly 3 failed executions (retry_count 0/1/2, both
    retries 1 s after the failure because of max_delay); retry rows are created at failure, so
    no 4th execution appearing within 1 s after the 3rd failed shows the limit held."""
    action = _retrying_action(make, admin, e2e_pack, uid,
                              {"count": 2, "delay": 1, "backoff": "exponential", "max_delay": 1})
    admin.execute(action["ref"], {"token": uid, "succeed_on": 9})
    attempts = _top_level_attempts(admin, action["ref"], 3, "failed")
    assert [(a["status"], a.get("retry_count", 0)) for a in attempts] == \
        [("failed", 0), ("failed", 1), ("failed", 2)], [(a["id"], a["status"]) for a in attempts]
    for prev, nxt in zip(attempts, attempts[1:]):
        gap = secs(prev["updated"], nxt["started_at"])
        assert 0.9 <= gap <= 1.0 + TOL, f"retry gap {gap:.2f} s, expected 1 s (max_delay 1)"

    deadline = parse_ts(attempts[2]["updated"]) + timedelta(seconds=1)
    holds_until(lambda: total(admin.list_executions, action_ref=action["ref"]), deadline,
                lambda n: n == 3, f"no 4th execution of {action['ref']} after the limit")
    assert admin.get_key(f"{e2e_pack}.attempts_{uid}")["value"] == "3"
