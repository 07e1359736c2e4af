"""Extension E2 `action_retry`: action-level retries of top-level executions (scenarios.md §b).

Upstream retries workflow tasks only (behavior.md §3.7, §4.5). This stack also honours an
action's `retry` policy `{count 1-100, delay s, backoff constant|linear|exponential, max_delay?}`
(stored in `action.retry_policy`, the same object as a workflow task `retry`):

- when a **top-level** execution (no `parent`) ends `failed` or `abandoned` (never `cancelled`
  or `timeout`, and never an E10 parameter-validation failure, which did not run) and its
  `retry_count` is below `count`, the executor creates the next attempt **at once**: status
  `requested`, same action, config, env, enforcement, executor and permission sets,
  `original_execution` = the first attempt, `retry_count + 1`, `max_retries = count`,
  `retry_reason` = the previous attempt's status;
- it publishes `execution.requested` for it after the delay (`delay`, `delay * n` for linear,
  `delay * 2^(n-1)` for exponential, capped by `max_delay`; n is the 1-based retry number).

Duplicate `execution.completed` deliveries are harmless: the previous attempt's row is locked
and an existing next attempt stops the handler. The pure parts (`parse_policy`, `retry_delay`,
`should_retry`) take no database.
"""
from __future__ import annotations

import logging
from typing import Any

from .. import audit
from ..db import J
from .common import Ctx

log = logging.getLogger(__name__)

RETRY_STATUSES = ("failed", "abandoned")
BACKOFFS = ("constant", "linear", "exponential")
VALIDATION_ERROR_PREFIX = "Invalid parameters for action"


class RetryPolicyError(ValueError):
    """The retry object is malformed; the message says why."""


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RetryPolicyError(f"retry.{name} must be a number")
    if value < 0:
        raise RetryPolicyError(f"retry.{name} must not be negative")
    return value


