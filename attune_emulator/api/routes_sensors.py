"""Sensors: CRUD and enable/disable (api.md §5.3). No RBAC upstream (E4 adds `triggers:*`)."""
from __future__ import annotations

from starlette.routing import Route

from ..db import J
from . import common as C
from . import apib_util as U


def load_sensor(db, cfg, principal, ref: str) -> dict:
    row = db.one("SELECT * FROM sensor WHERE ref = %s", (ref,))
    if row is None or U.pack_hidden(db, cfg, principal, row["pack_ref"]):
        raise C.not_found(f"Sensor '{ref}' not found")
    return row


def _list(enabled_only: bool):
    async def handler(request):
        p = await C.require_auth(request)
        pg = C.page_params(request)

        def work():
            db = C.db(request)
            cfg = request.app.state.cfg
            base = "SELECT * FROM sensor" + (" WHERE enabled" if enabled_only else "")
            cache: dict = {}
            rows = [r for r in db.all(base + " ORDER BY ref")
                    if not U.pack_hidden(db, cfg, p, r["pack_ref"], cache)]
            page = rows[pg.offset:pg.offset + pg.limit]
            return C.paginated([U.sensor_summary(r) for r in page], pg.page, pg.size, total=len(rows))
        return await U.sync(work)
    return handler


async def get_sensor(request):
    p = await C.require_auth(request)
    ref = request.path_params["ref"]

    def work():
        return C.ok(U.sensor_response(load_sensor(C.db(request), request.app.state.cfg, p, ref)))
    return await U.sync(work)


CREATE_SPEC = {
    "ref": C.Field(str, required=True, min_len=1, max_len=255),
    "pack_ref": C.Field(str, required=True, min_len=1, max_len=255),
    "label": C.Field(str, required=True, min_len=1, max_len=255),
    "entrypoint": C.Field(str, required=True, min_len=1, max_len=1024),
    "runtime_ref": C.Field(str, required=True, min_len=1, max_len=255),
    "trigger_ref": C.Field(str, required=True, min_len=1, max_len=255),
    "description": C.Field(str),
    "param_schema": C.Field("json"),
    "config": C.Field("json"),
    "worker_selector": C.Field(dict),
    "worker_tolerations": C.Field(list),
    "worker_affinity": C.Field(dict),
    "enabled": C.Field(bool, default=True, nullable=False),
}


async def create_sensor(request):
    p = await C.require_auth(request)
    body = await C.read_json(request, CREATE_SPEC)

    def work():
        db = C.db(request)
        cfg = request.app.state.cfg
        ref = body["ref"]
        if db.one("SELECT id FROM sensor WHERE ref = %s", (ref,)):
            raise C.conflict(f"Sensor with ref '{ref}' already exists")
        pack = db.one("SELECT * FROM pack WHERE ref = %s", (body["pack_ref"],))
        if pack is None or U.pack_hidden(db, cfg, p, pack["ref"]):
            raise C.not_found(f"Pack '{body['pack_ref']}' not found")
        runtime = db.one("SELECT id, ref FROM runtime WHERE ref = %s", (body["runtime_ref"],))
        if runtime is None:
            raise C.not_found(f"Runtime '{body['runtime_ref']}' not found")
        trigger = db.one("SELECT id, ref FROM trigger WHERE ref = %s", (body["trigger_ref"],))
        if trigger is None:
            raise C.not_found(f"Trigger '{body['trigger_ref']}' not found")
        U.mutation_rbac(request, db, p, "triggers", "create", pack_ref=pack["ref"], ref=ref)
        row = db.one(
            """INSERT INTO sensor (ref, pack, pack_ref, label, description, entrypoint, runtime,
                   runtime_ref, trigger_types, enabled, param_schema, config)
               VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) RETURNING *""",
            (ref, pack["id"], pack["ref"], body["label"], body["description"], body["entrypoint"],
             runtime["id"], runtime["ref"], J([trigger["ref"]]), body["enabled"],
             J(body["param_schema"]), J(body["config"] if isinstance(body["config"], dict) else {})))
        return C.ok(U.sensor_response(row), 201, "Sensor created successfully")
    return await U.sync(work)


