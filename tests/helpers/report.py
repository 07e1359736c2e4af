"""pytest plugin (loaded with `-p tests.helpers.report`): the tier report and per-failure diagnostics.

Writes under reports/:
- tier_report.txt / tier_report.json: per tier, each scenario file with its tests' outcome and
  duration, per-tier totals, a summary (wall time, stack start time, counts, ten slowest
  scenarios) and a FAILED section with the diagnostics path of each failed test;
- failures/<sanitised nodeid>/ for every failed e2e test: error.txt, timeline.txt (every execution
  the test's clients saw, fetched again through the admin client) and <service>.log slices of the
  embedded services' logs for the test window.

Works with xdist: the master aggregates reports (pytest_runtest_logreport); the worker that ran a
failed test writes its diagnostics in a pytest_runtest_makereport hookwrapper and attaches the
folder to the report as the user property "diagnostics".
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import timeline

E2E_PREFIX = "tests/e2e/"
STACK_START_ENV = "ATTUNE_E2E_STACK_START_S"


def reports_dir(config) -> Path:
    """`reports/` under the repository root, or `$ATTUNE_E2E_REPORTS_DIR` (a private stack's)."""
    return Path(config.rootpath) / os.environ.get("ATTUNE_E2E_REPORTS_DIR", "reports")
TIER_TITLES = {"tier1": "Core Flows", "tier2": "Orchestration", "tier3": "Advanced"}
ICONS = {"passed": "✅", "failed": "❌", "skipped": "⏭️", "xfailed": "✅", "xpassed": "✅",
         "error": "❌"}
PROGRESS_EVERY_S = 30.0

# --------------------------------------------------------------------------- diagnostics context
# The conftest fills this in each process (admin client, ServiceManager, log paths); the
# diagnostics writer only reads it.
_CONTEXT: dict[str, Any] = {"client": None, "services": None, "logs": {}, "embedded": False}


def set_context(**values: Any) -> None:
    _CONTEXT.update({k: v for k, v in values.items() if v is not None})


def get_context() -> dict:
    return _CONTEXT


# --------------------------------------------------------------------------- naming helpers
def strip_group(nodeid: str) -> str:
    """Remove xdist loadgroup's '@group' suffix."""
    if "@" in nodeid.split("::")[-1]:
        return nodeid.rsplit("@", 1)[0]
    return nodeid


def failure_dir_name(nodeid: str) -> str:
    nodeid = strip_group(nodeid)
    if nodeid.startswith(E2E_PREFIX):
        nodeid = nodeid[len(E2E_PREFIX):]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", nodeid.replace(".py::", "__").replace("::", "__"))
    name = name.strip("_.")
    return name[:150] or "unnamed"


def tier_of(nodeid: str) -> str:
    m = re.search(r"(?:^|/)(tier\d+)/", nodeid)
    return m.group(1) if m else "other"


def scenario_of(nodeid: str) -> tuple[str, str]:
    """(scenario id, title) from the file name, e.g. test_t1_01_interval_timer.py ->
    ("T1.1", "Interval Timer")."""
    path = strip_group(nodeid).split("::", 1)[0]
    stem = Path(path).stem
    m = re.match(r"test_t(\d+)_(\d+)_?(.*)$", stem)
    if m:
        title = m.group(3).replace("_", " ").strip().title()
        return f"T{int(m.group(1))}.{int(m.group(2))}", title
    stem = stem[5:] if stem.startswith("test_") else stem
    return stem, stem.replace("_", " ").title()


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    minutes, sec = divmod(seconds, 60)
    if minutes:
        return f"{minutes} minute{'s' if minutes != 1 else ''} {sec} second{'s' if sec != 1 else ''}"
    return f"{sec} second{'s' if sec != 1 else ''}"


def _first_line(text: str, limit: int = 200) -> str:
    for line in (text or "").splitlines():
        line = line.strip()
        if line.startswith("E "):
            line = line[2:].strip()
        if line:
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return ""


def _error_line(longrepr: Any) -> str:
    if longrepr is None:
        return ""
    crash = getattr(getattr(longrepr, "reprcrash", None), "message", None)
    if crash:
        return _first_line(crash)
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return _first_line(str(longrepr[2]))
    lines = [ln for ln in str(longrepr).splitlines() if ln.strip()]
    marked = [ln for ln in lines if ln.startswith("E ")]
    return _first_line(marked[0] if marked else (lines[-1] if lines else ""))


# --------------------------------------------------------------------------- results model
@dataclass
class TestResult:
    __test__ = False  # not a pytest test class

    nodeid: str
    outcome: str = "passed"  # passed failed error skipped xfailed xpassed
    duration: float = 0.0
    message: str = ""
    diagnostics: str | None = None
    phases: dict = field(default_factory=dict)

    @property
    def tier(self) -> str:
        return tier_of(self.nodeid)

    @property
    def file(self) -> str:
        return self.nodeid.split("::", 1)[0]

    @property
    def name(self) -> str:
        return self.nodeid.split("::", 1)[1] if "::" in self.nodeid else self.nodeid

    def update(self, report: Any) -> None:
        when = report.when
        self.duration += float(getattr(report, "duration", 0.0) or 0.0)
        self.phases[when] = report.outcome
        for key, value in getattr(report, "user_properties", []) or []:
            if key == "diagnostics" and value:
                self.diagnostics = value
        wasxfail = getattr(report, "wasxfail", None)
        if report.failed:
            if when == "call":
                self.outcome = "failed"
            elif self.outcome not in ("failed",):
                self.outcome = "error"
            if not self.message:
                self.message = _error_line(report.longrepr)
        elif report.skipped:
            if wasxfail is not None:
                self.outcome = "xfailed"
                self.message = self.message or f"xfail: {wasxfail}"
            elif self.outcome == "passed":
                self.outcome = "skipped"
                self.message = _error_line(report.longrepr)
        elif when == "call" and wasxfail is not None:
            self.outcome = "xpassed"


def _is_fail(outcome: str) -> bool:
    return outcome in ("failed", "error")


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.0f}%" if whole else "n/a"


