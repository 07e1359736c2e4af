"""File-backed service manager for the embedded stack (or any stack started the same way).

Every service runs as its own OS process in its own session (`start_new_session=True`), with
stdout and stderr appended to `<log_dir>/<name>.log`. The manager keeps its state in files, so any
process (the pytest controller, an xdist worker, a shell) can signal, stop or restart a service:

  <state_dir>/run/<name>.pid    line 1: pid; line 2: the process's start time (clock ticks since
                                boot, guards against pid reuse); line 3: tag; line 4: command
  <state_dir>/run/<name>.json   how to (re)start it: attune service, extra environment
  <state_dir>/run/<name>.exit   "<pid> <exit code>", written by the process that reaped it

Commands: the default is `{python} -m attune_emulator <service> --config {config}`; the
environment variable `ATTUNE_E2E_CMD_<NAME>` (name upper-cased, `-` -> `_`) replaces it with a
shell-style template using the same `{config}` and `{python}` placeholders, so upstream binaries
can be started the same way (e.g. `ATTUNE_E2E_CMD_API='/opt/attune/bin/attune-api'`).

Stopping a service sends SIGTERM to its process group, waits `grace` seconds, SIGKILLs it, and then
kills every process left over from it: its session, its descendants (actions run by the worker live
in their own sessions) and any process carrying its tag in the environment
(`ATTUNE_E2E_SERVICE_TAG`). No orphan survives `stop()`.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import shlex
import signal as _signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Iterable

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICE_ORDER = ("api", "executor", "worker", "sensor", "notifier")
DEFAULT_COMMAND = "{python} -m attune_emulator {service} --config {config}"
TAG_ENV = "ATTUNE_E2E_SERVICE_TAG"
EXIT_UNKNOWN = -256  # the process is gone but nobody recorded its exit status

_TS_RE = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?)Z")
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class ServiceError(RuntimeError):
    """A service could not be started, stopped or found healthy; the message says which and why."""


# ------------------------------------------------------------------------------ /proc helpers


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: [state, ppid, pgrp, session, ...]."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode(errors="replace")
    except OSError:
        return None
    return data.rsplit(")", 1)[1].split()


def _starttime(pid: int) -> str | None:
    st = _proc_stat(pid)
    return st[19] if st and len(st) > 19 else None


def _is_zombie(pid: int) -> bool:
    st = _proc_stat(pid)
    return st is None or st[0] in ("Z", "X")


def _zombie_exit_code(pid: int) -> int | None:
    """The wait status of a zombie (field 52 of /proc/<pid>/stat, Linux >= 3.5) as a Popen-style
    return code (negative signal number when killed by a signal)."""
    st = _proc_stat(pid)
    if not st or st[0] != "Z" or len(st) < 50:
        return None
    try:
        status = int(st[-1])
    except ValueError:
        return None
    return _decode_wait_status(status)


def _decode_wait_status(status: int) -> int:
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return EXIT_UNKNOWN


def _all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _descendants(root: int, table: dict[int, int] | None = None) -> list[int]:
    """Every live descendant of `root` (by parent pid)."""
    if table is None:
        table = {}
        for pid in _all_pids():
            st = _proc_stat(pid)
            if st:
                table[pid] = int(st[1])
    children: dict[int, list[int]] = {}
    for pid, ppid in table.items():
        children.setdefault(ppid, []).append(pid)
    out, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in out:
                out.append(child)
                stack.append(child)
    return out


def _session_members(sid: int) -> list[int]:
    out = []
    for pid in _all_pids():
        st = _proc_stat(pid)
        if st and len(st) > 3 and st[3] == str(sid) and st[0] not in ("Z", "X"):
            out.append(pid)
    return out


def _tagged(tag: str) -> list[int]:
    needle = f"{TAG_ENV}={tag}".encode()
    out = []
    for pid in _all_pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    out.append(pid)
        except OSError:
            continue
    return out


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _parse_ts(text: str) -> _dt.datetime:
    return _dt.datetime.fromisoformat(text).replace(tzinfo=_dt.timezone.utc)


def _as_utc(value: _dt.datetime) -> _dt.datetime:
    """Aware datetimes are converted; naive ones are taken as local time (as datetime.now())."""
    return value.astimezone(_dt.timezone.utc)


def slice_log_text(text: str, since: _dt.datetime | None, until: _dt.datetime | None = None) -> str:
    """Lines whose leading `YYYY-MM-DDTHH:MM:SS.mmmZ` timestamp lies in [since, until]; a line
    without a timestamp belongs to the line before it. Lines before the first timestamp are kept
    only when `since` is None."""
    lo = _as_utc(since) if since is not None else None
    hi = _as_utc(until) if until is not None else None
    out: list[str] = []
    keep = since is None
    for line in text.splitlines(keepends=True):
        m = _TS_RE.match(line)
        if m:
            ts = _parse_ts(m.group(1))
            # compare at the log's millisecond precision
            keep = (lo is None or ts >= lo.replace(microsecond=lo.microsecond // 1000 * 1000)) \
                and (hi is None or ts <= hi)
        if keep:
            out.append(line)
    return "".join(out)


def _utc_stamp() -> str:
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


# ------------------------------------------------------------------------------ the manager


class ServiceManager:
    def __init__(self, config_path: str | os.PathLike, state_dir: str | os.PathLike,
                 log_dir: str | os.PathLike, python: str | None = None):
        self.config_path = Path(config_path).resolve()
        self.state_dir = Path(state_dir).resolve()
        self.log_dir = Path(log_dir).resolve()
        self.run_dir = self.state_dir / "run"
        self.python = python or sys.executable
        self._children: dict[int, subprocess.Popen] = {}
        self._cfg = None

    # ------------------------------------------------------------------ configuration
    @property
    def cfg(self):
        if self._cfg is None:
            if str(REPO_ROOT) not in sys.path:
                sys.path.insert(0, str(REPO_ROOT))
            from attune_emulator.config import load_config
            self._cfg = load_config(self.config_path)
        return self._cfg

    def api_url(self) -> str:
        return self.cfg.api_url

    def notifier_url(self) -> str:
        host = self.cfg.get("notifier.host", "127.0.0.1")
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://{host}:{self.cfg.get('notifier.port', 8081)}"

    def _spec_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def _spec(self, name: str) -> dict:
        try:
            return json.loads(self._spec_path(name).read_text())
        except (OSError, ValueError):
            return {"service": name, "env": {}}

    def command(self, name: str, service: str | None = None) -> list[str]:
        """The argv for `name`: `ATTUNE_E2E_CMD_<NAME>` or the default template."""
        service = service or self._spec(name).get("service") or name
        env_key = "ATTUNE_E2E_CMD_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()
        template = os.environ.get(env_key) or DEFAULT_COMMAND
        return [part.format(config=str(self.config_path), python=self.python, service=service,
                            name=name)
                for part in shlex.split(template)]

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def _pid_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def _exit_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.exit"

    def forget(self, name: str) -> None:
        """Drop the run files (pid, spec, exit code) of a service that no longer runs and will not
        be started again (a test's lane worker), so `<state_dir>/run` does not grow per run."""
        if self.pid(name) is not None:
            raise ServiceError(f"{name} is still running; stop it before forgetting it")
        for path in (self._pid_path(name), self._spec_path(name), self._exit_path(name)):
            path.unlink(missing_ok=True)
        self._children = {pid: proc for pid, proc in self._children.items()
                          if proc.poll() is None}

    def names(self) -> list[str]:
        """Services with a pid file, the standard five first."""
        found = sorted(p.stem for p in self.run_dir.glob("*.pid")) if self.run_dir.exists() else []
        return [n for n in SERVICE_ORDER if n in found] + [n for n in found if n not in SERVICE_ORDER]

    # ------------------------------------------------------------------ pid files
    def _read_pidfile(self, name: str) -> dict | None:
        try:
            lines = self._pid_path(name).read_text().splitlines()
            return {"pid": int(lines[0]), "starttime": lines[1] if len(lines) > 1 else None,
                    "tag": lines[2] if len(lines) > 2 else None,
                    "cmd": lines[3] if len(lines) > 3 else ""}
        except (OSError, ValueError, IndexError):
            return None

    def _live_record(self, name: str) -> dict | None:
        rec = self._read_pidfile(name)
        if rec is None:
            return None
        start = _starttime(rec["pid"])
        if start is None or (rec["starttime"] and start != rec["starttime"]):
            return None
        return rec

    def pid(self, name: str) -> int | None:
        """The service's pid while it runs (a zombie or a reused pid counts as not running)."""
        rec = self._live_record(name)
        if rec is None or _is_zombie(rec["pid"]):
            return None
        return rec["pid"]

    def is_running(self, name: str) -> bool:
        return self.pid(name) is not None

    # ------------------------------------------------------------------ start
    def start(self, name: str, *, service: str | None = None, env: dict | None = None,
              wait_seconds: float = 0.3) -> int:
        """Start `name` (no-op when running) and return its pid. `service` (default: the recorded
        one, else `name`) picks the attune_emulator service; `env` adds variables (e.g.
        `ATTUNE__WORKER__NAME`) and is remembered for restarts."""
        running = self.pid(name)
        if running:
            return running
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        spec = self._spec(name)
        if service is not None or env is not None or not self._spec_path(name).exists():
            spec = {"service": service or spec.get("service") or name,
                    "env": {**(spec.get("env") or {}), **(env or {})}}
            self._spec_path(name).write_text(json.dumps(spec, indent=2))
        argv = self.command(name, spec["service"])
        tag = f"{name}-{uuid.uuid4().hex[:12]}"
        child_env = dict(os.environ)
        child_env.update({str(k): str(v) for k, v in (spec.get("env") or {}).items()})
        child_env.update({
            "ATTUNE_CONFIG": str(self.config_path),
            "ATTUNE_API_URL": child_env.get("ATTUNE_API_URL") or self.api_url(),
            "PYTHONUNBUFFERED": "1",
            TAG_ENV: tag,
        })
        logf = open(self.log_path(name), "ab")
        logf.write(f"{_utc_stamp()} INFO  manager: starting {name}: {shlex.join(argv)}\n".encode())
        logf.flush()
        with contextlib.suppress(FileNotFoundError):
            self._exit_path(name).unlink()
        try:
            proc = subprocess.Popen(argv, cwd=str(REPO_ROOT), env=child_env,
                                    stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True)
        except OSError as exc:
            raise ServiceError(f"cannot start {name} ({shlex.join(argv)}): {exc}") from exc
        finally:
            logf.close()
        start = None
        for _ in range(50):
            start = _starttime(proc.pid)
            if start:
                break
            time.sleep(0.01)
        tmp = self._pid_path(name).with_suffix(".pid.tmp")
        tmp.write_text(f"{proc.pid}\n{start or ''}\n{tag}\n{shlex.join(argv)}\n")
        os.replace(tmp, self._pid_path(name))
        self._children[proc.pid] = proc
        threading.Thread(target=self._reap, args=(name, proc), daemon=True,
                         name=f"reap-{name}").start()
        if wait_seconds:
            deadline = time.monotonic() + wait_seconds
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            if proc.poll() is not None:
                raise ServiceError(f"{name} exited at once with code {proc.returncode}; "
                                   f"log {self.log_path(name)}:\n{self.log_tail(name)}")
        return proc.pid

    def _reap(self, name: str, proc: subprocess.Popen) -> None:
        code = proc.wait()
        with contextlib.suppress(OSError):
            self._exit_path(name).write_text(f"{proc.pid} {code}\n")
        with contextlib.suppress(OSError):
            with open(self.log_path(name), "ab") as fh:
                fh.write(f"{_utc_stamp()} INFO  manager: {name} (pid {proc.pid}) exited with "
                         f"code {code}\n".encode())

    def start_all(self, names: Iterable[str] = SERVICE_ORDER) -> dict[str, int]:
        """Start the services in order (api first); returns {name: pid}."""
        pids = {}
        for name in names:
            pids[name] = self.start(name, wait_seconds=0.0)
        time.sleep(0.3)
        for name in names:
            if not self.is_running(name):
                raise ServiceError(f"{name} exited during start-up (code {self.exit_code(name)}); "
                                   f"log {self.log_path(name)}:\n{self.log_tail(name)}")
        return pids

    # ------------------------------------------------------------------ signals, stop
    def signal(self, name: str, sig: int) -> None:
        pid = self.pid(name)
        if pid is None:
            raise ServiceError(f"{name} is not running")
        os.kill(pid, sig)

    def kill(self, name: str, sig: int = _signal.SIGKILL) -> None:
        """Send `sig` to the service process only (e.g. to simulate a crash)."""
        self.signal(name, sig)

    def leftovers(self, name: str) -> list[int]:
        """Live processes that belong to `name`'s current or last run (other than itself)."""
        rec = self._read_pidfile(name)
        if rec is None:
            return []
        me = os.getpid()
        pids = set()
        alive_main = _starttime(rec["pid"]) is not None and (
            not rec["starttime"] or _starttime(rec["pid"]) == rec["starttime"])
        if alive_main:
            pids.update(_descendants(rec["pid"]))
            pids.update(_session_members(rec["pid"]))
        if rec["tag"]:
            pids.update(_tagged(rec["tag"]))
        pids.discard(me)
        pids.discard(rec["pid"])
        return sorted(p for p in pids if not _is_zombie(p))

    def kill_session(self, name: str) -> None:
        """SIGKILL the service and every process left over from it, at once."""
        rec = self._read_pidfile(name)
        if rec is None:
            return
        others = self.leftovers(name)
        if self.pid(name):
            _killpg(rec["pid"], _signal.SIGKILL)
            _kill(rec["pid"], _signal.SIGKILL)
        for p in others:
            _kill(p, _signal.SIGKILL)
        self._wait_gone(name, 5)
        for _ in range(3):  # processes forked while we were killing
            rest = self.leftovers(name)
            if not rest:
                break
            for p in rest:
                _kill(p, _signal.SIGKILL)
            time.sleep(0.1)

    def _terminate(self, pid: int, sig: int) -> None:
        """`sig` to the service's process group (it leads one, thanks to its own session), or to
        the process alone when it moved to another group."""
        st = _proc_stat(pid)
        if st is not None and len(st) > 2 and st[2] == str(pid):
            _killpg(pid, sig)
        else:
            _kill(pid, sig)

    def stop(self, name: str, grace: float = 10) -> int | None:
        """SIGTERM the service's process group, SIGKILL after `grace` s, then kill everything left
        in its session, among its descendants or carrying its tag. Returns the exit code (None
        when it was not running)."""
        return self._stop_many([name], grace).get(name)

    def _stop_many(self, names: list[str], grace: float) -> dict[str, int | None]:
        running = {n: self.pid(n) for n in names}
        running = {n: p for n, p in running.items() if p is not None}
        tracked: dict[str, set[int]] = {n: set(self.leftovers(n)) for n in running}
        for name, pid in running.items():
            self._terminate(pid, _signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(self.pid(n) for n in running):
            for name, pid in running.items():
                if self.pid(name):
                    tracked[name].update(_descendants(pid))
            time.sleep(0.05)
        for name, pid in running.items():
            if self.pid(name) is not None:
                tracked[name].update(self.leftovers(name))
                self._terminate(pid, _signal.SIGKILL)
                _kill(pid, _signal.SIGKILL)
        for name in running:
            self._wait_gone(name, 5)
            for p in tracked[name]:
                _kill(p, _signal.SIGKILL)
        for name in names:
            for _ in range(5):
                rest = self.leftovers(name)
                if not rest:
                    break
                for p in rest:
                    _kill(p, _signal.SIGKILL)
                time.sleep(0.1)
        return {n: (self.wait_exit(n, 2) if n in running else None) for n in names}

    def _wait_gone(self, name: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pid(name) is None:
                return True
            time.sleep(0.05)
        return self.pid(name) is None

    def stop_all(self, grace: float = 10) -> dict[str, int | None]:
        """Stop every service with a pid file at once (one grace period for all); returns
        {name: exit code or None if it was not running}."""
        return self._stop_many(list(reversed(self.names())), grace)

    def restart(self, name: str, grace: float = 10) -> int:
        self.stop(name, grace=grace)
        return self.start(name)

    def exit_code(self, name: str) -> int | None:
        """The exit code of the last run of `name` once it is gone; None while it runs."""
        rec = self._read_pidfile(name)
        if rec is None:
            return None
        proc = self._children.get(rec["pid"])
        if proc is not None and proc.poll() is not None:
            return proc.returncode
        try:
            pid_s, code_s = self._exit_path(name).read_text().split()
            if int(pid_s) == rec["pid"]:
                return int(code_s)
        except (OSError, ValueError):
            pass
        code = _zombie_exit_code(rec["pid"])
        if code is not None:
            return code
        if self.pid(name) is None and not (
                _starttime(rec["pid"]) and _starttime(rec["pid"]) == rec["starttime"]):
            return EXIT_UNKNOWN
        return None

    def wait_exit(self, name: str, timeout: float) -> int | None:
        """Wait up to `timeout` s for the service to exit; its exit code (negative signal number
        when killed by a signal; EXIT_UNKNOWN if nobody could record it), or None if it still runs."""
        deadline = time.monotonic() + timeout
        while self.pid(name) is not None:
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)
        # give the reaper a moment to write the exit file
        end = time.monotonic() + 1.0
        code = self.exit_code(name)
        while code in (None, EXIT_UNKNOWN) and time.monotonic() < end:
            time.sleep(0.05)
            code = self.exit_code(name)
        return code

    # ------------------------------------------------------------------ introspection
    def rss_kb(self, name: str) -> int | None:
        pid = self.pid(name)
        if pid is None:
            return None
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None

    def cpu_seconds(self, name: str) -> float | None:
        pid = self.pid(name)
        st = _proc_stat(pid) if pid else None
        if not st:
            return None
        return (int(st[11]) + int(st[12])) / _CLK_TCK

    def log_slice(self, name: str, since: _dt.datetime | None,
                  until: _dt.datetime | None = None) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return ""
        return slice_log_text(text, since, until)

    def log_tail(self, name: str, lines: int = 40) -> str:
        try:
            with open(self.log_path(name), "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - 64 * 1024))
                data = fh.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(data.splitlines()[-lines:])

    def status(self) -> dict[str, dict]:
        out = {}
        for name in self.names() or list(SERVICE_ORDER):
            out[name] = {"pid": self.pid(name), "running": self.is_running(name),
                         "log": str(self.log_path(name)), "rss_kb": self.rss_kb(name)}
        return out

    # ------------------------------------------------------------------ health
    def _check_http(self, url: str) -> str | None:
        import requests
        try:
            r = requests.get(url, timeout=2)
        except requests.RequestException as exc:
            return f"GET {url}: {type(exc).__name__}"
        if r.status_code != 200:
            return f"GET {url}: HTTP {r.status_code} {r.text[:200]}"
        return None

    def _check_db(self) -> dict[str, str | None]:
        """Worker row with a fresh heartbeat; sensor process alive (and its row, if it keeps one)."""
        import psycopg2
        out: dict[str, str | None] = {}
        worker_name = self.cfg.get("worker.name")
        hb = float(self.cfg.get("worker.heartbeat_interval", 30))
        fresh = max(3 * hb, 5.0)
        try:
            conn = psycopg2.connect(self.cfg.database_url, connect_timeout=3,
                                    options=f"-c search_path={self.cfg.get('database.schema', 'attune')},public")
        except psycopg2.Error as exc:
            msg = f"database unreachable: {str(exc).strip()}"
            return {"worker": msg, "sensor": msg}
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT name, status, extract(epoch FROM now() - last_heartbeat) "
                    "FROM worker WHERE worker_role = 'action' AND (%s::text IS NULL OR name = %s) "
                    "ORDER BY last_heartbeat DESC NULLS LAST LIMIT 1", (worker_name, worker_name))
                row = cur.fetchone()
                if row is None:
                    out["worker"] = f"no worker row{f' named {worker_name!r}' if worker_name else ''}"
                elif row[1] != "active" or row[2] is None or float(row[2]) > fresh:
                    age = "never" if row[2] is None else f"{float(row[2]):.1f} s ago"
                    out["worker"] = f"worker {row[0]!r} status {row[1]!r}, last heartbeat {age}"
                else:
                    out["worker"] = None
        except psycopg2.Error as exc:
            out["worker"] = f"worker query failed: {str(exc).strip()}"
        finally:
            conn.close()
        return out

    def wait_healthy(self, timeout: float = 60, names: Iterable[str] = SERVICE_ORDER) -> dict:
        """Wait until API and notifier answer /health, the worker heartbeats and the sensor runs.
        Returns {check: seconds until ready}; raises ServiceError naming what is not ready."""
        names = list(names)
        t0 = time.monotonic()
        deadline = t0 + timeout
        ready: dict[str, float] = {}
        problems: dict[str, str] = {}
        while True:
            problems = {}
            for name in names:
                if name in ready:
                    continue
                if not self.is_running(name):
                    code = self.exit_code(name)
                    raise ServiceError(f"{name} is not running (exit code {code}); "
                                       f"log {self.log_path(name)}:\n{self.log_tail(name)}")
            for svc, path in (("api", self.api_url()), ("notifier", self.notifier_url())):
                if svc in names and svc not in ready:
                    err = self._check_http(path + "/health")
                    if err:
                        problems[svc] = err
                    else:
                        ready[svc] = time.monotonic() - t0
            if ("worker" in names and "worker" not in ready) or \
                    ("sensor" in names and "sensor" not in ready):
                db = self._check_db()
                if "worker" in names and "worker" not in ready:
                    problems["worker"] = db["worker"]
                    if db["worker"] is None:
                        ready["worker"] = time.monotonic() - t0
                if "sensor" in names and "sensor" not in ready:
                    problems["sensor"] = self._sensor_problem()
                    if problems["sensor"] is None:
                        ready["sensor"] = time.monotonic() - t0
            for name in names:
                if name not in ("api", "notifier", "worker", "sensor") and name not in ready:
                    ready[name] = time.monotonic() - t0  # running is all we can check
            problems = {k: v for k, v in problems.items() if v}
            if not problems:
                return {k: round(v, 2) for k, v in ready.items()}
            if time.monotonic() >= deadline:
                parts = []
                for svc, why in problems.items():
                    parts.append(f"- {svc}: {why}\n  log {self.log_path(svc)} (tail):\n"
                                 + "\n".join("    " + ln for ln in self.log_tail(svc, 25).splitlines()))
                raise ServiceError(f"stack not healthy after {timeout:.0f} s:\n" + "\n".join(parts))
            time.sleep(0.2)

    def _sensor_problem(self) -> str | None:
        """The sensor service has no HTTP port; it is ready when its process runs and, if it
        registers a `worker` row with role `sensor` (as upstream's sensor workers do), that row
        heartbeats. Without such a row, a running process for 1 s counts as ready."""
        import psycopg2
        pid = self.pid("sensor")
        if pid is None:
            return "sensor process not running"
        try:
            conn = psycopg2.connect(self.cfg.database_url, connect_timeout=3)
        except psycopg2.Error as exc:
            return f"database unreachable: {str(exc).strip()}"
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT status, extract(epoch FROM now() - last_heartbeat) "
                            f"FROM {self.cfg.get('database.schema', 'attune')}.worker "
                            "WHERE worker_role = 'sensor' AND pid = %s", (pid,))
                row = cur.fetchone()
        except psycopg2.Error:
            row = None
        finally:
            conn.close()
        if row is not None:
            hb = float(self.cfg.get("sensor.heartbeat_interval", 30))
            if row[0] == "active" and row[1] is not None and float(row[1]) <= max(3 * hb, 5.0):
                return None
            return f"sensor row status {row[0]!r}, heartbeat age {row[1]}"
        st = _proc_stat(pid)
        if st is None:
            return "sensor process not running"
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        age = uptime - int(st[19]) / _CLK_TCK
        return None if age >= 1.0 else "sensor starting"
