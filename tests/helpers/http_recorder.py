"""HttpRecorder: a local threaded HTTP server that records requests and answers scripted responses.

Used by the HTTP runner scenario (T3.18): the action under test (`core.http_request`, curl in a
worker process on the same machine) calls `recorder.url("/users")`; the test then reads
`recorder.requests` (method, path, query, headers, body) and checks the action's result against
the scripted response. It listens on 127.0.0.1 on a free port; nothing leaves the machine.

    with HttpRecorder() as rec:
        rec.script("POST", "/users", status=201, json_body={"id": 7}, headers={"X-Recorder": "yes"})
        ... run the action against rec.url("/users") ...
        [req] = rec.wait_for_requests(1)

`closed_port()` gives a port with nothing listening (connection refused).
"""
from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.helpers.polling import wait_until


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: list[tuple[str, str]]
    body: bytes
    received_at: float

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self) -> str:
        return (f"RecordedRequest({self.method} {self.path} query={self.query} "
                f"headers={self.headers} body={self.body[:200]!r})")


@dataclass
class ScriptedResponse:
    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    delay: float = 0.0


class _Handler(BaseHTTPRequestHandler):
    server_version = "e2e-recorder/1"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:  # keep pytest output clean
        return

    def _handle(self) -> None:
        recorder: HttpRecorder = self.server.recorder  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        parts = urlsplit(self.path)
        req = RecordedRequest(self.command, parts.path, parse_qs(parts.query, keep_blank_values=True),
                              list(self.headers.items()), body, time.time())
        recorder._record(req)
        resp = recorder._response_for(self.command, parts.path)
        if resp.delay:
            recorder._stopping.wait(resp.delay)
        try:
            self.send_response(resp.status)
            for name, value in resp.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(resp.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(resp.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _handle


class HttpRecorder:
    def __init__(self, host: str = "127.0.0.1"):
        self._server = ThreadingHTTPServer((host, 0), _Handler)
        self._server.daemon_threads = True
        self._server.recorder = self  # type: ignore[attr-defined]
        self.host = host
        self.port = self._server.server_address[1]
        self._requests: list[RecordedRequest] = []
        self._scripts: dict[tuple[str, str], ScriptedResponse] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="http-recorder", daemon=True)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "HttpRecorder":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "HttpRecorder":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ scripting
    def url(self, path: str = "/") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def script(self, method: str, path: str, *, status: int = 200, json_body: Any = None,
               body: bytes | str | None = None, headers: dict[str, str] | None = None,
               delay: float = 0.0) -> None:
        """Answer `method path` with `status`, a JSON or raw body and extra headers, after `delay` s."""
        if json_body is not None:
            raw = json.dumps(json_body).encode()
            hdrs = {"Content-Type": "application/json"}
        else:
            raw = body.encode() if isinstance(body, str) else (body or b"")
            hdrs = {"Content-Type": "text/plain"}
        hdrs.update(headers or {})
        with self._lock:
            self._scripts[(method.upper(), path)] = ScriptedResponse(status, raw, hdrs, delay)

    def _response_for(self, method: str, path: str) -> ScriptedResponse:
        with self._lock:
            return self._scripts.get((method.upper(), path)) or ScriptedResponse()

    # ------------------------------------------------------------------ recording
    def _record(self, req: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(req)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]

    def wait_for_requests(self, count: int, path: str | None = None,
                          timeout: float = 15) -> list[RecordedRequest]:
        """Wait until at least `count` requests (to `path`, when given) arrived; return them all."""
        def probe():
            found = self.requests_to(path) if path else self.requests
            return found if len(found) >= count else None
        return wait_until(probe, timeout=timeout,
                          description=f"{count} request(s) to the recorder"
                                      f"{' at ' + path if path else ''}")


def closed_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` with nothing listening (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


__all__ = ["HttpRecorder", "RecordedRequest", "closed_port"]
