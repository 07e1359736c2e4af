"""Rules (api.md §6): CRUD with parameter validation against the action and trigger schemas,
enable/disable, and the rule lifecycle messages the sensor service listens to."""
from __future__ import annotations

from starlette.routing import Route

from .. import broker
from .. import validation
from ..db import J
from . import common as C
from . import apib_util as U
from . import crud


def load_rule(db, cfg, principal, ref: str) -> dict:
    return crud.load_by_ref(db, cfg, principal, "SELECT * FROM rule WHERE ref = %s", ref, "Rule")


def publish_rule(request, key: str, row: dict) -> None:
    C.publish(request, broker.EVENTS, key,
              {"rule_id": row["id"], "rule_ref": row["ref"], "trigger_ref": row["trigger_ref"]})


def validate_rule_params(action: dict | None, trigger: dict | None, action_params, trigger_params):
    try:
        if trigger is not None:
            validation.validate_params(trigger["param_schema"], trigger_params or {},
                                       "trigger", trigger["ref"])
            err = validation.timer_params_error(trigger["ref"], trigger_params or {})
            if err:
                raise ValueError(f"Invalid parameters for trigger '{trigger['ref']}': {err}")
        if action is not None:
            validation.validate_params(action["param_schema"], action_params or {},
                                       "action", action["ref"])
    except validation.SchemaError as exc:
        raise C.ApiError(500, str(exc)) from None
    except ValueError as exc:
        raise C.validation_error(str(exc)) from None


CREATE_SPEC = {
    "ref": C.Field(str, required=True, min_len=1, max_len=255),
    "pack_ref": C.Field(str, required=True, min_len=1, max_len=255),
    "label": C.Field(str, required=True, min_len=1, max_len=255),
    "action_ref": C.Field(str, required=True, min_len=1, max_len=255),
    "trigger_ref": C.Field(str, required=True, min_len=1, max_len=255),
    "description": C.Field(str),
    "conditions": C.Field("json", default=dict),
    "action_params": C.Field(dict, default=dict),
    "trigger_params": C.Field(dict, default=dict),
    "permission_set_refs": C.Field(list, items=str),
    "enabled": C.Field(bool, default=True, nullable=False),
    "notify_on_trigger": C.Field(bool, default=False, nullable=False),  # extension E11
}


async def create_rule(request):
    p = await C.require_auth(request)
    body = await C.read_json(request, CREATE_SPEC)

    def work():
        db = C.db(request)
        cfg = request.app.state.cfg
        ref = body["ref"]
        crud.ensure_new_ref(db, "rule", ref, "Rule")
        pack = crud.load_pack(db, cfg, p, body["pack_ref"])
        action = crud.load_by_ref(db, cfg, p, "SELECT * FROM action WHERE ref = %s",
                                  body["action_ref"], "Action")
        trigger = crud.load_by_ref(db, cfg, p, "SELECT * FROM trigger WHERE ref = %s",
                                   body["trigger_ref"], "Trigger")
        U.rbac_authorize(db, p, "rules", "create", pack_ref=pack["ref"], ref=ref)
        if body["permission_set_refs"]:
            U.check_delegation(db, p, body["permission_set_refs"])
        validate_rule_params(action, trigger, body["action_params"], body["trigger_params"])
        conditions = body["conditions"] if body["conditions"] is not None else {}
        row = db.one(
            """INSERT INTO rule (ref, pack, pack_ref, label, description, action, action_ref,
                   trigger, trigger_ref, conditions, action_params, trigger_params,
                   permission_set_refs, enabled, is_adhoc, owner_identity, notify_on_trigger)
               VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,true,%s,%s) RETURNING *""",
            (ref, pack["id"], pack["ref"], body["label"], body["description"], action["id"],
             action["ref"], trigger["id"], trigger["ref"], J(conditions),
             J(body["action_params"] or {}), J(body["trigger_params"] or {}),
             J(body["permission_set_refs"]), body["enabled"], p.identity_id,
             bool(body["notify_on_trigger"])))
        publish_rule(request, "rule.created", row)
        return C.ok(U.rule_response(row), 201, "Rule created successfully")
    return await U.sync(work)


UPDATE_SPEC = {
    "label": C.Field(str, min_len=1, max_len=255),
    "description": C.Field(str),
    "action_ref": C.Field(str, min_len=1, max_len=255),
    "trigger_ref": C.Field(str, min_len=1, max_len=255),
    "conditions": C.Field("json"),
    "action_params": C.Field(dict),
    "trigger_params": C.Field(dict),
    "permission_set_refs": C.Field(list, items=str),
    "enabled": C.Field(bool),
    "notify_on_trigger": C.Field(bool),  # extension E11
}


