"""T3.13 Invalid action parameters (scenarios.md T3.13).

Upstream validates action parameters against the action's `param_schema` only when a rule is
created or updated (422 "Invalid parameters for action '<ref>': ..."). Extension E10
`param_validation`: the executor's scheduler also validates top-level executions, so an execute
call missing a required parameter is accepted (`requested`) and then fails before any worker is
chosen, with the same message format.
"""
import pytest

from tests.helpers.chains import stream_statuses
from tests.helpers.client import ApiError
from tests.helpers.polling import wait_for_execution
from tests.helpers.scenario import all_items, expect_rule_rejected

pytestmark = [pytest.mark.tier3, pytest.mark.validation]

SCHEMA = {"url": {"type": "string", "required": True}}


def _url_action(make, pack, uid):
    """An inline shell action with one required string parameter `url`."""
    return make.action(ref=f"{pack}.fetch_{uid}", pack_ref=pack, label=f"fetch {uid}",
                       runtime_ref="core.shell", entrypoint='printf "url=%s" "$url"',
                       param_schema=SCHEMA)


def test_rule_with_missing_or_mistyped_required_parameter_is_rejected(admin, make, uid, e2e_pack):
    """T3.13 Invalid action parameters, rule time (upstream): a rule whose action_params lack the
    required `url` gets 422 VALIDATION_ERROR "Invalid parameters for action '<ref>': "url" is a
    required property"; `url: 123` gets a message containing `123 is not of type "string" at
    /url`; neither rule exists afterwards; a templated `url` is accepted."""
    action = _url_action(make, e2e_pack, uid)
    trigger, _ = make.webhook_trigger(ref=f"{e2e_pack}.fetch_hook_{uid}", pack_ref=e2e_pack,
                                      label=f"fetch hook {uid}")
    missing_ref = f"{e2e_pack}.fetch_missing_{uid}"
    err = expect_rule_rejected(admin, 422, "rule without the required url", ref=missing_ref,
                               pack_ref=e2e_pack, label="missing url", trigger_ref=trigger["ref"],
                               action_ref=action["ref"], action_params={"other": 1})
    assert err.code == "VALIDATION_ERROR", f"expected code VALIDATION_ERROR, got {err.body}"
    assert err.message == f"Invalid parameters for action '{action['ref']}': \"url\" is a required property", \
        f"unexpected message {err.message!r}"

    typed_ref = f"{e2e_pack}.fetch_typed_{uid}"
    err = expect_rule_rejected(admin, 422, "rule with url: 123", ref=typed_ref, pack_ref=e2e_pack,
                               label="numeric url", trigger_ref=trigger["ref"],
                               action_ref=action["ref"], action_params={"url": 123})
    assert err.code == "VALIDATION_ERROR"
    assert err.message.startswith(f"Invalid parameters for action '{action['ref']}': ") and \
        '123 is not of type "string" at /url' in err.message, f"unexpected message {err.message!r}"

    for ref in (missing_ref, typed_ref):
        with pytest.raises(ApiError) as absent:
            admin.get_rule(ref)
        assert absent.value.status == 404, f"rejected rule {ref}: expected 404, got {absent.value}"

    ok = make.rule(ref=f"{e2e_pack}.fetch_ok_{uid}", pack_ref=e2e_pack, label="templated url",
                   trigger_ref=trigger["ref"], action_ref=action["ref"],
                   action_params={"url": "{{ event.payload.url }}"})
    assert ok["action_params"] == {"url": "{{ event.payload.url }}"}


@pytest.mark.needs_extension("param_validation")
def test_execution_missing_required_parameter_fails_before_any_worker(admin, make, uid, e2e_pack,
                                                                      exec_stream):
    """T3.13 Invalid action parameters, execution time (E10): execute without `url` answers 201
    `requested`, then the execution is `failed` with `worker` null, no `started_at` and result
    exactly {succeeded: false, error: "Invalid parameters for action '<ref>': "url" is a required
    property"}; the SSE stream shows it going straight to `failed` (no `scheduled`, no `running`),
    and a wrong type (`url: 123`) fails the same way with the type message. Extra parameters are
    accepted: that execution runs on a worker and completes with the url printed."""
    action = _url_action(make, e2e_pack, uid)

    bad = admin.execute(action["ref"], {})
    assert bad["status"] == "requested", f"execute must accept the request, got {bad}"
    typed = admin.execute(action["ref"], {"url": 123})
    good = admin.execute(action["ref"], {"url": f"http://example.invalid/{uid}", "extra": "x"})

    bad = wait_for_execution(admin, bad["id"], "failed", timeout=15)
    assert bad.get("worker") is None and bad.get("started_at") is None, \
        f"a validation failure must not reach a worker: {bad}"
    assert bad["result"] == {"succeeded": False,
                             "error": f"Invalid parameters for action '{action['ref']}': "
                                      f"\"url\" is a required property"}, f"result: {bad['result']}"
    typed = wait_for_execution(admin, typed["id"], "failed", timeout=15)
    assert (typed.get("worker"), typed.get("started_at")) == (None, None), f"typed: {typed}"
    assert typed["result"] == {"succeeded": False,
                               "error": f"Invalid parameters for action '{action['ref']}': "
                                        f"123 is not of type \"string\" at /url"}, \
        f"result: {typed['result']}"

    good = wait_for_execution(admin, good["id"], "completed", timeout=30)
    assert good.get("worker") is not None and good.get("started_at") is not None, f"good: {good}"
    assert good["result"]["stdout"] == f"url=http://example.invalid/{uid}", f"result: {good['result']}"

    # P6: the stream delivers one execution's changes in commit order; `good` completing after
    # the failures were committed proves the failures' notifications were delivered.
    exec_stream.wait_for_status(good["id"], "completed", timeout=10)
    for failed in (bad, typed):
        exec_stream.wait_for_status(failed["id"], "failed", timeout=10)
        seen = stream_statuses(exec_stream.events, failed["id"])
        assert "scheduled" not in seen and "running" not in seen, \
            f"execution {failed['id']} must skip the worker, stream statuses {seen}"
        assert seen[0] == "requested" and seen[-1] == "failed", f"stream statuses {seen}"
    listed = sorted(e["id"] for e in all_items(admin.list_executions, action_ref=action["ref"]))
    assert listed == sorted([bad["id"], typed["id"], good["id"]]), \
        f"no retry or extra execution expected, got {listed}"
