"""worker/runner.py: the single-thread poll loop that runs one action process (capture, stdin,
timeout, cancel, abort, leftovers of the process group)."""
import os
import threading
import time

import pytest

from attune_emulator.worker.runner import RunControl, group_alive, run_process


def run(argv, tmp_path, *, stdin=None, timeout=30, control=None, max_out=1 << 20, grace=2.0):
    return run_process(argv, cwd=str(tmp_path), env=dict(os.environ), stdin_data=stdin,
                       timeout_seconds=timeout, max_stdout=max_out, max_stderr=1 << 20,
                       stdout_log=tmp_path / "logs" / "stdout.log",
                       stderr_log=tmp_path / "logs" / "stderr.log", kill_grace=grace,
                       control=control or RunControl(1))


def test_captures_both_streams_exit_code_and_live_logs(tmp_path):
    out = run(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"], tmp_path)
    assert (out.exit_code, out.stdout.text, out.stderr.text) == (3, "out\n", "err\n")
    assert not (out.timed_out or out.cancelled or out.stdin_error)
    assert (tmp_path / "logs" / "stdout.log").read_text() == "out\n"
    assert (tmp_path / "logs" / "stderr.log").read_text() == "err\n"


def test_stdin_larger_than_a_pipe_buffer_is_delivered_whole(tmp_path):
    data = b"x" * (3 * 1024 * 1024) + b"\n"
    out = run(["/bin/sh", "-c", "wc -c"], tmp_path, stdin=data)
    assert out.exit_code == 0 and out.stdout.text.strip() == str(len(data))
    assert out.stdin_error is None


def test_stdin_not_read_by_an_exiting_process_is_a_broken_pipe(tmp_path):
    out = run(["/bin/sh", "-c", "exit 0"], tmp_path, stdin=b"y" * (1024 * 1024))
    assert out.exit_code == 0
    assert out.stdin_error and out.stdin_error.startswith(
        "Failed to write parameters to stdin: Broken pipe")


def test_large_output_is_bounded_and_the_rest_discarded(tmp_path):
    out = run(["/bin/sh", "-c", "head -c 300000 /dev/zero"], tmp_path, max_out=4096)
    assert out.exit_code == 0 and out.stdout.truncated
    assert out.stdout.bytes_truncated == 300000 - (4096 - 128)


def test_timeout_terminates_the_group(tmp_path):
    t0 = time.monotonic()
    out = run(["/bin/sh", "-c", "sleep 30"], tmp_path, timeout=1)
    assert out.timed_out and not out.cancelled and out.exit_code == -1
    assert time.monotonic() - t0 < 5


def test_sigterm_ignored_gets_sigkill_after_the_grace(tmp_path):
    t0 = time.monotonic()
    out = run(["/bin/sh", "-c", "trap '' TERM; sleep 30 & wait; sleep 30"], tmp_path, timeout=1,
              grace=0.5)
    took = time.monotonic() - t0
    assert out.timed_out and 1.4 <= took < 6, took


def test_cancel_from_another_thread(tmp_path):
    control = RunControl(7)
    threading.Timer(0.5, control.cancel).start()
    t0 = time.monotonic()
    out = run(["/bin/sh", "-c", "echo started; sleep 30"], tmp_path, control=control)
    assert out.cancelled and not out.timed_out
    assert out.stdout.text == "started\n"
    assert time.monotonic() - t0 < 5


def test_abort_reason_is_reported(tmp_path):
    control = RunControl(8)
    threading.Timer(0.3, control.abort, args=("worker shut down",)).start()
    out = run(["/bin/sh", "-c", "sleep 30"], tmp_path, control=control)
    assert out.extra == {"aborted": "worker shut down"} and not out.cancelled


def test_cancel_requested_before_the_wait_is_seen(tmp_path):
    control = RunControl(9)
    control.cancel()
    out = run(["/bin/sh", "-c", "sleep 30"], tmp_path, control=control)
    assert out.cancelled


def test_background_child_holding_the_pipes_is_killed_after_the_drain(tmp_path):
    t0 = time.monotonic()
    control = RunControl(10)
    out = run(["/bin/sh", "-c", "echo leader; (sleep 30; echo late) & exit 0"], tmp_path,
              control=control)
    assert out.exit_code == 0 and out.stdout.text == "leader\n"
    assert time.monotonic() - t0 < 5
    deadline = time.monotonic() + 3
    while group_alive(control.pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not group_alive(control.pgid)


def test_no_thread_or_descriptor_left_behind(tmp_path):
    before_fds = len(os.listdir("/proc/self/fd"))
    before_threads = threading.active_count()
    for _ in range(20):
        run(["/bin/true"], tmp_path, stdin=b"{}\n")
    assert len(os.listdir("/proc/self/fd")) <= before_fds
    assert threading.active_count() <= before_threads


def test_spawn_failure_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        run([str(tmp_path / "missing")], tmp_path)


def test_without_pidfd_a_waiter_thread_reports_the_exit(tmp_path, monkeypatch):
    def no_pidfd(_pid):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    out = run(["/bin/sh", "-c", "echo hi; exit 4"], tmp_path)
    assert (out.exit_code, out.stdout.text) == (4, "hi\n")
    control = RunControl(11)
    threading.Timer(0.3, control.cancel).start()
    assert run(["/bin/sh", "-c", "sleep 30"], tmp_path, control=control).cancelled
