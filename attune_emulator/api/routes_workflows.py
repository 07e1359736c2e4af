"""Workflows (api.md §9.1): CRUD of workflow definitions with their companion actions, and
`POST /packs/{ref}/workflows/sync`. No RBAC upstream (E4 adds `actions:*`)."""
from __future__ import annotations

from pathlib import Path

import yaml
from starlette.routing import Route

from .. import packs as packs_mod
from ..db import J
from . import common as C
from . import apib_util as U
from . import crud


def load_workflow(db, cfg, principal, ref: str) -> dict:
    return crud.load_by_ref(db, cfg, principal, "SELECT * FROM workflow_definition WHERE ref = %s",
                            ref, "Workflow")


async def list_workflows(request):
    p = await C.require_auth(request)
    pg = C.page_params(request)
    tags = [t.strip() for t in (C.query_str(request, "tags") or "").split(",") if t.strip()]
    search = C.query_str(request, "search")
    pack_ref = C.query_str(request, "pack_ref")

    def work():
        db = C.db(request)
        cfg = request.app.state.cfg
        where, params = [], []
        if tags:
            where.append("tags ?| %s")
            params.append(tags)
        if search:
            like = U.contains_pattern(search)
            where.append("(ref ILIKE %s OR label ILIKE %s OR coalesce(description, '') ILIKE %s)")
            params += [like] * 3
        if pack_ref:
            where.append("pack_ref = %s")
            params.append(pack_ref)
        sql = "SELECT * FROM workflow_definition" + crud.where_clause(where)
        rows, total = crud.page_visible(db, cfg, p, sql, params, pg, "ref", sql_paging=False)
        return C.paginated([U.workflow_summary(r) for r in rows], pg.page, pg.size, total=total)
    return await U.sync(work)


CREATE_SPEC = {
    "ref": C.Field(str, required=True, min_len=1, max_len=255),
    "pack_ref": C.Field(str, required=True, min_len=1, max_len=255),
    "label": C.Field(str, required=True, min_len=1, max_len=255),
    "version": C.Field(str, required=True, min_len=1, max_len=50),
    "definition": C.Field("json", required=True),
    "description": C.Field(str),
    "param_schema": C.Field("json"),
    "out_schema": C.Field("json"),
    "tags": C.Field(list, items=str),
}


async def create_workflow(request):
    p = await C.require_auth(request)
    body = await C.read_json(request, CREATE_SPEC)

    def work():
        db = C.db(request)
        cfg = request.app.state.cfg
        ref = body["ref"]
        crud.ensure_new_ref(db, "workflow_definition", ref, "Workflow")
        pack = crud.load_pack(db, cfg, p, body["pack_ref"])
        U.mutation_rbac(request, db, p, "actions", "create", pack_ref=pack["ref"], ref=ref)
        with db.tx() as cur:
            cur.execute(
                """INSERT INTO workflow_definition (ref, pack, pack_ref, label, description, version,
                       param_schema, out_schema, definition, tags)
                   VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) RETURNING *""",
                (ref, pack["id"], pack["ref"], body["label"], body["description"], body["version"],
                 J(body["param_schema"]), J(body["out_schema"]), J(body["definition"]),
                 J(body["tags"] or [])))
            wf = cur.fetchone()
            cur.execute(
                """INSERT INTO action (ref, pack, pack_ref, label, description, entrypoint, runtime,
                       param_schema, out_schema, is_adhoc, workflow_def)
                   VALUES (%s,%s,%s,%s,%s,'workflow',NULL,%s,%s,true,%s)""",
                (ref, pack["id"], pack["ref"], body["label"], body["description"],
                 J(body["param_schema"]), J(body["out_schema"]), wf["id"]))
        return C.ok(U.workflow_response(wf), 201, "Workflow created successfully")
    return await U.sync(work)


UPDATE_SPEC = {
    "label": C.Field(str, min_len=1, max_len=255),
    "description": C.Field(str),
    "version": C.Field(str, min_len=1, max_len=50),
    "param_schema": C.Field("json"),
    "out_schema": C.Field("json"),
    "definition": C.Field("json"),
    "tags": C.Field(list, items=str),
}


