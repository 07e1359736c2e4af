"""Identities, permission sets, assignments and role labels (api.md §2.3, §2.4).

Extractor order follows upstream's handlers: authentication, path id, JSON body shape, then the
RBAC check, then the DTO length rules, then lookups. There is no API to create or delete
permission sets; they come from packs.
"""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import auth
from ..db import J
from . import rbac
from .common import (JSON, Field, Principal, bad_request, check_rules, not_found, ok, page_params,
                     paginated, path_int, query_str, read_json, require_auth, run_sync, ts)

CREATE_IDENTITY_SPEC = {"login": Field(str, required=True, min_len=3, max_len=255),
                        "password": Field(str, min_len=8, max_len=128),
                        "display_name": Field(str, max_len=255),
                        "attributes": Field(dict, nullable=False, default=dict)}
UPDATE_IDENTITY_SPEC = {"display_name": Field(str), "password": Field(str),
                        "attributes": Field(dict), "frozen": Field(bool)}
ROLE_SPEC = {"role": Field(str, required=True, min_len=1, max_len=255)}
ASSIGNMENT_SPEC = {"identity_id": Field(int), "identity_login": Field(str),
                   "permission_set_ref": Field(str, required=True)}
UPDATE_SET_SPEC = {"label": Field(str), "description": Field(str),
                   "grants": Field("json", required=True)}


async def _authorize(request: Request, principal: Principal, resource: str, action: str) -> None:
    await run_sync(rbac.authorize, request.app.state.db, principal, resource, action)


# ------------------------------------------------------------------------------ serialisers

def _role_assignment(row: dict) -> dict:
    return {"id": row["id"], "identity_id": row["identity"], "role": row["role"],
            "source": row["source"], "managed": row["managed"],
            "created": ts(row["created"]), "updated": ts(row["updated"])}


def _permission_assignment(row: dict) -> dict:
    return {"id": row["id"], "identity_id": row["identity"], "permission_set_id": row["permset"],
            "permission_set_ref": row["permission_set_ref"], "created": ts(row["created"])}


def _set_role(row: dict, set_ref: str | None) -> dict:
    return {"id": row["id"], "permission_set_id": row["permset"], "permission_set_ref": set_ref,
            "role": row["role"], "created": ts(row["created"])}


def _identity(row: dict, roles: list | None = None, direct: list | None = None) -> dict:
    return {"id": row["id"], "login": row["login"], "display_name": row["display_name"],
            "frozen": row["frozen"], "attributes": row["attributes"],
            "roles": roles or [], "direct_permissions": direct or []}


def _direct_assignments(db, identity_id: int) -> list[dict]:
    rows = db.all("""SELECT pa.*, ps.ref AS permission_set_ref FROM permission_assignment pa
                       JOIN permission_set ps ON ps.id = pa.permset
                      WHERE pa.identity = %s ORDER BY pa.id""", (identity_id,))
    return [_permission_assignment(r) for r in rows]


def _permission_set(db, row: dict) -> dict:
    roles = db.all("SELECT * FROM permission_set_role_assignment WHERE permset = %s ORDER BY id",
                   (row["id"],))
    return {"id": row["id"], "ref": row["ref"], "pack_ref": row["pack_ref"], "label": row["label"],
            "description": row["description"], "grants": row["grants"],
            "roles": [_set_role(r, row["ref"]) for r in roles]}


def _identity_or_404(db, identity_id: int) -> dict:
    row = db.one("SELECT * FROM identity WHERE id = %s", (identity_id,))
    if row is None:
        raise not_found(f"Identity '{identity_id}' not found")
    return row


# ------------------------------------------------------------------------------ identities

