"""Triggers: CRUD, enable/disable, rules and sensors per trigger (api.md §5.1). No RBAC upstream
(extension E4 adds `triggers:*` checks when `security.rbac_all_mutations` is on)."""
from __future__ import annotations

from starlette.routing import Route

from ..db import J
from . import common as C
from . import apib_util as U


def load_trigger(db, cfg, principal, ref: str) -> dict:
    row = db.one("SELECT * FROM trigger WHERE ref = %s", (ref,))
    if row is None or U.pack_hidden(db, cfg, principal, row["pack_ref"]):
        raise C.not_found(f"Trigger '{ref}' not found")
    return row


def _list(enabled_only: bool):
    async def handler(request):
        p = await C.require_auth(request)
        pg = C.page_params(request)

        def work():
            db = C.db(request)
            cfg = request.app.state.cfg
            base = "SELECT * FROM trigger" + (" WHERE enabled" if enabled_only else "")
            if U.owner_scoping(cfg):
                cache: dict = {}
                rows = [r for r in db.all(base + " ORDER BY ref")
                        if not U.pack_hidden(db, cfg, p, r["pack_ref"], cache)]
                total = len(rows)
                rows = rows[pg.offset:pg.offset + pg.limit]
            else:
                total = U.count(db, base, [])
                rows = db.all(base + " ORDER BY ref LIMIT %s OFFSET %s", [pg.limit, pg.offset])
            return C.paginated([U.trigger_summary(r) for r in rows], pg.page, pg.size, total=total)
        return await U.sync(work)
    return handler


async def get_trigger(request):
    p = await C.require_auth(request)
    ref = request.path_params["ref"]

    def work():
        return C.ok(U.trigger_response(load_trigger(C.db(request), request.app.state.cfg, p, ref)))
    return await U.sync(work)


CREATE_SPEC = {
    "ref": C.Field(str, required=True, min_len=1, max_len=255),
    "label": C.Field(str, required=True, min_len=1, max_len=255),
    "pack_ref": C.Field(str),
    "description": C.Field(str),
    "param_schema": C.Field("json"),
    "out_schema": C.Field("json"),
    "enabled": C.Field(bool, default=True, nullable=False),
}


async def create_trigger(request):
    p = await C.require_auth(request)
    body = await C.read_json(request, CREATE_SPEC)

    def work():
        db = C.db(request)
        ref = body["ref"]
        if db.one("SELECT id FROM trigger WHERE ref = %s", (ref,)):
            raise C.conflict(f"Trigger with ref '{ref}' already exists")
        pack = None
        if body["pack_ref"] is not None:
            pack = db.one("SELECT * FROM pack WHERE ref = %s", (body["pack_ref"],))
            if pack is None or U.pack_hidden(db, request.app.state.cfg, p, pack["ref"]):
                raise C.not_found(f"Pack '{body['pack_ref']}' not found")
        U.mutation_rbac(request, db, p, "triggers", "create",
                        pack_ref=pack["ref"] if pack else None, ref=ref)
        row = db.one(
            """INSERT INTO trigger (ref, pack, pack_ref, label, description, enabled, param_schema,
                   out_schema, is_adhoc) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,true) RETURNING *""",
            (ref, pack["id"] if pack else None, pack["ref"] if pack else None, body["label"],
             body["description"], body["enabled"], J(body["param_schema"]), J(body["out_schema"])))
        return C.ok(U.trigger_response(row), 201, "Trigger created successfully")
    return await U.sync(work)


UPDATE_SPEC = {
    "label": C.Field(str, min_len=1, max_len=255),
    "enabled": C.Field(bool),
    "description": C.Field("json"),
    "param_schema": C.Field("json"),
    "out_schema": C.Field("json"),
}


