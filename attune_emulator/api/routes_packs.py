"""Packs: /api/v1/packs CRUD, register (directory on the API host), upload (multipart tar.gz) and
the per-pack component lists (api.md §3)."""
from __future__ import annotations

import logging
import shutil
import tempfile
import uuid
from pathlib import Path

from starlette.routing import Route

from .. import broker
from ..db import is_transient_conflict
from .. import pack_store
from .. import packs as packs_mod
from . import common as C
from . import apib_util as U
from . import crud

log = logging.getLogger(__name__)


def _packs_base(request) -> Path:
    return Path(request.app.state.cfg.get("packs_base_dir"))


def _publish_rule_changes(request, changes) -> None:
    for key, rule_id, ref, trigger_ref in changes:
        C.publish(request, broker.EVENTS, key,
                  {"rule_id": rule_id, "rule_ref": ref, "trigger_ref": trigger_ref})


def load_visible_pack(db, principal, ref: str) -> dict:
    row = db.one("SELECT * FROM pack WHERE ref = %s", (ref,))
    if row is None or not U.pack_visible(db, principal, row):
        raise C.not_found(f"Pack '{ref}' not found")
    return row


# ------------------------------------------------------------------ list / get
async def list_packs(request):
    p = await C.require_auth(request)
    pg = C.page_params(request)

    def work():
        db = C.db(request)
        # only what pack_summary and pack_visible read (the JSON columns can be large)
        rows = db.all("SELECT id, ref, label, description, version, tags, is_standard, "
                      "installed_by, created, updated FROM pack ORDER BY ref")
        rows = [r for r in rows if U.pack_visible(db, p, r)]
        items = [U.pack_summary(r) for r in rows[pg.offset:pg.offset + pg.limit]]
        return C.paginated(items, pg.page, pg.size, total=len(rows))
    return await U.sync(work)


async def get_pack(request):
    p = await C.require_auth(request)
    ref = request.path_params["ref"]

    def work():
        return C.ok(U.pack_response(load_visible_pack(C.db(request), p, ref)))
    return await U.sync(work)


# ------------------------------------------------------------------ create / update / delete
CREATE_SPEC = {
    "ref": C.Field(str, required=True, min_len=1, max_len=255),
    "label": C.Field(str, required=True, min_len=1, max_len=255),
    "version": C.Field(str, required=True, min_len=1, max_len=50),
    "description": C.Field(str),
    "conf_schema": C.Field("json", default=dict),
    "config": C.Field("json", default=dict),
    "meta": C.Field("json", default=dict),
    "tags": C.Field(list, items=str, default=list),
    "runtime_deps": C.Field(list, items=str, default=list),
    "dependencies": C.Field(list, items=str, default=list),
    "is_standard": C.Field(bool, default=False, nullable=False),
}


async def create_pack(request):
    p = await C.require_auth(request)
    body = await C.read_json(request, CREATE_SPEC)

    def work():
        db = C.db(request)
        ref = body["ref"]
        crud.ensure_new_ref(db, "pack", ref, "Pack")
        U.rbac_authorize(db, p, "packs", "create", ref=ref, pack_ref=ref)
        installed_by = p.identity_id if (p.token_type == "access" and not body["is_standard"]) else None
        row = db.one(
            "INSERT INTO pack (ref, label, description, version, conf_schema, config, meta, tags, "
            "runtime_deps, dependencies, is_standard, installed_by) VALUES "
            "(%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) RETURNING *",
            (ref, body["label"], body["description"], body["version"],
             C_J(body["conf_schema"] if body["conf_schema"] is not None else {}),
             C_J(body["config"] if body["config"] is not None else {}),
             C_J(body["meta"] if body["meta"] is not None else {}),
             C_J(body["tags"] or []), C_J(body["runtime_deps"] or []),
             C_J(body["dependencies"] or []), body["is_standard"], installed_by))
        wf_dir = _packs_base(request) / ref / "workflows"
        if wf_dir.is_dir():
            try:
                from .routes_workflows import sync_pack_workflows
                sync_pack_workflows(db, row, _packs_base(request) / ref)
            except Exception:  # best effort, as upstream
                log.warning("workflow sync for new pack %s failed", ref, exc_info=True)
        return C.ok(U.pack_response(row), 201, "Pack created successfully")
    return await U.sync(work)


def C_J(value):
    from ..db import J
    return J(value)


UPDATE_SPEC = {
    "label": C.Field(str, min_len=1, max_len=255),
    "description": C.Field("json"),
    "version": C.Field(str, min_len=1, max_len=50),
    "conf_schema": C.Field("json"),
    "config": C.Field("json"),
    "meta": C.Field("json"),
    "tags": C.Field(list, items=str),
    "runtime_deps": C.Field(list, items=str),
    "dependencies": C.Field(list, items=str),
    "is_standard": C.Field(bool),
}