def parse_policy(value: Any) -> dict | None:
    """Normalise a `retry` object (API body or pack YAML); None stays None.

    Returns `{count, delay, backoff[, max_delay]}`; raises RetryPolicyError when malformed.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RetryPolicyError("retry must be an object {count, delay, backoff, max_delay?}")
    unknown = sorted(set(value) - {"count", "delay", "backoff", "max_delay"})
    if unknown:
        raise RetryPolicyError(f"retry: unknown field(s) {', '.join(unknown)}")
    count = value.get("count")
    if isinstance(count, bool) or not isinstance(count, int):
        raise RetryPolicyError("retry.count must be an integer")
    if not 1 <= count <= 100:
        raise RetryPolicyError("retry.count must be between 1 and 100")
    policy: dict[str, Any] = {"count": count,
                              "delay": _number(value.get("delay", 0), "delay"),
                              "backoff": value.get("backoff") or "constant"}
    if policy["backoff"] not in BACKOFFS:
        raise RetryPolicyError("retry.backoff must be constant, linear or exponential")
    if value.get("max_delay") is not None:
        policy["max_delay"] = _number(value["max_delay"], "max_delay")
    return policy


def retry_delay(policy: dict, attempt: int) -> float:
    """Seconds before retry number `attempt` (1-based) is dispatched."""
    delay = float(policy.get("delay") or 0)
    backoff = policy.get("backoff") or "constant"
    if backoff == "linear":
        delay *= attempt
    elif backoff == "exponential":
        delay *= 2 ** (attempt - 1)
    if policy.get("max_delay") is not None:
        delay = min(delay, float(policy["max_delay"]))
    return max(0.0, delay)


def should_retry(execution: dict, policy: dict | None) -> bool:
    """Whether the terminal `execution` (a row) gets another attempt under `policy`."""
    if not policy or execution.get("parent") is not None:
        return False
    if execution.get("status") not in RETRY_STATUSES:
        return False
    result = execution.get("result")
    error = result.get("error") if isinstance(result, dict) else None
    if (isinstance(error, str) and error.startswith(VALIDATION_ERROR_PREFIX)
            and execution.get("started_at") is None):
        return False  # E10: the parameters were rejected; running again cannot help
    return int(execution.get("retry_count") or 0) < int(policy.get("count") or 0)


def handle_execution_completed(ctx: Ctx, body: dict, peek: dict | None = None) -> None:
    """`execution.completed`: create the next attempt of a failed top-level execution. `peek`:
    the execution's `parent, status` and its action's `retry_policy` when already read."""
    eid = body.get("execution_id")
    if peek is None:
        peek = ctx.db.one(
            "SELECT e.parent, e.status, a.retry_policy FROM execution e"
            " LEFT JOIN action a ON a.id = e.action WHERE e.id = %s", (eid,))
    if peek is None or peek["parent"] is not None or not peek["retry_policy"] \
            or peek["status"] not in RETRY_STATUSES:
        return
    created = None
    with ctx.db.tx() as cur:
        cur.execute("SELECT * FROM execution WHERE id = %s FOR UPDATE", (eid,))
        prev = cur.fetchone()
        cur.execute("SELECT retry_policy FROM action WHERE id = %s", (prev["action"],))
        action = cur.fetchone()
        try:
            policy = parse_policy(action and action["retry_policy"])
        except RetryPolicyError as exc:
            log.warning("execution %s: action %s has an invalid retry policy (%s); not retried",
                        eid, prev["action_ref"], exc)
            return
        if not should_retry(prev, policy):
            if policy and prev["status"] in RETRY_STATUSES and prev["parent"] is None:
                log.info("execution %s (%s) %s: retries exhausted (%d of %d)", eid,
                         prev["action_ref"], prev["status"], prev["retry_count"] or 0,
                         policy["count"])
            return
        attempt = int(prev["retry_count"] or 0) + 1
        original = prev["original_execution"] or prev["id"]
        cur.execute("SELECT id FROM execution WHERE original_execution = %s AND retry_count = %s",
                    (original, attempt))
        if cur.fetchone() is not None:
            log.info("execution %s: retry %d already exists (duplicate completion); skipped",
                     eid, attempt)
            return
        cur.execute(
            "INSERT INTO execution (action, action_ref, config, env_vars, parent, enforcement,"
            " executor, status, permission_set_refs, workflow_def, retry_count, max_retries,"
            " original_execution, retry_reason)"
            " VALUES (%s, %s, %s, %s, NULL, %s, %s, 'requested', %s, %s, %s, %s, %s, %s)"
            " RETURNING id",
            (prev["action"], prev["action_ref"], J(prev["config"]), J(prev["env_vars"]),
             prev["enforcement"], prev["executor"], J(prev["permission_set_refs"] or []),
             prev["workflow_def"], attempt, policy["count"], original, prev["status"]))
        created = cur.fetchone()["id"]
        # E6 execution_audit: the retry, on the new attempt's resource id.
        audit.record_execution(cur.execute, {"id": created, "action_ref": prev["action_ref"]},
                               audit.EXECUTION_RETRIED, actor_login="executor",
                               actor_token_type="service",
                               details={"previous_execution": prev["id"], "attempt": attempt,
                                        "max_retries": policy["count"],
                                        "retry_reason": prev["status"],
                                        "original_execution": original})
        # the retry keeps the attempt's worker placement (selector, tolerations, affinity)
        cur.execute("UPDATE execution n SET worker_selector = o.worker_selector,"
                    " worker_tolerations = o.worker_tolerations, worker_affinity = o.worker_affinity"
                    " FROM execution o WHERE n.id = %s AND o.id = %s", (created, prev["id"]))
    delay = retry_delay(policy, attempt)
    log.info("execution %s (%s) %s: retry %d/%d created as execution %s, dispatched in %.2fs "
             "(%s backoff, original %s)", eid, prev["action_ref"], prev["status"], attempt,
             policy["count"], created, delay, policy["backoff"], original)
    ctx.after(delay, lambda: ctx.execution_requested(created), name=f"action-retry-{created}")
