"""The embedded stack: PostgreSQL + RabbitMQ + bootstrap + the five services.

    stack = EmbeddedStack("config.e2e.yaml", ".state", "reports")
    info = stack.up()      # {"api_url", "ws_url", "database_url", "amqp_url", "logs", "timings", ...}
    ...
    stack.down()           # stops the services; PostgreSQL and RabbitMQ keep running for reuse
    stack.down(reset=True) # ... and clears the run's data (what `up` also does after a crash)

CLI for manual work:

    python -m tests.helpers.stack up|down|status [--config config.e2e.yaml] [--stop-infra] [--reset]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import infra
from .services import SERVICE_ORDER, ServiceError, ServiceManager

REPO_ROOT = Path(__file__).resolve().parents[2]


class StackError(RuntimeError):
    """The embedded stack could not be brought up; the message names the failing step."""


class EmbeddedStack:
    def __init__(self, config_path: str | os.PathLike = REPO_ROOT / "config.e2e.yaml",
                 state_dir: str | os.PathLike = REPO_ROOT / ".state",
                 reports_dir: str | os.PathLike = REPO_ROOT / "reports",
                 extra_packs: tuple[str, ...] = (), quiet: bool = False):
        self.config_path = Path(config_path).resolve()
        self.state_dir = Path(state_dir).resolve()
        self.reports_dir = Path(reports_dir).resolve()
        self.log_dir = self.reports_dir / "logs"
        self.extra_packs = tuple(extra_packs)
        self.quiet = quiet
        self.services = ServiceManager(self.config_path, self.state_dir, self.log_dir)
        self.timings: dict[str, float] = {}

    @property
    def cfg(self):
        return self.services.cfg

    def _progress(self, msg: str) -> None:
        if not self.quiet:
            print(f"[stack] {msg}", file=sys.stderr, flush=True)

    def _step(self, name: str, fn):
        t0 = time.monotonic()
        try:
            result = fn()
        except (infra.InfraError, ServiceError) as exc:
            raise StackError(f"{name} failed: {exc}") from exc
        dt = time.monotonic() - t0
        self.timings[name] = round(dt, 2)
        return result, dt

    def bootstrap(self) -> None:
        cmd = [sys.executable, "-m", "attune_emulator", "bootstrap", "--config",
               str(self.config_path)]
        for pack in self.extra_packs:
            cmd += ["--pack", str(pack)]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(cmd, cwd=str(REPO_ROOT), capture_output=True, text=True, timeout=300,
                           env={**os.environ, "ATTUNE_CONFIG": str(self.config_path)})
        with open(self.log_dir / "bootstrap.log", "a") as fh:
            fh.write(r.stderr + r.stdout)
        if r.returncode != 0:
            raise ServiceError(f"`{' '.join(cmd)}` exited {r.returncode}:\n"
                               f"{(r.stderr or '')[-3000:]}{(r.stdout or '')[-1000:]}")

    def urls(self) -> dict:
        cfg = self.cfg
        notifier = self.services.notifier_url()
        return {
            "api_url": cfg.api_url,
            "ws_url": notifier.replace("http://", "ws://", 1) + "/ws",
            "notifier_url": notifier,
            "database_url": cfg.database_url,
            "amqp_url": cfg.amqp_url,
        }

    def info(self) -> dict:
        return {**self.urls(),
                "logs": {n: str(self.services.log_path(n)) for n in SERVICE_ORDER},
                "log_dir": str(self.log_dir),
                "state_dir": str(self.state_dir),
                "config": str(self.config_path),
                "timings": dict(self.timings)}

    @property
    def _dirty_marker(self) -> Path:
        return self.state_dir / "run" / "data-in-use"

    def _owned_dir(self, key: str) -> Path | None:
        """The configured directory `key` when it lies inside the state folder (only those are
        ours to empty; a config pointing at /opt/attune/... is left alone)."""
        value = self.cfg.get(key)
        if not value:
            return None
        path = Path(value).resolve()
        return path if path.is_relative_to(self.state_dir) else None

    def _empty(self, key: str, keep=lambda child: False) -> int | None:
        """Remove the entries of the configured directory `key` (if ours, see `_owned_dir`) that
        `keep` does not spare; how many, or None when the directory is not ours or absent."""
        folder = self._owned_dir(key)
        if folder is None or not folder.is_dir():
            return None
        removed = 0
        for child in folder.iterdir():
            if keep(child):
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
            removed += 1
        return removed

    def reset_data(self) -> list[str]:
        """Remove what a run leaves behind that no later run reuses: the database schema's rows
        (dropped; the next bootstrap creates it again), the broker's queues, execution logs,
        uploaded packs, pack environments and the run files of services that are not running.
        Kept for reuse: PostgreSQL and RabbitMQ themselves, the environment store and download
        caches under `<runtime_envs_dir>/.store` and `.cache`. Only servers this helper started
        (infra.json) and folders inside the state folder are touched; services must be stopped.
        Returns what was cleared."""
        running = [n for n in self.services.names() if self.services.is_running(n)]
        if running:
            raise StackError(f"reset_data: services still running: {', '.join(running)}")
        cleared = []
        st = infra.infra_status(self.state_dir)
        if st.get("postgres", {}).get("running"):
            schema = self.cfg.get("database.schema") or "attune"
            infra.drop_schema(self.cfg.database_url, schema)
            cleared.append(f"database schema {schema}")
        if st.get("rabbitmq", {}).get("running"):
            deleted = infra.delete_queues(self.state_dir, self.cfg.amqp_url)
            cleared.append(f"{deleted} broker queue(s)")
        for key in ("artifacts_dir", "packs_base_dir"):
            removed = self._empty(key)
            if removed is not None:
                cleared.append(f"{removed} entries of {key}")
        # pack refs never start with a dot: `.store` and `.cache` stay
        removed = self._empty("runtime_envs_dir", keep=lambda child: child.name.startswith("."))
        if removed is not None:
            cleared.append(f"{removed} pack environment folder(s)")
        stale = [n for n in self.services.names() if n not in SERVICE_ORDER]
        for name in stale:
            self.services.forget(name)
        if stale:
            cleared.append(f"run files of {len(stale)} stopped extra service(s)")
        self._dirty_marker.unlink(missing_ok=True)
        return cleared

    def up(self, health_timeout: float = 60) -> dict:
        t_all = time.monotonic()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        pg, dt = self._step("postgres", lambda: infra.ensure_postgres(self.cfg, self.state_dir))
        self._progress(f"postgres ready ({dt:.1f} s){'' if pg['started'] else ', already running'}")
        mq, dt = self._step("rabbitmq", lambda: infra.ensure_rabbitmq(self.cfg, self.state_dir))
        self._progress(f"rabbitmq ready ({dt:.1f} s){'' if mq['started'] else ', already running'}")
        # leftovers of an earlier run that was not shut down (crashed pytest, Ctrl-C)
        stale = [n for n in self.services.names() if self.services.is_running(n)]
        if stale:
            self._progress(f"stopping services left running: {', '.join(stale)}")
            self.services.stop_all(grace=5)
        if self._dirty_marker.exists():
            # an earlier run ended without reset (crash, --keep-stack, `stack down`)
            cleared, dt = self._step("reset", self.reset_data)
            self._progress(f"data of an earlier run cleared ({dt:.1f} s): {', '.join(cleared)}")
        # service logs describe one run (failure reports copy the slices they need)
        for old_log in self.log_dir.glob("*.log"):
            old_log.unlink(missing_ok=True)
        self._dirty_marker.parent.mkdir(parents=True, exist_ok=True)
        self._dirty_marker.write_text(f"{os.getpid()}\n")
        _, dt = self._step("bootstrap", self.bootstrap)
        self._progress(f"bootstrap done ({dt:.1f} s)")
        _, dt = self._step("start", self.services.start_all)
        self._progress(f"services started ({dt:.1f} s): {', '.join(SERVICE_ORDER)}")
        ready, dt = self._step("healthy", lambda: self.services.wait_healthy(health_timeout))
        self._progress(f"services healthy ({dt:.1f} s): "
                       + ", ".join(f"{k} {v:.1f} s" for k, v in ready.items()))
        self.timings["total"] = round(time.monotonic() - t_all, 2)
        self._progress(f"stack up in {self.timings['total']:.1f} s: API {self.cfg.api_url}, "
                       f"logs {self.log_dir}")
        return self.info()

    def down(self, stop_infra: bool = False, grace: float = 10, reset: bool = False) -> None:
        """Stop the services; with `reset`, then clear the run's data (`reset_data`)."""
        t0 = time.monotonic()
        self.services.stop_all(grace=grace)
        self._progress(f"services stopped ({time.monotonic() - t0:.1f} s)")
        if reset:
            cleared, dt = self._step("reset", self.reset_data)
            self._progress(f"run data cleared ({dt:.1f} s): {', '.join(cleared)}")
        if stop_infra:
            stopped = infra.stop_infra(self.state_dir)
            self._progress(f"infrastructure stopped: {', '.join(stopped) or 'nothing we started'}")

    def status(self) -> dict:
        return {**self.info(), "services": self.services.status(),
                "infra": infra.infra_status(self.state_dir)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.helpers.stack",
                                 description="Manage the embedded Attune stack by hand.")
    ap.add_argument("command", choices=["up", "down", "status"])
    # the same defaults as the suite and the benchmark: ATTUNE_E2E_CONFIG / _STATE_DIR / _REPORTS_DIR
    env = os.environ.get
    ap.add_argument("--config", default=str(REPO_ROOT / env("ATTUNE_E2E_CONFIG", "config.e2e.yaml")),
                    help="configuration file (default: $ATTUNE_E2E_CONFIG or config.e2e.yaml)")
    ap.add_argument("--state-dir", default=str(REPO_ROOT / env("ATTUNE_E2E_STATE_DIR", ".state")),
                    help="state folder (default: $ATTUNE_E2E_STATE_DIR or .state)")
    ap.add_argument("--reports-dir", default=str(REPO_ROOT / env("ATTUNE_E2E_REPORTS_DIR", "reports")),
                    help="reports folder (default: $ATTUNE_E2E_REPORTS_DIR or reports)")
    ap.add_argument("--pack", action="append", default=[], help="extra pack dir to register (up)")
    ap.add_argument("--stop-infra", action="store_true",
                    help="down: also stop PostgreSQL and RabbitMQ if this tool started them")
    ap.add_argument("--reset", action="store_true",
                    help="down: also clear the run's data (database rows, queues, execution "
                         "logs, uploaded packs); the next `up` does this anyway")
    args = ap.parse_args(argv)
    stack = EmbeddedStack(args.config, args.state_dir, args.reports_dir, tuple(args.pack))
    try:
        if args.command == "up":
            info = stack.up()
            print(f"API       {info['api_url']}")
            print(f"WebSocket {info['ws_url']}")
            print(f"database  {info['database_url']}")
            print(f"AMQP      {info['amqp_url']}")
            for name, path in info["logs"].items():
                print(f"log       {name:<9} {path}")
            print("login     test@attune.local / TestPass123!")
        elif args.command == "down":
            stack.down(stop_infra=args.stop_infra, reset=args.reset)
        else:
            print(json.dumps(stack.status(), indent=2, default=str))
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