async def update_pack(request):
    p = await C.require_auth(request)
    raw = await C.read_json(request)
    body = C.validate_body(raw, UPDATE_SPEC, "{}")
    ref = request.path_params["ref"]
    sets, params = [], []
    if isinstance(raw, dict) and "description" in raw:
        _present, value = U.tagged_patch(raw["description"], "description")
        if value is not None and not isinstance(value, str):
            raise C.PlainError(422, "Failed to deserialize the JSON body into the target type: "
                                    "description.value: invalid type, expected a string at line 1 column 1")
        sets.append("description = %s")
        params.append(value)
    for name in ("label", "version", "is_standard"):
        if body.get(name) is not None:
            sets.append(f"{name} = %s")
            params.append(body[name])
    for name in ("conf_schema", "config", "meta", "tags", "runtime_deps", "dependencies"):
        if body.get(name) is not None:
            sets.append(f"{name} = %s")
            params.append(C_J(body[name]))

    def work():
        db = C.db(request)
        row = load_visible_pack(db, p, ref)
        U.rbac_authorize(db, p, "packs", "configure", ref=ref, pack_ref=ref,
                         owner_identity=row.get("installed_by"))
        row = crud.update_row(db, "pack", row, sets, params)
        return C.ok(U.pack_response(row), message="Pack updated successfully")
    return await U.sync(work)


# The cascade of a pack delete sets `execution.action` / `workflow_def` and `enforcement.rule`
# to NULL, locking those rows after the action, workflow and rule rows it deletes. The executor
# takes the opposite order: its scheduling transaction updates executions, and the second
# update of a row in one transaction re-checks the action key (FOR KEY SHARE). Locking the
# pack's executions and enforcements first, in id order as the executor does, removes that
# cycle; a lock conflict with anything else aborts one side, and this side is retried.
_LOCK_DEPENDENTS = """
    SELECT e.id FROM execution e
    WHERE e.action IN (SELECT id FROM action WHERE pack = %(pack)s)
       OR e.workflow_def IN (SELECT id FROM workflow_definition WHERE pack = %(pack)s)
    ORDER BY e.id FOR UPDATE OF e"""
_LOCK_ENFORCEMENTS = """
    SELECT f.id FROM enforcement f WHERE f.rule IN (SELECT id FROM rule WHERE pack = %(pack)s)
    ORDER BY f.id FOR UPDATE OF f"""


def _delete_pack_row(db, pack_id: int, ref: str, attempts: int = 3) -> None:
    for attempt in range(1, attempts + 1):
        try:
            with db.tx() as cur:
                cur.execute(_LOCK_DEPENDENTS, {"pack": pack_id})
                cur.execute(_LOCK_ENFORCEMENTS, {"pack": pack_id})
                cur.execute("DELETE FROM pack WHERE id = %s", (pack_id,))
            return
        except Exception as exc:
            if not is_transient_conflict(exc) or attempt == attempts:
                raise
            log.warning("pack %s: delete lost a lock conflict (attempt %d of %d); retrying", ref,
                        attempt, attempts)


async def delete_pack(request):
    p = await C.require_auth(request)
    ref = request.path_params["ref"]

    def work():
        db = C.db(request)
        row = load_visible_pack(db, p, ref)
        U.rbac_authorize(db, p, "packs", "delete", ref=ref, pack_ref=ref,
                         owner_identity=row.get("installed_by"))
        rules = db.all("SELECT id, ref, trigger_ref FROM rule WHERE pack = %s", (row["id"],))
        _delete_pack_row(db, row["id"], ref)
        base = _packs_base(request)
        if ref and "/" not in ref and not ref.startswith("."):
            # the link (or plain folder) and every version no running execution holds
            pack_store.remove_pack(base, ref)
        for r in rules:
            C.publish(request, broker.EVENTS, "rule.deleted",
                      {"rule_id": r["id"], "rule_ref": r["ref"], "trigger_ref": r["trigger_ref"]})
        C.publish(request, broker.EVENTS, "pack.deleted", {"pack_ref": ref})
        return C.success(f"Pack '{ref}' deleted successfully")
    return await U.sync(work)


# ------------------------------------------------------------------ register / upload
REGISTER_SPEC = {
    "path": C.Field(str, required=True, min_len=1),
    "skip_tests": C.Field(bool, default=False, nullable=False),
    "force": C.Field(bool, default=False, nullable=False),
}


def _pack_error(exc: packs_mod.PackError) -> C.ApiError:
    return C.ApiError(exc.status, exc.message)


async def register_pack(request):
    p = await C.require_auth(request)
    body = await C.read_json(request, REGISTER_SPEC)

    def work():
        db = C.db(request)
        U.rbac_authorize(db, p, "packs", "install")
        changes: list = []
        try:
            row = packs_mod.register_pack_dir(db, request.app.state.cfg, body["path"],
                                              force=body["force"], skip_tests=body["skip_tests"],
                                              is_standard=False, installed_by=None,
                                              changes=changes)
        except packs_mod.PackError as exc:
            raise _pack_error(exc) from None
        _publish_rule_changes(request, changes)
        C.publish(request, broker.EVENTS, "pack.registered", {"pack_ref": row["ref"]})
        return C.ok(U.pack_response(row), 201, "Pack registered successfully")
    return await U.sync(work)


