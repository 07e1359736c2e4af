"""Per-pack runtime environments: Python virtualenvs and Node.js node_modules.

Layout (as upstream): `<runtime_envs_dir>/<pack_ref>/<runtime name lower-cased>`, i.e.
`.../<pack_ref>/python` and `.../<pack_ref>/node.js` for the core runtimes `Python` and `Node.js`.
A pack's environment is (re)made only when the SHA-256 of its manifest (`requirements.txt`,
`package.json`) differs from the one recorded in its marker file `.attune_deps_installed`. A lock
per environment directory (a thread lock plus an `flock` on `<env>.lock`, so workers sharing the
directory agree) serialises creation.

Built environments are kept in a content-addressed store, `<runtime_envs_dir>/.store/
{python,node}-<key>`, the key hashing the manifest (and `package-lock.json`) with the interpreter's
path and version. A pack's environment is a copy of its store entry (the copy keeps file times, so
`pyvenv.cfg` and the marker, written anew, date the pack's environment while the installed files
date the install). Packs get a fresh ref per test session, so without the store every run would
run pip and npm again; with it, a requirements file this machine has built before is never
installed again. Store entries are immutable once finished; `prune_store` drops those unused for
`worker.env_store_max_age_days` at worker start. pip's and npm's download caches live under
`<runtime_envs_dir>/.cache/{pip,npm}` unless the operator set `PIP_CACHE_DIR` / `npm_config_cache`.
Pack refs never start with a dot, so neither can collide with a pack's folder.

Environments in use are never replaced under a running action: an execution holds a shared `flock`
on `<env>.lock` from the moment it has checked the marker until its process ends (`hold_env`), and
a replacement takes the exclusive lock, so it waits for the executions still running on the old
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
import time
from pathlib import Path

log = logging.getLogger(__name__)

MARKER = ".attune_deps_installed"
STORE = ".store"  # content-addressed built environments, shared by every pack ref
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


def _identity(argv: list[str]) -> str:
    """What else an environment depends on besides its manifest: the interpreter (or node) it
    was built for, by resolved path and version. Cached per process."""
    key = "\0".join(argv)
    if key not in _identities:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            version = (out.stdout or out.stderr).strip()
        except (OSError, subprocess.SubprocessError) as exc:
            version = f"unknown ({exc})"
        _identities[key] = f"{os.path.realpath(shutil.which(argv[0]) or argv[0])} {version}"
    return _identities[key]


_identities: dict[str, str] = {}


def store_dir(runtime_envs_dir: str, kind: str, manifest_digest: str, identity: str) -> Path:
    key = hashlib.sha256(f"{kind}\0{manifest_digest}\0{identity}".encode()).hexdigest()[:32]
    return Path(runtime_envs_dir) / STORE / f"{kind}-{key}"


def _ensure_store(entry: Path, digest: str, build, what: str) -> Path:
    """The store entry `entry`, built by `build(entry)` unless a finished one exists. An entry
    is finished when its marker holds `digest`; a half-built one (crash, failed install) is
    removed and built again. Finished entries are never modified, only read and copied."""
    with env_lock(entry):
        if _marker_matches(entry, digest):
            log.info("%s: reusing %s (built %s)", what, entry,
                     time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((entry / MARKER).stat().st_mtime)))
        else:
            shutil.rmtree(entry, ignore_errors=True)
            try:
                build(entry)
            except BaseException:
                shutil.rmtree(entry, ignore_errors=True)
                raise
            (entry / MARKER).write_text(digest + "\n")
        os.utime(entry / MARKER)  # last use, for prune_store
    return entry


def _materialize(entry: Path, env_dir: Path, digest: str, fresh: tuple[str, ...] = ()) -> None:
    """Copy the store entry to the pack's environment folder (file times kept, so what was
    installed when stays visible), atomically: a sibling folder renamed into place. Files in
    `fresh` and the marker are written anew, dated now: they record when this pack's
    environment was made."""
    tmp = env_dir.with_name(f".{env_dir.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(entry, tmp, symlinks=True, ignore=shutil.ignore_patterns(MARKER))
    for name in fresh:
        data = (tmp / name).read_bytes()
        (tmp / name).unlink()
        (tmp / name).write_bytes(data)
    (tmp / MARKER).write_text(digest + "\n")
    os.rename(tmp, env_dir)


def _drop_outdated(env_dir: Path, pack_ref: str, digest: str, manifest: str) -> None:
    """Remove a pack environment made from an earlier manifest (caller holds its lock)."""
    if env_dir.exists():
        log.info("pack %s: %s changed (sha256 %s); replacing %s", pack_ref, manifest,
                 digest[:12], env_dir)
        shutil.rmtree(env_dir, ignore_errors=True)


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
        _drop_outdated(env_dir, pack_ref, digest, "requirements.txt")
        identity = _identity([base_python, "-c", "import sys; print(sys.version)"])
        entry = store_dir(runtime_envs_dir, "python", digest, identity)

        def build(target: Path) -> None:
            log.info("pack %s: building virtualenv %s (requirements sha256 %s)", pack_ref, target,
                     digest[:12])
            pip_env = installer_env(runtime_envs_dir, "pip")
            target_python = target / "bin" / "python"
            if _base_pip_can_target(base_python):
                # Fast path: a venv without its own pip, filled by the base interpreter's pip.
                _run([base_python, "-m", "venv", "--without-pip", str(target)], None,
                     f"python venv for pack '{pack_ref}'")
                _run([base_python, "-m", "pip", "--python", str(target_python), "install",
                      "--disable-pip-version-check", "-r", str(req)],
                     pack_dir, f"pip install for pack '{pack_ref}'", env=pip_env)
            else:
                _run([base_python, "-m", "venv", str(target)], None,
                     f"python venv for pack '{pack_ref}'")
                _run([str(target_python), "-m", "pip", "install", "--disable-pip-version-check",
                      "-r", str(req)], pack_dir, f"pip install for pack '{pack_ref}'", env=pip_env)

        _ensure_store(entry, digest, build, f"pack {pack_ref}")
        _materialize(entry, env_dir, digest, fresh=("pyvenv.cfg",))
        log.info("pack %s: virtualenv ready at %s (from %s)", pack_ref, env_dir, entry.name)
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
        _drop_outdated(env_dir, pack_ref, digest, "package.json")
        lock_file = pack_dir / "package-lock.json"
        lock_digest = manifest_hash(lock_file) if lock_file.is_file() else "-"
        identity = _identity([npm, "--version"]) + " " + _identity(["node", "--version"])
        store_key = f"{digest} {lock_digest}"
        entry = store_dir(runtime_envs_dir, "node", store_key, identity)

        def build(target: Path) -> None:
            log.info("pack %s: installing node modules into %s", pack_ref, target)
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(manifest, target / "package.json")
            if lock_file.is_file():
                shutil.copy2(lock_file, target / "package-lock.json")
            _run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(target)], target,
                 f"npm install for pack '{pack_ref}'", env=installer_env(runtime_envs_dir, "npm"))
            (target / "node_modules").mkdir(exist_ok=True)

        _ensure_store(entry, store_key, build, f"pack {pack_ref}")
        _materialize(entry, env_dir, digest)
        log.info("pack %s: node modules ready at %s (from %s)", pack_ref, modules, entry.name)
    return modules


def prune_store(runtime_envs_dir: str, max_age_s: float) -> list[str]:
    """Remove store entries not used for `max_age_s` seconds (their marker is touched on every
    use) and leftovers of interrupted copies. Returns what was removed."""
    removed = []
    root = Path(runtime_envs_dir)
    store = root / STORE
    now = time.time()
    if store.is_dir():
        for entry in sorted(p for p in store.iterdir() if p.is_dir()):
            try:
                used = (entry / MARKER).stat().st_mtime
            except OSError:
                used = entry.stat().st_mtime  # half-built: judged by the folder's age
            if now - used > max_age_s:
                with env_lock(entry):
                    shutil.rmtree(entry, ignore_errors=True)
                with contextlib.suppress(OSError):
                    os.unlink(str(entry) + ".lock")
                removed.append(str(entry))
        for lock in store.glob("*.lock"):  # left by builds that failed (no entry was kept)
            if not lock.with_suffix("").exists() and now - lock.stat().st_mtime > max_age_s:
                with contextlib.suppress(OSError):
                    lock.unlink()
    if root.is_dir():
        for pack_root in root.iterdir():
            if pack_root.name.startswith(".") or not pack_root.is_dir():
                continue
            for tmp in pack_root.glob(".*.tmp-*"):
                if now - tmp.stat().st_mtime > 3600:
                    shutil.rmtree(tmp, ignore_errors=True)
                    removed.append(str(tmp))
    return removed


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

