"""broker.Consumer: a handler aborted by a database lock conflict is run again; other errors are
not retried."""
import pytest

from attune_emulator import broker, db


class Conflict(Exception):
    def __init__(self, pgcode):
        super().__init__(f"conflict {pgcode}\nDETAIL: ...")
        self.pgcode = pgcode


def _consumer(handler):
    return broker.Consumer("amqp://unused", "q", [], handler)


def test_transient_conflicts_are_recognised_by_sqlstate():
    assert db.is_transient_conflict(Conflict("40P01"))   # deadlock detected
    assert db.is_transient_conflict(Conflict("40001"))   # serialization failure
    assert not db.is_transient_conflict(Conflict("23503"))
    assert not db.is_transient_conflict(ValueError("x"))


def test_a_deadlocked_handler_runs_again_until_it_succeeds():
    calls = []

    def handler(key, message):
        calls.append((key, message))
        if len(calls) < 3:
            raise Conflict("40P01")

    _consumer(handler)._handle_retrying("execution.requested", {"execution_id": 1})
    assert len(calls) == 3


def test_retries_are_bounded_and_other_errors_are_not_retried():
    calls = []

    def always(key, message):
        calls.append(1)
        raise Conflict("40P01")

    with pytest.raises(Conflict):
        _consumer(always)._handle_retrying("k", {})
    assert len(calls) == broker.Consumer.TRANSIENT_ATTEMPTS

    calls.clear()

    def broken(key, message):
        calls.append(1)
        raise KeyError("execution_id")

    with pytest.raises(KeyError):
        _consumer(broken)._handle_retrying("k", {})
    assert len(calls) == 1
