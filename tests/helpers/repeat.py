"""Run the suite several times in a row and summarise: wall times and failures per scenario.

    .venv/bin/python -m tests.helpers.repeat --runs 3             # issue budget: min/median/max wall
    .venv/bin/python -m tests.helpers.repeat --runs 10 -- -m tier1  # flake hunt on one tier

Each run is `./run_e2e_tests.sh [PYTEST ARGS]` from the repository root, timed from the command's
start (cold stack included). After each run its `reports/tier_report.json` is kept as
`reports/repeat/run-<k>.json` and its failure folders as `reports/repeat/run-<k>-failures/`; the
summary is printed and written to `reports/repeat/summary.txt`.
Exit status: 0 when every run passed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def scenario_outcomes(report: dict) -> dict[str, str]:
    """{scenario id: status} from one tier report."""
    return {s["id"]: s["status"] for tier in report.get("tiers", []) for s in tier.get("scenarios", [])}


def summarise(walls: list[float], reports: list[dict | None], exit_codes: list[int]) -> str:
    lines = [f"runs: {len(walls)}; passed: {sum(1 for c in exit_codes if c == 0)}; "
             f"failed: {sum(1 for c in exit_codes if c != 0)}"]
    if walls:
        lines.append(f"wall time (s): min {min(walls):.1f}  median {statistics.median(walls):.1f}  "
                     f"max {max(walls):.1f}")
    failures: dict[str, int] = {}
    seen: set[str] = set()
    for report in reports:
        if report is None:
            continue
        for sid, status in scenario_outcomes(report).items():
            seen.add(sid)
            if status == "failed":
                failures[sid] = failures.get(sid, 0) + 1
    missing = sum(1 for r in reports if r is None)
    if missing:
        lines.append(f"runs without a tier report (stack or collection failure): {missing}")
    lines.append("failures per scenario:" if failures else
                 f"failures per scenario: none in {len(seen)} scenarios")
    for sid in sorted(failures, key=lambda s: (-failures[s], s)):
        lines.append(f"  {sid:6s} failed in {failures[sid]} of {len(reports)} runs")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.helpers.repeat",
                                     description="Run ./run_e2e_tests.sh N times; print wall times "
                                                 "and per-scenario failure counts.")
    parser.add_argument("--runs", type=int, default=3, help="how many runs (default 3)")
    parser.add_argument("pytest_args", nargs="*", help="arguments for run_e2e_tests.sh (after --)")
    args = parser.parse_args(argv)
    reports_root = ROOT / os.environ.get("ATTUNE_E2E_REPORTS_DIR", "reports")
    out = reports_root / "repeat"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    walls: list[float] = []
    reports: list[dict | None] = []
    codes: list[int] = []
    for k in range(1, args.runs + 1):
        print(f"== run {k}/{args.runs}: ./run_e2e_tests.sh {' '.join(args.pytest_args)}", flush=True)
        report_file = reports_root / "tier_report.json"
        report_file.unlink(missing_ok=True)
        started = time.monotonic()
        code = subprocess.call(["./run_e2e_tests.sh", *args.pytest_args], cwd=ROOT)
        wall = time.monotonic() - started
        walls.append(wall)
        codes.append(code)
        report = json.loads(report_file.read_text()) if report_file.exists() else None
        if report is not None:
            shutil.copy(report_file, out / f"run-{k}.json")
        # the next run clears reports/failures: keep this run's timelines and log slices
        failures = reports_root / "failures"
        if failures.is_dir() and any(failures.iterdir()):
            shutil.copytree(failures, out / f"run-{k}-failures")
        reports.append(report)
        print(f"== run {k}: exit {code}, wall {wall:.1f} s", flush=True)
    text = summarise(walls, reports, codes)
    (out / "summary.txt").write_text(text + "\n")
    print(text)
    return 0 if all(c == 0 for c in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
