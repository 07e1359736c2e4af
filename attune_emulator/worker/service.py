"""The worker service: runs actions as subprocesses (shell, python, node).

Start-up: register/update the `worker` row by `worker.name` (role `action`, the runtimes whose
interpreter exists here), heartbeat every `worker.heartbeat_interval` s, consume
`worker.<id>.executions` (dispatch) and `worker.<id>.cancel`.

One execution: claim `scheduled -> running`, build the parameter document (config + ambient keys),
prepare the command (pack file or inline shell script, per-pack python/node environment), run it in
its own process group with bounded capture, shape the result, write the terminal status
(`WHERE status IN ('running','canceling')`) and publish `execution.completed`.

SIGTERM/SIGINT: mark the worker inactive, stop consuming (unacked dispatches are requeued by
RabbitMQ), wait up to `worker.shutdown_timeout` for in-flight executions, exit 0.
"""
from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg2

from .. import auth, broker, crypto
from ..db import J, Database
from .. import pack_store
from ..executor import prepared
from ..executor.definitions import DefinitionCache
from ..artifacts import execution_log_dir
from . import container, envs, params
from .output import ProcessOutcome, failure_result, shape_result
from .runner import RunControl, run_process

log = logging.getLogger("attune_emulator.worker")

RUNTIME_ALIASES = {
    "shell": "shell", "bash": "shell", "sh": "shell",
    "python": "python", "python3": "python",
    "node": "node", "nodejs": "node", "node.js": "node",
    "native": "native", "builtin": "native", "standalone": "native",
}


def runtime_key(name: str | None) -> str | None:
    if not name:
        return None
    return RUNTIME_ALIASES.get(name.strip().lower(), name.strip().lower())


def _resolve_binary(name: str) -> str | None:
    if os.path.isabs(name):
        return name if os.access(name, os.X_OK) else None
    return shutil.which(name)


def _real_python(python3: str) -> str:
    """Resolve shims (pyenv and the like) to the real interpreter once, so each action does not pay
    for the shim."""
    try:
        out = subprocess.run([python3, "-c", "import sys; print(sys.executable)"],
                             capture_output=True, text=True, timeout=30)
        path = out.stdout.strip()
        if out.returncode == 0 and path and os.access(path, os.X_OK):
            return path
    except (OSError, subprocess.SubprocessError):
        pass
    return python3


def detect_runtimes() -> dict[str, str]:
    """{runtime key: interpreter path} for the runtimes this machine can run."""
    found: dict[str, str] = {}
    if os.access("/bin/bash", os.X_OK):
        found["shell"] = "/bin/bash"
    py = _resolve_binary("python3")
    if py:
        found["python"] = _real_python(py)
    node = _resolve_binary("node")
    if node:
        found["node"] = node
    only = os.environ.get("ATTUNE_WORKER_RUNTIMES")
    if only:
        wanted = {runtime_key(x) for x in only.split(",") if x.strip()}
        found = {k: v for k, v in found.items() if k in wanted}
    return found


class PrepareError(Exception):
    """The execution cannot be started; the message becomes `result.error`."""