def _truthy(value) -> bool:
    return str(value or "").strip().lower() in ("true", "1", "yes")


async def upload_pack(request):
    p = await C.require_auth(request)
    await U.sync(U.rbac_authorize, C.db(request), p, "packs", "install")
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise C.bad_request("Expected multipart/form-data with a 'pack' field")
    try:
        form = await request.form()
    except Exception as exc:  # malformed multipart
        raise C.bad_request(f"Invalid multipart body: {exc}") from None
    upload = form.get("pack")
    if upload is None or isinstance(upload, str):
        raise C.bad_request("Missing required 'pack' field in multipart upload")
    data = await upload.read()
    force = _truthy(form.get("force"))
    skip_tests = _truthy(form.get("skip_tests"))

    def work():
        db = C.db(request)
        base = _packs_base(request)
        base.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".upload-", dir=base))
        try:
            try:
                root = packs_mod.safe_extract_pack_archive(data, staging / "x")
                meta = packs_mod.read_pack_yaml(root)
            except packs_mod.PackError as exc:
                raise _pack_error(exc) from None
            ref = str(meta["ref"])
            existing = db.one("SELECT id FROM pack WHERE ref = %s", (ref,))
            if existing and not force:
                raise C.conflict(f"Pack '{ref}' already exists. Use force=true to reinstall.")
            if not ref or "/" in ref or ref.startswith("."):
                raise C.bad_request(f"Invalid pack ref '{ref}'")
            final = base / ref
            # a new version directory, registered, then swapped in atomically; running
            # executions keep the version they started with (pack_store.py)
            version = pack_store.install_version(base, ref, root)
            changes: list = []
            try:
                row = packs_mod.register_pack_dir(db, request.app.state.cfg, version, force=force,
                                                  skip_tests=skip_tests, is_standard=False,
                                                  installed_by=None, storage_path=str(final),
                                                  changes=changes)
            except BaseException as exc:
                shutil.rmtree(version, ignore_errors=True)
                if isinstance(exc, packs_mod.PackError):
                    raise _pack_error(exc) from None
                raise
            pack_store.activate(base, ref, version)
            pack_store.collect(base, ref)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _publish_rule_changes(request, changes)
        C.publish(request, broker.EVENTS, "pack.registered", {"pack_ref": row["ref"]})
        testing = meta.get("testing") if isinstance(meta.get("testing"), dict) else {}
        tests_skipped = bool(skip_tests or not testing.get("enabled"))
        return C.ok({"pack": U.pack_response(row), "test_result": None,
                     "tests_skipped": tests_skipped},
                    201, "Pack uploaded and registered successfully")
    return await U.sync(work)


# ------------------------------------------------------------------ per-pack lists
def _per_pack(select: str, alias: str, serializer):
    """GET /packs/{ref}/<components>: the pack's rows (`<alias>.pack`), by ref, paged."""
    async def handler(request):
        p = await C.require_auth(request)
        pg = C.page_params(request)
        ref = request.path_params["ref"]

        def work():
            db = C.db(request)
            pack = crud.load_pack(db, request.app.state.cfg, p, ref)
            rows, total = crud.page_rows(db, f"{select} WHERE {alias}.pack = %s", [pack["id"]], pg,
                                         f"{alias}.ref")
            return C.paginated([serializer(r) for r in rows], pg.page, pg.size, total=total)
        return await U.sync(work)
    return handler


list_pack_actions = _per_pack(U.ACTION_SELECT, "a", U.action_summary)
list_pack_triggers = _per_pack("SELECT t.* FROM trigger t", "t", U.trigger_summary)
list_pack_sensors = _per_pack("SELECT s.* FROM sensor s", "s", U.sensor_summary)
list_pack_rules = _per_pack("SELECT r.* FROM rule r", "r", U.rule_summary)
list_pack_workflows = _per_pack("SELECT w.* FROM workflow_definition w", "w", U.workflow_summary)


ROUTES = [
    Route("/api/v1/packs", list_packs, methods=["GET"]),
    Route("/api/v1/packs", create_pack, methods=["POST"]),
    Route("/api/v1/packs/register", register_pack, methods=["POST"]),
    Route("/api/v1/packs/upload", upload_pack, methods=["POST"]),
    Route("/api/v1/packs/{ref}", get_pack, methods=["GET"]),
    Route("/api/v1/packs/{ref}", update_pack, methods=["PUT"]),
    Route("/api/v1/packs/{ref}", delete_pack, methods=["DELETE"]),
    Route("/api/v1/packs/{ref}/actions", list_pack_actions, methods=["GET"]),
    Route("/api/v1/packs/{ref}/triggers", list_pack_triggers, methods=["GET"]),
    Route("/api/v1/packs/{ref}/sensors", list_pack_sensors, methods=["GET"]),
    Route("/api/v1/packs/{ref}/rules", list_pack_rules, methods=["GET"]),
    Route("/api/v1/packs/{ref}/workflows", list_pack_workflows, methods=["GET"]),
]