def build_report(results: list[TestResult], *, started: float, finished: float,
                 stack_start_s: float | None = None, target: str = "") -> dict:
    """The report as a JSON-able dict (pure function of the results)."""
    tiers: dict[str, dict[str, list[TestResult]]] = {}
    for res in sorted(results, key=lambda r: r.nodeid):
        tiers.setdefault(res.tier, {}).setdefault(res.file, []).append(res)

    tier_list = []
    all_scenarios = []
    for tier in sorted(tiers, key=lambda t: (t == "other", t)):
        scenarios = []
        for file, tests in sorted(tiers[tier].items(), key=lambda kv: scenario_sort_key(kv[0])):
            sid, title = scenario_of(file)
            outcomes = [t.outcome for t in tests]
            if any(_is_fail(o) for o in outcomes):
                status = "failed"
            elif all(o == "skipped" for o in outcomes):
                status = "skipped"
            else:
                status = "passed"
            message = next((t.message for t in tests if _is_fail(t.outcome)), "")
            if status == "skipped":
                message = tests[0].message
            scen = {"id": sid, "title": title, "file": file, "status": status,
                    "duration_s": round(sum(t.duration for t in tests), 3), "message": message,
                    "tests": [{"nodeid": t.nodeid, "name": t.name, "outcome": t.outcome,
                               "duration_s": round(t.duration, 3), "message": t.message,
                               "diagnostics": t.diagnostics} for t in tests]}
            scenarios.append(scen)
            all_scenarios.append(scen)
        tests = [t for per_file in tiers[tier].values() for t in per_file]
        tier_list.append({
            "tier": tier, "title": TIER_TITLES.get(tier, "Other"), "scenarios": scenarios,
            "totals": _counts(tests) | {"duration_s": round(sum(t.duration for t in tests), 3),
                                       "scenarios": len(scenarios)},
        })

    counts = _counts(results)
    slowest = sorted(all_scenarios, key=lambda s: -s["duration_s"])[:10]
    failed = [{"nodeid": r.nodeid, "scenario": " ".join(scenario_of(r.nodeid)),
               "outcome": r.outcome, "message": r.message, "diagnostics": r.diagnostics}
              for r in sorted(results, key=lambda r: r.nodeid) if _is_fail(r.outcome)]
    return {
        "title": "Attune E2E Test Report",
        "date": _dt.datetime.fromtimestamp(started).strftime("%Y-%m-%d %H:%M:%S"),
        "target": target,
        "wall_time_s": round(finished - started, 3),
        "stack_start_s": None if stack_start_s is None else round(stack_start_s, 3),
        "tiers": tier_list,
        "summary": counts | {
            "success_rate": _pct(counts["passed"], counts["passed"] + counts["failed"]),
            "slowest": [{"id": s["id"], "title": s["title"], "file": s["file"],
                         "duration_s": s["duration_s"]} for s in slowest]},
        "failed": failed,
    }


