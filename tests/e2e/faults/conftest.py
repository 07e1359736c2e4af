"""Fixtures of the fault scenarios: a dedicated stack (tests/helpers/faults.py) and its guard.

- `fault_stack` (package scope): a `FaultStack` of its own (offset ports, state under
  `<state>/faults`, logs under `<reports>/faults/logs`), started once for the fault tests and torn
  down, services and its own PostgreSQL and RabbitMQ, at the end, always.
- `faults` (function scope, what tests use): the same stack, restored before the test (a failed
  earlier test cannot leave it broken) and after it, even when the test failed: anything stopped
  (PostgreSQL, RabbitMQ, a service) is started again and the stack waited healthy.
- `fault_client`: the stack's admin client.

Every test here is in the xdist group "faults" (they share the stack) and skips on external
targets, which offer no service control.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.faults import FaultStack

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="package")
def fault_stack(target):
    if not target.embedded or target.services is None:
        pytest.skip("needs service control: external target (the fault tests start a stack of "
                    "their own and kill its PostgreSQL, RabbitMQ and services)")
    base = ROOT / os.environ.get("ATTUNE_E2E_CONFIG", "config.e2e.yaml")
    state = ROOT / os.environ.get("ATTUNE_E2E_STATE_DIR", ".state")
    reports = ROOT / os.environ.get("ATTUNE_E2E_REPORTS_DIR", "reports")
    stack = FaultStack(base, state, reports)
    try:
        stack.up()
    except BaseException:
        stack.down()
        raise
    try:
        yield stack
    finally:
        stack.down()


@pytest.fixture
def faults(fault_stack):
    """The fault stack, healthy before the test and restored after it, whatever happened."""
    fault_stack.restore()
    yield fault_stack
    fault_stack.restore()


@pytest.fixture
def fault_client(faults):
    return faults.client
