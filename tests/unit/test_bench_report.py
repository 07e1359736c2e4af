"""Self-tests of the benchmark's pure parts (bench/report.py): percentiles, summaries,
timestamps, target comparison and table formatting."""
import json
import math

import pytest

from bench import report
from bench.report import Target


def test_percentile_interpolates_between_closest_ranks():
    data = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert report.percentile(data, 0) == 1
    assert report.percentile(data, 100) == 10
    assert report.percentile(data, 50) == pytest.approx(5.5)
    assert report.percentile(data, 95) == pytest.approx(9.55)
    assert report.percentile(data, 99) == pytest.approx(9.91)


def test_percentile_ignores_input_order_and_handles_edges():
    assert report.percentile([10, 1, 5], 50) == 5
    assert report.percentile([42], 95) == 42
    assert report.percentile([], 50) is None
    with pytest.raises(ValueError):
        report.percentile([1, 2], 101)


def test_summarize_gives_the_distribution():
    s = report.summarize(range(1, 101))
    assert s["n"] == 100 and s["min"] == 1 and s["max"] == 100
    assert s["p50"] == pytest.approx(50.5)
    assert s["p95"] == pytest.approx(95.05)
    assert s["p99"] == pytest.approx(99.01)
    assert s["mean"] == pytest.approx(50.5)
    empty = report.summarize([])
    assert empty == {"n": 0, "min": None, "p50": None, "p95": None, "p99": None, "max": None,
                     "mean": None}


def test_ms_between_parses_api_timestamps():
    assert report.ms_between("2026-01-01T00:00:00Z", "2026-01-01T00:00:00.250Z") == \
        pytest.approx(250)
    # offsets, naive (UTC) and microsecond / nanosecond-ish fractions
    assert report.ms_between("2026-01-01T01:00:00+01:00", "2026-01-01T00:00:01.5") == \
        pytest.approx(1500)
    assert report.ms_between("2026-01-01T00:00:00.123456789Z", "2026-01-01T00:00:00.124456Z") == \
        pytest.approx(1.0)
    assert report.ms_between(None, "2026-01-01T00:00:00Z") is None
    assert report.ms_between(0, 1.5) == pytest.approx(1500)


def test_target_check_marks_pass_short_and_not_measured():
    at_most = Target("a.p95", "latency", "<=", 100, "ms")
    at_least = Target("b", "rate", ">=", 100, "/s")
    assert at_most.check(99.9) == "pass" and at_most.check(100) == "pass"
    assert at_most.check(100.1) == "short"
    assert at_least.check(100) == "pass" and at_least.check(12) == "short"
    assert at_most.check(None) == "n/a" and at_least.check(math.nan) == "n/a"


def test_compare_reads_nested_figures():
    results = {"api": {"all": {"p95": 80.0}}, "throughput": {"sustained_per_s": 12.5},
               "workflows": {"completed": 50}}
    rows = {r["key"]: r for r in report.compare(results)}
    assert rows["api.all.p95"]["mark"] == "pass" and rows["api.all.p95"]["measured"] == 80.0
    assert rows["throughput.sustained_per_s"]["mark"] == "short"
    assert rows["workflows.completed"]["mark"] == "pass"
    assert rows["timers.max_abs_deviation_ms"]["mark"] == "n/a"
    assert rows["api.all.p95"]["target"] == "<= 100 ms"
    # every plan target appears once
    assert len(rows) == len(report.PLAN_TARGETS) == 8


def test_compare_ignores_non_numeric_values():
    rows = report.compare({"workflows": {"completed": True}},
                          [Target("workflows.completed", "wf", ">=", 1, "")])
    assert rows[0]["mark"] == "n/a"


def test_fmt_num():
    assert report.fmt_num(None) == "-"
    assert report.fmt_num(3) == "3"
    assert report.fmt_num(1234.56) == "1235"
    assert report.fmt_num(12.345) == "12.3"
    assert report.fmt_num(1.2345) == "1.23"
    assert report.fmt_num(True) == "true"


def test_format_table_aligns_columns_and_right_aligns_numbers():
    text = report.format_table([["api", 12.5], ["pipeline", 1500.0]], ["name", "ms"])
    lines = text.splitlines()
    assert lines[0].split() == ["name", "ms"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2] == "api       12.5"
    assert lines[3] == "pipeline  1500"
    assert len(lines[1]) == len(lines[2]) == len(lines[3])


def test_targets_table_marks_each_figure():
    text = report.targets_table({"api": {"all": {"p95": 150.0}},
                                 "workflows": {"completed": 50}})
    api_line = next(line for line in text.splitlines() if line.startswith("API response time"))
    assert "150 ms" in api_line and "<= 100 ms" in api_line and "SHORT" in api_line
    wf_line = next(line for line in text.splitlines() if line.startswith("concurrent workflows"))
    assert "pass" in wf_line
    assert "n/a" in next(line for line in text.splitlines() if line.startswith("timer precision"))


def test_distributions_table_lists_every_distribution_but_not_raw():
    results = {"api": {"all": report.summarize([1, 2, 3]), "raw": {"x": [1]}},
               "pipeline": {"hop": report.summarize([10.0])}}
    text = report.distributions_table(results)
    assert "api.all" in text and "pipeline.hop" in text and "raw" not in text


def test_write_json(tmp_path):
    path = tmp_path / "sub" / "bench.json"
    report.write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