def scenario_sort_key(file: str) -> tuple:
    sid, _ = scenario_of(file)
    m = re.match(r"T(\d+)\.(\d+)$", sid)
    return (0, int(m.group(1)), int(m.group(2)), file) if m else (1, 0, 0, file)


def _counts(results: list[TestResult]) -> dict:
    c = {"total": len(results), "passed": 0, "failed": 0, "skipped": 0, "xfailed": 0,
         "xpassed": 0}
    for r in results:
        if _is_fail(r.outcome):
            c["failed"] += 1
        elif r.outcome == "skipped":
            c["skipped"] += 1
        elif r.outcome == "xfailed":
            c["xfailed"] += 1
        elif r.outcome == "xpassed":
            c["xpassed"] += 1
            c["passed"] += 1
        else:
            c["passed"] += 1
    return c


def format_report(rep: dict) -> str:
    """The plan's text format."""
    lines = [f"=== {rep['title']} ===", f"Date: {rep['date']}",
             f"Duration: {_fmt_duration(rep['wall_time_s'])}"]
    if rep.get("target"):
        lines.append(f"Target: {rep['target']}")
    if rep.get("stack_start_s") is not None:
        lines.append(f"Stack start: {rep['stack_start_s']:.1f}s")
    for tier in rep["tiers"]:
        name = tier["tier"].replace("tier", "Tier ") if tier["tier"] != "other" else "Other"
        t = tier["totals"]
        lines += ["", f"{name}: {tier['title']} ({t['scenarios']} scenarios, {t['total']} tests)"]
        for s in tier["scenarios"]:
            label = f"{s['id']} {s['title']}".strip()
            if s["status"] == "failed":
                tail = f" (FAILED - {s['message']})" if s["message"] else " (FAILED)"
            elif s["status"] == "skipped":
                tail = f" (SKIPPED - {s['message']})" if s["message"] else " (SKIPPED)"
            else:
                tail = ""
            lines.append(f"{ICONS[s['status']]} {label} ({s['duration_s']:.1f}s){tail}")
            for test in s["tests"]:
                extra = ""
                if test["outcome"] not in ("passed",):
                    extra = f" {test['outcome'].upper()}"
                    if test["message"] and test["outcome"] != "failed":
                        extra += f" - {test['message']}"
                lines.append(f"    {ICONS[test['outcome']]} {test['name']} "
                             f"({test['duration_s']:.1f}s){extra}")
        lines.append(f"  Totals: {t['passed']} passed, {t['failed']} failed, "
                     f"{t['skipped']} skipped, {t['xfailed']} xfailed, {t['duration_s']:.1f}s")
    s = rep["summary"]
    lines += ["", "Summary:", f"Total: {s['total']} tests",
              f"Passed: {s['passed']} ({_pct(s['passed'], s['total'])})",
              f"Failed: {s['failed']} ({_pct(s['failed'], s['total'])})",
              f"Skipped: {s['skipped']} ({_pct(s['skipped'], s['total'])})"]
    if s["xfailed"]:
        lines.append(f"Expected failures: {s['xfailed']}")
    lines += [f"Success Rate: {s['success_rate']}",
              f"Total wall time: {rep['wall_time_s']:.1f}s"]
    if rep.get("stack_start_s") is not None:
        lines.append(f"Stack start time: {rep['stack_start_s']:.1f}s")
    if s["slowest"]:
        lines.append("Slowest scenarios:")
        for i, sc in enumerate(s["slowest"], 1):
            lines.append(f"  {i:2d}. {sc['id']} {sc['title']} ({sc['duration_s']:.1f}s)")
    if rep["failed"]:
        lines += ["", "FAILED:"]
        for f in rep["failed"]:
            lines.append(f"{f['scenario']}: {f['nodeid']}")
            if f["message"]:
                lines.append(f"  Error: {f['message']}")
            if f["diagnostics"]:
                lines.append(f"  Logs: {f['diagnostics']}")
                try:
                    for entry in sorted(os.listdir(f["diagnostics"])):
                        lines.append(f"    {os.path.join(f['diagnostics'], entry)}")
                except OSError:
                    pass
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- diagnostics
def _summarise_result(result: Any, limit: int = 160) -> str:
    if not isinstance(result, dict):
        text = "" if result is None else json.dumps(result, default=str)
    else:
        parts = []
        for key in ("exit_code", "succeeded", "error", "stdout", "data"):
            if key in result:
                parts.append(f"{key}={json.dumps(result[key], default=str)}")
        if not parts:
            parts.append(json.dumps(result, default=str))
        text = " ".join(parts)
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


