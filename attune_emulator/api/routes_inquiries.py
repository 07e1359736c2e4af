"""Inquiries (api.md §10): list (offset/limit), get, create, update, respond, delete, lists by
status and by execution. No RBAC upstream (E4 adds `inquiries:*`); respond enforces the
assignee and the execution-token self-approval rule."""
from __future__ import annotations

from starlette.routing import Route

from .. import broker
from ..db import J, parse_ts, utcnow
from . import common as C
from . import apib_util as U
from . import crud

STATUSES = ("pending", "responded", "timeout", "cancelled")
PATH_STATUSES = {"pending": "pending", "responded": "responded", "timeout": "timeout",
                 "canceled": "cancelled"}


def _exec_pack(db, execution_id):
    row = db.one("SELECT action_ref FROM execution WHERE id = %s", (execution_id,))
    return (row["action_ref"].split(".", 1)[0]) if row else None


def load_inquiry(db, request, principal, inquiry_id: int) -> dict:
    row = db.one("SELECT * FROM inquiry WHERE id = %s", (inquiry_id,))
    cfg = request.app.state.cfg
    if row is None or (U.owner_scoping(cfg)
                       and U.pack_hidden(db, cfg, principal, _exec_pack(db, row["execution"]))):
        raise C.not_found(f"Inquiry with ID {inquiry_id} not found")
    return row


def _filtered(db, request, principal, rows):
    cfg = request.app.state.cfg
    if not U.owner_scoping(cfg):
        return rows
    cache: dict = {}
    return [r for r in rows
            if not U.pack_hidden(db, cfg, principal, _exec_pack(db, r["execution"]), cache)]