async def update_trigger(request):
    p = await C.require_auth(request)
    raw = await C.read_json(request)
    body = C.validate_body(raw, UPDATE_SPEC, "{}")
    ref = request.path_params["ref"]
    sets, params = [], []
    if body.get("label") is not None:
        sets.append("label = %s")
        params.append(body["label"])
    if body.get("enabled") is not None:
        sets.append("enabled = %s")
        params.append(body["enabled"])
    for name in ("description", "param_schema", "out_schema"):
        if name in raw:
            _present, value = U.tagged_patch(raw[name], name)
            sets.append(f"{name} = %s")
            params.append(value if name == "description" else J(value))

    def work():
        db = C.db(request)
        row = load_trigger(db, request.app.state.cfg, p, ref)
        U.mutation_rbac(request, db, p, "triggers", "update", pack_ref=row["pack_ref"], ref=ref)
        if sets:
            row = db.one(f"UPDATE trigger SET {', '.join(sets)} WHERE id = %s RETURNING *",
                         params + [row["id"]])
        return C.ok(U.trigger_response(row), message="Trigger updated successfully")
    return await U.sync(work)


async def delete_trigger(request):
    p = await C.require_auth(request)
    ref = request.path_params["ref"]

    def work():
        db = C.db(request)
        row = load_trigger(db, request.app.state.cfg, p, ref)
        U.mutation_rbac(request, db, p, "triggers", "delete", pack_ref=row["pack_ref"], ref=ref)
        db.execute("DELETE FROM trigger WHERE id = %s", (row["id"],))
        return C.success(f"Trigger '{ref}' deleted successfully")
    return await U.sync(work)


def _toggle(enabled: bool):
    async def handler(request):
        p = await C.require_auth(request)
        ref = request.path_params["ref"]

        def work():
            db = C.db(request)
            row = load_trigger(db, request.app.state.cfg, p, ref)
            U.mutation_rbac(request, db, p, "triggers", "update", pack_ref=row["pack_ref"], ref=ref)
            row = db.one("UPDATE trigger SET enabled = %s WHERE id = %s RETURNING *",
                         (enabled, row["id"]))
            return C.ok(U.trigger_response(row))
        return await U.sync(work)
    return handler


async def trigger_rules(request):
    p = await C.require_auth(request)
    pg = C.page_params(request)
    ref = request.path_params["ref"]

    def work():
        db = C.db(request)
        load_trigger(db, request.app.state.cfg, p, ref)
        base = "SELECT * FROM rule WHERE trigger_ref = %s"
        total = U.count(db, base, [ref])
        rows = db.all(base + " ORDER BY ref LIMIT %s OFFSET %s", [ref, pg.limit, pg.offset])
        return C.paginated([U.rule_summary(r) for r in rows], pg.page, pg.size, total=total)
    return await U.sync(work)


async def trigger_sensors(request):
    """Upstream lists every sensor here: the trigger filter is not applied."""
    await C.require_auth(request)
    pg = C.page_params(request)

    def work():
        db = C.db(request)
        base = "SELECT * FROM sensor"
        total = U.count(db, base, [])
        rows = db.all(base + " ORDER BY ref LIMIT %s OFFSET %s", [pg.limit, pg.offset])
        return C.paginated([U.sensor_summary(r) for r in rows], pg.page, pg.size, total=total)
    return await U.sync(work)


ROUTES = [
    Route("/api/v1/triggers", _list(False), methods=["GET"]),
    Route("/api/v1/triggers", create_trigger, methods=["POST"]),
    Route("/api/v1/triggers/enabled", _list(True), methods=["GET"]),
    Route("/api/v1/triggers/{ref}", get_trigger, methods=["GET"]),
    Route("/api/v1/triggers/{ref}", update_trigger, methods=["PUT"]),
    Route("/api/v1/triggers/{ref}", delete_trigger, methods=["DELETE"]),
    Route("/api/v1/triggers/{ref}/enable", _toggle(True), methods=["POST"]),
    Route("/api/v1/triggers/{ref}/disable", _toggle(False), methods=["POST"]),
    Route("/api/v1/triggers/{ref}/rules", trigger_rules, methods=["GET"]),
    Route("/api/v1/triggers/{ref}/sensors", trigger_sensors, methods=["GET"]),
]
