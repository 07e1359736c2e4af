"""Self-tests of the repeat-run summary (tests/helpers/repeat.py)."""
from tests.helpers.repeat import summarise


def _report(**statuses):
    return {"tiers": [{"tier": "tier1", "scenarios": [{"id": sid.replace("_", "."), "status": st}
                                                       for sid, st in statuses.items()]}]}


def test_summary_counts_failures_per_scenario_and_wall_time_spread():
    text = summarise([100.0, 120.0, 110.0],
                     [_report(T1_1="passed", T1_2="failed"), _report(T1_1="failed", T1_2="failed"),
                      _report(T1_1="passed", T1_2="passed")], [1, 1, 0])
    assert "runs: 3; passed: 1; failed: 2" in text
    assert "min 100.0  median 110.0  max 120.0" in text
    lines = text.splitlines()
    assert lines.index("  T1.2   failed in 2 of 3 runs") < lines.index("  T1.1   failed in 1 of 3 runs")


def test_summary_says_none_failed_and_counts_missing_reports():
    text = summarise([50.0, 60.0], [_report(T1_1="passed"), None], [0, 3])
    assert "failures per scenario: none in 1 scenarios" in text
    assert "runs without a tier report (stack or collection failure): 1" in text
