"""Per-process caches of what every authenticated request reads: decoded tokens, the
permission sets behind a principal, and the visibility fields of packs (E3).

Sets and packs are cached against the counters of `api_cache_epoch` (schema.sql): deferred triggers
bump `authz` in the same transaction as any change to `permission_set`, `permission_assignment`,
`identity_role_assignment` or `permission_set_role_assignment`, and `pack` with any pack insert,
delete or change of ref/is_standard/installed_by. Each request reads both counters in the same
statement as its identity row (which is never cached: deletion, `frozen`, `login` and
`attributes` are always current), and a cached entry is used only when its epoch is the one just
read, so a change is in force for every request that starts after it commits, in every API
process. Entries are loaded after their epoch was read, so they are never older than it.
"""
from __future__ import annotations

import threading
import time
from typing import Any

from .. import auth as _auth

MAX_ENTRIES = 10000

EPOCH_COLUMNS = "e.authz AS authz_epoch, e.pack AS pack_epoch, e.action AS action_epoch"
IDENTITY_STATE_SQL = (f"SELECT i.id, i.login, i.frozen, i.attributes, {EPOCH_COLUMNS} "
                      "FROM identity i LEFT JOIN api_cache_epoch e ON e.id = 1 WHERE i.id = %s")
IDENTITY_SETS_SQL = """SELECT ps.id, ps.ref, ps.grants FROM permission_set ps
            WHERE ps.id IN (SELECT permset FROM permission_assignment WHERE identity = %(i)s)
               OR ps.id IN (SELECT psr.permset FROM permission_set_role_assignment psr
                              JOIN identity_role_assignment ira ON ira.role = psr.role
                             WHERE ira.identity = %(i)s)
            ORDER BY ps.id"""
NAMED_SETS_SQL = "SELECT id, ref, grants FROM permission_set WHERE ref = ANY(%s) ORDER BY id"
PACK_SQL = "SELECT id, ref, is_standard, installed_by FROM pack WHERE ref = %s"
_MISSING = object()


class TokenCache:
    """Claims of tokens whose signature and claims verified once. A hit re-checks only `exp`,
    the one verdict that changes with time for a token that was valid (iat/nbf only become
    valid); failures are never cached, so every answer equals `auth.decode_token`'s."""

    def __init__(self, secret: str):
        self.secret = secret
        self._claims: dict[str, tuple[dict, int]] = {}

    def decode(self, token: str) -> dict:
        hit = self._claims.get(token)
        if hit is not None:
            if hit[1] <= time.time():
                raise _auth.TokenError("Authentication token expired", expired=True)
            return hit[0]
        claims = _auth.decode_token(self.secret, token)
        if len(self._claims) >= MAX_ENTRIES:
            self._claims.clear()
        self._claims[token] = (claims, int(claims["exp"]))
        return claims


class AuthzCache:
    """Permission-set rows ({id, ref, grants}) by identity (access tokens) or by the refs an
    execution token names, valid for one authz epoch; pack visibility rows ({id, ref,
    is_standard, installed_by}, None when no such pack) valid for one pack epoch; action rows
    (`ACTION_SELECT`, None when no such action) valid for one action epoch.
    Entries are shared between requests: read-only."""

    def __init__(self):
        self._lock = threading.Lock()
        self._by_identity: dict[int, tuple[int, list[dict]]] = {}
        self._by_refs: dict[tuple, tuple[int, list[dict]]] = {}
        self._packs: dict[str, tuple[int, dict | None]] = {}
        self._actions: dict[str, tuple[int, dict | None]] = {}

    @staticmethod
    def _get(table: dict, key: Any, epoch: int | None, missing: Any = None) -> Any:
        hit = table.get(key)
        if hit is not None and epoch is not None and hit[0] == epoch:
            return hit[1]
        return missing

    def _put(self, table: dict, key: Any, epoch: int | None, rows: Any) -> None:
        if epoch is None:
            return
        with self._lock:
            old = table.get(key)
            if old is not None and old[0] > epoch:
                return
            if len(table) >= MAX_ENTRIES:
                table.clear()
            table[key] = (epoch, rows)

    def identity_sets(self, db, identity_id: int, epoch: int | None) -> list[dict]:
        rows = self._get(self._by_identity, identity_id, epoch)
        if rows is None:
            # Loaded after `epoch` was read, so never older than it: safe to file under it.
            rows = [dict(r) for r in db.all(IDENTITY_SETS_SQL, {"i": identity_id})]
            self._put(self._by_identity, identity_id, epoch, rows)
        return rows

    def named_sets(self, db, refs: list[str], epoch: int | None) -> list[dict]:
        key = tuple(sorted(set(refs)))
        rows = self._get(self._by_refs, key, epoch)
        if rows is None:
            rows = [dict(r) for r in db.all(NAMED_SETS_SQL, (list(key),))]
            self._put(self._by_refs, key, epoch, rows)
        return rows


    def _row(self, table: dict, db, sql: str, ref: str, epoch: int | None) -> dict | None:
        """The row `sql` (one `%s`: the ref) finds (None: none), cached under `epoch`."""
        row = self._get(table, ref, epoch, _MISSING)
        if row is _MISSING:
            found = db.one(sql, (ref,))
            row = dict(found) if found is not None else None
            self._put(table, ref, epoch, row)
        return row

    def pack(self, db, pack_ref: str, epoch: int | None) -> dict | None:
        return self._row(self._packs, db, PACK_SQL, pack_ref, epoch)


    def action(self, db, sql: str, ref: str, epoch: int | None) -> dict | None:
        return self._row(self._actions, db, sql, ref, epoch)


def identity_state(db, identity_id: int) -> dict | None:
    """The identity row fields auth needs plus the current cache epochs (one statement)."""
    return db.one(IDENTITY_STATE_SQL, (identity_id,))