async def update_rule(request):
    p = await C.require_auth(request)
    raw = await C.read_json(request)
    body = C.validate_body(raw, UPDATE_SPEC, "{}")
    ref = request.path_params["ref"]

    def work():
        db = C.db(request)
        cfg = request.app.state.cfg
        row = load_rule(db, cfg, p, ref)
        U.rbac_authorize(db, p, "rules", "update", pack_ref=row["pack_ref"], ref=ref)
        sets, params = [], []
        action = trigger = None
        if body.get("action_ref") is not None:
            action = db.one("SELECT * FROM action WHERE ref = %s", (body["action_ref"],))
            if action is None:
                raise C.not_found(f"Action '{body['action_ref']}' not found")
            sets += ["action = %s", "action_ref = %s"]
            params += [action["id"], action["ref"]]
        if body.get("trigger_ref") is not None:
            trigger = db.one("SELECT * FROM trigger WHERE ref = %s", (body["trigger_ref"],))
            if trigger is None:
                raise C.not_found(f"Trigger '{body['trigger_ref']}' not found")
            sets += ["trigger = %s", "trigger_ref = %s"]
            params += [trigger["id"], trigger["ref"]]
        check_action = action
        if check_action is None and body.get("action_params") is not None:
            check_action = db.one("SELECT * FROM action WHERE ref = %s", (row["action_ref"],))
        check_trigger = trigger
        if check_trigger is None and body.get("trigger_params") is not None:
            check_trigger = db.one("SELECT * FROM trigger WHERE ref = %s", (row["trigger_ref"],))
        action_params = body["action_params"] if body.get("action_params") is not None else row["action_params"]
        trigger_params = body["trigger_params"] if body.get("trigger_params") is not None else row["trigger_params"]
        validate_rule_params(check_action, check_trigger, action_params, trigger_params)
        for name in ("label", "description", "enabled", "notify_on_trigger"):
            if body.get(name) is not None:
                sets.append(f"{name} = %s")
                params.append(body[name])
        for name in ("conditions", "action_params", "trigger_params"):
            if name in raw and body.get(name) is not None:
                sets.append(f"{name} = %s")
                params.append(J(body[name]))
        if "permission_set_refs" in raw:
            if body["permission_set_refs"]:
                U.check_delegation(db, p, body["permission_set_refs"])
            sets.append("permission_set_refs = %s")
            params.append(J(body["permission_set_refs"]))
        new = crud.update_row(db, "rule", row, sets, params)
        if (new["enabled"] != row["enabled"] or new["trigger_ref"] != row["trigger_ref"]
                or new["trigger_params"] != row["trigger_params"]):
            publish_rule(request, "rule.enabled" if new["enabled"] else "rule.disabled", new)
        return C.ok(U.rule_response(new), message="Rule updated successfully")
    return await U.sync(work)


def _publish_deleted(request, row) -> None:
    publish_rule(request, "rule.deleted", row)


def _publish_toggled(request, row) -> None:
    publish_rule(request, "rule.enabled" if row["enabled"] else "rule.disabled", row)


def _toggle(enabled: bool):
    return crud.toggle_handler("rule", load_rule, "rules", U.rule_response, enabled, noun="Rule",
                               after=_publish_toggled)


ROUTES = [
    Route("/api/v1/rules", crud.list_handler("rule", U.rule_summary, False), methods=["GET"]),
    Route("/api/v1/rules", create_rule, methods=["POST"]),
    Route("/api/v1/rules/enabled", crud.list_handler("rule", U.rule_summary, True),
          methods=["GET"]),
    Route("/api/v1/rules/{ref}", crud.get_handler(load_rule, U.rule_response), methods=["GET"]),
    Route("/api/v1/rules/{ref}", update_rule, methods=["PUT"]),
    Route("/api/v1/rules/{ref}", crud.delete_handler("rule", load_rule, "Rule", "rules",
                                                     upstream_rbac=True, after=_publish_deleted),
          methods=["DELETE"]),
    Route("/api/v1/rules/{ref}/enable", _toggle(True), methods=["POST"]),
    Route("/api/v1/rules/{ref}/disable", _toggle(False), methods=["POST"]),
]