async def list_identities(request: Request) -> Response:
    principal = await require_auth(request)
    page = page_params(request)
    await _authorize(request, principal, "identities", "read")
    db = request.app.state.db

    def work():
        total = db.one("SELECT count(*) AS n FROM identity")["n"]
        rows = db.all("SELECT * FROM identity ORDER BY login LIMIT %s OFFSET %s",
                      (page.limit, page.offset))
        roles = db.all("SELECT identity, role FROM identity_role_assignment "
                       "WHERE identity = ANY(%s) ORDER BY id", ([r["id"] for r in rows],))
        by_identity: dict[int, list] = {}
        for r in roles:
            by_identity.setdefault(r["identity"], []).append(r["role"])
        items = [{"id": r["id"], "login": r["login"], "display_name": r["display_name"],
                  "frozen": r["frozen"], "attributes": r["attributes"],
                  "roles": by_identity.get(r["id"], [])} for r in rows]
        return items, total

    items, total = await run_sync(work)
    return paginated(items, page.page, page.size, total)


async def get_identity(request: Request) -> Response:
    principal = await require_auth(request)
    identity_id = path_int(request, "id")
    await _authorize(request, principal, "identities", "read")
    db = request.app.state.db

    def work():
        row = _identity_or_404(db, identity_id)
        roles = db.all("SELECT * FROM identity_role_assignment WHERE identity = %s ORDER BY id",
                       (identity_id,))
        return _identity(row, [_role_assignment(r) for r in roles],
                         _direct_assignments(db, identity_id))

    return ok(await run_sync(work))


async def create_identity(request: Request) -> Response:
    principal = await require_auth(request)
    body = await read_json(request, CREATE_IDENTITY_SPEC, invalid_prefix=None)
    await _authorize(request, principal, "identities", "create")
    check_rules(body, CREATE_IDENTITY_SPEC)
    db = request.app.state.db

    def work():
        pw = auth.hash_password(body["password"]) if body["password"] is not None else None
        return db.one("INSERT INTO identity (login, display_name, password_hash, attributes) "
                      "VALUES (%s, %s, %s, %s) RETURNING *",
                      (body["login"], body["display_name"], pw, J(body["attributes"] or {})))

    return ok(_identity(await run_sync(work)), status=201)


async def update_identity(request: Request) -> Response:
    principal = await require_auth(request)
    identity_id = path_int(request, "id")
    body = await read_json(request, UPDATE_IDENTITY_SPEC)
    await _authorize(request, principal, "identities", "update")
    db = request.app.state.db

    def work():
        _identity_or_404(db, identity_id)
        sets, params = [], []
        if body["display_name"] is not None:
            sets.append("display_name = %s")
            params.append(body["display_name"])
        if body["password"] is not None:
            sets.append("password_hash = %s")
            params.append(auth.hash_password(body["password"]))
        if body["attributes"] is not None:
            sets.append("attributes = %s")
            params.append(J(body["attributes"]))
        if body["frozen"] is not None:
            sets.append("frozen = %s")
            params.append(body["frozen"])
        if not sets:
            return _identity_or_404(db, identity_id)
        return db.one(f"UPDATE identity SET {', '.join(sets)} WHERE id = %s RETURNING *",
                      (*params, identity_id))

    return ok(_identity(await run_sync(work)))


async def delete_identity(request: Request) -> Response:
    principal = await require_auth(request)
    identity_id = path_int(request, "id")
    await _authorize(request, principal, "identities", "delete")
    if principal.identity_id == identity_id:
        raise bad_request("Refusing to delete the currently authenticated identity")
    n = await run_sync(request.app.state.db.execute,
                       "DELETE FROM identity WHERE id = %s", (identity_id,))
    if not n:
        raise not_found(f"Identity '{identity_id}' not found")
    return ok({"success": True, "message": "Identity deleted successfully"})


async def _set_frozen(request: Request, frozen: bool) -> Response:
    principal = await require_auth(request)
    identity_id = path_int(request, "id")
    await _authorize(request, principal, "identities", "update")
    if frozen and principal.identity_id == identity_id:
        raise bad_request("Refusing to freeze the currently authenticated identity")
    db = request.app.state.db

    def work():
        _identity_or_404(db, identity_id)
        db.execute("UPDATE identity SET frozen = %s WHERE id = %s", (frozen, identity_id))

    await run_sync(work)
    message = "Identity frozen successfully" if frozen else "Identity unfrozen successfully"
    return ok({"success": True, "message": message})


