"""PostgreSQL access shared by every service (psycopg2, schema `attune`).

`Database.tx()` yields a DictCursor (rows as dicts) inside one transaction: commit on success, rollback on
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


# PostgreSQL's answers to a lock conflict between concurrent transactions (deadlock detected,
# serialization failure): the transaction was rolled back and may simply be run again.
TRANSIENT_PGCODES = frozenset({"40P01", "40001"})


def is_transient_conflict(exc: BaseException) -> bool:
    return getattr(exc, "pgcode", None) in TRANSIENT_PGCODES


class DictCursor(psycopg2.extensions.cursor):
    """Rows as plain dicts (column name -> value), like RealDictCursor but built from the C-level
    tuples in one step: RealDictRow assigns column by column in Python, which dominated the
    cost of wide listings."""

    def _names(self) -> list[str]:
        return [d[0] for d in self.description]

    def fetchone(self) -> dict | None:
        row = super().fetchone()
        return None if row is None else dict(zip(self._names(), row))

    def fetchmany(self, size: int | None = None) -> list[dict]:
        rows = super().fetchmany(size) if size is not None else super().fetchmany()
        names = self._names()
        return [dict(zip(names, r)) for r in rows]

    def fetchall(self) -> list[dict]:
        rows = super().fetchall()
        if not rows:
            return []
        names = self._names()
        return [dict(zip(names, r)) for r in rows]

    def __iter__(self):
        return iter(self.fetchall())


class PoolError(psycopg2.OperationalError):
    """No connection became free in time."""


class _Pool:
    """Lazily opened connections, kept open once made (up to `maxconn`).

    psycopg2's own pools close every connection returned beyond `minconn`, so any concurrency
    meant a new TCP + SCRAM handshake per statement; this keeps them instead and hands the most
    recently used one out first (LIFO). Connections idle longer than `idle_seconds` are closed
    so a burst does not pin database backends forever.
    """

    def __init__(self, connect, maxconn: int, idle_seconds: float = 60.0):
        self._connect = connect
        self._maxconn = max(1, maxconn)
        self._idle_seconds = idle_seconds
        self._idle: list[tuple[float, psycopg2.extensions.connection]] = []
        self._busy = 0
        self._cond = threading.Condition()
        self.closed = False

    def get(self, timeout: float = 25.0) -> psycopg2.extensions.connection:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self.closed:
                    raise PoolError("connection pool is closed")
                while self._idle:
                    _, conn = self._idle.pop()
                    if not conn.closed:
                        self._busy += 1
                        return conn
                if self._busy < self._maxconn:
                    self._busy += 1
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PoolError("database connection pool exhausted")
                self._cond.wait(left)
        try:
            return self._connect()
        except BaseException:
            with self._cond:
                self._busy -= 1
                self._cond.notify()
            raise

    def put(self, conn: psycopg2.extensions.connection, close: bool = False) -> None:
        if not close and not conn.closed:
            status = conn.info.transaction_status
            if status == psycopg2.extensions.TRANSACTION_STATUS_UNKNOWN:
                close = True
            elif status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
                try:
                    conn.rollback()
                except psycopg2.Error:
                    close = True
        now = time.monotonic()
        stale: list = []
        with self._cond:
            self._busy -= 1
            if close or conn.closed or self.closed:
                stale.append(conn)
                # a broken connection usually means a server restart: the idle ones are dead too
                stale.extend(c for _, c in self._idle)
                self._idle.clear()
            else:
                self._idle.append((now, conn))
            # the oldest idle connections sit at the bottom of the LIFO stack
            while len(self._idle) > 1 and now - self._idle[0][0] > self._idle_seconds:
                stale.append(self._idle.pop(0)[1])
            self._cond.notify()
        for c in stale:
            with contextlib.suppress(Exception):
                c.close()

    def closeall(self) -> None:
        with self._cond:
            self.closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for _, c in idle:
            with contextlib.suppress(Exception):
                c.close()


class Database:
    """A small thread-safe pool of connections with `search_path = attune, public`."""

    def __init__(self, url: str, minconn: int = 1, maxconn: int = 20, schema: str = "attune",
                 connect_timeout: int = 10):
        self.url = url
        self.schema = schema
        self.connect_timeout = connect_timeout
        self._minconn = minconn
        self._maxconn = maxconn
        self._pool: _Pool | None = None
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

    def _get_pool(self) -> _Pool:
        with self._lock:
            if self._pool is None:
                self._pool = _Pool(self.connect, self._maxconn)
            return self._pool

    @contextlib.contextmanager
    def _conn(self) -> Iterator[psycopg2.extensions.connection]:
        pool = self._get_pool()
        conn = pool.get()
        broken = False
        try:
            if conn.closed:
                raise psycopg2.InterfaceError("connection already closed")
            yield conn
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            broken = True
            raise
        finally:
            pool.put(conn, close=broken or bool(conn.closed))

    @contextlib.contextmanager
    def tx(self) -> Iterator[DictCursor]:
        with self._conn() as conn:
            try:
                with conn.cursor(cursor_factory=DictCursor) as cur:
                    yield cur
                conn.commit()
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                raise
            except BaseException:
                with contextlib.suppress(Exception):
                    conn.rollback()
                raise

    @contextlib.contextmanager
    def _single(self) -> Iterator[DictCursor]:
        """One statement in autocommit mode: the same atomicity as BEGIN; stmt; COMMIT, in one
        round trip instead of three."""
        with self._conn() as conn:
            conn.autocommit = True
            try:
                with conn.cursor(cursor_factory=DictCursor) as cur:
                    yield cur
            finally:
                if not conn.closed:
                    conn.autocommit = False

    # Convenience wrappers: one statement, one transaction.
    def one(self, sql: str, params: Any = None) -> dict | None:
        with self._single() as cur:
            cur.execute(sql, params)
            return cur.fetchone() if cur.description else None

    def all(self, sql: str, params: Any = None) -> list[dict]:
        with self._single() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []

    def execute(self, sql: str, params: Any = None) -> int:
        with self._single() as cur:
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
