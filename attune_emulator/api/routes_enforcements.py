"""Enforcements (api.md §7.2): list (no RBAC), get (`enforcements:read`), executions of one."""
from __future__ import annotations

from starlette.routing import Route

from . import common as C
from . import apib_util as U
from . import crud
from .routes_events import list_page

STATUSES = ("created", "processed", "disabled")


def _pack(row):
    return (row.get("rule_ref") or "").split(".", 1)[0] or None


async def list_enforcements(request):
    p = await C.require_auth(request)
    rule = C.query_int(request, "rule")
    event = C.query_int(request, "event")
    status = C.query_str(request, "status", enum=STATUSES)
    trigger_ref = C.query_str(request, "trigger_ref")
    rule_ref = C.query_str(request, "rule_ref")

    def work():
        db = C.db(request)
        where, params = [], []
        if rule is not None:
            where.append("rule = %s")
            params.append(rule)
        if event is not None:
            where.append("event = %s")
            params.append(event)
        if status is not None:
            where.append("status = %s")
            params.append(status)
        if trigger_ref is not None:
            where.append(U.glob_condition("trigger_ref", trigger_ref, params))
        if rule_ref is not None:
            where.append(U.glob_condition("rule_ref", rule_ref, params))
        sql = "SELECT * FROM enforcement" + crud.where_clause(where)
        return list_page(db, request, p, sql, params, U.enforcement_summary, _pack)
    return await U.sync(work)


def _load(db, request, principal, enf_id):
    row = db.one("SELECT * FROM enforcement WHERE id = %s", (enf_id,))
    if row is None or U.pack_hidden(db, request.app.state.cfg, principal, _pack(row)):
        raise C.not_found(f"Enforcement {enf_id} not found")
    return row


async def get_enforcement(request):
    p = await C.require_auth(request)
    enf_id = C.path_int(request, "id")
    reveal = C.query_bool(request, "include_secret_values", False)

    def work():
        db = C.db(request)
        row = _load(db, request, p, enf_id)
        U.rbac_authorize(db, p, "enforcements", "read", pack_ref=_pack(row), ref=row["rule_ref"])
        if reveal:
            U.rbac_authorize(db, p, "enforcements", "decrypt", pack_ref=_pack(row),
                             ref=row["rule_ref"])
        return C.ok(U.enforcement_response(row))
    return await U.sync(work)


async def enforcement_executions(request):
    p = await C.require_auth(request)
    enf_id = C.path_int(request, "id")
    pg = C.page_params(request)

    def work():
        db = C.db(request)
        _load(db, request, p, enf_id)
        rows, total = crud.page_rows(db, U.EXECUTION_SUMMARY_SELECT + " WHERE x.enforcement = %s",
                                     [enf_id], pg, "x.created DESC, x.id DESC")
        return C.paginated([U.execution_summary(r) for r in rows], pg.page, pg.size, total=total)
    return await U.sync(work)


ROUTES = [
    Route("/api/v1/enforcements", list_enforcements, methods=["GET"]),
    Route("/api/v1/enforcements/{id}", get_enforcement, methods=["GET"]),
    Route("/api/v1/enforcements/{id}/executions", enforcement_executions, methods=["GET"]),
]
