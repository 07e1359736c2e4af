"""Actions: list, search, get, ad-hoc create, update, delete, rules using an action (api.md §4)."""
from __future__ import annotations

from starlette.routing import Route

from ..db import J
from ..executor.retries import RetryPolicyError, parse_policy
from . import common as C
from . import apib_util as U
from . import crud


def load_action(db, cfg, principal, ref: str) -> dict:
    return crud.load_by_ref(db, cfg, principal, f"{U.ACTION_SELECT} WHERE a.ref = %s", ref,
                            "Action")


def _cfg(request):
    return request.app.state.cfg


async def list_actions(request):
    p = await C.require_auth(request)
    pg = C.page_params(request)
    executable = C.query_bool(request, "executable_with_current_access", False)

    def work():
        db = C.db(request)
        cfg = _cfg(request)
        if not executable:
            rows, total = crud.page_visible(db, cfg, p, U.ACTION_SELECT, [], pg, "a.ref")
            return C.paginated([U.action_summary(r) for r in rows], pg.page, pg.size, total=total)
        from . import rbac
        grants = rbac.effective_grants(db, p)
        rows = [r for r in crud.visible_rows(db, cfg, p, U.ACTION_SELECT, [], "a.ref")
                if rbac.can(db, p, "actions", "execute", grants=grants,
                            pack_ref=r["pack_ref"], ref=r["ref"])]
        page = rows[pg.offset:pg.offset + pg.limit]
        return C.paginated([U.action_summary(r) for r in page], pg.page, pg.size, total=len(rows))
    return await U.sync(work)


async def search_actions(request):
    p = await C.require_auth(request)
    pg = C.page_params(request)
    q = C.query_str(request, "q") or ""
    packs = [s.strip() for s in (C.query_str(request, "packs") or "").split(",") if s.strip()]

    def work():
        db = C.db(request)
        cfg = _cfg(request)
        where, params = [], []
        if packs:
            found = {r["ref"] for r in db.all("SELECT ref FROM pack WHERE ref = ANY(%s)", (packs,))}
            for ref in packs:
                if ref not in found:
                    raise C.not_found(f"Pack '{ref}' not found")
            where.append("a.pack_ref = ANY(%s)")
            params.append(packs)
        for token in q.split():
            like = U.contains_pattern(token)
            where.append("(a.ref ILIKE %s OR a.label ILIKE %s OR coalesce(a.description, '') ILIKE %s "
                         "OR a.pack_ref ILIKE %s)")
            params.extend([like] * 4)
        rows = crud.visible_rows(db, cfg, p, U.ACTION_SELECT + crud.where_clause(where), params,
                                 "a.ref")
        items = []
        for r in rows[pg.offset:pg.offset + pg.limit]:
            d = {"ref": r["ref"], "pack_ref": r["pack_ref"], "label": r["label"],
                 "description": r["description"], "runtime_ref": r["runtime_ref"],
                 "is_workflow": r["workflow_def"] is not None, "accesses_mcp": r["accesses_mcp"]}
            U.omit_empty(d, "description", "runtime_ref")
            items.append(d)
        return C.paginated(items, pg.page, pg.size, total=len(rows))
    return await U.sync(work)


CREATE_SPEC = {
    "ref": C.Field(str, required=True, min_len=1, max_len=255),
    "pack_ref": C.Field(str, required=True, min_len=1, max_len=255),
    "label": C.Field(str, required=True, min_len=1, max_len=255),
    "entrypoint": C.Field(str, required=True, min_len=1, max_len=1024),
    "description": C.Field(str),
    "runtime": C.Field(int),
    "runtime_ref": C.Field(str),
    "runtime_version_constraint": C.Field(str),
    "param_schema": C.Field("json"),
    "out_schema": C.Field("json"),
    "required_worker_runtimes": C.Field(dict),
    "worker_selector": C.Field(dict),
    "worker_tolerations": C.Field(list),
    "worker_affinity": C.Field(dict),
    "accesses_mcp": C.Field(bool, default=False),
    "default_execution_permission_set_refs": C.Field(list, items=str),
    "artifact_retention_policy": C.Field(str, enum=("versions", "days", "hours", "minutes")),
    "log_retention_policy": C.Field(str, enum=("versions", "days", "hours", "minutes")),
    "artifact_retention_limit": C.Field(int, min_value=1),
    "log_retention_limit": C.Field(int, min_value=1),
    "timeout_seconds": C.Field(int, min_value=1),
    "retry": C.Field(dict),  # extension E2 action_retry
    "container": C.Field(dict),  # extension E12 container_runtime
}