async def list_inquiries(request):
    p = await C.require_auth(request)
    status = C.query_str(request, "status", enum=STATUSES)
    execution = C.query_int(request, "execution")
    assigned_to = C.query_int(request, "assigned_to")
    offset = C.query_int(request, "offset", 0, unsigned=True)
    limit = min(C.query_int(request, "limit", 50, unsigned=True), 500)

    def work():
        db = C.db(request)
        where, params = [], []
        for col, val in (("status", status), ("execution", execution), ("assigned_to", assigned_to)):
            if val is not None:
                where.append(f"{col} = %s")
                params.append(val)
        sql = "SELECT * FROM inquiry" + crud.where_clause(where)
        rows = _filtered(db, request, p, db.all(sql + " ORDER BY created DESC, id DESC", params))
        chunk = rows[offset:offset + limit] if limit > 0 else []
        page = (offset // limit) + 1 if limit > 0 else 1
        return C.paginated([U.inquiry_summary(r) for r in chunk], page, limit, total=len(rows),
                           has_next=offset + limit < len(rows))
    return await U.sync(work)


async def by_status(request):
    p = await C.require_auth(request)
    raw = request.path_params["status"]
    if raw not in PATH_STATUSES:
        raise C.bad_request(f"Invalid inquiry status: '{raw}'. Valid values are: "
                            "pending, responded, timeout, canceled")
    pg = C.page_params(request)

    def work():
        db = C.db(request)
        rows = _filtered(db, request, p, db.all(
            "SELECT * FROM inquiry WHERE status = %s ORDER BY created DESC, id DESC",
            (PATH_STATUSES[raw],)))
        chunk = rows[pg.offset:pg.offset + pg.limit]
        return C.paginated([U.inquiry_summary(r) for r in chunk], pg.page, pg.size, total=len(rows))
    return await U.sync(work)


async def execution_inquiries(request):
    p = await C.require_auth(request)
    exec_id = C.path_int(request, "id")
    pg = C.page_params(request)

    def work():
        db = C.db(request)
        row = db.one("SELECT action_ref FROM execution WHERE id = %s", (exec_id,))
        if row is None or U.pack_hidden(db, request.app.state.cfg, p,
                                        row["action_ref"].split(".", 1)[0]):
            raise C.not_found(f"Execution with ID {exec_id} not found")
        rows, total = crud.page_rows(db, "SELECT * FROM inquiry WHERE execution = %s", [exec_id],
                                     pg, "created DESC, id DESC")
        return C.paginated([U.inquiry_summary(r) for r in rows], pg.page, pg.size, total=total)
    return await U.sync(work)


async def get_inquiry(request):
    p = await C.require_auth(request)
    inquiry_id = C.path_int(request, "id")

    def work():
        return C.ok(U.inquiry_response(load_inquiry(C.db(request), request, p, inquiry_id)))
    return await U.sync(work)


CREATE_SPEC = {
    "execution": C.Field(int, required=True),
    "prompt": C.Field(str, required=True, min_len=1, max_len=10000),
    "response_schema": C.Field("json"),
    "assigned_to": C.Field(int),
    "timeout_at": C.Field(str),
}


def _parse_time(value: str | None, name: str):
    if value is None:
        return None
    try:
        return parse_ts(value)
    except ValueError:
        raise C.PlainError(422, "Failed to deserialize the JSON body into the target type: "
                                f"{name}: input contains invalid characters at line 1 column 1") from None


async def create_inquiry(request):
    p = await C.require_auth(request)
    body = await C.read_json(request, CREATE_SPEC)
    timeout_at = _parse_time(body["timeout_at"], "timeout_at")

    def work():
        db = C.db(request)
        ex = db.one("SELECT id, action_ref FROM execution WHERE id = %s", (body["execution"],))
        if ex is None or U.pack_hidden(db, request.app.state.cfg, p,
                                       ex["action_ref"].split(".", 1)[0]):
            raise C.not_found(f"Execution with ID {body['execution']} not found")
        if body["assigned_to"] is not None and not db.one(
                "SELECT 1 AS x FROM identity WHERE id = %s", (body["assigned_to"],)):
            raise C.not_found(f"Identity with ID {body['assigned_to']} not found")
        U.mutation_rbac(request, db, p, "inquiries", "create")
        row = db.one("INSERT INTO inquiry (execution, prompt, response_schema, assigned_to, "
                     "timeout_at) VALUES (%s,%s,%s,%s,%s) RETURNING *",
                     (ex["id"], body["prompt"], J(body["response_schema"]), body["assigned_to"],
                      timeout_at))
        return C.ok(U.inquiry_response(row), 201, "Inquiry created successfully")
    return await U.sync(work)


UPDATE_SPEC = {
    "status": C.Field(str, enum=STATUSES),
    "response": C.Field("json"),
    "assigned_to": C.Field(int),
}


async def update_inquiry(request):
    p = await C.require_auth(request)
    raw = await C.read_json(request)
    body = C.validate_body(raw, UPDATE_SPEC, "{}")
    inquiry_id = C.path_int(request, "id")

    def work():
        db = C.db(request)
        row = load_inquiry(db, request, p, inquiry_id)
        U.mutation_rbac(request, db, p, "inquiries", "update")
        sets, params = [], []
        if body["status"] is not None:
            sets.append("status = %s")
            params.append(body["status"])
            if body["status"] == "responded" and row["responded_at"] is None:
                sets.append("responded_at = now()")
        if "response" in raw:
            sets.append("response = %s")
            params.append(J(body["response"]))
        if body["assigned_to"] is not None:
            sets.append("assigned_to = %s")
            params.append(body["assigned_to"])
        if sets:
            row = db.one(f"UPDATE inquiry SET {', '.join(sets)} WHERE id = %s RETURNING *",
                         params + [row["id"]])
        return C.ok(U.inquiry_response(row), message="Inquiry updated successfully")
    return await U.sync(work)


RESPOND_SPEC = {"response": C.Field("json", required=True)}


def _execution_chain(db, exec_id) -> list:
    chain, seen, cur = [], set(), exec_id
    while cur is not None and cur not in seen and len(seen) < 100:
        seen.add(cur)
        chain.append(cur)
        row = db.one("SELECT parent FROM execution WHERE id = %s", (cur,))
        cur = row["parent"] if row else None
    return chain


async def respond(request):
    p = await C.require_auth(request)
    body = await C.read_json(request, RESPOND_SPEC)
    inquiry_id = C.path_int(request, "id")

    def work():
        db = C.db(request)
        row = load_inquiry(db, request, p, inquiry_id)
        if row["status"] != "pending":
            raise C.bad_request(f"Inquiry is not pending (current status: {row['status']})")
        if row["timeout_at"] is not None and row["timeout_at"] <= utcnow():
            db.execute("UPDATE inquiry SET status = 'timeout' WHERE id = %s AND status = 'pending'",
                       (row["id"],))
            raise C.bad_request("Inquiry has timed out")
        if row["assigned_to"] is not None and row["assigned_to"] != p.identity_id:
            raise C.forbidden("You are not authorized to respond to this inquiry")
        if p.token_type == "execution":
            try:
                own = int(p.metadata.get("execution_id"))
            except (TypeError, ValueError):
                own = None
            if own is not None and row["execution"] in _execution_chain(db, own):
                raise C.forbidden("An execution cannot respond to its own inquiry")
        U.mutation_rbac(request, db, p, "inquiries", "respond")
        new = db.one("UPDATE inquiry SET status = 'responded', response = %s, responded_at = now() "
                     "WHERE id = %s AND status = 'pending' RETURNING *",
                     (J(body["response"]), row["id"]))
        if new is None:
            current = db.one("SELECT status FROM inquiry WHERE id = %s", (row["id"],))
            raise C.bad_request("Inquiry is not pending (current status: "
                                f"{current['status'] if current else 'deleted'})")
        C.publish(request, broker.EVENTS, "inquiry.responded",
                  {"inquiry_id": new["id"], "execution_id": new["execution"]})
        return C.ok(U.inquiry_response(new), message="Response submitted successfully")
    return await U.sync(work)


async def delete_inquiry(request):
    p = await C.require_auth(request)
    inquiry_id = C.path_int(request, "id")

    def work():
        db = C.db(request)
        row = load_inquiry(db, request, p, inquiry_id)
        U.mutation_rbac(request, db, p, "inquiries", "delete")
        db.execute("DELETE FROM inquiry WHERE id = %s", (row["id"],))
        return C.success("Inquiry deleted successfully")
    return await U.sync(work)


ROUTES = [
    Route("/api/v1/inquiries", list_inquiries, methods=["GET"]),
    Route("/api/v1/inquiries", create_inquiry, methods=["POST"]),
    Route("/api/v1/inquiries/status/{status}", by_status, methods=["GET"]),
    Route("/api/v1/inquiries/{id}", get_inquiry, methods=["GET"]),
    Route("/api/v1/inquiries/{id}", update_inquiry, methods=["PUT"]),
    Route("/api/v1/inquiries/{id}", delete_inquiry, methods=["DELETE"]),
    Route("/api/v1/inquiries/{id}/respond", respond, methods=["POST"]),
    Route("/api/v1/executions/{id}/inquiries", execution_inquiries, methods=["GET"]),
]
