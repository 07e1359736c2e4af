"""T3.20 Secret injection security (scenarios.md T3.20).

Secrets reach an action only on stdin, inside the JSON parameter document: never through its
environment (/proc/<pid>/environ), its command line, its output or the services' logs. Two
upstream paths are covered:
- ambient keys: the worker merges every key owned by the action's pack, decrypted, into the
  parameter document under the key's name (here the encrypted pack key `api_key_<uid>`);
- secret parameters: a `secret: true` parameter (`secret_probe`'s `token`) is stored redacted as
  `{"$attune_secret": true, "redacted": true}` in execution.config and enforcement.config, its
  plaintext encrypted in `execution_secret_value`; the worker restores it for the action.
The fixture action `secret_probe` reports only a SHA-256 and yes/no flags, never the value.
"""
import json
from datetime import datetime, timezone

import pytest

from tests.helpers.polling import wait_for_execution
from tests.helpers.scenario import chain_for_event, expect_api_error
from tests.helpers.security import REDACTED, proc_environ, run_secret_probe, sha256_hex

pytestmark = [pytest.mark.tier3, pytest.mark.secrets, pytest.mark.security]

FLAGS = ("in_os_environ", "in_proc_environ", "in_cmdline", "in_argv")


def _assert_delivered_on_stdin_only(execution: dict, name: str, value: str) -> dict:
    data = execution["result"].get("data") or {}
    assert data.get("present") is True, f"the action did not receive parameter {name}: {data}"
    assert data.get("sha256") == sha256_hex(value), \
        f"the action received a different value for {name} (sha256 {data.get('sha256')})"
    leaks = {f: data.get(f) for f in FLAGS if data.get(f) is not False}
    assert not leaks, f"the secret is visible to the action outside stdin: {leaks}"
    assert (data.get("parameter_delivery"), data.get("parameter_format")) == ("stdin", "json"), \
        f"unexpected parameter delivery: {data}"
    return data


def _log_text(client, execution_id: int, stream: str) -> str:
    events = client.read_log_stream(execution_id, stream, timeout=10)
    return "".join(data for name, _, data in events if name != "done")


def _assert_not_exposed(client, execution_id: int, value: str) -> None:
    """The value is in neither the execution's API JSON nor its stdout/stderr log streams."""
    doc = json.dumps(client.get_execution(execution_id))
    assert value not in doc, f"the secret appears in GET /executions/{execution_id}: {doc[:800]}"
    for stream in ("stdout", "stderr"):
        assert value not in _log_text(client, execution_id, stream), \
            f"the secret appears in the {stream} log stream of execution {execution_id}"


def test_ambient_pack_secret_reaches_action_on_stdin_only(admin, make, uid, e2e_pack):
    """T3.20 Secret injection, ambient key: the encrypted pack key api_key_<uid> arrives in the
    parameter document (sha256 matches); it is not in the action's os.environ,
    /proc/self/environ, /proc/self/cmdline or argv; ATTUNE_PARAMETER_DELIVERY is stdin; the
    value is not in GET /executions/{id} (config, result) nor in the stdout/stderr streams."""
    value = f"secret123-{uid}"
    key = make.key(name=f"api_key_{uid}", value=value, encrypted=True)

    execution = run_secret_probe(admin, e2e_pack, key["name"])

    _assert_delivered_on_stdin_only(execution, key["name"], value)
    _assert_not_exposed(admin, execution["id"], value)


def test_secret_parameter_stored_redacted_and_encrypted(admin, make, uid, e2e_pack, db_probe):
    """T3.20 Secret injection, `secret: true` parameter given to POST /executions/execute: the
    stored config shows the redaction marker (in the 201 answer and in GET), the plaintext is kept
    only as ciphertext in execution_secret_value (/token), and the action still receives it on
    stdin only (sha256 matches, no environment/argv exposure)."""
    value = f"tok-{uid}-s3cr3t"

    created = admin.execute(f"{e2e_pack}.secret_probe", {"name": "token", "token": value})
    assert created["config"] == {"name": "token", "token": REDACTED}, \
        f"execute answered with an unredacted config: {created['config']}"
    execution = wait_for_execution(admin, created["id"], "completed")

    assert execution["config"] == {"name": "token", "token": REDACTED}, execution["config"]
    _assert_delivered_on_stdin_only(execution, "token", value)
    _assert_not_exposed(admin, execution["id"], value)
    with db_probe.cursor() as cur:
        cur.execute("SELECT json_path, encrypted_value::text FROM execution_secret_value"
                    " WHERE entity_type = 'execution' AND entity_id = %s", (execution["id"],))
        rows = cur.fetchall()
        cur.execute("SELECT config::text FROM execution WHERE id = %s", (execution["id"],))
        stored_config = cur.fetchone()[0]
    assert [r[0] for r in rows] == ["/token"], f"secret rows of execution {execution['id']}: {rows}"
    assert value not in rows[0][1], "execution_secret_value holds the plaintext"
    assert value not in stored_config, f"execution.config holds the plaintext: {stored_config}"


