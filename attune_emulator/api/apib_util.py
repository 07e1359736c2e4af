"""Serializers and small helpers shared by the resource routes (packs, actions, triggers, sensors,
webhooks, rules, events, enforcements, executions, inquiries, workflows).

Response shapes follow upstream's DTOs field for field, including which fields are omitted when
null or empty.
"""
from __future__ import annotations

import inspect
from typing import Any

import psycopg2

from ..db import iso
from . import common as C

EXECUTION_STATUSES = ("requested", "scheduling", "scheduled", "running", "completed", "failed",
                      "timeout", "canceling", "cancelled", "abandoned")
TERMINAL = ("completed", "failed", "timeout", "cancelled", "abandoned")


async def sync(fn, *args, **kwargs):
    """Run blocking work in a thread; database constraint errors become upstream's ApiErrors."""
    try:
        return await C.run_sync(fn, *args, **kwargs)
    except psycopg2.Error as exc:
        mapped = C.map_db_error(exc)
        if mapped is not None:
            raise mapped from None
        raise


def rbac_authorize(db, principal, resource: str, action: str, **kw) -> None:
    from . import rbac
    result = rbac.authorize(db, principal, resource, action, **kw)
    if inspect.isawaitable(result):  # pragma: no cover - rbac is synchronous
        raise RuntimeError("rbac.authorize must be synchronous")


def pack_visible(db, principal, pack_row) -> bool:
    from . import rbac
    if pack_row is None:
        return False
    return bool(rbac.pack_visible(db, principal, pack_row))


def owner_scoping(request_or_cfg) -> bool:
    """Extension E3: `security.owner_scoped_resources`."""
    cfg = getattr(getattr(getattr(request_or_cfg, "app", None), "state", None), "cfg", None) or request_or_cfg
    try:
        return bool(cfg.get("security.owner_scoped_resources", False))
    except AttributeError:
        return False


def pack_hidden(db, cfg, principal, pack_ref: str | None, cache: dict | None = None) -> bool:
    """E3: whether the pack `pack_ref` (and so everything in it) is hidden from the caller."""
    if not pack_ref or not owner_scoping(cfg):
        return False
    if cache is not None and pack_ref in cache:
        return cache[pack_ref]
    shared = getattr(principal, "cache", None)
    if shared is not None and getattr(principal, "pack_epoch", None) is not None:
        row = shared.pack(db, pack_ref, principal.pack_epoch)  # id, ref, is_standard, installed_by
    else:
        row = db.one("SELECT * FROM pack WHERE ref = %s", (pack_ref,))
    hidden = row is not None and not pack_visible(db, principal, row)
    if cache is not None:
        cache[pack_ref] = hidden
    return hidden


