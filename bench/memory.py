"""RSS and CPU time of each embedded service (tests.helpers.services.ServiceManager), sampled
before the load, every second during the run (peak), and after the backlog drained."""
from __future__ import annotations

import threading

from tests.helpers.services import SERVICE_ORDER

BOUND_KB = 64 * 1024   # growth after drain beyond this counts as not bounded


def snapshot(services) -> dict:
    if services is None:
        return {}
    return {n: {"pid": services.pid(n), "rss_kb": services.rss_kb(n),
                "cpu_seconds": services.cpu_seconds(n)} for n in SERVICE_ORDER}


class PeakSampler(threading.Thread):
    def __init__(self, services, interval: float = 1.0):
        super().__init__(name="bench-rss-sampler", daemon=True)
        self.services = services
        self.interval = interval
        self.peak: dict[str, int] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            for n in SERVICE_ORDER:
                rss = self.services.rss_kb(n)
                if rss is not None and rss > self.peak.get(n, 0):
                    self.peak[n] = rss

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=3)


def summary(before: dict, after: dict, peak: dict) -> dict:
    out = {}
    for n in SERVICE_ORDER:
        b = (before.get(n) or {}).get("rss_kb")
        a = (after.get(n) or {}).get("rss_kb")
        cb = (before.get(n) or {}).get("cpu_seconds")
        ca = (after.get(n) or {}).get("cpu_seconds")
        same = (before.get(n) or {}).get("pid") == (after.get(n) or {}).get("pid")
        out[n] = {"rss_before_kb": b, "rss_peak_kb": peak.get(n), "rss_after_kb": a,
                  "growth_kb": (a - b) if a is not None and b is not None else None,
                  "bounded": (a - b) <= BOUND_KB if a is not None and b is not None else None,
                  "cpu_seconds_used": round(ca - cb, 2) if ca is not None and cb is not None
                  and same else None,
                  "same_process": same}
    return out
