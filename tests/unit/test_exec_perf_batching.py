"""Batch consumption (broker.Consumer batch_handler), prepared statements (executor/prepared.py)
and the definition cache (executor/definitions.py): pure logic with fakes, no broker or database."""
import psycopg2.errors
import pytest

from attune_emulator import broker
from attune_emulator.executor import prepared
from attune_emulator.executor.definitions import DefinitionCache


class FakeChannel:
    def __init__(self):
        self.calls = []

    def basic_ack(self, tag, multiple=False):
        self.calls.append(("ack", tag, multiple))

    def basic_reject(self, tag, requeue=True):
        self.calls.append(("reject", tag, requeue))


def consumer(handler, batch_handler):
    return broker.Consumer("amqp://unused", "q", [], handler, prefetch=8,
                           batch_handler=batch_handler)


def test_a_batch_is_handled_in_one_call_and_acked_up_to_its_last_tag():
    seen = []
    c = consumer(lambda *_: pytest.fail("single handler used"), seen.append)
    ch = FakeChannel()
    c._run_batch(ch, [(3, "k", {"execution_id": 1}), (4, "k", {"execution_id": 2})])
    assert seen == [[("k", {"execution_id": 1}), ("k", {"execution_id": 2})]]
    assert ch.calls == [("ack", 4, True)]


def test_a_failing_batch_falls_back_to_one_by_one():
    handled = []

    def single(_rk, body):
        if body["n"] == 2:
            raise RuntimeError("bad message")
        handled.append(body["n"])

    def batch(_items):
        raise RuntimeError("batch failed")

    c = consumer(single, batch)
    ch = FakeChannel()
    c._run_batch(ch, [(1, "k", {"n": 1}), (2, "k", {"n": 2}), (3, "k", {"n": 3})])
    assert handled == [1, 3]
    assert ch.calls == [("ack", 1, False), ("reject", 2, False), ("ack", 3, False)]


def test_manual_ack_consumers_never_batch():
    c = broker.Consumer("amqp://unused", "q", [], lambda *a: None, manual_ack=True,
                        batch_handler=lambda items: None)
    assert c.batch_handler is None


# ------------------------------------------------------------------ prepared statements
class FakeConn:
    closed = 0
    autocommit = True

    def __init__(self):
        self.prepared = set()
        self.stale = set()

    def rollback(self):
        pass


class FakeCursor:
    def __init__(self, conn):
        self.connection = conn
        self.sql = []
        self.description = None

    def execute(self, sql, params=None):
        self.sql.append((sql, params))
        sql = sql.split("; ", 1)[-1]
        if sql.startswith("PREPARE "):
            self.connection.prepared.add(sql.split()[1])
        elif sql.startswith("DEALLOCATE "):
            self.connection.prepared.discard(sql.split()[1])
        elif sql.startswith("EXECUTE "):
            name = sql.split()[1]
            if name in self.connection.stale:
                self.connection.stale.discard(name)
                raise psycopg2.errors.FeatureNotSupported("cached plan must not change result type")
            assert name in self.connection.prepared


def test_statement_text_declares_types_and_numbers_parameters():
    st = prepared.Statement("t_one", "SELECT * FROM t WHERE a = %(a)s AND b = ANY(%(b)s) "
                                     "OR a = %(a)s", {"a": "bigint", "b": "text[]"})
    assert st.prepare_sql == ("PREPARE t_one (bigint, text[]) AS SELECT * FROM t WHERE a = $1 "
                              "AND b = ANY($2) OR a = $1")
    assert st.execute_sql == "EXECUTE t_one (%s, %s)"
    with pytest.raises(ValueError):
        prepared.Statement("t_two", "SELECT %(x)s", {})


def test_prepared_once_per_connection():
    st = prepared.Statement("t_three", "SELECT %(a)s", {"a": "int"})
    conn_a, conn_b = FakeConn(), FakeConn()
    for conn in (conn_a, conn_a, conn_b):
        cur = FakeCursor(conn)
        st.execute(cur, {"a": 1})
    assert conn_a.prepared == conn_b.prepared == {"t_three"}


def test_stale_statement_is_deallocated_and_reported():
    st = prepared.Statement("t_four", "SELECT %(a)s", {"a": "int"})
    conn = FakeConn()
    st.execute(FakeCursor(conn), {"a": 1})
    conn.stale.add("t_four")
    cur = FakeCursor(conn)
    with pytest.raises(prepared.Stale):
        st.execute(cur, {"a": 1})
    assert [s for s, _ in cur.sql] == ["EXECUTE t_four (%s)", "DEALLOCATE t_four"]
    cur = FakeCursor(conn)
    st.execute(cur, {"a": 2})  # prepared afresh
    assert [s.split("; ")[-1].split()[0] for s, _ in cur.sql] == ["PREPARE", "EXECUTE"]
    assert cur.sql[0][0].startswith("SET plan_cache_mode = force_generic_plan; PREPARE")


# ------------------------------------------------------------------ definition cache
class FakeDb:
    def __init__(self, rows):
        self.rows = rows
        self.reads = 0

    def one(self, sql, params):
        self.reads += 1
        row = self.rows.get(params[0])
        return dict(row) if row else None


def test_cached_row_is_reused_only_at_the_same_version():
    db = FakeDb({7: {"_version": "100", "id": 7, "ref": "p.a"}})
    cache = DefinitionCache(db)
    row, version = cache.get("action", 7, "100")
    assert (row, version, db.reads) == ({"id": 7, "ref": "p.a"}, "100", 1)
    row["ref"] = "mutated by a caller"
    assert cache.get("action", 7, "100") == ({"id": 7, "ref": "p.a"}, "100")
    assert db.reads == 1
    db.rows[7] = {"_version": "101", "id": 7, "ref": "p.b"}
    assert cache.get("action", 7, "101") == ({"id": 7, "ref": "p.b"}, "101")
    assert cache.get("action", 7, None)[0]["ref"] == "p.b"  # no version known: read again
    assert db.reads == 3


def test_missing_rows_and_ids():
    cache = DefinitionCache(FakeDb({}))
    assert cache.get("runtime", None, "1") == (None, None)
    assert cache.get("runtime", 5, "1") == (None, None)
    with pytest.raises(AssertionError):
        cache.get("identity", 1, None)
