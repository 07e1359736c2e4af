"""Last-in-first-out cleanup, shared by the suite's `make` factory and the benchmark.

Steps run in reverse order of registration; a 404 means the object is already gone (deleted by the
test or by a cascade); any other error is collected, never raised, so one failed step does not
leave the others undone.
"""
from __future__ import annotations

from typing import Any, Callable

from tests.helpers.client import ApiError


class CleanupStack:
    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], Any]]] = []
        self.errors: list[str] = []

    def defer(self, description: str, fn: Callable[[], Any]) -> None:
        """Register a cleanup step (runs LIFO)."""
        self._steps.append((description, fn))

    def run(self) -> list[str]:
        """Run every step, newest first; return the errors of this run."""
        start = len(self.errors)
        while self._steps:
            description, fn = self._steps.pop()
            try:
                fn()
            except ApiError as exc:
                if exc.status != 404:
                    self.errors.append(f"cleanup: {description} failed: ApiError: {exc}")
            except Exception as exc:  # collected and reported by the owner, never raised
                self.errors.append(f"cleanup: {description} failed: {type(exc).__name__}: {exc}")
        return self.errors[start:]
