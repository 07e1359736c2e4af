"""T3.21 Action log size limits (scenarios.md T3.21).

Upstream (`runtime/log_writer.rs`) keeps at most `worker.max_stdout_bytes` / `max_stderr_bytes` of
each stream: a byte-exact cut at limit - 128, then the notice
"\\n\\n[OUTPUT TRUNCATED: <stream> exceeded size limit]\\n"; the rest is discarded (counted in
`result.<stream>_bytes_truncated` on failure). The fixture action `big_output` writes a
deterministic pattern of 1024-byte lines (line k: 7-digit k, ":", 1015 x chr(97 + k % 26),
newline).
The limit is the embedded stack's config value; on live targets ATTUNE_E2E_MAX_STDOUT_BYTES
(default: upstream's 10 MiB).
"""
import json
import os
from pathlib import Path

import pytest

from tests.helpers.notifications import read_whole_log
from tests.helpers.polling import wait_for_execution

pytestmark = [pytest.mark.tier3, pytest.mark.logs, pytest.mark.limits]

MIB = 1024 * 1024
RESERVE = 128


def notice(stream: str) -> str:
    return f"\n\n[OUTPUT TRUNCATED: {stream} exceeded size limit]\n"


def pattern(n: int) -> str:
    """The first n bytes of big_output's pattern."""
    lines = (n // 1024) + 1
    return "".join(f"{k:07d}:" + chr(97 + k % 26) * 1015 + "\n" for k in range(lines))[:n]


def stream_limit(target, stream: str) -> int:
    if target.services is not None:
        return int(target.services.cfg.get(f"worker.max_{stream}_bytes", 10 * MIB))
    return int(os.environ.get(f"ATTUNE_E2E_MAX_{stream.upper()}_BYTES", 10 * MIB))


def vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


@pytest.mark.xdist_group("t3_heavy")  # serial with T3.22's bursts and T3.14's latency test
def test_stdout_past_the_limit_is_cut_with_the_notice(admin, uid, e2e_pack, target):
    """T3.21 Action log size limits: big_output writes 10 MiB to stdout and exits 0; the execution
    is completed and result.stdout is exactly pattern[:limit-128] + the stdout notice; the whole
    result serialises to under limit + 4 KiB; the stdout log stream serves at most `limit` bytes,
    equal to result.stdout. Embedded: the worker's peak RSS (VmHWM) grows by less than 50 MB."""
    limit = stream_limit(target, "stdout")
    worker_pid = target.services.pid("worker") if target.services is not None else None
    hwm_before = vm_hwm_kb(worker_pid) if worker_pid else None

    ex = admin.execute(f"{e2e_pack}.big_output", {"bytes": 10 * MIB, "stream": "stdout",
                                                  "exit_code": 0})
    ex = wait_for_execution(admin, ex["id"], "completed", timeout=60)
    result = ex["result"]
    expected = pattern(limit - RESERVE) + notice("stdout")
    stdout = result.get("stdout") or ""
    assert stdout == expected, (
        f"stdout differs from pattern[:{limit - RESERVE}] + notice: length {len(stdout)} vs "
        f"{len(expected)}, head {stdout[:80]!r}, tail {stdout[-80:]!r}")
    assert (result.get("exit_code"), result.get("succeeded")) == (0, True), \
        f"unexpected result flags: { {k: v for k, v in result.items() if k != 'stdout'} }"
    size = len(json.dumps(result))
    assert size < limit + 4096, f"the result serialises to {size} bytes (limit {limit})"

    served, served_bytes = read_whole_log(admin, ex["id"], "stdout")
    assert served_bytes <= limit, f"the log stream served {served_bytes} bytes (limit {limit})"
    assert served == stdout, f"log stream content ({len(served)} chars) differs from result.stdout"

    if worker_pid:
        assert target.services.pid("worker") == worker_pid, "the worker restarted during the run"
        growth_mb = (vm_hwm_kb(worker_pid) - hwm_before) / 1024
        assert growth_mb < 50, f"the worker's peak RSS grew by {growth_mb:.1f} MB"


def test_failing_run_reports_truncated_byte_count(admin, e2e_pack, target):
    """T3.21 Action log size limits, failure: 2 MiB on stdout then exit 1 ends failed with
    stdout_truncated true, stdout_bytes_truncated = 2 MiB - (limit - 128), the cut stdout kept and
    error "Command exited with code 1" (empty stderr)."""
    limit = stream_limit(target, "stdout")
    total = 2 * MIB
    if total <= limit:
        pytest.skip(f"the target's stdout limit {limit} is not below 2 MiB (live default 10 MiB)")
    ex = admin.execute(f"{e2e_pack}.big_output", {"bytes": total, "stream": "stdout",
                                                  "exit_code": 1})
    ex = wait_for_execution(admin, ex["id"], "failed", timeout=60)
    result = ex["result"]
    flags = {k: v for k, v in result.items() if k != "stdout"}
    assert (result.get("exit_code"), result.get("stdout_truncated"),
            result.get("stdout_bytes_truncated"), result.get("error")) == \
        (1, True, total - (limit - RESERVE), "Command exited with code 1"), f"unexpected result: {flags}"
    assert result.get("stdout") == pattern(limit - RESERVE) + notice("stdout"), \
        "the failed run's stdout is not the cut pattern plus notice"


def test_stderr_past_the_limit_is_cut_and_the_notice_is_the_error(admin, e2e_pack, target):
    """T3.21 Action log size limits, stderr: 2 MiB on stderr then exit 1 ends failed with
    stderr_truncated true, stderr_bytes_truncated = 2 MiB - (limit - 128) and result.error equal
    to the notice line "[OUTPUT TRUNCATED: stderr exceeded size limit]" (the last stderr line);
    the stderr log stream serves at most `limit` bytes and ends with the notice."""
    limit = stream_limit(target, "stderr")
    total = 2 * MIB
    if total <= limit:
        pytest.skip(f"the target's stderr limit {limit} is not below 2 MiB (live default 10 MiB)")
    ex = admin.execute(f"{e2e_pack}.big_output", {"bytes": total, "stream": "stderr",
                                                  "exit_code": 1})
    ex = wait_for_execution(admin, ex["id"], "failed", timeout=60)
    result = ex["result"]
    assert (result.get("exit_code"), result.get("stderr_truncated"),
            result.get("stderr_bytes_truncated"), result.get("error")) == \
        (1, True, total - (limit - RESERVE), "[OUTPUT TRUNCATED: stderr exceeded size limit]"), \
        f"unexpected result: {result}"
    served, served_bytes = read_whole_log(admin, ex["id"], "stderr")
    assert served_bytes <= limit, f"the stderr stream served {served_bytes} bytes (limit {limit})"
    assert served == pattern(limit - RESERVE) + notice("stderr"), \
        f"stderr log content ({len(served)} chars) is not the cut pattern plus notice"
