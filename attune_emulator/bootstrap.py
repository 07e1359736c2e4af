"""Administration commands: `migrate` and `bootstrap`.

`migrate(cfg)` applies `schema.sql` (idempotent, guarded by an advisory lock).

`bootstrap(cfg, extra_packs=())`:
  1. migrate;
  2. copy `attune_emulator/core_pack` to `<packs_base_dir>/core` (replaced only when its content
     changed) and register it as a standard pack (`force=True`, so a re-run updates it in place);
  3. seed the test administrator `test@attune.local` / `TestPass123!` and assign it the permission
     set `core.admin` (idempotent: an existing identity keeps its id; its password is reset);
  4. register every extra pack directory in place (`force=True`).
It prints one summary line. Rule lifecycle messages for rules created by extra packs are published
when the broker answers, so a running sensor picks up timer rules too.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from . import auth
from .db import Database, apply_schema

log = logging.getLogger(__name__)

CORE_PACK_SRC = Path(__file__).with_name("core_pack")
ADMIN_LOGIN = "test@attune.local"
ADMIN_PASSWORD = "TestPass123!"
ADMIN_DISPLAY_NAME = "E2E Test Admin"
ADMIN_PERMISSION_SET = "core.admin"


def _tree_digest(root: Path) -> str:
    """SHA-256 over relative paths, modes (executable bit) and contents of every file."""
    h = hashlib.sha256()
    if not root.is_dir():
        return ""
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        rel = path.relative_to(root).as_posix()
        h.update(rel.encode() + b"\0")
        h.update(b"x" if os.access(path, os.X_OK) else b"-")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def install_core_pack(packs_base_dir: str | os.PathLike) -> tuple[Path, bool]:
    """Copy the core pack into `<packs_base_dir>/core`; returns (path, copied?)."""
    dest = Path(packs_base_dir) / "core"
    if dest.is_dir() and _tree_digest(dest) == _tree_digest(CORE_PACK_SRC):
        return dest, False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".core.tmp.{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(CORE_PACK_SRC, tmp, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for path in tmp.rglob("*.sh"):
        path.chmod(path.stat().st_mode | 0o111)
    if dest.exists() or dest.is_symlink():
        old = dest.parent / f".core.old.{os.getpid()}"
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)
    return dest, True


def seed_admin(db: Database) -> int:
    """Create or refresh the test administrator; returns its identity id."""
    password_hash = auth.hash_password(ADMIN_PASSWORD)
    with db.tx() as cur:
        cur.execute(
            "INSERT INTO identity (login, display_name, password_hash) VALUES (%s, %s, %s) "
            "ON CONFLICT (login) DO UPDATE SET password_hash = EXCLUDED.password_hash, "
            "frozen = false RETURNING id",
            (ADMIN_LOGIN, ADMIN_DISPLAY_NAME, password_hash))
        identity_id = cur.fetchone()["id"]
        cur.execute("SELECT id FROM permission_set WHERE ref = %s", (ADMIN_PERMISSION_SET,))
        row = cur.fetchone()
        if row is None:
            raise RuntimeError(f"permission set {ADMIN_PERMISSION_SET} is missing "
                               "(was the core pack registered?)")
        cur.execute("INSERT INTO permission_assignment (identity, permset) VALUES (%s, %s) "
                    "ON CONFLICT (identity, permset) DO NOTHING", (identity_id, row["id"]))
    return int(identity_id)


def _publish_changes(cfg, changes: list) -> None:
    if not changes or not cfg.amqp_url:
        return
    try:
        from . import broker
        pub = broker.Publisher(cfg.amqp_url)
        try:
            for key, rule_id, ref, trigger_ref in changes:
                pub.publish(broker.EVENTS, key,
                            {"rule_id": rule_id, "rule_ref": ref, "trigger_ref": trigger_ref},
                            attempts=1)
        finally:
            pub.close()
    except Exception as exc:  # noqa: BLE001 - the sensor also loads rules when it starts
        log.warning("could not publish %d rule lifecycle message(s): %s", len(changes), exc)


def migrate(cfg) -> int:
    db = Database.from_config(cfg, maxconn=2)
    try:
        t0 = time.monotonic()
        apply_schema(db)
        log.info("schema applied in %.2f s", time.monotonic() - t0)
    finally:
        db.close()
    return 0


def bootstrap(cfg, extra_packs=()) -> int:
    from . import packs  # the loader shared with the API

    t0 = time.monotonic()
    db = Database.from_config(cfg, maxconn=2)
    try:
        apply_schema(db)
        core_dir, copied = install_core_pack(cfg.get("packs_base_dir"))
        packs.register_pack_dir(db, cfg, core_dir, force=True, is_standard=True)
        identity_id = seed_admin(db)
        registered = []
        changes: list = []
        for pack_dir in extra_packs or ():
            try:
                row = packs.register_pack_dir(db, cfg, Path(pack_dir), force=True,
                                              changes=changes)
            except packs.PackError as exc:
                print(f"bootstrap: pack {pack_dir}: {exc}", file=sys.stderr)
                return 1
            registered.append(row["ref"])
        _publish_changes(cfg, changes)
    finally:
        db.close()
    print(f"bootstrap: schema ok, core pack {'installed' if copied else 'unchanged'} at "
          f"{core_dir}, admin {ADMIN_LOGIN} (identity {identity_id}), extra packs: "
          f"{', '.join(registered) or 'none'} ({time.monotonic() - t0:.2f} s)", flush=True)
    return 0
