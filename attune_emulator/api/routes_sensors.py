"""Sensors: CRUD and enable/disable (api.md §5.3). No RBAC upstream (E4 adds `triggers:*`)."""
from __future__ import annotations

from starlette.routing import Route

from ..db import J
from . import common as C
from . import apib_util as U
from . import crud


def load_sensor(db, cfg, principal, ref: str) -> dict:
    return crud.load_by_ref(db, cfg, principal, "SELECT * FROM sensor WHERE ref = %s", ref, "Sensor")


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
        crud.ensure_new_ref(db, "sensor", ref, "Sensor")
        pack = crud.load_pack(db, cfg, p, body["pack_ref"])
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
        row = crud.update_row(db, "sensor", row, sets, params)
        return C.ok(U.sensor_response(row), message="Sensor updated successfully")
    return await U.sync(work)


def _list(enabled_only: bool):
    return crud.list_handler("sensor", U.sensor_summary, enabled_only, sql_paging=False)


def _toggle(enabled: bool):
    return crud.toggle_handler("sensor", load_sensor, "triggers", U.sensor_response, enabled,
                               noun="Sensor")


ROUTES = [
    Route("/api/v1/sensors", _list(False), methods=["GET"]),
    Route("/api/v1/sensors", create_sensor, methods=["POST"]),
    Route("/api/v1/sensors/enabled", _list(True), methods=["GET"]),
    Route("/api/v1/sensors/{ref}", crud.get_handler(load_sensor, U.sensor_response),
          methods=["GET"]),
    Route("/api/v1/sensors/{ref}", update_sensor, methods=["PUT"]),
    Route("/api/v1/sensors/{ref}", crud.delete_handler("sensor", load_sensor, "Sensor", "triggers"),
          methods=["DELETE"]),
    Route("/api/v1/sensors/{ref}/enable", _toggle(True), methods=["POST"]),
    Route("/api/v1/sensors/{ref}/disable", _toggle(False), methods=["POST"]),
]
