"""Custom (pack) sensors: one subprocess per sensor while it has enabled rules (behavior.md §6.1).

- A sensor row (not the built-in `core.timer_sensor`) with `enabled` and a runtime runs as
  `<interpreter> <pack dir>/sensors/<entrypoint>` (the file itself for native runtimes), in its own
  process group, only while at least one enabled rule uses one of its `trigger_types`.
- Its environment: `ATTUNE_API_URL`, `ATTUNE_API_TOKEN` (a sensor token from
  `POST /auth/internal/sensor-token`, login `sensor:<ref>`), `ATTUNE_SENSOR_ID`, `ATTUNE_SENSOR_REF`,
  `ATTUNE_SENSOR_TRIGGERS` (JSON list of `{id, ref, trigger_ref, config}` for the enabled rules,
  `config` = the rule's `trigger_params`), `ATTUNE_MQ_URL`, `ATTUNE_MQ_EXCHANGE=attune.events`,
  `ATTUNE_ARTIFACTS_DIR`, `ATTUNE_LOG_LEVEL=info`, `ATTUNE_PACK_REF`.
- A rule change on one of its triggers starts it, stops it (no enabled rule left) or restarts it
  (the rule set changed). A periodic reconcile also catches changes no message announces (pack
  deletion cascades, a rule moved to another trigger).
- A sensor that exits on its own is restarted after 5 s x 2^n (at most 300 s); after 3 consecutive
  failures an error is logged. stdout/stderr go to `<artifacts_dir>/sensors/<ref>.log`.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

log = logging.getLogger("attune_emulator.sensor.custom")

BUILTIN_SENSORS = {"core.timer_sensor"}
RECONCILE_SECONDS = 2.0
BACKOFF_BASE = 5.0
BACKOFF_MAX = 300.0
ALERT_AFTER_FAILURES = 3


def restart_delay(failures: int) -> float:
    """5 s x 2^(n-1) for the n-th consecutive failure, capped at 300 s."""
    if failures <= 0:
        return 0.0
    return min(BACKOFF_BASE * (2 ** (failures - 1)), BACKOFF_MAX)


def triggers_document(rules: list[dict]) -> list[dict]:
    """`ATTUNE_SENSOR_TRIGGERS` for these enabled rules (ordered by id)."""
    return [{"id": r["id"], "ref": r["ref"], "trigger_ref": r["trigger_ref"],
             "config": r.get("trigger_params") or {}}
            for r in sorted(rules, key=lambda r: r["id"])]


def rules_signature(rules: list[dict]) -> str:
    return json.dumps(triggers_document(rules), sort_keys=True, default=str)


@dataclass
class SensorProcess:
    sensor_id: int
    ref: str
    signature: str = ""
    proc: subprocess.Popen | None = None
    started_mono: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    stopping: bool = False
    extra: dict = field(default_factory=dict)


class CustomSensorManager:
    def __init__(self, cfg, db, api_url: str, stop_event: threading.Event):
        self.cfg = cfg
        self.db = db
        self.api_url = api_url.rstrip("/")
        self.stop_event = stop_event
        self.lock = threading.RLock()
        self.procs: dict[int, SensorProcess] = {}
        self.artifacts_dir = Path(cfg.get("artifacts_dir") or ".")
        self.packs_base_dir = cfg.get("packs_base_dir") or "."
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ queries
    def _sensors(self) -> list[dict]:
        rows = self.db.all(
            "SELECT s.id, s.ref, s.pack_ref, s.entrypoint, s.trigger_types, s.enabled, s.config,"
            " r.name AS runtime_name, p.storage_path FROM sensor s"
            " LEFT JOIN runtime r ON r.id = s.runtime LEFT JOIN pack p ON p.id = s.pack"
            " ORDER BY s.id")
        return [r for r in rows if r["ref"] not in BUILTIN_SENSORS and r["entrypoint"]]

    def _enabled_rules(self, trigger_types: list[str]) -> list[dict]:
        if not trigger_types:
            return []
        return self.db.all(
            "SELECT id, ref, trigger_ref, trigger_params FROM rule WHERE enabled"
            " AND trigger_ref = ANY(%s) ORDER BY id", (list(trigger_types),))

    # ------------------------------------------------------------------ reconcile
    def reconcile(self, only_trigger: str | None = None) -> None:
        """Start, stop or restart sensor processes to match the enabled rules."""
        if self.stop_event.is_set():
            return
        with self.lock:
            try:
                sensors = self._sensors()
            except Exception:
                log.exception("custom sensors: cannot read the sensor table")
                return
            seen = set()
            for s in sensors:
                types = [str(t) for t in (s["trigger_types"] or [])]
                if only_trigger is not None and only_trigger not in types:
                    seen.add(s["id"])
                    continue
                seen.add(s["id"])
                rules = self._enabled_rules(types) if s["enabled"] else []
                current = self.procs.get(s["id"])
                if not rules:
                    if current is not None:
                        log.info("sensor %s: no enabled rule left on %s; stopping it", s["ref"],
                                 ", ".join(types))
                        self._stop(current)
                        self.procs.pop(s["id"], None)
                    continue
                sig = rules_signature(rules)
                if current is not None and current.signature == sig:
                    if current.proc is not None and not self._alive(current) \
                            and current.restart_at is None:
                        self._schedule_restart(current)  # crashed; the watcher restarts it
                    continue
                if current is not None:
                    log.info("sensor %s: rules changed (%d enabled); restarting it", s["ref"],
                             len(rules))
                    self._stop(current)
                sp = SensorProcess(s["id"], s["ref"], sig)
                self.procs[s["id"]] = sp
                self._spawn(sp, s, rules)
            if only_trigger is None:
                for sid in [sid for sid in self.procs if sid not in seen]:
                    sp = self.procs.pop(sid)
                    log.info("sensor %s no longer exists; stopping it", sp.ref)
                    self._stop(sp)

    def on_rule_change(self, trigger_ref: str | None) -> None:
        self.reconcile(only_trigger=trigger_ref) if trigger_ref else self.reconcile()

    # ------------------------------------------------------------------ processes
    @staticmethod
    def _alive(sp: SensorProcess) -> bool:
        return sp.proc is not None and sp.proc.poll() is None

    def _interpreter(self, runtime_name: str | None) -> list[str] | None:
        name = (runtime_name or "native").strip().lower()
        if name in ("python", "python3"):
            py = shutil.which("python3")
            return [py] if py else None
        if name in ("shell", "bash", "sh"):
            return ["/bin/bash"]
        if name in ("node", "nodejs", "node.js"):
            node = shutil.which("node")
            return [node] if node else None
        return []

    def _token(self, ref: str, trigger_types: list[str]) -> str | None:
        try:
            resp = requests.post(f"{self.api_url}/auth/internal/sensor-token",
                                 json={"sensor_ref": ref, "trigger_types": trigger_types},
                                 timeout=10)
            if resp.status_code in (200, 201):
                return (resp.json().get("data") or {}).get("token")
            log.warning("sensor %s: sensor token request answered %s: %s", ref, resp.status_code,
                        resp.text[:200])
        except (requests.RequestException, ValueError) as exc:
            log.warning("sensor %s: sensor token request failed: %s", ref, exc)
        return None

    def _spawn(self, sp: SensorProcess, s: dict, rules: list[dict]) -> None:
        types = [str(t) for t in (s["trigger_types"] or [])]
        pack_dir = Path(s["storage_path"] or os.path.join(self.packs_base_dir, s["pack_ref"] or ""))
        script = pack_dir / "sensors" / s["entrypoint"]
        interp = self._interpreter(s["runtime_name"])
        if interp is None or not script.is_file():
            why = f"interpreter for runtime {s['runtime_name']!r} not found" if interp is None \
                else f"entry point {script} not found"
            log.error("sensor %s not started: %s", s["ref"], why)
            self._schedule_restart(sp)
            return
        token = self._token(s["ref"], types)
        if not token:
            self._schedule_restart(sp)
            return
        env = dict(os.environ)
        env.update({
            "ATTUNE_API_URL": self.api_url, "ATTUNE_API_TOKEN": token,
            "ATTUNE_SENSOR_ID": str(s["id"]), "ATTUNE_SENSOR_REF": s["ref"],
            "ATTUNE_SENSOR_TRIGGERS": json.dumps(triggers_document(rules), default=str),
            "ATTUNE_MQ_URL": self.cfg.amqp_url or "", "ATTUNE_MQ_EXCHANGE": "attune.events",
            "ATTUNE_ARTIFACTS_DIR": str(self.artifacts_dir), "ATTUNE_LOG_LEVEL": "info",
            "ATTUNE_PACK_REF": s["pack_ref"] or "", "PYTHONUNBUFFERED": "1",
        })
        log_dir = self.artifacts_dir / "sensors"
        log_dir.mkdir(parents=True, exist_ok=True)
        argv = [*interp, str(script)]
        try:
            with open(log_dir / f"{s['ref']}.log", "ab") as logf:
                sp.proc = subprocess.Popen(argv, cwd=str(pack_dir), env=env,
                                           stdin=subprocess.DEVNULL, stdout=logf,
                                           stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            log.error("sensor %s: cannot start %s: %s", s["ref"], argv, exc)
            self._schedule_restart(sp)
            return
        sp.started_mono = time.monotonic()
        sp.restart_at = None
        log.info("sensor %s started (pid %s) for %d rule(s): %s", s["ref"], sp.proc.pid,
                 len(rules), ", ".join(r["ref"] for r in rules))

    def _schedule_restart(self, sp: SensorProcess) -> None:
        sp.failures += 1
        delay = restart_delay(sp.failures)
        sp.restart_at = time.monotonic() + delay
        if sp.failures >= ALERT_AFTER_FAILURES:
            log.error("sensor %s failed %d times in a row; next restart in %.0fs", sp.ref,
                      sp.failures, delay)
        else:
            log.warning("sensor %s: restart %d in %.0fs", sp.ref, sp.failures, delay)

    def _stop(self, sp: SensorProcess, grace: float = 5.0) -> None:
        sp.stopping = True
        proc = sp.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait(timeout=5)
        log.info("sensor %s (pid %s) stopped with code %s", sp.ref, proc.pid, proc.returncode)

    # ------------------------------------------------------------------ supervision
    def _watch(self) -> None:
        last_reconcile = 0.0
        while not self.stop_event.wait(0.25):
            with self.lock:
                for sp in list(self.procs.values()):
                    if sp.stopping:
                        continue
                    if sp.proc is not None and sp.proc.poll() is not None and sp.restart_at is None:
                        code = sp.proc.returncode
                        ran = time.monotonic() - sp.started_mono
                        if ran > 60:
                            sp.failures = 0
                        log.warning("sensor %s (pid %s) exited with code %s after %.1fs", sp.ref,
                                    sp.proc.pid, code, ran)
                        self._schedule_restart(sp)
                    if sp.restart_at is not None and time.monotonic() >= sp.restart_at:
                        sp.restart_at = None
                        self.procs.pop(sp.sensor_id, None)  # reconcile spawns it afresh
                        failures = sp.failures
                        self.reconcile()
                        fresh = self.procs.get(sp.sensor_id)
                        if fresh is not None:
                            fresh.failures = max(fresh.failures, failures)
            if time.monotonic() - last_reconcile >= RECONCILE_SECONDS:
                last_reconcile = time.monotonic()
                self.reconcile()

    def start(self) -> None:
        self.reconcile()
        self._thread = threading.Thread(target=self._watch, name="custom-sensors", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        with self.lock:
            for sp in list(self.procs.values()):
                self._stop(sp)
            self.procs.clear()


__all__ = ["CustomSensorManager", "restart_delay", "triggers_document", "rules_signature"]
