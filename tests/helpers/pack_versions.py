"""Machinery of the pack-version scenarios: T3.19 (two packs pinning conflicting versions of one
library) and T3.26 (pack update and reload while an execution is in flight).

- `upload(client, name, ref, force=...)`: upload `tests/fixtures/packs/<name>` as pack `ref`
  (`__PACK__` replaced) with POST /api/v1/packs/upload; returns `(HTTP status, data)`, so a test
  can assert the 201 itself.
- `stdout_text(client, exec_id)`: the whole stdout of a terminal execution (log tail SSE, api.md
  §8.5). Actions with `output_format: json` keep only the parsed last line in `result.data`; the
  lines printed before it are read here.
- `wait_for_stdout(client, exec_id, needle, timeout)`: block until a running execution's stdout
  contains `needle` (the log tail SSE's `content`/`append` events): proof that the action process
  has started and got past a given point, without sleeping.
- `HealthPoller`: GET /health every 100 ms in a background thread while a block runs; records
  every probe (time, status or error) so a test can assert "no failures during the upload".
- `process_windows_overlap(a, b)`: whether two executions' own reported process windows
  (`started`..`finished`, time.time() inside the action) intersect.
- `service_pids(target)`: embedded only, the PIDs of the stack's services.

Deadlines: the first run of a pack with `requirements.txt` builds its virtualenv (PyPI download
plus install on a 2-core machine shared with other suites): `tests/helpers/deps.py`
INSTALL_DEADLINE (240 s) applies; later runs on a built environment WARM_DEADLINE (20 s).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

import requests

from tests.helpers.client import ApiError, AttuneClient
from tests.helpers.deps import FIXTURE_PACKS
from tests.helpers.packs import build_pack_archive
from tests.helpers.polling import WaitTimeout
from tests.helpers.sse import iter_sse

log = logging.getLogger("attune-e2e")

HEALTH_INTERVAL = 0.1


def upload(client: AttuneClient, name: str, ref: str, *, force: bool = False,
           skip_tests: bool = True) -> tuple[int, dict]:
    """POST /api/v1/packs/upload of fixture pack folder `name` as `ref`; (status, data).
    Raises ApiError for a non-2xx answer."""
    archive = build_pack_archive(FIXTURE_PACKS / name, ref)
    resp = client.raw("POST", "/api/v1/packs/upload",
                      files={"pack": ("pack.tar.gz", archive, "application/gzip")},
                      data={"force": "true" if force else "false",
                            "skip_tests": "true" if skip_tests else "false"},
                      timeout=max(client.timeout, 60))
    body = client.parse(resp)
    if not 200 <= resp.status_code < 300:
        raise ApiError("POST", "/api/v1/packs/upload", resp.status_code, body)
    return resp.status_code, (body or {}).get("data", body)


def delete_quietly(client: AttuneClient, ref: str) -> None:
    """Teardown: delete pack `ref`; a 404 (already gone) is fine, other errors are logged."""
    try:
        client.delete_pack(ref)
    except ApiError as exc:
        if exc.status != 404:
            log.warning("cleanup: delete pack %s failed: %s", ref, exc)
    except requests.RequestException as exc:  # cleanup never masks the test outcome
        log.warning("cleanup: delete pack %s failed: %s", ref, exc)


def _log_events(client: AttuneClient, exec_id: int, timeout: float):
    path = f"/api/v1/executions/{exec_id}/logs/stdout/stream"
    resp = client.raw("GET", path, stream=True, timeout=(5, timeout),
                      headers={"Accept": "text/event-stream"})
    if not 200 <= resp.status_code < 300:
        body = client.parse(resp)
        resp.close()
        raise ApiError("GET", path, resp.status_code, body)
    return resp


def wait_for_stdout(client: AttuneClient, exec_id: int, needle: str, timeout: float) -> str:
    """Return the stdout seen so far once it contains `needle`; WaitTimeout after `timeout` s, or
    AssertionError when the execution ends (`done`) without printing it."""
    deadline = time.monotonic() + timeout
    seen = ""
    resp = _log_events(client, exec_id, timeout)
    try:
        for name, _ev_id, data in iter_sse(resp):
            if name in ("content", "append"):
                seen += data  # each event carries one chunk of the file, verbatim
                if needle in seen:
                    return seen
            elif name == "done":
                raise AssertionError(f"execution {exec_id} ended without printing {needle!r}; "
                                     f"stdout: {seen!r}")
            if time.monotonic() > deadline:
                break
    except requests.exceptions.RequestException as exc:
        raise WaitTimeout(f"stdout of execution {exec_id}: stream broke ({exc}) before "
                          f"{needle!r}; seen {seen!r}") from exc
    finally:
        resp.close()
    raise WaitTimeout(f"stdout of execution {exec_id} did not contain {needle!r} within "
                      f"{timeout:.1f} s; seen {seen!r}")


def stdout_text(client: AttuneClient, exec_id: int, timeout: float = 10) -> str:
    """The complete stdout of a terminal execution."""
    events = client.read_log_stream(exec_id, "stdout", timeout=timeout)
    parts = [data for name, _id, data in events if name in ("content", "append")]
    return "".join(parts)  # chunks of the log file, in order


def stdout_lines(client: AttuneClient, exec_id: int) -> list[str]:
    return [line for line in stdout_text(client, exec_id).splitlines() if line.strip()]


class HealthPoller:
    """`with HealthPoller(api_url) as hp:` polls GET /health every 100 ms until the block ends.
    `hp.probes`: [(monotonic time, HTTP status or None, error text or None)];
    `hp.failures`: the probes that were not `200 {"status": "ok"}`."""

    def __init__(self, api_url: str, interval: float = HEALTH_INTERVAL):
        self.url = api_url.rstrip("/") + "/health"
        self.interval = interval
        self.probes: list[tuple[float, int | None, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-poller", daemon=True)
        self._session = requests.Session()

    def _probe(self) -> tuple[float, int | None, str | None]:
        at = time.monotonic()
        try:
            resp = self._session.get(self.url, timeout=2)
            body = resp.json() if resp.content else None
            ok = resp.status_code == 200 and isinstance(body, dict) and body.get("status") == "ok"
            return at, resp.status_code, None if ok else f"body {str(body)[:200]}"
        except (requests.RequestException, ValueError) as exc:
            return at, None, f"{type(exc).__name__}: {exc}"

    def _run(self) -> None:
        while not self._stop.is_set():
            self.probes.append(self._probe())
            self._stop.wait(self.interval)

    def __enter__(self) -> "HealthPoller":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.probes.append(self._probe())  # one last probe after the block
        self._session.close()

    @property
    def failures(self) -> list[tuple[float, int | None, str | None]]:
        return [p for p in self.probes if p[2] is not None or p[1] != 200]


def process_windows_overlap(a: dict, b: dict) -> bool:
    """Two actions' reported process windows [started, finished] intersect."""
    return max(a["started"], b["started"]) < min(a["finished"], b["finished"])


def service_pids(target: Any) -> dict[str, int | None]:
    """Embedded: {service name: pid} of the running stack."""
    from tests.helpers.services import SERVICE_ORDER

    # the stack's own services only: other tests' lane workers come and go meanwhile
    services = target.services
    return {name: services.pid(name) for name in services.names() if name in SERVICE_ORDER}


__all__ = ["upload", "delete_quietly", "wait_for_stdout", "stdout_text", "stdout_lines",
           "HealthPoller", "process_windows_overlap", "service_pids"]