def _retry_policy(value):
    """E2: the normalised `retry` object (None stays None); malformed -> 422 VALIDATION_ERROR."""
    try:
        return parse_policy(value)
    except RetryPolicyError as exc:
        raise C.validation_error(f"Invalid retry policy: {exc}") from None


def _container_spec(value):
    """E12: the normalised `container` object (None stays None); malformed -> 422."""
    from ..worker.container import SpecError, parse_spec
    try:
        return parse_spec(value)
    except SpecError as exc:
        raise C.validation_error(f"Invalid container configuration: {exc}") from None


def resolve_runtime_field(db, runtime_id, runtime_ref):
    if runtime_id is not None:
        row = db.one("SELECT id, ref FROM runtime WHERE id = %s", (runtime_id,))
        if row is None:
            raise C.not_found(f"Runtime with ID {runtime_id} not found")
        return row
    if runtime_ref is not None:
        row = db.one("SELECT id, ref FROM runtime WHERE ref = %s", (runtime_ref,))
        if row is None:
            raise C.not_found(f"Runtime '{runtime_ref}' not found")
        return row
    return None


async def create_action(request):
    p = await C.require_auth(request)
    body = await C.read_json(request, CREATE_SPEC)
    retry = _retry_policy(body["retry"])
    container_spec = _container_spec(body["container"])

    def work():
        db = C.db(request)
        ref = body["ref"]
        crud.ensure_new_ref(db, "action", ref, "Action")
        pack = crud.load_pack(db, _cfg(request), p, body["pack_ref"])
        runtime = resolve_runtime_field(db, body["runtime"], body["runtime_ref"])
        U.rbac_authorize(db, p, "actions", "create", pack_ref=pack["ref"], ref=ref)
        psrefs = body["default_execution_permission_set_refs"] or []
        U.check_delegation(db, p, psrefs)
        row = db.one(
            """INSERT INTO action (ref, pack, pack_ref, label, description, entrypoint, runtime,
                   runtime_version_constraint, param_schema, out_schema, is_adhoc,
                   required_worker_runtimes, worker_selector, worker_tolerations, worker_affinity,
                   accesses_mcp, default_execution_permission_set_refs, timeout_seconds,
                   retry_policy, max_retries)
               VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,true,%s,%s,%s,%s,%s,%s,%s,%s,%s)
               RETURNING id""",
            (ref, pack["id"], pack["ref"], body["label"], body["description"], body["entrypoint"],
             runtime["id"] if runtime else None, body["runtime_version_constraint"],
             J(body["param_schema"]), J(body["out_schema"]),
             J(body["required_worker_runtimes"] or {}), J(body["worker_selector"] or {}),
             J(body["worker_tolerations"] or []), J(body["worker_affinity"]),
             bool(body["accesses_mcp"]), J(psrefs), body["timeout_seconds"],
             J(retry) if retry else None,
             retry["count"] if retry else None))
        if container_spec is not None:  # E12
            db.execute("UPDATE action SET container = %s WHERE id = %s",
                       (J(container_spec), row["id"]))
        row = db.one(f"{U.ACTION_SELECT} WHERE a.id = %s", (row["id"],))
        return C.ok(U.action_response(row), 201, "Action created successfully")
    return await U.sync(work)


UPDATE_SPEC = {
    "label": C.Field(str, min_len=1, max_len=255),
    "description": C.Field(str),
    "entrypoint": C.Field(str, min_len=1, max_len=1024),
    "runtime": C.Field(int),
    "runtime_ref": C.Field(str),
    "runtime_version_constraint": C.Field("json"),
    "param_schema": C.Field("json"),
    "out_schema": C.Field("json"),
    "required_worker_runtimes": C.Field(dict),
    "worker_selector": C.Field(dict),
    "worker_tolerations": C.Field(list),
    "worker_affinity": C.Field(dict),
    "accesses_mcp": C.Field(bool),
    "default_execution_permission_set_refs": C.Field(list, items=str),
    "timeout_seconds": C.Field(int, min_value=1),
    "retry": C.Field(dict),  # extension E2 action_retry; null clears it
    "container": C.Field(dict),  # extension E12 container_runtime; null clears it
}


