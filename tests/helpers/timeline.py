"""Per-process registry of every execution id the suite's clients have seen.

`AttuneClient` calls `record()` for each execution in a response (execute, get, list, cancel).
The report plugin takes a `mark()` when a test starts and, if the test fails, turns
`recorded_since(mark)` into the test's execution timeline.
"""
from __future__ import annotations

import threading
from typing import Iterable

_lock = threading.Lock()
_ids: list[int] = []


def record(ids: Iterable[int] | int | None) -> None:
    """Remember execution ids (an int, an iterable of ints; None and non-ints are ignored)."""
    if ids is None:
        return
    if isinstance(ids, (int, str)):
        ids = [ids]
    clean = []
    for value in ids:
        try:
            clean.append(int(value))
        except (TypeError, ValueError):
            continue
    if clean:
        with _lock:
            _ids.extend(clean)


def mark() -> int:
    """A position in the registry; pass it to `recorded_since`."""
    with _lock:
        return len(_ids)


def recorded_since(position: int = 0) -> list[int]:
    """Unique execution ids recorded after `position`, in first-seen order."""
    with _lock:
        tail = list(_ids[position:])
    seen: dict[int, None] = {}
    for value in tail:
        seen.setdefault(value, None)
    return list(seen)


def clear() -> None:
    with _lock:
        _ids.clear()
