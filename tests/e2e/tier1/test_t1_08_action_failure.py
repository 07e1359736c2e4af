"""T1.8 Action failure handling (scenarios.md T1.8).

`result.error` is the whole stderr when it has at most 5 lines, else "Command exited with code N"
when stderr is empty (behavior.md §2.4). Nothing is retried without a retry policy.
"""
import pytest

from tests.helpers.polling import wait_for_execution
from tests.helpers.scenario import all_items, chain_for_event, secs, total

pytestmark = [pytest.mark.tier1, pytest.mark.runner, pytest.mark.logs]


def test_failing_action_records_exit_code_and_stderr_without_retry(admin, make, uid, e2e_pack, exec_stream):
    """T1.8 Action failure handling: a webhook rule runs fail_stderr (stderr "Starting action...",
    exit 1); the execution goes requested -> scheduling -> scheduled -> running -> failed, each
    once; the result holds exit_code 1, succeeded false, the stderr text as error and a stderr log
    whose stream serves the text; the enforcement is processed; after a later control execution
    completes there is still exactly one execution (no retry), and the platform stays healthy."""
    trigger, key = make.webhook_trigger(ref=f"{e2e_pack}.boom_{uid}", pack_ref=e2e_pack,
                                        label=f"boom {uid}")
    rule = make.rule(ref=f"{e2e_pack}.on_boom_{uid}", pack_ref=e2e_pack, label=f"on boom {uid}",
                     trigger_ref=trigger["ref"], action_ref=f"{e2e_pack}.fail_stderr")

    event_id = admin.post_webhook(key, {"attempt": uid})["event_id"]

    enforcement, execution = chain_for_event(admin, event_id)
    execution = wait_for_execution(admin, execution["id"], "failed", timeout=20)
    result = execution["result"]
    assert (result.get("succeeded"), result.get("exit_code")) == (False, 1), f"unexpected result: {result}"
    assert (result.get("error") or "").strip() == "Starting action...", \
        f"expected the stderr text as error, got {result.get('error')!r}"
    assert result.get("stderr_log"), f"expected result.stderr_log to be set: {result}"
    assert admin.get_enforcement(enforcement["id"])["status"] == "processed"

    exec_stream.wait_for_status(execution["id"], "failed", timeout=10)
    chain = exec_stream.statuses_for(execution["id"])
    assert chain == ["requested", "scheduling", "scheduled", "running", "failed"], \
        f"expected each status exactly once in order, the stream showed {chain}"

    log = admin.read_log_stream(execution["id"], "stderr", timeout=10)
    content = "".join(data for name, _, data in log if name in ("content", "append"))
    assert "Starting action..." in content, f"stderr log stream lacks the text; events: {log}"

    # P6 anchor: a control execution requested after the failure has completed, so a retry created
    # on failure would exist by now
    control = admin.execute("core.echo", {"message": f"control-{uid}"})
    control = wait_for_execution(admin, control["id"], "completed", timeout=15)
    assert total(admin.list_executions, rule_ref=rule["ref"]) == 1, "the failed execution was retried"
    assert total(admin.list_executions, enforcement=enforcement["id"]) == 1, "the enforcement has extra executions"
    retries = [e["id"] for e in all_items(admin.list_executions, action_ref=f"{e2e_pack}.fail_stderr")
               if e.get("original_execution") == execution["id"]]
    assert retries == [], f"executions retrying {execution['id']}: {retries}"
    # stability: the follow-up execution completed promptly
    took = secs(control["created"], control["updated"])
    assert control["result"].get("stdout") == f"control-{uid}" and took < 3.0, \
        f"follow-up core.echo took {took:.2f} s: {control}"


def test_noop_exit_code_is_recorded(admin, uid):
    """T1.8 Action failure handling, core.noop variant: exit_code 3 with empty stderr ends failed
    with exit_code 3 and error "Command exited with code 3"."""
    execution = admin.execute("core.noop", {"exit_code": 3, "message": f"noop-{uid}"})
    execution = wait_for_execution(admin, execution["id"], "failed", timeout=20)
    result = execution["result"]
    assert (result.get("succeeded"), result.get("exit_code"), result.get("error")) == \
        (False, 3, "Command exited with code 3"), f"unexpected result: {result}"
