"""The suite's one way to wait: `wait_until`, a tenacity loop with a deadline.

It fails with what was expected, how long it waited and the last value it saw
("execution 42 (p.a) still `running` after 20.0 s, waiting for `completed`; last result: ...").
A probe may raise `WaitAborted` to stop at once (an execution in the wrong terminal status).
Everything else here is a thin wrapper.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable

import requests
from tenacity import (RetryError, Retrying, retry_if_exception_type, retry_if_result,
                      stop_after_delay, wait_exponential)

TERMINAL = frozenset({"completed", "failed", "cancelled", "timeout", "abandoned"})


class WaitTimeout(AssertionError):
    """The awaited condition did not hold before the deadline."""


class WaitAborted(AssertionError):
    """A probe saw a state from which the awaited condition can no longer be reached."""


_TRANSIENT = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError)


def trim(value: Any, limit: int = 500) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 15] + f"...(+{len(text) - limit + 15})"


def wait_until(probe: Callable[[], Any], *, timeout: float, description: str,
               interval: float = 0.05, max_interval: float = 0.5,
               done: Callable[[Any], bool] = lambda v: bool(v),
               ignore: tuple[type[BaseException], ...] = ()) -> Any:
    """Call `probe()` until `done(value)`; return that value.

    Polls every `interval` s, doubling up to `max_interval`. Connection errors (a service
    restarting) and exceptions listed in `ignore` count as "not yet"; any other exception,
    WaitAborted in particular, propagates at once. On the deadline raises WaitTimeout naming
    `description`, the time waited and the last value (or exception) observed.
    """
    last: dict[str, Any] = {"value": "<never probed>", "attempts": 0}
    start = time.monotonic()

    def attempt():
        last["attempts"] += 1
        try:
            value = probe()
        except _TRANSIENT + tuple(ignore) as exc:  # noqa: B030 - tuple concatenation
            last["value"] = f"<{type(exc).__name__}: {trim(str(exc), 200)}>"
            raise
        last["value"] = value
        return value

    retrying = Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_exponential(multiplier=interval, min=interval, max=max_interval),
        retry=retry_if_result(lambda v: not done(v))
        | retry_if_exception_type(_TRANSIENT + tuple(ignore)),
        reraise=False,
    )
    try:
        return retrying(attempt)
    except RetryError:
        elapsed = time.monotonic() - start
        raise WaitTimeout(
            f"{description}: not reached after {elapsed:.1f} s ({last['attempts']} probes); "
            f"last observed: {trim(last['value'])}") from None


def _wanted(status: str | Iterable[str]) -> frozenset[str]:
    return frozenset([status]) if isinstance(status, str) else frozenset(status)


def _result_summary(execution: dict) -> str:
    return trim(execution.get("result"), 700)


def wait_for_execution(client, exec_id: int, status: str | Iterable[str] = "completed",
                       timeout: float = 30) -> dict:
    """Wait until execution `exec_id` has `status` (a string or a set); return the execution.

    Fails at once when the execution reaches a different terminal status, with its status and
    result in the message.
    """
    wanted = _wanted(status)
    shown = "/".join(sorted(wanted))
    seen: dict[str, Any] = {}

    def probe():
        ex = client.get_execution(exec_id)
        seen["ex"] = ex
        st = ex.get("status")
        if st in TERMINAL and st not in wanted:
            raise WaitAborted(
                f"execution {exec_id} ({ex.get('action_ref')}) ended `{st}` while waiting for "
                f"`{shown}`; result: {_result_summary(ex)}")
        return ex

    try:
        return wait_until(probe, timeout=timeout, done=lambda ex: ex.get("status") in wanted,
                          description=f"execution {exec_id} to reach `{shown}`")
    except WaitTimeout:
        if "ex" not in seen:
            raise
        ex = seen["ex"]
        raise WaitTimeout(
            f"execution {exec_id} ({ex.get('action_ref')}) still `{ex.get('status')}` after "
            f"{timeout:.1f} s, waiting for `{shown}`; last result: {_result_summary(ex)}") from None


def wait_for_status(get_fn: Callable[[], dict], status: str | Iterable[str], *,
                    timeout: float = 30, description: str = "object",
                    terminal: Iterable[str] = (), key: str = "status") -> dict:
    """Poll `get_fn()` until `obj[key]` is in `status`; return the object.

    If `obj[key]` reaches a value in `terminal` that is not wanted, fail at once.
    """
    wanted = _wanted(status)
    stop = frozenset(terminal) - wanted
    shown = "/".join(sorted(wanted))

    def probe():
        obj = get_fn()
        value = obj.get(key) if isinstance(obj, dict) else None
        if value in stop:
            raise WaitAborted(f"{description} reached `{value}` while waiting for `{shown}`: "
                              f"{trim(obj)}")
        return obj

    return wait_until(probe, timeout=timeout,
                      done=lambda obj: isinstance(obj, dict) and obj.get(key) in wanted,
                      description=f"{description} to reach {key} `{shown}`")


def _as_items(value: Any) -> list:
    if isinstance(value, dict):
        return list(value.get("items") or [])
    return list(value or [])


def wait_for_items(list_fn: Callable[[], Any], count: int, timeout: float = 30,
                   description: str = "items", exact: bool = True) -> list:
    """Poll a server-filtered list (a page or a list) until it holds `count` items; return them.

    With exact=True, seeing more than `count` items fails at once.
    """
    def probe():
        found = _as_items(list_fn())
        if exact and len(found) > count:
            raise WaitAborted(f"{description}: expected exactly {count}, found {len(found)}: "
                              f"{trim(found, 800)}")
        return found

    return wait_until(probe, timeout=timeout, done=lambda found: len(found) >= count,
                      description=f"{description} to number {'exactly ' if exact else ''}{count}")


__all__ = ["TERMINAL", "WaitTimeout", "WaitAborted", "wait_until", "wait_for_execution",
           "wait_for_status", "wait_for_items"]