async def freeze_identity(request: Request) -> Response:
    return await _set_frozen(request, True)


async def unfreeze_identity(request: Request) -> Response:
    return await _set_frozen(request, False)


async def identity_permissions(request: Request) -> Response:
    principal = await require_auth(request)
    identity_id = path_int(request, "id")
    await _authorize(request, principal, "permissions", "read")
    db = request.app.state.db

    def work():
        _identity_or_404(db, identity_id)
        return _direct_assignments(db, identity_id)

    return JSON(await run_sync(work))  # bare array, as upstream


# ------------------------------------------------------------------------------ role labels

async def create_identity_role(request: Request) -> Response:
    principal = await require_auth(request)
    identity_id = path_int(request, "id")
    body = await read_json(request, ROLE_SPEC, invalid_prefix=None)
    await _authorize(request, principal, "permissions", "manage")
    check_rules(body, ROLE_SPEC)
    db = request.app.state.db

    def work():
        _identity_or_404(db, identity_id)
        return db.one("INSERT INTO identity_role_assignment (identity, role, source, managed) "
                      "VALUES (%s, %s, 'manual', false) RETURNING *", (identity_id, body["role"]))

    return ok(_role_assignment(await run_sync(work)), status=201)


async def delete_identity_role(request: Request) -> Response:
    principal = await require_auth(request)
    assignment_id = path_int(request, "id")
    await _authorize(request, principal, "permissions", "manage")
    db = request.app.state.db

    def work():
        row = db.one("SELECT * FROM identity_role_assignment WHERE id = %s", (assignment_id,))
        if row is None:
            raise not_found(f"Identity role assignment '{assignment_id}' not found")
        if row["managed"]:
            raise bad_request("Managed role assignments must be updated through the identity "
                              "provider sync")
        db.execute("DELETE FROM identity_role_assignment WHERE id = %s", (assignment_id,))

    await run_sync(work)
    return ok({"success": True, "message": "Identity role assignment deleted successfully"})


async def create_set_role(request: Request) -> Response:
    principal = await require_auth(request)
    set_id = path_int(request, "id")
    body = await read_json(request, ROLE_SPEC, invalid_prefix=None)
    await _authorize(request, principal, "permissions", "manage")
    check_rules(body, ROLE_SPEC)
    db = request.app.state.db

    def work():
        ps = db.one("SELECT id, ref FROM permission_set WHERE id = %s", (set_id,))
        if ps is None:
            raise not_found(f"Permission set '{set_id}' not found")
        row = db.one("INSERT INTO permission_set_role_assignment (permset, role) VALUES (%s, %s) "
                     "RETURNING *", (set_id, body["role"]))
        return _set_role(row, ps["ref"])

    return ok(await run_sync(work), status=201)


def _delete_assignment(table: str, noun: str):
    """DELETE of an assignment row by id (`permissions:manage`); none deleted -> 404."""
    async def handler(request: Request) -> Response:
        principal = await require_auth(request)
        assignment_id = path_int(request, "id")
        await _authorize(request, principal, "permissions", "manage")
        n = await run_sync(request.app.state.db.execute,
                           f"DELETE FROM {table} WHERE id = %s", (assignment_id,))
        if not n:
            raise not_found(f"{noun} '{assignment_id}' not found")
        return ok({"success": True, "message": f"{noun} deleted successfully"})
    return handler


delete_set_role = _delete_assignment("permission_set_role_assignment",
                                     "Permission set role assignment")


# ------------------------------------------------------------------------------ permission sets

async def list_sets(request: Request) -> Response:
    principal = await require_auth(request)
    pack_ref = query_str(request, "pack_ref")
    await _authorize(request, principal, "permissions", "read")
    db = request.app.state.db

    def work():
        if pack_ref is not None:
            rows = db.all("SELECT * FROM permission_set WHERE pack_ref = %s ORDER BY ref",
                          (pack_ref,))
        else:
            rows = db.all("SELECT * FROM permission_set ORDER BY ref")
        return [_permission_set(db, r) for r in rows]

    return JSON(await run_sync(work))  # bare array, as upstream


