"""Secret action parameters (upstream behaviour, api.md §4.4, behavior.md §8).

A parameter whose schema entry says `secret: true` (flat StackStorm-style schema, or a JSON Schema
`properties` entry) is never stored in clear: the API's execute route and the executor's
enforcement creation replace its value in `execution.config` / `enforcement.config` by the
redaction marker `{"$attune_secret": true, "redacted": true}` and keep the plaintext encrypted in
`execution_secret_value` (keystore.store; JSON pointer `/<name>`). The worker restores it just
before writing the parameter document to the action's stdin.

Pure logic only; callers do the storage.
"""
from __future__ import annotations

import copy
from typing import Any

from .keystore import REDACTED, _pointer


def _is_marker(value: Any) -> bool:
    return isinstance(value, dict) and value.get("$attune_secret") is True


def secret_names(param_schema: Any) -> set[str]:
    """Names of the top-level parameters declared `secret: true`.

    Accepts the flat form (`{name: {type, secret: true}}`) and JSON Schema
    (`{"type": "object", "properties": {name: {..., "secret": true}}}`).
    """
    if not isinstance(param_schema, dict):
        return set()
    props = param_schema
    if param_schema.get("type") == "object" and isinstance(param_schema.get("properties"), dict):
        props = param_schema["properties"]
    return {name for name, spec in props.items()
            if isinstance(name, str) and isinstance(spec, dict) and spec.get("secret") is True}


def redact(config: Any, names: set[str]) -> tuple[Any, list[tuple[str, Any]]]:
    """`config` with the secret parameters replaced by the marker, and the (pointer, plaintext)
    pairs to store. Missing or null parameters and values already redacted are left alone."""
    if not names or not isinstance(config, dict):
        return config, []
    out = copy.deepcopy(config)
    found: list[tuple[str, Any]] = []
    for name in sorted(names):
        if name not in out or out[name] is None or _is_marker(out[name]):
            continue
        found.append((_pointer([name]), out[name]))
        out[name] = dict(REDACTED)
    return out, found


__all__ = ["secret_names", "redact"]
