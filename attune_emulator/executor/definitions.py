"""Definition rows (action, pack, runtime) cached by id, shared by the executor and the worker.

Both read an execution's action (and its runtime, the worker also its pack) for every execution;
these rows change rarely. A cached row is reused only while its version is the current one:
PostgreSQL's `xmin`, which every UPDATE of the row changes, is returned by the statement that
claims the execution, so an edited definition is read again at once.
"""
from __future__ import annotations

import threading

from ..db import Database


class DefinitionCache:
    """Rows by (table, id) with their version; cleared when `limit` rows are held."""

    TABLES = ("action", "pack", "runtime")

    def __init__(self, db: Database, limit: int = 2000):
        self.db = db
        self.limit = limit
        self._rows: dict[tuple[str, int], tuple[str, dict]] = {}
        self._lock = threading.Lock()

    def get(self, table: str, row_id: int | None, version: str | None,
            cur=None) -> tuple[dict | None, str | None]:
        """(row, version): the cached row when cached at `version`, else read now, with `cur`
        (the caller's transaction) when given (None when the row does not exist). The row is the
        caller's own copy."""
        assert table in self.TABLES
        if row_id is None:
            return None, None
        if version is not None:
            with self._lock:
                hit = self._rows.get((table, row_id))
            if hit is not None and hit[0] == version:
                return dict(hit[1]), version
        sql = f"SELECT xmin::text AS _version, * FROM {table} WHERE id = %s"
        if cur is not None:
            cur.execute(sql, (row_id,))
            row = cur.fetchone()
        else:
            row = self.db.one(sql, (row_id,))
        if row is None:
            return None, None
        current = row.pop("_version")
        with self._lock:
            if len(self._rows) >= self.limit:
                self._rows.clear()
            self._rows[(table, row_id)] = (current, row)
        return dict(row), current
