"""Lane workers and the side-effect ledger for the service-control scenarios (T3.12, T3.30).

A *lane* is a set of extra worker processes private to one test: each is started through the
`ServiceManager` as `lane-<uid>-<node>` with labels `{e2e_lane: <uid>, e2e_node: <node>}` and the
taint `{key: e2e_lane, value: <uid>, effect: NoSchedule}`. Upstream's worker placement keeps every
other execution off a tainted worker, and the lane's executions carry `worker_selector` +
`worker_tolerations`, so killing or signalling a lane worker never touches another test's work.

- `Lanes` (fixture-managed, LIFO cleanup): `start_worker(node, **config)`, `selector(node)`,
  `tolerations`, `execute(action_ref, params, node=None)`, `restart(worker)`.
- `LaneWorker`: name, worker id, `row()` (GET /api/v1/workers/{id}).
- `Ledger`: a webhook trigger used as a counter of side effects per execution id (P5).
- `read_pid_file`, `pid_alive`: process checks for "the killed action's process is gone".

Custom-sensor machinery (T3.6) lives here too: `upload_fixture_pack` (a tests/fixtures/packs pack
under a unique ref), `sensor_shared_dir` (a directory the sensor host can read),
`sensor_processes` (local processes started for a sensor ref), `write_atomic` and
`expect_absent_for` (a bounded negative window that fails as soon as the forbidden thing shows up).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from tests.helpers.infra import pid_alive  # re-exported for the lane tests
from tests.helpers.polling import WaitTimeout, wait_until

from tests.helpers.scenario import all_items, full_events, utcnow

log = logging.getLogger("attune-e2e.lanes")

LANE_KEY = "e2e_lane"
NODE_KEY = "e2e_node"


@dataclass
class LaneWorker:
    name: str
    node: str
    id: int
    client: Any
    started: datetime

    def row(self) -> dict:
        """GET /api/v1/workers/{id}."""
        body = self.client.get(f"/api/v1/workers/{self.id}")
        return body["data"] if isinstance(body, dict) and "data" in body else body


class Lanes:
    """Extra worker processes private to one test (see the module docstring)."""

    def __init__(self, services, admin, uid: str):
        self.services = services
        self.admin = admin
        self.uid = uid
        self.workers: list[LaneWorker] = []
        self._started: list[str] = []

    # ------------------------------------------------------------------ placement
    def selector(self, node: str | None = None) -> dict:
        sel = {LANE_KEY: self.uid}
        if node is not None:
            sel[NODE_KEY] = node
        return sel

    @property
    def tolerations(self) -> list[dict]:
        return [{"key": LANE_KEY, "operator": "equal", "value": self.uid}]

    def execute(self, action_ref: str, parameters: dict | None = None, *,
                node: str | None = None, client=None) -> dict:
        """POST /executions/execute placed on this lane (and on `node` when given)."""
        return (client or self.admin).execute(action_ref, parameters or {},
                                              worker_selector=self.selector(node),
                                              worker_tolerations=self.tolerations)

    # ------------------------------------------------------------------ processes
    def name_for(self, node: str) -> str:
        return f"lane-{self.uid}-{node}"

    def start_worker(self, node: str, *, timeout: float = 30, **config) -> LaneWorker:
        """Start lane worker `node` (extra `worker.*` config as keyword arguments, e.g.
        `max_concurrent_tasks=1`) and wait until it consumes its queue."""
        name = self.name_for(node)
        env = {"ATTUNE__WORKER__NAME": name,
               "ATTUNE__WORKER__LABELS": json.dumps({LANE_KEY: self.uid, NODE_KEY: node}),
               "ATTUNE__WORKER__TAINTS": json.dumps([{"key": LANE_KEY, "value": self.uid,
                                                      "effect": "NoSchedule"}])}
        for key, value in config.items():
            env[f"ATTUNE__WORKER__{key.upper()}"] = json.dumps(value)
        since = utcnow()
        self.services.start(name, service="worker", env=env)
        if name not in self._started:
            self._started.append(name)
        worker = self._wait_ready(name, node, since, timeout)
        self.workers = [w for w in self.workers if w.name != name] + [worker]
        return worker

    def restart(self, worker: LaneWorker, *, timeout: float = 30) -> LaneWorker:
        """Start a stopped (or killed) lane worker again under the same name and environment."""
        since = utcnow()
        self.services.start(worker.name)
        fresh = self._wait_ready(worker.name, worker.node, since, timeout)
        self.workers = [w for w in self.workers if w.name != worker.name] + [fresh]
        return fresh

    def _wait_ready(self, name: str, node: str, since: datetime, timeout: float) -> LaneWorker:
        # The worker logs "consuming worker.<id>.executions" once its queue is declared and bound;
        # before that a dispatch to it would have no queue to land in.
        def probe():
            text = self.services.log_slice(name, since) or ""
            for line in text.splitlines():
                if "consuming worker." in line and f"worker {name!r}" in line:
                    return line
            if not self.services.is_running(name):
                raise AssertionError(f"lane worker {name} exited during start-up "
                                     f"(code {self.services.exit_code(name)}):\n"
                                     f"{self.services.log_tail(name)}")
            return None

        wait_until(probe, timeout=timeout, description=f"lane worker {name} consuming its queue")
        rows = [w for w in all_items(self.admin.list_workers) if w.get("name") == name]
        assert len(rows) == 1, f"expected one worker row named {name}, got {rows}"
        return LaneWorker(name, node, int(rows[0]["id"]), self.admin, since)

    def stop_all(self) -> None:
        for name in reversed(self._started):
            with contextlib.suppress(Exception):
                if self.services.is_running(name):
                    self.services.stop(name, grace=15)
                self.services.forget(name)


@pytest.fixture
def lanes(services, admin, uid):
    """`Lanes` for this test; every lane worker it started is stopped (SIGTERM) at teardown."""
    ln = Lanes(services, admin, uid)
    yield ln
    ln.stop_all()


# ------------------------------------------------------------------ P5 ledger
class Ledger:
    """A webhook trigger counting side effects: actions POST {"payload": {exec_id, tag}} to it."""

    def __init__(self, client, trigger: dict, key: str):
        self.client = client
        self.trigger_ref = trigger["ref"]
        self.key = key

    def entries(self) -> list[dict]:
        return [e.get("payload") or {} for e in full_events(self.client,
                                                            trigger_ref=self.trigger_ref)]

    def counts(self, tag: str | None = None) -> Counter:
        return Counter(p.get("exec_id") for p in self.entries()
                       if tag is None or p.get("tag") == tag)

    def wait_for(self, exec_ids: list[int], tag: str | None = None, timeout: float = 20) -> Counter:
        wanted = set(exec_ids)
        return wait_until(lambda: self.counts(tag), timeout=timeout,
                          done=lambda c: wanted <= set(c),
                          description=f"ledger entries for executions {sorted(wanted)}")


# ------------------------------------------------------------------ processes
def read_pid_file(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------ custom sensors (T3.6)
FIXTURE_PACKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "fixtures", "packs")
SHARED_DIR_ENV = "ATTUNE_E2E_SHARED_DIR"


def upload_fixture_pack(make, name: str, ref: str) -> str:
    """Upload tests/fixtures/packs/<name> as pack `ref` (`__PACK__` replaced); deleted at cleanup."""
    from tests.helpers.packs import build_pack_archive

    make.admin.upload_pack(build_pack_archive(os.path.join(FIXTURE_PACKS, name), ref),
                           force=False, skip_tests=True)
    make.defer(f"delete pack {ref}", lambda: make.admin.delete_pack(ref))
    return ref


def sensor_shared_dir(target, tmp_path, uid: str) -> str | None:
    """A directory both this test and the sensor host see: the test's tmp_path on the embedded
    stack, `$ATTUNE_E2E_SHARED_DIR/<uid>` on a live target; None when there is none."""
    if target.embedded:
        return str(tmp_path)
    base = os.environ.get(SHARED_DIR_ENV)
    if not base:
        return None
    path = os.path.join(base, f"t3_06_{uid}")
    os.makedirs(path, exist_ok=True)
    return path


def sensor_processes(sensor_ref: str) -> list[int]:
    """Live local processes whose environment names `ATTUNE_SENSOR_REF=<sensor_ref>`."""
    needle = f"ATTUNE_SENSOR_REF={sensor_ref}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0") and pid_alive(int(entry)):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def write_atomic(path, text: str) -> None:
    """Replace the file's content in one step (a polling reader never sees a half-written file)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def expect_absent_for(probe, seconds: float, what: str) -> None:
    """Poll `probe()` for `seconds`; fail as soon as it returns something truthy (a bounded
    negative window, scenarios.md §0.3: the caller states why the bound is sound)."""
    try:
        seen = wait_until(probe, timeout=seconds, description=what)
    except WaitTimeout:
        return
    raise AssertionError(f"{what}: appeared within {seconds} s: {seen}")


__all__ = ["LaneWorker", "Lanes", "Ledger", "read_pid_file", "pid_alive", "LANE_KEY", "NODE_KEY",
           "upload_fixture_pack", "sensor_shared_dir", "sensor_processes", "expect_absent_for",
           "write_atomic",
           "lanes"]