def test_secret_rule_parameter_redacted_in_enforcement(admin, make, uid, e2e_pack):
    """T3.20 Secret injection through a rule: a webhook event carries a token that the rule maps
    into secret_probe's `secret: true` parameter; the enforcement's and the execution's config
    hold the redaction marker, and the action receives the plaintext on stdin only."""
    value = f"hook-{uid}-s3cr3t"
    trigger, webhook_key = make.webhook_trigger()
    make.rule(trigger_ref=trigger["ref"], action_ref=f"{e2e_pack}.secret_probe",
              action_params={"name": "token", "token": "{{ event.payload.token }}"})

    event_id = admin.post_webhook(webhook_key, {"token": value})["event_id"]
    enforcement, execution = chain_for_event(admin, event_id)
    execution = wait_for_execution(admin, execution["id"], "completed")

    assert enforcement["config"] == {"name": "token", "token": REDACTED}, enforcement["config"]
    assert execution["config"] == {"name": "token", "token": REDACTED}, execution["config"]
    _assert_delivered_on_stdin_only(execution, "token", value)
    _assert_not_exposed(admin, execution["id"], value)


def test_secret_absent_from_service_logs_and_worker_environment(admin, make, uid, e2e_pack,
                                                                 services):
    """T3.20 Secret injection, embedded stack: after a run that received the ambient secret and a
    secret parameter, neither value occurs in any service's log slice since the test began, nor in
    /proc/<worker pid>/environ."""
    since = datetime.now(timezone.utc)
    ambient = f"secret123-{uid}"
    param = f"tok-{uid}-logcheck"
    key = make.key(name=f"api_key_{uid}", value=ambient, encrypted=True)

    execution = run_secret_probe(admin, e2e_pack, key["name"], token=param)

    _assert_delivered_on_stdin_only(execution, key["name"], ambient)
    worker_pid = services.pid("worker")
    assert worker_pid, "the worker service is not running"
    environ = proc_environ(worker_pid)
    for value in (ambient, param):
        assert value.encode() not in environ, "a secret is in the worker's environment"
        for name in services.names():
            text = services.log_slice(name, since) or ""
            assert value not in text, f"a secret appears in the {name} service log"


def test_other_users_action_cannot_read_identity_secret(make, uid, e2e_pack):
    """T3.20 Secret injection, ownership: user A's identity-owned encrypted key is readable by A's
    secret_probe run through the API (200, sha256 matches) but user B's run, with a core.admin
    execution token, gets 404 for it, as does B's own API request."""
    user_a, ident_a = make.user(["core.admin"])
    user_b, _ = make.user(["core.admin"])
    value = f"a-private-{uid}"
    key = make.key(client=user_a, ref=f"e2e_user.a_secret_{uid}", name=f"a_secret_{uid}",
                   owner_type="identity", owner_identity=ident_a["id"], value=value,
                   encrypted=True)

    own = run_secret_probe(user_a, e2e_pack, "api_read_ref", api_read_ref=key["ref"],
                           permission_set_refs=["core.admin"])
    other = run_secret_probe(user_b, e2e_pack, "api_read_ref", api_read_ref=key["ref"],
                             permission_set_refs=["core.admin"])

    assert own["result"]["data"].get("api_read") == {"http_status": 200, "sha256": sha256_hex(value)}, \
        f"A's own run reading A's key: {own['result']}"
    assert other["result"]["data"].get("api_read") == {"http_status": 404, "sha256": None}, \
        f"B's run reading A's identity key must get 404: {other['result']}"
    expect_api_error(lambda: user_b.get_key(key["ref"]), 404, "B reading A's identity key")
