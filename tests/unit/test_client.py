"""AttuneClient against a tiny local HTTP server: envelopes, error mapping, auth, timeline."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.helpers import timeline
from tests.helpers.client import ApiError, AttuneClient
from tests.helpers.polling import WaitTimeout

SEEN: list[dict] = []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status, body=None, ctype="application/json", raw=None):
        payload = raw if raw is not None else (
            b"" if body is None else json.dumps(body).encode())
        self.send_response(status)
        if payload:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _record(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        SEEN.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                     "body": body})
        return body

    def do_GET(self):
        self._record()
        p = self.path
        if p == "/health":
            return self._send(200, {"status": "ok"})
        if p == "/api/v1/actions/p.missing":
            return self._send(404, {"error": "Action 'p.missing' not found", "code": "NOT_FOUND"})
        if p.split("?")[0] == "/api/v1/packs":
            if "Authorization" not in self.headers:
                return self._send(401, {"error": {"code": 401,
                                                  "message": "Missing authentication token"}})
            return self._send(200, {"items": [{"ref": "core"}],
                                    "pagination": {"page": 1, "page_size": 50}})
        if p == "/api/v1/actions/p.ok":
            return self._send(200, {"data": {"ref": "p.ok", "id": 3}})
        if p.startswith("/api/v1/executions?"):
            return self._send(200, {"items": [{"id": 501}, {"id": 502}],
                                    "pagination": {"page": 1, "page_size": 20}})
        if p == "/api/v1/executions/503":
            return self._send(200, {"data": {"id": 503, "status": "running"}})
        if p == "/api/v1/executions/9/logs/stdout/stream":
            raw = (b": keep-alive\n\nevent: content\nid: 0\ndata: hello\ndata: world\n\n"
                   b"event: append\nid: 12\ndata: more\n\nevent: done\ndata: \n\n")
            return self._send(200, raw=raw, ctype="text/event-stream")
        if p == "/api/v1/executions/10/logs/stdout/stream":
            raw = b"event: content\nid: 0\ndata: partial\n\n"
            return self._send(200, raw=raw, ctype="text/event-stream")
        if p == "/api/v1/executions/9/logs/bogus/stream":
            return self._send(400, {"error": "bad stream", "code": "BAD_REQUEST"})
        if p == "/unknown":
            return self._send(404)
        return self._send(500, raw=b"unexpected", ctype="text/plain")

    def do_POST(self):
        body = self._record()
        p = self.path
        if p == "/auth/login":
            data = json.loads(body)
            if data["password"] != "right":
                return self._send(401, {"error": "Invalid login or password",
                                        "code": "UNAUTHORIZED"})
            return self._send(200, {"data": {"access_token": "AT", "refresh_token": "RT",
                                             "token_type": "Bearer", "expires_in": 3600}})
        if p == "/auth/refresh":
            return self._send(200, {"data": {"access_token": "AT2", "refresh_token": "RT2"}})
        if p == "/api/v1/actions":
            return self._send(422, raw=b"Failed to deserialize the JSON body into the target "
                                       b"type: missing field `ref`", ctype="text/plain")
        if p == "/api/v1/executions/execute":
            return self._send(201, {"data": {"id": 77, "status": "requested"}})
        if p.startswith("/api/v1/webhooks/"):
            return self._send(200, {"data": {"event_id": 5, "message": "Webhook received successfully"}})
        if p == "/api/v1/packs/upload":
            return self._send(201, {"data": {"pack": {"ref": "x"}, "tests_skipped": True},
                                    "message": "Pack uploaded and registered successfully"})
        return self._send(404)

    def do_DELETE(self):
        self._record()
        return self._send(200, {"success": True, "message": "Action 'p.ok' deleted successfully"})


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


@pytest.fixture
def client(server):
    SEEN.clear()
    return AttuneClient(server, token="TOKEN", timeout=5)


def test_single_objects_are_unwrapped(client):
    assert client.get_action("p.ok") == {"ref": "p.ok", "id": 3}
    assert SEEN[-1]["headers"]["Authorization"] == "Bearer TOKEN"


def test_pages_are_returned_raw(client):
    page = client.list_packs(page=1, page_size=50)
    assert page["items"] == [{"ref": "core"}] and "pagination" in page
    assert SEEN[-1]["path"] == "/api/v1/packs?page=1&page_size=50"


def test_handler_error_shape_a(client):
    with pytest.raises(ApiError) as err:
        client.get_action("p.missing")
    e = err.value
    assert (e.method, e.path, e.status) == ("GET", "/api/v1/actions/p.missing", 404)
    assert e.body == {"error": "Action 'p.missing' not found", "code": "NOT_FOUND"}
    assert e.code == "NOT_FOUND" and e.message == "Action 'p.missing' not found"
    text = str(e)
    for part in ("GET", "/api/v1/actions/p.missing", "404", "not found"):
        assert part in text
    assert isinstance(e, AssertionError)


def test_auth_error_shape_b_and_anonymous_client(client):
    with pytest.raises(ApiError) as err:
        client.with_token(None).list_packs()
    assert err.value.status == 401 and err.value.code == 401
    assert err.value.message == "Missing authentication token"
    assert "Authorization" not in SEEN[-1]["headers"]


def test_framework_plain_text_error(client):
    with pytest.raises(ApiError) as err:
        client.create_action(label="x")
    assert err.value.status == 422
    assert isinstance(err.value.body, str) and "missing field" in err.value.body
    assert err.value.code is None and "missing field" in err.value.message


def test_empty_body_404(client):
    with pytest.raises(ApiError) as err:
        client.request("GET", "/unknown")
    assert err.value.status == 404 and err.value.body is None


def test_delete_returns_success_response(client):
    assert client.delete_action("p.ok") == {"success": True,
                                            "message": "Action 'p.ok' deleted successfully"}


def test_login_stores_tokens_and_with_token_is_independent(client):
    anon = client.with_token(None)
    data = anon.login("admin", "right")
    assert data["access_token"] == "AT" and anon.token == "AT" and anon.refresh_token == "RT"
    assert json.loads(SEEN[-1]["body"]) == {"login": "admin", "password": "right"}
    assert "Authorization" not in SEEN[-1]["headers"]
    assert client.token == "TOKEN"
    anon.refresh()
    assert json.loads(SEEN[-1]["body"]) == {"refresh_token": "RT"} and anon.token == "AT2"
    with pytest.raises(ApiError) as err:
        anon.login("admin", "wrong")
    assert err.value.status == 401


def test_execution_ids_are_recorded(client):
    mark = timeline.mark()
    assert client.execute("core.echo", {"message": "hi"})["id"] == 77
    assert json.loads(SEEN[-1]["body"]) == {"action_ref": "core.echo",
                                            "parameters": {"message": "hi"}}
    client.list_executions(action_ref="p.a", include_total=True)
    assert SEEN[-1]["path"] == "/api/v1/executions?action_ref=p.a&include_total=true"
    client.get_execution(503)
    client.get_execution(503)
    assert timeline.recorded_since(mark) == [77, 501, 502, 503]


def test_execute_passes_extra_fields(client):
    client.execute("p.a", permission_set_refs=["standard"])
    assert json.loads(SEEN[-1]["body"]) == {"action_ref": "p.a", "parameters": {},
                                            "permission_set_refs": ["standard"]}


def test_post_webhook_variants_without_auth(client):
    assert client.post_webhook("wh_1", {"a": 1})["event_id"] == 5
    assert json.loads(SEEN[-1]["body"]) == {"payload": {"a": 1}}
    assert "Authorization" not in SEEN[-1]["headers"]
    client.post_webhook("wh_1", body={"foo": 1})
    assert json.loads(SEEN[-1]["body"]) == {"foo": 1}
    client.post_webhook("wh_1", raw=b'{"payload":{}}', headers={"X-Webhook-Signature": "sha256=ab"})
    assert SEEN[-1]["body"] == b'{"payload":{}}'
    assert SEEN[-1]["headers"]["X-Webhook-Signature"] == "sha256=ab"
    client.post_webhook("wh_1")
    assert json.loads(SEEN[-1]["body"]) == {"payload": {}}


def test_upload_pack_is_multipart(client):
    data = client.upload_pack(b"\x1f\x8barchive", force=True)
    assert data["pack"]["ref"] == "x"
    req = SEEN[-1]
    assert req["headers"]["Content-Type"].startswith("multipart/form-data")
    assert b'name="pack"' in req["body"] and b"\x1f\x8barchive" in req["body"]
    assert b'name="force"' in req["body"] and b'name="skip_tests"' in req["body"]


def test_read_log_stream_until_done(client):
    events = client.read_log_stream(9, timeout=5)
    assert events == [("content", "0", "hello\nworld"), ("append", "12", "more"), ("done", None, "")]


def test_read_log_stream_without_done_times_out(client):
    with pytest.raises(WaitTimeout, match="partial"):
        client.read_log_stream(10, timeout=1)


def test_read_log_stream_error_status(client):
    with pytest.raises(ApiError) as err:
        client.read_log_stream(9, stream="bogus")
    assert err.value.status == 400


def test_health_is_anonymous(client):
    assert client.health() == {"status": "ok"}
    assert "Authorization" not in SEEN[-1]["headers"]


def test_connection_refused_is_not_swallowed():
    import requests
    with pytest.raises(requests.exceptions.ConnectionError):
        AttuneClient("http://127.0.0.1:9", timeout=2).health()
