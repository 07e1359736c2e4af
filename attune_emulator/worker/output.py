"""Output capture and result shaping (pure logic, no processes).

Upstream reference: `runtime/log_writer.rs` (bounded capture), `runtime/process_executor.rs`
(parsing, error text) and `executor.rs` (the `execution.result` documents).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml

NOTICE_RESERVE_BYTES = 128


def truncation_notice(stream: str) -> bytes:
    return f"\n\n[OUTPUT TRUNCATED: {stream} exceeded size limit]\n".encode()


class BoundedBuffer:
    """Keeps at most `max_bytes - 128` bytes of a stream; on overflow cuts byte-exactly, appends the
    notice once and discards the rest (counting it in `bytes_truncated`)."""

    def __init__(self, max_bytes: int, stream: str = "stdout"):
        self.max_bytes = int(max_bytes)
        self.stream = stream
        self.effective_limit = max(self.max_bytes - NOTICE_RESERVE_BYTES, 0)
        self._buf = bytearray()
        self.data_bytes = 0
        self.total_bytes = 0
        self.truncated = False

    def write(self, chunk: bytes) -> bytes:
        """Append `chunk`; return the bytes actually kept (notice included) for a live log file."""
        self.total_bytes += len(chunk)
        if self.truncated or not chunk:
            return b""
        room = self.effective_limit - self.data_bytes
        if room <= 0:
            return self._truncate(b"")
        if len(chunk) > room:
            return self._truncate(chunk[:room])
        self._buf += chunk
        self.data_bytes += len(chunk)
        return chunk

    def _truncate(self, head: bytes) -> bytes:
        self._buf += head
        self.data_bytes += len(head)
        self.truncated = True
        notice = truncation_notice(self.stream)
        self._buf += notice
        return head + notice

    @property
    def bytes_truncated(self) -> int:
        return self.total_bytes - self.data_bytes if self.truncated else 0

    @property
    def raw(self) -> bytes:
        return bytes(self._buf)

    @property
    def text(self) -> str:
        return self._buf.decode("utf-8", errors="replace")


def rust_lines(text: str) -> list[str]:
    """Lines as Rust's `str::lines`: split on \\n, drop one trailing \\r, no final empty line."""
    if not text:
        return []
    parts = text.split("\n")
    if parts[-1] == "":
        parts.pop()
    return [p[:-1] if p.endswith("\r") else p for p in parts]


_NOTHING = object()


def parse_output(stdout: str, output_format: str) -> Any:
    """The parsed `data` for a successful run, or `_NOTHING` (so that JSON null is still data)."""
    fmt = (output_format or "text").lower()
    if fmt == "json":
        try:
            return json.loads(stdout.strip())
        except ValueError:
            pass
        lines = rust_lines(stdout.strip())
        if lines:
            try:
                return json.loads(lines[-1])
            except ValueError:
                pass
        return _NOTHING
    if fmt == "yaml":
        try:
            return yaml.safe_load(stdout)
        except yaml.YAMLError:
            return _NOTHING
    if fmt == "jsonl":
        items = []
        for line in rust_lines(stdout):
            line = line.strip()
            if not line:
                continue
            try:
                items.append(json.loads(line))
            except ValueError:
                continue
        return items if items else _NOTHING
    return _NOTHING


def has_data(value: Any) -> bool:
    return value is not _NOTHING


def error_from_stderr(exit_code: int, stderr: str) -> str:
    """`Command exited with code N` without stderr, the whole stderr up to 5 lines, else its last."""
    if not stderr:
        return f"Command exited with code {exit_code}"
    lines = rust_lines(stderr)
    if len(lines) > 5:
        return lines[-1]
    return stderr


@dataclass
class ProcessOutcome:
    """What running one action process produced."""
    exit_code: int
    duration_ms: int
    stdout: BoundedBuffer
    stderr: BoundedBuffer
    timed_out: bool = False
    timeout_seconds: int | None = None
    cancelled: bool = False
    stdin_error: str | None = None
    extra: dict = field(default_factory=dict)
    pid: int | None = None


def _add_logs_and_truncation(result: dict, outcome: ProcessOutcome, stderr_log: str | None) -> None:
    if outcome.stderr.text.strip() and stderr_log:
        result["stderr_log"] = stderr_log
    if outcome.stdout.truncated:
        result["stdout_truncated"] = True
        result["stdout_bytes_truncated"] = outcome.stdout.bytes_truncated
    if outcome.stderr.truncated:
        result["stderr_truncated"] = True
        result["stderr_bytes_truncated"] = outcome.stderr.bytes_truncated


def shape_result(outcome: ProcessOutcome, output_format: str,
                 stderr_log: str | None = None) -> tuple[str, dict]:
    """(`status`, `result`) for a finished process: completed, failed or cancelled."""
    stdout = outcome.stdout.text
    stderr = outcome.stderr.text

    if outcome.cancelled:
        result = {"succeeded": False, "cancelled": True, "exit_code": outcome.exit_code,
                  "duration_ms": outcome.duration_ms, "error": "Execution cancelled by user"}
        if stdout:
            result["stdout"] = stdout
        _add_logs_and_truncation(result, outcome, stderr_log)
        return "cancelled", result

    if outcome.timed_out:
        result = {"succeeded": False, "exit_code": -1, "duration_ms": outcome.duration_ms,
                  "error": f"Execution timed out after {outcome.timeout_seconds} seconds"}
        if stdout:
            result["stdout"] = stdout
        _add_logs_and_truncation(result, outcome, stderr_log)
        return "failed", result

    error: str | None = None
    if outcome.stdin_error:
        broken_pipe = "Broken pipe" in outcome.stdin_error or "Errno 32" in outcome.stdin_error
        if not (broken_pipe and outcome.duration_ms < 500 and outcome.exit_code == 0):
            error = outcome.stdin_error
    if error is None and outcome.exit_code != 0:
        error = error_from_stderr(outcome.exit_code, stderr)

    if error is None:
        data = _NOTHING
        if stdout.strip():
            data = parse_output(stdout, output_format)
        result = {"exit_code": 0, "duration_ms": outcome.duration_ms, "succeeded": True}
        if not has_data(data) and stdout:
            result["stdout"] = stdout
        if stderr.strip() and stderr_log:
            result["stderr_log"] = stderr_log
        if has_data(data):
            result["data"] = data
        return "completed", result

    result = {"succeeded": False, "exit_code": outcome.exit_code,
              "duration_ms": outcome.duration_ms, "error": error}
    if stdout:
        result["stdout"] = stdout
    _add_logs_and_truncation(result, outcome, stderr_log)
    return "failed", result


def failure_result(message: str) -> dict:
    """A preparation or catastrophic failure (no process output)."""
    return {"succeeded": False, "error": message}
