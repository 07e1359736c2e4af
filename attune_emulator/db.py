"""PostgreSQL access shared by every service (psycopg2, schema `attune`).

`Database.tx()` yields a RealDictCursor inside one transaction: commit on success, rollback on
error. JSONB columns come back as Python values; write them with `J(value)`.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import psycopg2.pool

log = logging.getLogger(__name__)

SCHEMA_FILE = Path(__file__).with_name("schema.sql")


def _default(obj: Any) -> Any:
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return iso(obj) if isinstance(obj, _dt.datetime) else obj.isoformat()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(value: Any) -> str:
    return json.dumps(value, default=_default, separators=(",", ":"))


def J(value: Any) -> psycopg2.extras.Json:
    """Wrap a value for a JSONB column."""
    return psycopg2.extras.Json(value, dumps=dumps)


def iso(ts: _dt.datetime | None) -> str | None:
    """RFC 3339 UTC with microseconds and a `Z`, as upstream serialises chrono timestamps."""
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=_dt.timezone.utc)
    return ts.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(text: str) -> _dt.datetime:
    """Parse an RFC 3339 timestamp (accepts a trailing `Z`)."""
    value = _dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.timezone.utc)
    return value


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


class Database:
    """A small thread-safe pool of connections with `search_path = attune, public`."""

    def __init__(self, url: str, minconn: int = 1, maxconn: int = 20, schema: str = "attune",
                 connect_timeout: int = 10):
        self.url = url
        self.schema = schema
        self.connect_timeout = connect_timeout
        self._minconn = minconn
        self._maxconn = maxconn
        self._pool: psycopg2.pool.ThreadedConnectionPool | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg, maxconn: int | None = None) -> "Database":
        return cls(cfg.database_url,
                   minconn=1,
                   maxconn=maxconn or int(cfg.get("database.max_connections", 20)),
                   schema=cfg.get("database.schema", "attune"),
                   connect_timeout=int(cfg.get("database.connect_timeout", 10)))

    def _options(self) -> dict:
        return {"options": f"-c search_path={self.schema},public",
                "connect_timeout": self.connect_timeout}

    def connect(self, autocommit: bool = False) -> psycopg2.extensions.connection:
        """A dedicated connection outside the pool (LISTEN, long-lived loops)."""
        conn = psycopg2.connect(self.url, **self._options())
        conn.autocommit = autocommit
        return conn

    def _get_pool(self) -> psycopg2.pool.ThreadedConnectionPool:
        with self._lock:
            if self._pool is None:
                self._pool = psycopg2.pool.ThreadedConnectionPool(
                    self._minconn, self._maxconn, self.url, **self._options())
            return self._pool

    @contextlib.contextmanager
    def tx(self) -> Iterator[psycopg2.extras.RealDictCursor]:
        pool = self._get_pool()
        conn = None
        for attempt in range(50):
            try:
                conn = pool.getconn()
                break
            except psycopg2.pool.PoolError:
                time.sleep(0.02 * (attempt + 1))
        if conn is None:
            raise psycopg2.OperationalError("database connection pool exhausted")
        broken = False
        try:
            if conn.closed:
                raise psycopg2.InterfaceError("connection already closed")
            with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                yield cur
            conn.commit()
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            broken = True
            raise
        except BaseException:
            with contextlib.suppress(Exception):
                conn.rollback()
            raise
        finally:
            pool.putconn(conn, close=broken or bool(conn.closed))

    # Convenience wrappers: one statement, one transaction.
    def one(self, sql: str, params: Any = None) -> dict | None:
        with self.tx() as cur:
            cur.execute(sql, params)
            return cur.fetchone() if cur.description else None

    def all(self, sql: str, params: Any = None) -> list[dict]:
        with self.tx() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []

    def execute(self, sql: str, params: Any = None) -> int:
        with self.tx() as cur:
            cur.execute(sql, params)
            return cur.rowcount

    def ping(self) -> bool:
        try:
            self.one("SELECT 1 AS ok")
            return True
        except psycopg2.Error:
            return False

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.closeall()
                self._pool = None


def apply_schema(db: Database) -> None:
    """Create or update the schema (idempotent)."""
    conn = db.connect(autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(741852)")
            try:
                cur.execute(SCHEMA_FILE.read_text())
            finally:
                cur.execute("SELECT pg_advisory_unlock(741852)")
    finally:
        conn.close()