async def update_action(request):
    p = await C.require_auth(request)
    raw = await C.read_json(request)
    body = C.validate_body(raw, UPDATE_SPEC, "{}")
    ref = request.path_params["ref"]
    rvc = None
    if "runtime_version_constraint" in raw:
        rvc = U.tagged_patch(raw["runtime_version_constraint"], "runtime_version_constraint")
    retry = _retry_policy(body.get("retry")) if isinstance(raw, dict) and "retry" in raw else None
    container_spec = _container_spec(body.get("container")) \
        if isinstance(raw, dict) and "container" in raw else None

    def work():
        db = C.db(request)
        row = load_action(db, _cfg(request), p, ref)
        U.rbac_authorize(db, p, "actions", "update", pack_ref=row["pack_ref"], ref=ref)
        sets, params = [], []
        for name in ("label", "description", "entrypoint"):
            if body.get(name) is not None:
                sets.append(f"{name} = %s")
                params.append(body[name])
        if body.get("accesses_mcp") is not None:
            sets.append("accesses_mcp = %s")
            params.append(body["accesses_mcp"])
        runtime = resolve_runtime_field(db, body.get("runtime"), body.get("runtime_ref"))
        if runtime is not None:
            sets.append("runtime = %s")
            params.append(runtime["id"])
        if rvc is not None:
            sets.append("runtime_version_constraint = %s")
            params.append(rvc[1])
        for name in ("param_schema", "out_schema", "worker_affinity"):
            if name in raw:
                sets.append(f"{name} = %s")
                params.append(J(body[name]))
        for name, empty in (("required_worker_runtimes", {}), ("worker_selector", {}),
                            ("worker_tolerations", [])):
            if body.get(name) is not None:
                sets.append(f"{name} = %s")
                params.append(J(body[name] or empty))
        if body.get("default_execution_permission_set_refs") is not None:
            U.check_delegation(db, p, body["default_execution_permission_set_refs"])
            sets.append("default_execution_permission_set_refs = %s")
            params.append(J(body["default_execution_permission_set_refs"]))
        if "timeout_seconds" in raw:
            sets.append("timeout_seconds = %s")
            params.append(body["timeout_seconds"])
        if "retry" in raw:
            sets.append("retry_policy = %s")
            params.append(J(retry) if retry else None)
            sets.append("max_retries = %s")
            params.append(retry["count"] if retry else None)
        if "container" in raw:  # E12
            sets.append("container = %s")
            params.append(J(container_spec) if container_spec else None)
        if sets:
            db.execute(f"UPDATE action SET {', '.join(sets)} WHERE id = %s", params + [row["id"]])
        row = db.one(f"{U.ACTION_SELECT} WHERE a.id = %s", (row["id"],))
        return C.ok(U.action_response(row), message="Action updated successfully")
    return await U.sync(work)


async def action_rules(request):
    p = await C.require_auth(request)
    pg = C.page_params(request)
    ref = request.path_params["ref"]

    def work():
        db = C.db(request)
        load_action(db, _cfg(request), p, ref)
        rows, total = crud.page_rows(db, "SELECT * FROM rule WHERE action_ref = %s", [ref], pg,
                                     "ref")
        return C.paginated([U.rule_summary(r) for r in rows], pg.page, pg.size, total=total)
    return await U.sync(work)


ROUTES = [
    Route("/api/v1/actions", list_actions, methods=["GET"]),
    Route("/api/v1/actions", create_action, methods=["POST"]),
    Route("/api/v1/actions/search", search_actions, methods=["GET"]),
    Route("/api/v1/actions/{ref}", crud.get_handler(load_action, U.action_response),
          methods=["GET"]),
    Route("/api/v1/actions/{ref}", update_action, methods=["PUT"]),
    Route("/api/v1/actions/{ref}",
          crud.delete_handler("action", load_action, "Action", "actions", upstream_rbac=True),
          methods=["DELETE"]),
    Route("/api/v1/actions/{ref}/rules", action_rules, methods=["GET"]),
]