TIMELINE_COLUMNS = ("id", "action_ref", "status", "parent", "enforcement", "created",
                    "started_at", "updated", "result")


def format_timeline(executions: list[dict], missing: list[tuple[int, str]] = ()) -> str:
    rows = []
    for ex in sorted(executions, key=lambda e: e.get("id") or 0):
        rows.append([str(ex.get("id")), str(ex.get("action_ref")), str(ex.get("status")),
                     str(ex.get("parent") if ex.get("parent") is not None else "-"),
                     str(ex.get("enforcement") if ex.get("enforcement") is not None else "-"),
                     str(ex.get("created") or "-"), str(ex.get("started_at") or "-"),
                     str(ex.get("updated") or "-"), _summarise_result(ex.get("result"))])
    widths = [len(c) for c in TIMELINE_COLUMNS]
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(cell))
    def fmt(cells):
        return "  ".join(c.ljust(widths[i]) if i < len(cells) - 1 else c
                         for i, c in enumerate(cells)).rstrip()
    out = [fmt(list(TIMELINE_COLUMNS))] + [fmt(r) for r in rows]
    if not rows:
        out.append("(no executions were seen by the test's clients)")
    for exec_id, err in missing:
        out.append(f"{exec_id}: could not fetch: {err}")
    return "\n".join(out) + "\n"


def write_diagnostics(base_dir: Path, nodeid: str, *, since: float, until: float,
                      exec_ids: list[int], longrepr_text: str = "",
                      context: dict | None = None) -> Path:
    """Write reports/failures/<name>/ for one failed test; never raises."""
    ctx = context if context is not None else _CONTEXT
    folder = Path(base_dir) / "failures" / failure_dir_name(nodeid)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        window = (f"test window: {_dt.datetime.fromtimestamp(since).isoformat()} .. "
                  f"{_dt.datetime.fromtimestamp(until).isoformat()}\n")
        (folder / "error.txt").write_text(f"{strip_group(nodeid)}\n{window}\n{longrepr_text}")
    except Exception:
        pass
    # timeline
    try:
        client = ctx.get("client")
        executions, missing = [], []
        for exec_id in exec_ids:
            if client is None:
                missing.append((exec_id, "no admin client"))
                continue
            try:
                executions.append(client.get_execution(exec_id))
            except Exception as exc:
                missing.append((exec_id, f"{type(exc).__name__}: {exc}"[:300]))
        (folder / "timeline.txt").write_text(format_timeline(executions, missing))
    except Exception:
        (folder / "timeline.txt").write_text("timeline failed:\n" + traceback.format_exc())
    # service log slices (embedded stack only)
    services = ctx.get("services")
    if services is not None and ctx.get("embedded", True):
        names = list((ctx.get("logs") or {}).keys())
        if not names:
            try:
                found = services.names
                names = list(found() if callable(found) else found)
            except Exception:
                names = []
        names = names or ["api", "executor", "worker", "sensor", "notifier"]
        lo = _dt.datetime.fromtimestamp(since - 1.0, tz=_dt.timezone.utc)
        hi = _dt.datetime.fromtimestamp(until + 1.0, tz=_dt.timezone.utc)
        for name in names:
            try:
                text = services.log_slice(name, lo, hi)
            except Exception as exc:
                text = f"log slice failed: {type(exc).__name__}: {exc}\n"
            try:
                (folder / f"{name}.log").write_text(text or "")
            except Exception:
                pass
    return folder


