"""The tier report: result folding, formatting, diagnostics, and the plugin in a real run."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers.report import (TestResult, build_report, failure_dir_name, format_report,
                                  format_timeline, scenario_of, tier_of, write_diagnostics)

ROOT = Path(__file__).resolve().parents[2]


def rep(nodeid, when, outcome, duration=1.0, longrepr=None, props=(), wasxfail=None):
    r = pytest.TestReport(nodeid, ("f", 1, "t"), {}, outcome, longrepr, when,
                          duration=duration, user_properties=list(props))
    if wasxfail is not None:
        r.wasxfail = wasxfail
    return r


def result(nodeid, *reports):
    res = TestResult(nodeid)
    for r in reports:
        res.update(r)
    return res


def passed(nodeid, call=2.0):
    return result(nodeid, rep(nodeid, "setup", "passed", 0.5), rep(nodeid, "call", "passed", call),
                  rep(nodeid, "teardown", "passed", 0.5))


def test_names():
    assert scenario_of("tests/e2e/tier1/test_t1_01_interval_timer.py::test_x") == \
        ("T1.1", "Interval Timer")
    assert scenario_of("tests/e2e/tier3/test_t3_24_high_frequency.py") == \
        ("T3.24", "High Frequency")
    assert tier_of("tests/e2e/tier2/test_t2_03_x.py::t") == "tier2"
    assert tier_of("tests/e2e/test_smoke.py::t") == "other"
    name = failure_dir_name("tests/e2e/tier1/test_t1_04_webhook.py::test_a[x/y z]@timers")
    assert name == "tier1_test_t1_04_webhook__test_a_x_y_z"
    assert "/" not in name and len(failure_dir_name("tests/e2e/" + "a" * 400)) <= 150


def test_outcome_folding():
    n = "tests/e2e/tier1/test_t1_01_a.py::t"
    assert passed(n).outcome == "passed" and passed(n).duration == pytest.approx(3.0)
    failed = result(n, rep(n, "setup", "passed"), rep(n, "call", "failed", longrepr="E   boom\nmore"),
                    rep(n, "teardown", "passed", props=[("diagnostics", "reports/failures/x")]))
    assert failed.outcome == "failed" and failed.message == "boom"
    assert failed.diagnostics == "reports/failures/x"
    error = result(n, rep(n, "setup", "failed", longrepr="fixture exploded"),
                   rep(n, "teardown", "passed"))
    assert error.outcome == "error"
    skipped = result(n, rep(n, "setup", "skipped", longrepr=("f", 1, "Skipped: needs extension x")),
                     rep(n, "teardown", "passed"))
    assert skipped.outcome == "skipped" and "needs extension x" in skipped.message
    teardown_error = result(n, rep(n, "setup", "passed"), rep(n, "call", "passed"),
                            rep(n, "teardown", "failed", longrepr="cleanup"))
    assert teardown_error.outcome == "error"
    xfailed = result(n, rep(n, "setup", "passed"),
                     rep(n, "call", "skipped", longrepr=("f", 1, "x"), wasxfail="gap"))
    assert xfailed.outcome == "xfailed"


def sample_results():
    t11 = "tests/e2e/tier1/test_t1_01_interval_timer.py"
    t14 = "tests/e2e/tier1/test_t1_04_webhook_payload.py"
    t23 = "tests/e2e/tier2/test_t2_03_datastore_write.py"
    t317 = "tests/e2e/tier3/test_t3_17_container_runner.py"
    return [
        passed(f"{t11}::test_fires", call=9.0),
        passed(f"{t14}::test_payload", call=2.0),
        result(f"{t14}::test_negative", rep(f"{t14}::test_negative", "setup", "passed"),
               rep(f"{t14}::test_negative", "call", "failed", 1.5,
                   longrepr="E   AssertionError: execution 4 ended `failed`"),
               rep(f"{t14}::test_negative", "teardown", "passed", 0.1,
                   props=[("diagnostics", "reports/failures/tier1_x")])),
        passed(f"{t23}::test_write", call=4.0),
        result(f"{t317}::test_container", rep(f"{t317}::test_container", "setup", "skipped", 0.01,
                                              longrepr=("f", 1, "Skipped: needs extension container"))),
    ]


def test_build_report_structure():
    report = build_report(sample_results(), started=1000.0, finished=1095.0, stack_start_s=12.5,
                          target="embedded http://x")
    assert [t["tier"] for t in report["tiers"]] == ["tier1", "tier2", "tier3"]
    tier1 = report["tiers"][0]
    assert [s["id"] for s in tier1["scenarios"]] == ["T1.1", "T1.4"]
    assert tier1["scenarios"][1]["status"] == "failed"
    assert tier1["totals"]["passed"] == 2 and tier1["totals"]["failed"] == 1
    s = report["summary"]
    assert (s["total"], s["passed"], s["failed"], s["skipped"]) == (5, 3, 1, 1)
    assert s["slowest"][0]["id"] == "T1.1"
    assert len(s["slowest"]) <= 10
    assert report["failed"][0]["diagnostics"] == "reports/failures/tier1_x"
    assert report["stack_start_s"] == 12.5 and report["wall_time_s"] == 95.0
    json.dumps(report)


def test_format_report_text():
    text = format_report(build_report(sample_results(), started=1000.0, finished=1095.0,
                                      stack_start_s=12.5))
    assert text.startswith("=== Attune E2E Test Report ===")
    assert "Duration: 1 minute 35 seconds" in text
    assert "Tier 1: Core Flows (2 scenarios, 3 tests)" in text
    assert "✅ T1.1 Interval Timer (10.0s)" in text
    assert "❌ T1.4 Webhook Payload" in text and "FAILED - AssertionError: execution 4" in text
    assert "⏭️ T3.17 Container Runner" in text and "SKIPPED - Skipped: needs extension" in text
    assert "Total: 5 tests" in text and "Passed: 3 (60%)" in text
    assert "Stack start time: 12.5s" in text
    assert "Slowest scenarios:" in text
    failed_section = text.split("FAILED:", 1)[1]
    assert "tests/e2e/tier1/test_t1_04_webhook_payload.py::test_negative" in failed_section
    assert "Logs: reports/failures/tier1_x" in failed_section


def test_timeline_format():
    text = format_timeline([
        {"id": 12, "action_ref": "p.child", "status": "failed", "parent": 11, "enforcement": None,
         "created": "2026-01-01T00:00:01Z", "started_at": "2026-01-01T00:00:02Z",
         "updated": "2026-01-01T00:00:03Z", "result": {"exit_code": 1, "error": "boom\nline2"}},
        {"id": 11, "action_ref": "p.wf", "status": "running", "parent": None, "enforcement": 5,
         "created": "2026-01-01T00:00:00Z", "updated": "2026-01-01T00:00:01Z", "result": None},
    ], missing=[(13, "ApiError 404")])
    lines = text.splitlines()
    assert lines[0].split() == ["id", "action_ref", "status", "parent", "enforcement", "created",
                                "started_at", "updated", "result"]
    assert lines[1].startswith("11 ") and lines[2].startswith("12 ")
    assert 'exit_code=1' in lines[2] and 'boom\\nline2' in lines[2]
    assert "13: could not fetch: ApiError 404" in text


class FakeClient:
    def get_execution(self, exec_id):
        if exec_id == 2:
            raise RuntimeError("gone")
        return {"id": exec_id, "action_ref": "p.a", "status": "completed", "result": {"exit_code": 0}}


class FakeServices:
    def __init__(self):
        self.calls = []

    def log_slice(self, name, since, until):
        self.calls.append((name, since, until))
        if name == "worker":
            raise OSError("no log")
        return f"{name} line\n"


def test_write_diagnostics(tmp_path):
    services = FakeServices()
    ctx = {"client": FakeClient(), "services": services, "embedded": True,
           "logs": {"api": "a.log", "worker": "w.log"}}
    folder = write_diagnostics(tmp_path, "tests/e2e/tier1/test_t1_01_a.py::test_x", since=100.0,
                               until=110.0, exec_ids=[1, 2], longrepr_text="E boom",
                               context=ctx)
    assert folder == tmp_path / "failures" / "tier1_test_t1_01_a__test_x"
    assert "p.a" in (folder / "timeline.txt").read_text()
    assert "2: could not fetch: RuntimeError: gone" in (folder / "timeline.txt").read_text()
    assert (folder / "api.log").read_text() == "api line\n"
    assert "log slice failed" in (folder / "worker.log").read_text()
    assert "E boom" in (folder / "error.txt").read_text()
    name, lo, hi = services.calls[0]
    assert name == "api" and lo.timestamp() == 99.0 and hi.timestamp() == 111.0
    assert lo.tzinfo is not None


def test_write_diagnostics_external_target_has_no_logs(tmp_path):
    folder = write_diagnostics(tmp_path, "tests/e2e/tier1/test_t1_01_a.py::t", since=1, until=2,
                               exec_ids=[], context={"client": None, "services": None})
    assert sorted(os.listdir(folder)) == ["error.txt", "timeline.txt"]


# ------------------------------------------------------------------ the plugin in a real run
INNER_TESTS = {
    "tests/e2e/tier1/test_t1_01_alpha.py": """
        def test_pass():
            pass

        def test_fail():
            assert 1 == 2, "deliberate"
    """,
    "tests/e2e/tier2/test_t2_01_beta.py": """
        import pytest

        @pytest.mark.skip(reason="not here")
        def test_skip():
            pass

        def test_pass_too():
            pass
    """,
}


@pytest.mark.parametrize("workers", ["0", "2"])
def test_plugin_writes_reports_in_a_real_run(tmp_path, workers):
    for rel, body in INNER_TESTS.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(body))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("ATTUNE_API_URL", None)
    env.pop("ATTUNE_E2E_REPORTS_DIR", None)  # this run's reports go to tmp_path/reports
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.helpers.report", "-p", "no:cacheprovider",
         "-n", workers, "-q", "tests/e2e"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "reports" / "tier_report.json").read_text())
    s = report["summary"]
    assert (s["total"], s["passed"], s["failed"], s["skipped"]) == (4, 2, 1, 1)
    diag = report["failed"][0]["diagnostics"]
    assert diag == "reports/failures/tier1_test_t1_01_alpha__test_fail"
    assert (tmp_path / diag / "timeline.txt").is_file()
    assert "deliberate" in (tmp_path / diag / "error.txt").read_text()
    text = (tmp_path / "reports" / "tier_report.txt").read_text()
    assert "❌ T1.1 Alpha" in text and "✅ T2.1 Beta" in text
    assert "attune e2e tier report" in proc.stdout
