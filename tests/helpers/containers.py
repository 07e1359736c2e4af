"""Machinery of the container-runner scenario (T3.17, extension E12 `container_runtime`).

- `PROBE_FILE` / `probe_sha256()`: the fixture pack's probe, whose own SHA-256 the probe reports
  (it carries no `__PACK__`, so the uploaded bytes equal the fixture file's).
- `container_advertised`: whether an active action worker advertises the runtime `container`
  (it does only when one of its engines works: docker, podman or the bubblewrap sandbox).
- `run_probe`: execute the probe with its parameters and wait for a terminal status.
- `wait_stdout_contains`: follow the execution's stdout log stream until a text shows up (the
  probe prints its report before sleeping, so a cancel then hits a running process).
- Host-side leftovers, checked on the embedded stack (same machine as the worker):
  `staging_dir(execution_id)` (`<worker.container.staging_dir or $TMPDIR/attune/container>/<id>`),
  `process_exists(pid)`, and `engine_leftovers(engine, execution_id)` (`docker|podman ps -a
  --filter label=attune.execution_id=<id> -q`).
- `ALLOWED_ENV_NAMES` / `env_violations`: the environment a container may see: fixed basics plus
  the worker's per-execution `ATTUNE_*` variables, never an `ATTUNE__*` configuration override.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import yaml

from tests.helpers.client import AttuneClient
from tests.helpers.deps import FIXTURE_PACKS, run_to_terminal
from tests.helpers.polling import WaitTimeout
from tests.helpers.sse import iter_sse
from tests.helpers.target import STACK_ENV, Target

PACK_NAME = "e2e_container"
PROBE_FILE = FIXTURE_PACKS / PACK_NAME / "actions" / "probe.py"
IMAGE = "python:3.11-slim"          # the probe's container.image (actions/probe.yaml)
MEMORY_MB = 256                     # the probe's container.memory_mb
ENGINES = {"docker", "podman", "sandbox"}
PACK_MOUNT = "/opt/attune/pack"
RUN_DEADLINE = 30.0                 # one probe run: ~1 s in the sandbox, a cold pull aside
# fixed basics the runtime sets (PWD: the sandbox's working directory, set by bwrap --chdir)
ALLOWED_ENV_NAMES = frozenset({"PATH", "HOME", "LANG", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE",
                               "PYTHONUNBUFFERED", "PWD"})


def probe_sha256() -> str:
    return hashlib.sha256(PROBE_FILE.read_bytes()).hexdigest()


def advertised_runtimes(client: AttuneClient) -> set[str]:
    """Lower-cased runtime names of the active (or busy) action workers: GET /api/v1/workers
    (`{"items": [...]}` or `{"data": [...]}`), `supported_runtimes` [{name}] or
    `capabilities.runtimes` [name]."""
    body = client.list_workers(per_page=100)
    rows = body
    if isinstance(body, dict):
        rows = body.get("items", body.get("data", []))
    found: set[str] = set()
    for worker in rows or []:
        if worker.get("status") not in ("active", "busy") or worker.get("heartbeat_stale"):
            continue
        if worker.get("worker_role") not in (None, "action"):
            continue
        entries = list(worker.get("supported_runtimes") or [])
        entries += list((worker.get("capabilities") or {}).get("runtimes") or [])
        for entry in entries:
            name = entry.get("name") if isinstance(entry, dict) else entry
            if isinstance(name, str):
                found.add(name.lower())
    return found


def container_advertised(client: AttuneClient) -> bool:
    return "container" in advertised_runtimes(client)


def api_port(target: Target) -> int:
    parsed = urlparse(target.api_url)
    return parsed.port or (443 if parsed.scheme == "https" else 80)


def run_probe(client: AttuneClient, action_ref: str, *, timeout: float = RUN_DEADLINE,
              **parameters) -> dict:
    return run_to_terminal(client, action_ref, parameters, timeout=timeout)


def report_of(execution: dict) -> dict:
    """The probe's JSON report: `result.data` (output_format json) or the last stdout line."""
    result = execution.get("result") or {}
    if isinstance(result.get("data"), dict):
        return result["data"]
    lines = [line for line in (result.get("stdout") or "").splitlines() if line.strip()]
    if not lines:
        raise AssertionError(f"execution {execution['id']} printed no report: {result}")
    return json.loads(lines[-1])


def env_violations(names: list[str]) -> list[str]:
    """Variable names a container must not see: anything beyond the fixed basics and the
    single-underscore `ATTUNE_*` per-execution variables."""
    return [n for n in names if n not in ALLOWED_ENV_NAMES
            and not (n.startswith("ATTUNE_") and not n.startswith("ATTUNE__"))]


def wait_stdout_contains(client: AttuneClient, execution_id: int, text: str, *,
                         timeout: float = 15.0) -> None:
    """Follow GET /executions/{id}/logs/stdout/stream until `text` has been sent."""
    path = f"/api/v1/executions/{execution_id}/logs/stdout/stream"
    deadline = time.monotonic() + timeout
    seen = ""
    resp = client.raw("GET", path, stream=True, timeout=(5, timeout),
                      headers={"Accept": "text/event-stream"})
    try:
        for name, _ev_id, data in iter_sse(resp):
            if name not in ("done",):
                seen += data or ""
            if text in seen:
                return
            if name == "done" or time.monotonic() > deadline:
                break
    finally:
        resp.close()
    raise WaitTimeout(f"stdout of execution {execution_id} did not show {text!r} within "
                      f"{timeout:.0f} s; got {seen[-300:]!r}")


def _stack_config() -> tuple[dict, Path | None]:
    raw = os.environ.get(STACK_ENV)
    if not raw:
        return {}, None
    path = json.loads(raw).get("config")
    if not path or not Path(path).is_file():
        return {}, None
    return yaml.safe_load(Path(path).read_text()) or {}, Path(path).parent


def staging_dir(execution_id: int) -> Path:
    """Where the embedded worker stages a container execution (removed after the run)."""
    cfg, base = _stack_config()
    configured = ((cfg.get("worker") or {}).get("container") or {}).get("staging_dir")
    root = Path(configured) if configured else Path(tempfile.gettempdir()) / "attune" / "container"
    if not root.is_absolute() and base is not None:
        root = base / root
    return root / str(execution_id)


def process_exists(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def engine_leftovers(engine: str, execution_id: int) -> list[str]:
    """Container ids still labelled with the execution id (docker / podman)."""
    binary = shutil.which(engine)
    if binary is None:
        raise AssertionError(f"{engine} ran the execution but is not on this machine's PATH")
    out = subprocess.run([binary, "ps", "-a", "--filter", f"label=attune.execution_id={execution_id}",
                          "-q"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"{engine} ps failed: {out.stderr}"
    return out.stdout.split()


__all__ = ["ALLOWED_ENV_NAMES", "advertised_runtimes", "ENGINES", "IMAGE", "MEMORY_MB", "PACK_MOUNT", "PACK_NAME",
           "PROBE_FILE", "RUN_DEADLINE", "api_port", "container_advertised", "engine_leftovers",
           "env_violations", "probe_sha256", "process_exists", "report_of", "run_probe",
           "staging_dir", "wait_stdout_contains"]
