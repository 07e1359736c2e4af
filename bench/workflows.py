"""50 concurrent workflows: two sequential shell tasks each, all started at once; how many
complete, how long each took (`updated - created` of the parent) and the wall time of the batch."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from bench.context import Bench, say
from bench.report import ms_between, summarize


def run(bench: Bench, count: int = 50, timeout: float = 75.0) -> dict:
    step = bench.action("wf_step", "true")
    wf = bench.workflow("wf", {"version": "1.0.0", "tasks": [
        {"name": "first", "action": step["ref"],
         "next": [{"when": "{{ succeeded() }}", "do": ["second"]}]},
        {"name": "second", "action": step["ref"]}]})
    say(f"workflows: starting {count} workflows ({wf['ref']}, 2 sequential tasks) at once ...")
    t0 = time.time()

    def launch(_i):
        return bench.client().execute(wf["ref"])["id"]

    with ThreadPoolExecutor(max_workers=16) as pool:
        ids = [i for i in pool.map(launch, range(count))]
    launched = time.time() - t0
    while time.time() - t0 < timeout:
        if len([i for i in bench.terminal_records(wf["ref"]) if i in ids]) >= count:
            break
        time.sleep(0.25)
    wall = time.time() - t0
    durations, statuses = [], {}
    for pid in ids:
        ex = bench.admin.get_execution(pid)
        statuses[ex["status"]] = statuses.get(ex["status"], 0) + 1
        if ex["status"] == "completed":
            durations.append(ms_between(ex["created"], ex["updated"]))
    out = {"started": count, "completed": statuses.get("completed", 0), "statuses": statuses,
           "launch_seconds": round(launched, 2), "wall_seconds": round(wall, 2),
           "duration_ms": summarize(durations),
           "raw": {"duration_ms": [round(d, 1) for d in durations]}}
    say(f"workflows: {out['completed']}/{count} completed in {wall:.1f} s wall; per workflow p50 "
        f"{out['duration_ms']['p50']} ms, p95 {out['duration_ms']['p95']} ms")
    return out
