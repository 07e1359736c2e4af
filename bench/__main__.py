"""python -m bench: measure the test plan's performance targets against a running Attune.

Against the embedded stack (default) it starts the stack with EmbeddedStack (honouring
ATTUNE_E2E_CONFIG / ATTUNE_E2E_STATE_DIR / ATTUNE_E2E_REPORTS_DIR, like tests/conftest.py) and
stops it at the end; with ATTUNE_API_URL (or --target-url) it starts nothing. Everything it
creates lives in a pack `bench_<8hex>` and is deleted at the end (rules disabled first).

Output: a console table (each figure, its target, pass/SHORT) and <reports>/bench.json with
every raw figure, the machine's core count and the target. Exit 0 when the run completed
(targets are measured, not asserted; --strict exits 1 when one is short), 2 when it could not run.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import api_latency, memory, pipeline, report, throughput, timers, workflows  # noqa: E402
from bench.context import Bench, say  # noqa: E402
from tests.helpers.client import AttuneClient  # noqa: E402
from tests.helpers.target import Target, external_api_url, resolve_target  # noqa: E402

SECTIONS = ("api", "timers", "pipeline", "workflows", "throughput")


def _parse(argv):
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target-url", help="API URL of an external Attune (as ATTUNE_API_URL)")
    ap.add_argument("--out", help="JSON report path (default: <reports dir>/bench.json)")
    ap.add_argument("--only", action="append", choices=SECTIONS,
                    help="run only this measurement (repeatable)")
    ap.add_argument("--concurrency", type=int, default=8, help="API latency clients (default 8)")
    ap.add_argument("--api-seconds", type=float, default=8.0)
    ap.add_argument("--webhooks", type=int, default=30, help="pipeline samples (default 30)")
    ap.add_argument("--levels", default="25,50,100,125,150",
                    help="offered loads in executions/s (default 25,50,100,125,150)")
    ap.add_argument("--window", type=float, default=6.0, help="seconds per load level")
    ap.add_argument("--workflows", type=int, default=50)
    ap.add_argument("--timer-seconds", type=float, default=9.0)
    ap.add_argument("--keep-stack", action="store_true", help="leave the embedded stack running")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is short")
    return ap.parse_args(argv)


def _start_target(args):
    if args.target_url:
        os.environ["ATTUNE_API_URL"] = args.target_url
    if external_api_url():
        target = resolve_target()
        say(f"external target {target.api_url} (nothing started; WebSocket {target.ws_url}; "
            f"AMQP {'known' if target.amqp_url else 'unknown: no queue depths'})")
        return target, None
    from tests.helpers.stack import EmbeddedStack

    cfg = ROOT / os.environ.get("ATTUNE_E2E_CONFIG", "config.e2e.yaml")
    state = ROOT / os.environ.get("ATTUNE_E2E_STATE_DIR", ".state")
    reports = ROOT / os.environ.get("ATTUNE_E2E_REPORTS_DIR", "reports")
    say(f"starting the embedded stack ({cfg.relative_to(ROOT) if cfg.is_relative_to(ROOT) else cfg})")
    stack = EmbeddedStack(cfg, state, reports)
    try:
        info = stack.up()
    except BaseException:
        stack.down()
        raise
    target = Target(api_url=info["api_url"].rstrip("/"), ws_url=info["ws_url"].rstrip("/"),
                    database_url=info.get("database_url"), amqp_url=info.get("amqp_url"),
                    admin_login=os.environ.get("TEST_USER_LOGIN", "test@attune.local"),
                    admin_password=os.environ.get("TEST_USER_PASSWORD", "TestPass123!"),
                    embedded=True, services=stack.services, logs=info.get("logs") or {})
    return target, stack


def cpu_cost(cpu_seconds: dict, tp: dict, cores: int | None = None) -> dict:
    """CPU milliseconds each service spent per execution during the throughput phase, and the
    rate the services' CPU cost allows on this many cores when nothing else runs (a ceiling
    that does not depend on the machine's load at the time; database, broker and the
    benchmark's own client are not counted)."""
    n = tp.get("terminal_total") or 0
    cores = cores or os.cpu_count() or 1
    if not n:
        return {}
    per = {svc: round(sec * 1000.0 / n, 2) for svc, sec in cpu_seconds.items()}
    total = sum(per.values())
    return {"cpu_ms_per_execution": per, "cpu_ms_per_execution_total": round(total, 2),
            "cpu_bound_ceiling_per_s": round(cores * 1000.0 / total, 1) if total else None,
            "cpu_bound_ceiling_cores": cores}


def _reports_dir(args) -> Path:
    return ROOT / os.environ.get("ATTUNE_E2E_REPORTS_DIR", "reports")


