"""Per-pack runtime environments: Python virtualenvs and Node.js node_modules.

Layout (as upstream): `<runtime_envs_dir>/<pack_ref>/<runtime name lower-cased>`, i.e.
`.../<pack_ref>/python` and `.../<pack_ref>/node.js` for the core runtimes `Python` and `Node.js`.
An environment is (re)built only when the SHA-256 of its manifest (`requirements.txt`,
`package.json`) differs from the one recorded in the marker file `.attune_deps_installed`. A lock
per environment directory (a thread lock plus an `flock` on `<env>.lock`, so workers sharing the
directory agree) serialises creation.

Downloads are cached under `<runtime_envs_dir>/.cache/{pip,npm}` (pip's HTTP/wheel cache and npm's
content-addressed cacache), unless the operator set `PIP_CACHE_DIR` / `npm_config_cache`: a pack
uploaded under a new ref (every test session) rebuilds its environment without downloading again.
Pack refs never start with a dot, so the cache cannot collide with a pack's folder.

Environments in use are never rebuilt under a running action: an execution holds a shared `flock`
on `<env>.lock` from the moment it has checked the marker until its process ends (`hold_env`), and
a rebuild takes the exclusive lock, so it waits for the executions still running on the old
environment (after a pack update with a changed manifest) and new executions then wait for it.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import threading
from pathlib import Path

log = logging.getLogger(__name__)

MARKER = ".attune_deps_installed"
INSTALL_TIMEOUT = 900

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


class EnvError(Exception):
    """Building an environment failed; the message carries the installer's stderr tail."""


@contextlib.contextmanager
def env_lock(env_dir: Path):
    key = str(env_dir)
    with _locks_guard:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        env_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(str(env_dir) + ".lock", "a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("%s: waiting for the executions still using it", env_dir)
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def remove_pack_envs(runtime_envs_dir: str, pack_ref: str) -> list[str]:
    """Delete every environment of a deleted pack (`<runtime_envs_dir>/<pack_ref>/*`).

    Each env is removed under its exclusive lock, so executions still using it finish first.
    Returns the removed env folders. Without this, every pack ref ever used keeps its virtualenv
    or node_modules on disk, and a state folder that is reused across runs only grows."""
    pack_root = Path(runtime_envs_dir) / pack_ref
    if not pack_root.is_dir() or pack_ref.startswith("."):
        return []
    removed = []
    for env_dir in sorted(p for p in pack_root.iterdir() if p.is_dir()):
        with env_lock(env_dir):
            shutil.rmtree(env_dir, ignore_errors=True)
        removed.append(str(env_dir))
    shutil.rmtree(pack_root, ignore_errors=True)
    return removed


def manifest_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tail(text: str, lines: int = 15, chars: int = 4000) -> str:
    tail = "\n".join(text.strip().splitlines()[-lines:])
    return tail[-chars:]


def _run(argv: list[str], cwd: Path | None, what: str, env: dict | None = None) -> None:
    log.info("%s: running %s", what, " ".join(argv))
    try:
        proc = subprocess.run(argv, cwd=str(cwd) if cwd else None, env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=INSTALL_TIMEOUT, start_new_session=True)
    except subprocess.TimeoutExpired as exc:
        raise EnvError(f"{what}: timed out after {INSTALL_TIMEOUT}s") from exc
    except OSError as exc:
        raise EnvError(f"{what}: {exc}") from exc
    if proc.returncode != 0:
        tail = _tail(proc.stderr or proc.stdout or "")
        raise EnvError(f"{what} failed (exit {proc.returncode}): {tail}")


def installer_env(runtime_envs_dir: str, tool: str) -> dict[str, str]:
    """The environment of a pip / npm run: the worker's, plus the shared download cache."""
    env = dict(os.environ)
    var = {"pip": "PIP_CACHE_DIR", "npm": "npm_config_cache"}[tool]
    if not env.get(var) and not (tool == "npm" and env.get("NPM_CONFIG_CACHE")):
        env[var] = str(Path(runtime_envs_dir).resolve() / ".cache" / tool)
    return env


def _marker_matches(env_dir: Path, digest: str) -> bool:
    marker = env_dir / MARKER
    try:
        return marker.read_text().strip() == digest
    except OSError:
        return False


_pip_target_support: dict[str, bool] = {}


def _base_pip_can_target(base_python: str) -> bool:
    """pip >= 22.3 installs into another interpreter's environment with `--python`."""
    if base_python not in _pip_target_support:
        ok = False
        try:
            out = subprocess.run([base_python, "-m", "pip", "--version"], capture_output=True,
                                 text=True, timeout=60)
            parts = out.stdout.split()
            if out.returncode == 0 and len(parts) > 1:
                major, minor = (int(x) for x in parts[1].split(".")[:2])
                ok = (major, minor) >= (22, 3)
        except (OSError, ValueError, subprocess.SubprocessError):
            ok = False
        _pip_target_support[base_python] = ok
    return _pip_target_support[base_python]


def ensure_python_env(runtime_envs_dir: str, pack_ref: str, pack_dir: Path,
                      base_python: str, env_name: str = "python") -> Path | None:
    """The virtualenv's python for a pack with `requirements.txt`, else None (use plain python3).
    `env_name`: the runtime's name lower-cased (upstream's env folder name)."""
    req = pack_dir / "requirements.txt"
    if not req.is_file():
        return None
    env_dir = Path(runtime_envs_dir) / pack_ref / env_name
    python = env_dir / "bin" / "python"
    digest = manifest_hash(req)
    if _marker_matches(env_dir, digest) and python.exists():
        return python
    with env_lock(env_dir):
        if _marker_matches(env_dir, digest) and python.exists():
            return python
        if env_dir.exists():
            log.info("pack %s: requirements.txt changed (sha256 %s); rebuilding %s",
                     pack_ref, digest[:12], env_dir)
            shutil.rmtree(env_dir, ignore_errors=True)
        else:
            log.info("pack %s: creating virtualenv %s", pack_ref, env_dir)
        pip_env = installer_env(runtime_envs_dir, "pip")
        if _base_pip_can_target(base_python):
            # Fast path: a venv without its own pip, filled by the base interpreter's pip.
            _run([base_python, "-m", "venv", "--without-pip", str(env_dir)], None,
                 f"python venv for pack '{pack_ref}'")
            _run([base_python, "-m", "pip", "--python", str(python), "install",
                  "--disable-pip-version-check", "-r", str(req)],
                 pack_dir, f"pip install for pack '{pack_ref}'", env=pip_env)
        else:
            _run([base_python, "-m", "venv", str(env_dir)], None,
                 f"python venv for pack '{pack_ref}'")
            _run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-r",
                  str(req)], pack_dir, f"pip install for pack '{pack_ref}'", env=pip_env)
        (env_dir / MARKER).write_text(digest + "\n")
        log.info("pack %s: python dependencies installed (sha256 %s)", pack_ref, digest[:12])
    return python


