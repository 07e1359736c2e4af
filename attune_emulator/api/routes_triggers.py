"""Triggers: CRUD, enable/disable, rules and sensors per trigger (api.md §5.1). No RBAC upstream
(extension E4 adds `triggers:*` checks when `security.rbac_all_mutations` is on)."""
from __future__ import annotations

from starlette.routing import Route

from ..db import J
from . import common as C
from . import apib_util as U
from . import crud


def load_trigger(db, cfg, principal, ref: str) -> dict:
    return crud.load_by_ref(db, cfg, principal, "SELECT * FROM trigger WHERE ref = %s", ref,
                            "Trigger")


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
        crud.ensure_new_ref(db, "trigger", ref, "Trigger")
        pack = None
        if body["pack_ref"] is not None:
            pack = crud.load_pack(db, request.app.state.cfg, p, body["pack_ref"])
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
        row = crud.update_row(db, "trigger", row, sets, params)
        return C.ok(U.trigger_response(row), message="Trigger updated successfully")
    return await U.sync(work)


def _toggle(enabled: bool):
    # upstream answers enable/disable without a message
    return crud.toggle_handler("trigger", load_trigger, "triggers", U.trigger_response, enabled)


async def trigger_rules(request):
    p = await C.require_auth(request)
    pg = C.page_params(request)
    ref = request.path_params["ref"]

    def work():
        db = C.db(request)
        load_trigger(db, request.app.state.cfg, p, ref)
        rows, total = crud.page_rows(db, "SELECT * FROM rule WHERE trigger_ref = %s", [ref], pg,
                                     "ref")
        return C.paginated([U.rule_summary(r) for r in rows], pg.page, pg.size, total=total)
    return await U.sync(work)


async def trigger_sensors(request):
    """Upstream lists every sensor here: the trigger filter is not applied."""
    await C.require_auth(request)
    pg = C.page_params(request)

    def work():
        db = C.db(request)
        rows, total = crud.page_rows(db, "SELECT * FROM sensor", [], pg, "ref")
        return C.paginated([U.sensor_summary(r) for r in rows], pg.page, pg.size, total=total)
    return await U.sync(work)


ROUTES = [
    Route("/api/v1/triggers", crud.list_handler("trigger", U.trigger_summary, False),
          methods=["GET"]),
    Route("/api/v1/triggers", create_trigger, methods=["POST"]),
    Route("/api/v1/triggers/enabled", crud.list_handler("trigger", U.trigger_summary, True),
          methods=["GET"]),
    Route("/api/v1/triggers/{ref}", crud.get_handler(load_trigger, U.trigger_response),
          methods=["GET"]),
    Route("/api/v1/triggers/{ref}", update_trigger, methods=["PUT"]),
    Route("/api/v1/triggers/{ref}",
          crud.delete_handler("trigger", load_trigger, "Trigger", "triggers"), methods=["DELETE"]),
    Route("/api/v1/triggers/{ref}/enable", _toggle(True), methods=["POST"]),
    Route("/api/v1/triggers/{ref}/disable", _toggle(False), methods=["POST"]),
    Route("/api/v1/triggers/{ref}/rules", trigger_rules, methods=["GET"]),
    Route("/api/v1/triggers/{ref}/sensors", trigger_sensors, methods=["GET"]),
]
