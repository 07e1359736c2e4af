"""Audit trail rows (`audit_event`, upstream's `common/src/audit`), shared by every service.

Upstream emits `execution.requested` from the API's execute route, plus `auth.*`, `rbac.denied`,
`secret.*` and pack events. Extension E6 `execution_audit` adds the lifecycle constants upstream
defines but never emits: `execution.scheduled` (executor), `execution.started` and the terminal
`execution.completed|failed|timed_out|cancelled` (worker), `execution.retried` and
`execution.workflow_child_dispatched` (executor). Extension E5 `api_rate_limit` emits
`security.rate_limited`.

The table is append-only: nothing here (or in the API) updates or deletes rows. Writing an audit
row never changes the outcome of the operation that caused it.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from .db import J

log = logging.getLogger(__name__)

EXECUTION_REQUESTED = "execution.requested"
EXECUTION_SCHEDULED = "execution.scheduled"
EXECUTION_STARTED = "execution.started"
EXECUTION_COMPLETED = "execution.completed"
EXECUTION_FAILED = "execution.failed"
EXECUTION_TIMED_OUT = "execution.timed_out"
EXECUTION_CANCELLED = "execution.cancelled"
EXECUTION_RETRIED = "execution.retried"
EXECUTION_WORKFLOW_CHILD_DISPATCHED = "execution.workflow_child_dispatched"
SECURITY_RATE_LIMITED = "security.rate_limited"

CATEGORIES = ("api", "auth", "rbac", "secret", "admin", "execution", "pack")
OUTCOMES = ("success", "failure", "denied")

_INSERT = """INSERT INTO audit_event (category, event_type, outcome, actor_identity, actor_login,
        actor_token_type, actor_ip, actor_user_agent, request_id, resource_type, resource_id,
        resource_ref, http_method, http_path, http_status, duration_ms, details)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"""


def execution_outcome(event_type: str) -> str:
    """`failure` for failed and timed-out executions, `success` otherwise (E6)."""
    return "failure" if event_type in (EXECUTION_FAILED, EXECUTION_TIMED_OUT) else "success"


def record(execute: Callable[[str, Any], Any], *, category: str, event_type: str, outcome: str,
           actor_identity: int | None = None, actor_login: str | None = None,
           actor_token_type: str | None = None, actor_ip: str | None = None,
           actor_user_agent: str | None = None, request_id: str | None = None,
           resource_type: str | None = None, resource_id: Any = None,
           resource_ref: str | None = None, http_method: str | None = None,
           http_path: str | None = None, http_status: int | None = None,
           duration_ms: int | None = None, details: dict | None = None) -> bool:
    """Insert one audit row with `execute(sql, params)` (a cursor's or the pool's).

    Returns False (and logs) when the row could not be written. Inside a caller's transaction,
    pass `cur.execute` so the row commits with the change it describes.
    """
    try:
        execute(_INSERT, (category, event_type, outcome, actor_identity, actor_login,
                          actor_token_type, actor_ip, actor_user_agent, request_id, resource_type,
                          None if resource_id is None else str(resource_id), resource_ref,
                          http_method, http_path, http_status, duration_ms,
                          J(details) if details is not None else None))
        return True
    except Exception as exc:  # auditing never changes the answer
        log.warning("audit event %s not written: %s", event_type, exc)
        return False


def record_execution(execute: Callable[[str, Any], Any], execution: dict, event_type: str, *,
                     actor_login: str, actor_token_type: str, actor_identity: int | None = None,
                     details: dict | None = None) -> bool:
    """An execution lifecycle row: category `execution`, resource `executions/<id>`,
    `resource_ref` = the action ref."""
    return record(execute, category="execution", event_type=event_type,
                  outcome=execution_outcome(event_type), actor_identity=actor_identity,
                  actor_login=actor_login, actor_token_type=actor_token_type,
                  resource_type="executions", resource_id=execution["id"],
                  resource_ref=execution.get("action_ref"), details=details)


__all__ = ["record", "record_execution", "execution_outcome", "CATEGORIES", "OUTCOMES"]
