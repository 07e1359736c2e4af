"""Run one action process: its own session/process group, stdin delivery, bounded concurrent capture
of stdout/stderr (also written live to log files), timeout and cancellation with SIGTERM to the
group, a grace period, then SIGKILL. No process of the group outlives the run.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import BinaryIO

from .output import BoundedBuffer, ProcessOutcome

log = logging.getLogger(__name__)

READ_CHUNK = 65536
# How long readers may keep draining pipes after the group leader exited before the rest of the
# group (background children still holding the pipes) is killed.
DRAIN_SECONDS = 0.25


class RunControl:
    """Shared between the run thread and the cancel consumer / shutdown path."""

    def __init__(self, execution_id: int):
        self.execution_id = execution_id
        self.cancel_requested = threading.Event()
        self.abort_reason: str | None = None
        self.wake = threading.Event()
        self.pgid: int | None = None

    def cancel(self) -> None:
        self.cancel_requested.set()
        self.wake.set()

    def abort(self, reason: str) -> None:
        self.abort_reason = reason
        self.wake.set()


def signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        log.warning("no permission to signal process group %s", pgid)
        return False


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _reader(stream: BinaryIO, buf: BoundedBuffer, sink: BinaryIO | None) -> None:
    try:
        while True:
            chunk = stream.read1(READ_CHUNK) if hasattr(stream, "read1") else stream.read(READ_CHUNK)
            if not chunk:
                break
            kept = buf.write(chunk)
            if kept and sink is not None:
                try:
                    sink.write(kept)
                    sink.flush()
                except OSError:
                    log.warning("cannot write the %s log file", buf.stream, exc_info=True)
                    sink = None
    except (OSError, ValueError):
        pass
    finally:
        try:
            stream.close()
        except OSError:
            pass


def _writer(stream: BinaryIO, data: bytes, errors: list) -> None:
    try:
        stream.write(data)
        stream.flush()
    except (BrokenPipeError, ConnectionResetError) as exc:
        errors.append(f"Failed to write parameters to stdin: Broken pipe ({exc})")
    except (OSError, ValueError) as exc:
        errors.append(f"Failed to write parameters to stdin: {exc}")
    finally:
        try:
            stream.close()
        except OSError:
            pass


def run_process(argv: list[str], *, cwd: str, env: dict[str, str], stdin_data: bytes | None,
                timeout_seconds: int | None, max_stdout: int, max_stderr: int,
                stdout_log: Path | None, stderr_log: Path | None, kill_grace: float,
                control: RunControl, pass_fds: tuple[int, ...] = (),
                preexec_fn=None) -> ProcessOutcome:
    """Spawn `argv` and wait for it; never raises for process failures (OSError on spawn does).
    `pass_fds` / `preexec_fn` go to Popen (the container runtime's info fd and rlimits)."""
    out_buf = BoundedBuffer(max_stdout, "stdout")
    err_buf = BoundedBuffer(max_stderr, "stderr")
    sinks: list[BinaryIO | None] = []
    for path in (stdout_log, stderr_log):
        if path is None:
            sinks.append(None)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        sinks.append(open(path, "wb"))

    start = time.monotonic()
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env,
                                stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, close_fds=True,
                                pass_fds=tuple(pass_fds), preexec_fn=preexec_fn)
    except OSError:
        for sink in sinks:
            if sink is not None:
                sink.close()
        raise
    pgid = proc.pid
    control.pgid = pgid
    log.info("execution %s: started pid %s (process group %s): %s", control.execution_id,
             proc.pid, pgid, " ".join(argv[:3]) + (" ..." if len(argv) > 3 else ""))

    stdin_errors: list[str] = []
    threads = [threading.Thread(target=_reader, args=(proc.stdout, out_buf, sinks[0]), daemon=True,
                                name=f"exec-{control.execution_id}-stdout"),
               threading.Thread(target=_reader, args=(proc.stderr, err_buf, sinks[1]), daemon=True,
                                name=f"exec-{control.execution_id}-stderr")]
    if stdin_data is not None:
        threads.append(threading.Thread(target=_writer, args=(proc.stdin, stdin_data, stdin_errors),
                                        daemon=True, name=f"exec-{control.execution_id}-stdin"))
    for t in threads:
        t.start()

    def _wait_exit():
        proc.wait()
        control.wake.set()

    threading.Thread(target=_wait_exit, daemon=True, name=f"exec-{control.execution_id}-wait").start()

    deadline = start + timeout_seconds if timeout_seconds else None
    timed_out = cancelled = False
    while proc.poll() is None:
        if control.cancel_requested.is_set():
            cancelled = True
            break
        if control.abort_reason:
            break
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            timed_out = True
            break
        control.wake.wait(timeout=remaining if remaining is not None else 1.0)
        control.wake.clear()

    if proc.poll() is None and (timed_out or cancelled or control.abort_reason):
        reason = "timeout" if timed_out else "cancel" if cancelled else "shutdown"
        log.info("execution %s: %s: sending SIGTERM to process group %s", control.execution_id,
                 reason, pgid)
        signal_group(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=kill_grace)
        except subprocess.TimeoutExpired:
            log.warning("execution %s: process group %s still running %.1fs after SIGTERM; "
                        "sending SIGKILL", control.execution_id, pgid, kill_grace)
            signal_group(pgid, signal.SIGKILL)
            proc.wait()
    proc.wait()
    duration_ms = int((time.monotonic() - start) * 1000)

    # Pipes stay open while other members of the group hold them; give them a moment, then make
    # sure nothing of the group is left behind.
    drain_deadline = time.monotonic() + DRAIN_SECONDS
    for t in threads[:2]:
        t.join(timeout=max(drain_deadline - time.monotonic(), 0))
    if group_alive(pgid):
        log.info("execution %s: killing the remaining processes of group %s",
                 control.execution_id, pgid)
        signal_group(pgid, signal.SIGKILL)
    for t in threads:
        t.join(timeout=5)
    for sink in sinks:
        if sink is not None:
            try:
                sink.close()
            except OSError:
                pass

    code = proc.returncode
    exit_code = code if code is not None and code >= 0 else -1
    return ProcessOutcome(exit_code=exit_code, duration_ms=duration_ms, stdout=out_buf,
                          stderr=err_buf, timed_out=timed_out, timeout_seconds=timeout_seconds,
                          cancelled=cancelled, stdin_error=stdin_errors[0] if stdin_errors else None,
                          extra={"aborted": control.abort_reason} if control.abort_reason else {})