class WorkerService:
    def __init__(self, cfg):
        self.cfg = cfg
        self.name = cfg.get("worker.name") or socket.gethostname()
        self.max_tasks = max(int(cfg.get("worker.max_concurrent_tasks", 10)), 1)
        self.heartbeat_interval = float(cfg.get("worker.heartbeat_interval", 30))
        self.task_timeout = int(cfg.get("worker.task_timeout", 300))
        self.max_stdout = int(cfg.get("worker.max_stdout_bytes", 10 * 1024 * 1024))
        self.max_stderr = int(cfg.get("worker.max_stderr_bytes", 10 * 1024 * 1024))
        self.shutdown_timeout = float(cfg.get("worker.shutdown_timeout", 30))
        self.kill_grace = float(cfg.get("worker.kill_grace_seconds", 5))
        self.packs_base_dir = cfg.get("packs_base_dir")
        self.runtime_envs_dir = cfg.get("runtime_envs_dir")
        self.artifacts_dir = cfg.get("artifacts_dir")
        self.encryption_key = cfg.get("security.encryption_key")
        self.api_url = cfg.api_url
        self.db = Database.from_config(cfg, maxconn=self.max_tasks + 6)
        self.publisher = broker.Publisher(cfg.amqp_url)
        self.runtimes = detect_runtimes()
        # extension E12 container_runtime: `container` is advertised only when an engine works
        self.container_engine = container.probe_engine(cfg)
        if self.container_engine is not None:
            self.runtimes["container"] = self.container_engine.describe()
        self.npm = _resolve_binary("npm")
        self.worker_id: int | None = None
        self.stop_event = threading.Event()
        self.stopping = False
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.max_tasks,
                                                          thread_name_prefix="exec")
        self.controls: dict[int, RunControl] = {}
        self.controls_lock = threading.Lock()
        # per execution: holds on its pack version and runtime env, released when it ends
        self.holds: dict[int, list] = {}
        self.inflight = 0
        self.inflight_cv = threading.Condition()
        self.consumers: list[broker.Consumer] = []
        self._key_has_expiry: bool | None = None
        self.definitions = DefinitionCache(self.db)
        self._claim_sql: prepared.Statement | None = None
        # the environment every action starts from (this process never changes its own)
        self.base_env = dict(os.environ)

    # ------------------------------------------------------------------ registration, heartbeat
    def register(self) -> int:
        capabilities: dict[str, Any] = {"runtimes": sorted(self.runtimes)}
        extra = self.cfg.get("worker.capabilities")
        if isinstance(extra, dict):
            capabilities.update({k: v for k, v in extra.items() if k != "runtimes"})
        # worker placement: `worker.labels` {k: v} and `worker.taints` [{key, value, effect}]
        # (ATTUNE__WORKER__LABELS / ATTUNE__WORKER__TAINTS take JSON or YAML), read by the scheduler
        from ..executor.placement import normalize_labels, normalize_taints
        labels = normalize_labels(self.cfg.get("worker.labels"))
        taints = normalize_taints(self.cfg.get("worker.taints"))
        if labels:
            capabilities["labels"] = labels
        if taints:
            capabilities["taints"] = taints
        meta = {"interpreters": self.runtimes, "max_concurrent_tasks": self.max_tasks}
        row = self.db.one(
            """INSERT INTO worker (name, worker_type, worker_role, host, status, capabilities, meta,
                                   pid, last_heartbeat)
               VALUES (%s, %s, 'action', %s, 'inactive', %s, %s, %s, now())
               ON CONFLICT (name) DO UPDATE SET worker_type = EXCLUDED.worker_type,
                   worker_role = 'action', host = EXCLUDED.host, status = 'inactive',
                   capabilities = EXCLUDED.capabilities, meta = EXCLUDED.meta,
                   pid = EXCLUDED.pid, last_heartbeat = now()
               RETURNING id""",
            (self.name, self.cfg.get("worker.worker_type", "local"), socket.gethostname(),
             J(capabilities), J(meta), os.getpid()))
        self.worker_id = int(row["id"])
        log.info("registered worker %r as id %s (runtimes: %s, max_concurrent_tasks %s, pid %s)",
                 self.name, self.worker_id, ", ".join(sorted(self.runtimes)) or "none",
                 self.max_tasks, os.getpid())
        return self.worker_id

    def heartbeat_loop(self) -> None:
        while not self.stop_event.wait(self.heartbeat_interval):
            if self.stopping:
                return
            try:
                self.db.execute("UPDATE worker SET last_heartbeat = now(), status = 'active' "
                                "WHERE id = %s", (self.worker_id,))
            except psycopg2.Error as exc:
                log.warning("heartbeat failed: %s", exc)

    # ------------------------------------------------------------------ messages
    def on_dispatch(self, _routing_key: str, body: dict, ack) -> None:
        try:
            execution_id = int(body.get("execution_id"))
        except (TypeError, ValueError):
            log.error("dispatch message without a valid execution_id: %s", body)
            ack()
            return
        if self.stopping:
            log.info("execution %s: dispatch received while shutting down; leaving it queued",
                     execution_id)
            return
        with self.inflight_cv:
            self.inflight += 1
        self.pool.submit(self._run_guarded, execution_id, ack)

    def on_cancel(self, _routing_key: str, body: dict) -> None:
        try:
            execution_id = int(body.get("execution_id"))
        except (TypeError, ValueError):
            log.error("cancel message without a valid execution_id: %s", body)
            return
        with self.controls_lock:
            control = self.controls.get(execution_id)
        if control is not None:
            log.info("execution %s: cancel requested; terminating its process group", execution_id)
            control.cancel()
            return
        # Not running here (finished, or never claimed by this process): settle a lingering
        # `canceling` row so it does not stay transitional forever.
        row = self.db.one(
            """UPDATE execution SET status = 'cancelled', result = %s
               WHERE id = %s AND status = 'canceling' AND (worker = %s OR worker IS NULL)
               RETURNING id""",
            (J({"succeeded": False, "cancelled": True, "error": "Execution cancelled by user"}),
             execution_id, self.worker_id))
        if row:
            log.info("execution %s: cancel for an execution with no process here; marked cancelled",
                     execution_id)
            self._publish_completed(execution_id, "cancelled")
        else:
            log.info("execution %s: cancel ignored (not running on this worker)", execution_id)

    def _run_guarded(self, execution_id: int, ack) -> None:
        try:
            self.run_execution(execution_id, ack)
        except Exception:
            log.exception("execution %s: unexpected worker error", execution_id)
            try:
                self._finish(execution_id, "failed",
                             failure_result("Action execution failed: internal worker error"))
            except Exception:
                log.exception("execution %s: cannot record the failure", execution_id)
        finally:
            with self.inflight_cv:
                self.inflight -= 1
                self.inflight_cv.notify_all()

    @staticmethod
    def _safe_ack(ack) -> None:
        try:
            ack()
        except Exception:  # the consumer connection may be gone during shutdown
            log.debug("ack failed", exc_info=True)

    # ------------------------------------------------------------------ one execution
    def run_execution(self, execution_id: int, ack) -> None:
        if self.stopping:
            log.info("execution %s: not started, worker shutting down (message will be requeued)",
                     execution_id)
            return
        control = RunControl(execution_id)
        with self.controls_lock:
            self.controls[execution_id] = control
        try:
            execution = self._claim(execution_id)
            self._safe_ack(ack)
            if execution is None:
                row = self.db.one("SELECT status FROM execution WHERE id = %s", (execution_id,))
                log.info("execution %s: not claimed (status %s); skipping", execution_id,
                         row["status"] if row else "missing")
                return
            hints = {k: execution.pop(k) for k in list(execution) if k.startswith("_hint_")}
            log.debug("execution %s: claimed (%s), status running", execution_id,
                      execution["action_ref"])
            self._execute(execution, control, hints)
        finally:
            with self.controls_lock:
                self.controls.pop(execution_id, None)

    def _claim_statement(self) -> prepared.Statement:
        """`scheduled -> running` and its E6 `execution.started` row in one statement, returning
        the execution plus hints for `_prepare` (each saves a round trip; `_prepare` reads what a
        hint does not cover): the row versions of its action, pack and runtime, its rule and
        trigger refs, whether secret parameters are stored, and the ambient keys of the joined
        action and pack."""
        if self._claim_sql is None:
            expiry = " AND (k.expires_at IS NULL OR k.expires_at > now())" \
                if self._keys_expire() else ""
            secrets = ("EXISTS (SELECT 1 FROM execution_secret_value s WHERE s.entity_id = c.id"
                       " AND s.entity_type IN ('execution', 'execution_config'))") \
                if self._has_table("execution_secret_value") else "NULL"
            self._claim_sql = prepared.Statement("worker_claim", f"""
            WITH claimed AS (
                UPDATE execution SET status = 'running', started_at = now()
                WHERE id = %(id)s AND status = 'scheduled' RETURNING *),
            started AS (
                INSERT INTO audit_event (category, event_type, outcome, actor_login,
                    actor_token_type, resource_type, resource_id, resource_ref, details)
                SELECT 'execution', %(event)s, %(outcome)s, %(actor)s, 'worker', 'executions',
                       c.id::text, c.action_ref, %(details)s FROM claimed c)
            SELECT c.*, a.xmin::text AS _hint_action_version,
                   a.pack AS _hint_pack_id, p.xmin::text AS _hint_pack_version,
                   a.runtime AS _hint_runtime_id, r.xmin::text AS _hint_runtime_version,
                   en.id IS NOT NULL AS _hint_enforcement_found,
                   en.rule_ref AS _hint_rule_ref, en.trigger_ref AS _hint_trigger_ref,
                   {secrets} AS _hint_has_secrets,
                   CASE WHEN a.id IS NOT NULL THEN COALESCE((
                       SELECT jsonb_agg(jsonb_build_object('name', k.name, 'value', k.value,
                                  'encrypted', k.encrypted,
                                  'encryption_key_hash', k.encryption_key_hash, 'ref', k.ref)
                              ORDER BY CASE k.owner_type WHEN 'system' THEN 0
                                       WHEN 'pack' THEN 1 ELSE 2 END, k.id)
                       FROM key k
                       WHERE (k.owner_type = 'system'
                              OR (k.owner_type = 'pack' AND (k.owner_pack = a.pack
                                  OR k.owner_pack_ref = COALESCE(NULLIF(p.ref, ''),
                                      NULLIF(a.pack_ref, ''), split_part(c.action_ref, '.', 1))))
                              OR (k.owner_type = 'action' AND (k.owner_action = a.id
                                  OR k.owner_action_ref = a.ref))){expiry}),
                       '[]'::jsonb) END AS _hint_keys
            FROM claimed c
            LEFT JOIN action a ON a.id = c.action
            LEFT JOIN pack p ON p.id = a.pack
            LEFT JOIN runtime r ON r.id = a.runtime
            LEFT JOIN enforcement en ON en.id = c.enforcement""", self.AUDIT_TYPES)
        return self._claim_sql

    def _claim(self, execution_id: int) -> dict | None:
        """The claimed execution row (with `_hint_*` keys), or None when it is not `scheduled`."""
        audit = self._audit_args("execution.started", "running", "scheduled")
        try:
            return prepared.run(self.db, self._claim_statement(), {"id": execution_id, **audit})
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            raise
        except (psycopg2.Error, prepared.Stale) as exc:  # nothing was written: claim plainly
            log.warning("execution %s: combined claim failed (%s); claiming without hints",
                        execution_id, str(exc).strip())
        execution = self.db.one(
            """UPDATE execution SET status = 'running', started_at = now()
               WHERE id = %s AND status = 'scheduled' RETURNING *""", (execution_id,))
        if execution is not None:
            self._audit(execution, "execution.started", "running", "scheduled")
        return execution

    def _execute(self, execution: dict, control: RunControl, hints: dict | None = None) -> None:
        execution_id = int(execution["id"])
        temp_paths: list[Path] = []
        plan: dict = {}
        try:
            try:
                plan = self._prepare(execution, temp_paths, hints or {})
            except PrepareError as exc:
                log.error("execution %s: %s", execution_id, exc)
                self._finish(execution_id, "failed", failure_result(str(exc)), execution)
                return
            if control.cancel_requested.is_set():
                log.info("execution %s: cancelled before its process started", execution_id)
                self._finish(execution_id, "cancelled",
                             {"succeeded": False, "cancelled": True, "exit_code": -1,
                              "duration_ms": 0, "error": "Execution cancelled by user"}, execution)
                return
            exec_dir = execution_log_dir(self.artifacts_dir, execution_id, execution["started_at"])
            exec_dir.mkdir(parents=True, exist_ok=True)
            stdout_log, stderr_log = exec_dir / "stdout.log", exec_dir / "stderr.log"
            log.info("execution %s: claimed (%s), running %s (runtime %s, delivery %s/%s, "
                     "timeout %ss)", execution_id, execution["action_ref"], plan["describe"],
                     plan["runtime"], plan["delivery"], plan["format"], plan["timeout"])
            try:
                outcome = run_process(plan["argv"], cwd=plan["cwd"], env=plan["env"],
                                      stdin_data=plan["stdin"], timeout_seconds=plan["timeout"],
                                      max_stdout=self.max_stdout, max_stderr=self.max_stderr,
                                      stdout_log=stdout_log, stderr_log=stderr_log,
                                      kill_grace=self.kill_grace, control=control,
                                      **plan.get("spawn", {}))
            except OSError as exc:
                log.error("execution %s: cannot start the process: %s", execution_id, exc)
                self._finish(execution_id, "failed",
                             failure_result(f"Action execution failed: {exc}"), execution)
                return
            status, result = self._result_for(outcome, plan["output_format"], stderr_log)
            if plan.get("finalize"):  # E12: result.container, then nothing left behind
                result = plan["finalize"](status, result)
                plan["cleanup"]()
            log.info("execution %s: process %s exited with code %s after %s ms -> %s%s",
                     execution_id, outcome.pid, outcome.exit_code, outcome.duration_ms, status,
                     " (timed out)" if outcome.timed_out else
                     " (cancelled)" if outcome.cancelled else "")
            self._finish(execution_id, status, result, execution, announced=True)
        finally:
            if plan.get("cleanup"):  # E12: staging dir, container / sandbox process
                try:
                    plan["cleanup"]()
                except Exception:
                    log.exception("execution %s: container cleanup failed", execution_id)
            for path in temp_paths:
                try:
                    path.unlink()
                except OSError:
                    pass
            for hold in reversed(self.holds.pop(execution_id, [])):
                try:
                    hold.release()
                except Exception:
                    log.exception("execution %s: releasing %s failed", execution_id, hold)

    def _result_for(self, outcome: ProcessOutcome, output_format: str,
                    stderr_log: Path) -> tuple[str, dict]:
        if outcome.extra.get("aborted"):
            status, result = shape_result(outcome, output_format, str(stderr_log))
            result.pop("data", None)
            result.update({"succeeded": False, "error": outcome.extra["aborted"]})
            return "failed", result
        return shape_result(outcome, output_format, str(stderr_log))

    # ------------------------------------------------------------------ preparation
    def _definitions(self, execution: dict, hints: dict) -> tuple[dict, dict | None, dict | None,
                                                                  bool]:
        """(action, pack, runtime, joined): `joined` when action and pack are the versions the
        claim statement joined, so its key hint describes them."""
        action_version = hints.get("_hint_action_version")
        action, version = self.definitions.get("action", execution.get("action"), action_version)
        if action is None:
            action, version = self._load_action(execution), None
        joined = action_version is not None and version == action_version

        def hinted(table: str, row_id):
            same = row_id is not None and row_id == hints.get(f"_hint_{table}_id")
            return self.definitions.get(table, row_id,
                                        hints.get(f"_hint_{table}_version") if same else None)

        pack, pack_version = hinted("pack", action.get("pack"))
        runtime, _ = hinted("runtime", action.get("runtime"))
        joined = joined and pack_version == hints.get("_hint_pack_version")
        return action, pack, runtime, joined

    def _prepare(self, execution: dict, temp_paths: list[Path], hints: dict | None = None) -> dict:
        execution_id = int(execution["id"])
        hints = hints or {}
        action, pack, runtime, joined = self._definitions(execution, hints)
        pack_ref = (pack or {}).get("ref") or action.get("pack_ref") or \
            execution["action_ref"].split(".", 1)[0]
        pack_dir = Path((pack or {}).get("storage_path") or
                        os.path.join(self.packs_base_dir, pack_ref))
        # the pack version current now, held until the process ends (pack_store.py): a forced
        # re-upload while it runs does not change the files it reads
        pin = pack_store.pin(pack_dir, Path(self.packs_base_dir) if self.packs_base_dir else None)
        self.holds.setdefault(execution_id, []).append(pin)
        pack_dir = pin.directory
        rt_key = self._runtime_key_for(action, runtime)
        exec_config = (runtime or {}).get("execution_config") or {}
        if rt_key == "native" or (runtime is not None and not exec_config.get("interpreter")
                                  and rt_key not in self.runtimes):
            name = (runtime or {}).get("name") or rt_key
            raise PrepareError(f"Action execution failed: Runtime '{str(name).lower()}' not found")
        if rt_key not in self.runtimes:
            interp = exec_config.get("interpreter") or rt_key
            raise PrepareError(f"Action execution failed: Interpreter '{interp}' is not available")

        try:
            config = execution.get("config")
            if hints.get("_hint_has_secrets") is not False:
                config = self._restore_secrets(execution_id, config)
            keys = hints.get("_hint_keys") if joined else None
            document = params.merge_document(config, self._ambient_keys(action, pack_ref, keys))
        except PrepareError:
            raise
        except Exception as exc:
            raise PrepareError(f"Failed to prepare execution context: {exc}") from exc

        timeout = self._timeout_for(execution, action)
        delivery = (action.get("parameter_delivery") or "stdin").lower()
        fmt = (action.get("parameter_format") or "json").lower()
        output_format = (action.get("output_format") or "text").lower()

        env = dict(self.base_env)
        env.update({
            "ATTUNE_EXEC_ID": str(execution_id),
            "ATTUNE_ACTION": execution["action_ref"],
            "ATTUNE_API_URL": self.api_url,
            "ATTUNE_PACK_REF": execution["action_ref"].split(".", 1)[0],
            "ATTUNE_ARTIFACTS_DIR": str(self.artifacts_dir),
            "ATTUNE_RUNTIME_ENVS_DIR": str(self.runtime_envs_dir),
        })
        env.pop("ATTUNE_API_TOKEN", None)
        env.pop("ATTUNE_PARAMETER_FILE", None)
        if execution.get("enforcement") is not None:
            if "_hint_enforcement_found" in hints:
                enf = {"rule_ref": hints["_hint_rule_ref"],
                       "trigger_ref": hints["_hint_trigger_ref"]} \
                    if hints["_hint_enforcement_found"] else None
            else:
                enf = self.db.one("SELECT rule_ref, trigger_ref FROM enforcement WHERE id = %s",
                                  (execution["enforcement"],))
            if enf:
                env["ATTUNE_RULE"] = enf["rule_ref"] or ""
                env["ATTUNE_TRIGGER"] = enf["trigger_ref"] or ""
        config = execution.get("config")
        if isinstance(config, dict) and isinstance(config.get("context"), dict):
            for key, value in config["context"].items():
                env[f"ATTUNE_CONTEXT_{str(key).upper()}"] = params._shell_value(value)
        token = self._execution_token(execution, action, pack_ref, timeout)
        if token:
            env["ATTUNE_API_TOKEN"] = token

        if rt_key == "container":  # extension E12 container_runtime (worker/container.py)
            try:
                return container.plan_execution(
                    self.container_engine, cfg=self.cfg, execution_id=execution_id, action=action,
                    pack_dir=pack_dir, document=document, env=env, delivery=delivery, fmt=fmt,
                    timeout=timeout, output_format=output_format)
            except container.ContainerError as exc:
                raise PrepareError(str(exc)) from exc
        cwd = str(pack_dir) if pack_dir.is_dir() else None
        entry = action.get("entrypoint") or ""
        inline = params.is_inline_shell(action, rt_key)
        stdin_data: bytes | None = None
        if inline:
            script_dir = Path(tempfile.gettempdir()) / "attune" / "inline_actions"
            script = script_dir / f"exec_{execution_id}.sh"
            text = params.build_inline_script(entry, document)
            try:
                script.write_text(text)
            except FileNotFoundError:  # first run, or the folder was cleaned away
                script_dir.mkdir(parents=True, exist_ok=True)
                script.write_text(text)
            script.chmod(0o700)
            temp_paths.append(script)
            argv = [self.runtimes["shell"], str(script)]
            describe = f"inline shell script {script}"
            env["ATTUNE_PARAMETER_DELIVERY"] = delivery
            env["ATTUNE_PARAMETER_FORMAT"] = fmt
        else:
            if not entry:
                raise PrepareError(
                    f"Action execution failed: Invalid action: No executable content found for "
                    f"action '{execution['action_ref']}'. Expected file at: {pack_dir / 'actions'}")
            script = pack_dir / "actions" / entry
            if not script.is_file():
                raise PrepareError(
                    f"Action execution failed: Invalid action: No executable content found for "
                    f"action '{execution['action_ref']}'. Expected file at: {script}")
            interpreter = self.runtimes[rt_key]
            # upstream: {runtime_envs_dir}/{pack_ref}/{runtime.name lower-cased}
            env_name = str((runtime or {}).get("name") or "").strip().lower() or \
                {"python": "python", "node": "node.js"}.get(rt_key, rt_key)
            if rt_key == "python":
                lib_dir = exec_config.get("lib_dir") or "lib"
                env["PYTHONPATH"] = os.pathsep.join(
                    [str(pack_dir / lib_dir)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
                env_dir = Path(self.runtime_envs_dir) / pack_ref / env_name
                try:
                    venv_python, hold = envs.hold_env(
                        lambda: envs.ensure_python_env(self.runtime_envs_dir, pack_ref, pack_dir,
                                                       interpreter, env_name),
                        env_dir, pack_dir / "requirements.txt",
                        lambda: (env_dir / "bin" / "python").exists())
                    self.holds[execution_id].append(hold)
                except envs.EnvError as exc:
                    raise PrepareError(f"Failed to prepare execution context: {exc}") from exc
                if venv_python is not None:
                    interpreter = str(venv_python)
                    env["VIRTUAL_ENV"] = str(venv_python.parent.parent)
                    env["PATH"] = str(venv_python.parent) + os.pathsep + env.get("PATH", "")
            elif rt_key == "node":
                if self.npm is None and (pack_dir / "package.json").is_file():
                    raise PrepareError("Failed to prepare execution context: npm is not available")
                env_dir = Path(self.runtime_envs_dir) / pack_ref / env_name
                try:
                    modules, hold = envs.hold_env(
                        lambda: envs.ensure_node_env(self.runtime_envs_dir, pack_ref, pack_dir,
                                                     self.npm or "npm", env_name),
                        env_dir, pack_dir / "package.json",
                        lambda: (env_dir / "node_modules").is_dir())
                    self.holds[execution_id].append(hold)
                except envs.EnvError as exc:
                    raise PrepareError(f"Failed to prepare execution context: {exc}") from exc
                if modules is not None:
                    env["NODE_PATH"] = str(modules)
            args = exec_config.get("interpreter_args") or []
            if not isinstance(args, list):
                args = [str(args)]
            argv = [interpreter, *[str(a) for a in args], str(script)]
            describe = str(script)
            env["ATTUNE_PARAMETER_DELIVERY"] = delivery
            env["ATTUNE_PARAMETER_FORMAT"] = fmt
            if delivery == "file":
                fd, path = tempfile.mkstemp(prefix=f"attune-params-{execution_id}-")
                with os.fdopen(fd, "w") as fh:
                    fh.write(params.render(document, fmt))
                os.chmod(path, 0o400)
                temp_paths.append(Path(path))
                env["ATTUNE_PARAMETER_FILE"] = path
            else:
                stdin_data = params.stdin_payload(document, fmt)
        if cwd is None:
            cwd = str(Path(self.artifacts_dir) / "executions" / str(execution_id))
            Path(cwd).mkdir(parents=True, exist_ok=True)
        return {"argv": argv, "cwd": cwd, "env": env, "stdin": stdin_data, "timeout": timeout,
                "runtime": rt_key, "delivery": "none" if inline else delivery, "format": fmt,
                "output_format": output_format, "describe": describe}

    def _load_action(self, execution: dict) -> dict:
        action = None
        if execution.get("action") is not None:
            action = self.db.one("SELECT * FROM action WHERE id = %s", (execution["action"],))
        if action is None:
            action = self.db.one("SELECT * FROM action WHERE ref = %s", (execution["action_ref"],))
        if action is None:
            raise PrepareError(f"Failed to prepare execution context: Action not found: "
                               f"'{execution['action_ref']}'")
        return action

    def _runtime_key_for(self, action: dict, runtime: dict | None) -> str:
        if runtime is not None:
            key = runtime_key(runtime.get("name"))
            if key in ("shell", "python", "node", "native"):
                return key
            for alias in runtime.get("aliases") or []:
                key = runtime_key(str(alias))
                if key in ("shell", "python", "node", "native"):
                    return key
            return runtime_key(runtime.get("name")) or "shell"
        entry = (action.get("entrypoint") or "").lower()
        if entry.endswith(".py"):
            return "python"
        if entry.endswith((".js", ".mjs", ".cjs")):
            return "node"
        return "shell"

    def _timeout_for(self, execution: dict, action: dict) -> int:
        task = execution.get("workflow_task")
        if isinstance(task, dict):
            value = task.get("timeout_seconds")
            if value is None:
                value = task.get("timeout")
            if isinstance(value, (int, float)) and value > 0:
                return int(value)
        if action.get("timeout_seconds"):
            return int(action["timeout_seconds"])
        return self.task_timeout

    def _ambient_keys(self, action: dict, pack_ref: str,
                      rows: list[dict] | None = None) -> list[tuple[str, Any]]:
        """`rows`: the key rows when already read (the claim's hint), else they are read here."""
        if rows is not None:
            return self._decrypt_keys(action, rows)
        expiry = " AND (expires_at IS NULL OR expires_at > now())" if self._keys_expire() else ""
        rows = self.db.all(
            f"""SELECT name, value, encrypted, encryption_key_hash, owner_type, ref FROM key
                WHERE (owner_type = 'system'
                       OR (owner_type = 'pack' AND (owner_pack = %s OR owner_pack_ref = %s))
                       OR (owner_type = 'action' AND (owner_action = %s OR owner_action_ref = %s)))
                {expiry}
                ORDER BY CASE owner_type WHEN 'system' THEN 0 WHEN 'pack' THEN 1 ELSE 2 END, id""",
            (action.get("pack"), pack_ref, action["id"], action["ref"]))
        return self._decrypt_keys(action, rows)

    def _decrypt_keys(self, action: dict, rows: list[dict]) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        for row in rows:
            value = row["value"]
            if row["encrypted"]:
                if not self.encryption_key:
                    log.warning("key %s is encrypted but security.encryption_key is not set; "
                                "not injected", row["ref"])
                    continue
                try:
                    value = crypto.decrypt_value(self.encryption_key, value,
                                                 row.get("encryption_key_hash"))
                except crypto.DecryptionError as exc:
                    log.warning("key %s cannot be decrypted (%s); not injected", row["ref"], exc)
                    continue
            out.append((row["name"], value))
        if out:
            log.info("action %s: %d ambient key(s) merged into the parameters", action["ref"],
                     len(out))
        return out

    def _restore_secrets(self, execution_id: int, config: Any) -> Any:
        """Put the plaintext of redacted secret parameters back (upstream's
        `execution_secret_value` rows: encrypted values addressed by a JSON path)."""
        if not isinstance(config, dict) or not self._has_table("execution_secret_value"):
            return config
        rows = self.db.all(
            """SELECT json_path, encrypted_value, encryption_key_hash FROM execution_secret_value
               WHERE entity_id = %s AND entity_type IN ('execution', 'execution_config')
               ORDER BY id""", (execution_id,))
        if not rows:
            return config
        restored = json.loads(json.dumps(config))
        for row in rows:
            path = params.split_json_path(row["json_path"])
            if not path or not self.encryption_key:
                continue
            try:
                value = crypto.decrypt_value(self.encryption_key, row["encrypted_value"],
                                             row.get("encryption_key_hash"))
            except crypto.DecryptionError as exc:
                raise PrepareError(f"Failed to prepare execution context: cannot decrypt secret "
                                   f"parameter '{row['json_path']}': {exc}") from exc
            params.set_path(restored, path, value)
        log.info("execution %s: restored %d secret parameter(s)", execution_id, len(rows))
        return restored

    def _has_table(self, name: str) -> bool:
        cache = self.__dict__.setdefault("_tables", {})
        if name not in cache:
            cache[name] = bool(self.db.one(
                "SELECT 1 AS ok FROM information_schema.tables WHERE table_schema = %s "
                "AND table_name = %s", (self.cfg.get("database.schema", "attune"), name)))
        return cache[name]

    def _keys_expire(self) -> bool:
        if self._key_has_expiry is None:
            row = self.db.one(
                """SELECT 1 AS ok FROM information_schema.columns
                   WHERE table_schema = %s AND table_name = 'key' AND column_name = 'expires_at'""",
                (self.cfg.get("database.schema", "attune"),))
            self._key_has_expiry = bool(row)
        return self._key_has_expiry

    def _execution_token(self, execution: dict, action: dict, pack_ref: str,
                         timeout: int) -> str | None:
        refs = execution.get("permission_set_refs") or []
        if not isinstance(refs, list) or not refs:
            return None
        action_refs: list[str] = []
        pack_refs: list[str] = []
        if "standard" in refs:
            action_refs.append(action["ref"])
            pack_refs.append(pack_ref)
            if execution.get("parent") is not None:
                parent = self.db.one(
                    """SELECT e.action_ref, a.pack_ref FROM execution e
                       LEFT JOIN action a ON a.id = e.action WHERE e.id = %s""",
                    (execution["parent"],))
                if parent:
                    if parent["action_ref"] and parent["action_ref"] not in action_refs:
                        action_refs.append(parent["action_ref"])
                    parent_pack = parent["pack_ref"] or (parent["action_ref"] or "").split(".")[0]
                    if parent_pack and parent_pack not in pack_refs:
                        pack_refs.append(parent_pack)
        metadata = {"execution_id": int(execution["id"]), "action_ref": execution["action_ref"],
                    "permission_set_refs": refs,
                    "standard_access_action_refs": action_refs,
                    "standard_access_pack_refs": pack_refs}
        log.info("execution %s: minting an execution token for permission sets %s",
                 execution["id"], refs)
        return auth.encode_token(self.cfg.jwt_secret, sub=execution.get("executor") or 1,
                                 login=f"execution:{execution['id']}", token_type="execution",
                                 ttl_seconds=timeout + 60, scope="execution", metadata=metadata)

    # ------------------------------------------------------------------ completion
    RESULT_RETRY_SECONDS = 300.0  # how long a finished execution's result waits for the database

    def _one_retrying(self, sql, args, what: str):
        """`db.one` (or `prepared.run` for a prepared statement), retried while the database is
        unreachable (an outage or a restart), so a result that finishes during the outage is
        recorded once it is back instead of lost."""
        deadline = time.monotonic() + self.RESULT_RETRY_SECONDS
        delay = 0.2
        while True:
            try:
                if isinstance(sql, prepared.Statement):
                    return prepared.run(self.db, sql, args)
                return self.db.one(sql, args)
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                if getattr(exc, "pgcode", None) or time.monotonic() >= deadline:
                    raise
                log.warning("%s: database unavailable (%s); retrying in %.1fs", what,
                            str(exc).strip().splitlines()[0] if str(exc).strip() else exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    AUDIT_TYPES = {"id": "bigint", "event": "text", "outcome": "text", "actor": "text",
                   "details": "jsonb"}
    FINISH_SQL = """UPDATE execution SET status = %(status)s, result = %(result)s
                    WHERE id = %(id)s AND status IN ('running', 'canceling')
                    RETURNING id, status, action_ref"""
    # the same plus the E6 lifecycle row, committed together (one round trip)
    FINISH_AUDITED = prepared.Statement("worker_finish", f"""
        WITH finished AS ({FINISH_SQL}),
        audited AS (
            INSERT INTO audit_event (category, event_type, outcome, actor_login, actor_token_type,
                                     resource_type, resource_id, resource_ref, details)
            SELECT 'execution', %(event)s, %(outcome)s, %(actor)s, 'worker', 'executions',
                   f.id::text, f.action_ref, %(details)s FROM finished f)
        SELECT * FROM finished""", {**AUDIT_TYPES, "status": "execution_status_enum",
                                    "result": "jsonb"})

    def _finish(self, execution_id: int, status: str, result: dict,
                execution: dict | None = None, announced: bool = False) -> None:
        """Record the terminal status; `announced`: the caller already logged it."""
        audit = None
        if execution is not None:
            event = {"completed": "execution.completed", "failed": "execution.failed",
                     "cancelled": "execution.cancelled"}.get(status, "execution.completed")
            if status == "failed" and str(result.get("error", "")).startswith("Execution timed out"):
                event = "execution.timed_out"
            audit = self._audit_args(event, status, "running")
        row = self._record_result(execution_id, status, result, audit)
        if row is None:
            current = self.db.one("SELECT status FROM execution WHERE id = %s", (execution_id,))
            log.warning("execution %s: result not recorded, status is already %s", execution_id,
                        current["status"] if current else "missing")
            return
        if not announced:
            log.info("execution %s: status %s", execution_id, status)
        self._publish_completed(execution_id, status)

    def _record_result(self, execution_id: int, status: str, result: dict,
                       audit: dict | None) -> dict | None:
        args = {"id": execution_id, "status": status, "result": J(result)}
        what = f"execution {execution_id}: recording {status}"
        if audit is None:
            return self._one_retrying(self.FINISH_SQL, args, what)
        try:
            return self._one_retrying(self.FINISH_AUDITED, {**args, **audit}, what)
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            raise
        except (psycopg2.Error, prepared.Stale) as exc:  # auditing never fails the run
            log.warning("execution %s: result with audit entry %s failed (%s); recording the "
                        "result alone", execution_id, audit["event"], str(exc).strip())
        return self._one_retrying(self.FINISH_SQL, args, what)

    def _publish_completed(self, execution_id: int, status: str) -> None:
        try:
            self.publisher.publish(broker.EXECUTIONS, "execution.completed",
                                   {"execution_id": execution_id, "status": status})
        except Exception as exc:
            log.error("execution %s: cannot publish execution.completed: %s", execution_id, exc)

    def _audit_args(self, event_type: str, status: str, old_status: str) -> dict:
        """Parameters of an execution lifecycle audit row (extension E6) written by the worker."""
        outcome = "failure" if event_type in ("execution.failed", "execution.timed_out") else "success"
        return {"event": event_type, "outcome": outcome, "actor": f"worker:{self.name}",
                "details": J({"worker_id": self.worker_id, "status": status,
                              "old_status": old_status})}

    def _audit(self, execution: dict, event_type: str, status: str, old_status: str) -> None:
        """Audit trail entries for execution lifecycle (extension E6); never fails the run."""
        args = self._audit_args(event_type, status, old_status)
        try:
            self.db.execute(
                """INSERT INTO audit_event (category, event_type, outcome, actor_login,
                       actor_token_type, resource_type, resource_id, resource_ref, details)
                   VALUES ('execution', %(event)s, %(outcome)s, %(actor)s, 'worker', 'executions',
                           %(id)s, %(ref)s, %(details)s)""",
                {**args, "id": str(execution["id"]), "ref": execution["action_ref"]})
        except psycopg2.Error as exc:
            log.warning("execution %s: audit entry %s not written: %s", execution["id"],
                        event_type, exc)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        max_age_days = float(self.cfg.get("worker.env_store_max_age_days", 14))
        pruned = envs.prune_store(self.runtime_envs_dir, max_age_days * 86400)
        if pruned:
            log.info("removed %d environment(s) unused for %g days: %s", len(pruned),
                     max_age_days, ", ".join(pruned))
        self.sweep_deleted_pack_envs()
        url = self.cfg.amqp_url
        wid = self.worker_id
        self.consumers = [
            broker.Consumer(url, f"worker.{wid}.executions",
                            [(broker.EXECUTIONS, f"execution.dispatch.worker.{wid}")],
                            self.on_dispatch, prefetch=self.max_tasks + 2, manual_ack=True,
                            name=f"worker-{wid}-executions"),
            broker.Consumer(url, f"worker.{wid}.cancel",
                            [(broker.EXECUTIONS, f"execution.cancel.worker.{wid}")],
                            self.on_cancel, prefetch=10, name=f"worker-{wid}-cancel"),
            # exclusive: gone with this worker's connection, so a worker that never comes back
            # leaves no queue filling up with pack events; packs deleted while it was down are
            # swept at start (sweep_deleted_pack_envs)
            broker.Consumer(url, f"worker.{wid}.pack-events", [(broker.EVENTS, "pack.deleted")],
                            self.on_pack_deleted, prefetch=1, durable=False, exclusive=True,
                            name=f"worker-{wid}-pack-events"),
        ]
        # Registered `inactive` until its dispatch queue exists (the scheduler must not pick it
        # before: a message published to the topic exchange would be dropped), and `active`
        # before it consumes: work already queued for a restarted worker starts at once, and
        # the monitor abandons running work of an `inactive` worker.
        declared = self._declare_durable_queues()
        if declared:
            self._activate()
        for consumer in self.consumers:
            consumer.start()
        for consumer in self.consumers:
            if not consumer.ready.wait(timeout=30):
                log.warning("consumer %s not ready after 30s", consumer.queue)
        if not declared:
            self._activate()
        log.info("worker %r (id %s) consuming worker.%s.executions and worker.%s.cancel",
                 self.name, wid, wid, wid)

    def _declare_durable_queues(self, timeout: float = 30) -> bool:
        """Declare the worker's durable queues ahead of consuming; False when the broker did not
        answer within `timeout` (the consumers then declare them when it does)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                for consumer in self.consumers:
                    if not consumer.exclusive:
                        consumer.declare()
                return True
            except broker.CONNECTION_ERRORS as exc:
                if time.monotonic() >= deadline or self.stop_event.is_set():
                    log.warning("could not declare the worker's queues ahead (%s)", exc)
                    return False
                time.sleep(0.3)

    def _activate(self) -> None:
        self.db.execute("UPDATE worker SET status = 'active', last_heartbeat = now() WHERE id = %s",
                        (self.worker_id,))
        threading.Thread(target=self.heartbeat_loop, name="heartbeat", daemon=True).start()

    def sweep_deleted_pack_envs(self) -> None:
        """Drop the environments of packs that no longer exist (deleted while this worker was
        down, so it never saw their `pack.deleted`)."""
        root = Path(self.runtime_envs_dir)
        if not root.is_dir():
            return
        known = {row["ref"] for row in self.db.all("SELECT ref FROM pack")}
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if folder.name not in known:
                removed = envs.remove_pack_envs(self.runtime_envs_dir, folder.name)
                log.info("pack %s no longer exists: removed its environments %s", folder.name,
                         ", ".join(removed) or folder)

    def on_pack_deleted(self, _routing_key: str, message: dict) -> None:
        """`pack.deleted`: drop the pack's virtualenv / node_modules (they would never be used
        again; a later pack with the same ref builds fresh ones)."""
        ref = str(message.get("pack_ref") or "")
        if not ref or "/" in ref or ref.startswith("."):
            return
        removed = envs.remove_pack_envs(self.runtime_envs_dir, ref)
        if removed:
            log.info("pack %s deleted: removed its environments %s", ref, ", ".join(removed))

    def _drain_marker_loop(self, done: threading.Event) -> None:
        """While draining, keep `meta.draining {since, at, inflight}` fresh on the (inactive) worker
        row, so the executor's timeout monitor tells a worker finishing its in-flight work from a
        dead one (whose marker goes stale like a heartbeat). `last_heartbeat` is not touched."""
        since = None
        while True:
            with self.inflight_cv:
                inflight = self.inflight
            try:
                row = self.db.one(
                    "UPDATE worker SET meta = COALESCE(meta, '{}'::jsonb) || jsonb_build_object("
                    "'draining', jsonb_build_object('since', COALESCE(%s, attune.ts(now())),"
                    " 'at', attune.ts(now()), 'inflight', %s)) WHERE id = %s"
                    " RETURNING meta->'draining'->>'since' AS since", (since, inflight,
                                                                        self.worker_id))
                since = (row or {}).get("since") or since
            except psycopg2.Error as exc:
                log.warning("drain marker update failed: %s", exc)
            if done.wait(min(self.heartbeat_interval, 1.0)):
                return

    def shutdown(self) -> None:
        log.info("shutting down: marking worker %s inactive and stopping consumers", self.worker_id)
        self.stopping = True
        with self.inflight_cv:
            inflight = self.inflight
        try:
            # Inactive and draining in one statement: a monitor pass between two separate writes
            # would see an inactive worker without a drain marker and abandon its in-flight work.
            self.db.execute(
                "UPDATE worker SET status = 'inactive', meta = COALESCE(meta, '{}'::jsonb)"
                " || jsonb_build_object('draining', jsonb_build_object('since', attune.ts(now()),"
                " 'at', attune.ts(now()), 'inflight', %s)) WHERE id = %s",
                (inflight, self.worker_id))
        except psycopg2.Error as exc:
            log.warning("cannot mark the worker inactive: %s", exc)
        for consumer in self.consumers:
            consumer.stop()
        drained = threading.Event()
        threading.Thread(target=self._drain_marker_loop, args=(drained,), name="drain-marker",
                         daemon=True).start()
        deadline = time.monotonic() + self.shutdown_timeout
        with self.inflight_cv:
            while self.inflight > 0 and time.monotonic() < deadline:
                log.info("waiting for %d in-flight execution(s) (up to %.0fs)", self.inflight,
                         deadline - time.monotonic())
                self.inflight_cv.wait(timeout=min(5.0, max(deadline - time.monotonic(), 0.01)))
        with self.controls_lock:
            leftovers = list(self.controls.values())
        for control in leftovers:
            log.warning("execution %s: still running after %.0fs shutdown timeout; terminating it",
                        control.execution_id, self.shutdown_timeout)
            control.abort(f"Execution aborted: worker '{self.name}' shut down while it was running")
        if leftovers:
            with self.inflight_cv:
                end = time.monotonic() + self.kill_grace + 5
                while self.inflight > 0 and time.monotonic() < end:
                    self.inflight_cv.wait(timeout=0.5)
        drained.set()
        self.pool.shutdown(wait=False, cancel_futures=True)
        for consumer in self.consumers:
            consumer.join(timeout=5)
        self.publisher.close()
        self.db.close()
        log.info("worker %r stopped", self.name)


def _wait_for_database(db: Database, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if db.ping():
            return
        if time.monotonic() > deadline:
            raise RuntimeError("database not reachable")
        time.sleep(0.5)


def main(cfg) -> int:
    if not cfg.has_section("message_queue") or not cfg.amqp_url:
        log.error("the worker requires a message_queue section with a url "
                  "(message_queue.url / ATTUNE__MESSAGE_QUEUE__URL); refusing to start")
        return 1
    service = WorkerService(cfg)
    if not service.runtimes:
        log.error("no runtime interpreter found on this machine (bash, python3, node)")
        return 1

    def _on_signal(signum, _frame):
        log.info("received %s", signal.Signals(signum).name)
        service.stop_event.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        _wait_for_database(service.db)
        broker.wait_for_broker(cfg.amqp_url, timeout=60)
    except RuntimeError as exc:
        log.error("cannot start: %s", exc)
        return 1
    service.register()
    service.start()
    while not service.stop_event.wait(1.0):
        pass
    service.shutdown()
    return 0
