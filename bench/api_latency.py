"""API latency: common reads and writes from N concurrent clients for a fixed time.

Client-side clocks (perf_counter around each request, including the HTTP round trip on
localhost). Writes create, update and delete a pack-owned datastore key (deleted at once).
"""
from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from bench.context import Bench, say
from bench.report import summarize
from tests.helpers.client import ApiError


def _ops(bench: Bench, exec_id: int | None):
    reads = [
        ("GET /health", lambda c: c.health()),
        ("GET /api/v1/packs", lambda c: c.list_packs(per_page=20)),
        ("GET /api/v1/actions", lambda c: c.list_actions(per_page=20)),
        ("GET /api/v1/rules", lambda c: c.list_rules(per_page=20)),
        ("GET /api/v1/executions", lambda c: c.list_executions(per_page=20)),
        ("GET /api/v1/events", lambda c: c.list_events(per_page=20)),
        ("GET /api/v1/enforcements", lambda c: c.list_enforcements(per_page=20)),
        ("GET /auth/me", lambda c: c.me()),
    ]
    if exec_id is not None:
        reads.append(("GET /api/v1/executions/{id}", lambda c: c.get_execution(exec_id)))
    return reads


def run(bench: Bench, concurrency: int = 8, seconds: float = 8.0) -> dict:
    say(f"api latency: {concurrency} concurrent clients for {seconds:.0f} s (reads + key writes)")
    admin = bench.admin
    probe = admin.execute(f"{bench.pack_ref}.noop")
    reads = _ops(bench, probe.get("id"))
    samples: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    counter = itertools.count()

    def record(name: str, ms: float | None, failed: bool = False) -> None:
        with lock:
            if failed:
                errors[name] = errors.get(name, 0) + 1
            else:
                samples.setdefault(name, []).append(ms)

    def timed(name, fn):
        t0 = time.perf_counter()
        try:
            fn()
        except (ApiError, Exception):
            record(name, None, failed=True)
            return False
        record(name, (time.perf_counter() - t0) * 1000.0)
        return True

    def worker(idx: int) -> None:
        c = bench.client()
        i = idx
        while time.monotonic() < deadline:
            i += 1
            if i % 4 == 0:  # every 4th step: a write cycle on a key of our pack
                n = next(counter)
                name = f"bench_key_{bench.uid}_{n}"
                ref = f"{bench.pack_ref}.{name}"
                if timed("POST /api/v1/keys", lambda: c.create_key(
                        ref=ref, name=name, owner_type="pack", owner_pack_ref=bench.pack_ref,
                        value=f"v{n}")):
                    timed("PUT /api/v1/keys/{ref}", lambda: c.update_key(ref, value=f"w{n}"))
                    if not timed("DELETE /api/v1/keys/{ref}", lambda: c.delete_key(ref)):
                        bench.defer(f"delete key {ref}", lambda: admin.delete_key(ref))
            else:
                name, fn = reads[i % len(reads)]
                timed(name, lambda: fn(c))

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    elapsed = time.monotonic() - started
    every = [v for vs in samples.values() for v in vs]
    reads_all = [v for k, vs in samples.items() if k.startswith("GET") for v in vs]
    writes_all = [v for k, vs in samples.items() if not k.startswith("GET") for v in vs]
    out = {
        "concurrency": concurrency,
        "seconds": round(elapsed, 2),
        "requests": len(every),
        "requests_per_s": round(len(every) / elapsed, 1) if elapsed else None,
        "errors": errors,
        "all": summarize(every),
        "reads": summarize(reads_all),
        "writes": summarize(writes_all),
        "by_endpoint": {k: summarize(v) for k, v in sorted(samples.items())},
        "raw": {k: [round(x, 2) for x in v] for k, v in samples.items()},
    }
    say(f"api latency: {len(every)} requests ({out['requests_per_s']}/s), p50 "
        f"{out['all']['p50']} ms, p95 {out['all']['p95']} ms, errors {sum(errors.values())}")
    return out
