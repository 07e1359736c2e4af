"""Run one action process: its own session/process group, stdin delivery, bounded concurrent capture
of stdout/stderr (also written live to log files), timeout and cancellation with SIGTERM to the
group, a grace period, then SIGKILL. No process of the group outlives the run.

One thread does it all with poll(2): the pipes (non-blocking), a pidfd for the leader's exit and
an eventfd that `RunControl.cancel/abort` write to; no helper threads per run.
"""
from __future__ import annotations

import errno
import logging
import os
import select
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import BinaryIO

from .output import BoundedBuffer, ProcessOutcome

log = logging.getLogger(__name__)

READ_CHUNK = 65536
# How long the pipes may still be drained after the group leader exited before the rest of the
# group (background children still holding the pipes) is killed.
DRAIN_SECONDS = 0.25
# After that kill: how long to wait for the pipes' end (a process outside the group may hold them).
FINAL_DRAIN_SECONDS = 5.0


class RunControl:
    """Shared between the run thread and the cancel consumer / shutdown path."""

    def __init__(self, execution_id: int):
        self.execution_id = execution_id
        self.cancel_requested = threading.Event()
        self.abort_reason: str | None = None
        self.pgid: int | None = None
        self._lock = threading.Lock()
        self._wake_fd: int | None = None   # an eventfd while `run_process` waits

    def cancel(self) -> None:
        self.cancel_requested.set()
        self.wake()

    def abort(self, reason: str) -> None:
        self.abort_reason = reason
        self.wake()

    def wake(self) -> None:
        with self._lock:
            if self._wake_fd is not None:
                os.eventfd_write(self._wake_fd, 1)

    def _open_wake(self) -> int:
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        with self._lock:
            self._wake_fd = fd
        return fd

    def _close_wake(self) -> None:
        with self._lock:
            fd, self._wake_fd = self._wake_fd, None
        if fd is not None:
            os.close(fd)


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