def ensure_node_env(runtime_envs_dir: str, pack_ref: str, pack_dir: Path, npm: str,
                    env_name: str = "node.js") -> Path | None:
    """`<env>/node_modules` for a pack with `package.json`, else None. `env_name`: the runtime's
    name lower-cased (`node.js` for core.nodejs, as upstream)."""
    manifest = pack_dir / "package.json"
    if not manifest.is_file():
        return None
    env_dir = Path(runtime_envs_dir) / pack_ref / env_name
    modules = env_dir / "node_modules"
    digest = manifest_hash(manifest)
    if _marker_matches(env_dir, digest) and modules.is_dir():
        return modules
    with env_lock(env_dir):
        if _marker_matches(env_dir, digest) and modules.is_dir():
            return modules
        if env_dir.exists():
            log.info("pack %s: package.json changed (sha256 %s); rebuilding %s",
                     pack_ref, digest[:12], env_dir)
            shutil.rmtree(env_dir, ignore_errors=True)
        else:
            log.info("pack %s: installing node modules into %s", pack_ref, env_dir)
        env_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(manifest, env_dir / "package.json")
        lock_file = pack_dir / "package-lock.json"
        if lock_file.is_file():
            shutil.copy2(lock_file, env_dir / "package-lock.json")
        _run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(env_dir)], env_dir,
             f"npm install for pack '{pack_ref}'", env=installer_env(runtime_envs_dir, "npm"))
        modules.mkdir(exist_ok=True)
        (env_dir / MARKER).write_text(digest + "\n")
        log.info("pack %s: node dependencies installed (sha256 %s)", pack_ref, digest[:12])
    return modules


class EnvHold:
    """A shared hold on an environment directory for the lifetime of one action process."""

    def __init__(self, fh=None):
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            try:
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            finally:
                self._fh.close()
                self._fh = None


def hold_env(ensure, env_dir: Path, manifest: Path, ready, attempts: int = 5):
    """Run `ensure()` (build or reuse the env; returns what the caller needs, or None when the
    pack declares no manifest), then hold the env with a shared lock and re-check that it is the
    one `manifest` describes and `ready()` is true; a rebuild that slipped in between makes it
    retry. Returns (ensure's result, EnvHold)."""
    for _ in range(attempts):
        found = ensure()
        if found is None:
            return None, EnvHold()
        env_dir.parent.mkdir(parents=True, exist_ok=True)
        fh = open(str(env_dir) + ".lock", "a+")
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
        try:
            current = manifest.is_file() and _marker_matches(env_dir, manifest_hash(manifest))
        except OSError:
            current = False
        if current and ready():
            return found, EnvHold(fh)
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()
    raise EnvError(f"{env_dir}: rebuilt concurrently {attempts} times; giving up")

