"""Machinery of the per-pack dependency scenarios (T2.12 Python, T2.13 Node.js).

- `FixturePack`: upload a `tests/fixtures/packs/<name>` folder under a unique ref
  (`<name>_<8hex>`, optionally with text replacements), delete it afterwards.
- `run_to_end`: execute an action and wait for a terminal status with a stated deadline.
- `wall_seconds`: how long an execution was `running` (`started_at` -> `updated`). This includes
  the worker's lazy environment build; `result.duration_ms` does not (upstream and the embedded
  worker both time only the action process), so it is the duration that shows a (re)install.
- `worker_runtimes`: the runtimes the target's active action workers advertise.

Deadlines. A cold build downloads from PyPI / the npm registry and installs on a 2-core machine:
`pip install requests==2.28.0` into a fresh venv takes ~3-5 s with a warm download cache and 10-30 s
cold; `npm install axios@^1` ~2-4 s warm, 10-30 s cold. `INSTALL_DEADLINE` (240 s) leaves room for a
slow registry; warm runs must finish within `WARM_DEADLINE` (20 s).
"""
from __future__ import annotations

import logging
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable

from tests.helpers.client import ApiError, AttuneClient
from tests.helpers.packs import build_pack_archive
from tests.helpers.polling import TERMINAL, wait_for_execution
from tests.helpers.scenario import all_items, parse_ts, secs, utcnow

log = logging.getLogger("attune-e2e")

FIXTURE_PACKS = Path(__file__).resolve().parent.parent / "fixtures" / "packs"
INSTALL_DEADLINE = 240.0   # first execution: environment built from scratch
WARM_DEADLINE = 20.0       # any later execution of the same pack
# per-test pytest-timeout for tests that wait on a cold build (pytest.ini's default is 120 s)
INSTALL_TEST_TIMEOUT = 420


class FixturePack:
    """A fixture pack uploaded under `<name>_<8hex>` (or `ref`); `delete()` removes it."""

    def __init__(self, client: AttuneClient, name: str, *, ref: str | None = None,
                 replacements: dict[str, str] | None = None):
        src = FIXTURE_PACKS / name
        if not (src / "pack.yaml").is_file():
            raise FileNotFoundError(f"fixture pack missing: {src}/pack.yaml")
        self.client = client
        self.name = name
        self.ref = ref or f"{name}_{uuid.uuid4().hex[:8]}"
        archive = build_pack_archive(src, self.ref, replacements)
        self.uploaded = client.upload_pack(archive, force=False, skip_tests=True)

    def action(self, name: str) -> str:
        return f"{self.ref}.{name}"

    def delete(self) -> None:
        try:
            self.client.delete_pack(self.ref)
        except ApiError as exc:
            if exc.status != 404:
                log.warning("cleanup: delete pack %s failed: %s", self.ref, exc)
        except Exception as exc:  # cleanup never masks the test outcome; it is logged
            log.warning("cleanup: delete pack %s failed: %s", self.ref, exc)


def first_run(client: AttuneClient, name: str, action: str) -> SimpleNamespace:
    """Upload fixture pack `name` and run its `action` once (any terminal status: the tests
    assert on it). Returns {pack, ref, before_upload, first}; the caller deletes the pack."""
    before_upload = utcnow()
    pack = FixturePack(client, name)
    first = run_to_terminal(client, pack.action(action), {}, timeout=INSTALL_DEADLINE)
    return SimpleNamespace(pack=pack, ref=pack.ref, before_upload=before_upload, first=first)


def completed_data(execution: dict) -> dict:
    """`result.data` of an execution that must have completed."""
    assert execution["status"] == "completed", \
        f"expected {execution.get('action_ref')} to complete, got `{execution['status']}`: " \
        f"{execution.get('result')}"
    return execution["result"]["data"]


def run_to_end(client: AttuneClient, action_ref: str, parameters: dict | None = None, *,
               status: str | Iterable[str] = "completed", timeout: float = WARM_DEADLINE) -> dict:
    """POST /executions/execute, then wait (polling) until the execution has `status`; fails at once
    on another terminal status."""
    execution = client.execute(action_ref, parameters or {})
    return wait_for_execution(client, execution["id"], status, timeout=timeout)


def run_to_terminal(client: AttuneClient, action_ref: str, parameters: dict | None = None, *,
                    timeout: float = WARM_DEADLINE) -> dict:
    """Like `run_to_end`, accepting any terminal status (the caller asserts which)."""
    return run_to_end(client, action_ref, parameters, status=TERMINAL, timeout=timeout)


def wall_seconds(execution: dict) -> float:
    """Seconds the execution spent `running` (environment preparation included)."""
    return secs(execution["started_at"], execution["updated"])


def assert_second_run_reused(first: dict, second: dict, installed_at: float | None,
                             uploaded_at: float, what: str, slack: float = 1.0) -> None:
    """Caching, judged by when the pack's installed files were written (`installed_at`, a file
    time reported by the action itself; copies keep file times):
    - written during the first run: that run installed, so the second run, which must not,
      spends less than half the first one's time `running`;
    - written before this pack was uploaded: the target reused an environment it had built
      before for the same manifest (the embedded worker's content-addressed store; a second
      suite run on a machine installs nothing), so neither run installed: both are warm runs.
    Anything else (no install time, or one after the first run) fails."""
    cold, warm = wall_seconds(first), wall_seconds(second)
    assert installed_at is not None, f"{what}: the action reported no install time"
    started, ended = (parse_ts(first[k]).timestamp() for k in ("started_at", "updated"))
    if installed_at >= started - slack:
        assert installed_at <= ended + slack, \
            f"{what}: dependencies installed at {installed_at}, after the first run ended ({ended})"
        assert warm < cold / 2, \
            f"{what}: expected the second run to be much faster than the first (install " \
            f"included): first {cold:.2f} s running, second {warm:.2f} s"
    else:
        assert installed_at <= uploaded_at + slack, \
            f"{what}: dependencies installed at {installed_at}, after the upload ({uploaded_at}) " \
            f"but before the first run started ({started})"
        assert max(cold, warm) < WARM_DEADLINE, \
            f"{what}: the environment was reused from an earlier install, yet a run took " \
            f"{cold:.2f} s / {warm:.2f} s running (warm deadline {WARM_DEADLINE} s)"


def worker_runtimes(client: AttuneClient) -> set[str]:
    """Lower-cased runtime names that live action workers advertise in GET /api/v1/workers
    (`supported_runtimes: [{name, versions}]`; workers whose `health_state` is offline, error or
    inactive are ignored)."""
    found: set[str] = set()
    for worker in all_items(client.list_workers):
        if worker.get("worker_role") not in (None, "action"):
            continue
        if worker.get("health_state") not in (None, "active", "busy"):
            continue
        for runtime in worker.get("supported_runtimes") or []:
            name = runtime.get("name") if isinstance(runtime, dict) else runtime
            if name:
                found.add(str(name).lower())
    return found


__all__ = ["FixturePack", "assert_second_run_reused", "completed_data", "first_run", "run_to_end",
           "run_to_terminal",
           "wall_seconds", "worker_runtimes",
           "INSTALL_DEADLINE", "WARM_DEADLINE", "INSTALL_TEST_TIMEOUT", "FIXTURE_PACKS"]