UPDATE_SPEC = {
    "label": C.Field(str, min_len=1, max_len=255),
    "description": C.Field("json"),
    "entrypoint": C.Field(str, min_len=1, max_len=1024),
    "runtime_ref": C.Field(str),
    "param_schema": C.Field("json"),
    "config": C.Field("json"),
    "enabled": C.Field(bool),
}


async def update_sensor(request):
    p = await C.require_auth(request)
    raw = await C.read_json(request)
    body = C.validate_body(raw, UPDATE_SPEC, "{}")
    ref = request.path_params["ref"]

    def work():
        db = C.db(request)
        row = load_sensor(db, request.app.state.cfg, p, ref)
        U.mutation_rbac(request, db, p, "triggers", "update", pack_ref=row["pack_ref"], ref=ref)
        sets, params = [], []
        for name in ("label", "entrypoint", "enabled"):
            if body.get(name) is not None:
                sets.append(f"{name} = %s")
                params.append(body[name])
        if "description" in raw:
            value = raw["description"]
            if isinstance(value, dict) and value.get("op") in ("set", "clear"):
                value = U.tagged_patch(value, "description")[1]
            sets.append("description = %s")
            params.append(value)
        if body.get("runtime_ref") is not None:
            rt = db.one("SELECT id, ref FROM runtime WHERE ref = %s", (body["runtime_ref"],))
            if rt is None:
                raise C.not_found(f"Runtime '{body['runtime_ref']}' not found")
            sets += ["runtime = %s", "runtime_ref = %s"]
            params += [rt["id"], rt["ref"]]
        if "param_schema" in raw:
            sets.append("param_schema = %s")
            params.append(J(body["param_schema"]))
        if isinstance(body.get("config"), dict):
            sets.append("config = %s")
            params.append(J(body["config"]))
        if sets:
            row = db.one(f"UPDATE sensor SET {', '.join(sets)} WHERE id = %s RETURNING *",
                         params + [row["id"]])
        return C.ok(U.sensor_response(row), message="Sensor updated successfully")
    return await U.sync(work)


async def delete_sensor(request):
    p = await C.require_auth(request)
    ref = request.path_params["ref"]

    def work():
        db = C.db(request)
        row = load_sensor(db, request.app.state.cfg, p, ref)
        U.mutation_rbac(request, db, p, "triggers", "delete", pack_ref=row["pack_ref"], ref=ref)
        db.execute("DELETE FROM sensor WHERE id = %s", (row["id"],))
        return C.success(f"Sensor '{ref}' deleted successfully")
    return await U.sync(work)


def _toggle(enabled: bool):
    async def handler(request):
        p = await C.require_auth(request)
        ref = request.path_params["ref"]

        def work():
            db = C.db(request)
            row = load_sensor(db, request.app.state.cfg, p, ref)
            U.mutation_rbac(request, db, p, "triggers", "update", pack_ref=row["pack_ref"], ref=ref)
            row = db.one("UPDATE sensor SET enabled = %s WHERE id = %s RETURNING *",
                         (enabled, row["id"]))
            return C.ok(U.sensor_response(row),
                        message=f"Sensor {'enabled' if enabled else 'disabled'} successfully")
        return await U.sync(work)
    return handler


ROUTES = [
    Route("/api/v1/sensors", _list(False), methods=["GET"]),
    Route("/api/v1/sensors", create_sensor, methods=["POST"]),
    Route("/api/v1/sensors/enabled", _list(True), methods=["GET"]),
    Route("/api/v1/sensors/{ref}", get_sensor, methods=["GET"]),
    Route("/api/v1/sensors/{ref}", update_sensor, methods=["PUT"]),
    Route("/api/v1/sensors/{ref}", delete_sensor, methods=["DELETE"]),
    Route("/api/v1/sensors/{ref}/enable", _toggle(True), methods=["POST"]),
    Route("/api/v1/sensors/{ref}/disable", _toggle(False), methods=["POST"]),
]
