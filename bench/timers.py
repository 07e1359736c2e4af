"""Timer precision: a 1 s `core.intervaltimer` rule and a `*/2 * * * * *` `core.crontimer` rule
run side by side for a fixed time. Deviation of each fire from its schedule, two ways:
`payload.fired_at` (the sensor's own clock) and `event.created` (the platform's record, which
adds the sensor -> API post). Interval schedule: first fire + k x interval (drift accumulates);
cron schedule: the mark itself (a whole even second)."""
from __future__ import annotations

import time
from datetime import timedelta

from bench.context import Bench, say
from bench.report import ms_between, parse_ts, summarize
from tests.helpers.scenario import full_events


def run(bench: Bench, seconds: float = 9.0) -> dict:
    interval = bench.rule("tick", "core.intervaltimer", f"{bench.pack_ref}.noop",
                          trigger_params={"unit": "seconds", "interval": 1})
    cron = bench.rule("cron", "core.crontimer", f"{bench.pack_ref}.noop",
                      trigger_params={"expression": "*/2 * * * * *"})
    say(f"timers: 1 s interval and */2 s cron rules for {seconds:.0f} s ...")
    time.sleep(seconds)
    for r in (interval, cron):
        try:
            bench.admin.disable_rule(r["ref"])
        except Exception:
            pass
    time.sleep(0.5)
    iv = full_events(bench.admin, interval["ref"])
    cr = full_events(bench.admin, cron["ref"])
    dev = {"interval_fired_at": [], "interval_created": [], "interval_gap": [],
           "cron_fired_at": [], "cron_created": []}
    if iv:
        anchor = parse_ts(iv[0]["payload"]["fired_at"])
        prev = None
        for k, ev in enumerate(iv):
            mark = anchor + timedelta(seconds=k)
            fired = ev["payload"].get("fired_at")
            dev["interval_fired_at"].append(ms_between(mark, fired))
            dev["interval_created"].append(ms_between(mark, ev.get("created")))
            if prev is not None:
                dev["interval_gap"].append(ms_between(prev, fired) - 1000.0)
            prev = fired
    for ev in cr:
        fired = parse_ts(ev["payload"].get("fired_at"))
        mark = fired.replace(microsecond=0)
        if fired - mark > timedelta(milliseconds=500):   # fired early, before the mark
            mark += timedelta(seconds=1)
        if mark.second % 2:
            mark -= timedelta(seconds=1)
        dev["cron_fired_at"].append(ms_between(mark, fired))
        dev["cron_created"].append(ms_between(mark, ev.get("created")))
    worst = [abs(v) for k in ("interval_created", "cron_created", "interval_gap")
             for v in dev[k] if v is not None]
    out = {"interval_events": len(iv), "cron_events": len(cr), "seconds": seconds,
           "max_abs_deviation_ms": round(max(worst), 2) if worst else None,
           **{k: summarize(v) for k, v in dev.items()},
           "raw": {k: [round(x, 2) for x in v] for k, v in dev.items()},
           "schedule": "interval: first fired_at + k x 1 s; cron: the even-second mark"}
    say(f"timers: {len(iv)} interval and {len(cr)} cron fires, max |deviation| "
        f"{out['max_abs_deviation_ms']} ms (event.created vs schedule)")
    return out
