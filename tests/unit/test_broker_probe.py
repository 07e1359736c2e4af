"""broker_probe: percentile, depth violations, grid offsets, the sampler loop, queue names, and
the 100-task chain definition of T3.25."""
import threading
from datetime import datetime, timedelta, timezone

import pytest

from tests.helpers.broker_probe import (EMBEDDED_EXECUTOR_QUEUES, UPSTREAM_EXECUTOR_QUEUES,
                                        Sampler, chain_definition, undrained_spans,
                                        grid_offsets, handoff, percentile, worker_queue)
from tests.helpers.polling import wait_until

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 95) == 95
    assert percentile(values, 100) == 100
    assert percentile(values, 50) == 50
    assert percentile([0.3, 0.1, 0.2], 95) == 0.3
    assert percentile([7.0], 95) == 7.0


@pytest.mark.parametrize("bad", [0, -1, 101])
def test_percentile_rejects_bad_ranks(bad):
    with pytest.raises(ValueError):
        percentile([1, 2], bad)


def test_percentile_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        percentile([], 95)


def test_grid_offsets_measure_each_fire_against_its_own_mark():
    fires = [T0 + timedelta(seconds=1.1), T0 + timedelta(seconds=1.9), T0 + timedelta(seconds=3)]
    assert [round(o, 3) for o in grid_offsets(fires, T0, 1)] == [0.1, -0.1, 0.0]
    # a drift accumulates into growing offsets instead of hiding in 1 s gaps
    drifting = [T0 + timedelta(seconds=k * 1.2) for k in range(1, 6)]
    assert [round(o, 3) for o in grid_offsets(drifting, T0, 1)] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert [round(o, 3) for o in grid_offsets([T0 + timedelta(seconds=6)], T0, 2, first_k=3)] == [0.0]


def test_queue_names():
    assert worker_queue(7) == "worker.7.executions"
    assert "executor.requests" in EMBEDDED_EXECUTOR_QUEUES
    assert "attune.execution.requests.queue" in UPSTREAM_EXECUTOR_QUEUES
    assert not set(EMBEDDED_EXECUTOR_QUEUES) & set(UPSTREAM_EXECUTOR_QUEUES)


def test_sampler_records_values_and_errors_until_stopped():
    calls = {"n": 0}

    def fn():
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return calls["n"]

    sampler = Sampler(fn, 0.01).start()
    wait_until(lambda: len(sampler.samples) >= 4, timeout=5, description="4 samples")
    samples = sampler.stop()
    assert [s.value for s in samples[:3]] == [1, None, 3]
    assert samples[1].error == "RuntimeError: boom" and sampler.errors() == ["RuntimeError: boom"]
    assert all(a.t <= b.t for a, b in zip(samples, samples[1:]))
    count = len(sampler.samples)
    assert sampler._thread is not None and not sampler._thread.is_alive()
    assert len(sampler.samples) == count  # nothing recorded after stop()


def test_sampler_passes_setup_state_and_tears_it_down():
    closed = threading.Event()
    sampler = Sampler(lambda state: state["k"], 0.01, setup=lambda: {"k": 42},
                      teardown=lambda state: closed.set())
    with sampler:
        wait_until(lambda: sampler.samples, timeout=5, description="a sample")
    assert sampler.samples[0].value == 42 and closed.is_set()


def test_sampler_records_a_failed_setup_and_takes_no_sample():
    def setup():
        raise ConnectionError("no broker")

    sampler = Sampler(lambda state: 1, 0.01, setup=setup).start()
    sampler.stop()
    assert sampler.setup_error == "ConnectionError: no broker" and sampler.samples == []


def test_chain_definition_links_each_task_to_the_next():
    d = chain_definition(3)
    assert [t["name"] for t in d["tasks"]] == ["t001", "t002", "t003"]
    assert d["tasks"][0]["next"] == [{"when": "{{ succeeded() }}", "do": ["t002"]}]
    assert "next" not in d["tasks"][2]
    assert d["tasks"][1]["input"] == {"message": "2"} and d["tasks"][1]["action"] == "core.echo"
    assert d["output_map"] == {"last": "{{ task.t003.stdout }}"}
    prev = {"id": 1, "started_at": "2026-01-01T00:00:00.000Z", "result": {"duration_ms": 250}}
    nxt = {"started_at": "2026-01-01T00:00:00.400Z"}
    assert round(handoff(prev, nxt), 3) == 0.15


def test_undrained_spans_pass_bursts_that_drain_and_flag_a_backlog_that_does_not():
    burst = [(0.0, {"q": 0}), (1.0, {"q": 11}), (2.0, {"q": 4}), (3.0, {"q": 0}), (4.0, {"q": 2})]
    assert undrained_spans(burst, 5.0) == []
    growing = [(float(t), {"q": t + 1}) for t in range(8)] + [(8.0, {"q": 0})]
    assert undrained_spans(growing, 5.0) == [("q", 0.0, 8.0, 1)]
    never = [(float(t), {"q": 3, "gone": None}) for t in range(7)]
    assert undrained_spans(never, 5.0) == [("q", 0.0, 6.0, 3)]
