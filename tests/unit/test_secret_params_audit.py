"""Unit tests of secret parameter redaction (attune_emulator/secret_params.py) and the audit
helpers (attune_emulator/audit.py)."""
from attune_emulator import audit, secret_params
from attune_emulator.keystore import REDACTED


def test_secret_names_from_flat_and_json_schema():
    flat = {"name": {"type": "string"}, "token": {"type": "string", "secret": True},
            "other": {"secret": "yes"}}
    assert secret_params.secret_names(flat) == {"token"}
    js = {"type": "object", "properties": {"pw": {"type": "string", "secret": True},
                                           "x": {"type": "integer"}}}
    assert secret_params.secret_names(js) == {"pw"}
    assert secret_params.secret_names(None) == set()
    assert secret_params.secret_names({"a": "not a spec"}) == set()


def test_redact_replaces_only_present_secret_values():
    config = {"name": "token", "token": "s3cr3t", "pw": None}
    out, found = secret_params.redact(config, {"token", "pw", "missing"})
    assert out == {"name": "token", "token": REDACTED, "pw": None}
    assert found == [("/token", "s3cr3t")]
    assert config["token"] == "s3cr3t", "the input is not modified"


def test_redact_keeps_already_redacted_values_and_non_objects():
    config = {"token": dict(REDACTED)}
    assert secret_params.redact(config, {"token"}) == (config, [])
    assert secret_params.redact(["x"], {"token"}) == (["x"], [])
    assert secret_params.redact({"token": {"a": 1}}, {"token"})[1] == [("/token", {"a": 1})]


def test_execution_outcomes():
    assert audit.execution_outcome(audit.EXECUTION_FAILED) == "failure"
    assert audit.execution_outcome(audit.EXECUTION_TIMED_OUT) == "failure"
    for ok in (audit.EXECUTION_COMPLETED, audit.EXECUTION_CANCELLED, audit.EXECUTION_SCHEDULED,
               audit.EXECUTION_REQUESTED, audit.EXECUTION_RETRIED):
        assert audit.execution_outcome(ok) == "success"


def test_record_execution_writes_one_row_and_never_raises():
    calls = []
    assert audit.record_execution(lambda sql, params: calls.append(params),
                                  {"id": 7, "action_ref": "core.echo"}, audit.EXECUTION_SCHEDULED,
                                  actor_login="executor", actor_token_type="service",
                                  details={"worker_id": 3})
    (params,) = calls
    assert params[:6] == ("execution", "execution.scheduled", "success", None, "executor",
                          "service")
    assert params[9:12] == ("executions", "7", "core.echo")

    def broken(sql, params):
        raise RuntimeError("db down")
    assert audit.record(broken, category="api", event_type="x", outcome="denied") is False