async def update_workflow(request):
    p = await C.require_auth(request)
    raw = await C.read_json(request)
    body = C.validate_body(raw, UPDATE_SPEC, "{}")
    ref = request.path_params["ref"]

    def work():
        db = C.db(request)
        row = load_workflow(db, request.app.state.cfg, p, ref)
        U.mutation_rbac(request, db, p, "actions", "update", pack_ref=row["pack_ref"], ref=ref)
        sets, params, asets, aparams = [], [], [], []
        for name in ("label", "description", "version"):
            if body.get(name) is not None:
                sets.append(f"{name} = %s")
                params.append(body[name])
                if name != "version":
                    asets.append(f"{name} = %s")
                    aparams.append(body[name])
        for name in ("param_schema", "out_schema"):
            if name in raw:
                sets.append(f"{name} = %s")
                params.append(J(body[name]))
                asets.append(f"{name} = %s")
                aparams.append(J(body[name]))
        if body.get("definition") is not None:
            sets.append("definition = %s")
            params.append(J(body["definition"]))
        if body.get("tags") is not None:
            sets.append("tags = %s")
            params.append(J(body["tags"]))
        with db.tx() as cur:
            if sets:
                cur.execute(f"UPDATE workflow_definition SET {', '.join(sets)} WHERE id = %s RETURNING *",
                            params + [row["id"]])
                row = cur.fetchone()
            if asets:
                cur.execute(f"UPDATE action SET {', '.join(asets)} WHERE workflow_def = %s",
                            aparams + [row["id"]])
        return C.ok(U.workflow_response(row), message="Workflow updated successfully")
    return await U.sync(work)


# ------------------------------------------------------------------ sync from disk
def sync_pack_workflows(db, pack: dict, pack_dir: Path) -> dict:
    """Load `<pack_dir>/workflows/*.yaml` into workflow definitions + companion actions."""
    results, errors = [], []
    files = packs_mod._yaml_files(Path(pack_dir) / "workflows")
    for path in files:
        stem = path.name.rsplit(".", 1)[0]
        if stem.endswith(".workflow"):
            stem = stem[: -len(".workflow")]
        try:
            wf = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            errors.append(f"{path.name}: {exc}")
            continue
        if not isinstance(wf, dict) or not isinstance(wf.get("tasks"), list) or not wf["tasks"]:
            errors.append(f"{path.name}: a workflow needs a non-empty 'tasks' list")
            continue
        if not wf.get("version"):
            errors.append(f"{path.name}: missing 'version'")
            continue
        ref = str(wf.get("ref") or stem)
        ref = ref if "." in ref else f"{pack['ref']}.{ref}"
        existed = db.one("SELECT id FROM workflow_definition WHERE ref = %s", (ref,))
        with db.tx() as cur:
            loader = packs_mod._Loader(cur, pack, Path(pack_dir), None)
            label = str(wf.get("label") or packs_mod._label_from_ref(ref))
            wf_id = loader._workflow_def(ref, packs_mod._plain(wf), label=label,
                                         description=wf.get("description"),
                                         param_schema=wf.get("parameters"),
                                         out_schema=wf.get("output"), tags=wf.get("tags"))
            loader.upsert("action", ref, {
                "pack": pack["id"], "pack_ref": pack["ref"], "label": label,
                "description": wf.get("description"), "entrypoint": "workflow", "runtime": None,
                "param_schema": J(packs_mod._obj_or_none(wf.get("parameters"))),
                "out_schema": J(packs_mod._obj_or_none(wf.get("output"))),
                "is_adhoc": False, "workflow_def": wf_id})
        results.append({"ref_name": ref, "created": existed is None, "workflow_def_id": wf_id,
                        "warnings": []})
    return {"pack_ref": pack["ref"], "loaded_count": len(files),
            "registered_count": len(results), "workflows": results, "errors": errors}


async def sync_workflows(request):
    p = await C.require_auth(request)
    ref = request.path_params["ref"]

    def work():
        db = C.db(request)
        pack = crud.load_pack(db, request.app.state.cfg, p, ref)
        # E4: a sync writes the pack's workflow actions from its workflow files
        U.mutation_rbac(request, db, p, "actions", "update", pack_ref=ref)
        base = Path(request.app.state.cfg.get("packs_base_dir")) / ref
        pack_dir = base if base.is_dir() else Path(pack["storage_path"] or base)
        data = sync_pack_workflows(db, pack, pack_dir)
        return C.ok(data, message=f"Synced {data['registered_count']} workflow(s) for pack '{ref}'")
    return await U.sync(work)


ROUTES = [
    Route("/api/v1/workflows", list_workflows, methods=["GET"]),
    Route("/api/v1/workflows", create_workflow, methods=["POST"]),
    Route("/api/v1/workflows/{ref}", crud.get_handler(load_workflow, U.workflow_response),
          methods=["GET"]),
    Route("/api/v1/workflows/{ref}", update_workflow, methods=["PUT"]),
    Route("/api/v1/workflows/{ref}",
          crud.delete_handler("workflow_definition", load_workflow, "Workflow", "actions"),
          methods=["DELETE"]),
    Route("/api/v1/packs/{ref}/workflows/sync", sync_workflows, methods=["POST"]),
]