_START_KEY = pytest.StashKey[tuple]()
_DIAG_KEY = pytest.StashKey[str]()


class DiagnosticsWriter:
    """Runs in the process that runs the tests (xdist worker or a plain run)."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.base = reports_dir(config)

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_protocol(self, item, nextitem):
        item.stash[_START_KEY] = (time.time(), timeline.mark())
        yield

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        if not report.failed or not strip_group(item.nodeid).startswith(E2E_PREFIX):
            return
        existing = item.stash.get(_DIAG_KEY, None)
        if existing:
            report.user_properties.append(("diagnostics", existing))
            return
        since, mark = item.stash.get(_START_KEY, (time.time() - 60, 0))
        try:
            text = str(report.longrepr) if report.longrepr is not None else ""
        except Exception:
            text = ""
        try:
            folder = write_diagnostics(self.base, item.nodeid, since=since, until=time.time(),
                                       exec_ids=timeline.recorded_since(mark),
                                       longrepr_text=text)
            rel = os.path.relpath(folder, self.config.rootpath)
        except Exception:
            return
        item.stash[_DIAG_KEY] = rel
        report.user_properties.append(("diagnostics", rel))


def selects_e2e(config: pytest.Config) -> bool:
    """Whether the command line's paths reach tests/e2e (the suite proper, not only unit tests)."""
    e2e_dir = Path(config.rootpath) / "tests" / "e2e"
    for arg in list(config.args) or [str(e2e_dir)]:
        path = Path(arg.split("::", 1)[0])
        if not path.is_absolute():
            path = Path(config.invocation_params.dir) / path
        try:
            path = path.resolve()
        except OSError:
            continue
        if path == e2e_dir or e2e_dir in path.parents or path in e2e_dir.parents:
            return True
    return False


