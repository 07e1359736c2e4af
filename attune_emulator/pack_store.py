"""Versioned pack directories: a forced re-upload swaps the pack's files atomically, and an
execution that is still running keeps the version it started with.

Layout (upstream's path stays valid; only what it points at changes):

    <packs_base_dir>/<ref>                         -> symlink to .versions/<ref>/<version id>
    <packs_base_dir>/.versions/<ref>/<version id>/  the unpacked archive (pack.yaml, actions/, ...)
    <packs_base_dir>/.versions/<ref>/<version id>.inuse   lock file of that version

Writers (the API's upload and delete):
- `install_version` moves a freshly unpacked pack into a new version directory;
  `activate` points `<ref>` at it with one `rename(2)` of a new symlink over the old link, so a
  reader sees either the old tree or the new one, never a mix or a missing path. A plain directory
  left at `<ref>` (an install made before versioning) is first moved into `.versions/<ref>/`.
- `collect` removes superseded versions that no execution uses: it takes a non-blocking exclusive
  `flock` on each one's `.inuse` file, and skips the version when that fails.
- `remove_pack` unlinks `<ref>` and collects every version (a version still in use is removed
  later, by the last execution that releases it).

Readers (the worker): `pin(pack_dir)` resolves the link once, takes a shared `flock` on the
version's `.inuse` file and returns the resolved directory. The execution's script path, working
directory and `lib` path all use that directory, so files it reads or imports late still come from
its own version. `release()` drops the lock; the worker then calls `collect`, so a superseded
version disappears as soon as its last execution ends.

Pack refs never start with a dot, so `.versions` cannot collide with a pack's folder.
"""
from __future__ import annotations

import fcntl
import functools
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

VERSIONS_DIR = ".versions"
LOCK_SUFFIX = ".inuse"


def versions_root(base: Path, ref: str) -> Path:
    return Path(base) / VERSIONS_DIR / ref


def _new_version_name() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:12]}"


def install_version(base: Path, ref: str, src: Path) -> Path:
    """Move the unpacked pack folder `src` into a new version directory of `ref`; returns it."""
    root = versions_root(base, ref)
    root.mkdir(parents=True, exist_ok=True)
    dest = root / _new_version_name()
    shutil.move(str(src), str(dest))
    return dest


def current_version(base: Path, ref: str) -> Path | None:
    """The version directory `<base>/<ref>` points at (None when it is not a versioned link)."""
    link = Path(base) / ref
    if not link.is_symlink():
        return None
    target = Path(os.readlink(link))
    if not target.is_absolute():
        target = link.parent / target
    return Path(os.path.normpath(target))


def activate(base: Path, ref: str, version_dir: Path) -> None:
    """Point `<base>/<ref>` at `version_dir` atomically."""
    base = Path(base)
    link = base / ref
    if link.exists() and not link.is_symlink():
        # an unversioned install: keep it as a version so running executions can finish on it
        legacy = versions_root(base, ref) / f"legacy-{uuid.uuid4().hex[:12]}"
        legacy.parent.mkdir(parents=True, exist_ok=True)
        link.rename(legacy)
    tmp = base / f".link-{ref}-{uuid.uuid4().hex}"
    os.symlink(os.path.relpath(version_dir, base), tmp)
    os.replace(tmp, link)
    log.info("pack %s: now served from %s", ref, version_dir)


def _lock_path(version_dir: Path) -> Path:
    return version_dir.parent / (version_dir.name + LOCK_SUFFIX)


def collect(base: Path, ref: str, *, everything: bool = False) -> list[Path]:
    """Remove the versions of `ref` that are not current (all of them with `everything`) and that
    no execution holds. Returns the removed directories."""
    root = versions_root(base, ref)
    if not root.is_dir():
        return []
    keep = None if everything else current_version(base, ref)
    removed: list[Path] = []
    for entry in sorted(root.iterdir()):
        if entry.name.endswith(LOCK_SUFFIX) or not entry.is_dir() or entry == keep:
            continue
        lock = _lock_path(entry)
        with open(lock, "a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("pack %s: version %s still in use; kept for now", ref, entry.name)
                continue
            shutil.rmtree(entry, ignore_errors=True)
            try:
                lock.unlink()
            except FileNotFoundError:
                pass
            removed.append(entry)
        log.info("pack %s: removed superseded version %s", ref, entry.name)
    if everything or not (Path(base) / ref).is_symlink():
        for stray in root.glob(f"*{LOCK_SUFFIX}"):
            if not (root / stray.name[: -len(LOCK_SUFFIX)]).exists():
                stray.unlink(missing_ok=True)
        try:
            root.rmdir()  # only when empty: a version still in use keeps it
        except OSError:
            pass
    return removed


def remove_pack(base: Path, ref: str) -> None:
    """Delete a pack's files: the link (or a plain directory) and every unused version."""
    link = Path(base) / ref
    if link.is_symlink():
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link, ignore_errors=True)
    collect(base, ref, everything=True)


class Pin:
    """A shared hold on one pack version (no-op for a pack that is not versioned)."""

    def __init__(self, directory: Path, fh=None, base: Path | None = None, ref: str | None = None):
        self.directory = directory
        self._fh = fh
        self._base = base
        self._ref = ref

    def release(self) -> None:
        if self._fh is None:
            return
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
        finally:
            self._fh.close()
            self._fh = None
        try:
            collect(self._base, self._ref)
        except OSError as exc:
            log.warning("pack %s: cleanup of superseded versions failed: %s", self._ref, exc)


@functools.lru_cache(maxsize=8)
def _versions_dir(base: str) -> Path:
    """`<realpath of base>/.versions` (resolved once per base: `pin` runs for every execution)."""
    return Path(os.path.realpath(base)) / VERSIONS_DIR


def pin(pack_dir: Path, base: Path | None, attempts: int = 5) -> Pin:
    """Resolve `pack_dir` to its current version directory and hold it until `release()`."""
    pack_dir = Path(pack_dir)
    versions = None if base is None else _versions_dir(str(base))
    for _ in range(attempts):
        resolved = Path(os.path.realpath(pack_dir))
        if versions is None or resolved.parent.parent != versions:
            return Pin(resolved if resolved.is_dir() else pack_dir)
        fh = open(_lock_path(resolved), "a+")
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
        if resolved.is_dir():
            return Pin(resolved, fh, Path(base), resolved.parent.name)
        # collected between resolving and locking: the link points elsewhere now (version
        # names are never reused, so the lock file just re-created here is a stray)
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()
        _lock_path(resolved).unlink(missing_ok=True)
    return Pin(pack_dir)


__all__ = ["install_version", "activate", "collect", "remove_pack", "pin", "Pin",
           "current_version", "versions_root", "VERSIONS_DIR"]
