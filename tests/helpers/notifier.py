"""NotifierListener: a WebSocket client of the notifier (api.md §13), reading in a background thread.

Protocol: connect with `Authorization: Bearer <jwt>` and subprotocol `attune.v1`; the server sends
`{"type": "welcome", ...}`; the client sends `{"type": "subscribe", "filter": ...}`. A subscribe is
never acknowledged, hence `prove_live()` (pattern P7): run a probe action after subscribing and
wait for its notification before acting for real.
"""
from __future__ import annotations

import inspect
import json
import threading
import time
from typing import Any, Callable

import websocket

from tests.helpers.polling import WaitTimeout, trim, wait_until


class NotifierConnectError(AssertionError):
    """The WebSocket handshake was refused (e.g. HTTP 401) or no welcome message arrived."""

    def __init__(self, message: str, status: int | None = None, body: Any = None):
        super().__init__(message)
        self.status = status
        self.body = body


class NotifierListener:
    def __init__(self, ws_url: str, token: str | None, *, subprotocols=("attune.v1",),
                 headers: dict | None = None, connect: bool = True, welcome_timeout: float = 5):
        url = ws_url.rstrip("/")
        if not url.endswith("/ws"):
            url += "/ws"
        self.url = url
        self.token = token
        self.subprotocols = list(subprotocols) if subprotocols else None
        self.extra_headers = dict(headers or {})
        self.welcome_timeout = welcome_timeout
        self.welcome: dict | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed = threading.Event()
        self._messages: list[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ws: websocket.WebSocket | None = None
        self._thread: threading.Thread | None = None
        if connect:
            self.connect()

    # -------------------------------------------------------------- lifecycle
    def connect(self) -> "NotifierListener":
        header = [f"{k}: {v}" for k, v in self.extra_headers.items()]
        if self.token:
            header.append(f"Authorization: Bearer {self.token}")
        try:
            ws = websocket.create_connection(self.url, header=header,
                                             subprotocols=self.subprotocols,
                                             timeout=self.welcome_timeout)
        except websocket.WebSocketBadStatusException as exc:
            body = getattr(exc, "resp_body", None)
            if isinstance(body, bytes):
                body = body.decode("utf-8", "replace")
            try:
                body = json.loads(body) if body else body
            except ValueError:
                pass
            raise NotifierConnectError(
                f"notifier {self.url} refused the WebSocket: HTTP {exc.status_code} {body!r}",
                status=exc.status_code, body=body) from None
        try:
            first = ws.recv()
        except websocket.WebSocketTimeoutException:
            ws.close()
            raise NotifierConnectError(
                f"notifier {self.url} sent no welcome message within {self.welcome_timeout} s"
            ) from None
        try:
            welcome = json.loads(first)
        except (TypeError, ValueError):
            welcome = {"_raw": first}
        if not isinstance(welcome, dict) or welcome.get("type") != "welcome":
            ws.close()
            raise NotifierConnectError(f"notifier {self.url}: first message is not a welcome: "
                                       f"{trim(first)}")
        self.welcome = welcome
        ws.settimeout(0.5)
        self._ws = ws
        self._thread = threading.Thread(target=self._run, name="notifier-ws", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        ws = self._ws
        assert ws is not None
        while not self._stop.is_set():
            try:
                opcode, data = ws.recv_data(control_frame=False)
            except websocket.WebSocketTimeoutException:
                continue
            except websocket.WebSocketConnectionClosedException:
                break
            except Exception:
                break
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                if len(data) >= 2:
                    self.close_code = int.from_bytes(data[:2], "big")
                    self.close_reason = data[2:].decode("utf-8", "replace")
                break
            if opcode not in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                continue
            try:
                msg = json.loads(data)
            except ValueError:
                msg = {"type": "_raw", "data": data.decode("utf-8", "replace")}
            if isinstance(msg, dict):
                msg.setdefault("_received_at", time.time())
            with self._lock:
                self._messages.append(msg)
        self.closed.set()

    def close(self) -> None:
        self._stop.set()
        if self._ws is not None:
            try:
                self._ws.close(timeout=1)
            except Exception:
                pass
        if self._thread is not None:
            self._thread.join(timeout=3)
        self.closed.set()

    def __enter__(self) -> "NotifierListener":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -------------------------------------------------------------- protocol
    def send(self, message: dict) -> None:
        assert self._ws is not None, "not connected"
        self._ws.send(json.dumps(message))

    def subscribe(self, filter: str) -> None:  # noqa: A002 - protocol's own word
        self.send({"type": "subscribe", "filter": filter})

    def unsubscribe(self, filter: str) -> None:  # noqa: A002
        self.send({"type": "unsubscribe", "filter": filter})

    def ping(self) -> None:
        self.send({"type": "ping"})

    # -------------------------------------------------------------- reading
    @property
    def messages(self) -> list[dict]:
        """Every message received after the welcome, in arrival order (a copy)."""
        with self._lock:
            return list(self._messages)

    @property
    def notifications(self) -> list[dict]:
        return [m for m in self.messages if m.get("type") == "notification"]

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float = 10,
                 description: str = "a notifier message matching the predicate",
                 since: int = 0) -> dict:
        """Wait for a message (index >= since) matching `predicate`; return it."""
        def probe():
            for msg in self.messages[since:]:
                try:
                    if predicate(msg):
                        return msg
                except (KeyError, TypeError, AttributeError):
                    continue
            return None

        try:
            return wait_until(probe, timeout=timeout, description=description)
        except WaitTimeout as exc:
            tail = [{k: v for k, v in m.items() if k != "_received_at"}
                    for m in self.messages[-8:]]
            raise WaitTimeout(f"{exc}; connection closed: {self.closed.is_set()} "
                              f"(code {self.close_code}); last messages: {trim(tail, 1500)}"
                              ) from None

    def prove_live(self, action: Callable[[], Any],
                   predicate: Callable[..., bool] | None = None, timeout: float = 10) -> Any:
        """P7: after subscribing, run `action()` and wait for its notification.

        `predicate(message)` or `predicate(message, action_result)`; by default a notification
        whose entity_id equals `action_result["id"]`. Returns the action's result.
        """
        start = len(self.messages)
        result = action()
        if predicate is None:
            target = result.get("id") if isinstance(result, dict) else result

            def check(msg):
                return msg.get("type") == "notification" and msg.get("entity_id") == target
        else:
            try:
                nargs = len(inspect.signature(predicate).parameters)
            except (TypeError, ValueError):
                nargs = 1

            def check(msg):
                return predicate(msg, result) if nargs >= 2 else predicate(msg)
        self.wait_for(check, timeout=timeout, since=start,
                      description="probe notification proving the subscription is live (P7)")
        return result


__all__ = ["NotifierListener", "NotifierConnectError"]
