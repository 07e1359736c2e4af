"""A dedicated embedded stack for the fault scenarios (tests/e2e/faults), and what they share.

Killing PostgreSQL, RabbitMQ or a service would disturb every test running in parallel on the
session's stack, so the fault tests run on a stack of their own:

- `derive_config(base, out_dir)`: the session's config (ATTUNE_E2E_CONFIG, default
  config.e2e.yaml) with every port offset (API and notifier +FAULT_HTTP_OFFSET, PostgreSQL and
  RabbitMQ +FAULT_INFRA_OFFSET), the worker named `faults-<name>`, and packs, runtime envs and
  artifacts under `out_dir`.
- `FaultStack`: that stack (state under `<state>/faults`, logs under `<reports>/faults/logs`):
  `up()` / `down()` (services and its own PostgreSQL and RabbitMQ), `stop_rabbitmq()`,
  `start_rabbitmq()`, `stop_postgres()`, `start_postgres()`, `restore()` (start whatever is not
  running and wait until healthy), an admin `client`, the fixture pack `pack`, `ledger(uid)`.
- `timed(call)`: (seconds, outcome) of one HTTP call, for the "fail fast" checks.
- `service_pids(services)`: {service: pid} for "reconnected by itself, not restarted".
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse, urlunparse

import requests
import yaml

from tests.helpers import infra
from tests.helpers.client import ApiError, AttuneClient
from tests.helpers.lanes import Ledger
from tests.helpers.packs import build_pack_archive
from tests.helpers.polling import TERMINAL, WaitTimeout, wait_until
from tests.helpers.scenario import utcnow
from tests.helpers.services import SERVICE_ORDER
from tests.helpers.stack import EmbeddedStack
from tests.helpers.target import DEFAULT_LOGIN, DEFAULT_PASSWORD

log = logging.getLogger("attune-e2e.faults")

FAULT_HTTP_OFFSET = 50     # API and notifier ports
FAULT_INFRA_OFFSET = 100   # PostgreSQL and RabbitMQ ports (RabbitMQ's dist port follows: +1000)
WORKER_PREFIX = "faults-"
ROOT = Path(__file__).resolve().parents[2]
FIXTURE_PACK = ROOT / "tests" / "fixtures" / "packs" / "e2e_core"


def _shift_url_port(url: str, offset: int, default_port: int) -> str:
    u = urlparse(url)
    port = (u.port or default_port) + offset
    netloc = u.netloc.rsplit("@", 1)
    host = (u.hostname or "127.0.0.1")
    hostport = f"{host}:{port}"
    netloc = f"{netloc[0]}@{hostport}" if len(netloc) == 2 else hostport
    return urlunparse((u.scheme, netloc, u.path, u.params, u.query, u.fragment))


def derive_config(base: str | Path, out_dir: str | Path) -> Path:
    """Write `<out_dir>/config.yaml`: `base` with offset ports and paths of its own."""
    base = Path(base).resolve()
    out_dir = Path(out_dir).resolve()
    data = yaml.safe_load(base.read_text()) or {}
    db = data.setdefault("database", {})
    db["url"] = _shift_url_port(db.get("url", "postgresql://attune:attune@127.0.0.1:5432/attune"),
                                FAULT_INFRA_OFFSET, 5432)
    mq = data.setdefault("message_queue", {})
    mq["url"] = _shift_url_port(mq.get("url", "amqp://guest:guest@127.0.0.1:5672/%2f"),
                                FAULT_INFRA_OFFSET, 5672)
    server = data.setdefault("server", {})
    server["port"] = int(server.get("port", 8080)) + FAULT_HTTP_OFFSET
    notifier = data.setdefault("notifier", {})
    notifier["port"] = int(notifier.get("port", 8081)) + FAULT_HTTP_OFFSET
    worker = data.setdefault("worker", {})
    worker["name"] = WORKER_PREFIX + str(worker.get("name") or "worker-1")
    for key, sub in (("packs_base_dir", "packs"), ("runtime_envs_dir", "runtime_envs"),
                     ("artifacts_dir", "artifacts")):
        data[key] = str(out_dir / sub)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "config.yaml"
    path.write_text("# derived from " + str(base) + " by tests/helpers/faults.py: offset ports, "
                    "own paths\n" + yaml.safe_dump(data, sort_keys=False))
    return path


class FaultStack:
    """The dedicated stack of the fault scenarios (see the module docstring)."""

    def __init__(self, base_config: str | Path, state_dir: str | Path, reports_dir: str | Path):
        self.dir = Path(state_dir).resolve() / "faults"
        self.config_path = derive_config(base_config, self.dir)
        self.reports_dir = Path(reports_dir).resolve() / "faults"
        self.stack = EmbeddedStack(self.config_path, self.dir, self.reports_dir, quiet=True)
        self.services = self.stack.services
        self.client: AttuneClient | None = None
        self.pack: str | None = None

    # ------------------------------------------------------------------ properties
    @property
    def cfg(self):
        return self.stack.cfg

    @property
    def api_url(self) -> str:
        return self.cfg.api_url

    @property
    def ws_url(self) -> str:
        return self.stack.urls()["ws_url"]

    @property
    def database_url(self) -> str:
        return self.cfg.database_url

    # ------------------------------------------------------------------ lifecycle
    def up(self) -> dict:
        info = self.stack.up()
        self.client = self.login()
        self.pack = f"faults_core_{uuid.uuid4().hex[:8]}"
        self.client.upload_pack(build_pack_archive(FIXTURE_PACK, self.pack), force=False,
                                skip_tests=True)
        return info

    def login(self) -> AttuneClient:
        client = AttuneClient(self.api_url)
        client.login(DEFAULT_LOGIN, DEFAULT_PASSWORD)
        return client

    def down(self) -> None:
        """Stop the services and this stack's own PostgreSQL and RabbitMQ."""
        try:
            if self.client is not None and self.pack and self._infra_up():
                with contextlib.suppress(Exception):
                    self.client.delete_pack(self.pack)
        finally:
            self.stack.down(stop_infra=True, grace=10, reset=self._infra_up())

    # ------------------------------------------------------------------ infrastructure
    def _infra_up(self) -> bool:
        st = infra.infra_status(self.dir)
        return all(st.get(k, {}).get("running", True) for k in ("postgres", "rabbitmq"))

    def stop_rabbitmq(self) -> None:
        """SIGTERM to the broker's process group (a graceful stop, faster than rabbitmqctl),
        then infra's own stop for anything left."""
        rec = infra.infra_status(self.dir).get("rabbitmq") or {}
        pid = rec.get("pid")
        if pid and rec.get("running"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
            with contextlib.suppress(WaitTimeout):
                wait_until(lambda: not infra.pid_alive(pid), timeout=20,
                           description="RabbitMQ to stop on SIGTERM")
        infra.stop_rabbitmq(self.dir)

    def start_rabbitmq(self) -> dict:
        return infra.ensure_rabbitmq(self.cfg, self.dir)

    def stop_postgres(self) -> None:
        infra.stop_postgres(self.dir)

    def start_postgres(self) -> dict:
        return infra.ensure_postgres(self.cfg, self.dir)

    def restore(self, timeout: float = 60) -> list[str]:
        """Bring back whatever a fault left stopped: PostgreSQL, RabbitMQ, then every service
        that is not running; wait until the stack is healthy. Returns what was restarted."""
        restored: list[str] = []
        if infra._pg_try_connect(self.database_url) is not None:
            self.start_postgres()
            restored.append("postgres")
        if infra._amqp_try_connect(self.cfg.amqp_url) is not None:
            self.start_rabbitmq()
            restored.append("rabbitmq")
        for name in SERVICE_ORDER:
            if not self.services.is_running(name):
                self.services.kill_session(name)  # leftovers of a killed run (action processes)
                self.start_service(name, timeout)
                restored.append(name)
        self.services.wait_healthy(timeout)
        return restored

    def start_service(self, name: str, timeout: float = 30) -> int:
        """Start `name` and wait until it is ready: the worker once it logs that it consumes its
        dispatch queue (a killed worker's row still looks fresh for a few seconds), the others
        once healthy. Returns the pid."""
        since = utcnow()
        pid = self.services.start(name)
        if name == "worker":
            def probe():
                if not self.services.is_running(name):
                    raise AssertionError(f"worker exited during start-up:\n"
                                         f"{self.services.log_tail(name)}")
                text = self.services.log_slice(name, since) or ""
                return any("consuming worker." in line for line in text.splitlines())
            wait_until(probe, timeout=timeout, description="the restarted worker consuming")
        self.services.wait_healthy(timeout, names=[name])
        return pid

    # ------------------------------------------------------------------ test objects
    def ledger(self, uid: str, slug: str = "ledger") -> Ledger:
        """A webhook trigger in the fault pack counting side effects per execution (P5)."""
        assert self.client is not None and self.pack is not None
        ref = f"{self.pack}.{slug}_{uid}"
        self.client.create_trigger(ref=ref, label=ref, pack_ref=self.pack)
        enabled = self.client.enable_webhook(ref)
        return Ledger(self.client, enabled, enabled["webhook_key"])

    def ref(self, slug: str, uid: str) -> str:
        return f"{self.pack}.{slug}_{uid}"

    def action(self, name: str) -> str:
        """The ref of fixture-pack action `name` (sleeper, post_webhook, ...)."""
        return f"{self.pack}.{name}"


# ---------------------------------------------------------------------------------- helpers
def timed(call: Callable[[], requests.Response]) -> tuple[float, Any]:
    """Run one HTTP call; (seconds it took, the response or the exception it raised)."""
    t0 = time.monotonic()
    try:
        outcome: Any = call()
    except requests.RequestException as exc:
        outcome = exc
    return time.monotonic() - t0, outcome


def service_pids(services) -> dict[str, int | None]:
    return {name: services.pid(name) for name in SERVICE_ORDER}


def wait_all_terminal(client: AttuneClient, ids: list[int], timeout: float) -> dict[int, dict]:
    """Wait until every execution in `ids` is terminal; {id: execution}."""
    def probe():
        out = {i: client.get_execution(i) for i in ids}
        return out

    return wait_until(probe, timeout=timeout,
                      done=lambda got: all(e.get("status") in TERMINAL for e in got.values()),
                      description=f"executions {ids} to be terminal", ignore=(ApiError,),
                      max_interval=1.0)


__all__ = ["FaultStack", "derive_config", "timed", "service_pids", "wait_all_terminal",
           "FAULT_HTTP_OFFSET", "FAULT_INFRA_OFFSET"]