def _print_report(doc: dict) -> None:
    res = doc["results"]
    print()
    print(f"attune-e2e benchmark: {doc['target']['kind']} target {doc['target']['api_url']}, "
          f"{doc['machine']['cpu_count']} cores, load average at start "
          f"{doc['machine']['load_average_start']}, {doc['duration_seconds']:.0f} s")
    print()
    print(report.targets_table(res))
    print()
    dists = {k: v for k, v in res.items() if k in ("api", "pipeline", "notifications", "timers",
                                                   "workflows")}
    print(report.distributions_table(dists))
    tp = res.get("throughput")
    if tp and tp.get("levels"):
        print()
        print(report.format_table(
            [[r["offered_per_s"], r["sent_per_s"], r["completed_per_s"], r["outstanding_after"],
              r["queue_depth_after"], "yes" if r["backlog"] else "no",
              r.get("client_cpu_ms_per_sent")] for r in tp["levels"]],
            ["offered /s", "sent /s", "completed /s", "still active", "queue depth", "backlog",
             "client CPU ms/exec"]))
        print(f"backlog drained: {tp.get('drained')} in {tp.get('drain_seconds')} s "
              f"(queue depth after: {tp.get('queue_depth_after_drain')})")
        if tp.get("cpu_ms_per_execution"):
            print("service CPU per execution (ms): " + ", ".join(
                f"{k} {v}" for k, v in tp["cpu_ms_per_execution"].items())
                + f"; total {tp['cpu_ms_per_execution_total']} ms -> CPU-bound ceiling "
                f"{tp['cpu_bound_ceiling_per_s']}/s on {tp['cpu_bound_ceiling_cores']} idle cores")
    mem = res.get("memory")
    if mem and mem.get("services"):
        print()
        print(report.format_table(
            [[n, m["rss_before_kb"] and m["rss_before_kb"] // 1024,
              m["rss_peak_kb"] and m["rss_peak_kb"] // 1024,
              m["rss_after_kb"] and m["rss_after_kb"] // 1024,
              "-" if m["bounded"] is None else ("yes" if m["bounded"] else "NO"),
              m["cpu_seconds_used"]] for n, m in mem["services"].items()],
            ["service", "RSS before MiB", "peak MiB", "after MiB", "bounded", "CPU s used"]))
    for note in doc.get("notes", []):
        print(f"note: {note}")
    print(f"raw figures: {doc['path']}")


def main(argv=None) -> int:
    args = _parse(argv)
    only = set(args.only or SECTIONS)
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    load0 = os.getloadavg() if hasattr(os, "getloadavg") else None
    try:
        target, stack = _start_target(args)
    except BaseException as exc:
        print(f"error: cannot start or reach the target: {exc}", file=sys.stderr)
        return 2
    results: dict = {}
    notes = ["pipeline 'scheduled' instants come from the notifier's execution_status_changed "
             "messages (their `updated` field): the API exposes no scheduled time",
             "latency targets compare the p95; timer precision compares the largest deviation "
             "of event.created from the schedule"]
    errors: dict[str, str] = {}
    bench = None
    cpu_phase: dict = {}
    peak = None
    services = target.services
    try:
        admin = AttuneClient(target.api_url)
        admin.login(target.admin_login, target.admin_password)
        bench = Bench(target, admin)
        bench.setup_pack()
        bench.action("noop", "true")
        before = memory.snapshot(services)
        if services is not None:
            peak = memory.PeakSampler(services)
            peak.start()
        levels = tuple(int(float(x)) if float(x).is_integer() else float(x)
                       for x in args.levels.split(",") if x.strip())
        phases = [
            ("api", lambda: api_latency.run(bench, args.concurrency, args.api_seconds)),
            ("timers", lambda: timers.run(bench, args.timer_seconds)),
            ("pipeline", lambda: pipeline.run(bench, args.webhooks)),
            ("workflows", lambda: workflows.run(bench, args.workflows)),
            ("throughput", lambda: throughput.run(bench, levels, args.window)),
        ]
        for name, fn in phases:
            if name not in only:
                continue
            c0 = memory.snapshot(services)
            try:
                results[name] = fn()
            except Exception as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"
                say(f"{name}: failed: {errors[name]}")
                traceback.print_exc()
            bench.close_listeners()
            c1 = memory.snapshot(services)
            cpu_phase[name] = {n: round(c1[n]["cpu_seconds"] - c0[n]["cpu_seconds"], 2)
                               for n in c1 if c0.get(n, {}).get("cpu_seconds") is not None
                               and c1[n].get("cpu_seconds") is not None
                               and c0[n]["pid"] == c1[n]["pid"]}
            if name == "throughput" and results.get(name) and cpu_phase[name]:
                results[name].update(cpu_cost(cpu_phase[name], results[name]))
            if name == "pipeline" and getattr(bench, "notification_listener_pipeline", None):
                results["notifications"] = pipeline.notification_latency(
                    bench.notification_listener_pipeline, bench.pack_ref)
        if peak is not None:
            peak.stop()
        after = memory.snapshot(services)
        if services is not None:
            results["memory"] = {"services": memory.summary(before, after, peak.peak),
                                 "before": before, "after": after,
                                 "bound_kb": memory.BOUND_KB,
                                 "cpu_seconds_by_phase": cpu_phase}
    finally:
        if bench is not None:
            say("cleaning up (rules disabled, then deleted; pack deleted)")
            bench.cleanup()
        if stack is not None and not args.keep_stack:
            say("stopping the embedded stack")
            try:
                stack.down(reset=True)
            except Exception as exc:
                say(f"stack.down() failed: {exc}")
    out = Path(args.out) if args.out else _reports_dir(args) / "bench.json"
    doc = {
        "started_at": started.isoformat(), "duration_seconds": round(time.monotonic() - t0, 1),
        "target": {"kind": "embedded" if target.embedded else "external",
                   "api_url": target.api_url, "ws_url": target.ws_url,
                   "amqp": bool(target.amqp_url)},
        "machine": {"cpu_count": os.cpu_count(), "load_average_start": load0,
                    "load_average_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
                    "platform": platform.platform(), "python": platform.python_version()},
        "targets": report.compare(results), "results": results, "errors": errors,
        "cleanup_errors": bench.cleanup_errors if bench else [], "notes": notes,
        "path": str(out)}
    report.write_json(out, doc)
    _print_report(doc)
    if errors:
        print(f"measurements that failed: {errors}", file=sys.stderr)
    short = [r for r in doc["targets"] if r["mark"] != "pass"]
    return 1 if (args.strict and short) else 0


if __name__ == "__main__":
    sys.exit(main())
