"""Pure parts of the benchmark: percentiles, distributions, the plan's targets, the console table.

Nothing here talks to a stack; tests/unit/test_bench_report.py covers it.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable


# ------------------------------------------------------------------ statistics
def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between closest ranks
    (numpy's default); None for no values."""
    data = sorted(float(v) for v in values)
    if not data:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile out of range: {q}")
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    if lo == hi:
        return data[lo]
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summarize(values: Iterable[float], digits: int = 2) -> dict:
    """{n, min, p50, p95, p99, max, mean} of a sample (None figures when it is empty)."""
    data = [float(v) for v in values]
    out: dict[str, Any] = {"n": len(data)}
    if not data:
        out.update(min=None, p50=None, p95=None, p99=None, max=None, mean=None)
        return out
    def r(x):
        return None if x is None else round(x, digits)
    out.update(min=r(min(data)), p50=r(percentile(data, 50)), p95=r(percentile(data, 95)),
               p99=r(percentile(data, 99)), max=r(max(data)), mean=r(sum(data) / len(data)))
    return out


def parse_ts(value: Any) -> datetime | None:
    """An API timestamp (ISO 8601, `Z` or offset, naive = UTC) or epoch seconds -> aware datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(float(value), tz=timezone.utc)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    text = str(value).strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Python < 3.11 accepts only 0, 3 or 6 fraction digits; normalise to 6
    if "." in text:
        head, rest = text.split(".", 1)
        digits = ""
        i = 0
        while i < len(rest) and rest[i].isdigit():
            digits += rest[i]
            i += 1
        text = f"{head}.{(digits + '000000')[:6]}{rest[i:]}"
    dt = datetime.fromisoformat(text)
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def ms_between(earlier: Any, later: Any) -> float | None:
    """Milliseconds from `earlier` to `later` (timestamps as parse_ts takes them); None if either
    is missing."""
    a, b = parse_ts(earlier), parse_ts(later)
    if a is None or b is None:
        return None
    return (b - a).total_seconds() * 1000.0


# ------------------------------------------------------------------ targets
@dataclass(frozen=True)
class Target:
    key: str            # figure key in the results: "<section>.<figure>[.<stat>]"
    label: str          # what the plan calls it
    op: str             # "<=" (at most) or ">=" (at least)
    value: float
    unit: str
    note: str = ""      # which statistic is compared

    def check(self, measured: float | None) -> str:
        """"pass", "short" (measured but missed) or "n/a" (not measured)."""
        if measured is None or (isinstance(measured, float) and math.isnan(measured)):
            return "n/a"
        if self.op == "<=":
            return "pass" if measured <= self.value else "short"
        if self.op == ">=":
            return "pass" if measured >= self.value else "short"
        raise ValueError(f"unknown comparison {self.op!r}")


# The test plan's performance targets. Latencies compare the p95 of the distribution (the plan's
# "API p95 response time"); a timer's precision compares the largest deviation seen.
PLAN_TARGETS: tuple[Target, ...] = (
    Target("api.all.p95", "API response time", "<=", 100, "ms", "p95 of all requests"),
    Target("pipeline.webhook_to_event.p95", "webhook -> event", "<=", 50, "ms", "p95"),
    Target("pipeline.event_to_enforcement.p95", "event -> enforcement", "<=", 100, "ms", "p95"),
    Target("pipeline.enforcement_to_scheduled.p95", "enforcement -> execution (scheduled)", "<=",
           500, "ms", "p95"),
    Target("pipeline.trigger_to_completed.p95", "trigger -> execution (completed)", "<=", 1000,
           "ms", "p95, webhook receipt to completed"),
    Target("throughput.sustained_per_s", "executions per second", ">=", 100, "/s",
           "best completed rate over a window"),
    Target("workflows.completed", "concurrent workflows", ">=", 50, "",
           "completed out of 50 started at once"),
    Target("timers.max_abs_deviation_ms", "timer precision", "<=", 500, "ms",
           "largest |fire - schedule|"),
)


def lookup(results: dict, key: str) -> Any:
    """results["a"]["b"]["c"] for key "a.b.c"; None when any part is missing."""
    node: Any = results
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def compare(results: dict, targets: Iterable[Target] = PLAN_TARGETS) -> list[dict]:
    """One row per target: {key, label, measured, target, unit, mark, note}."""
    rows = []
    for t in targets:
        measured = lookup(results, t.key)
        if not isinstance(measured, (int, float)) or isinstance(measured, bool):
            measured = None
        rows.append({"key": t.key, "label": t.label, "measured": measured,
                     "target": f"{t.op} {fmt_num(t.value)}{(' ' + t.unit) if t.unit else ''}",
                     "unit": t.unit, "mark": t.check(measured), "note": t.note})
    return rows


# ------------------------------------------------------------------ formatting
def fmt_num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 100:
            return f"{value:.0f}"
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def format_table(rows: list[list[Any]], headers: list[str]) -> str:
    """A plain monospace table: header, dashes, rows; columns left-aligned except numbers."""
    cells = [[fmt_num(c) if not isinstance(c, str) else c for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))

    def line(row, raw=None):
        out = []
        for i, c in enumerate(row):
            numeric = raw is not None and isinstance(raw[i], (int, float)) \
                and not isinstance(raw[i], bool)
            out.append(c.rjust(widths[i]) if numeric else c.ljust(widths[i]))
        return "  ".join(out).rstrip()

    parts = [line(headers), "  ".join("-" * w for w in widths)]
    for row, raw in zip(cells, rows):
        parts.append(line(row, raw))
    return "\n".join(parts)


def targets_table(results: dict, targets: Iterable[Target] = PLAN_TARGETS) -> str:
    rows = []
    for r in compare(results, targets):
        value = r["measured"]
        shown = "-" if value is None else f"{fmt_num(value)}{(' ' + r['unit']) if r['unit'] else ''}"
        rows.append([r["label"], shown, r["target"], r["mark"].upper() if r["mark"] == "short"
                     else r["mark"], r["note"]])
    return format_table(rows, ["figure", "measured", "target", "mark", "statistic"])


def distributions_table(results: dict) -> str:
    """Every latency distribution in the results (dicts carrying p50/p95) as one table."""
    rows = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if "p95" in node and "n" in node:
                rows.append([path, node["n"], node.get("p50"), node.get("p95"), node.get("p99"),
                             node.get("max")])
                return
            for k, v in node.items():
                if k in ("raw", "samples"):
                    continue
                walk(v, f"{path}.{k}" if path else k)

    walk(results, "")
    return format_table(rows, ["distribution (ms)", "n", "p50", "p95", "p99", "max"])


def write_json(path: str | os.PathLike, doc: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(doc, fh, indent=2, default=str)
        fh.write("\n")
    os.replace(tmp, path)