class TierReport:
    """Aggregates results in the master (or a plain run) and writes the tier report."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.results: dict[str, TestResult] = {}
        self.started = time.time()
        self.last_progress = self.started
        self.expected: dict[str, int] = {}
        self.report: dict | None = None
        self.paths: list[Path] = []

    def pytest_sessionstart(self, session):
        self.started = time.time()
        self.last_progress = self.started
        if selects_e2e(self.config):
            # failure folders describe the latest e2e run only; older ones would mislead
            shutil.rmtree(reports_dir(self.config) / "failures", ignore_errors=True)

    def pytest_collection_finish(self, session):
        self._expect([i.nodeid for i in session.items])

    def _expect(self, nodeids):
        counts: dict[str, int] = {}
        for nodeid in nodeids:
            counts[tier_of(nodeid)] = counts.get(tier_of(nodeid), 0) + 1
        if counts:
            self.expected = counts

    def pytest_runtest_logreport(self, report):
        nodeid = strip_group(report.nodeid)
        res = self.results.setdefault(nodeid, TestResult(nodeid))
        res.update(report)
        if report.when == "teardown":
            self._progress()

    def _progress(self) -> None:
        now = time.time()
        if now - self.last_progress < PROGRESS_EVERY_S:
            return
        self.last_progress = now
        done: dict[str, int] = {}
        failed = 0
        for r in self.results.values():
            if "teardown" in r.phases:
                done[r.tier] = done.get(r.tier, 0) + 1
                failed += _is_fail(r.outcome)
        parts = [f"{t} {done.get(t, 0)}/{self.expected.get(t, '?')}"
                 for t in sorted(set(done) | set(self.expected))]
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(f"[e2e progress {now - self.started:.0f}s] " + ", ".join(parts)
                          + f"; {failed} failed")

    def _stack_start(self) -> float | None:
        value = os.environ.get(STACK_START_ENV)
        if value:
            try:
                return float(value)
            except ValueError:
                pass
        path = reports_dir(self.config) / "stack.json"
        try:
            return float(json.loads(path.read_text()).get("start_seconds"))
        except Exception:
            return None

    def _target(self) -> str:
        api = os.environ.get("ATTUNE_API_URL")
        if api:
            return f"external {api}"
        raw = os.environ.get("ATTUNE_E2E_STACK")
        if raw:
            try:
                return f"embedded {json.loads(raw).get('api_url')}"
            except ValueError:
                pass
        return ""

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session, exitstatus):
        results = [r for r in self.results.values() if r.nodeid.startswith(E2E_PREFIX)]
        if not results or self.config.getoption("collectonly", False):
            return
        self.report = build_report(results, started=self.started, finished=time.time(),
                                   stack_start_s=self._stack_start(), target=self._target())
        out = reports_dir(self.config)
        out.mkdir(parents=True, exist_ok=True)
        txt, js = out / "tier_report.txt", out / "tier_report.json"
        txt.write_text(format_report(self.report), encoding="utf-8")
        js.write_text(json.dumps(self.report, indent=2, default=str), encoding="utf-8")
        self.paths = [txt, js]

    def pytest_terminal_summary(self, terminalreporter):
        if not self.report:
            return
        s = self.report["summary"]
        terminalreporter.write_sep("=", "attune e2e tier report")
        for tier in self.report["tiers"]:
            t = tier["totals"]
            terminalreporter.write_line(
                f"{tier['tier']}: {t['passed']} passed, {t['failed']} failed, "
                f"{t['skipped']} skipped in {t['duration_s']:.1f}s")
        terminalreporter.write_line(
            f"total {s['total']}: {s['passed']} passed, {s['failed']} failed, "
            f"{s['skipped']} skipped; wall {self.report['wall_time_s']:.1f}s")
        for f in self.report["failed"]:
            terminalreporter.write_line(f"FAILED {f['nodeid']}  diagnostics: {f['diagnostics']}")
        terminalreporter.write_line("report: " + ", ".join(
            os.path.relpath(p, self.config.rootpath) for p in self.paths))


class _XdistProgress:
    def __init__(self, collector: TierReport):
        self.collector = collector

    def pytest_xdist_node_collection_finished(self, node, ids):
        self.collector._expect(ids)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # pytest.ini's --junitxml=reports/... follows $ATTUNE_E2E_REPORTS_DIR (a private stack's)
    xml = getattr(config.option, "xmlpath", None)
    if xml and os.environ.get("ATTUNE_E2E_REPORTS_DIR") and Path(xml).parts[:1] == ("reports",):
        config.option.xmlpath = str(reports_dir(config).joinpath(*Path(xml).parts[1:]))
    if config.getoption("collectonly", False):
        return
    config.pluginmanager.register(DiagnosticsWriter(config), "attune-e2e-diagnostics")
    if not hasattr(config, "workerinput"):
        collector = TierReport(config)
        config.pluginmanager.register(collector, "attune-e2e-tier-report")
        if config.pluginmanager.hasplugin("xdist"):
            config.pluginmanager.register(_XdistProgress(collector), "attune-e2e-progress")


__all__ = ["TestResult", "build_report", "format_report", "format_timeline", "write_diagnostics",
           "failure_dir_name", "scenario_of", "selects_e2e", "tier_of", "set_context", "get_context"]
