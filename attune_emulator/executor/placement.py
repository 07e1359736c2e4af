"""Worker placement: labels, taints, selectors and tolerations (upstream's worker placement).

A worker advertises `labels` ({key: value}) and `taints` ([{key, value, effect}]) from its config
(`worker.labels`, `worker.taints`), recorded in its row's `capabilities`. An execution (or, when the
execution has none, its action) carries `worker_selector` ({key: value}) and `worker_tolerations`
([{key, operator, value, effect}]).

- A worker matches a selector when every selector key is one of its labels with the same value
  (values compared as strings). An empty selector matches every worker.
- A taint with effect `NoSchedule` (spelled `NoSchedule`, `no_schedule` or `noschedule`) keeps every
  execution off the worker unless one of its tolerations tolerates the taint: same key (or no key with
  operator `Exists`), operator `Equal` (the default; value must match) or `Exists` (any value), and
  an effect that is empty or the taint's effect. Taints with other effects do not block scheduling.

Pure functions only; the scheduler applies them to the candidate rows.
"""
from __future__ import annotations

from typing import Any, Iterable

NO_SCHEDULE = "noschedule"


def _norm(text: Any) -> str:
    return str(text or "").replace("_", "").replace("-", "").lower()


def _str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def normalize_labels(raw: Any) -> dict[str, str]:
    """`worker.labels` as {str: str}; anything that is not a mapping gives {}."""
    if not isinstance(raw, dict):
        return {}
    return {str(k): _str(v) for k, v in raw.items()}


def normalize_taints(raw: Any) -> list[dict[str, str]]:
    """`worker.taints` as [{key, value, effect}]; entries without a key are dropped."""
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        return []
    out = []
    for item in raw:
        if not isinstance(item, dict) or not item.get("key"):
            continue
        out.append({"key": str(item["key"]), "value": _str(item.get("value")),
                    "effect": str(item.get("effect") or "NoSchedule")})
    return out


def selector_matches(labels: dict[str, str], selector: Any) -> bool:
    if not selector:
        return True
    if not isinstance(selector, dict):
        return False
    return all(str(k) in labels and labels[str(k)] == _str(v) for k, v in selector.items())


def tolerates(taint: dict[str, str], tolerations: Iterable[Any]) -> bool:
    for tol in tolerations or []:
        if not isinstance(tol, dict):
            continue
        effect = tol.get("effect")
        if effect and _norm(effect) != _norm(taint.get("effect")):
            continue
        operator = _norm(tol.get("operator") or "equal")
        key = tol.get("key")
        if operator == "exists":
            if not key or str(key) == taint["key"]:
                return True
            continue
        if operator == "equal" and key is not None and str(key) == taint["key"] \
                and _str(tol.get("value")) == taint.get("value", ""):
            return True
    return False


def worker_admits(capabilities: Any, selector: Any, tolerations: Any) -> bool:
    """Whether a worker with these `capabilities` may run an execution with this placement."""
    caps = capabilities if isinstance(capabilities, dict) else {}
    labels = normalize_labels(caps.get("labels"))
    if not selector_matches(labels, selector):
        return False
    tols = tolerations if isinstance(tolerations, list) else []
    for taint in normalize_taints(caps.get("taints")):
        if _norm(taint["effect"]) == NO_SCHEDULE and not tolerates(taint, tols):
            return False
    return True


def placement_for(execution: dict | None, action: dict | None) -> tuple[dict, list]:
    """The execution's selector and tolerations, each falling back to the action's when empty."""
    execution = execution or {}
    action = action or {}
    selector = execution.get("worker_selector") or action.get("worker_selector") or {}
    tolerations = execution.get("worker_tolerations") or action.get("worker_tolerations") or []
    return (selector if isinstance(selector, dict) else {},
            tolerations if isinstance(tolerations, list) else [])


__all__ = ["normalize_labels", "normalize_taints", "selector_matches", "tolerates",
           "worker_admits", "placement_for"]
