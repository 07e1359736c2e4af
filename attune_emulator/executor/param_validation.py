"""Extension E10 `param_validation`: the scheduler validates top-level executions' parameters.

Upstream validates action parameters only when a rule (or queue) is created or updated
(`validation.validate_params`); an execution requested through the API or a rule runs with
whatever config it got. This stack also checks the config of every **top-level** execution
(no `parent`) against its action's `param_schema` when the scheduler claims it, before any
worker is chosen:

- the flat schema goes through the rule validator's conversion (`validation.to_json_schema`)
  and the errors use its wording, joined by ", ":
  `Invalid parameters for action '<ref>': "url" is a required property`;
- values the executor stored redacted (E9 secret markers) stand for a value of the property's
  type, like templates do in the rule validator;
- on failure the execution goes `scheduling -> failed` with `result {"succeeded": false,
  "error": <message>}`, no worker and no `started_at`; it is not dispatched and, because the
  message starts with "Invalid parameters for action", not retried (E2, retries.py);
- workflow children are not validated (upstream passes task inputs through unchecked), and an
  action without a schema, or with an unusable one, is not validated either.

`invalid_config` is pure (no database); `fail_execution` writes the failed status.
"""
from __future__ import annotations

import copy
import logging
from typing import Any

from .. import validation
from ..db import J
from ..keystore import REDACTED

log = logging.getLogger(__name__)

EXTENSION_ID = "param_validation"


def _replace_redacted(value: Any, prop: Any) -> Any:
    """Replace E9 redaction markers by a placeholder of the property's type, recursively."""
    if value == REDACTED:
        return validation.placeholder_for(prop) if prop is not None else validation.PLACEHOLDER
    if isinstance(value, dict):
        props = prop.get("properties") if isinstance(prop, dict) else None
        props = props if isinstance(props, dict) else {}
        return {k: _replace_redacted(v, props.get(k)) for k, v in value.items()}
    if isinstance(value, list):
        items = prop.get("items") if isinstance(prop, dict) else None
        return [_replace_redacted(v, items if isinstance(items, dict) else None) for v in value]
    return value


def invalid_config(execution: dict, action: dict | None) -> str | None:
    """The validation error message for a top-level execution's config, or None when it is valid
    (or not subject to validation: a workflow child, no action, no usable schema)."""
    if execution.get("parent") is not None or action is None:
        return None
    schema = action.get("param_schema")
    if not isinstance(schema, dict) or not schema:
        return None
    json_schema = validation.to_json_schema(schema)
    config = execution.get("config")
    config = {} if config is None else copy.deepcopy(config)
    instance = _replace_redacted(config, json_schema)
    try:
        errors = validation.schema_errors(json_schema, instance)
    except validation.SchemaError as exc:
        log.warning("action %s: parameter schema unusable, execution %s not validated: %s",
                    action.get("ref"), execution.get("id"), exc)
        return None
    if not errors:
        return None
    ref = action.get("ref") or execution.get("action_ref")
    return f"Invalid parameters for action '{ref}': {', '.join(errors)}"


def fail_execution(cur, execution_id: int, message: str) -> bool:
    """`requested|scheduling -> failed` with the validation error; True when the row changed."""
    cur.execute("UPDATE execution SET status = 'failed', result = %s WHERE id = %s"
                " AND status IN ('requested', 'scheduling') RETURNING id",
                (J({"succeeded": False, "error": message}), execution_id))
    return cur.fetchone() is not None


__all__ = ["EXTENSION_ID", "invalid_config", "fail_execution"]
