"""tests/helpers/http_recorder.py: records requests, answers scripted responses."""
import json
import socket
import urllib.error
import urllib.request

import pytest

from tests.helpers.http_recorder import HttpRecorder, closed_port


def test_records_and_answers_scripted_response():
    with HttpRecorder() as rec:
        rec.script("POST", "/users", status=201, json_body={"id": 7}, headers={"X-Recorder": "yes"})
        req = urllib.request.Request(rec.url("/users?x=1"), data=b'{"name": "n"}', method="POST",
                                     headers={"Content-Type": "application/json", "X-Trace": "t"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert (resp.status, resp.headers["X-Recorder"], json.loads(resp.read())) == \
                (201, "yes", {"id": 7})
        [got] = rec.wait_for_requests(1, "/users")
        assert (got.method, got.path, got.query, got.header("x-trace"), got.json()) == \
            ("POST", "/users", {"x": ["1"]}, "t", {"name": "n"})


def test_unscripted_path_answers_200_and_errors_are_returned():
    with HttpRecorder() as rec:
        rec.script("GET", "/boom", status=500, body="bad")
        with urllib.request.urlopen(rec.url("/other"), timeout=5) as resp:
            assert resp.status == 200
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(rec.url("/boom"), timeout=5)
        assert err.value.code == 500 and err.value.read() == b"bad"
        assert [r.path for r in rec.requests] == ["/other", "/boom"]


def test_closed_port_refuses_connections():
    port = closed_port()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
