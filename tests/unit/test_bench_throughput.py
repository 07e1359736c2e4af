"""Self-tests of bench/throughput.py's pure parts."""
from bench.throughput import _tally


def test_tally_counts_completions_by_their_own_timestamp_inside_the_window():
    row = {"_w0": 100.0, "_w1": 102.0, "window_s": 2.0}
    term = {1: ("completed", 100.5), 2: ("completed", 101.9), 3: ("failed", 101.0),
            4: ("completed", 102.4),   # finished after the window: not counted
            5: ("completed", 99.9)}    # an earlier level's execution
    _tally(row, term)
    assert (row["completed_per_s"], row["terminal_per_s"]) == (1.0, 1.5)


def test_tally_of_an_empty_window():
    row = {"_w0": 0.0, "_w1": 0.0, "window_s": 0}
    _tally(row, {1: ("completed", 0.0)})
    assert (row["completed_per_s"], row["terminal_per_s"]) == (None, None)