async def update_set(request: Request) -> Response:
    principal = await require_auth(request)
    set_id = path_int(request, "id")
    body = await read_json(request, UPDATE_SET_SPEC)
    await _authorize(request, principal, "permissions", "manage")
    problem = rbac.validate_grants(body["grants"])
    if problem:
        raise bad_request(problem)
    db = request.app.state.db

    def work():
        row = db.one("SELECT * FROM permission_set WHERE id = %s", (set_id,))
        if row is None:
            raise not_found(f"Permission set '{set_id}' not found")
        row = db.one("""UPDATE permission_set
                           SET label = COALESCE(%s, label),
                               description = COALESCE(%s, description),
                               grants = %s
                         WHERE id = %s RETURNING *""",
                     (body["label"], body["description"], J(body["grants"]), set_id))
        return _permission_set(db, row)

    return ok(await run_sync(work))


# ------------------------------------------------------------------------------ assignments

async def create_assignment(request: Request) -> Response:
    principal = await require_auth(request)
    body = await read_json(request, ASSIGNMENT_SPEC)
    await _authorize(request, principal, "permissions", "manage")
    db = request.app.state.db

    def work():
        ident_id, ident_login = body["identity_id"], body["identity_login"]
        if ident_id is not None and ident_login is not None:
            raise bad_request("Provide either identity_id or identity_login, not both")
        if ident_id is None and ident_login is None:
            raise bad_request("Either identity_id or identity_login is required")
        if ident_id is not None:
            identity = db.one("SELECT id, login FROM identity WHERE id = %s", (ident_id,))
            missing = ident_id
        else:
            identity = db.one("SELECT id, login FROM identity WHERE login = %s", (ident_login,))
            missing = ident_login
        if identity is None:
            raise not_found(f"Identity '{missing}' not found")
        ps = db.one("SELECT id, ref FROM permission_set WHERE ref = %s",
                    (body["permission_set_ref"],))
        if ps is None:
            raise not_found(f"Permission set '{body['permission_set_ref']}' not found")
        row = db.one("INSERT INTO permission_assignment (identity, permset) VALUES (%s, %s) "
                     "RETURNING *", (identity["id"], ps["id"]))
        row["permission_set_ref"] = ps["ref"]
        return _permission_assignment(row)

    return ok(await run_sync(work), status=201)


delete_assignment = _delete_assignment("permission_assignment", "Permission assignment")


P = "/api/v1"
ROUTES = [
    Route(f"{P}/identities", list_identities, methods=["GET"]),
    Route(f"{P}/identities", create_identity, methods=["POST"]),
    # Literal segments before `{id}` so "/identities/roles/5" is not read as an identity id.
    Route(f"{P}/identities/roles/{{id}}", delete_identity_role, methods=["DELETE"]),
    Route(f"{P}/identities/{{id}}", get_identity, methods=["GET"]),
    Route(f"{P}/identities/{{id}}", update_identity, methods=["PUT"]),
    Route(f"{P}/identities/{{id}}", delete_identity, methods=["DELETE"]),
    Route(f"{P}/identities/{{id}}/freeze", freeze_identity, methods=["POST"]),
    Route(f"{P}/identities/{{id}}/unfreeze", unfreeze_identity, methods=["POST"]),
    Route(f"{P}/identities/{{id}}/roles", create_identity_role, methods=["POST"]),
    Route(f"{P}/identities/{{id}}/permissions", identity_permissions, methods=["GET"]),
    Route(f"{P}/permissions/sets", list_sets, methods=["GET"]),
    Route(f"{P}/permissions/sets/roles/{{id}}", delete_set_role, methods=["DELETE"]),
    Route(f"{P}/permissions/sets/{{id}}", update_set, methods=["PUT"]),
    Route(f"{P}/permissions/sets/{{id}}/roles", create_set_role, methods=["POST"]),
    Route(f"{P}/permissions/assignments", create_assignment, methods=["POST"]),
    Route(f"{P}/permissions/assignments/{{id}}", delete_assignment, methods=["DELETE"]),
]
