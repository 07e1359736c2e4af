"""T3.18 HTTP runner (scenarios.md T3.18).

Upstream's HTTP "runner" is the core action `core.http_request` (curl in a shell action, dotenv
parameters, JSON output `{status_code, headers, body, json?, elapsed_ms, url, success}`; HTTP error
statuses exit 0 with `success: false`, transport errors exit 1 with `{"success": false, "error"}`).
The far end is a local recorder (tests/helpers/http_recorder.py) on 127.0.0.1: nothing leaves the
machine. `auth_token` is a secret parameter: stored redacted in the execution's config.
"""
import json

import pytest

from tests.helpers.http_recorder import HttpRecorder, closed_port
from tests.helpers.polling import wait_for_execution
from tests.helpers.scenario import chain_for_event

pytestmark = [pytest.mark.tier3, pytest.mark.runner, pytest.mark.http]

REDACTED = {"$attune_secret": True, "redacted": True}


@pytest.fixture
def http_recorder():
    """A local HTTP server recording requests and answering scripted responses."""
    with HttpRecorder() as rec:
        yield rec


def test_templated_post_with_headers_and_bearer_auth(admin, make, uid, e2e_pack, http_recorder):
    """T3.18 HTTP runner: a webhook rule runs core.http_request POST <recorder>/users with headers
    Content-Type and X-E2E-Trace, a body templated from the event payload and bearer auth; the
    recorder got exactly 1 request (POST /users, X-E2E-Trace = uid, Authorization "Bearer
    tok-<uid>", JSON body {"name": <payload name>}); result.data has status_code 201, json
    {"id": 7}, headers X-Recorder yes, success true; config.auth_token is redacted and the token
    appears nowhere in the result."""
    http_recorder.script("POST", "/users", status=201, json_body={"id": 7},
                         headers={"X-Recorder": "yes"})
    token = f"tok-{uid}"
    trigger, key = make.webhook_trigger(ref=f"{e2e_pack}.http_in_{uid}", pack_ref=e2e_pack)
    make.rule(ref=f"{e2e_pack}.http_call_{uid}", pack_ref=e2e_pack, trigger_ref=trigger["ref"],
              action_ref="core.http_request", action_params={
                  "url": http_recorder.url("/users"), "method": "POST",
                  "headers": {"Content-Type": "application/json", "X-E2E-Trace": uid},
                  "body": '{"name": "{{ event.payload.name }}"}',
                  "auth_type": "bearer", "auth_token": token, "timeout": 10})
    name = f"user-{uid}"
    event_id = admin.post_webhook(key, {"name": name})["event_id"]
    _, execution = chain_for_event(admin, event_id)
    execution = wait_for_execution(admin, execution["id"], "completed", timeout=30)

    requests = http_recorder.requests
    assert len(requests) == 1, f"expected exactly 1 request at the recorder, got {requests}"
    req = requests[0]
    assert (req.method, req.path, req.header("X-E2E-Trace"), req.header("Authorization")) == \
        ("POST", "/users", uid, f"Bearer {token}"), f"unexpected request: {req}"
    assert req.header("Content-Type") == "application/json" and req.json() == {"name": name}, \
        f"unexpected request body or content type: {req}"

    data = execution["result"].get("data") or {}
    assert (data.get("status_code"), data.get("json"), data.get("success")) == (201, {"id": 7}, True), \
        f"unexpected result data: {execution['result']}"
    assert data.get("headers", {}).get("X-Recorder") == "yes", f"response headers: {data.get('headers')}"
    assert execution["config"].get("auth_token") == REDACTED, \
        f"auth_token not redacted in execution.config: {execution['config'].get('auth_token')}"
    assert token not in json.dumps(execution["result"]), "the bearer token leaked into the result"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_methods_and_query_parameters(admin, uid, http_recorder, method):
    """T3.18 HTTP runner, methods: executed directly, GET/PUT/DELETE with a query parameter reach
    the recorder with that method, path and query; a 200 plain-text answer gives status_code 200,
    body echoed, no json field, success true."""
    http_recorder.script(method, "/items/1", status=200, body=f"ok-{method}-{uid}")
    params = {"url": http_recorder.url("/items/1"), "method": method,
              "query_params": {"trace": uid}, "timeout": 10}
    if method == "PUT":
        params["body"] = f"payload-{uid}"
    ex = wait_for_execution(admin, admin.execute("core.http_request", params)["id"], "completed",
                            timeout=30)
    [req] = http_recorder.wait_for_requests(1)
    assert (req.method, req.path, req.query) == (method, "/items/1", {"trace": [uid]}), \
        f"unexpected request: {req}"
    if method == "PUT":
        assert req.body == f"payload-{uid}".encode(), f"PUT body: {req.body!r}"
    data = ex["result"]["data"]
    assert (data["status_code"], data["body"], data["success"], "json" in data) == \
        (200, f"ok-{method}-{uid}", True, False), f"unexpected result data: {data}"


def test_http_error_status_completes_with_success_false(admin, uid, http_recorder):
    """T3.18 HTTP runner, error status: the recorder answers 500; the execution is completed
    (exit 0) with data.success false, status_code 500 and the error body."""
    http_recorder.script("POST", "/fail", status=500, json_body={"error": f"boom-{uid}"})
    ex = admin.execute("core.http_request", {"url": http_recorder.url("/fail"), "method": "POST",
                                             "body": "{}", "timeout": 10})
    ex = wait_for_execution(admin, ex["id"], "completed", timeout=30)
    data = ex["result"].get("data") or {}
    assert (ex["result"].get("exit_code"), data.get("status_code"), data.get("success"),
            data.get("json")) == (0, 500, False, {"error": f"boom-{uid}"}), \
        f"unexpected result: {ex['result']}"
    assert len(http_recorder.requests) == 1, f"expected 1 request, got {http_recorder.requests}"


def test_closed_port_fails_with_connect_error(admin):
    """T3.18 HTTP runner, unreachable host: a port with nothing listening ends failed with
    exit_code 1 and stdout JSON {"success": false, "error": "Failed to connect to host"}."""
    port = closed_port()
    ex = admin.execute("core.http_request", {"url": f"http://127.0.0.1:{port}/x", "timeout": 5})
    ex = wait_for_execution(admin, ex["id"], "failed", timeout=30)
    result = ex["result"]
    assert result.get("exit_code") == 1, f"unexpected result: {result}"
    assert json.loads(result["stdout"]) == {"success": False, "error": "Failed to connect to host"}, \
        f"unexpected stdout: {result.get('stdout')!r}"


def test_slow_server_times_out(admin, uid, http_recorder):
    """T3.18 HTTP runner, timeout: the recorder delays its answer 5 s and the action's timeout is
    1 s; the execution fails with exit_code 1 and error JSON "Request timed out after 1 seconds"
    in well under the server's delay (< 4 s of run time); the recorder did get the request."""
    http_recorder.script("GET", "/slow", status=200, body="late", delay=5)
    ex = admin.execute("core.http_request", {"url": http_recorder.url("/slow"), "timeout": 1})
    ex = wait_for_execution(admin, ex["id"], "failed", timeout=30)
    result = ex["result"]
    assert (result.get("exit_code"), json.loads(result["stdout"])) == \
        (1, {"success": False, "error": "Request timed out after 1 seconds"}), \
        f"unexpected result: {result}"
    assert result.get("duration_ms", 0) < 4000, f"the 1 s timeout took {result.get('duration_ms')} ms"
    assert [r.path for r in http_recorder.requests] == ["/slow"], http_recorder.requests