class _Pump:
    """Moves the bytes of one run: stdout/stderr into their buffers (and live log files), the
    parameters into stdin; notices the leader's exit and wake-ups. Each `step` is one poll(2)."""

    _IN = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR
    _OUT = select.POLLOUT | select.POLLERR | select.POLLHUP

    def __init__(self, proc: subprocess.Popen, control: RunControl,
                 outputs: list[tuple[BinaryIO, BoundedBuffer, BinaryIO | None]],
                 stdin_data: bytes | None):
        self.proc = proc
        self.control = control
        self.exited = False
        self.stdin_error: str | None = None
        self._poll = select.poll()
        self._readers: dict[int, list] = {}   # fd -> [stream, buffer, log sink]
        for stream, buf, sink in outputs:
            fd = stream.fileno()
            os.set_blocking(fd, False)
            self._readers[fd] = [stream, buf, sink]
            self._poll.register(fd, self._IN)
        self._stdin = None
        self._stdin_data = memoryview(stdin_data or b"")
        if stdin_data is not None and proc.stdin is not None:
            self._stdin = proc.stdin
            if stdin_data:
                os.set_blocking(self._stdin.fileno(), False)
                self._poll.register(self._stdin.fileno(), self._OUT)
            else:
                self._close_stdin()
        self._wake_fd = control._open_wake()
        self._poll.register(self._wake_fd, select.POLLIN)
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(proc.pid)
            self._poll.register(self._pidfd, select.POLLIN)
        except (OSError, AttributeError):  # no pidfd (old kernel, seccomp): a thread waits
            threading.Thread(target=self._wait_exit, daemon=True,
                             name=f"exec-{control.execution_id}-wait").start()

    def _wait_exit(self) -> None:
        self.proc.wait()
        self.control.wake()

    def step(self, timeout: float | None) -> None:
        """Wait up to `timeout` seconds (None: until something happens) and handle what did."""
        ms = None if timeout is None else max(int(timeout * 1000 + 0.999), 0)
        try:
            events = self._poll.poll(ms)
        except InterruptedError:
            return
        for fd, _mask in events:
            if fd in self._readers:
                self._read(fd)
            elif self._stdin is not None and fd == self._stdin.fileno():
                self._write()
            elif fd == self._pidfd:
                self._reap()
            elif fd == self._wake_fd:
                try:
                    os.eventfd_read(fd)
                except BlockingIOError:
                    pass
                if self._pidfd is None and self.proc.poll() is not None:
                    self.exited = True

    def _reap(self) -> None:
        self.proc.wait()
        self.exited = True
        self._poll.unregister(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None

    def _read(self, fd: int) -> None:
        stream, buf, sink = self._readers[fd]
        try:
            chunk = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._poll.unregister(fd)
            del self._readers[fd]
            stream.close()
            return
        kept = buf.write(chunk)
        if kept and sink is not None:
            try:
                sink.write(kept)
                sink.flush()
            except (OSError, ValueError):
                log.warning("cannot write the %s log file", buf.stream, exc_info=True)
                self._readers[fd][2] = None

    def _write(self) -> None:
        try:
            written = os.write(self._stdin.fileno(), self._stdin_data[:READ_CHUNK])
        except BlockingIOError:
            return
        except (BrokenPipeError, ConnectionResetError) as exc:
            self.stdin_error = f"Failed to write parameters to stdin: Broken pipe ({exc})"
            self._close_stdin()
            return
        except OSError as exc:
            self.stdin_error = f"Failed to write parameters to stdin: {exc}"
            self._close_stdin()
            return
        self._stdin_data = self._stdin_data[written:]
        if not self._stdin_data:
            self._close_stdin()

    def _close_stdin(self) -> None:
        stream, self._stdin = self._stdin, None
        if stream is None:
            return
        try:
            self._poll.unregister(stream.fileno())
        except (KeyError, ValueError):
            pass
        try:
            stream.close()
        except OSError:
            pass

    def run_until_exit(self, limit: float | None) -> bool:
        """Pump until the leader exited or `limit` seconds passed; True when it exited."""
        end = None if limit is None else time.monotonic() + limit
        while not self.exited:
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                return False
            self.step(left)
        return True

    def drain(self, limit: float) -> None:
        """Read the pipes until both ended or `limit` seconds passed."""
        end = time.monotonic() + limit
        while self._readers:
            left = end - time.monotonic()
            if left <= 0:
                return
            self.step(left)

    def close(self) -> None:
        self._close_stdin()
        for fd, (stream, _buf, _sink) in list(self._readers.items()):
            try:
                stream.close()
            except OSError:
                pass
        self._readers.clear()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        self.control._close_wake()


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
        try:
            sinks.append(open(path, "wb"))
        except FileNotFoundError:
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
    # debug only: the caller logs the run before and its pid with the exit
    log.debug("execution %s: started pid %s (process group %s): %s", control.execution_id,
              proc.pid, pgid, " ".join(argv[:3]) + (" ..." if len(argv) > 3 else ""))

    pump = _Pump(proc, control, [(proc.stdout, out_buf, sinks[0]),
                                 (proc.stderr, err_buf, sinks[1])], stdin_data)
    try:
        deadline = start + timeout_seconds if timeout_seconds else None
        timed_out = cancelled = False
        while not pump.exited:
            if control.cancel_requested.is_set():
                cancelled = True
                break
            if control.abort_reason:
                break
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                timed_out = True
                break
            pump.step(remaining)

        if not pump.exited and (timed_out or cancelled or control.abort_reason):
            reason = "timeout" if timed_out else "cancel" if cancelled else "shutdown"
            log.info("execution %s: %s: sending SIGTERM to process group %s", control.execution_id,
                     reason, pgid)
            signal_group(pgid, signal.SIGTERM)
            if not pump.run_until_exit(kill_grace):
                log.warning("execution %s: process group %s still running %.1fs after SIGTERM; "
                            "sending SIGKILL", control.execution_id, pgid, kill_grace)
                signal_group(pgid, signal.SIGKILL)
        pump.run_until_exit(None)
        duration_ms = int((time.monotonic() - start) * 1000)

        # Pipes stay open while other members of the group hold them; give them a moment, then
        # make sure nothing of the group is left behind.
        pump.drain(DRAIN_SECONDS)
        if group_alive(pgid):
            log.info("execution %s: killing the remaining processes of group %s",
                     control.execution_id, pgid)
            signal_group(pgid, signal.SIGKILL)
        pump.drain(FINAL_DRAIN_SECONDS)
        stdin_error = pump.stdin_error
    finally:
        pump.close()
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
                          cancelled=cancelled, stdin_error=stdin_error,
                          extra={"aborted": control.abort_reason} if control.abort_reason else {},
                          pid=proc.pid)
