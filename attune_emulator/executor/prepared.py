"""Per-execution statements of the executor and the worker, prepared once per connection.

PostgreSQL spent more time planning these statements than running them (the worker's claim:
~0.7 ms planning, ~0.3 ms executing); PREPARE/EXECUTE plans once per pooled connection (a generic
plan after five runs). Written with `%(name)s` placeholders like any other statement; the
parameter types are declared.

A prepared statement can go stale when the schema changes under it ("cached plan must not change
result type"): `execute` then forgets it on that connection and raises `Stale`; the caller's
transaction is lost, so the caller runs its work again (it is prepared afresh).
"""
from __future__ import annotations

import re
import threading
import weakref
from typing import Any

import psycopg2
import psycopg2.errors


class Stale(Exception):
    """The prepared statement no longer fits the schema; run the transaction again."""


_STALE = (psycopg2.errors.FeatureNotSupported, psycopg2.errors.InvalidSqlStatementName)
_done: "weakref.WeakKeyDictionary[Any, set[str]]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


class Statement:
    def __init__(self, name: str, sql: str, types: dict[str, str]):
        """`types`: parameter name -> PostgreSQL type, for every `%(name)s` in `sql`."""
        self.name = name
        self.names = list(types)
        text = sql
        for i, param in enumerate(self.names, 1):
            text = text.replace(f"%({param})s", f"${i}")
        left = re.findall(r"%\((\w+)\)s", text)
        if left:
            raise ValueError(f"statement {name}: no type for {left}")
        self.prepare_sql = (f"PREPARE {name} ({', '.join(types[n] for n in self.names)}) AS "
                            f"{text}")
        self.execute_sql = f"EXECUTE {name} ({', '.join(['%s'] * len(self.names))})"

    def execute(self, cur, args: dict) -> None:
        """Run it with `cur` (its connection prepares it the first time)."""
        conn = cur.connection
        with _lock:
            done = _done.setdefault(conn, set())
            ready = self.name in done
        try:
            if not ready:
                # Generic plans: with an array parameter PostgreSQL otherwise keeps planning each
                # run (its custom plan looks cheaper). Affects only prepared statements; the
                # services send everything else as plain queries with inline values.
                cur.execute("SET plan_cache_mode = force_generic_plan; " + self.prepare_sql)
                with _lock:
                    done.add(self.name)
            cur.execute(self.execute_sql, [args[n] for n in self.names])
        except _STALE as exc:
            with _lock:
                done.discard(self.name)
            if isinstance(exc, psycopg2.errors.FeatureNotSupported) and not conn.closed:
                if not conn.autocommit:
                    conn.rollback()  # the transaction is lost anyway; DEALLOCATE needs a live one
                cur.execute(f"DEALLOCATE {self.name}")
            raise Stale(f"prepared statement {self.name}: {str(exc).strip()}") from exc

    def one(self, cur, args: dict) -> dict | None:
        self.execute(cur, args)
        return cur.fetchone() if cur.description else None

    def all(self, cur, args: dict) -> list[dict]:
        self.execute(cur, args)
        return list(cur.fetchall()) if cur.description else []


def run(db, statement: Statement, args: dict, fetch: str = "one", attempts: int = 2):
    """`statement` on its own (autocommit: no BEGIN/COMMIT round trips), run again once when it
    went stale. `fetch`: one | all."""
    for attempt in range(attempts):
        with db.tx() as cur:
            conn = cur.connection
            conn.autocommit = True
            try:
                return statement.one(cur, args) if fetch == "one" else statement.all(cur, args)
            except Stale:
                if attempt == attempts - 1:
                    raise
            finally:
                if not conn.closed:
                    conn.autocommit = False
    return None
