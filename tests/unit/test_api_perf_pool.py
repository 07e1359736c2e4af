"""Unit tests of the connection pool behind Database (attune_emulator/db.py `_Pool`): connections
are kept and reused instead of reopened, the size bound holds, and a broken connection flushes
the idle ones (a restarted server leaves them all dead)."""
import threading
import time

import psycopg2
import psycopg2.extensions
import pytest

from attune_emulator import db as dbmod

IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE


class FakeConn:
    def __init__(self, n):
        self.n = n
        self.closed = 0
        self.status = IDLE
        self.rollbacks = 0
        self.info = self

    @property
    def transaction_status(self):
        return self.status

    def rollback(self):
        self.rollbacks += 1
        self.status = IDLE

    def close(self):
        self.closed = 1


class Connector:
    def __init__(self):
        self.made = []

    def __call__(self):
        conn = FakeConn(len(self.made))
        self.made.append(conn)
        return conn


def test_connections_are_kept_and_reused_most_recent_first():
    connect = Connector()
    pool = dbmod._Pool(connect, maxconn=5)
    a, b = pool.get(), pool.get()
    pool.put(a)
    pool.put(b)
    assert pool.get() is b and pool.get() is a
    assert len(connect.made) == 2 and not a.closed and not b.closed


def test_a_connection_left_in_a_transaction_is_rolled_back_before_reuse():
    pool = dbmod._Pool(Connector(), maxconn=2)
    conn = pool.get()
    conn.status = psycopg2.extensions.TRANSACTION_STATUS_INTRANS
    pool.put(conn)
    assert conn.rollbacks == 1 and pool.get() is conn


def test_size_bound_waits_for_a_free_connection_then_times_out():
    pool = dbmod._Pool(Connector(), maxconn=1)
    held = pool.get()
    threading.Timer(0.1, pool.put, args=(held,)).start()
    assert pool.get(timeout=2) is held
    t0 = time.monotonic()
    with pytest.raises(psycopg2.OperationalError, match="exhausted"):
        pool.get(timeout=0.2)
    assert time.monotonic() - t0 >= 0.2


def test_a_broken_connection_flushes_the_idle_ones():
    connect = Connector()
    pool = dbmod._Pool(connect, maxconn=5)
    conns = [pool.get() for _ in range(3)]
    for conn in conns[:2]:
        pool.put(conn)
    pool.put(conns[2], close=True)
    assert all(conn.closed for conn in conns)
    assert pool.get() is not None and len(connect.made) == 4


def test_failed_connect_frees_its_slot():
    calls = {"n": 0}

    def connect():
        calls["n"] += 1
        if calls["n"] == 1:
            raise psycopg2.OperationalError("refused")
        return FakeConn(calls["n"])

    pool = dbmod._Pool(connect, maxconn=1)
    with pytest.raises(psycopg2.OperationalError):
        pool.get()
    assert pool.get(timeout=0.1).n == 2


def test_long_idle_connections_are_closed():
    pool = dbmod._Pool(Connector(), maxconn=5, idle_seconds=0.05)
    old, new = pool.get(), pool.get()
    pool.put(old)
    time.sleep(0.1)
    pool.put(new)
    assert old.closed and not new.closed


def test_closeall_closes_idle_and_refuses_new_work():
    pool = dbmod._Pool(Connector(), maxconn=2)
    conn = pool.get()
    pool.put(conn)
    pool.closeall()
    assert conn.closed
    with pytest.raises(psycopg2.OperationalError):
        pool.get()