def like_escape(value: str) -> str:
    """`value` taken literally inside a LIKE pattern (backslash is the escape character)."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def contains_pattern(value: str) -> str:
    """The (I)LIKE pattern for "contains `value`"."""
    return "%" + like_escape(value) + "%"


def glob_condition(column: str, value: str, params: list) -> str:
    """Exact match, or a LIKE pattern when the value contains `*`."""
    if "*" in value:
        pattern = like_escape(value).replace("*", "%")
        params.append(pattern)
        return f"{column} LIKE %s ESCAPE '\\'"
    params.append(value)
    return f"{column} = %s"


def omit_empty(d: dict, *keys: str) -> dict:
    for k in keys:
        if k in d and (d[k] is None or d[k] == {} or d[k] == []):
            del d[k]
    return d


# ------------------------------------------------------------------ packs
def pack_response(r: dict) -> dict:
    return {"id": r["id"], "ref": r["ref"], "label": r["label"], "description": r["description"],
            "version": r["version"], "conf_schema": r["conf_schema"], "config": r["config"],
            "meta": r["meta"], "tags": r["tags"], "runtime_deps": r["runtime_deps"],
            "dependencies": r["dependencies"], "is_standard": r["is_standard"],
            "created": iso(r["created"]), "updated": iso(r["updated"])}


def pack_summary(r: dict) -> dict:
    return {"id": r["id"], "ref": r["ref"], "label": r["label"], "description": r["description"],
            "version": r["version"], "tags": r["tags"], "is_standard": r["is_standard"],
            "created": iso(r["created"]), "updated": iso(r["updated"])}


# ------------------------------------------------------------------ actions
ACTION_SELECT = ("SELECT a.*, rt.ref AS runtime_ref FROM action a "
                 "LEFT JOIN runtime rt ON rt.id = a.runtime")


def action_response(r: dict) -> dict:
    d = {"id": r["id"], "ref": r["ref"], "pack": r["pack"], "pack_ref": r["pack_ref"],
         "label": r["label"], "description": r["description"], "entrypoint": r["entrypoint"],
         "runtime": r["runtime"], "runtime_ref": r.get("runtime_ref"),
         "runtime_version_constraint": r["runtime_version_constraint"],
         "param_schema": r["param_schema"], "out_schema": r["out_schema"],
         "workflow_def": r["workflow_def"], "is_adhoc": r["is_adhoc"],
         "accesses_mcp": r["accesses_mcp"],
         "required_worker_runtimes": r["required_worker_runtimes"],
         "worker_selector": r["worker_selector"], "worker_tolerations": r["worker_tolerations"],
         "worker_affinity": r["worker_affinity"],
         "default_execution_permission_set_refs": r["default_execution_permission_set_refs"],
         "timeout_seconds": r.get("timeout_seconds"),
         "retry": r.get("retry_policy"),  # extension E2 action_retry
         "container": r.get("container"),  # extension E12 container_runtime
         "created": iso(r["created"]), "updated": iso(r["updated"])}
    omit_empty(d, "runtime_ref", "runtime_version_constraint", "required_worker_runtimes",
               "worker_selector", "worker_tolerations", "worker_affinity", "workflow_def",
               "default_execution_permission_set_refs", "timeout_seconds", "retry", "container")
    return d


def action_summary(r: dict) -> dict:
    d = action_response(r)
    for k in ("pack", "param_schema", "out_schema", "is_adhoc"):
        d.pop(k, None)
    return d


# ------------------------------------------------------------------ triggers, sensors
def trigger_response(r: dict) -> dict:
    d = {"id": r["id"], "ref": r["ref"], "pack": r["pack"], "pack_ref": r["pack_ref"],
         "label": r["label"], "description": r["description"], "enabled": r["enabled"],
         "param_schema": r["param_schema"], "out_schema": r["out_schema"],
         "webhook_enabled": r["webhook_enabled"], "webhook_key": r["webhook_key"],
         "is_adhoc": r["is_adhoc"], "sensor": r["sensor"], "sensor_ref": r["sensor_ref"],
         "created": iso(r["created"]), "updated": iso(r["updated"])}
    for k in ("webhook_key", "sensor", "sensor_ref"):
        if d[k] is None:
            del d[k]
    return d


def trigger_summary(r: dict) -> dict:
    return {"id": r["id"], "ref": r["ref"], "pack_ref": r["pack_ref"], "label": r["label"],
            "description": r["description"], "enabled": r["enabled"],
            "webhook_enabled": r["webhook_enabled"],
            "created": iso(r["created"]), "updated": iso(r["updated"])}


def sensor_response(r: dict) -> dict:
    return {"id": r["id"], "ref": r["ref"], "pack": r["pack"], "pack_ref": r["pack_ref"],
            "label": r["label"], "description": r["description"], "entrypoint": r["entrypoint"],
            "runtime": r["runtime"], "runtime_ref": r["runtime_ref"], "enabled": r["enabled"],
            "param_schema": r["param_schema"],
            "created": iso(r["created"]), "updated": iso(r["updated"])}


def sensor_summary(r: dict) -> dict:
    return {"id": r["id"], "ref": r["ref"], "pack_ref": r["pack_ref"], "label": r["label"],
            "description": r["description"], "enabled": r["enabled"],
            "created": iso(r["created"]), "updated": iso(r["updated"])}


# ------------------------------------------------------------------ rules
def rule_response(r: dict) -> dict:
    out = _rule_response(r)
    if r.get("notify_on_trigger"):  # extension E11, omitted unless set (upstream shape)
        out["notify_on_trigger"] = True
    return out


def _rule_response(r: dict) -> dict:
    return {"id": r["id"], "ref": r["ref"], "pack": r["pack"], "pack_ref": r["pack_ref"],
            "label": r["label"], "description": r["description"], "action": r["action"],
            "action_ref": r["action_ref"], "trigger": r["trigger"],
            "trigger_ref": r["trigger_ref"], "conditions": r["conditions"],
            "action_params": r["action_params"], "trigger_params": r["trigger_params"],
            "permission_set_refs": r["permission_set_refs"], "enabled": r["enabled"],
            "is_adhoc": r["is_adhoc"], "owner_identity": r["owner_identity"],
            "created": iso(r["created"]), "updated": iso(r["updated"])}


def rule_summary(r: dict) -> dict:
    d = rule_response(r)
    for k in ("pack", "action", "trigger", "conditions", "is_adhoc", "owner_identity"):
        d.pop(k, None)
    return d


# ------------------------------------------------------------------ events, enforcements
def event_response(r: dict) -> dict:
    return {"id": r["id"], "trigger": r["trigger"], "trigger_ref": r["trigger_ref"],
            "config": r["config"], "payload": r["payload"], "source": r["source"],
            "source_ref": r["source_ref"], "rule": r["rule"], "rule_ref": r["rule_ref"],
            "created": iso(r["created"])}


def event_summary(r: dict) -> dict:
    return {"id": r["id"], "trigger": r["trigger"], "trigger_ref": r["trigger_ref"],
            "source": r["source"], "source_ref": r["source_ref"], "rule": r["rule"],
            "rule_ref": r["rule_ref"], "has_payload": r["payload"] is not None,
            "created": iso(r["created"])}


def enforcement_response(r: dict) -> dict:
    return {"id": r["id"], "rule": r["rule"], "rule_ref": r["rule_ref"],
            "trigger_ref": r["trigger_ref"], "config": r["config"], "event": r["event"],
            "status": r["status"], "payload": r["payload"], "condition": r["condition"],
            "conditions": r["conditions"], "created": iso(r["created"]),
            "resolved_at": iso(r["resolved_at"])}


def enforcement_summary(r: dict) -> dict:
    return {"id": r["id"], "rule": r["rule"], "rule_ref": r["rule_ref"],
            "trigger_ref": r["trigger_ref"], "event": r["event"], "status": r["status"],
            "condition": r["condition"], "created": iso(r["created"])}


# ------------------------------------------------------------------ executions
# Only what execution_summary shows: config/result can be large JSON, decoded for nothing.
EXECUTION_SUMMARY_SELECT = ("SELECT x.id, x.action_ref, x.status, x.parent, x.enforcement, "
                            "x.started_at, x.workflow_task, x.original_execution, x.created, "
                            "x.updated, en.rule_ref AS rule_ref, en.trigger_ref AS trigger_ref "
                            "FROM execution x LEFT JOIN enforcement en ON en.id = x.enforcement")


def execution_response(r: dict) -> dict:
    d: dict[str, Any] = {
        "id": r["id"], "action": r["action"], "action_ref": r["action_ref"], "config": r["config"],
        "parent": r["parent"], "enforcement": r["enforcement"], "executor": r["executor"],
        "permission_set_refs": r["permission_set_refs"], "worker": r["worker"],
        "status": r["status"], "result": r["result"],
        "original_execution": r["original_execution"], "started_at": iso(r["started_at"]),
        "workflow_task": r["workflow_task"],
        "retry_count": r.get("retry_count") or None, "max_retries": r.get("max_retries"),
        "retry_reason": r.get("retry_reason"),
        "worker_selector": r.get("worker_selector"), "worker_tolerations": r.get("worker_tolerations"),
        "worker_affinity": r.get("worker_affinity"),
        "created": iso(r["created"]), "updated": iso(r["updated"])}
    omit_empty(d, "permission_set_refs", "original_execution", "started_at", "workflow_task",
               "retry_count", "max_retries", "retry_reason", "worker_selector",
               "worker_tolerations", "worker_affinity")
    return d


def execution_summary(r: dict) -> dict:
    d = {"id": r["id"], "action_ref": r["action_ref"], "status": r["status"],
         "parent": r["parent"], "enforcement": r["enforcement"],
         "rule_ref": r.get("rule_ref"), "trigger_ref": r.get("trigger_ref"),
         "started_at": iso(r["started_at"]), "workflow_task": r["workflow_task"],
         "original_execution": r["original_execution"],
         "created": iso(r["created"]), "updated": iso(r["updated"])}
    omit_empty(d, "started_at", "workflow_task", "original_execution")
    return d


# ------------------------------------------------------------------ inquiries
def inquiry_response(r: dict) -> dict:
    return {"id": r["id"], "execution": r["execution"], "prompt": r["prompt"],
            "response_schema": r["response_schema"], "assigned_to": r["assigned_to"],
            "status": r["status"], "response": r["response"], "timeout_at": iso(r["timeout_at"]),
            "responded_at": iso(r["responded_at"]), "created": iso(r["created"]),
            "updated": iso(r["updated"])}


def inquiry_summary(r: dict) -> dict:
    return {"id": r["id"], "execution": r["execution"], "prompt": r["prompt"],
            "assigned_to": r["assigned_to"], "status": r["status"],
            "has_response": r["response"] is not None, "timeout_at": iso(r["timeout_at"]),
            "created": iso(r["created"])}


# ------------------------------------------------------------------ workflows
def workflow_response(r: dict) -> dict:
    return {"id": r["id"], "ref": r["ref"], "pack": r["pack"], "pack_ref": r["pack_ref"],
            "label": r["label"], "description": r["description"], "version": r["version"],
            "param_schema": r["param_schema"], "out_schema": r["out_schema"],
            "definition": r["definition"], "tags": r["tags"],
            "created": iso(r["created"]), "updated": iso(r["updated"])}


def workflow_summary(r: dict) -> dict:
    return {"id": r["id"], "ref": r["ref"], "pack_ref": r["pack_ref"], "label": r["label"],
            "description": r["description"], "version": r["version"], "tags": r["tags"],
            "created": iso(r["created"]), "updated": iso(r["updated"])}


def count(db, sql: str, params: list) -> int:
    row = db.one(f"SELECT count(*) AS n FROM ({sql}) sub", params)
    return int(row["n"]) if row else 0


def tagged_patch(value: Any, name: str):
    """Upstream's `{"op":"set","value":..}` / `{"op":"clear"}` patch. Returns (present, new)."""
    if not isinstance(value, dict) or value.get("op") not in ("set", "clear"):
        raise C.PlainError(422, "Failed to deserialize the JSON body into the target type: "
                                f"{name}: invalid type: {C._serde_kind(value)}, expected "
                                "internally tagged enum at line 1 column 1")
    if value["op"] == "clear":
        return True, None
    if "value" not in value:
        raise C.PlainError(422, "Failed to deserialize the JSON body into the target type: "
                                f"{name}: missing field `value` at line 1 column 1")
    return True, value["value"]


