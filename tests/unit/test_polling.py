"""polling: one wait primitive, early stop on a wrong terminal status, clear failure messages."""
import time

import pytest
import requests

from tests.helpers.polling import (WaitAborted, WaitTimeout, wait_for_execution, wait_for_items,
                                   wait_for_status, wait_until)


def test_returns_the_first_done_value():
    values = iter([0, 0, 3, 4])
    assert wait_until(lambda: next(values), timeout=2, description="a value") == 3


def test_custom_done_predicate_may_accept_falsy_values():
    values = iter([None, 0])
    assert wait_until(lambda: next(values), timeout=2, description="zero",
                      done=lambda v: v == 0) == 0


def test_timeout_message_has_description_time_and_last_value():
    start = time.monotonic()
    with pytest.raises(WaitTimeout) as err:
        wait_until(lambda: {"status": "running"}, timeout=0.4, description="execution 42 done",
                   done=lambda v: v["status"] == "completed")
    elapsed = time.monotonic() - start
    msg = str(err.value)
    assert "execution 42 done" in msg and "'status': 'running'" in msg
    assert " s " in msg or " s (" in msg
    assert 0.35 <= elapsed < 1.5
    assert isinstance(err.value, AssertionError)


def test_last_value_is_trimmed():
    with pytest.raises(WaitTimeout) as err:
        wait_until(lambda: "x" * 5000, timeout=0.1, description="never", done=lambda v: False)
    assert len(str(err.value)) < 800


def test_interval_grows_but_polls_often_at_first():
    calls = []
    wait_until(lambda: calls.append(time.monotonic()) or len(calls) >= 4, timeout=3,
               description="four calls")
    assert calls[-1] - calls[0] < 0.6  # 0.05 + 0.1 + 0.2


def test_connection_errors_are_retried():
    state = {"n": 0}

    def probe():
        state["n"] += 1
        if state["n"] < 3:
            raise requests.exceptions.ConnectionError("refused")
        return "up"

    assert wait_until(probe, timeout=3, description="api back") == "up"


def test_connection_error_is_reported_as_last_value():
    def probe():
        raise requests.exceptions.ConnectionError("refused")

    with pytest.raises(WaitTimeout, match="ConnectionError: refused"):
        wait_until(probe, timeout=0.2, description="api back")


def test_other_exceptions_propagate_at_once_unless_ignored():
    with pytest.raises(KeyError):
        wait_until(lambda: {}["x"], timeout=5, description="x")
    values = iter([KeyError("x"), "ok"])

    def probe():
        v = next(values)
        if isinstance(v, Exception):
            raise v
        return v

    assert wait_until(probe, timeout=2, description="x", ignore=(KeyError,)) == "ok"


class FakeClient:
    def __init__(self, statuses, result=None):
        self.statuses = list(statuses)
        self.result = result
        self.calls = 0

    def get_execution(self, exec_id):
        self.calls += 1
        status = self.statuses[min(self.calls - 1, len(self.statuses) - 1)]
        return {"id": exec_id, "action_ref": "p.a", "status": status, "result": self.result}


def test_wait_for_execution_returns_the_execution():
    client = FakeClient(["requested", "running", "completed"], {"exit_code": 0})
    ex = wait_for_execution(client, 7, timeout=5)
    assert ex["status"] == "completed" and client.calls == 3


def test_wait_for_execution_stops_at_once_on_another_terminal_status():
    client = FakeClient(["running", "failed"], {"exit_code": 1, "error": "boom"})
    start = time.monotonic()
    with pytest.raises(WaitAborted) as err:
        wait_for_execution(client, 7, timeout=30)
    assert time.monotonic() - start < 1
    msg = str(err.value)
    assert "execution 7" in msg and "`failed`" in msg and "boom" in msg and "completed" in msg


def test_wait_for_execution_accepts_a_set_of_statuses():
    client = FakeClient(["running", "failed"])
    assert wait_for_execution(client, 7, status={"failed", "timeout"}, timeout=5)["status"] == "failed"


def test_wait_for_execution_timeout_names_the_last_status():
    client = FakeClient(["running"], {"partial": True})
    with pytest.raises(WaitTimeout) as err:
        wait_for_execution(client, 42, timeout=0.3)
    msg = str(err.value)
    assert "execution 42 (p.a) still `running`" in msg and "partial" in msg


def test_wait_for_items_exact_and_overcount():
    pages = iter([{"items": []}, {"items": [1]}, {"items": [1, 2]}])
    assert wait_for_items(lambda: next(pages), 2, timeout=3, description="events") == [1, 2]
    with pytest.raises(WaitAborted, match="expected exactly 1, found 2"):
        wait_for_items(lambda: {"items": [1, 2]}, 1, timeout=5, description="events")
    assert wait_for_items(lambda: [1, 2, 3], 2, timeout=1, description="events",
                          exact=False) == [1, 2, 3]


def test_wait_for_items_timeout():
    with pytest.raises(WaitTimeout, match="events to number exactly 2"):
        wait_for_items(lambda: {"items": [1]}, 2, timeout=0.2, description="events")


def test_wait_for_status_generic_with_terminal_abort():
    objs = iter([{"status": "pending"}, {"status": "responded"}])
    assert wait_for_status(lambda: next(objs), "responded", timeout=2,
                           description="inquiry 3")["status"] == "responded"
    with pytest.raises(WaitAborted, match="inquiry 3 reached `timeout`"):
        wait_for_status(lambda: {"status": "timeout"}, "responded", timeout=5,
                        description="inquiry 3", terminal={"timeout", "cancelled"})
