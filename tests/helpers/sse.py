"""Server-sent events: a small parser and the execution-stream recorder.

`ExecutionStream` records `GET /api/v1/executions/stream` (api.md §8.4): one unnamed event per
execution notification, whose `data:` is the raw JSON payload (`execution_created` /
`execution_status_changed` / `workflow_execution_status_changed`, no channel name, no result).
There is no replay, so connect before acting: `connect()` returns once the response headers
arrived, i.e. the server is listening.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any, Callable, Iterator

import requests

from tests.helpers.polling import WaitTimeout, trim, wait_until


def iter_sse(resp: requests.Response) -> Iterator[tuple[str | None, str | None, str]]:
    """Yield (event_name, event_id, data) for each event of a streaming response."""
    name: str | None = None
    ev_id: str | None = None
    data: list[str] = []
    for raw in resp.iter_lines(chunk_size=1, decode_unicode=False):
        line = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if line == "":
            if data or name is not None:
                yield name, ev_id, "\n".join(data)
            name, ev_id, data = None, None, []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            ev_id = value
    if data:
        yield name, ev_id, "\n".join(data)


def parse_sse_text(text: str) -> list[tuple[str | None, str | None, str]]:
    """Parse a complete SSE body (used by unit tests and for buffered reads)."""
    class _Fake:
        def iter_lines(self, chunk_size=1, decode_unicode=False):
            return iter(text.split("\n"))
    return list(iter_sse(_Fake()))  # type: ignore[arg-type]


class ExecutionStream:
    """Background recorder of the API's execution SSE stream."""

    def __init__(self, api_url: str, token: str, execution_id: int | None = None,
                 connect_timeout: float = 10):
        self.url = api_url.rstrip("/") + "/api/v1/executions/stream"
        self.token = token
        self.execution_id = execution_id
        self.connect_timeout = connect_timeout
        self._events: list[dict] = []
        self._arrivals: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._resp: requests.Response | None = None
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    # -------------------------------------------------------------- lifecycle
    def connect(self) -> "ExecutionStream":
        from tests.helpers.client import ApiError, AttuneClient

        params = {"execution_id": self.execution_id} if self.execution_id is not None else None
        resp = requests.get(self.url, params=params, stream=True,
                            headers={"Authorization": f"Bearer {self.token}",
                                     "Accept": "text/event-stream"},
                            timeout=(self.connect_timeout, None))
        if resp.status_code != 200:
            body = AttuneClient.parse(resp)
            resp.close()
            raise ApiError("GET", "/api/v1/executions/stream", resp.status_code, body)
        self._resp = resp
        self._thread = threading.Thread(target=self._run, name="execution-sse", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        assert self._resp is not None
        try:
            for _name, _id, data in iter_sse(self._resp):
                if self._stop.is_set():
                    break
                try:
                    payload = json.loads(data)
                except ValueError:
                    payload = {"_raw": data}
                with self._lock:
                    self._events.append(payload)
                    self._arrivals.append(time.time())
        except Exception as exc:  # connection closed by close() or by the server
            if not self._stop.is_set():
                self.error = exc

    def close(self) -> None:
        self._stop.set()
        resp = self._resp
        if resp is not None:
            try:
                sock = resp.raw._fp.fp.raw._sock  # type: ignore[attr-defined]
                sock.shutdown(socket.SHUT_RDWR)
            except Exception:
                pass
            try:
                resp.close()
            except Exception:
                pass
        if self._thread is not None:
            self._thread.join(timeout=3)

    def __enter__(self) -> "ExecutionStream":
        if self._resp is None:
            self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -------------------------------------------------------------- reading
    @property
    def events(self) -> list[dict]:
        """Payloads received so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._events)

    @property
    def arrivals(self) -> list[float]:
        """Wall-clock arrival time of each event (same order as `events`)."""
        with self._lock:
            return list(self._arrivals)

    @staticmethod
    def _exec_id(event: dict) -> Any:
        return event.get("entity_id", event.get("id"))

    def for_execution(self, exec_id: int) -> list[dict]:
        return [e for e in self.events if self._exec_id(e) == exec_id]

    def statuses_for(self, exec_id: int) -> list[str]:
        """Status strings of `exec_id`'s notifications, in arrival order (creation included)."""
        return [e.get("status") for e in self.for_execution(exec_id)]

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float = 30,
                 description: str = "an execution stream event matching the predicate") -> dict:
        """Wait for an event (already received or future) matching `predicate`; return it."""
        def probe():
            for event in self.events:
                if predicate(event):
                    return event
            return None

        try:
            return wait_until(probe, timeout=timeout, description=description)
        except WaitTimeout as exc:
            tail = self.events[-8:]
            raise WaitTimeout(f"{exc}; stream error: {self.error!r}; last events: "
                              f"{trim(tail, 1200)}") from None

    def wait_for_status(self, exec_id: int, status: str, timeout: float = 30) -> dict:
        return self.wait_for(lambda e: self._exec_id(e) == exec_id and e.get("status") == status,
                             timeout=timeout,
                             description=f"stream event: execution {exec_id} -> `{status}`")


__all__ = ["ExecutionStream", "iter_sse", "parse_sse_text"]