def check_delegation(db, principal, refs) -> None:
    """The caller may hand out only permission sets it holds itself (grant by grant); the
    pseudo-ref `standard` is always delegable. Execution tokens may pass on their own sets."""
    from . import rbac
    refs = [r for r in (refs or []) if r != rbac.STANDARD_REF]
    if not refs or principal.skips_rbac:
        return
    if principal.token_type == "execution":
        own = set(principal.permission_set_refs or [])
        for ref in refs:
            if ref not in own:
                raise C.forbidden(f"Cannot delegate permission set '{ref}': not held by the caller")
        return
    rows = {r["ref"]: r for r in db.all("SELECT ref, grants FROM permission_set WHERE ref = ANY(%s)",
                                        (list(refs),))}
    mine = rbac.effective_grants(db, principal)
    for ref in refs:
        row = rows.get(ref)
        if row is None:
            raise C.not_found(f"Permission set '{ref}' not found")
        for grant in row["grants"] or []:
            if not isinstance(grant, dict):
                continue
            for act in grant.get("actions") or []:
                if not any(isinstance(g, dict) and g.get("resource") == grant.get("resource")
                           and act in (g.get("actions") or [])
                           and (not g.get("constraints") or g.get("constraints") == grant.get("constraints"))
                           for g in mine):
                    raise C.forbidden(f"Cannot delegate permission set '{ref}': "
                                      f"caller lacks {grant.get('resource')}:{act}")


def mutation_rbac(request, db, principal, resource: str, action: str, **ctx) -> None:
    """Extension E4 (`security.rbac_all_mutations`): upstream's grants on routes that mutate
    without a check upstream. A no-op unless the setting is on."""
    try:
        on = bool(request.app.state.cfg.get("security.rbac_all_mutations", False))
    except AttributeError:
        on = False
    if on:
        rbac_authorize(db, principal, resource, action, **ctx)
